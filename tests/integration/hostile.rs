//! Randomized hostile and concurrent use, from a seed (printed; replay with
//! `BOSUN_TEST_SEED`): malformed requests of every kind are answered, never with a server
//! error; and clients that upload (whole, in chunks, with wrong ranges and digests), push
//! manifests, indexes and referrers, delete, mount, collect and reconcile at once, with
//! no grace period, leave every tagged image intact and a reconcile with nothing to
//! find; the same with retention runs and plans, restores, pauses, an immutable tag and a
//! quota among them. Clients told MANIFEST_BLOB_UNKNOWN (a collection took their blobs)
//! push them again and retry, as real ones do; each test checks from the clients' tally
//! that what it is about happened (manifests and indexes stored, quota refusals,
//! restores, policy deletions, collections refused while paused), so that it cannot pass on
//! a run where nothing did. The seed replays each client's choices, not how the clients
//! interleave. A run of this kind found a session's file removed by a concurrent reconcile.

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gc_stress::{reconcile_finds_nothing, verify_all_tags};
use crate::harness::*;

/// A server error that is not "the disk is full".
fn server_error(status: StatusCode) -> bool {
    status.is_server_error() && status != StatusCode::INSUFFICIENT_STORAGE
}

#[tokio::test]
async fn malformed_requests_are_answered_never_with_a_server_error() {
    let mut rng = Rng(test_seed("hostile requests"));
    let s = Server::start_with(GC_NOW);
    let zeros = format!("sha256:{}", "0".repeat(64));
    let hello = sha256(b"hello");
    let names = ["a", "a/b", "A", "a..b", "a%2Fb", "%2e%2e", "..", "a%00b", "%C3%BC", "a%20b", "a_b", "a--b"];
    let long_name = "a/".repeat(150) + "a";
    let refs = ["latest", "-bad", "sha256:abc", "sha256:GGGG", "md5:x", "%20", "..", &zeros, &hello];
    let long_ref = "t".repeat(200);
    for i in 0..1500u64 {
        let name = if rng.next(20) == 0 { long_name.as_str() } else { rng.pick(&names) };
        let reference = if rng.next(20) == 0 { long_ref.as_str() } else { rng.pick(&refs) };
        let method =
            Method::from_bytes(rng.pick(&["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "BREW"]).as_bytes())
                .unwrap();
        let path = match rng.next(7) {
            0 => format!("/v2/{name}/manifests/{reference}"),
            1 => format!("/v2/{name}/blobs/{reference}"),
            2 => format!(
                "/v2/{name}/blobs/uploads/{}",
                rng.pick(&[
                    "",
                    "?digest=sha256:x",
                    &format!("?mount={reference}&from={name}"),
                    &format!("?digest={hello}")
                ])
            ),
            3 => format!("/v2/{name}/blobs/uploads/{}", rng.pick(&["x", "../x", &"a".repeat(32), &"0".repeat(500)])),
            4 => format!(
                "/v2/{name}/tags/list{}",
                rng.pick(&["", "?n=0", "?n=-1", "?n=x", "?n=99999999999999999999", "?last=%ff"])
            ),
            5 => format!("/v2/{name}/referrers/{reference}{}", rng.pick(&["", "?artifactType=", "?artifactType=x"])),
            _ => rng
                .pick(&[
                    "/v2",
                    "/v2/",
                    "/v2//",
                    "/v3/",
                    "/",
                    "/v2/_catalog?n=-5",
                    "/admin/gc?dry_run=maybe",
                    "/admin/gc/runs?limit=x",
                    "/admin/du?repository=%ff",
                    "/admin/deletions?limit=-1",
                    "/admin/nothing",
                ])
                .to_owned(),
        };
        let mut request = s.http.request(method.clone(), s.url(&path));
        if rng.next(3) == 0 {
            let range = rng.pick(&["0-4", "5-9", "bytes 0-4/5", "x", "0-", "-1-3", "18446744073709551615-0", "9-0"]);
            request = request.header("content-range", range);
        }
        if rng.next(3) == 0 {
            request = request.header(
                "range",
                rng.pick(&[
                    "bytes=0-10",
                    "bytes=-5",
                    "bytes=5-1",
                    "bytes=0-1,3-4",
                    "items=0-1",
                    "bytes=99999999999999999999-",
                ]),
            );
        }
        if rng.next(2) == 0 {
            let media = rng.pick(&[
                OCI_MANIFEST,
                OCI_INDEX,
                "text/plain",
                "",
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
            ]);
            request = request.header("content-type", media);
        }
        let body = match rng.next(5) {
            0 => Vec::new(),
            1 => random_bytes(i, rng.next(5000) as usize),
            2 => {
                let wrong = |rng: &mut Rng| {
                    rng.pick(&[&json!(-1), &json!("2"), &json!(null), &json!([]), &json!(1.5), &json!(u64::MAX)])
                        .clone()
                };
                let descriptor = json!({"mediaType": OCI_LAYER, "digest": reference, "size": wrong(&mut rng)});
                let manifest = json!({
                    "schemaVersion": wrong(&mut rng), "mediaType": rng.pick(&[OCI_MANIFEST, OCI_INDEX, "x"]),
                    "config": descriptor, "layers": [descriptor], "manifests": wrong(&mut rng), "subject": descriptor,
                });
                let bytes = serde_json::to_vec(&manifest).unwrap();
                let cut = if rng.next(4) == 0 { rng.next(bytes.len() as u64) as usize } else { bytes.len() };
                bytes[..cut].to_vec()
            }
            3 => b"[{\"config\": []}]".to_vec(),
            _ => serde_json::to_vec(&json!({"schemaVersion": 2, "config": {"digest": zeros, "size": 2}, "layers": {}}))
                .unwrap(),
        };
        let resp = request.body(body).send().await.unwrap();
        let status = resp.status();
        assert!(!server_error(status), "{method} {path}: {status} {}", resp.text().await.unwrap_or_default());
    }
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
}

/// A manifest a client pushed, and the blobs it references (to push them again).
#[derive(Clone)]
struct Pushed {
    repo: String,
    media: &'static str,
    body: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

impl Pushed {
    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media, "digest": sha256(&self.body), "size": self.body.len()})
    }
}

/// Uploads `data` to `repo` in one POST, as a client does again when told a manifest's blob
/// is unknown.
async fn upload(s: &Server, repo: &str, data: &[u8]) -> StatusCode {
    let post = s.http.post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data))));
    post.body(data.to_vec()).send().await.unwrap().status()
}

/// What a client's requests got back: how many of each (operation, status).
type Tally = BTreeMap<(&'static str, u16), u32>;

/// One client's random operations, every answer checked for a server error; returns the
/// tally of answers.
async fn random_client(s: Arc<Server>, task: u64, seed: u64) -> Tally {
    let mut rng = Rng(seed.wrapping_add(task * 0x9E37_79B9) | 1);
    let repos = [format!("hostile/t{task}"), "hostile/shared".to_owned(), "hostile/other".to_owned()];
    // Blobs this client uploaded, and manifests it pushed.
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifests: Vec<Pushed> = Vec::new();
    let mut tally = Tally::new();
    let mut check = |what: &'static str, status: StatusCode| {
        assert!(!server_error(status), "seed {seed}, task {task}: {what}: {status}");
        *tally.entry((what, status.as_u16())).or_default() += 1;
    };
    // A pause this client holds, until this step.
    let mut resume_at: Option<u64> = None;
    for step in 0..250u64 {
        if resume_at == Some(step) {
            check("resume", s.admin_post("/admin/gc/resume").await.0);
            resume_at = None;
        }
        let repo = repos[rng.next(3) as usize].clone();
        match rng.next(15) {
            // Upload a blob: whole, or in chunks, now and then with a wrong range or digest.
            0..=2 => {
                let data = random_bytes(seed ^ (task << 32) ^ step, rng.next(3000) as usize);
                let digest = sha256(&data);
                if rng.next(2) == 0 {
                    check("monolithic POST", upload(&s, &repo, &data).await);
                } else {
                    let resp = s.http.post(s.url(&format!("/v2/{repo}/blobs/uploads/"))).send().await.unwrap();
                    check("POST", resp.status());
                    if resp.status() != StatusCode::ACCEPTED {
                        continue;
                    }
                    let location = s.url(&header(&resp, "location"));
                    let split = rng.next(data.len() as u64 + 1) as usize;
                    let start = if rng.next(10) == 0 { 1 } else { 0 };
                    let end = (split + start).max(1) - 1;
                    let patch = s.http.patch(&location).header("content-range", format!("{start}-{end}"));
                    let patched = patch.body(data[..split].to_vec()).send().await.unwrap().status();
                    check("PATCH", patched);
                    let rest = if patched == StatusCode::ACCEPTED { &data[split..] } else { &data[..] };
                    let claimed = if rng.next(10) == 0 { sha256(b"wrong") } else { digest.clone() };
                    let put = s.http.put(format!("{location}?digest={claimed}")).body(rest.to_vec());
                    check("PUT", put.send().await.unwrap().status());
                }
                blobs.push((repo, data));
            }
            // An image manifest of blobs this client uploaded to this repository, now and
            // then with a wrong size or a subject. With no grace period a collection may
            // take the blobs first: the client uploads them again and retries, as a
            // client told MANIFEST_BLOB_UNKNOWN does.
            3..=4 => {
                let own: Vec<&Vec<u8>> = blobs.iter().filter(|b| b.0 == repo).map(|b| &b.1).collect();
                if own.is_empty() {
                    continue;
                }
                let picked: Vec<&Vec<u8>> =
                    (0..1 + rng.next(3)).map(|_| own[rng.next(own.len() as u64) as usize]).collect();
                let descriptor = |data: &[u8], rng: &mut Rng| {
                    let size = data.len() + if rng.next(15) == 0 { 1 } else { 0 };
                    json!({"mediaType": OCI_LAYER, "digest": sha256(data), "size": size})
                };
                let mut manifest = json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": descriptor(picked[0], &mut rng),
                    "layers": picked[1..].iter().map(|b| descriptor(b, &mut rng)).collect::<Vec<_>>(),
                });
                if !manifests.is_empty() && rng.next(3) == 0 {
                    let subject = &manifests[rng.next(manifests.len() as u64) as usize];
                    manifest["subject"] = subject.descriptor();
                    manifest["artifactType"] = json!("application/vnd.example.sig");
                }
                let body = serde_json::to_vec(&manifest).unwrap();
                let reference = if rng.next(2) == 0 { sha256(&body) } else { format!("t{}", rng.next(4)) };
                for _attempt in 0..5 {
                    let resp = s.put_manifest(&repo, &reference, OCI_MANIFEST, &body).await;
                    let status = resp.status();
                    check("PUT manifest", status);
                    if status == StatusCode::CREATED {
                        let referenced = picked.iter().map(|b| b.to_vec()).collect();
                        manifests.push(Pushed {
                            repo: repo.clone(),
                            media: OCI_MANIFEST,
                            body: body.clone(),
                            blobs: referenced,
                        });
                    }
                    if !resp.text().await.unwrap().contains("MANIFEST_BLOB_UNKNOWN") {
                        break;
                    }
                    for data in &picked {
                        check("monolithic POST again", upload(&s, &repo, data).await);
                    }
                }
            }
            // An index of manifests of this repository. A child collected meanwhile is
            // pushed again, and the index retried.
            5 => {
                // The newest: with no grace period, older untagged ones are soon collected.
                let children: Vec<_> = manifests
                    .iter()
                    .rev()
                    .filter(|m| m.repo == repo && m.media == OCI_MANIFEST)
                    .take(3)
                    .cloned()
                    .collect();
                if children.is_empty() {
                    continue;
                }
                let listed: Vec<Value> = children.iter().map(Pushed::descriptor).collect();
                let body =
                    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}))
                        .unwrap();
                let tag = format!("i{}", rng.next(3));
                for _attempt in 0..3 {
                    let resp = s.put_manifest(&repo, &tag, OCI_INDEX, &body).await;
                    let status = resp.status();
                    check("PUT index", status);
                    if status == StatusCode::CREATED {
                        manifests.push(Pushed {
                            repo: repo.clone(),
                            media: OCI_INDEX,
                            body: body.clone(),
                            blobs: Vec::new(),
                        });
                    }
                    if !resp.text().await.unwrap().contains("MANIFEST_BLOB_UNKNOWN") {
                        break;
                    }
                    for child in &children {
                        for data in &child.blobs {
                            check("monolithic POST again", upload(&s, &repo, data).await);
                        }
                        let put = s.put_manifest(&repo, &sha256(&child.body), child.media, &child.body).await;
                        check("PUT child again", put.status());
                    }
                }
            }
            6 if !manifests.is_empty() => {
                let pushed = &manifests[rng.next(manifests.len() as u64) as usize];
                let (repo, digest) = (pushed.repo.clone(), sha256(&pushed.body));
                let reference = if rng.next(2) == 0 { digest } else { format!("t{}", rng.next(4)) };
                check("DELETE manifest", s.delete(&format!("/v2/{repo}/manifests/{reference}")).await.status());
            }
            7 if !blobs.is_empty() => {
                let digest = sha256(&blobs[rng.next(blobs.len() as u64) as usize].1);
                check("DELETE blob", s.delete(&format!("/v2/{repo}/blobs/{digest}")).await.status());
            }
            8 if !blobs.is_empty() => {
                let digest = sha256(&blobs[rng.next(blobs.len() as u64) as usize].1);
                let from = &repos[rng.next(3) as usize];
                let resp = s.mount(&repo, &digest, from).await;
                check("mount", resp.status());
                if resp.status() == StatusCode::ACCEPTED {
                    check("cancel", s.delete(&header(&resp, "location")).await.status());
                }
            }
            9 => check("collect", s.admin_post("/admin/gc").await.0),
            10 => check("reconcile", s.reconcile(false).await.status()),
            // Tag deletions by policy, at once or through a plan that may be overtaken.
            12 => {
                let (status, done) = if rng.next(2) == 0 {
                    s.admin_post("/admin/retention/run").await
                } else {
                    let (status, plan) = s.admin_post(&format!("/admin/retention/plan?repository={repo}")).await;
                    check("retention plan", status);
                    let Some(id) = plan["id"].as_i64() else { continue };
                    s.admin_post(&format!("/admin/retention/apply?plan={id}")).await
                };
                check("retention", status);
                if done["tags_deleted"].as_u64().is_some_and(|n| n > 0) {
                    check("retention deleted tags", status);
                }
            }
            13 => {
                let path = format!("/admin/restore?repository={repo}&tag=t{}", rng.next(4));
                check("restore", s.admin_post(&path).await.0);
            }
            // Paused for a few steps while the others go on (a pause that another client
            // ended is ended). Every pause is followed by its own client's resume, so the
            // last word is a resume.
            14 if resume_at.is_none() => {
                check("pause", s.admin_post("/admin/gc/pause?reason=hostile").await.0);
                resume_at = Some(step + 1 + rng.next(8));
            }
            _ => {
                for path in [format!("/v2/{repo}/tags/list"), "/v2/_catalog".to_owned()] {
                    check("GET", s.get(&path).await.status());
                }
            }
        }
    }
    if resume_at.is_some() {
        check("resume", s.admin_post("/admin/gc/resume").await.0);
    }
    tally
}

/// Three random clients at once, then every tag verified and a reconcile that must find
/// no count off (quota groups included), no dangling reference and no missing blob.
/// Returns the clients' tally, printed, so that a test can check that what it is about
/// happened at all.
async fn run_clients(s: Arc<Server>, seed: u64) -> Tally {
    let clients: Vec<_> = (0..3).map(|t| tokio::spawn(random_client(s.clone(), t, seed))).collect();
    let mut tally = Tally::new();
    for c in clients {
        for (key, n) in c.await.unwrap() {
            *tally.entry(key).or_default() += n;
        }
    }
    eprintln!("seed {seed}: {tally:?}");
    assert!(verify_all_tags(&s).await > 0, "seed {seed}: no tag to verify");
    reconcile_finds_nothing(&s, &format!("seed {seed}")).await;
    tally
}

/// Fails unless each (`what`, `status`) was answered at least once. (These depend on how
/// the clients interleave, which the seed does not replay; each expects dozens, so a miss
/// is very unlikely, not impossible.)
fn expect_answered(tally: &Tally, seed: u64, expected: &[(&str, StatusCode)]) {
    for &(what, status) in expected {
        let n = tally.get(&(what, status.as_u16())).copied().unwrap_or(0);
        assert!(n > 0, "seed {seed}: no {what} answered {status}: {tally:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_random_use_leaves_every_tag_intact_and_nothing_to_reconcile() {
    let seed = test_seed("concurrent random use");
    let tally = run_clients(Arc::new(Server::start_with(GC_NOW)), seed).await;
    expect_answered(
        &tally,
        seed,
        &[
            ("PUT manifest", StatusCode::CREATED),
            ("PUT index", StatusCode::CREATED),
            ("monolithic POST again", StatusCode::CREATED),
            ("PUT", StatusCode::CREATED),
            ("mount", StatusCode::CREATED),
            ("collect", StatusCode::OK),
        ],
    );
}

/// The same under policies: a retention policy that keeps 2 tags of each repository (and
/// the indexes' tags), a tag that nothing may move or delete, a quota small enough to
/// refuse uploads, and a restore window, so that restores bring tags back among the
/// deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_random_use_under_policies_and_quotas_leaves_everything_consistent() {
    let seed = test_seed("concurrent random use under policies");
    let config = r#"
[[retention]]
name = "hostile"
repositories = "hostile/*"
keep = { any = [ { newest = 2 }, { matching = "i*" } ] }

[[immutable]]
repositories = "hostile/shared"
tags_regex = "t0"

[[quota]]
repositories = "hostile/*"
max_bytes = 30000
total = true
"#;
    let s = Arc::new(Server::start_with_config(config, &[GC_NOW, &[("BOSUN_RESTORE_WINDOW", "1h")]].concat()));
    // The tag nothing may move or delete, made before the clients, who try both (and the
    // policy, which keeps only 2 tags, would delete it).
    let (_, t0) = s.push_image("hostile/shared", "t0", &[b"immutable t0"]).await;
    let tally = run_clients(s.clone(), seed).await;
    let (status, run) = s.admin_post("/admin/retention/run").await;
    assert_eq!(status, StatusCode::OK, "seed {seed}: a quiet retention run failed: {run}");
    assert!(verify_all_tags(&s).await > 0);
    reconcile_finds_nothing(&s, &format!("seed {seed}")).await;
    let now = s.get("/v2/hostile/shared/manifests/t0").await;
    assert_eq!(now.status(), StatusCode::OK, "seed {seed}: the immutable tag is gone");
    assert_eq!(header(&now, "docker-content-digest"), t0, "seed {seed}: the immutable tag moved");
    let delete = s.delete("/v2/hostile/shared/manifests/t0").await;
    assert_eq!(delete.status(), StatusCode::FORBIDDEN, "seed {seed}: the immutable tag could be deleted");
    expect_answered(
        &tally,
        seed,
        &[
            ("PUT manifest", StatusCode::CREATED),
            ("monolithic POST", StatusCode::FORBIDDEN),
            ("restore", StatusCode::OK),
            ("retention deleted tags", StatusCode::OK),
            ("collect", StatusCode::CONFLICT),
        ],
    );
}
