//! Crash safety: the server is killed with SIGKILL in the middle of a collection and in
//! the middle of pushes; after a restart every image tagged before the kill is intact, and
//! the next collection and reconcile leave storage and metadata consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

/// Collect and reconcile, then check that no count, reference or blob is wrong and that
/// nothing is left over.
async fn assert_consistent(s: &Server) {
    s.gc(false).await;
    crate::gc_stress::reconcile_finds_nothing(s, "reconcile after a collection").await;
    let again: Value = s.reconcile(true).await.json().await.unwrap();
    assert!(again["removed"].as_array().unwrap().is_empty(), "{again}");
    assert!(s.gc(true).await["removed"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn killed_between_removing_rows_and_removing_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kept_layers = [random_bytes(300, 50_000)];
    let doomed_layer = random_bytes(301, 50_000);
    let doomed_digest;
    {
        let mut s = Server::start_in(dir.path(), GC_NOW);
        s.push_image("crash/kept", "v1", &[&kept_layers[0]]).await;
        let (_, doomed) = s.push_image("crash/doomed", "v1", &[&doomed_layer]).await;
        doomed_digest = sha256(&doomed_layer);
        s.delete(&format!("/v2/crash/doomed/manifests/{doomed}")).await;
        s.arm("gc.before_bytes").await;
        let gc = tokio::spawn(s.http.post(s.url("/admin/gc")).send());
        s.wait_paused("gc.before_bytes").await;
        // Metadata no longer knows the blobs; their bytes are still there. Kill now.
        s.kill();
        assert!(gc.await.unwrap().is_err(), "the collection should have died with the server");
    }
    assert!(blob_file(dir.path(), &doomed_digest).exists(), "the kill came before the bytes went");
    let s = Server::start_in(dir.path(), GC_NOW);
    s.verify_image("crash/kept", "v1").await.unwrap();
    assert_eq!(s.get(&format!("/v2/crash/doomed/blobs/{doomed_digest}")).await.status(), StatusCode::NOT_FOUND);
    // Nothing is left for a collection: the bytes metadata does not know are reconcile's,
    // and so is the repository the killed run emptied but never swept (a collection only
    // looks at the repositories its own removals touch).
    let report = s.gc(false).await;
    assert_eq!(report["blobs_removed"], 0, "{report}");
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["crash/doomed", "crash/kept"]));
    let kinds = |report: &Value| -> Vec<String> {
        report["removed"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
    };
    // A dry run reports the same and changes nothing.
    let dry: Value = s.reconcile(true).await.json().await.unwrap();
    assert_eq!(kinds(&dry), ["blob", "blob", "repository"], "{dry}");
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["crash/doomed", "crash/kept"]));
    let reconcile: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(kinds(&reconcile), ["blob", "blob", "repository"], "the layer, the config, crash/doomed: {reconcile}");
    assert_eq!(reconcile["repositories_removed"], 1, "{reconcile}");
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["crash/kept"]));
    assert!(!blob_file(dir.path(), &doomed_digest).exists());
    assert_consistent(&s).await;
    s.verify_image("crash/kept", "v1").await.unwrap();
}

#[tokio::test]
async fn killed_in_the_middle_of_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tagged = Vec::new();
    let last_session;
    {
        let mut s = Server::start_in(dir.path(), GC_NOW);
        for i in 0..3u64 {
            s.push_image("crash/before", &format!("v{i}"), &[&random_bytes(310 + i, 200_000)]).await;
            tagged.push(format!("v{i}"));
        }
        let http = s.http.clone();
        let base = s.url("");
        // Pushes in flight: many chunks, so the kill lands in the middle of one. Returns
        // how many chunks were acknowledged, and the last session with the bytes it had
        // acknowledged.
        let (first, first_acknowledged) = tokio::sync::oneshot::channel();
        let pushes = tokio::spawn(async move {
            let (mut acknowledged, mut last, mut first) = (0u64, None, Some(first));
            for i in 0..50u64 {
                let Ok(resp) = http.post(format!("{base}/v2/crash/during/blobs/uploads/")).send().await else { break };
                let location = header(&resp, "location");
                let mut stored = 0u64;
                for chunk in 0..20u64 {
                    let data = random_bytes(1000 * i + chunk, 64 * 1024);
                    match http.patch(format!("{base}{location}")).body(data).send().await {
                        Ok(resp) => assert_eq!(resp.status(), StatusCode::ACCEPTED),
                        Err(_) => return (acknowledged, last),
                    }
                    acknowledged += 1;
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    stored += 64 * 1024;
                    last = Some((location.clone(), stored));
                }
            }
            (acknowledged, last)
        });
        // Killed once chunks flow, whatever the machine's pace, in the middle of one.
        first_acknowledged.await.expect("no chunk was acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.kill();
        let (acknowledged, last) = pushes.await.unwrap();
        assert!(acknowledged > 0);
        last_session = last;
    }
    let s = Server::start_in(dir.path(), GC_NOW);
    for tag in &tagged {
        s.verify_image("crash/before", tag).await.unwrap();
    }
    assert_consistent(&s).await;
    for tag in &tagged {
        s.verify_image("crash/before", tag).await.unwrap();
    }
    // The half-pushed upload is still a session, which can be resumed from what it had
    // acknowledged (or from one chunk more, if the kill came between storing a chunk and
    // answering it).
    let (location, stored) = last_session.expect("a session took chunks");
    let resp = s.get(&location).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "the session did not survive the kill");
    let end: u64 = header(&resp, "range").strip_prefix("0-").unwrap().parse().unwrap();
    assert!(end + 1 == stored || end + 1 == stored + 64 * 1024, "resumes at {} after {stored} acknowledged", end + 1);
}

/// How a step against a server that may be killed at any moment ended, short of success.
#[derive(Debug)]
enum Failure {
    /// No answer: the server was killed. The step may or may not have taken effect.
    Gone,
    /// An answer the step must never get (a 5xx, or a refusal without cause).
    Wrong(String),
}

type Step<T> = Result<T, Failure>;

/// A client of one server's life: it tells a killed server apart from a wrong answer.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn of(s: &Server) -> Client {
        Client { http: s.http.clone(), base: s.url("") }
    }

    /// Sends the request; anything but `expected` is wrong.
    async fn expect(&self, request: reqwest::RequestBuilder, expected: StatusCode) -> Step<reqwest::Response> {
        let resp = request.send().await.map_err(|_| Failure::Gone)?;
        if resp.status() != expected {
            let status = resp.status();
            let body = resp.text().await.map_err(|_| Failure::Gone)?;
            return Err(Failure::Wrong(format!("{status} where {expected} was due: {body}")));
        }
        Ok(resp)
    }

    fn at(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Pushes an image as `push_image` does, retrying a manifest refused for a blob that a
    /// collection (its grace period as short as the soak's) took between its upload and the manifest.
    async fn push(&self, repo: &str, tag: &str, blobs: &[Vec<u8>], body: &[u8]) -> Step<()> {
        for _ in 0..20 {
            for blob in blobs {
                let d = sha256(blob);
                let head = self.at(reqwest::Method::HEAD, &format!("/v2/{repo}/blobs/{d}")).send().await;
                if head.map_err(|_| Failure::Gone)?.status() == StatusCode::OK {
                    continue;
                }
                let post = self.at(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"));
                let location = header(&self.expect(post, StatusCode::ACCEPTED).await?, "location");
                let put = self.at(reqwest::Method::PUT, &format!("{location}?digest={d}")).body(blob.clone());
                self.expect(put, StatusCode::CREATED).await?;
            }
            let put = self
                .at(reqwest::Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
                .header("content-type", OCI_MANIFEST)
                .body(body.to_vec());
            match self.expect(put, StatusCode::CREATED).await {
                Err(Failure::Wrong(e)) if e.contains("MANIFEST_BLOB_UNKNOWN") => continue,
                other => return other.map(drop),
            }
        }
        Err(Failure::Wrong(format!("{repo}:{tag} refused 20 times for a missing blob")))
    }

    async fn delete(&self, path: &str) -> Step<()> {
        self.expect(self.at(reqwest::Method::DELETE, path), StatusCode::ACCEPTED).await.map(drop)
    }
}

/// A tag as a client last saw it acknowledged: its manifest's digest and bytes.
type Tagged = BTreeMap<(String, String), (String, Vec<u8>)>;

/// One client's view across kills: what was acknowledged, and the tags that its step in
/// flight at the kill may have changed or not (each either absent, or at the digest given).
#[derive(Default)]
struct Believed {
    tags: Tagged,
    uncertain: Tagged,
}

/// One client's random steps on its own repositories until the server dies (or `steps`
/// ran); a wrong answer ends the test.
async fn soak_client(
    c: Client,
    mut believed: Believed,
    id: u64,
    round: u64,
    rng: &mut Rng,
    pool: &[Vec<u8>],
) -> Believed {
    let repos = [format!("soak/c{id}/a"), format!("soak/c{id}/b")];
    for step in 0..400u64 {
        let repo = repos[rng.next(2) as usize].clone();
        let mine: Vec<(String, String)> = believed.tags.keys().filter(|(r, _)| *r == repo).cloned().collect();
        let pick = |rng: &mut Rng| mine.get(rng.next(mine.len().max(1) as u64) as usize).cloned();
        let choice = if mine.len() > 6 { 3 + rng.next(3) } else { rng.next(6) };
        let (touched, outcome): (Tagged, Step<()>) = match choice {
            // Push an image of one to three pool layers under a new tag.
            0..=2 => {
                let layers: Vec<&[u8]> =
                    (0..1 + rng.next(3)).map(|_| pool[rng.next(pool.len() as u64) as usize].as_slice()).collect();
                let (blobs, body) = image(&layers);
                let tag = format!("r{round}s{step}");
                let touched = Tagged::from([((repo.clone(), tag.clone()), (sha256(&body), body.clone()))]);
                (touched, c.push(&repo, &tag, &blobs, &body).await)
            }
            // Tag an image it has once more.
            3 => {
                let Some(key) = pick(rng) else { continue };
                let (digest, body) = believed.tags[&key].clone();
                let tag = format!("r{round}t{step}");
                let put = c
                    .at(reqwest::Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
                    .header("content-type", OCI_MANIFEST)
                    .body(body.clone());
                (Tagged::from([((repo, tag), (digest, body))]), c.expect(put, StatusCode::CREATED).await.map(drop))
            }
            // Untag.
            4 => {
                let Some(key) = pick(rng) else { continue };
                let path = format!("/v2/{}/manifests/{}", key.0, key.1);
                let touched = Tagged::from([(key.clone(), believed.tags[&key].clone())]);
                (touched, c.delete(&path).await)
            }
            // Delete a manifest, and so every tag it has.
            _ => {
                let Some(key) = pick(rng) else { continue };
                let digest = believed.tags[&key].0.clone();
                let touched: Tagged = believed
                    .tags
                    .iter()
                    .filter(|((r, _), (d, _))| *r == repo && *d == digest)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (touched, c.delete(&format!("/v2/{repo}/manifests/{digest}")).await)
            }
        };
        match outcome {
            Ok(()) if choice >= 4 => believed.tags.retain(|k, _| !touched.contains_key(k)),
            Ok(()) => believed.tags.extend(touched),
            Err(Failure::Gone) => {
                believed.uncertain = touched;
                return believed;
            }
            Err(Failure::Wrong(e)) => panic!("client {id}, round {round}, step {step}: {e}"),
        }
    }
    believed
}

/// After a restart: every tag the client believes in is there at its digest, a tag its
/// interrupted step touched is there at that step's digest or not at all, no other tag is
/// there, and every tag pulls intact. What was uncertain is settled by what is there.
async fn settle(s: &Server, mut believed: Believed, id: u64, seed: u64) -> Believed {
    for repo in [format!("soak/c{id}/a"), format!("soak/c{id}/b")] {
        let resp = s.get(&format!("/v2/{repo}/tags/list")).await;
        let listed: Vec<String> = if resp.status() == StatusCode::NOT_FOUND {
            Vec::new()
        } else {
            let list: Value = resp.json().await.unwrap();
            list["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect()
        };
        let believed_here = believed.tags.keys().filter(|(r, _)| *r == repo).map(|(_, t)| t.clone());
        for tag in believed_here.chain(listed.iter().cloned()).collect::<BTreeSet<_>>() {
            let key = (repo.clone(), tag.clone());
            let there = listed.contains(&tag);
            let due = believed.tags.get(&key).or(believed.uncertain.get(&key)).cloned();
            let Some((digest, body)) = due else { panic!("seed {seed}: {repo}:{tag} is there, never pushed") };
            assert!(
                there || !believed.tags.contains_key(&key) || believed.uncertain.contains_key(&key),
                "seed {seed}: {repo}:{tag} is gone"
            );
            if there {
                let head = s.head(&format!("/v2/{repo}/manifests/{tag}")).await;
                assert_eq!(header(&head, "docker-content-digest"), digest, "seed {seed}: {repo}:{tag}");
                s.verify_image(&repo, &tag).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                believed.tags.insert(key, (digest, body));
            } else {
                believed.tags.remove(&key);
            }
        }
    }
    believed.uncertain.clear();
    believed
}

/// Collections started by the test with a grace period just long enough for a push to go
/// from its blobs to its manifest: with none, back-to-back collections would take each
/// just-uploaded blob before the manifest that references it, again and again.
const SOAK: &[(&str, &str)] =
    &[("BOSUN_GC_ENABLED", "false"), ("BOSUN_GC_GRACE_PERIOD", "100ms"), ("BOSUN_RESTORE_WINDOW", "0")];

/// The crash soak: clients push, tag, untag and delete while collections and reconciles
/// run back to back with a grace period of 100 ms, and the server is killed with SIGKILL at a
/// random moment, again and again. After each restart every acknowledged image is intact;
/// at the end counts, references and bytes agree, and once everything is deleted and
/// collected nothing is left in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_again_and_again() {
    let seed = test_seed("crash soak");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pool: Arc<Vec<Vec<u8>>> =
        Arc::new((0..6).map(|i| random_bytes(seed ^ (900 + i), 3000 + 4000 * i as usize)).collect());
    let mut clients: Vec<Believed> = (0..3).map(|_| Believed::default()).collect();
    let mut collections = 0;
    for round in 0..12u64 {
        let mut s = Server::start_in(&data, SOAK);
        for (id, believed) in clients.iter_mut().enumerate() {
            *believed = settle(&s, std::mem::take(believed), id as u64, seed).await;
        }
        let c = Client::of(&s);
        let collector = tokio::spawn({
            let c = c.clone();
            async move {
                let mut runs = 0u64;
                loop {
                    let path = if runs % 4 == 3 { "/admin/reconcile" } else { "/admin/gc" };
                    match c.expect(c.at(reqwest::Method::POST, path), StatusCode::OK).await {
                        Ok(_) => runs += 1,
                        Err(Failure::Gone) => return runs,
                        Err(Failure::Wrong(e)) => panic!("round {round}: {path}: {e}"),
                    }
                }
            }
        });
        let running: Vec<_> = std::mem::take(&mut clients)
            .into_iter()
            .enumerate()
            .map(|(id, believed)| {
                let (c, pool) = (c.clone(), pool.clone());
                let mut rng = Rng(seed.wrapping_add((round * 3 + id as u64) * 0x9E37_79B9) | 1);
                tokio::spawn(async move { soak_client(c, believed, id as u64, round, &mut rng, &pool).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200 + rng.next(800))).await;
        s.kill();
        for client in running {
            clients.push(client.await.unwrap());
        }
        collections += collector.await.unwrap();
    }
    assert!(collections > 12, "seed {seed}: only {collections} collections and reconciles ran");
    // The last start: everything believed is intact; a collection and a reconcile find
    // counts, references and bytes in agreement and leave nothing for the next ones.
    let s = Server::start_in(&data, &[SOAK, &[("BOSUN_GC_UPLOAD_MAX_AGE", "1ms")]].concat());
    let mut tags = 0;
    for (id, believed) in clients.iter_mut().enumerate() {
        *believed = settle(&s, std::mem::take(believed), id as u64, seed).await;
        tags += believed.tags.len();
    }
    assert!(tags > 0, "seed {seed}: no image survived to be checked");
    // Past the grace period of what the last round's steps touched.
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.gc(false).await;
    assert_consistent(&s).await;
    // Delete everything: the collection that follows leaves no file and no directory.
    for believed in &clients {
        for ((repo, _), (digest, _)) in &believed.tags {
            let resp = s.delete(&format!("/v2/{repo}/manifests/{digest}")).await;
            assert!(
                matches!(resp.status(), StatusCode::ACCEPTED | StatusCode::NOT_FOUND),
                "seed {seed}: {}",
                resp.status()
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.gc(false).await;
    assert_consistent(&s).await;
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!([]), "seed {seed}");
    let left: Vec<String> = s.data_files().into_iter().filter(|f| !f.starts_with("metadata.sqlite")).collect();
    assert!(
        left.iter().all(|f| ["blobs", "bosun.lock", "uploads"].contains(&f.as_str())),
        "seed {seed}: left behind: {left:?}"
    );
}
