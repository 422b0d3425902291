//! Blob reads (HEAD, GET, Range), repository isolation, and blob deletes.

use reqwest::StatusCode;

use crate::harness::*;

#[tokio::test]
async fn head_and_ranges() {
    let s = Server::start();
    let data = random_bytes(10, 4096);
    let digest = s.push_blob("r/blob", &data).await;
    let path = format!("/v2/r/blob/blobs/{digest}");

    let head = s.head(&path).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), "4096");
    assert_eq!(header(&head, "docker-content-digest"), digest);
    assert_eq!(header(&head, "docker-distribution-api-version"), "registry/2.0");

    let part = s.http.get(s.url(&path)).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&part, "content-range"), "bytes 100-199/4096");
    assert_eq!(part.bytes().await.unwrap(), data[100..200]);

    let tail = s.http.get(s.url(&path)).header("range", "bytes=-10").send().await.unwrap();
    assert_eq!(tail.bytes().await.unwrap(), data[4086..]);

    let bad = s.http.get(s.url(&path)).header("range", "bytes=5000-").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&bad, "content-range"), "bytes */4096");
    // Not BLOB_UNKNOWN: the blob is there.
    expect_error(bad, StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID").await;
    // An end past any u64 is clamped like any end past the blob.
    let clamped = s.http.get(s.url(&path)).header("range", "bytes=4000-99999999999999999999999").send().await.unwrap();
    assert_eq!(clamped.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(clamped.bytes().await.unwrap(), data[4000..]);
}

/// Conditional requests (RFC 9110 §13): the ETag is the digest, whose bytes never change.
#[tokio::test]
async fn conditional_requests() {
    let s = Server::start();
    let data = random_bytes(12, 4096);
    let digest = s.push_blob("r/cond", &data).await;
    let (body, manifest) = s.push_image("r/cond", "v1", &[&data]).await;
    let etag = format!("\"{digest}\"");
    let get =
        |path: String, headers: &'static [(&'static str, &'static str)], extra: Option<(&'static str, String)>| {
            let mut request = s.http.get(s.url(&path));
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            if let Some((k, v)) = extra {
                request = request.header(k, v);
            }
            request.send()
        };
    let blob = format!("/v2/r/cond/blobs/{digest}");
    for matching in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}"), "*".into()] {
        let answer = get(blob.clone(), &[], Some(("if-none-match", matching.clone()))).await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED, "{matching}");
        assert_eq!(header(&answer, "etag"), etag);
        assert!(answer.headers().get("content-type").is_none(), "{:?}", answer.headers());
        assert!(answer.bytes().await.unwrap().is_empty());
        let head = s.http.head(s.url(&blob)).header("if-none-match", matching).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::NOT_MODIFIED);
        assert!(head.headers().get("content-length").is_none(), "{:?}", head.headers());
    }
    let other = get(blob.clone(), &[("if-none-match", "\"sha256:other\"")], None).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(other.bytes().await.unwrap(), data);
    // If-Match: strong comparison only.
    for failing in ["\"nope\"".to_owned(), format!("W/{etag}")] {
        let answer = get(blob.clone(), &[], Some(("if-match", failing.clone()))).await.unwrap();
        assert_eq!(answer.status(), StatusCode::PRECONDITION_FAILED, "{failing}");
    }
    assert_eq!(get(blob.clone(), &[], Some(("if-match", etag.clone()))).await.unwrap().status(), StatusCode::OK);
    // If-Range: the range only for the same bytes, the whole blob otherwise.
    let ranged = get(blob.clone(), &[("range", "bytes=0-3")], Some(("if-range", etag.clone()))).await.unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    // A weak tag never matches (RFC 9110 §13.1.5: If-Range compares strongly).
    let weak = format!("W/{etag}");
    for stale in ["\"nope\"", "Sun, 06 Dec 2026 10:00:00 GMT", weak.as_str()] {
        let whole = get(blob.clone(), &[("range", "bytes=0-3")], Some(("if-range", stale.to_owned()))).await.unwrap();
        assert_eq!(whole.status(), StatusCode::OK, "{stale}");
        assert_eq!(whole.bytes().await.unwrap(), data);
    }
    // An unknown blob is a 404 whatever the conditions say.
    let unknown = format!("/v2/r/cond/blobs/sha256:{}", "0".repeat(64));
    expect_error(get(unknown, &[("if-none-match", "*")], None).await.unwrap(), StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        .await;

    // Manifests, by tag and by digest.
    let manifest_etag = format!("\"{manifest}\"");
    for reference in ["v1".to_owned(), manifest.clone()] {
        let path = format!("/v2/r/cond/manifests/{reference}");
        let answer = get(path.clone(), &[], Some(("if-none-match", manifest_etag.clone()))).await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&answer, "docker-content-digest"), manifest);
        let failed = get(path.clone(), &[("if-match", "\"nope\"")], None).await.unwrap();
        assert_eq!(failed.status(), StatusCode::PRECONDITION_FAILED);
        let changed = get(path, &[("if-none-match", "\"sha256:old\"")], None).await.unwrap();
        assert_eq!(changed.status(), StatusCode::OK);
        assert_eq!(changed.bytes().await.unwrap(), body);
    }
}

#[tokio::test]
async fn a_repository_sees_only_its_blobs() {
    let s = Server::start();
    let digest = s.push_blob("team/a", b"private to a").await;
    expect_error(s.get(&format!("/v2/team/b/blobs/{digest}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(s.head(&format!("/v2/team/b/blobs/{digest}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.head(&format!("/v2/team/a/blobs/{digest}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn deleting_a_referenced_blob_is_refused() {
    let s = Server::start();
    let layer = random_bytes(11, 2000);
    s.push_image("del/blob", "v1", &[&layer]).await;
    let layer_digest = sha256(&layer);
    let msg = expect_error(
        s.delete(&format!("/v2/del/blob/blobs/{layer_digest}")).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "DENIED",
    )
    .await;
    assert!(msg.contains("delete the manifest first"), "{msg}");
    // The image is intact.
    assert_eq!(s.get(&format!("/v2/del/blob/blobs/{layer_digest}")).await.bytes().await.unwrap(), layer);

    // An unreferenced blob goes: 202, then 404.
    let loose = s.push_blob("del/blob", b"loose").await;
    assert_eq!(s.delete(&format!("/v2/del/blob/blobs/{loose}")).await.status(), StatusCode::ACCEPTED);
    expect_error(s.get(&format!("/v2/del/blob/blobs/{loose}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    expect_error(s.delete(&format!("/v2/del/blob/blobs/{loose}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

async fn catalog(s: &Server) -> serde_json::Value {
    s.get("/v2/_catalog").await.json::<serde_json::Value>().await.unwrap()["repositories"].clone()
}

#[tokio::test]
async fn deleting_a_repositorys_last_blob_removes_the_repository() {
    let s = Server::start();
    let kept = s.push_blob("emptied/kept", b"stays").await;
    let blobs = [s.push_blob("emptied/gone", b"one").await, s.push_blob("emptied/gone", b"two").await];
    assert_eq!(catalog(&s).await, serde_json::json!(["emptied/gone", "emptied/kept"]));
    assert_eq!(s.delete(&format!("/v2/emptied/gone/blobs/{}", blobs[0])).await.status(), StatusCode::ACCEPTED);
    assert_eq!(catalog(&s).await, serde_json::json!(["emptied/gone", "emptied/kept"]), "one blob is still in it");
    assert_eq!(s.delete(&format!("/v2/emptied/gone/blobs/{}", blobs[1])).await.status(), StatusCode::ACCEPTED);
    assert_eq!(catalog(&s).await, serde_json::json!(["emptied/kept"]));
    expect_error(s.get("/v2/emptied/gone/tags/list").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    // Pushing to it again creates it again.
    assert_eq!(s.push_blob("emptied/gone", b"one").await, blobs[0]);
    assert_eq!(catalog(&s).await, serde_json::json!(["emptied/gone", "emptied/kept"]));
    assert_eq!(s.head(&format!("/v2/emptied/kept/blobs/{kept}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn delete_disabled_names_the_setting() {
    let s = Server::start_with(&[("BOSUN_DELETE_ENABLED", "false")]);
    let (_, digest) = s.push_image("nodel", "v1", &[b"layer"]).await;
    let blob = s.push_blob("nodel", b"loose").await;
    for path in [
        format!("/v2/nodel/manifests/{digest}"),
        "/v2/nodel/manifests/v1".to_owned(),
        format!("/v2/nodel/blobs/{blob}"),
    ] {
        let msg = expect_error(s.delete(&path).await, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
        assert!(msg.contains("delete_enabled"), "{msg}");
    }
    assert_eq!(s.get("/v2/nodel/manifests/v1").await.status(), StatusCode::OK);
}
