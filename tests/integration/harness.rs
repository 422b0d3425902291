//! Starts the real `bosun` binary on a free loopback port with its own data directory, and
//! offers the small HTTP helpers the tests share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A running Bosun server, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub http: Client,
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

    /// Starts a server on an existing data directory (to test restarts).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        install_tls_provider();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bosun"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("BOSUN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start bosun");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("bosun exited before serving").expect("read bosun output");
            if line.contains("bosun is serving") {
                let start = line.find("addr=").expect("addr field") + 5;
                break line[start..].split_whitespace().next().expect("addr value").to_owned();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            _dir: None,
            http: Client::builder().timeout(Duration::from_secs(120)).build().expect("http client"),
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

    /// Pushes a small image (config + `layers`) under `reference`; returns the manifest
    /// bytes and digest.
    pub async fn push_image(&self, repo: &str, reference: &str, layers: &[&[u8]]) -> (Vec<u8>, String) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{}}}"#, layers.len());
        let config_digest = self.push_blob(repo, config.as_bytes()).await;
        let mut descs = Vec::new();
        for layer in layers {
            let d = self.push_blob(repo, layer).await;
            descs.push(json!({"mediaType": OCI_LAYER, "digest": d, "size": layer.len()}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": descs,
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        let resp = self.put_manifest(repo, reference, OCI_MANIFEST, &body).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        let digest = sha256(&body);
        (body, digest)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
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
