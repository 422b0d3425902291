//! `_catalog` and `tags/list`: lexical order, `n`/`last` pagination, `Link` headers.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn tags_paginate_in_lexical_order() {
    let s = Server::start();
    let (body, _) = s.push_image("list/tags", "b", &[b"x"]).await;
    for tag in ["a", "C", "v1.10.0", "v1.9.0", "_z"] {
        assert_eq!(s.put_manifest("list/tags", tag, OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    }
    let all: Value = s.get("/v2/list/tags/tags/list").await.json().await.unwrap();
    assert_eq!(all["name"], "list/tags");
    assert_eq!(all["tags"], json!(["C", "_z", "a", "b", "v1.10.0", "v1.9.0"]));
    for path in ["/v2/list/tags/tags/list", "/v2/_catalog"] {
        let head = s.head(path).await;
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
        assert_eq!(header(&head, "content-type"), "application/json", "HEAD {path}");
    }

    let mut seen = Vec::new();
    let mut next = Some("/v2/list/tags/tags/list?n=4".to_owned());
    while let Some(path) = next {
        let resp = s.get(&path).await;
        next = resp.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with("rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
        let page: Value = resp.json().await.unwrap();
        seen.extend(page["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()));
    }
    assert_eq!(seen, ["C", "_z", "a", "b", "v1.10.0", "v1.9.0"]);

    let after: Value = s.get("/v2/list/tags/tags/list?n=2&last=a").await.json().await.unwrap();
    assert_eq!(after["tags"], json!(["b", "v1.10.0"]));
    let empty: Value = s.get("/v2/list/tags/tags/list?n=0").await.json().await.unwrap();
    assert_eq!(empty["tags"], json!([]));
    expect_error(s.get("/v2/list/tags/tags/list?n=-1").await, StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID")
        .await;
    expect_error(s.get("/v2/unknown/tags/list").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn catalog_lists_repositories_in_order() {
    let s = Server::start();
    for repo in ["zeta", "alpha/one", "alpha/two", "mid"] {
        s.push_image(repo, "v1", &[repo.as_bytes()]).await;
    }
    let all: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(all["repositories"], json!(["alpha/one", "alpha/two", "mid", "zeta"]));
    let resp = s.get("/v2/_catalog?n=2").await;
    assert_eq!(header(&resp, "link"), "</v2/_catalog?n=2&last=alpha%2Ftwo>; rel=\"next\"");
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["repositories"], json!(["alpha/one", "alpha/two"]));
    let rest: Value = s.get("/v2/_catalog?n=2&last=alpha%2Ftwo").await.json().await.unwrap();
    assert_eq!(rest["repositories"], json!(["mid", "zeta"]));
}
