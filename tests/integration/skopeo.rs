//! skopeo, as Debian ships it, pushing and pulling single and multi-arch images and
//! deleting them.

use std::io::Write;
use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

/// A blob written into an OCI layout; returns its descriptor.
pub fn write_blob(layout: &Path, media_type: &str, data: &[u8]) -> Value {
    let digest = sha256(data);
    let path = layout.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// An image for one platform, sharing `base` with its siblings; returns the manifest
/// descriptor.
pub fn write_image(layout: &Path, arch: &str, base: &[u8], seed: u64) -> Value {
    let base = write_blob(layout, OCI_LAYER, &gzip(base));
    let own = write_blob(layout, OCI_LAYER, &gzip(&random_bytes(seed, 300_000)));
    let config = json!({"architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"base"), sha256(arch.as_bytes())]}});
    let config = write_blob(layout, OCI_CONFIG, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [base, own]});
    let mut desc = write_blob(layout, OCI_MANIFEST, &serde_json::to_vec_pretty(&manifest).unwrap());
    desc["platform"] = json!({"architecture": arch, "os": "linux"});
    desc
}

/// Writes an OCI layout holding `top` under `tag`.
pub fn write_index_json(layout: &Path, top: &Value, tag: &str) {
    let mut top = top.clone();
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

pub async fn skopeo(args: &[&str]) -> String {
    let out = tokio::process::Command::new("skopeo")
        .args(args)
        .output()
        .await
        .expect("skopeo must be installed (apt-get install skopeo; .ci/run does it)");
    assert!(out.status.success(), "skopeo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn blob_bytes(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap()
}

/// `skopeo copy` from the OCI layout `src` (tag `tag`) to `dest`, every platform with `all`.
pub async fn push_layout(src: &Path, tag: &str, dest: &str, all: bool) {
    let from = format!("oci:{}:{tag}", src.display());
    let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"];
    if all {
        args.push("--all");
    }
    skopeo(&[args.as_slice(), &[from.as_str(), dest]].concat()).await;
}

/// `skopeo copy` from `src` into the OCI layout `out` (tag `tag`), every platform with `all`.
pub async fn pull_layout(src: &str, out: &Path, tag: &str, all: bool) {
    let to = format!("oci:{}:{tag}", out.display());
    let mut args = vec!["copy", "--quiet", "--src-tls-verify=false"];
    if all {
        args.push("--all");
    }
    skopeo(&[args.as_slice(), &[src, to.as_str()]].concat()).await;
}

/// Asserts that the image manifest `digest` and its config and layers arrived in `out`
/// exactly as they are in `src`.
pub fn assert_image_copied(src: &Path, out: &Path, digest: &str) {
    assert_eq!(blob_bytes(out, digest), blob_bytes(src, digest), "manifest {digest}");
    let manifest: Value = serde_json::from_slice(&blob_bytes(src, digest)).unwrap();
    for blob in manifest["layers"].as_array().unwrap().iter().chain([&manifest["config"]]) {
        let d = blob["digest"].as_str().unwrap();
        assert_eq!(blob_bytes(out, d), blob_bytes(src, d), "blob {d}");
    }
}

#[tokio::test]
async fn single_image_push_pull_delete() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let image = write_image(&src, "amd64", b"base layer", 20);
    write_index_json(&src, &image, "v1");
    let dest = format!("docker://{}/skopeo/single:v1", s.addr);
    push_layout(&src, "v1", &dest, false).await;

    // The manifest comes back byte for byte.
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &dest]).await;
    let digest = image["digest"].as_str().unwrap();
    assert_eq!(raw.as_bytes(), blob_bytes(&src, digest));

    let out = dir.path().join("out");
    pull_layout(&dest, &out, "v1", false).await;
    assert_image_copied(&src, &out, digest);

    skopeo(&["delete", "--tls-verify=false", &dest]).await;
    assert_eq!(s.get(&format!("/v2/skopeo/single/manifests/{digest}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.get("/v2/skopeo/single/manifests/v1").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn multi_arch_index_copy_all() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let base = random_bytes(21, 200_000);
    let amd = write_image(&src, "amd64", &base, 22);
    let arm = write_image(&src, "arm64", &base, 23);
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm]});
    let index_desc = write_blob(&src, OCI_INDEX, &serde_json::to_vec(&index).unwrap());
    write_index_json(&src, &index_desc, "latest");

    let dest = format!("docker://{}/skopeo/multi:latest", s.addr);
    push_layout(&src, "latest", &dest, true).await;
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &dest]).await;
    assert_eq!(raw.as_bytes(), blob_bytes(&src, index_desc["digest"].as_str().unwrap()));

    let out = dir.path().join("out");
    pull_layout(&dest, &out, "latest", true).await;
    for platform in [&amd, &arm] {
        assert_image_copied(&src, &out, platform["digest"].as_str().unwrap());
    }
    // A client asking for one platform gets it through the index.
    let resp = s
        .http
        .get(s.url(&format!("/v2/skopeo/multi/manifests/{}", arm["digest"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn delete_collect_and_push_again_with_skopeo() {
    let s = Server::start_with(GC_NOW);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let image = write_image(&src, "amd64", &random_bytes(24, 100_000), 25);
    write_index_json(&src, &image, "v1");
    let dest = format!("docker://{}/skopeo/again:v1", s.addr);
    for round in 0..2 {
        push_layout(&src, "v1", &dest, false).await;
        s.verify_image("skopeo/again", "v1").await.unwrap();
        skopeo(&["delete", "--tls-verify=false", &dest]).await;
        let report = s.gc(false).await;
        assert_eq!(report["blobs_removed"], 3, "round {round}: {report}");
    }
    // Pushed again after a collection, without a restart: skopeo must upload every layer
    // again (no stale "already exists") and the image must pull.
    push_layout(&src, "v1", &dest, false).await;
    let out = dir.path().join("out");
    pull_layout(&dest, &out, "v1", false).await;
    assert_image_copied(&src, &out, image["digest"].as_str().unwrap());
}

#[tokio::test]
async fn multi_arch_copy_all_survives_collections() {
    let s = Server::start_with(GC_NOW);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let base = random_bytes(26, 100_000);
    let platforms = [write_image(&src, "amd64", &base, 27), write_image(&src, "arm64", &base, 28)];
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": platforms});
    let index_desc = write_blob(&src, OCI_INDEX, &serde_json::to_vec(&index).unwrap());
    write_index_json(&src, &index_desc, "latest");
    let dest = format!("docker://{}/skopeo/multi-gc:latest", s.addr);
    push_layout(&src, "latest", &dest, true).await;
    for _ in 0..3 {
        let report = s.gc(false).await;
        assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    }
    let out = dir.path().join("out");
    pull_layout(&dest, &out, "latest", true).await;
    for p in &platforms {
        assert_image_copied(&src, &out, p["digest"].as_str().unwrap());
    }
}
