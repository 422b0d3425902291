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
        (Method::GET, "/v2/a/tags/list?n=abc".into(), StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
        (
            Method::GET,
            format!("/v2/a/referrers/sha256:{}?n=abc", "0".repeat(64)),
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
        ),
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
    // The server noticed the body end short and rolled the chunk back: the session is as
    // it was. The request counts as cut off, not as a client's mistake (4xx).
    s.wait_cut_off("upload", "PATCH").await;
    assert_eq!(s.requests_counted("upload", "PATCH", "4xx").await, 0);
    let range = header(&s.get(&location).await, "range");
    assert_eq!(range, "0-999");
    // So does a manifest cut off, and nothing of it is stored.
    let mut sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "PUT /v2/cut/manifests/v1 HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 5000\r\n\r\n{{\"schemaVersion\": 2,",
        s.addr
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    drop(sock);
    s.wait_cut_off("manifest", "PUT").await;
    assert_eq!(s.requests_counted("manifest", "PUT", "4xx").await, 0);
    assert_eq!(s.get("/v2/cut/manifests/v1").await.status(), StatusCode::NOT_FOUND);
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

/// Every 405 says in `Allow` what the resource takes (RFC 9110), each method it names is
/// one the server answers there (never 405), and HEAD goes wherever GET does: the
/// endpoints of the API, an upload's status, and `/healthz`, `/metrics` and the admin API.
#[tokio::test]
async fn a_405_names_what_is_allowed_and_head_goes_where_get_does() {
    let s = Server::start_with(&[("BOSUN_GC_GRACE_PERIOD", "0")]);
    let (_, manifest) = s.push_image("m/a", "v1", &[b"layer in use"]).await;
    let layer = sha256(b"layer in use");
    let upload = header(&s.http.post(s.url("/v2/m/a/blobs/uploads/")).send().await.unwrap(), "location");
    let allow = |resp: &reqwest::Response| {
        resp.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    };
    // A wrong method on each kind of endpoint; then every method its Allow names.
    let cases = [
        ("/v2/".to_owned(), Method::POST, "GET, HEAD"),
        ("/v2/_catalog".to_owned(), Method::DELETE, "GET, HEAD"),
        ("/v2/m/a/tags/list".to_owned(), Method::PATCH, "GET, HEAD"),
        (format!("/v2/m/a/referrers/{manifest}"), Method::PUT, "GET, HEAD"),
        ("/v2/m/a/manifests/nothing".to_owned(), Method::POST, "GET, HEAD, PUT, DELETE"),
        (format!("/v2/m/a/blobs/{}", sha256(b"absent")), Method::PUT, "GET, HEAD, DELETE"),
        ("/v2/m/a/blobs/uploads/".to_owned(), Method::GET, "POST"),
        (upload.clone(), Method::POST, "GET, HEAD, PATCH, PUT, DELETE"),
    ];
    for (path, wrong, want) in cases {
        let resp = s.request(wrong.clone(), &path).await.send().await.unwrap();
        assert_eq!((resp.status(), allow(&resp)), (StatusCode::METHOD_NOT_ALLOWED, want.to_owned()), "{wrong} {path}");
        // The upload is cancelled last, once its other methods were tried.
        for method in want.split(", ").map(|m| Method::from_bytes(m.as_bytes()).unwrap()) {
            let resp = s.request(method.clone(), &path).await.send().await.unwrap();
            assert_ne!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is in Allow");
        }
    }
    // An upload's status answers HEAD as GET (the upload was cancelled above: 404 both).
    let fresh = header(&s.http.post(s.url("/v2/m/a/blobs/uploads/")).send().await.unwrap(), "location");
    let head = s.request(Method::HEAD, &fresh).await.send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&head, "range"), "0-0");
    // A delete refused by the resource's state: Allow leaves DELETE out.
    let resp = s.delete(&format!("/v2/m/a/blobs/{layer}")).await;
    assert_eq!((resp.status(), allow(&resp)), (StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD".to_owned()));

    // The admin API, /healthz and /metrics.
    for path in ["/healthz", "/metrics", "/admin/gc/status", "/admin/du"] {
        let resp = s.head(path).await;
        assert_eq!(resp.status(), StatusCode::OK, "HEAD {path}");
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    for (method, path, want) in [
        (Method::GET, "/admin/gc", "POST"),
        (Method::DELETE, "/healthz", "GET, HEAD"),
        (Method::GET, "/admin/retention/policies/x", "PUT, DELETE"),
    ] {
        let resp = s.request(method.clone(), path).await.send().await.unwrap();
        assert_eq!((resp.status(), allow(&resp)), (StatusCode::METHOD_NOT_ALLOWED, want.to_owned()), "{method} {path}");
    }
    assert_eq!(s.get("/admin/nothing").await.status(), StatusCode::NOT_FOUND);
}

/// Admin parameters are read strictly: a repeated one is refused (which of
/// `dry_run=false&dry_run=true` was meant?), and so is a repository name the registry
/// would refuse; neither runs anything.
#[tokio::test]
async fn admin_parameters_repeated_or_naming_no_possible_repository_are_refused() {
    let s = Server::start_with(&[("BOSUN_GC_GRACE_PERIOD", "0"), ("BOSUN_GC_ENABLED", "false")]);
    let (_, digest) = s.push_image("adm/a", "v1", &[b"garbage soon"]).await;
    assert_eq!(s.delete(&format!("/v2/adm/a/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    for (method, path) in [
        (Method::POST, "/admin/gc?dry_run=false&dry_run=true"),
        (Method::POST, "/admin/retention/plan?repository=NOT..VALID"),
        (Method::GET, "/admin/retention/explain?repository=NOT..VALID"),
        (Method::GET, "/admin/du?repository=UPPER"),
        (Method::GET, "/admin/gc/runs?limit=1&limit=2"),
    ] {
        let resp = s.request(method.clone(), path).await.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{method} {path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");
    }
    let runs: serde_json::Value = s.get("/admin/gc/runs").await.json().await.unwrap();
    assert_eq!(runs, serde_json::json!([]), "a refused request ran a collection");
    assert_eq!(s.get(&format!("/v2/adm/a/blobs/{}", sha256(b"garbage soon"))).await.status(), StatusCode::OK);
}
