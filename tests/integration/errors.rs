//! Hostile and malformed requests: each gets the spec's error code and status, never a
//! 500, and nothing is stored.

use reqwest::{Method, StatusCode};

use crate::harness::*;

#[tokio::test]
async fn malformed_paths_and_references() {
    let s = Server::start();
    let d = sha256(b"x");
    let cases: Vec<(Method, String, StatusCode, &str)> = vec![
        (Method::GET, "/v2/UPPER/tags/list".into(), StatusCode::BAD_REQUEST, "NAME_INVALID"),
        (Method::GET, "/v2/a%2F..%2F..%2Fetc/tags/list".into(), StatusCode::BAD_REQUEST, "NAME_INVALID"),
        (Method::GET, format!("/v2/{}/tags/list", "a".repeat(300)), StatusCode::BAD_REQUEST, "NAME_INVALID"),
        (Method::GET, "/v2/a/manifests/sha256:totallywrong".into(), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        (Method::GET, "/v2/a/blobs/sha256:..%2F..%2Fetc%2Fpasswd".into(), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        (Method::GET, "/v2/a/blobs/md5:abc".into(), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        (Method::GET, "/v2/a/manifests/.badtag".into(), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        (Method::PUT, "/v2/a/manifests/.badtag".into(), StatusCode::BAD_REQUEST, "TAG_INVALID"),
        (Method::GET, "/v2/a/blobs/uploads/not-an-id".into(), StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        (
            Method::PATCH,
            "/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef".into(),
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            Method::PUT,
            format!("/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef?digest={d}"),
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (Method::GET, format!("/v2/a/blobs/{d}"), StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        (Method::GET, "/v2/a/manifests/latest".into(), StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        (Method::DELETE, format!("/v2/a/blobs/{d}"), StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        (Method::POST, "/v2/a/tags/list".into(), StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        (Method::PUT, format!("/v2/a/blobs/{d}"), StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        (Method::GET, "/v2/a/nothing".into(), StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        (Method::GET, "/v3/".into(), StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        (Method::GET, "/v2/a/manifests/%zz".into(), StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        // A page size past any real one is the largest page, not an error.
        (Method::GET, "/v2/_catalog?n=99999999999999999999999".into(), StatusCode::OK, ""),
        (Method::POST, "/v2/a/blobs/uploads/?mount=notadigest".into(), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        (Method::GET, "/v2/_catalog?n=abc".into(), StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
    ];
    for (method, path, status, code) in cases {
        let resp = s.request(method.clone(), &path).await.send().await.unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        let body: serde_json::Value = resp.json().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if status.is_success() {
            continue;
        }
        assert_eq!(body["errors"][0]["code"], code, "{method} {path}: {body}");
        assert!(!body["errors"][0]["message"].as_str().unwrap().is_empty());
    }
    // None of that created anything.
    let catalog: serde_json::Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([]));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_chunk_leaves_the_upload_as_it_was() {
    use tokio::io::AsyncWriteExt;
    let s = Server::start();
    let resp = s.http.post(s.url("/v2/cut/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    s.http.patch(s.url(&location)).body(vec![1u8; 1000]).send().await.unwrap();
    // Announce 1 MB, send 10 KB, hang up.
    let mut sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000\r\nContent-Range: 1000-1000999\r\n\r\n",
        s.addr
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&[2u8; 10_000]).await.unwrap();
    drop(sock);
    // The server noticed the body end short and refused the chunk (an answer nobody
    // reads), rolling it back: the session is as it was.
    s.wait_counted("upload", "PATCH", "4xx").await;
    let range = header(&s.get(&location).await, "range");
    assert_eq!(range, "0-999");
    let mut data = vec![1u8; 1000];
    data.extend_from_slice(&[3u8; 500]);
    let digest = sha256(&data);
    let resp = s.http.put(s.url(&format!("{location}?digest={digest}"))).body(vec![3u8; 500]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/cut/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

/// A bug that panics in a handler is answered 500 (and counted and logged as one), not a
/// connection reset that looks like a client that hung up; what the handler held (here an
/// upload session's lock) is released, and the server goes on serving.
#[tokio::test]
async fn a_handler_that_panics_is_answered_500_and_holds_nothing() {
    // (No backtrace of the panic it provokes in the test's output.)
    let s = Server::start_with(&[GC_NOW, &[("RUST_BACKTRACE", "0")]].concat());
    let armed = s.http.put(s.url("/admin/failpoints/upload.file_before_row?action=panic")).send().await.unwrap();
    assert_eq!(armed.status(), StatusCode::OK);
    let resp = s.http.post(s.url("/v2/panic/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNKNOWN", "{body}");
    assert_eq!(s.requests_counted("upload_start", "POST", "5xx").await, 1);
    assert_eq!(s.requests_counted("upload_start", "POST", "none").await, 0);
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    let (_, digest) = s.push_image("panic/a", "v1", &[b"pushed after the panic"]).await;
    s.verify_image("panic/a", &digest).await.unwrap();
    // The file it had made before its session's row is reconcile's, as after a crash.
    let report: serde_json::Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(report["uploads_removed"], 1, "{report}");
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
}
