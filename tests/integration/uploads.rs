//! Blob uploads: monolithic, single-POST, chunked (with its 416 rules), status, cancel,
//! mounts, and digest verification.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::harness::*;

#[tokio::test]
async fn monolithic_and_single_post_uploads() {
    let s = Server::start();
    let data = random_bytes(1, 100_000);
    let digest = s.push_blob("mono/a", &data).await;
    let got = s.get(&format!("/v2/mono/a/blobs/{digest}")).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(header(&got, "docker-content-digest"), digest);
    assert_eq!(got.bytes().await.unwrap(), data);

    // A single POST carrying the digest and the whole body.
    let data = random_bytes(2, 5000);
    let digest = sha256(&data);
    let resp = s
        .http
        .post(s.url(&format!("/v2/mono/a/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/mono/a/blobs/{digest}"));
    assert_eq!(s.get(&format!("/v2/mono/a/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn chunked_upload_with_out_of_order_and_status() {
    let s = Server::start();
    let data = random_bytes(3, 30_000);
    let resp = s.http.post(s.url("/v2/chunk/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location");
    assert_eq!(header(&resp, "range"), "0-0");

    let patch = |range: String, body: Vec<u8>| {
        s.http
            .patch(s.url(&location))
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let resp = patch("0-9999".into(), data[..10_000].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-9999");

    // A chunk that skips ahead, and a retry of the chunk already received: both 416, and
    // the upload is unchanged.
    let resp = patch("20000-29999".into(), data[20_000..].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "range"), "0-9999");
    let resp = patch("0-9999".into(), data[..10_000].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // A Content-Range that does not match the body is refused and rolled back.
    let resp = patch("10000-10009".into(), data[10_000..10_020].to_vec()).await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    // So is one that is not text: taken for absent, the chunk would be appended.
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"0-2\xe9").unwrap();
    let resp = s.http.patch(s.url(&location)).header("content-range", unreadable).body("abc").send().await.unwrap();
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    assert!(msg.contains("content-range header is not visible ASCII"), "{msg}");

    let status = s.get(&location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-9999");
    assert_eq!(header(&status, "location"), location);
    // A 204 says no length (RFC 9110 §8.6), HEAD included.
    let head = s.head(&location).await;
    assert_eq!(head.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&head, "range"), "0-9999");
    assert!(head.headers().get("content-length").is_none(), "{:?}", head.headers());

    let resp = patch("10000-19999".into(), data[10_000..20_000].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // A streamed chunk without Content-Range appends where the upload stands.
    let resp = s.http.patch(s.url(&location)).body(data[20_000..].to_vec()).send().await.unwrap();
    assert_eq!(header(&resp, "range"), "0-29999");
    let digest = sha256(&data);
    let resp = s.http.put(s.url(&format!("{location}?digest={digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/chunk/blobs/{digest}")).await.bytes().await.unwrap(), data);
    // The session is over.
    expect_error(s.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;

    // A first chunk announcing 2^64 bytes is refused like any mismatch (no overflow).
    let resp = s.http.post(s.url("/v2/chunk/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let resp = s.http.patch(s.url(&location)).header("content-range", format!("0-{}", u64::MAX)).body("abc");
    let msg = expect_error(resp.send().await.unwrap(), StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    assert!(msg.contains("18446744073709551616 bytes, the body had 3"), "{msg}");
}

#[tokio::test]
async fn chunked_upload_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4, 50_000);
    let location = {
        let s = Server::start_in(dir.path(), &[]);
        let resp = s.http.post(s.url("/v2/restart/blobs/uploads/")).send().await.unwrap();
        let location = header(&resp, "location");
        let resp = s.http.patch(s.url(&location)).body(data[..25_000].to_vec()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        location
    };
    // The hash state was in memory only; the new process rebuilds it from the staged bytes.
    let s = Server::start_in(dir.path(), &[]);
    let digest = sha256(&data);
    let resp = s
        .http
        .put(s.url(&format!("{location}?digest={digest}")))
        .header("content-range", "25000-49999")
        .body(data[25_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/restart/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn wrong_digest_stores_nothing() {
    let s = Server::start();
    let resp = s.http.post(s.url("/v2/verify/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let claimed = sha256(b"something else");
    let resp = s.http.put(s.url(&format!("{location}?digest={claimed}"))).body("actual").send().await.unwrap();
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert!(msg.contains(&claimed), "{msg}");
    assert_eq!(s.head(&format!("/v2/verify/blobs/{claimed}")).await.status(), StatusCode::NOT_FOUND);
    let actual = sha256(b"actual");
    assert_eq!(s.head(&format!("/v2/verify/blobs/{actual}")).await.status(), StatusCode::NOT_FOUND);
    // The session was cancelled and its staged bytes removed.
    expect_error(s.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
    // A digest of an algorithm Bosun cannot verify is refused up front.
    let resp = s.http.post(s.url("/v2/verify/blobs/uploads/?digest=md5:abcd")).body("x").send().await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let resp = s.http.put(s.url(&location)).body("x").send().await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    // So is a session announced for one (`digest-algorithm`, spec 1.1), before any byte.
    let resp = s.http.post(s.url("/v2/verify/blobs/uploads/?digest-algorithm=blake3")).send().await.unwrap();
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert!(msg.contains("blake3"), "{msg}");
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
    let resp = s.http.post(s.url("/v2/verify/blobs/uploads/?digest-algorithm=sha512")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

/// Every way an upload can end verifies its bytes against the digest the client gives:
/// one PUT, chunks then a PUT with the last bytes, and the same in sha512. A mismatch
/// stores nothing under either digest; a match answers 201 with the digest.
#[tokio::test]
async fn every_way_an_upload_ends_verifies_its_digest() {
    let s = Server::start();
    let data = random_bytes(7, 20_000);
    for (algorithm, digest_of) in [("sha256", sha256 as fn(&[u8]) -> String), ("sha512", sha512)] {
        let wrong = digest_of(b"other bytes");
        for chunked in [false, true] {
            let case = format!("{algorithm}, chunked: {chunked}");
            let resp = s.http.post(s.url("/v2/verify/blobs/uploads/")).send().await.unwrap();
            let location = header(&resp, "location");
            let last = if chunked {
                let first =
                    s.http.patch(s.url(&location)).header("content-range", "0-9999").body(data[..10_000].to_vec());
                assert_eq!(first.send().await.unwrap().status(), StatusCode::ACCEPTED, "{case}");
                data[10_000..].to_vec()
            } else {
                data.clone()
            };
            let resp =
                s.http.put(s.url(&format!("{location}?digest={wrong}"))).body(last.clone()).send().await.unwrap();
            expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
            for d in [&wrong, &digest_of(&data)] {
                assert_eq!(s.head(&format!("/v2/verify/blobs/{d}")).await.status(), StatusCode::NOT_FOUND, "{case}");
            }
            assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0, "{case}");
        }
        // The same bytes under their own digest, in one POST: stored, and named in the answer.
        let right = digest_of(&data);
        let resp = s.http.post(s.url(&format!("/v2/verify/blobs/uploads/?digest={right}"))).body(data.clone());
        let resp = resp.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(header(&resp, "docker-content-digest"), right);
        assert_eq!(s.get(&format!("/v2/verify/blobs/{right}")).await.bytes().await.unwrap(), data);
    }
}

/// A final PUT's `Content-Range` is checked like a PATCH's: one that skips bytes is 416,
/// one whose length is not the body's is 400, and neither ends the session.
#[tokio::test]
async fn a_final_chunk_must_fit_where_the_upload_stands() {
    let s = Server::start();
    let data = random_bytes(8, 10_000);
    let digest = sha256(&data);
    let resp = s.http.post(s.url("/v2/fit/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let patch = s.http.patch(s.url(&location)).header("content-range", "0-4999").body(data[..5000].to_vec());
    assert_eq!(patch.send().await.unwrap().status(), StatusCode::ACCEPTED);
    let put = |range: &str| {
        s.http
            .put(s.url(&format!("{location}?digest={digest}")))
            .header("content-range", range)
            .body(data[5000..].to_vec())
    };
    assert_eq!(put("5001-10000").send().await.unwrap().status(), StatusCode::RANGE_NOT_SATISFIABLE);
    expect_error(put("5000-9998").send().await.unwrap(), StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    // A range that ends before it starts, at the session's offset.
    let backwards = s.http.patch(s.url(&location)).header("content-range", "5000-4999").body(Vec::new());
    expect_error(backwards.send().await.unwrap(), StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    let resp = put("5000-9999").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(s.get(&format!("/v2/fit/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

/// A monolithic POST that is refused leaves no session: its client never learned the id,
/// so nobody could ever resume or cancel it.
#[tokio::test]
async fn a_refused_monolithic_post_leaves_no_session() {
    let s = Server::start_with(&[GC_NOW, &[("BOSUN_GC_UPLOAD_MAX_AGE", "1ms")]].concat());
    let digest = sha256(b"12345");
    for (range, status) in [("bytes=oops", StatusCode::BAD_REQUEST), ("0-9", StatusCode::BAD_REQUEST)] {
        let url = s.url(&format!("/v2/mono/blobs/uploads/?digest={digest}"));
        let resp = s.http.post(url).header("content-range", range).body("12345").send().await.unwrap();
        assert_eq!(resp.status(), status, "{range}: {}", resp.text().await.unwrap());
    }
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
    let dry = s.gc(true).await;
    assert_eq!(dry["uploads_removed"], 0, "{dry}");
}

#[tokio::test]
async fn cancel_removes_the_session() {
    let s = Server::start();
    let resp = s.http.post(s.url("/v2/cancel/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    s.http.patch(s.url(&location)).body("partial").send().await.unwrap();
    assert_eq!(s.delete(&location).await.status(), StatusCode::NO_CONTENT);
    expect_error(s.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(s.delete(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
    // An upload id of another repository is unknown here.
    let resp = s.http.post(s.url("/v2/cancel/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let other = location.replace("/v2/cancel/", "/v2/other/");
    expect_error(s.get(&other).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

/// A cancel while a chunk is still being sent (a slow client, a stalled one within the
/// stall limit) stops that chunk instead of waiting for its end, which a trickling client
/// could put off forever; another repository's steps naming the session neither stop it nor
/// wait for it.
#[tokio::test]
async fn a_cancel_stops_a_chunk_still_being_sent() {
    use tokio::io::AsyncReadExt;
    let s = Server::start();
    let location = header(&s.http.post(s.url("/v2/slow/a/blobs/uploads/")).send().await.unwrap(), "location");
    let mut sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let head = format!("PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&[7u8; 1000]).await.unwrap();
    // The chunk holds the session; another repository's cancel neither waits nor stops it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = location.replace("/v2/slow/a/", "/v2/slow/b/");
    let started = Instant::now();
    expect_error(s.delete(&other).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let patch = s.http.patch(s.url(&other)).body("x").send().await.unwrap();
    expect_error(patch, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let put = s.http.put(s.url(&format!("{other}?digest={}", sha256(b"x")))).body("x").send().await.unwrap();
    expect_error(put, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(started.elapsed() < Duration::from_secs(10), "another repository's steps waited {:?}", started.elapsed());
    sock.write_all(&[7u8; 1000]).await.unwrap();
    let started = Instant::now();
    assert_eq!(s.delete(&location).await.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() < Duration::from_secs(10), "the cancel waited {:?}", started.elapsed());
    // The chunk's request ends as the session: unknown.
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 404") && answer.contains("BLOB_UPLOAD_UNKNOWN"), "{answer}");
    expect_error(s.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
}

/// A cancel whose client hangs up while it waits for the session (held here by a chunk
/// past its body) ends nothing: the session goes on, and its next chunk is taken, not
/// stopped by the signal the abandoned cancel fired.
#[tokio::test]
async fn a_cancel_given_up_leaves_the_session_usable() {
    const PAUSE: &str = "upload.before_flush";
    let s = Server::start_with(GC_NOW);
    let location = header(&s.http.post(s.url("/v2/given-up/a/blobs/uploads/")).send().await.unwrap(), "location");
    s.arm(PAUSE).await;
    let (http, url) = (s.http.clone(), s.url(&location));
    let first = tokio::spawn(async move { http.patch(url).body("abc").send().await.unwrap().status() });
    s.wait_paused(PAUSE).await;
    let mut sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    sock.write_all(format!("DELETE {location} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(sock);
    s.wait_cut_off("upload", "DELETE").await;
    s.release(PAUSE).await;
    assert_eq!(first.await.unwrap(), StatusCode::ACCEPTED);
    assert_eq!(header(&s.get(&location).await, "range"), "0-2");
    let next = s.http.patch(s.url(&location)).body("def").send().await.unwrap();
    assert_eq!(next.status(), StatusCode::ACCEPTED, "{}", next.text().await.unwrap());
    let digest = sha256(b"abcdef");
    let put = s.http.put(s.url(&format!("{location}?digest={digest}"))).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn mounts_from_and_automatic() {
    let s = Server::start();
    let data = random_bytes(5, 1000);
    let digest = s.push_blob("src/repo", &data).await;
    // Not linked to dst: invisible there.
    assert_eq!(s.head(&format!("/v2/dst/repo/blobs/{digest}")).await.status(), StatusCode::NOT_FOUND);
    expect_error(s.get(&format!("/v2/dst/repo/blobs/{digest}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let resp =
        s.http.post(s.url(&format!("/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/dst/repo/blobs/{digest}"));
    assert_eq!(s.get(&format!("/v2/dst/repo/blobs/{digest}")).await.bytes().await.unwrap(), data);
    // Automatic mount: no `from`, the registry already has the blob.
    let resp = s.http.post(s.url(&format!("/v2/auto/blobs/uploads/?mount={digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // An unknown digest starts an ordinary upload.
    let unknown = sha256(b"nobody has this");
    let resp =
        s.http.post(s.url(&format!("/v2/auto/blobs/uploads/?mount={unknown}&from=src/repo"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(header(&resp, "location").starts_with("/v2/auto/blobs/uploads/"));
}

#[tokio::test]
async fn automatic_mount_can_be_turned_off() {
    let s = Server::start_with(&[("BOSUN_AUTO_MOUNT", "false")]);
    let digest = s.push_blob("src", b"shared").await;
    let resp = s.http.post(s.url(&format!("/v2/dst/blobs/uploads/?mount={digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = s.http.post(s.url(&format!("/v2/dst/blobs/uploads/?mount={digest}&from=src"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // From a repository that exists but does not link the blob: an ordinary upload.
    s.push_blob("bystander", b"something else").await;
    let resp = s.http.post(s.url(&format!("/v2/third/blobs/uploads/?mount={digest}&from=bystander")));
    assert_eq!(resp.send().await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(s.head(&format!("/v2/third/blobs/{digest}")).await.status(), StatusCode::NOT_FOUND);
}

/// A client that hangs up while its PATCH is being stored does not leave the step half
/// done: it runs to the end, and the session holds every byte the server received (before,
/// the dropped step released the session while its disk thread still wrote).
#[tokio::test]
async fn an_upload_step_ends_stored_when_its_client_hangs_up() {
    const PAUSE: &str = "upload.before_flush";
    let s = Server::start_with(GC_NOW);
    let resp = s.http.post(s.url("/v2/gone/a/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let data = random_bytes(11, 3 << 20);
    s.arm(PAUSE).await;
    // Raw TCP, so that the test can hang up once the body is sent.
    let mut tcp = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.addr,
        data.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&data).await.unwrap();
    s.wait_paused(PAUSE).await;
    drop(tcp);
    // The server saw the hang-up and dropped the request.
    s.wait_cut_off("upload", "PATCH").await;
    s.release(PAUSE).await;
    let stored = format!("0-{}", data.len() - 1);
    let mut range = String::new();
    for _ in 0..100 {
        range = header(&s.get(&location).await, "range");
        if range == stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(range, stored, "the step stopped with its client");
    let digest = sha256(&data);
    let resp = s.http.put(s.url(&format!("{location}?digest={digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/gone/a/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

/// A crash between an upload's commit (its staged file renamed into the blob's place) and
/// its record leaves a session without staged bytes, and a power loss without
/// `sync_writes` one with fewer bytes than recorded. After the restart each step of it
/// answers "unknown session" (404), so the client starts again, and the session ends;
/// it used to answer 500 to every step, for a day.
#[tokio::test]
async fn a_session_whose_staged_bytes_are_gone_ends_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    let start = || async { header(&s.http.post(s.url("/v2/lost/a/blobs/uploads/")).send().await.unwrap(), "location") };
    let (written, empty, untouched, short) = (start().await, start().await, start().await, start().await);
    let body = random_bytes(7, 1000);
    for location in [&written, &short] {
        let patch = s.http.patch(s.url(location)).header("content-range", "0-999").body(body.clone()).send().await;
        assert_eq!(patch.unwrap().status(), StatusCode::ACCEPTED);
    }
    s.kill();
    let id = |location: &str| location.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    for location in [&written, &empty, &untouched] {
        std::fs::remove_file(dir.path().join("uploads").join(id(location))).unwrap();
    }
    let staged = std::fs::OpenOptions::new().write(true).open(dir.path().join("uploads").join(id(&short))).unwrap();
    staged.set_len(500).unwrap();
    let s = Server::start_in(dir.path(), &[]);
    expect_error(s.get(&short).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let digest = sha256(&body);
    let separator = if written.contains('?') { '&' } else { '?' };
    let put = s.http.put(s.url(&format!("{written}{separator}digest={digest}"))).send().await.unwrap();
    expect_error(put, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let patch = s.http.patch(s.url(&empty)).header("content-range", "0-999").body(body.clone()).send().await;
    expect_error(patch.unwrap(), StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(s.get(&untouched).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let db = rusqlite::Connection::open(dir.path().join("metadata.sqlite")).unwrap();
    assert_eq!(db.query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
    // The client's new upload goes through.
    assert_eq!(s.push_blob("lost/a", &body).await, digest);
}
