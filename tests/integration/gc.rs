//! Garbage collection, observed from outside: what goes, what stays, what the disk says.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

fn count(report: &Value, kind: &str) -> usize {
    report["removed"].as_array().unwrap().iter().filter(|r| r["kind"] == kind).count()
}

/// A report's removed items, sorted: a dry run and a real run list them in their own order.
fn removed_items(report: &Value) -> Vec<String> {
    let mut items: Vec<String> = report["removed"].as_array().unwrap().iter().map(Value::to_string).collect();
    items.sort();
    items
}

#[tokio::test]
async fn delete_then_collect_frees_the_unique_bytes_and_keeps_shared_ones() {
    let s = Server::start_with(GC_NOW);
    let base = random_bytes(100, 2 << 20);
    let own = random_bytes(101, 3 << 20);
    let other = random_bytes(102, 1 << 20);
    let (doomed_body, doomed) = s.push_image("apps/doomed", "v1", &[&base, &own]).await;
    let config_len = serde_json::from_slice::<Value>(&doomed_body).unwrap()["config"]["size"].as_u64().unwrap();
    s.push_image("apps/kept", "v1", &[&base, &other]).await;
    // Both measurements are taken with the metadata log folded back and emptied.
    s.wait_log_folded().await;
    let before = s.disk_usage();

    assert_eq!(s.delete(&format!("/v2/apps/doomed/manifests/{doomed}")).await.status(), StatusCode::ACCEPTED);
    let report = s.gc(false).await;
    assert_eq!(count(&report, "manifest"), 0, "the manifest was deleted by the API, not collected");
    // The unique layer and config went; the shared base stayed.
    assert_eq!(count(&report, "blob"), 2, "{report}");
    assert_eq!(report["bytes_removed"], own.len() as u64 + config_len);
    s.wait_log_folded().await;
    let after = s.disk_usage();
    let freed = before as i64 - after as i64;
    let expected = (own.len() as u64 + config_len) as i64;
    assert!((freed - expected).abs() < 32 * 1024, "freed {freed} bytes on disk, the image had {expected} unique bytes");

    for blob in [sha256(&own), sha256(&base)] {
        assert_eq!(s.head(&format!("/v2/apps/doomed/blobs/{blob}")).await.status(), StatusCode::NOT_FOUND);
    }
    s.verify_image("apps/kept", "v1").await.unwrap();
    // The emptied repository is gone too.
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["apps/kept"]));
    expect_error(s.get("/v2/apps/doomed/tags/list").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn nothing_is_left_behind() {
    let s = Server::start_with(&[GC_NOW, &[("BOSUN_GC_UPLOAD_MAX_AGE", "100ms")]].concat());
    let empty = s.data_files();
    let mut digests = Vec::new();
    let mut b = None;
    for (i, repo) in ["a/one", "a/two", "b"].iter().enumerate() {
        let (body, d) = s.push_image(repo, "latest", &[&random_bytes(i as u64, 5000), b"shared"]).await;
        digests.push((repo, d.clone()));
        b = Some((body, d));
    }
    // An index, deleted first (its child is deleted after it), and an upload its client
    // abandoned, which only its age ends.
    let (_, index) = push_index(&s, "b", "multi", &[b.unwrap()]).await;
    let resp = s.http.post(s.url("/v2/b/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    s.http.patch(s.url(&location)).body("abandoned").send().await.unwrap();
    assert_eq!(s.delete(&format!("/v2/b/manifests/{index}")).await.status(), StatusCode::ACCEPTED);
    for (repo, d) in &digests {
        assert_eq!(s.delete(&format!("/v2/{repo}/manifests/{d}")).await.status(), StatusCode::ACCEPTED);
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let report = s.gc(false).await;
    assert_eq!(report["uploads_removed"], 1, "{report}");
    // The session's bytes count among those freed, as the blobs' do.
    let upload = report["removed"].as_array().unwrap().iter().find(|r| r["kind"] == "upload").unwrap();
    assert_eq!(upload["bytes"], "abandoned".len(), "{report}");
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!([]));
    for (repo, _) in &digests {
        expect_error(s.get(&format!("/v2/{repo}/tags/list")).await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    }
    let left: Vec<String> = s.data_files().into_iter().filter(|f| !f.starts_with("metadata.sqlite")).collect();
    let empty: Vec<String> = empty.into_iter().filter(|f| !f.starts_with("metadata.sqlite")).collect();
    assert_eq!(left, empty, "files or directories were left behind");
}

#[tokio::test]
async fn multi_arch_index_survives_repeated_collections() {
    let s = Server::start_with(GC_NOW);
    let base = random_bytes(110, 100_000);
    let mut children = Vec::new();
    for arch in 0..3u64 {
        // Children are pushed by digest, untagged, before their index.
        let (body, digest) = s.push_image("multi/app", "", &[&base, &random_bytes(111 + arch, 50_000)]).await;
        children.push((body, digest));
    }
    push_index(&s, "multi/app", "latest", &children).await;
    // A nested index (an index of that index) by tag as well.
    let (index_body, index_digest) = {
        let resp = s.get("/v2/multi/app/manifests/latest").await;
        let d = header(&resp, "docker-content-digest");
        (resp.bytes().await.unwrap().to_vec(), d)
    };
    let nested = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": index_digest, "size": index_body.len()}]}))
    .unwrap();
    assert_eq!(s.put_manifest("multi/app", "nested", OCI_INDEX, &nested).await.status(), StatusCode::CREATED);

    for _ in 0..3 {
        let report = s.gc(false).await;
        assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    }
    s.verify_image("multi/app", "latest").await.unwrap();
    s.verify_image("multi/app", "nested").await.unwrap();

    // Untag the outer index only: the inner index is still tagged, nothing goes but it.
    s.delete("/v2/multi/app/manifests/nested").await;
    let report = s.gc(false).await;
    assert_eq!(count(&report, "manifest"), 1, "{report}");
    s.verify_image("multi/app", "latest").await.unwrap();
    // Untag the index: it goes, and its children restart their grace (a client that read
    // the index may list them in an index of its own: they are there to list) ...
    s.delete("/v2/multi/app/manifests/latest").await;
    let report = s.gc(false).await;
    assert_eq!((count(&report, "manifest"), count(&report, "blob")), (1, 0), "{report}");
    push_index(&s, "multi/app", "again", &children).await;
    s.verify_image("multi/app", "again").await.unwrap();
    // ... and go with their blobs once nothing lists them.
    s.delete("/v2/multi/app/manifests/again").await;
    assert_eq!(count(&s.gc(false).await, "manifest"), 1);
    // That collection touched the children (their grace restarts), and the grace period
    // is zero at millisecond resolution: a collection within the same millisecond would
    // rightly keep them.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let report = s.gc(false).await;
    assert_eq!(count(&report, "manifest"), 3, "{report}");
    assert_eq!(count(&report, "blob"), 3 + 3 + 1, "three configs, three own layers and the base: {report}");
}

/// Pushes a signature (an artifact whose subject is `subject`) by digest; returns its digest.
async fn push_signature(s: &Server, repo: &str, subject_body: &[u8], subject: &str) -> String {
    let empty = s.push_blob(repo, b"{}").await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.example.sig.layer", "digest": s.push_blob(repo, b"signature").await, "size": 9}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
    }))
    .unwrap();
    let sig_digest = sha256(&sig);
    assert_eq!(s.put_manifest(repo, &sig_digest, OCI_MANIFEST, &sig).await.status(), StatusCode::CREATED);
    sig_digest
}

#[tokio::test]
async fn referrers_live_with_their_subject_and_go_after_it() {
    let s = Server::start_with(GC_NOW);
    let (subject_body, subject) = s.push_image("signed", "v1", &[b"app layer"]).await;
    let sig_digest = push_signature(&s, "signed", &subject_body, &subject).await;

    for _ in 0..2 {
        let report = s.gc(false).await;
        assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    }
    let referrers: Value = s.get(&format!("/v2/signed/referrers/{subject}")).await.json().await.unwrap();
    assert_eq!(referrers["manifests"][0]["digest"], sig_digest);
    s.verify_image("signed", &sig_digest).await.unwrap();

    // Delete the subject: its signature goes with the next collection.
    s.delete(&format!("/v2/signed/manifests/{subject}")).await;
    let report = s.gc(false).await;
    assert_eq!(count(&report, "manifest"), 1, "{report}");
    assert_eq!(s.get(&format!("/v2/signed/manifests/{sig_digest}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(count(&report, "repository"), 1, "{report}");
}

#[tokio::test]
async fn a_referrer_does_not_keep_an_untagged_subject_alive() {
    let s = Server::start_with(GC_NOW);
    let (subject_body, subject) = s.push_image("rule", "v1", &[b"layer"]).await;
    let empty = s.push_blob("rule", b"{}").await;
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}, "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
    }))
    .unwrap();
    s.put_manifest("rule", &sha256(&sbom), OCI_MANIFEST, &sbom).await;
    // Untag the subject: untagged, it is garbage; its referrer goes after it, in the same
    // collection (once the subject is gone, the referrer is an orphan). The report says
    // why each went.
    s.delete("/v2/rule/manifests/v1").await;
    let report = s.gc(false).await;
    let reasons: Vec<(String, String)> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "manifest")
        .map(|r| (r["digest"].as_str().unwrap().to_owned(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(reasons.len(), 2, "{report}");
    assert!(reasons[0].0 == subject && reasons[0].1.starts_with("untagged"), "{reasons:?}");
    assert!(reasons[1].0 == sha256(&sbom) && reasons[1].1.contains("subject is not in its repository"), "{reasons:?}");
    // And the log says it too, a line per manifest.
    for (digest, reason) in &reasons {
        let lines = s.logged(&[" INFO ", "garbage collection removed a manifest", digest, reason]).await;
        assert_eq!(lines.len(), 1, "{digest}: {lines:?}");
    }
}

#[tokio::test]
async fn orphan_referrers_can_be_kept_and_untagged_collection_turned_off() {
    let s = Server::start_with(&[
        ("BOSUN_GC_ENABLED", "false"),
        ("BOSUN_GC_GRACE_PERIOD", "0"),
        ("BOSUN_RESTORE_WINDOW", "0"),
        ("BOSUN_GC_UNTAGGED", "false"),
        ("BOSUN_GC_ORPHAN_REFERRERS", "false"),
    ]);
    let (_, digest) = s.push_image("keep", "v1", &[b"layer"]).await;
    s.delete("/v2/keep/manifests/v1").await;
    // A signature whose subject is deleted outright: an orphan, kept too.
    let (orphaned_body, orphaned) = s.push_image("keep", "v2", &[b"signed layer"]).await;
    let signature = push_signature(&s, "keep", &orphaned_body, &orphaned).await;
    assert_eq!(s.delete(&format!("/v2/keep/manifests/{orphaned}")).await.status(), StatusCode::ACCEPTED);
    let report = s.gc(false).await;
    assert_eq!(count(&report, "manifest"), 0, "{report}");
    s.verify_image("keep", &digest).await.unwrap();
    s.verify_image("keep", &signature).await.unwrap();
}

#[tokio::test]
async fn the_grace_period_protects_recent_content() {
    let s = Server::start_with(&[("BOSUN_GC_ENABLED", "false"), ("BOSUN_GC_GRACE_PERIOD", "1h")]);
    let (_, digest) = s.push_image("young", "v1", &[b"layer"]).await;
    s.delete(&format!("/v2/young/manifests/{digest}")).await;
    s.push_blob("young", b"loose").await;
    // Garbage indeed, only young: the config, the layer and the loose blob.
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_blobs_unreferenced"), 3.0, "{metrics}");
    assert_eq!(sample(&metrics, "bosun_blobs_overdue"), 0.0, "{metrics}");
    let report = s.gc(false).await;
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
}

/// A tag pushed again to another image leaves the first one untagged, and collected.
#[tokio::test]
async fn a_tag_moved_to_another_image_leaves_the_first_to_collection() {
    let s = Server::start_with(GC_NOW);
    let (_, first) = s.push_image("moved", "latest", &[b"first layer"]).await;
    let (_, second) = s.push_image("moved", "latest", &[b"second layer"]).await;
    let report = s.gc(false).await;
    let manifests: Vec<&Value> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "manifest")
        .map(|r| &r["digest"])
        .collect();
    assert_eq!(manifests, [&json!(first)], "{report}");
    assert_eq!(count(&report, "blob"), 2, "its config and layer: {report}");
    s.verify_image("moved", "latest").await.unwrap();
    assert_eq!(header(&s.head("/v2/moved/manifests/latest").await, "docker-content-digest"), second);
}

/// Background collections and reconciles come after their first interval, not at the
/// start: a server restarted in a loop does not collect in a loop.
#[tokio::test]
async fn background_runs_wait_for_their_first_interval() {
    let s = Server::start_with(&[
        ("BOSUN_GC_ENABLED", "true"),
        ("BOSUN_GC_INTERVAL", "1h"),
        ("BOSUN_GC_RECONCILE_INTERVAL", "1h"),
    ]);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
    assert_eq!(runs, json!([]));
}

/// A grace period of an hour, no restore window, and a clock the test moves ahead.
const GRACE_OF_AN_HOUR_AND_A_CLOCK: &[(&str, &str)] = &[
    ("BOSUN_GC_ENABLED", "false"),
    ("BOSUN_GC_GRACE_PERIOD", "1h"),
    ("BOSUN_RESTORE_WINDOW", "0"),
    ("BOSUN_TEST_FAILPOINTS", "true"),
];

/// A delete restarts the grace period of what it unreferences: an image and an index
/// pushed long ago and deleted now leave the clients still using their content (a layer
/// probed for a new push, the platform image an index listed) the whole grace period.
#[tokio::test]
async fn a_delete_restarts_the_grace_of_what_it_unreferences() {
    let s = Server::start_with(GRACE_OF_AN_HOUR_AND_A_CLOCK);
    let (_, image) = s.push_image("aged", "v1", &[b"layer of an aged image"]).await;
    let child = s.push_image("aged", "", &[b"layer of an aged platform image"]).await;
    let (_, index) = push_index(&s, "aged", "multi", std::slice::from_ref(&child)).await;
    s.advance_clock(2 * 3_600_000).await;
    for digest in [&image, &index] {
        assert_eq!(s.delete(&format!("/v2/aged/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    }
    let report = s.gc(false).await;
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    s.verify_image("aged", &child.1).await.unwrap();
    // A grace period after the deletes, all of it goes: the untagged child, both images' blobs.
    s.advance_clock(3_600_001).await;
    let report = s.gc(false).await;
    assert_eq!((count(&report, "manifest"), count(&report, "blob")), (1, 4), "{report}");
}

/// A disk that is full now: a collection asked for with a shorter grace period frees the
/// blobs of what was just deleted by digest, and its record says so, while manifests keep
/// their grace (a signature pushed before its subject, an image pushed by digest before
/// its tag). A duration that does not parse is refused.
#[tokio::test]
async fn a_collection_can_be_asked_for_with_a_shorter_grace_period() {
    let s = Server::start_with(&[("BOSUN_GC_ENABLED", "false"), ("BOSUN_GC_GRACE_PERIOD", "1h")]);
    let (_, digest) = s.push_image("urgent", "v1", &[&random_bytes(130, 50_000)]).await;
    s.push_image("urgent", "kept", &[b"kept layer"]).await;
    assert_eq!(s.delete(&format!("/v2/urgent/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    // A signature pushed before its image (as the spec allows), and an image pushed by
    // digest for a tag to follow: manifests keep their grace, which alone protects them.
    let (subject_body, subject) = s.push_image("urgent", "", &[b"signed later"]).await;
    assert_eq!(s.delete(&format!("/v2/urgent/manifests/{subject}")).await.status(), StatusCode::ACCEPTED);
    let signature = push_signature(&s, "urgent", &subject_body, &subject).await;
    let (untagged_body, untagged) = s.push_image("urgent", "", &[b"tagged later"]).await;
    let report = s.gc(false).await;
    assert!(report["removed"].as_array().unwrap().is_empty(), "in its grace: {report}");
    assert_eq!(report["grace_period_ms"], 3_600_000);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["gc", "--url", &s.addr, "--grace-period", "0s", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (status, real) = s.admin_post("/admin/gc?grace_period=0s").await;
    assert_eq!(status, StatusCode::OK, "{real}");
    // The deleted image's and the absent subject's config and layer.
    assert_eq!((&real["links_removed"], &real["blobs_removed"]), (&json!(4), &json!(4)), "{real}");
    assert_eq!(
        (removed_items(&dry), &dry["grace_period_ms"]),
        (removed_items(&real), &json!(0)),
        "the dry run said otherwise"
    );
    assert_eq!(
        s.head(&format!("/v2/urgent/blobs/{}", sha256(&random_bytes(130, 50_000)))).await.status(),
        StatusCode::NOT_FOUND
    );
    s.verify_image("urgent", "kept").await.unwrap();
    s.verify_image("urgent", &signature).await.unwrap();
    let tagged = s.put_manifest("urgent", "later", OCI_MANIFEST, &untagged_body).await;
    assert_eq!(tagged.status(), StatusCode::CREATED);
    s.verify_image("urgent", &untagged).await.unwrap();
    assert_eq!(s.logged(&["shorter grace period", "api"]).await.len(), 1);
    let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
    assert_eq!(runs[0]["grace_period_ms"], 0, "{runs}");

    let (status, answer) = s.admin_post("/admin/gc?grace_period=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("grace_period"), "{answer}");
}

#[tokio::test]
async fn dry_run_reports_exactly_what_a_real_run_removes() {
    let s = Server::start_with(GC_NOW);
    let (_, a) = s.push_image("dry", "a", &[&random_bytes(120, 10_000), b"common"]).await;
    s.push_image("dry", "b", &[&random_bytes(121, 20_000), b"common"]).await;
    s.push_image("dry", "untagged", &[&random_bytes(122, 30_000)]).await;
    s.delete("/v2/dry/manifests/untagged").await;
    s.delete(&format!("/v2/dry/manifests/{a}")).await;
    let before = s.data_files();

    let dry = s.gc(true).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(s.data_files(), before, "a dry run changed storage");
    let again = s.gc(true).await;
    assert_eq!(again["removed"], dry["removed"], "a dry run changed metadata");
    let real = s.gc(false).await;
    assert_eq!(removed_items(&dry), removed_items(&real));
    assert_eq!(dry["bytes_removed"], real["bytes_removed"]);
    assert_eq!(count(&real, "manifest"), 1);
    assert_eq!(count(&real, "blob"), 4, "two configs and two unique layers: {real}");
    s.verify_image("dry", "b").await.unwrap();
}

/// A dry run asked for in words (`yes`), or as a bare flag, is a dry run; a value that
/// is no yes or no, or a parameter the endpoint does not take (a misspelled `dryrun`), is
/// refused before anything runs: read as "not a dry run", it would delete.
#[tokio::test]
async fn admin_parameters_that_do_not_parse_are_refused_before_anything_runs() {
    let s = Server::start_with(GC_NOW);
    let (_, digest) = s.push_image("strict", "v1", &[b"not to be collected by a typo"]).await;
    assert_eq!(s.delete(&format!("/v2/strict/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    let before = s.data_files();
    for path in ["/admin/gc?dry_run=yes", "/admin/gc?dry_run", "/admin/reconcile?dry_run=on"] {
        let (status, report) = s.admin_post(path).await;
        assert_eq!((status, &report["dry_run"]), (StatusCode::OK, &json!(true)), "{path}: {report}");
    }
    for (path, names) in [
        ("/admin/gc?dry_run=maybe", "dry_run"),
        ("/admin/gc?dryrun=true", "dryrun"),
        ("/admin/reconcile?dry_run=yes&grace_period=0s", "grace_period"),
        ("/admin/gc/pause?for=0s", "for"),
        ("/admin/gc/resume?now=1", "now"),
    ] {
        let (status, answer) = s.admin_post(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(names), "{path}: {answer}");
    }
    for path in ["/admin/gc/runs?limit=x", "/admin/gc/runs?limit=18446744073709551615", "/admin/deletions?limit=-1"] {
        assert_eq!(s.get(path).await.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(s.data_files(), before, "a refused or dry run removed something");
    let status: Value = s.get("/admin/gc/status").await.json().await.unwrap();
    assert_eq!(status["paused"], false, "a pause of no length paused: {status}");
    assert_eq!(s.gc(false).await["blobs_removed"], 2);
}

#[tokio::test]
async fn runs_are_recorded_and_counted() {
    let s = Server::start_with(GC_NOW);
    let (_, d) = s.push_image("hist", "v1", &[b"layer"]).await;
    s.delete(&format!("/v2/hist/manifests/{d}")).await;
    let waiting = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&waiting, "bosun_blobs_unreferenced"), 2.0, "the config and the layer");
    assert_eq!(sample(&waiting, "bosun_gc_last_success_timestamp_seconds{kind=\"collect\"}"), 0.0);
    let dry = s.gc(true).await;
    assert_eq!(sample(&waiting, "bosun_blobs_unreferenced_bytes"), dry["bytes_removed"].as_f64().unwrap());
    s.gc(false).await;
    let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["dry_run"], false);
    assert_eq!(runs[0]["trigger"], "api");
    assert_eq!(runs[0]["blobs_removed"], 2);
    assert!(runs[0]["finished_at"].as_i64() >= runs[0]["started_at"].as_i64());
    assert_eq!(runs[1]["dry_run"], true);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    for line in
        ["bosun_gc_runs_total 1", "bosun_gc_dry_runs_total 1", "bosun_gc_objects_removed_total{kind=\"blob\"} 2"]
    {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert_eq!(sample(&metrics, "bosun_gc_bytes_removed_total"), runs[0]["bytes_removed"].as_f64().unwrap());
    assert_eq!(sample(&metrics, "bosun_gc_failures_total"), 0.0);
    assert_eq!(sample(&metrics, "bosun_blobs_unreferenced"), 0.0);
    assert_eq!(sample(&metrics, "bosun_blobs_unreferenced_bytes"), 0.0);
    assert_eq!(sample(&metrics, "bosun_blobs_overdue"), 0.0);
    let finished = runs[0]["finished_at"].as_f64().unwrap() / 1000.0;
    assert_eq!(sample(&metrics, "bosun_gc_last_success_timestamp_seconds{kind=\"collect\"}"), finished);
    assert_eq!(sample(&metrics, "bosun_gc_last_success_timestamp_seconds{kind=\"reconcile\"}"), 0.0);
}

/// Unreferenced blobs count as overdue only once their grace period is over, and stop
/// counting once collected: the gauge to alert on when collection is off or falls behind.
#[tokio::test]
async fn unreferenced_blobs_past_their_grace_are_reported_overdue_until_collected() {
    let s = Server::start_with(GRACE_OF_AN_HOUR_AND_A_CLOCK);
    let (_, d) = s.push_image("late", "v1", &[b"layer of the deleted image"]).await;
    s.push_image("late", "v2", &[b"layer of the kept image"]).await;
    s.delete(&format!("/v2/late/manifests/{d}")).await;
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_blobs_unreferenced"), 2.0, "the config and the layer");
    assert_eq!(sample(&metrics, "bosun_blobs_overdue"), 0.0, "still in their grace");

    s.advance_clock(2 * 3600 * 1000).await;
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_blobs_overdue"), 2.0);
    let overdue_bytes = sample(&metrics, "bosun_blobs_overdue_bytes");
    assert_eq!(overdue_bytes, sample(&metrics, "bosun_blobs_unreferenced_bytes"));

    let report = s.gc(false).await;
    assert_eq!(report["bytes_removed"].as_f64().unwrap(), overdue_bytes, "{report}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_blobs_overdue"), 0.0);
    s.verify_image("late", "v2").await.unwrap();
}

#[tokio::test]
async fn abandoned_uploads_are_collected() {
    let s = Server::start_with(&[
        ("BOSUN_GC_ENABLED", "false"),
        ("BOSUN_GC_GRACE_PERIOD", "0"),
        ("BOSUN_RESTORE_WINDOW", "0"),
        ("BOSUN_GC_UPLOAD_MAX_AGE", "1h"),
        ("BOSUN_TEST_FAILPOINTS", "true"),
    ]);
    let mut locations = Vec::new();
    for _ in 0..2 {
        let resp = s.http.post(s.url("/v2/up/blobs/uploads/")).send().await.unwrap();
        locations.push(header(&resp, "location"));
        s.http.patch(s.url(locations.last().unwrap())).body("half a layer").send().await.unwrap();
    }
    // The second session's staged file is gone, as a crash between an upload's commit and
    // its record leaves it: removing the session frees nothing, and a dry run says so.
    let lost = locations[1].rsplit('/').next().unwrap();
    std::fs::remove_file(s.data_dir.join("uploads").join(lost)).unwrap();
    let report = s.gc(false).await;
    assert_eq!(count(&report, "upload"), 0, "too young: {report}");
    s.advance_clock(3_600_001).await;
    let dry = s.gc(true).await;
    let report = s.gc(false).await;
    assert_eq!(count(&report, "upload"), 2, "{report}");
    for run in [&dry, &report] {
        assert_eq!(run["bytes_removed"], "half a layer".len(), "{run}");
    }
    for location in &locations {
        expect_error(s.get(location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    }
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
}

#[tokio::test]
async fn reconcile_removes_unknown_bytes_and_reports_missing_ones() {
    let s = Server::start_with(GC_NOW);
    s.push_image("rec", "v1", &[b"kept layer"]).await;
    // Bytes metadata does not know (as a crash between commit and record leaves them).
    let orphan = b"orphan bytes";
    let d = sha256(orphan);
    let path = blob_file(&s.data_dir, &d);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, orphan).unwrap();
    // Bytes metadata knows, gone from storage.
    let lost = s.push_blob("rec", b"lost layer").await;
    std::fs::remove_file(blob_file(&s.data_dir, &lost)).unwrap();
    // An empty shard directory, as a crash between an unlink and its directory's removal
    // leaves one.
    let empty_shard = s.data_dir.join("blobs/sha256/zz");
    std::fs::create_dir_all(&empty_shard).unwrap();

    let dry: Value = s.reconcile(true).await.json().await.unwrap();
    assert_eq!(count(&dry, "blob"), 1);
    assert!(path.exists(), "a dry run removed bytes");
    let report: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(report["removed"][0]["digest"], d);
    assert_eq!(report["missing_blobs"], 1);
    assert!(!path.exists());
    assert!(!empty_shard.exists(), "an empty shard directory outlived the reconcile");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("bosun_reconcile_missing_blobs 1"), "{metrics}");
    assert!(metrics.contains("bosun_reconcile_orphans_removed_total 1"), "{metrics}");
    s.verify_image("rec", "v1").await.unwrap();
    // The missing blob is still known (reported, never silently dropped), but a probe or a
    // read of it is a 404, logged: a client pushes it again, which repairs it. A mount of
    // it from another repository is an upload too.
    let blob = format!("/v2/rec/blobs/{lost}");
    assert_eq!(s.head(&blob).await.status(), StatusCode::NOT_FOUND);
    expect_error(s.get(&blob).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert!(!s.logged(&["storage lost the bytes", &lost]).await.is_empty());
    let mount = s.mount("rec2", &lost, "rec").await;
    assert_eq!(mount.status(), StatusCode::ACCEPTED, "mounted bytes that are gone");
    assert_eq!(s.reconcile(true).await.json::<Value>().await.unwrap()["missing_blobs"], 1, "dropped from metadata");
    assert_eq!(s.push_blob("rec", b"lost layer").await, lost);
    assert_eq!(s.get(&blob).await.bytes().await.unwrap().as_ref(), b"lost layer");
    assert_eq!(s.reconcile(false).await.json::<Value>().await.unwrap()["missing_blobs"], 0);
    // Bytes cut short are no more the blob than none: not probed, read or mounted, and
    // reported.
    let cut = s.push_blob("rec", b"layer cut short").await;
    std::fs::write(blob_file(&s.data_dir, &cut), b"layer").unwrap();
    assert_eq!(s.head(&format!("/v2/rec/blobs/{cut}")).await.status(), StatusCode::NOT_FOUND);
    expect_error(s.get(&format!("/v2/rec/blobs/{cut}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(s.mount("rec3", &cut, "rec").await.status(), StatusCode::ACCEPTED, "mounted bytes cut short");
    assert_eq!(s.reconcile(true).await.json::<Value>().await.unwrap()["missing_blobs"], 1);
}

/// A reference count made too low behind the server's back (as a bug or a hand edit
/// could): reconcile reports it and sets it right, so the next collection keeps the layer
/// it would otherwise have removed from under a tagged image.
/// Reconcile removes what metadata does not know only once it is older than the grace
/// period: an upload's bytes are unknown for a moment before their record, and a session's
/// staged file before its row, so younger ones stay.
#[tokio::test]
async fn reconcile_leaves_unknown_files_younger_than_the_grace_period() {
    let s = Server::start_with(GRACE_OF_AN_HOUR_AND_A_CLOCK);
    let two_hours = std::time::Duration::from_secs(2 * 3600);
    let place = |path: std::path::PathBuf, bytes: &[u8], aged: bool| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        if aged {
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(std::time::SystemTime::now() - two_hours).unwrap();
        }
        path
    };
    let (young, old) = (b"young unknown bytes".as_slice(), b"old unknown bytes".as_slice());
    let young_blob = place(blob_file(&s.data_dir, &sha256(young)), young, false);
    let old_blob = place(blob_file(&s.data_dir, &sha256(old)), old, true);
    let uploads = s.data_dir.join("uploads");
    let young_upload = place(uploads.join("0123456789abcdef0123456789abcdef"), young, false);
    let old_upload = place(uploads.join("fedcba9876543210fedcba9876543210"), old, true);
    let report: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!((count(&report, "blob"), report["removed"][0]["digest"].clone()), (1, json!(sha256(old))), "{report}");
    assert_eq!(report["uploads_removed"], 1, "{report}");
    assert!(young_blob.exists() && young_upload.exists(), "young files were removed: {report}");
    assert!(!old_blob.exists() && !old_upload.exists(), "old files were left: {report}");
}

#[tokio::test]
async fn reconcile_sets_right_a_reference_count_that_went_wrong() {
    let s = Server::start_with(GC_NOW);
    let layer = b"layer whose count goes wrong";
    s.push_image("counts", "v1", &[layer]).await;
    let digest = sha256(layer);
    s.tamper(&format!(
        "UPDATE blobs SET ref_count = 0 WHERE digest = '{digest}';
         UPDATE repository_blobs SET ref_count = 0 WHERE digest = '{digest}';"
    ));

    let dry: Value = s.reconcile(true).await.json().await.unwrap();
    assert_eq!(dry["counts_repaired"], 2, "{dry}");
    let report: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(report["counts_repaired"], 2, "{report}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("\nbosun_reconcile_count_drift 2\n"), "{metrics}");
    let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
    assert_eq!(runs[0]["counts_repaired"], 2, "{runs}");

    let collected = s.gc(false).await;
    assert_eq!(count(&collected, "blob"), 0, "{collected}");
    s.verify_image("counts", "v1").await.unwrap();
    // Nothing is left to set right.
    let again: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(again["counts_repaired"], 0, "{again}");
}

/// The damage a count too low lets a collection do, a layer's link and row removed while
/// a tagged manifest references them, is reported by reconcile: error log, gauge, run
/// record. (No count can set it right; the image needs pushing again.)
#[tokio::test]
async fn reconcile_reports_references_left_pointing_at_nothing() {
    let mut s = Server::start_with(GC_NOW);
    let layer = b"layer removed behind the counts";
    s.push_image("dangling", "v1", &[layer]).await;
    let digest = sha256(layer);
    s.tamper(&format!(
        "UPDATE repository_blobs SET ref_count = 0 WHERE digest = '{digest}';
         DELETE FROM repository_blobs WHERE digest = '{digest}';
         UPDATE blobs SET ref_count = 0 WHERE digest = '{digest}';
         DELETE FROM blobs WHERE digest = '{digest}';"
    ));

    let report: Value = s.reconcile(false).await.json().await.unwrap();
    assert_eq!(report["dangling_references"], 2, "a manifest's reference to the blob and to its link: {report}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_reconcile_dangling_references"), 2.0);
    let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
    assert_eq!(runs[0]["dangling_references"], 2, "{runs}");
    // A restart does not clear the finding: the gauge reads the run's record.
    s.kill();
    let s = Server::start_in(&s.data_dir, GC_NOW);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_reconcile_dangling_references"), 2.0, "{metrics}");
}

/// Run records and the audit of tag deletions do not grow forever: reconcile prunes those
/// past `gc.history_retention` and `audit_retention`, keeping the last successful run of
/// each kind (the "last success" metrics read it) and anything younger.
#[tokio::test]
async fn reconcile_prunes_run_records_and_tag_deletions_past_their_retention() {
    const DAY: i64 = 86_400_000;
    let retention = [("BOSUN_GC_HISTORY_RETENTION", "30d"), ("BOSUN_AUDIT_RETENTION", "60d")];
    let s = Server::start_with(&[GC_NOW, &retention].concat());
    let runs = || async {
        let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
        runs.as_array().unwrap().iter().rev().map(|r| format!("{} {}", r["kind"], r["dry_run"])).collect::<Vec<_>>()
    };
    let audit = || async {
        let audit: Value = s.get("/admin/deletions").await.json().await.unwrap();
        audit.as_array().unwrap().iter().rev().map(|d| d["tag"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    s.push_image("hist", "a", &[b"layer a"]).await;
    s.push_image("hist", "b", &[b"layer b"]).await;
    assert_eq!(s.delete("/v2/hist/manifests/a").await.status(), StatusCode::ACCEPTED);
    s.gc(true).await;
    s.gc(false).await;
    s.gc(false).await;
    assert_eq!(s.reconcile(false).await.status(), StatusCode::OK);

    s.advance_clock(40 * DAY).await;
    assert_eq!(s.delete("/v2/hist/manifests/b").await.status(), StatusCode::ACCEPTED);
    s.gc(false).await;
    assert_eq!(s.reconcile(false).await.status(), StatusCode::OK);
    // The old collections went; the old reconcile stays while it is the last success.
    assert_eq!(runs().await, ["\"reconcile\" false", "\"collect\" false", "\"reconcile\" false"]);
    assert_eq!(audit().await, ["a", "b"], "40 days is inside the audit's 60");
    // A dry run prunes nothing.
    s.advance_clock(31 * DAY).await;
    s.reconcile(true).await;
    assert_eq!(runs().await.len(), 4);
    assert_eq!(audit().await.len(), 2);

    assert_eq!(s.reconcile(false).await.status(), StatusCode::OK);
    assert_eq!(
        runs().await,
        ["\"collect\" false", "\"reconcile\" false", "\"reconcile\" true", "\"reconcile\" false"],
        "the last successful collection and reconcile, 31 days old, the dry run and this reconcile"
    );
    assert_eq!(audit().await, ["b"], "71 days is past the audit's 60");
}

#[tokio::test]
async fn a_listing_error_stops_the_reconcile_before_it_removes_anything() {
    let s = Server::start_with(GC_NOW);
    let orphan = b"orphan";
    let d = sha256(orphan);
    let path = blob_file(&s.data_dir, &d);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, orphan).unwrap();
    // Something in the blob area that is not a blob: the listing is not trustworthy.
    std::fs::write(path.parent().unwrap().join("not-a-digest"), b"?").unwrap();
    let resp = s.reconcile(false).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(path.exists(), "reconcile removed bytes after a listing error");
    let runs: Value = s.get("/admin/gc/runs").await.json().await.unwrap();
    assert!(runs[0]["error"].as_str().unwrap().contains("not-a-digest"), "{runs}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_reconcile_failures_total"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "bosun_reconcile_runs_total"), 0.0);
}

/// Paused, collection removes nothing: scheduled runs are skipped, a requested one is
/// refused (409, naming who paused and why), a dry run still reports. The pause outlives
/// a crash: after SIGKILL and a restart it still holds, and the start says so. Resumed,
/// the next run removes what waited. Paused, asked about and resumed from the command line.
#[tokio::test]
async fn a_paused_collection_removes_nothing_until_resumed_even_across_a_crash() {
    let scheduled = [("BOSUN_GC_ENABLED", "true"), ("BOSUN_GC_INTERVAL", "100ms")];
    let env = [GC_NOW, &scheduled].concat();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &env);
    let cli = |addr: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
            .args(["gc", "--url", addr])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let paused = cli(&s.addr, &["--pause", "--reason", "disk check"]);
    assert_eq!(
        (&paused["paused"], &paused["pause"]["paused_by"], &paused["pause"]["reason"]),
        (&json!(true), &json!("127.0.0.1"), &json!("disk check")),
        "{paused}"
    );
    let again = cli(&s.addr, &["--pause", "--reason", "second"]);
    assert_eq!(
        (&again["pause"]["reason"], &again["pause"]["paused_at"]),
        (&json!("disk check"), &paused["pause"]["paused_at"]),
        "the first pause stays: {again}"
    );
    let (_, digest) = s.push_image("paused", "v1", &[b"kept while paused"]).await;
    assert_eq!(s.delete(&format!("/v2/paused/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    let layer = format!("/v2/paused/blobs/{}", sha256(b"kept while paused"));
    assert!(!s.logged(&["run skipped", "schedule"]).await.is_empty(), "no scheduled run came while paused");
    assert_eq!(s.head(&layer).await.status(), StatusCode::OK, "a scheduled run removed it while paused");

    s.kill();
    let s = Server::start_in(dir.path(), &env);
    assert_eq!(s.logged(&["garbage collection is paused", "disk check"]).await.len(), 1);
    assert!(!s.logged(&["run skipped", "schedule"]).await.is_empty(), "no scheduled run came after the restart");
    assert_eq!(s.head(&layer).await.status(), StatusCode::OK, "a scheduled run removed it after the restart");
    for path in ["/admin/gc", "/admin/reconcile"] {
        let (status, answer) = s.admin_post(path).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains("paused") && message.contains("by 127.0.0.1: disk check"), "{answer}");
    }
    assert_eq!(s.gc(true).await["blobs_removed"], 2, "a dry run reports while paused");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_gc_paused"), 1.0);
    let since = paused["pause"]["paused_at"].as_i64().unwrap() / 1000;
    assert_eq!(
        sample(&metrics, "bosun_gc_paused_since_timestamp_seconds"),
        since as f64,
        "the start survives the restart"
    );
    let status = cli(&s.addr, &["--status"]);
    assert_eq!((&status["paused"], &status["pause"]["reason"]), (&json!(true), &json!("disk check")), "{status}");

    let resumed = cli(&s.addr, &["--resume"]);
    assert_eq!((&resumed["paused"], &resumed["ended"]["reason"]), (&json!(false), &json!("disk check")), "{resumed}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.head(&layer).await.status() == StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "no scheduled run removed it after the resume");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_gc_paused"), 0.0);
    assert_eq!(sample(&metrics, "bosun_gc_paused_since_timestamp_seconds"), 0.0);
    // (Scheduled runs go on now, and one may be running.)
    let status = cli(&s.addr, &["--status"]);
    assert_eq!((&status["paused"], &status["pause"]), (&json!(false), &Value::Null), "{status}");
}

/// A pause for a maintenance window ends by itself: refused runs until then, collected
/// after, and the status and the gauge follow. A duration that does not parse is refused.
#[tokio::test]
async fn a_pause_for_a_while_ends_by_itself() {
    let s = Server::start_with(GC_NOW);
    let (_, digest) = s.push_image("window", "v1", &[b"freed after the window"]).await;
    assert_eq!(s.delete(&format!("/v2/window/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    let (status, paused) = s.admin_post("/admin/gc/pause?for=2h&reason=window").await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    let until = paused["pause"]["until"].as_i64().expect("an end");
    assert_eq!(until - paused["pause"]["paused_at"].as_i64().unwrap(), 2 * 3_600_000, "{paused}");
    assert_eq!(s.admin_post("/admin/gc").await.0, StatusCode::CONFLICT);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_gc_paused"), 1.0);

    // Two hours on (the test clock, which the pause's end is read against).
    s.advance_clock(2 * 3_600_000).await;
    let status: Value = s.get("/admin/gc/status").await.json().await.unwrap();
    assert_eq!((&status["paused"], &status["pause"]), (&json!(false), &Value::Null), "{status}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_gc_paused"), 0.0);
    assert_eq!(s.gc(false).await["blobs_removed"], 2);

    // The same from the command line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["gc", "--url", &s.addr, "--pause", "--for", "30m", "--reason", "from the shell"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paused: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pause = &paused["pause"];
    assert_eq!(pause["until"].as_i64().map(|u| u - pause["paused_at"].as_i64().unwrap()), Some(1_800_000), "{paused}");
    s.advance_clock(1_800_000).await;
    assert_eq!(s.get("/admin/gc/status").await.json::<Value>().await.unwrap()["paused"], false);

    let (status, answer) = s.admin_post("/admin/gc/pause?for=a%20while").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        s.get("/admin/gc/status").await.json::<Value>().await.unwrap()["paused"],
        false,
        "a refused pause paused"
    );
}

/// A pause waits for the collection in progress (which finishes what it started, and
/// which the status and a gauge show meanwhile), then nothing is removed: a retention policy's run is refused too, while its plan still
/// reports; resumed, the policy deletes.
#[tokio::test]
async fn a_pause_waits_for_the_run_in_progress_and_stops_retention() {
    let s = Arc::new(Server::start_with(GC_NOW));
    let (_, digest) = s.push_image("pause/a", "v1", &[b"removed by the run in progress"]).await;
    s.push_image("pause/b", "old", &[b"old"]).await;
    s.push_image("pause/b", "new", &[b"new"]).await;
    assert_eq!(s.delete(&format!("/v2/pause/a/manifests/{digest}")).await.status(), StatusCode::ACCEPTED);
    s.arm("gc.before_bytes").await;
    let collection = {
        let s = s.clone();
        tokio::spawn(async move { s.gc(false).await })
    };
    s.wait_paused("gc.before_bytes").await;
    let pause = {
        let s = s.clone();
        tokio::spawn(async move { s.admin_post("/admin/gc/pause").await })
    };
    // The pause is stored at once, then waits for the run in progress.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut status: Value = s.get("/admin/gc/status").await.json().await.unwrap();
    while status["paused"] != true {
        assert!(std::time::Instant::now() < deadline, "the pause was not stored: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = s.get("/admin/gc/status").await.json().await.unwrap();
    }
    assert!(!pause.is_finished(), "the pause returned while a collection was still removing");
    // What the pause waits for is visible, to a person and to an alert on a stuck run.
    assert_eq!(
        (&status["running"]["kind"], &status["running"]["trigger"]),
        (&json!("collect"), &json!("api")),
        "{status}"
    );
    assert_eq!(status["paused"], true, "{status}");
    // The run has been in progress for at least this long, in seconds (and since its
    // start: not longer than the test has been running).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let metrics = s.get("/metrics").await.text().await.unwrap();
    let in_progress = sample(&metrics, "bosun_gc_run_in_progress_seconds{kind=\"collect\"}");
    assert!((0.1..60.0).contains(&in_progress), "{metrics}");
    assert_eq!(sample(&metrics, "bosun_gc_run_in_progress_seconds{kind=\"reconcile\"}"), 0.0);
    s.release("gc.before_bytes").await;
    let (status, answer) = pause.await.unwrap();
    assert_eq!((status, &answer["paused"]), (StatusCode::OK, &json!(true)), "{answer}");
    assert_eq!(collection.await.unwrap()["blobs_removed"], 2, "the run in progress finished what it started");
    assert_eq!(s.get("/admin/gc/status").await.json::<Value>().await.unwrap()["running"], Value::Null);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_gc_run_in_progress_seconds{kind=\"collect\"}"), 0.0);

    let policy = json!({"name": "newest", "repositories": "pause/b", "keep": {"newest": 1}});
    let resp = s.http.put(s.url("/admin/retention/policies/newest")).json(&policy).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!((status, &plan["tags_deleted"]), (StatusCode::OK, &json!(1)), "{plan}");
    let (status, answer) = s.admin_post("/admin/retention/run").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(s.get("/v2/pause/b/manifests/old").await.status(), StatusCode::OK);
    assert_eq!(s.admin_post("/admin/gc/resume").await.1["paused"], false);
    let (status, applied) = s.admin_post("/admin/retention/run").await;
    assert_eq!((status, &applied["tags_deleted"]), (StatusCode::OK, &json!(1)), "{applied}");
    assert_eq!(s.get("/v2/pause/b/manifests/old").await.status(), StatusCode::NOT_FOUND);
}

/// A non-distributable layer need not be in the repository (its bytes live at `urls`);
/// but one a client pushed anyway (Docker with `allow-nondistributable-artifacts`) is
/// part of the image: collection keeps it while the image lives.
#[tokio::test]
async fn a_pushed_non_distributable_layer_lives_with_its_image() {
    let s = Server::start_with(GC_NOW);
    let config = b"{}";
    let (foreign, absent) = (random_bytes(130, 5_000), random_bytes(131, 5_000));
    let config_digest = s.push_blob("foreign/a", config).await;
    let foreign_digest = s.push_blob("foreign/a", &foreign).await;
    let layer = |digest: &str, size: usize| {
        json!({"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": digest,
               "size": size, "urls": ["https://example.com/layer"]})
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [layer(&foreign_digest, foreign.len()), layer(&sha256(&absent), absent.len())],
    }))
    .unwrap();
    assert_eq!(s.put_manifest("foreign/a", "v1", OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);
    for _ in 0..2 {
        let report = s.gc(false).await;
        assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    }
    let got = s.get(&format!("/v2/foreign/a/blobs/{foreign_digest}")).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap(), foreign);
    // Untagged, the image goes, and the layer with it.
    s.delete("/v2/foreign/a/manifests/v1").await;
    let report = s.gc(false).await;
    assert_eq!(count(&report, "blob"), 2, "the config and the pushed foreign layer: {report}");
}
