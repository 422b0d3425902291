//! Collections running back to back, with no grace period, while clients push, retag,
//! delete and push again in parallel: no tagged image may ever be broken. Plus a
//! randomized, model-based version of the same invariant, with reconciles among the
//! collections, ending with a reconcile that must find nothing wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::*;

/// Runs collections back to back until `stop`; returns how many ran.
fn collect_continuously(s: Arc<Server>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut runs = 0;
        while !stop.load(Ordering::Relaxed) {
            s.gc(false).await;
            runs += 1;
        }
        runs
    })
}

/// Pushes until the registry accepts, as a client retrying a refused push does (with no
/// grace period, a collection may remove a just-uploaded, not yet referenced blob). With a
/// `grace` period, a push refused sooner is a failure: each blob it names was found by a
/// probe or uploaded by it, and so protected that long.
async fn push_with_retries(
    s: &Server,
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
    retries: &AtomicU64,
    grace: Option<Duration>,
) -> String {
    for _ in 0..50 {
        let started = Instant::now();
        match s.try_push_image(repo, tag, layers).await {
            Ok((_, digest)) => return digest,
            Err(e) => {
                assert!(e.contains("MANIFEST_BLOB_UNKNOWN"), "push refused for another reason: {e}");
                let took = started.elapsed();
                if let Some(grace) = grace {
                    assert!(
                        took >= grace,
                        "a blob went {took:?} after the push's probe or upload, within the grace period: {e}"
                    );
                }
                retries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    panic!("{repo}:{tag} could not be pushed in 50 tries");
}

/// Every tag of every repository pulls intact; returns how many tags that was, for the
/// caller to check that there were some (a run that stored nothing checks nothing).
pub async fn verify_all_tags(s: &Server) -> usize {
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    let mut verified = 0;
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags: Value = s.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap();
        let tags = tags["tags"].as_array().unwrap_or_else(|| panic!("{repo}: no tag list: {tags}"));
        for tag in tags {
            s.verify_image(repo, tag.as_str().unwrap()).await.unwrap();
            verified += 1;
        }
    }
    verified
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_push_retag_delete_repush_under_continuous_collection() {
    // A near-zero grace period: two seconds are longer than a push takes even on a loaded
    // machine, and far shorter than the test, so content deleted early is collected while
    // pushes go on. A push refused within it is a failure (`push_with_retries`).
    // (With no grace at all, back-to-back collections remove every freshly uploaded blob
    // before its manifest arrives and no push can finish; the model-based test below
    // covers zero, with pushes retried.)
    let grace = Duration::from_secs(2);
    let s = Arc::new(Server::start_with(&[("BOSUN_GC_ENABLED", "false"), ("BOSUN_GC_GRACE_PERIOD", "2s")]));
    let stop = Arc::new(AtomicBool::new(false));
    let collector = collect_continuously(s.clone(), stop.clone());
    let retries = Arc::new(AtomicU64::new(0));
    let base = Arc::new(random_bytes(400, 256 * 1024));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (s, base, retries) = (s.clone(), base.clone(), retries.clone());
        workers.push(tokio::spawn(async move {
            let repo = format!("stress/w{w}");
            let shared = random_bytes(500 + w, 128 * 1024);
            let mut previous: Option<(String, Vec<u8>)> = None;
            let mut deleted = Vec::new();
            for i in 0..12u64 {
                let own = random_bytes(600 + w * 100 + i, 96 * 1024);
                let layers: [&[u8]; 3] = [&base, &shared, &own];
                let tag = format!("i{i}");
                let digest = push_with_retries(&s, &repo, &tag, &layers, &retries, Some(grace)).await;
                s.verify_image(&repo, &tag).await.unwrap();
                // Retag as latest (moves the tag away from the previous image).
                let body = s.get(&format!("/v2/{repo}/manifests/{digest}")).await.bytes().await.unwrap();
                assert_eq!(s.put_manifest(&repo, "latest", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
                s.verify_image(&repo, "latest").await.unwrap();
                if let Some((old_digest, old_layer)) = previous.take() {
                    if i % 3 == 0 {
                        // Push the previous image again, then delete it for good.
                        let again: [&[u8]; 3] = [&base, &shared, &old_layer];
                        let d = push_with_retries(&s, &repo, "again", &again, &retries, Some(grace)).await;
                        assert_eq!(d, old_digest);
                        s.verify_image(&repo, "again").await.unwrap();
                    }
                    let resp = s.delete(&format!("/v2/{repo}/manifests/{old_digest}")).await;
                    assert_eq!(resp.status(), StatusCode::ACCEPTED);
                    deleted.push((Instant::now(), old_digest, old_layer));
                }
                previous = Some((digest, own));
            }
            // Each deleted image pushed again as its grace period ends, a little before or
            // after, while collections run back to back: its config and own layer are still
            // there (a probe keeps them), being removed (invisible: uploaded again), or gone.
            let offsets = [-40i64, -10, 0, 5, 20, 60];
            for (n, (deleted_at, old_digest, old_layer)) in deleted.into_iter().enumerate() {
                let offset = offsets[(n + w as usize) % offsets.len()];
                let (ends, by) = (deleted_at + grace, Duration::from_millis(offset.unsigned_abs()));
                let at = if offset < 0 { ends - by } else { ends + by };
                tokio::time::sleep_until(at.into()).await;
                let again: [&[u8]; 3] = [&base, &shared, &old_layer];
                let tag = format!("r{n}");
                let d = push_with_retries(&s, &repo, &tag, &again, &retries, Some(grace)).await;
                assert_eq!(d, old_digest);
                s.verify_image(&repo, &tag).await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let runs = collector.await.unwrap();
    assert!(runs > 5, "only {runs} collections ran during the pushes");
    // Each worker's last image under its own tag and `latest`, and every image it deleted
    // pushed again under `r<n>`; the tag `again` went with the image it was on.
    let mut expected: Vec<String> = ["i11".to_owned(), "latest".to_owned()].into();
    expected.extend((0..11).map(|n| format!("r{n}")));
    expected.sort();
    for w in 0..4 {
        let tags: Value = s.get(&format!("/v2/stress/w{w}/tags/list")).await.json().await.unwrap();
        let mut tags: Vec<String> = serde_json::from_value(tags["tags"].clone()).unwrap();
        tags.sort();
        assert_eq!(tags, expected, "stress/w{w}");
    }
    assert_eq!(verify_all_tags(&s).await, 4 * 13);
    let report = s.gc(false).await;
    assert_eq!(verify_all_tags(&s).await, 4 * 13);
    let removed: u64 = s
        .get("/admin/gc/runs?limit=1000")
        .await
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["blobs_removed"].as_u64().unwrap())
        .sum();
    eprintln!("{runs} collections removed {removed} blobs; {} pushes were retried", retries.load(Ordering::Relaxed));
    assert!(removed >= 4 * 4, "collections removed only {removed} blobs (last: {report})");
}

/// What one client believes: per repository, tag → manifest digest.
#[derive(Default)]
struct Model {
    tags: BTreeMap<String, BTreeMap<String, String>>,
}

impl Model {
    fn digests(&self, repo: &str) -> BTreeSet<String> {
        self.tags.get(repo).map(|t| t.values().cloned().collect()).unwrap_or_default()
    }
}

async fn check(s: &Server, model: &Model, seed: u64) {
    for (repo, tags) in &model.tags {
        let listed: Value = s.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap();
        let listed: BTreeSet<String> =
            listed["tags"].as_array().into_iter().flatten().map(|t| t.as_str().unwrap().to_owned()).collect();
        assert_eq!(listed, tags.keys().cloned().collect(), "seed {seed}: tags of {repo}");
        for tag in tags.keys() {
            if let Err(e) = s.verify_image(repo, tag).await {
                panic!("seed {seed}: {e}");
            }
        }
    }
}

/// One client's random operations against its own repositories; returns how many of each
/// kind took effect (a test whose operations were all skipped would prove nothing).
async fn random_client(
    s: Arc<Server>,
    task: u64,
    seed: u64,
    pool: Arc<Vec<Vec<u8>>>,
    retries: Arc<AtomicU64>,
) -> BTreeMap<&'static str, u32> {
    let mut rng = Rng(seed.wrapping_add(task * 0x9E37_79B9) | 1);
    let mut model = Model::default();
    let mut done = BTreeMap::new();
    let mut did = |what: &'static str| *done.entry(what).or_default() += 1;
    let repos: Vec<String> = (0..3).map(|r| format!("model/t{task}/r{r}")).collect();
    for step in 0..60u64 {
        let repo = repos[rng.next(3) as usize].clone();
        match rng.next(8) {
            // Push an image of 1 to 3 pool layers under a new tag.
            0 | 1 => {
                let n = 1 + rng.next(3) as usize;
                let layers: Vec<&[u8]> =
                    (0..n).map(|_| pool[rng.next(pool.len() as u64) as usize].as_slice()).collect();
                let tag = format!("s{step}");
                let digest = push_with_retries(&s, &repo, &tag, &layers, &retries, None).await;
                model.tags.entry(repo).or_default().insert(tag, digest);
                did("push");
            }
            // Tag an image this client has under one more tag.
            2 => {
                if let Some(digest) = model.digests(&repo).into_iter().next() {
                    let body = s.get(&format!("/v2/{repo}/manifests/{digest}")).await.bytes().await.unwrap();
                    let tag = format!("t{step}");
                    assert_eq!(s.put_manifest(&repo, &tag, OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
                    model.tags.entry(repo).or_default().insert(tag, digest);
                    did("tag");
                }
            }
            // Untag.
            3 => {
                let tag = model.tags.get(&repo).and_then(|t| t.keys().next().cloned());
                if let Some(tag) = tag {
                    assert_eq!(s.delete(&format!("/v2/{repo}/manifests/{tag}")).await.status(), StatusCode::ACCEPTED);
                    model.tags.get_mut(&repo).unwrap().remove(&tag);
                    did("untag");
                }
            }
            // Delete a manifest with all its tags.
            4 => {
                if let Some(digest) = model.digests(&repo).into_iter().next_back() {
                    assert_eq!(
                        s.delete(&format!("/v2/{repo}/manifests/{digest}")).await.status(),
                        StatusCode::ACCEPTED
                    );
                    model.tags.get_mut(&repo).unwrap().retain(|_, d| *d != digest);
                    did("delete");
                }
            }
            // Mount a pool blob from a sibling repository (201 or, if it is not there, 202).
            5 => {
                let from = &repos[rng.next(3) as usize];
                let d = sha256(&pool[rng.next(pool.len() as u64) as usize]);
                let resp = s.mount(&repo, &d, from).await;
                assert!(matches!(resp.status(), StatusCode::CREATED | StatusCode::ACCEPTED));
                if resp.status() == StatusCode::CREATED {
                    did("mount");
                }
                if resp.status() == StatusCode::ACCEPTED {
                    s.delete(&header(&resp, "location")).await;
                }
            }
            // Upload a loose pool blob (garbage unless something references it later).
            6 => {
                s.push_blob(&repo, &pool[rng.next(pool.len() as u64) as usize]).await;
                did("upload");
            }
            // Collect (or reconcile, which removes files no session or blob row owns, while
            // the other clients open sessions and commit blobs), then check everything this
            // client believes.
            _ => {
                if rng.next(2) == 0 {
                    s.gc(false).await;
                    did("collect");
                } else {
                    assert_eq!(s.reconcile(false).await.status(), StatusCode::OK);
                    did("reconcile");
                }
                check(&s, &model, seed).await;
            }
        }
    }
    s.gc(false).await;
    check(&s, &model, seed).await;
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_operations_never_break_a_tagged_image() {
    let seed = test_seed("model-based test");
    let s = Arc::new(Server::start_with(GC_NOW));
    let pool: Arc<Vec<Vec<u8>>> =
        Arc::new((0..10).map(|i| random_bytes(seed ^ (700 + i), 2000 + 500 * i as usize)).collect());
    let retries = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> =
        (0..3).map(|t| tokio::spawn(random_client(s.clone(), t, seed, pool.clone(), retries.clone()))).collect();
    let mut done = BTreeMap::new();
    for c in clients {
        for (what, n) in c.await.unwrap() {
            *done.entry(what).or_insert(0) += n;
        }
    }
    reconcile_finds_nothing(&s, &format!("seed {seed}")).await;
    // Every kind of operation happened, and collections removed manifests and blobs, so
    // the races the model checks were there to be lost.
    for what in ["push", "tag", "untag", "delete", "mount", "upload", "collect", "reconcile"] {
        assert!(done.get(what).is_some_and(|n| *n > 0), "seed {seed}: no {what} took effect: {done:?}");
    }
    let runs: Value = s.get("/admin/gc/runs?limit=1000").await.json().await.unwrap();
    let removed = |what: &str| -> u64 { runs.as_array().unwrap().iter().map(|r| r[what].as_u64().unwrap()).sum() };
    assert!(
        removed("manifests_removed") > 0 && removed("blobs_removed") > 0,
        "seed {seed}: collections removed nothing"
    );
}

/// A reconcile finds nothing wrong: the counts the collections trusted agree with the
/// references, nothing points at a row that is gone, and no blob lost its bytes.
/// `context` (a seed, say) starts the message of a failure.
pub async fn reconcile_finds_nothing(s: &Server, context: &str) {
    let report: Value = s.reconcile(false).await.json().await.unwrap();
    for finding in ["counts_repaired", "dangling_references", "missing_blobs"] {
        assert_eq!(report[finding], 0, "{context}: {report}");
    }
}
