//! Starts the real `bosun` binary on a free loopback port with its own data directory, and
//! offers the small HTTP helpers the tests share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A running Bosun server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub http: Client,
    /// The server's log lines so far, from its first.
    log: Arc<Mutex<Vec<String>>>,
}

/// The server's next line of output (bytes that are not UTF-8 replaced, so that such a line
/// does not end the reading); None at its end.
fn next_line(output: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    match output.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(String::from_utf8_lossy(&line).trim_end().to_owned()),
    }
}

/// The `addr` field of a log line that says `message` (in text, or in JSON).
fn logged_addr(line: &str, message: &str) -> Option<String> {
    if !line.contains(message) {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json["addr"].as_str().map(str::to_owned);
    }
    let start = line.find("addr=")? + 5;
    line[start..].split_whitespace().next().map(str::to_owned)
}

fn install_tls_provider() {
    static ONCE: Once = Once::new();
    // reqwest is built without a bundled TLS provider; the tests speak plain HTTP, but a
    // client still needs one installed to be constructed.
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with extra `BOSUN_*` environment variables.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut server = Server::start_in(&data_dir, env);
        server._dir = Some(dir);
        server
    }

    /// Starts a server with a TOML configuration file and extra environment.
    pub fn start_with_config(toml: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("bosun.toml");
        std::fs::write(&config, toml).unwrap();
        let mut server = Server::spawn(&dir.path().join("data"), Some(&config), env);
        server._dir = Some(dir);
        server
    }

    /// Starts a server on an existing data directory with a TOML configuration file (written
    /// beside it), to test restarts under policies.
    pub fn start_in_with_config(data_dir: &Path, toml: &str, env: &[(&str, &str)]) -> Server {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, toml).unwrap();
        Server::spawn(data_dir, Some(&config), env)
    }

    /// Starts a server on an existing data directory (to test restarts).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::spawn(data_dir, None, env)
    }

    fn spawn(data_dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Server {
        install_tls_provider();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bosun"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("BOSUN_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::inherit());
        // No free-space floor unless a test sets one: a developer's disk may be nearly full,
        // and a push refused for it would fail tests about something else.
        cmd.env("BOSUN_MIN_FREE_SPACE", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start bosun");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut output = BufReader::new(stdout);
        let mut started = Vec::new();
        let addr = loop {
            let line = next_line(&mut output).expect("bosun exited before serving");
            started.push(line);
            if let Some(addr) = logged_addr(started.last().unwrap(), "bosun is serving") {
                break addr;
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let log = Arc::new(Mutex::new(started));
        let kept = log.clone();
        std::thread::spawn(move || {
            while let Some(line) = next_line(&mut output) {
                kept.lock().unwrap().push(line);
            }
        });
        Server {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            _dir: None,
            http: Client::builder().timeout(Duration::from_secs(120)).build().expect("http client"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn head(&self, path: &str) -> Response {
        self.http.head(self.url(path)).send().await.expect("HEAD")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.http.delete(self.url(path)).send().await.expect("DELETE")
    }

    /// Pushes a blob with a monolithic POST + PUT; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let resp = self.http.post(self.url(&format!("/v2/{repo}/blobs/uploads/"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let location = header(&resp, "location");
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .http
            .put(self.url(&format!("{location}{sep}digest={digest}")))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        digest
    }

    /// Asks to mount blob `digest` from repository `from` into `repo`; returns the response
    /// (201 mounted, or 202 with an upload session to use instead).
    pub async fn mount(&self, repo: &str, digest: &str, from: &str) -> Response {
        let path = format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}");
        self.http.post(self.url(&path)).send().await.unwrap()
    }

    /// Pushes a manifest; returns the response.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        self.http
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a small image (config + `layers`) under `reference` (by its digest, untagged,
    /// when `reference` is empty); returns the manifest bytes and digest.
    pub async fn push_image(&self, repo: &str, reference: &str, layers: &[&[u8]]) -> (Vec<u8>, String) {
        self.try_push_image(repo, reference, layers).await.unwrap()
    }

    /// Like `push_image`, but a refusal is returned, not a panic (as a client that retries
    /// sees it).
    pub async fn try_push_image(
        &self,
        repo: &str,
        reference: &str,
        layers: &[&[u8]],
    ) -> Result<(Vec<u8>, String), String> {
        let (blobs, body) = image(layers);
        for blob in &blobs {
            // "Layer already exists": skip what the repository has, as clients do.
            let head = self.head(&format!("/v2/{repo}/blobs/{}", sha256(blob))).await;
            if head.status() != StatusCode::OK {
                self.push_blob(repo, blob).await;
            }
        }
        let digest = sha256(&body);
        let reference = if reference.is_empty() { digest.as_str() } else { reference };
        let resp = self.put_manifest(repo, reference, OCI_MANIFEST, &body).await;
        if resp.status() != StatusCode::CREATED {
            return Err(format!("{repo}:{reference}: {} {}", resp.status(), resp.text().await.unwrap_or_default()));
        }
        Ok((body, digest))
    }
}

/// A small image of `layers`: its blobs (the config first) and its manifest's bytes. The
/// config names its layers, as a real one does, so images differ in config too.
pub fn image(layers: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
        .to_string()
        .into_bytes();
    let descriptor =
        |media_type: &str, blob: &[u8]| json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
    });
    let blobs = std::iter::once(config).chain(layers.iter().map(|l| l.to_vec())).collect();
    (blobs, serde_json::to_vec(&manifest).unwrap())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until the server closes the connection (or resets it), for at most 20 s; returns
/// what arrived and when the connection ended.
pub async fn read_until_closed(tcp: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("the server never closed the connection");
    (got, Instant::now())
}

/// A sample's value in a `/metrics` text, by its name with labels.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// Where the filesystem store keeps the bytes of a sha256 `digest` under `data_dir`.
pub fn blob_file(data_dir: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

pub fn header(resp: &Response, name: &str) -> String {
    resp.headers().get(name).unwrap_or_else(|| panic!("response has no {name} header")).to_str().unwrap().to_owned()
}

/// Asserts an OCI error response: status, the code of its first error, and returns the
/// message.
pub async fn expect_error(resp: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(resp.status(), status, "expected {status} {code}");
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    body["errors"][0]["message"].as_str().unwrap_or_default().to_owned()
}

/// Pseudo-random bytes from a seed (no RNG crate needed; content only has to differ).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Environment for a server whose collections are started by the test only, with no
/// grace period, no restore window, and the test pause points on.
pub const GC_NOW: &[(&str, &str)] = &[
    ("BOSUN_GC_ENABLED", "false"),
    ("BOSUN_GC_GRACE_PERIOD", "0"),
    ("BOSUN_RESTORE_WINDOW", "0"),
    ("BOSUN_TEST_FAILPOINTS", "true"),
];

impl Server {
    /// Runs a collection through the admin API; returns its report.
    pub async fn gc(&self, dry_run: bool) -> Value {
        let resp = self.http.post(self.url(&format!("/admin/gc?dry_run={dry_run}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// Moves the server's clock ahead (test-only admin endpoint).
    pub async fn advance_clock(&self, ms: i64) {
        let resp = self.http.post(self.url(&format!("/admin/clock?advance_ms={ms}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    /// POSTs to an admin endpoint; returns status and JSON.
    pub async fn admin_post(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.post(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    pub async fn reconcile(&self, dry_run: bool) -> Response {
        self.http.post(self.url(&format!("/admin/reconcile?dry_run={dry_run}"))).send().await.unwrap()
    }

    /// Arms a pause point.
    pub async fn arm(&self, failpoint: &str) {
        let resp = self.http.put(self.url(&format!("/admin/failpoints/{failpoint}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    /// Waits (up to 30 s) until the server stopped at the pause point.
    pub async fn wait_paused(&self, failpoint: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = self.url(&format!("/admin/failpoints/{failpoint}"));
            let v: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
            if v["reached"] == true {
                return;
            }
            assert!(Instant::now() < deadline, "the server never reached {failpoint}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the server dropped a `method` request to `route` whose client went
    /// away before its answer (it counts it as `code="none"`).
    pub async fn wait_cut_off(&self, route: &str, method: &str) {
        self.wait_counted(route, method, "none").await;
    }

    /// Waits until the server has answered a `method` request to `route` with a status of
    /// class `code` (`4xx`, ...), as its request metrics count it.
    pub async fn wait_counted(&self, route: &str, method: &str, code: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.requests_counted(route, method, code).await == 0 {
            assert!(Instant::now() < deadline, "no {method} {route} request was counted as {code}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many `method` requests to `route` the server has answered with a status of class
    /// `code` (`none`: cut off), as its request metrics count them.
    pub async fn requests_counted(&self, route: &str, method: &str, code: &str) -> u64 {
        let line = format!("bosun_http_requests_total{{route=\"{route}\",method=\"{method}\",code=\"{code}\"}} ");
        let metrics = self.get("/metrics").await.text().await.unwrap();
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse().unwrap())
    }

    pub async fn release(&self, failpoint: &str) {
        self.http.delete(self.url(&format!("/admin/failpoints/{failpoint}"))).send().await.unwrap();
    }

    /// Pulls `reference` completely (an index's children too), verifying every digest and
    /// size; returns what was wrong, if anything.
    pub async fn verify_image(&self, repo: &str, reference: &str) -> Result<(), String> {
        let resp = self
            .http
            .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("{repo}:{reference}: manifest answered {}", resp.status()));
        }
        let digest = header(&resp, "docker-content-digest");
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if sha256(&body) != digest {
            return Err(format!("{repo}:{reference}: manifest digest mismatch"));
        }
        let manifest: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if let Some(children) = manifest["manifests"].as_array() {
            for child in children {
                Box::pin(self.verify_image(repo, child["digest"].as_str().unwrap())).await?;
            }
            return Ok(());
        }
        let blobs = std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().into_iter().flatten());
        for blob in blobs {
            let d = blob["digest"].as_str().unwrap();
            let resp =
                self.http.get(self.url(&format!("/v2/{repo}/blobs/{d}"))).send().await.map_err(|e| e.to_string())?;
            if resp.status() != StatusCode::OK {
                return Err(format!("{repo}:{reference}: blob {d} answered {}", resp.status()));
            }
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            if sha256(&bytes) != d || bytes.len() as u64 != blob["size"].as_u64().unwrap() {
                return Err(format!("{repo}:{reference}: blob {d} has the wrong content"));
            }
        }
        Ok(())
    }

    /// Bytes the data directory occupies on disk.
    pub fn disk_usage(&self) -> u64 {
        disk_usage(&self.data_dir)
    }

    /// Waits until the metadata's write-ahead log is copied back into the database, which
    /// the background checkpointer does once the server has been quiet for a moment: only
    /// then does the data directory's size say what the data takes. (The log file keeps
    /// its size, and the next commits overwrite it from its beginning.)
    pub async fn wait_log_folded(&self) {
        // The wal-index (sqlite.org/walformat.html): frames in the log at offset 16,
        // frames copied into the database at offset 96.
        let shm = self.data_dir.join("metadata.sqlite-shm");
        let copied = || {
            let mut index = [0u8; 100];
            std::fs::File::open(&shm).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut index)).is_ok_and(|()| {
                let at = |o: usize| u32::from_ne_bytes(index[o..o + 4].try_into().unwrap());
                at(96) >= at(16)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !copied() {
            assert!(std::time::Instant::now() < deadline, "the metadata log was never copied back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every file and directory under the data directory, relative to it.
    pub fn data_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.data_dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(&self.data_dir).unwrap().display().to_string());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    /// Checks that the upload at `location` stands at the end of `first` (a chunk cut off
    /// after it counted for nothing), then finishes it with `rest` and checks the blob reads
    /// back as exactly both: bytes the cut chunk left in the staged file were not kept.
    pub async fn resume_upload(&self, repo: &str, location: &str, first: &[u8], rest: &[u8]) {
        let status = self.get(location).await;
        assert_eq!(header(&status, "range"), format!("0-{}", first.len() - 1), "the cut chunk was not rolled back");
        let whole = [first, rest].concat();
        let digest = sha256(&whole);
        let resp = self
            .http
            .put(self.url(&format!("{location}?digest={digest}")))
            .header("content-range", format!("{}-{}", first.len(), whole.len() - 1))
            .body(rest.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(self.get(&format!("/v2/{repo}/blobs/{digest}")).await.bytes().await.unwrap(), whole);
    }

    /// The server's log lines that contain every one of `words`, waiting up to 5 s for the
    /// first (the thread that reads the server's output passes lines on a little later).
    pub async fn logged(&self, words: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.logged_now(words);
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's log lines so far, each parsed as JSON (for `BOSUN_LOG_FORMAT=json`).
    pub fn logged_json(&self) -> Vec<Value> {
        let lines = self.log.lock().unwrap();
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    /// The server's log lines so far that contain every one of `words`.
    pub fn logged_now(&self, words: &[&str]) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| words.iter().all(|w| l.contains(w))).cloned().collect()
    }

    /// The address a log line saying `message` gives (`addr=`), as of the start.
    pub fn logged_addr(&self, message: &str) -> Option<String> {
        self.log.lock().unwrap().iter().find_map(|l| logged_addr(l, message))
    }

    /// Changes the server's database behind its back, as a bug or a hand edit could.
    pub fn tamper(&self, sql: &str) {
        let db = rusqlite::Connection::open(self.data_dir.join("metadata.sqlite")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.execute_batch(sql).unwrap();
    }

    /// Stops the server with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as a supervisor stopping the server does.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) takes no pointers; the pid is our own child's, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM to {pid}");
    }

    /// Waits up to `limit` for the server to exit: its exit status, or None if it still runs.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for bosun") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Bytes of the files under `path` (their lengths, as `du --apparent-size` counts).
pub fn apparent_size(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        std::fs::read_dir(path).unwrap().map(|e| apparent_size(&e.unwrap().path())).sum()
    } else {
        meta.len()
    }
}

pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    let own = meta.blocks() * 512;
    if meta.is_dir() {
        own + std::fs::read_dir(path).unwrap().map(|e| disk_usage(&e.unwrap().path())).sum::<u64>()
    } else {
        own
    }
}

/// Pushes an OCI index of `children` (already pushed manifests with their bodies).
pub async fn push_index(s: &Server, repo: &str, reference: &str, children: &[(Vec<u8>, String)]) -> (Vec<u8>, String) {
    let manifests: Vec<Value> = children
        .iter()
        .enumerate()
        .map(|(i, (body, digest))| {
            json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": body.len(),
                   "platform": {"architecture": format!("arch{i}"), "os": "linux"}})
        })
        .collect();
    let body =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap();
    let resp = s.put_manifest(repo, reference, OCI_INDEX, &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
    let digest = sha256(&body);
    (body, digest)
}

/// A tiny deterministic generator, so a failing sequence can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// One of `items`.
    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.next(items.len() as u64) as usize]
    }
}

/// The seed of a randomized test: `BOSUN_TEST_SEED`, or the clock (printed, to replay).
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("BOSUN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{test} seed: {seed} (replay with BOSUN_TEST_SEED={seed})");
    seed | 1
}
