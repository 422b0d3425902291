//! Manifests: push and pull by tag and digest, byte-exact storage, validation, index
//! children, subjects, and deletes.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn push_pull_by_tag_and_digest_byte_for_byte() {
    let s = Server::start();
    let config = s.push_blob("m/exact", b"{}").await;
    // Unusual but valid JSON formatting must survive untouched.
    let body = format!(
        "{{\n  \"schemaVersion\" : 2,\n  \"mediaType\": \"{OCI_MANIFEST}\",\n  \"config\": {{\"mediaType\": \"{OCI_CONFIG}\", \"digest\": \"{config}\", \"size\": 2}},\n  \"layers\": [],\n  \"annotations\": {{\"z\": \"1\", \"a\": \"2\"}}\n}}\n"
    );
    let resp = s.put_manifest("m/exact", "v1", OCI_MANIFEST, body.as_bytes()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let digest = sha256(body.as_bytes());
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(header(&resp, "location"), format!("/v2/m/exact/manifests/{digest}"));

    for reference in ["v1", digest.as_str()] {
        let got = s
            .http
            .get(s.url(&format!("/v2/m/exact/manifests/{reference}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(header(&got, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&got, "docker-content-digest"), digest);
        assert_eq!(got.bytes().await.unwrap(), body.as_bytes());
        let head = s.head(&format!("/v2/m/exact/manifests/{reference}")).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(header(&head, "content-length"), body.len().to_string());
        assert_eq!(header(&head, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&head, "docker-content-digest"), digest);
    }
    // Pushing under a digest the body does not have is refused.
    let wrong = sha256(b"other");
    let resp = s.put_manifest("m/exact", &wrong, OCI_MANIFEST, body.as_bytes()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn docker_schema2_and_manifest_list() {
    let s = Server::start();
    let config = s.push_blob("docker/img", b"{\"os\":\"linux\"}").await;
    let layer = s.push_blob("docker/img", b"layer").await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 14},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": 5}],
    });
    let body = serde_json::to_vec(&m).unwrap();
    let resp = s
        .put_manifest("docker/img", &sha256(&body), "application/vnd.docker.distribution.manifest.v2+json", &body)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let list = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": sha256(&body), "size": body.len(), "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    let list_body = serde_json::to_vec(&list).unwrap();
    let resp = s
        .put_manifest("docker/img", "latest", "application/vnd.docker.distribution.manifest.list.v2+json", &list_body)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // A client that only accepts single images is not handed a list.
    let resp = s
        .http
        .get(s.url("/v2/docker/img/manifests/latest"))
        .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let resp = s
        .http
        .get(s.url("/v2/docker/img/manifests/latest"))
        .header("accept", "application/vnd.docker.distribution.manifest.list.v2+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), list_body);
}

#[tokio::test]
async fn validation_refuses_bad_manifests_and_stores_nothing() {
    let s = Server::start_with(&[("BOSUN_MAX_MANIFEST_BYTES", "2048")]);
    let config = s.push_blob("val", b"{}").await;
    let missing = sha256(b"never pushed");
    let image = |layer: &str, size: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": size}],
        }))
        .unwrap()
    };
    let resp = s.put_manifest("val", "t", OCI_MANIFEST, &image(&missing, 12)).await;
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert!(msg.contains(&missing));
    // A wrong size for a known blob.
    let resp = s.put_manifest("val", "t", OCI_MANIFEST, &image(&config, 99)).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // An index whose child is not in the repository.
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 10}]}))
    .unwrap();
    let resp = s.put_manifest("val", "t", OCI_INDEX, &index).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    // An index whose child is there, with a wrong size: pullers verify it.
    let child = image(&config, 2);
    let child_digest = sha256(&child);
    assert_eq!(s.put_manifest("val", &child_digest, OCI_MANIFEST, &child).await.status(), StatusCode::CREATED);
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len() + 1}]}))
    .unwrap();
    let resp = s.put_manifest("val", "t", OCI_INDEX, &index).await;
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    assert!(msg.contains(&format!("the manifest has {}", child.len())), "{msg}");
    // A Content-Type that is not text cannot be checked against the body.
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"application/\xff").unwrap();
    let resp = s.http.put(s.url("/v2/val/manifests/t")).header("content-type", unreadable).body(image(&config, 2));
    expect_error(resp.send().await.unwrap(), StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // The manifest as a JSON array, its fields by position: no client could read it back.
    let array = format!(r#"[2,"{OCI_MANIFEST}",null,["{OCI_CONFIG}","{config}",2],[],null,null,null,null]"#);
    let resp = s.put_manifest("val", "t", OCI_MANIFEST, array.as_bytes()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // Schema 1, with a message that says what to do.
    let schema1 = br#"{"schemaVersion":1,"name":"val","tag":"t","fsLayers":[],"history":[]}"#;
    let resp = s.put_manifest("val", "t", "application/vnd.docker.distribution.manifest.v1+prettyjws", schema1).await;
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    assert!(msg.contains("schema 1"), "{msg}");
    // Not JSON; media type mismatch; over the size cap.
    expect_error(
        s.put_manifest("val", "t", OCI_MANIFEST, b"{not json").await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    )
    .await;
    expect_error(
        s.put_manifest("val", "t", OCI_INDEX, &image(&config, 2)).await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    )
    .await;
    let mut big = image(&config, 2);
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(",\"annotations\":{{\"pad\":\"{}\"}}}}", "x".repeat(3000)).as_bytes());
    let msg = expect_error(
        s.put_manifest("val", "t", OCI_MANIFEST, &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "MANIFEST_INVALID",
    )
    .await;
    assert!(msg.contains(&format!("is {} bytes, over", big.len())) && msg.contains("max_manifest_bytes"), "{msg}");
    // The same without Content-Length: refused unread past the limit, so its size is not
    // known, and the answer does not make one up.
    let chunks =
        futures_util::stream::iter(big.chunks(500).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let resp = s.http.put(s.url("/v2/val/manifests/t")).header("content-type", OCI_MANIFEST);
    let resp = resp.body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    let msg = expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID").await;
    assert!(msg.contains("manifest is over this registry's limit of 2048 bytes"), "{msg}");
    // Docker's schema 2 without its mediaType (only OCI may omit it).
    let untyped =
        String::from_utf8(image(&config, 2)).unwrap().replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
    let resp =
        s.put_manifest("val", "t", "application/vnd.docker.distribution.manifest.v2+json", untyped.as_bytes()).await;
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    assert!(msg.contains("must carry its mediaType"), "{msg}");
    // None of these created the tag.
    expect_error(s.get("/v2/val/manifests/t").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let tags: serde_json::Value = s.get("/v2/val/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!([]));
}

/// What a manifest references must be in its own repository: a blob or a child manifest
/// that only another repository holds is unknown here, as it would be to a puller.
#[tokio::test]
async fn a_manifest_cannot_reference_what_only_another_repository_holds() {
    let s = Server::start();
    let (blobs, body) = image(&[b"a layer of repository a"]);
    for blob in &blobs {
        s.push_blob("xref/a", blob).await;
    }
    let resp = s.put_manifest("xref/b", "v1", OCI_MANIFEST, &body).await;
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert!(msg.contains(&sha256(&blobs[0])) || msg.contains(&sha256(&blobs[1])), "{msg}");
    let child = (body.clone(), sha256(&body));
    assert_eq!(s.put_manifest("xref/a", &child.1, OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    s.push_blob("xref/b", b"keeps repository b in existence").await;
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child.1, "size": body.len()}]}))
    .unwrap();
    let resp = s.put_manifest("xref/b", "multi", OCI_INDEX, &index).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    // In repository a, where both are, the same index is taken.
    assert_eq!(s.put_manifest("xref/a", "multi", OCI_INDEX, &index).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn subject_header_and_referrers_in_either_order() {
    let s = Server::start();
    let config = s.push_blob("ref", b"{}").await;
    let subject_body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2}, "layers": [],
    }))
    .unwrap();
    let subject = sha256(&subject_body);
    let sig = |kind: &str, n: u32| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": kind,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
            "annotations": {"n": n.to_string()},
        }))
        .unwrap()
    };
    // The referrer arrives before its subject: accepted, with OCI-Subject.
    let sig1 = sig("application/vnd.example.sig", 1);
    let resp = s.put_manifest("ref", &sha256(&sig1), OCI_MANIFEST, &sig1).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-subject"), subject);
    assert_eq!(s.put_manifest("ref", "v1", OCI_MANIFEST, &subject_body).await.status(), StatusCode::CREATED);
    let sbom = sig("application/vnd.example.sbom", 2);
    assert_eq!(s.put_manifest("ref", &sha256(&sbom), OCI_MANIFEST, &sbom).await.status(), StatusCode::CREATED);

    let resp = s.get(&format!("/v2/ref/referrers/{subject}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), OCI_INDEX);
    assert!(resp.headers().get("oci-filters-applied").is_none());
    let index: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    let resp = s.get(&format!("/v2/ref/referrers/{subject}?artifactType=application/vnd.example.sbom")).await;
    assert_eq!(header(&resp, "oci-filters-applied"), "artifactType");
    let index: serde_json::Value = resp.json().await.unwrap();
    let only = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(only["digest"], sha256(&sbom));
    assert_eq!(only["artifactType"], "application/vnd.example.sbom");
    assert_eq!(only["annotations"]["n"], "2");
    assert_eq!(only["size"], sbom.len());
    // A page at a time (`n`, a thousand at most), the next one named by `Link`.
    let resp = s.get(&format!("/v2/ref/referrers/{subject}?n=1")).await;
    let link = header(&resp, "link");
    let first: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(first["manifests"].as_array().unwrap().len(), 1, "{first}");
    let next = link.strip_prefix('<').and_then(|l| l.split_once(">; rel=\"next\"")).expect("a next link").0;
    let resp = s.get(next).await;
    assert!(resp.headers().get("link").is_none(), "a page after the last");
    let second: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(second["manifests"].as_array().unwrap().len(), 1, "{second}");
    assert_ne!(first["manifests"][0]["digest"], second["manifests"][0]["digest"]);
    // An empty filter filters nothing.
    let resp = s.get(&format!("/v2/ref/referrers/{subject}?artifactType=")).await;
    assert!(resp.headers().get("oci-filters-applied").is_none());
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["manifests"].as_array().unwrap().len(), 2);
    // HEAD as GET, without the body.
    let head = s.head(&format!("/v2/ref/referrers/{subject}")).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-type"), OCI_INDEX);
    // No referrers, unknown repository: an empty index, never 404.
    let none: serde_json::Value = s.get(&format!("/v2/nothing/here/referrers/{config}")).await.json().await.unwrap();
    assert_eq!(none["manifests"], json!([]));
    expect_error(s.get("/v2/ref/referrers/sha256:bad").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

/// Annotations can make each referrer as large as a manifest: a page holds about 1 MiB of
/// them (it held a thousand, 4 GB of answer built in memory), and the pages still list
/// every referrer once.
#[tokio::test]
async fn referrers_with_large_annotations_come_in_pages_of_a_mebibyte() {
    let s = Server::start();
    let (subject_body, subject) = s.push_image("big/ref", "v1", &[b"layer"]).await;
    let config = s.push_blob("big/ref", b"{}").await;
    let mut pushed = Vec::new();
    for i in 0..12 {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.big",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
            "annotations": {"n": i.to_string(), "blob": "x".repeat(300 << 10)},
        }))
        .unwrap();
        pushed.push(sha256(&body));
        assert_eq!(s.put_manifest("big/ref", &sha256(&body), OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    }
    let mut listed = Vec::new();
    let mut next = Some(format!("/v2/big/ref/referrers/{subject}?artifactType=application/vnd.example.big"));
    while let Some(page) = next.take() {
        let resp = s.get(&page).await;
        assert_eq!(resp.status(), StatusCode::OK);
        next = resp.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            l.strip_prefix('<').and_then(|l| l.split_once(">; rel=\"next\"")).expect("a next link").0.to_owned()
        });
        let body = resp.bytes().await.unwrap();
        assert!(body.len() <= (1 << 20) + (300 << 10), "a page of {} bytes", body.len());
        let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        assert!(!manifests.is_empty() && manifests.len() <= 4, "{} referrers in a page", manifests.len());
        listed.extend(manifests.iter().map(|m| m["digest"].as_str().unwrap().to_owned()));
        if let Some(next) = &next {
            assert!(next.contains("artifactType=application%2Fvnd.example.big"), "the filter carries on: {next}");
        }
    }
    pushed.sort();
    assert_eq!(listed, pushed);
}

/// Conditional writes (RFC 9110 §13.1), checked in the writing transaction: If-None-Match
/// `*` pushes a tag only if it does not exist, If-Match moves or deletes one only from the
/// manifest the client saw (compare and swap); a failed one is a 412 and changes nothing.
#[tokio::test]
async fn conditional_pushes_and_deletes() {
    let s = Server::start();
    let (first_body, first) = s.push_image("cas/a", "v1", &[b"first"]).await;
    let (second_body, second) = s.push_image("cas/a", "", &[b"second"]).await;
    let put = |tag: &'static str, body: Vec<u8>, header: &'static str, value: String| {
        s.http
            .put(s.url(&format!("/v2/cas/a/manifests/{tag}")))
            .header("content-type", OCI_MANIFEST)
            .header(header, value)
            .body(body)
            .send()
    };
    let quoted = |d: &str| format!("\"{d}\"");
    // Create only.
    let refused = put("v1", second_body.clone(), "if-none-match", "*".into()).await.unwrap();
    let msg = expect_error(refused, StatusCode::PRECONDITION_FAILED, "DENIED").await;
    assert!(msg.contains("cas/a:v1") && msg.contains(&first), "{msg}");
    assert_eq!(
        put("fresh", second_body.clone(), "if-none-match", "*".into()).await.unwrap().status(),
        StatusCode::CREATED
    );
    // Compare and swap: only from the manifest the client saw.
    let stale = put("v1", second_body.clone(), "if-match", quoted(&second)).await.unwrap();
    expect_error(stale, StatusCode::PRECONDITION_FAILED, "DENIED").await;
    assert_eq!(header(&s.head("/v2/cas/a/manifests/v1").await, "docker-content-digest"), first);
    let swapped = put("v1", second_body.clone(), "if-match", quoted(&first)).await.unwrap();
    assert_eq!(swapped.status(), StatusCode::CREATED);
    assert_eq!(header(&s.head("/v2/cas/a/manifests/v1").await, "docker-content-digest"), second);
    let missing = put("absent", first_body.clone(), "if-match", "*".into()).await.unwrap();
    expect_error(missing, StatusCode::PRECONDITION_FAILED, "DENIED").await;
    assert_eq!(s.get("/v2/cas/a/manifests/absent").await.status(), StatusCode::NOT_FOUND);
    // Deletes: of the manifest the client saw; an unknown one is still a 404.
    let delete = |path: String, value: String| s.http.delete(s.url(&path)).header("if-match", value).send();
    let stale = delete("/v2/cas/a/manifests/v1".into(), quoted(&first)).await.unwrap();
    expect_error(stale, StatusCode::PRECONDITION_FAILED, "DENIED").await;
    assert_eq!(s.get("/v2/cas/a/manifests/v1").await.status(), StatusCode::OK);
    assert_eq!(delete("/v2/cas/a/manifests/v1".into(), quoted(&second)).await.unwrap().status(), StatusCode::ACCEPTED);
    let gone = delete("/v2/cas/a/manifests/v1".into(), quoted(&second)).await.unwrap();
    expect_error(gone, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // By digest: the condition names the manifest the URL names.
    let by_digest = format!("/v2/cas/a/manifests/{first}");
    let stale = delete(by_digest.clone(), quoted(&second)).await.unwrap();
    expect_error(stale, StatusCode::PRECONDITION_FAILED, "DENIED").await;
    assert_eq!(s.get(&by_digest).await.status(), StatusCode::OK);
    assert_eq!(delete(by_digest.clone(), quoted(&first)).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(s.get(&by_digest).await.status(), StatusCode::NOT_FOUND);
    let loose = s.push_blob("cas/a", b"loose").await;
    let stale = delete(format!("/v2/cas/a/blobs/{loose}"), quoted(&first)).await.unwrap();
    expect_error(stale, StatusCode::PRECONDITION_FAILED, "DENIED").await;
    assert_eq!(s.head(&format!("/v2/cas/a/blobs/{loose}")).await.status(), StatusCode::OK);
    assert_eq!(
        delete(format!("/v2/cas/a/blobs/{loose}"), quoted(&loose)).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // A condition is about what the URL names: with `?tag=` tags, which would move
    // unchecked, the push is refused.
    let with_tags = s
        .http
        .put(s.url(&format!("/v2/cas/a/manifests/{first}?tag=fresh")))
        .header("content-type", OCI_MANIFEST)
        .header("if-none-match", "*")
        .body(first_body)
        .send()
        .await
        .unwrap();
    expect_error(with_tags, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    assert_eq!(header(&s.head("/v2/cas/a/manifests/fresh").await, "docker-content-digest"), second);
}

/// A delete refused without its condition (an immutable tag: 403) is refused the same way
/// with one that fails, not with a 412: conditions are judged last.
#[tokio::test]
async fn a_refused_delete_is_refused_whatever_its_condition() {
    let config = "[[immutable]]\nrepositories = \"cas/**\"\ntags = \"v*\"\n";
    let s = Server::start_with_config(config, &[]);
    let (_, digest) = s.push_image("cas/imm", "v1", &[b"kept"]).await;
    for path in ["/v2/cas/imm/manifests/v1".to_owned(), format!("/v2/cas/imm/manifests/{digest}")] {
        let refused = s.http.delete(s.url(&path)).header("if-match", "\"sha256:other\"").send().await.unwrap();
        expect_error(refused, StatusCode::FORBIDDEN, "DENIED").await;
    }
}

#[tokio::test]
async fn deletes_by_tag_and_by_digest() {
    let s = Server::start();
    let (_, digest) = s.push_image("del/m", "v1", &[b"l1"]).await;
    // A second tag on the same manifest.
    let body = s.get("/v2/del/m/manifests/v1").await.bytes().await.unwrap();
    assert_eq!(s.put_manifest("del/m", "v2", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);

    // Deleting a tag untags only.
    assert_eq!(s.delete("/v2/del/m/manifests/v2").await.status(), StatusCode::ACCEPTED);
    expect_error(s.get("/v2/del/m/manifests/v2").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(s.get(&format!("/v2/del/m/manifests/{digest}")).await.status(), StatusCode::OK);
    expect_error(s.delete("/v2/del/m/manifests/v2").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // Deleting by digest removes every tag that pointed at it.
    assert_eq!(s.put_manifest("del/m", "v3", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    assert_eq!(s.delete(&format!("/v2/del/m/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    for r in ["v1", "v3", digest.as_str()] {
        expect_error(s.get(&format!("/v2/del/m/manifests/{r}")).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    let tags: serde_json::Value = s.get("/v2/del/m/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!([]));
    expect_error(s.delete("/v2/never/manifests/v1").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn a_child_of_an_index_cannot_be_deleted_before_the_index() {
    let s = Server::start();
    let (child_body, child) = s.push_image("multi", "", &[b"amd64 layer"]).await;
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": child_body.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}]}))
    .unwrap();
    assert_eq!(s.put_manifest("multi", "latest", OCI_INDEX, &index).await.status(), StatusCode::CREATED);
    let msg =
        expect_error(s.delete(&format!("/v2/multi/manifests/{child}")).await, StatusCode::METHOD_NOT_ALLOWED, "DENIED")
            .await;
    assert!(msg.contains(&sha256(&index)), "{msg}");
    assert_eq!(s.delete(&format!("/v2/multi/manifests/{}", sha256(&index))).await.status(), StatusCode::ACCEPTED);
    assert_eq!(s.delete(&format!("/v2/multi/manifests/{child}")).await.status(), StatusCode::ACCEPTED);
}

/// A push by digest may name tags to point at the manifest too (`?tag=`, spec 1.2): each is
/// listed back in `OCI-Tag`. The push and its tags are one: an invalid or immutable tag
/// among them refuses it all.
#[tokio::test]
async fn a_push_by_digest_can_tag_it_too() {
    let config = r#"
[[immutable]]
repositories = "tp/**"
tags_regex = "v[0-9]+"
"#;
    let s = Server::start_with_config(config, &[]);
    let blob = s.push_blob("tp/a", b"{}").await;
    let image = |layer: &str| {
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": blob, "size": 2},
            "layers": [], "annotations": {"layer": layer}}))
        .unwrap()
    };
    let (first, second) = (image("first"), image("second"));
    let put = |body: &[u8], query: &str| {
        let url = s.url(&format!("/v2/tp/a/manifests/{}?{query}", sha256(body)));
        s.http.put(url).header("content-type", OCI_MANIFEST).body(body.to_vec()).send()
    };
    let resp = put(&first, "tag=v1&tag=latest&tag=v1").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-tag"), "v1, latest", "each tag listed once");
    for tag in ["v1", "latest"] {
        assert_eq!(
            header(&s.head(&format!("/v2/tp/a/manifests/{tag}")).await, "docker-content-digest"),
            sha256(&first)
        );
    }
    // An invalid tag, or an immutable one that would move: nothing is stored or moved.
    let resp = put(&second, "tag=stable&tag=-bad").await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "TAG_INVALID").await;
    let resp = put(&second, "tag=stable&tag=v1").await.unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "DENIED").await;
    let second_url = format!("/v2/tp/a/manifests/{}", sha256(&second));
    assert_eq!(s.head(&second_url).await.status(), StatusCode::NOT_FOUND);
    let tags: serde_json::Value = s.get("/v2/tp/a/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["latest", "v1"]));
    // Without parameters a push by digest tags nothing and says so by sending no OCI-Tag.
    let resp = put(&second, "").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("oci-tag").is_none());
}
