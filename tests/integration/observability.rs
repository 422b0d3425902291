//! What an operator watches: the access log (who changed what), JSON logs for a
//! collector, and the request and byte counters of `/metrics`.

use reqwest::StatusCode;

use crate::harness::*;

/// Who changed what: a manifest pushed and a manifest deleted are logged with the client's
/// address and the answer; a read is not (at the default level).
#[tokio::test]
async fn changes_are_in_the_access_log_with_the_clients_address() {
    let s = Server::start();
    let (body, digest) = s.push_image("logged", "v1", &[b"layer"]).await;
    assert_eq!(s.get("/v2/logged/manifests/v1").await.status(), StatusCode::OK);
    // A push by digest that moves tags (`?tag=`) names them.
    let by_digest = format!("/v2/logged/manifests/{digest}?tag=prod&tag=v1");
    assert_eq!(
        s.put_manifest("logged", &format!("{digest}?tag=prod&tag=v1"), OCI_MANIFEST, &body).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(s.delete(&format!("/v2/logged/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    let deleted = format!("path=\"/v2/logged/manifests/{digest}\"");
    let tagged = format!("path=\"{by_digest}\"");
    for words in [
        &["method=\"PUT\"", "path=\"/v2/logged/manifests/v1\"", "status=201"][..],
        &["method=\"PUT\"", &tagged, "status=201"],
        &["method=\"DELETE\"", &deleted, "status=202"],
    ] {
        let lines = s.logged(&[&[" INFO ", "request", "peer=\"127.0.0.1:"], words].concat()).await;
        assert_eq!(lines.len(), 1, "{words:?}: {lines:?}");
    }
    // The read came before the delete, whose line is there.
    assert!(s.logged_now(&["method=\"GET\""]).is_empty(), "a read logged at info");
}

/// For a log collector, every line is a JSON object, the event's fields at its top level.
#[tokio::test]
async fn the_log_can_be_json() {
    let s = Server::start_with(&[("BOSUN_LOG_FORMAT", "json")]);
    assert_eq!(s.delete("/v2/json/manifests/v1").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.logged(&["\"method\":\"DELETE\""]).await.len(), 1);
    let lines = s.logged_json();
    let request = lines.iter().find(|l| l["method"] == "DELETE").unwrap();
    assert_eq!(request["message"], "request", "{request}");
    assert_eq!(request["level"], "INFO");
    assert_eq!(request["path"], "/v2/json/manifests/v1");
    assert_eq!(request["status"], 404);
    assert!(request["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{request}");
    assert!(lines.iter().any(|l| l["message"] == "bosun is serving"));
}

/// `/metrics` counts the API's requests by route, method and status class, and times them.
#[tokio::test]
async fn requests_are_counted_and_timed_by_route() {
    let s = Server::start();
    s.push_image("counted", "v1", &[b"layer"]).await;
    assert_eq!(s.get("/v2/counted/manifests/v1").await.status(), StatusCode::OK);
    assert_eq!(s.get("/v2/counted/manifests/v2").await.status(), StatusCode::NOT_FOUND);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    let requests = |labels: &str| sample(&metrics, &format!("bosun_http_requests_total{{{labels}}}"));
    assert_eq!(requests("route=\"manifest\",method=\"PUT\",code=\"2xx\""), 1.0, "{metrics}");
    assert_eq!(requests("route=\"manifest\",method=\"GET\",code=\"2xx\""), 1.0);
    assert_eq!(requests("route=\"manifest\",method=\"GET\",code=\"4xx\""), 1.0);
    assert_eq!(requests("route=\"upload_start\",method=\"POST\",code=\"2xx\""), 2.0, "config and layer");
    let gets = "route=\"manifest\",method=\"GET\"";
    assert_eq!(sample(&metrics, &format!("bosun_http_request_duration_seconds_count{{{gets}}}")), 2.0);
    assert_eq!(sample(&metrics, &format!("bosun_http_request_duration_seconds_bucket{{{gets},le=\"+Inf\"}}")), 2.0);
    // A scraper's own parameters are no reason to fail a scrape.
    let scraped = s.get("/metrics?format=prometheus").await;
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(scraped.text().await.unwrap().contains("bosun_http_requests_total"));
}

/// `/metrics` counts the blob bytes of upload steps that succeeded (not those of a chunk
/// refused or rolled back, nor of a blob refused), and the bytes of blob answers.
#[tokio::test]
async fn blob_bytes_in_and_out_are_counted() {
    let s = Server::start();
    let data = random_bytes(7, 1000);
    let digest = s.push_blob("bytes", &data).await;
    let resp = s.http.post(s.url("/v2/bytes/blobs/uploads/")).send().await.unwrap();
    let location = s.url(&header(&resp, "location"));
    // Refused before anything is written, written and rolled back, refused at the end.
    let refused = s.http.patch(&location).header("content-range", "5-9").body("late!");
    assert_eq!(refused.send().await.unwrap().status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let short = s.http.patch(&location).header("content-range", "0-9").body("short");
    assert_eq!(short.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let wrong = s.http.put(format!("{location}?digest={}", sha256(b"other"))).body("bytes");
    assert_eq!(wrong.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.get(&format!("/v2/bytes/blobs/{digest}")).await.bytes().await.unwrap(), data);
    let part =
        s.http.get(s.url(&format!("/v2/bytes/blobs/{digest}"))).header("range", "bytes=0-9").send().await.unwrap();
    assert_eq!(part.bytes().await.unwrap().len(), 10);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_upload_bytes_received_total"), 1000.0, "{metrics}");
    assert_eq!(sample(&metrics, "bosun_blob_bytes_served_total"), 1010.0);
}
