//! Stopping the server with SIGTERM (or SIGHUP, or SIGINT): a request in flight finishes before it exits, one that
//! outlasts `http.drain_timeout` is cut off and left to be resumed, the pulls noted in the
//! last seconds are recorded, and idle connections (at the cap, on the monitoring address)
//! keep nothing waiting.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Sends a chunk's headers with `Expect: 100-continue` and waits for the `100 Continue`
/// the server sends once the upload's handler reads the body: from then on the request
/// is in flight, whatever the client sends next.
async fn start_chunk(s: &Server, location: &str, range: (usize, usize)) -> TcpStream {
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\nContent-Range: {}-{}\r\n\r\n",
        s.addr,
        range.1 - range.0 + 1,
        range.0,
        range.1
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed before 100 Continue");
        got.push(byte[0]);
    }
    assert!(got.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&got));
    tcp
}

/// Waits until the server refuses connections: it has taken the signal.
async fn wait_refusing(addr: &str) {
    for _ in 0..250 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} still accepts connections 5 s after SIGTERM");
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_finishes_before_the_server_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    let location = header(&s.http.post(s.url("/v2/stop/blobs/uploads/")).send().await.unwrap(), "location");
    let body = random_bytes(20, 200_000);
    let mut tcp = start_chunk(&s, &location, (0, body.len() - 1)).await;
    tcp.write_all(&body[..100_000]).await.unwrap();
    s.terminate();
    wait_refusing(&s.addr).await;
    tcp.write_all(&body[100_000..]).await.unwrap();
    let (got, _) = read_until_closed(&mut tcp).await;
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let status = s.exited_within(Duration::from_secs(10)).await.expect("still running after its last request");
    assert!(status.success(), "{status}");

    // The chunk is stored: the upload goes on from its end after a restart.
    let s = Server::start_in(dir.path(), &[]);
    assert_eq!(header(&s.get(&location).await, "range"), "0-199999");
    let digest = sha256(&body);
    let resp = s.http.put(s.url(&format!("{location}?digest={digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/stop/blobs/{digest}")).await.bytes().await.unwrap(), body);
}

/// A second SIGTERM stops the server at once, even while a request holds up the drain;
/// the chunk it cut off is left to be resumed, as after a crash.
#[tokio::test]
async fn a_second_signal_stops_the_server_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[("BOSUN_HTTP_DRAIN_TIMEOUT", "60s")]);
    let location = header(&s.http.post(s.url("/v2/stop/blobs/uploads/")).send().await.unwrap(), "location");
    let mut tcp = start_chunk(&s, &location, (0, 199_999)).await;
    tcp.write_all(&random_bytes(21, 100_000)).await.unwrap();
    s.terminate();
    wait_refusing(&s.addr).await;
    // Still draining: the request is in flight and may take the whole minute.
    assert!(s.exited_within(Duration::from_millis(500)).await.is_none(), "the first signal did not wait for the drain");
    s.terminate();
    let status = s.exited_within(Duration::from_secs(5)).await.expect("still running after a second SIGTERM");
    assert!(!status.success(), "{status}");
    let s = Server::start_in(dir.path(), &[]);
    assert_eq!(header(&s.get(&location).await, "range"), "0-0", "the cut-off chunk was kept");
}

/// At the connection cap the accept loop waits for a slot; a signal must end that wait
/// too, not only a wait for a connection. The one connection held is idle between
/// requests, which the drain closes at once.
/// At its cap, with a keep-alive connection open on the API's address and one on the
/// monitoring address: neither keeps the server from stopping.
#[tokio::test]
async fn a_server_at_its_connection_cap_stops_at_once() {
    let mut s =
        Server::start_with(&[("BOSUN_HTTP_MAX_CONNECTIONS", "1"), ("BOSUN_HTTP_MONITOR_LISTEN", "127.0.0.1:0")]);
    let monitor = s.logged_addr("serving /healthz and /metrics").unwrap();
    let mut held = Vec::new();
    for (addr, path) in [(&s.addr, "/v2/"), (&monitor, "/healthz")] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = [0u8; 12];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(tcp);
    }
    // The API's accept loop is waiting for a free slot, which no client will give back.
    assert!(!s.logged(&["every connection slot is in use", "api"]).await.is_empty(), "the API is not at its cap");
    s.terminate();
    let status = s.exited_within(Duration::from_secs(5)).await.expect("still running 5 s after SIGTERM, at the cap");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_request_that_outlasts_the_drain_timeout_is_cut_off_and_its_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // The stall limit (60 s by default) is far off: only the drain limit can end the chunk.
    let mut s = Server::start_in(dir.path(), &[("BOSUN_HTTP_DRAIN_TIMEOUT", "1s")]);
    let location = header(&s.http.post(s.url("/v2/cut/blobs/uploads/")).send().await.unwrap(), "location");
    let first = random_bytes(21, 1000);
    assert_eq!(s.http.patch(s.url(&location)).body(first.clone()).send().await.unwrap().status(), StatusCode::ACCEPTED);
    let mut tcp = start_chunk(&s, &location, (1000, 100_999)).await;
    tcp.write_all(&[7u8; 10_000]).await.unwrap();
    let stopping = Instant::now();
    s.terminate();
    let status = s.exited_within(Duration::from_secs(20)).await.expect("still running 20 s after SIGTERM");
    let took = stopping.elapsed();
    assert!(status.success(), "{status}");
    assert!(took >= Duration::from_millis(900), "exited after {took:?}, without waiting for the request");
    assert!(took < Duration::from_secs(10), "exited after {took:?}: the drain limit did not cut the request off");
    drop(tcp);

    // Nothing of the cut chunk is kept; the upload resumes after the first one.
    let s = Server::start_in(dir.path(), &[]);
    s.resume_upload("cut", &location, &first, &random_bytes(22, 5000)).await;
}

/// Pulls are written every 5 s; the ones since the last write are written at shutdown.
#[tokio::test]
async fn the_pulls_of_the_last_seconds_are_recorded_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    s.push_image("pulled", "v1", &[&random_bytes(23, 1000)]).await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_eq!(s.get("/v2/pulled/manifests/v1").await.status(), StatusCode::OK);
    s.terminate();
    let status = s.exited_within(Duration::from_secs(10)).await.expect("still running 10 s after SIGTERM");
    assert!(status.success(), "{status}");
    let db = rusqlite::Connection::open(dir.path().join("metadata.sqlite")).unwrap();
    let (tag, manifest): (Option<i64>, Option<i64>) = db
        .query_row(
            "SELECT t.pulled_at, m.pulled_at FROM tags t JOIN manifests m ON m.id = t.manifest_id WHERE t.name = 'v1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(tag.is_some_and(|t| t >= before), "tag pulled_at {tag:?}, pulled at {before} or later");
    assert!(manifest.is_some_and(|t| t >= before), "manifest pulled_at {manifest:?}, pulled at {before} or later");
}

/// Work that does not end (here an upload step stuck opening a FIFO put in place of the
/// session's staged file, as a hung network file system would leave it) holds the exit for at most
/// the stop limit (10 s) after the drain, and is named in the log: a supervisor's SIGKILL
/// would otherwise come first.
#[tokio::test]
async fn hung_background_work_holds_the_exit_only_for_the_stop_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[("BOSUN_HTTP_DRAIN_TIMEOUT", "500ms")]);
    let location = header(&s.http.post(s.url("/v2/stuck/a/blobs/uploads/")).send().await.unwrap(), "location");
    let id = location.rsplit('/').next().unwrap().split('?').next().unwrap();
    let path = dir.path().join("uploads").join(id);
    std::fs::remove_file(&path).unwrap();
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let read = tokio::spawn(s.http.patch(s.url(&location)).body("will hang").send());
    // Stuck once a thread of the server waits in the FIFO's open for a writer.
    let tasks = format!("/proc/{}/task", s.child.id());
    let stuck = || {
        std::fs::read_dir(&tasks)
            .unwrap()
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w == "wait_for_partner"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stuck() {
        assert!(Instant::now() < deadline && !read.is_finished(), "the read did not hang");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    s.terminate();
    let status = s.exited_within(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    assert!(status.is_some(), "still running 30 s after SIGTERM");
    assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(20), "exit after {took:?}");
    assert!(!s.logged(&["background work did not end in time"]).await.is_empty());
    read.abort();
}

/// SIGHUP (a closed terminal, or an operator expecting a reload) and SIGINT (Ctrl-C) stop
/// the server as SIGTERM does, drained and recorded; their default action ended it at
/// once, as a crash.
#[tokio::test]
async fn a_hangup_or_an_interrupt_stops_the_server_cleanly() {
    for signal in [libc::SIGHUP, libc::SIGINT] {
        let mut s = Server::start();
        s.push_image("hup/a", "v1", &[b"layer"]).await;
        let pid = libc::pid_t::try_from(s.child.id()).unwrap();
        // SAFETY: kill(2) takes no pointers; the pid is our own child's, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let status = s.exited_within(Duration::from_secs(20)).await.expect("still running 20 s after the signal");
        assert!(status.success(), "signal {signal}: {status:?}");
        assert!(!s.logged(&["stopped"]).await.is_empty(), "signal {signal}: no clean stop was logged");
    }
}
