//! The `oci-client` crate (what Rust tools such as wasm registries use) against Bosun.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::harness::*;

fn client(chunked: bool) -> Client {
    Client::new(ClientConfig { protocol: ClientProtocol::Http, use_monolithic_push: !chunked, ..Default::default() })
}

#[tokio::test]
async fn push_pull_tags_and_referrers() {
    let s = Server::start();
    for (repo, chunked) in [("oci/mono", false), ("oci/chunked", true)] {
        let c = client(chunked);
        let reference: Reference = format!("{}/{repo}:v1", s.addr).parse().unwrap();
        let layers = vec![
            ImageLayer::new(random_bytes(30, 3_000_000), IMAGE_LAYER_GZIP_MEDIA_TYPE.to_owned(), None),
            ImageLayer::new(random_bytes(31, 1000), IMAGE_LAYER_GZIP_MEDIA_TYPE.to_owned(), None),
        ];
        let config =
            Config::new(br#"{"os":"linux","architecture":"amd64"}"#.to_vec(), IMAGE_CONFIG_MEDIA_TYPE.to_owned(), None);
        let patches_before = s.requests_counted("upload", "PATCH", "2xx").await;
        c.push(&reference, &layers, config, &RegistryAuth::Anonymous, None).await.unwrap();
        // The chunked client really sent its layers in PATCHes; the other, in one request.
        let sent = s.requests_counted("upload", "PATCH", "2xx").await - patches_before;
        assert_eq!(sent > 0, chunked, "{repo}: {sent} PATCHes");

        let pulled = c.pull(&reference, &RegistryAuth::Anonymous, vec![IMAGE_LAYER_GZIP_MEDIA_TYPE]).await.unwrap();
        // The client fetches layers concurrently, so their order is not the manifest's.
        let mut got: Vec<String> = pulled.layers.iter().map(|l| sha256(&l.data)).collect();
        let mut want: Vec<String> = layers.iter().map(|l| sha256(&l.data)).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);

        let tags = c.list_tags(&reference, &RegistryAuth::Anonymous, None, None).await.unwrap();
        assert_eq!(tags.tags, ["v1"]);

        let digest = pulled.digest.unwrap();
        let by_digest: Reference = format!("{}/{repo}@{digest}", s.addr).parse().unwrap();
        let referrers = c.pull_referrers(&by_digest, None).await.unwrap();
        assert!(referrers.manifests.is_empty());
    }
}
