//! Clients that stop half-way: a connection that never finishes its headers, an idle
//! keep-alive connection, an upload body that pauses, a download nobody reads. Each is
//! closed after its limit, and what it was doing is left as it was. And more clients than
//! the connection cap: the extra ones wait to be accepted.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

const LIMITS: &[(&str, &str)] = &[("BOSUN_HTTP_HEADER_TIMEOUT", "1s"), ("BOSUN_HTTP_STALL_TIMEOUT", "1s")];

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let s = Server::start_with(LIMITS);
    // Taken before the connection: the server's clock starts at its accept, no earlier.
    let opened = Instant::now();
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    tcp.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n", s.addr).as_bytes()).await.unwrap();
    let (got, closed) = read_until_closed(&mut tcp).await;
    let waited = closed - opened;
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before the limit");
    // hyper answers 408 where it can; a bare close is as good.
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&got));
    // Others are still served.
    assert_eq!(s.get("/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_limit() {
    let s = Server::start_with(LIMITS);
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    // Taken before the request: the idle time counts from the answer, which comes later.
    let answered = Instant::now();
    tcp.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).as_bytes()).await.unwrap();
    let (got, closed) = read_until_closed(&mut tcp).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    let idle = closed - answered;
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?} idle, before the limit");
}

/// The chunk cut off by the limit is rolled back, the session is released (a request
/// waiting for it would otherwise wait for ever), and the client resumes where it was.
#[tokio::test]
async fn an_upload_body_that_stops_is_cut_off_and_the_session_resumes() {
    let s = Server::start_with(LIMITS);
    let resp = s.http.post(s.url("/v2/slow/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let first = random_bytes(1, 1000);
    assert_eq!(s.http.patch(s.url(&location)).body(first.clone()).send().await.unwrap().status(), StatusCode::ACCEPTED);

    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Length: 100000\r\nContent-Range: 1000-100999\r\n\r\n",
        s.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Taken before the last bytes: the stall starts once the server has read them.
    let stalled = Instant::now();
    tcp.write_all(&[7u8; 10_000]).await.unwrap();
    // The client is still connected, and sends nothing more.
    let (got, closed) = read_until_closed(&mut tcp).await;
    let waited = closed - stalled;
    assert!(waited >= Duration::from_millis(900), "cut off after {waited:?}, before the limit");
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("sent nothing"), "{answer}");

    s.resume_upload("slow", &location, &first, &random_bytes(2, 5000)).await;
}

/// A download larger than the sockets' buffers, read a little and then not at all: the
/// server gives up on it, so the rest never comes even when the client reads again.
#[tokio::test]
async fn a_download_nobody_reads_is_given_up() {
    let s = Server::start_with(LIMITS);
    let data = random_bytes(3, 64 << 20);
    let digest = s.push_blob("big", &data).await;
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    tcp.write_all(format!("GET /v2/big/blobs/{digest} HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).as_bytes()).await.unwrap();
    let mut start = vec![0u8; 4096];
    let n = tcp.read(&mut start).await.unwrap();
    assert!(start[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&start[..n]));
    // Longer than the limit, with the buffers on both sides full.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (rest, _) = read_until_closed(&mut tcp).await;
    let received = n + rest.len();
    assert!(received < data.len(), "all {received} bytes arrived: the stalled download was kept");
    assert_eq!(s.get(&format!("/v2/big/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

/// Sends `GET /v2/` on a connection kept alive and reads the answer's first bytes, waiting
/// at most `within`; `None` if nothing came by then.
async fn ping(tcp: &mut TcpStream, addr: &str, within: Duration) -> Option<String> {
    tcp.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, tcp.read(&mut buf)).await.ok()?.unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// At the cap the server stops accepting: a third client's request waits, unanswered but
/// not refused, until one of the two connections served closes; then it is answered.
#[tokio::test]
async fn a_connection_past_the_cap_waits_until_one_closes() {
    let s = Server::start_with(&[("BOSUN_HTTP_MAX_CONNECTIONS", "2")]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
        let answer = ping(&mut tcp, &s.addr, Duration::from_secs(10)).await.expect("served under the cap");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(tcp);
    }
    // The kernel completes the handshake; the server does not take the connection.
    let mut third = TcpStream::connect(&s.addr).await.unwrap();
    assert_eq!(ping(&mut third, &s.addr, Duration::from_millis(1500)).await, None, "served past the cap");

    drop(held.pop());
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("still waiting after a slot was freed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));

    drop((held, third));
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_http_connection_limit"), 2.0);
    assert!(sample(&metrics, "bosun_http_connection_cap_reached_total") >= 1.0, "{metrics}");
    // The slots of the closed connections come back: only the one asking stays open.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = s.get("/metrics").await.text().await.unwrap();
        if sample(&metrics, "bosun_http_connections") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "connections still counted open:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With every connection of the API taken, a probe on the API's address waits like any
/// client; on the monitoring address (`http.monitor_listen`) `/healthz` and `/metrics` are
/// answered, and nothing else is served there.
#[tokio::test]
async fn the_monitoring_address_answers_while_the_api_is_at_its_cap() {
    let s = Server::start_with(&[("BOSUN_HTTP_MAX_CONNECTIONS", "2"), ("BOSUN_HTTP_MONITOR_LISTEN", "127.0.0.1:0")]);
    let monitor = s.logged_addr("serving /healthz and /metrics").expect("the monitoring address in the log");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
        assert!(ping(&mut tcp, &s.addr, Duration::from_secs(10)).await.is_some_and(|a| a.starts_with("HTTP/1.1 200")));
        held.push(tcp);
    }
    let probe = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().unwrap();
    assert!(probe.get(s.url("/healthz")).send().await.is_err(), "answered on the API's address past its cap");

    // Answers on the monitoring address take what a loaded machine takes.
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let monitored = |path: &str| patient.get(format!("http://{monitor}{path}")).send();
    let health = monitored("/healthz").await.expect("the monitoring address is held up by the API's cap");
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = monitored("/metrics").await.unwrap().text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_http_connections"), 2.0, "the API's connections, not these");
    assert_eq!(sample(&metrics, "bosun_http_connection_limit"), 2.0);
    for path in ["/v2/", "/admin/gc/runs"] {
        assert_eq!(monitored(path).await.unwrap().status(), StatusCode::NOT_FOUND, "{path}");
    }
}

/// The server's resident memory (kB).
fn resident_kb(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Memory that a burst of stalled downloads held (each holds its read-ahead) is handed
/// back once they are gone: glibc kept it in its arenas, and the resident size stayed near
/// the burst's peak, which looks like a leak to whoever watches it.
#[tokio::test]
async fn memory_held_by_stalled_downloads_is_given_back() {
    let s = Server::start_with(LIMITS);
    let blob = random_bytes(77, 24 << 20);
    let digest = s.push_blob("mem/a", &blob).await;
    // Out of the page cache, as a blob not read lately is: its downloads then read ahead
    // into memory of their own.
    let file = std::fs::File::open(blob_file(&s.data_dir, &digest)).unwrap();
    file.sync_all().unwrap();
    // SAFETY: posix_fadvise takes the descriptor of a file this test holds open.
    unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let before = resident_kb(&s);
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut tcp = sock.connect(s.addr.parse().unwrap()).await.unwrap();
        let request = format!("GET /v2/mem/a/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = resident_kb(&s);
    drop(stalled);
    // The stall limit closes them (1 s), then the next trim (every 10 s) gives back.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut now = resident_kb(&s);
    while now > before + (peak - before) / 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = resident_kb(&s);
    }
    eprintln!("resident: {before} kB before, {peak} kB with 50 stalled downloads, {now} kB after");
    assert!(peak > before + 20 * 1024, "the downloads held too little to tell: {before} -> {peak} kB");
    assert!(now <= before + (peak - before) / 4, "still {now} kB resident ({before} before, {peak} at the peak)");
}

/// An answer given before its request's body was read whole says that the connection
/// closes (the server cannot tell where the next request would start); one given after
/// the body keeps the connection for the next request.
#[tokio::test]
async fn an_answer_given_before_the_body_says_the_connection_closes() {
    let s = Server::start();
    // Refused from their headers alone (a name, an unknown session, a method); the bytes
    // they announce never come.
    for (method, path) in [
        ("PUT", "/v2/BAD/manifests/x".to_owned()),
        ("PATCH", "/v2/r/blobs/uploads/deadbeef".to_owned()),
        ("POST", "/v2/r/manifests/x".to_owned()),
    ] {
        let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 200000\r\n\r\n", s.addr);
        tcp.write_all(head.as_bytes()).await.unwrap();
        let (got, _) = read_until_closed(&mut tcp).await;
        let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
        let head = got.split("\r\n\r\n").next().unwrap();
        assert!(head.starts_with("http/1.1 4") && head.contains("\r\nconnection: close"), "{method} {path}: {head}");
    }
    // Read whole, then refused: the same connection answers the next request.
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let body = "{not json";
    let pipelined = format!(
        "PUT /v2/r/manifests/x HTTP/1.1\r\nHost: {0}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {1}\r\n\r\n{body}\
         GET /v2/ HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        s.addr,
        body.len()
    );
    tcp.write_all(pipelined.as_bytes()).await.unwrap();
    let (got, _) = read_until_closed(&mut tcp).await;
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let first = got.split("\r\n\r\n").next().unwrap();
    assert!(first.starts_with("http/1.1 400") && !first.contains("connection: close"), "{got}");
    assert!(got.contains("http/1.1 200"), "the second request was not answered: {got}");
}
