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

#[tokio::test]
async fn single_image_push_pull_delete() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let image = write_image(&src, "amd64", b"base layer", 20);
    write_index_json(&src, &image, "v1");
    let dest = format!("docker://{}/skopeo/single:v1", s.addr);
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ])
    .await;

    // The manifest comes back byte for byte.
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &dest]).await;
    let digest = image["digest"].as_str().unwrap();
    assert_eq!(raw.as_bytes(), blob_bytes(&src, digest));

    let out = dir.path().join("out");
    skopeo(&["copy", "--quiet", "--src-tls-verify=false", &dest, &format!("oci:{}:v1", out.display())]).await;
    let manifest: Value = serde_json::from_slice(&blob_bytes(&src, digest)).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(blob_bytes(&out, d), blob_bytes(&src, d), "layer {d}");
    }

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
    skopeo(&[
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:latest", src.display()),
        &dest,
    ])
    .await;
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &dest]).await;
    assert_eq!(raw.as_bytes(), blob_bytes(&src, index_desc["digest"].as_str().unwrap()));

    let out = dir.path().join("out");
    skopeo(&["copy", "--quiet", "--all", "--src-tls-verify=false", &dest, &format!("oci:{}:latest", out.display())])
        .await;
    for platform in [&amd, &arm] {
        let d = platform["digest"].as_str().unwrap();
        assert_eq!(blob_bytes(&out, d), blob_bytes(&src, d));
        let manifest: Value = serde_json::from_slice(&blob_bytes(&src, d)).unwrap();
        for layer in manifest["layers"].as_array().unwrap() {
            let ld = layer["digest"].as_str().unwrap();
            assert_eq!(blob_bytes(&out, ld), blob_bytes(&src, ld));
        }
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
    let layout = format!("oci:{}:v1", src.display());
    for round in 0..2 {
        skopeo(&["copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests", &layout, &dest]).await;
        s.verify_image("skopeo/again", "v1").await.unwrap();
        skopeo(&["delete", "--tls-verify=false", &dest]).await;
        let report = s.gc(false).await;
        assert_eq!(report["blobs_removed"], 3, "round {round}: {report}");
    }
    // Pushed again after a collection, without a restart: skopeo must upload every layer
    // again (no stale "already exists") and the image must pull.
    skopeo(&["copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests", &layout, &dest]).await;
    let out = dir.path().join("out");
    skopeo(&["copy", "--quiet", "--src-tls-verify=false", &dest, &format!("oci:{}:v1", out.display())]).await;
    let digest = image["digest"].as_str().unwrap();
    assert_eq!(blob_bytes(&out, digest), blob_bytes(&src, digest));
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
    skopeo(&[
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:latest", src.display()),
        &dest,
    ])
    .await;
    for _ in 0..3 {
        let report = s.gc(false).await;
        assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    }
    let out = dir.path().join("out");
    skopeo(&["copy", "--quiet", "--all", "--src-tls-verify=false", &dest, &format!("oci:{}:latest", out.display())])
        .await;
    for p in &platforms {
        let d = p["digest"].as_str().unwrap();
        let manifest: Value = serde_json::from_slice(&blob_bytes(&src, d)).unwrap();
        for blob in manifest["layers"].as_array().unwrap().iter().chain([&manifest["config"]]) {
            let bd = blob["digest"].as_str().unwrap();
            assert_eq!(blob_bytes(&out, bd), blob_bytes(&src, bd), "{bd}");
        }
    }
}
