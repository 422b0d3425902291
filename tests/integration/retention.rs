//! Retention policies, immutable tags, the restore window, quotas and accounting, driven
//! through the admin API and skopeo, with the server's clock moved ahead by the tests.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;
use crate::skopeo::{gzip, push_layout, write_blob};

const DAY: i64 = 86_400_000;

/// Test environment: collections on demand, no grace, test endpoints on.
const ENV: &[(&str, &str)] =
    &[("BOSUN_GC_ENABLED", "false"), ("BOSUN_GC_GRACE_PERIOD", "0"), ("BOSUN_TEST_FAILPOINTS", "true")];

/// Applies a plan (`path`), doing `meanwhile` at the pause point `point`: between its check
/// of the whole plan and its claim (`retention.checked`), or between the claim and the
/// deletions (`retention.claimed`).
async fn apply_meanwhile(
    s: &Server,
    point: &str,
    path: &str,
    meanwhile: impl std::future::Future<Output = ()>,
) -> (StatusCode, Value) {
    s.arm(point).await;
    let during = async {
        s.wait_paused(point).await;
        meanwhile.await;
        s.release(point).await;
    };
    tokio::join!(s.admin_post(path), during).0
}

/// Pushes one image per tag, each layer its tag's name, a second apart (by the server's
/// clock), so that `newest` ranks them in that order.
async fn push_a_second_apart(s: &Server, repo: &str, tags: &[&str]) {
    for tag in tags {
        s.push_image(repo, tag, &[tag.as_bytes()]).await;
        s.advance_clock(1000).await;
    }
}

/// One policy over every repository: each keeps its newest tag.
const NEWEST_ONE: &str = r#"
[[retention]]
name = "one"
repositories = "**"
keep = { newest = 1 }
"#;

/// An OCI layout holding one image per tag (shared base layer, own layer), for skopeo.
fn write_layout(dir: &Path, tags: &[String]) {
    let base = write_blob(dir, OCI_LAYER, &gzip(&random_bytes(900, 150_000)));
    let mut entries = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let own = write_blob(dir, OCI_LAYER, &gzip(&random_bytes(1000 + i as u64, 40_000 + 1000 * i)));
        let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [tag]}});
        let config = write_blob(dir, OCI_CONFIG, &serde_json::to_vec(&config).unwrap());
        let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [base, own]});
        let mut desc = write_blob(dir, OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        entries.push(desc);
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": entries})).unwrap(),
    )
    .unwrap();
}

fn tag_list(v: &Value) -> Vec<String> {
    let mut t: Vec<String> = v["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    t.sort();
    t
}

#[tokio::test]
async fn thirty_tags_over_time_policy_plan_apply_and_collect() {
    let config = r#"
restore_window = "0"

[[retention]]
name = "builds"
repositories = "apps/*"
keep = { any = [
    { newest = { count = 5, matching = "build-*" } },
    { highest_semver = 3 },
    { pulled_within = "3d" },
] }

[[immutable]]
repositories = "apps/**"
tags = "v1.1.0"
"#;
    let s = Server::start_with_config(config, ENV);
    let tags: Vec<String> =
        (1..=20).map(|i| format!("build-{i}")).chain((1..=10).map(|i| format!("v1.{i}.0"))).collect();
    let dir = tempfile::tempdir().unwrap();
    write_layout(dir.path(), &tags);
    // One push a day, for thirty days.
    for tag in &tags {
        push_layout(dir.path(), tag, &format!("docker://{}/apps/web:{tag}", s.addr), false).await;
        s.advance_clock(DAY).await;
    }
    // build-3 is old but was pulled yesterday.
    s.advance_clock(-2 * DAY).await;
    assert_eq!(s.get("/v2/apps/web/manifests/build-3").await.status(), StatusCode::OK);
    s.advance_clock(2 * DAY).await;

    let (status, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let decisions = &plan["repositories"][0]["tags"];
    let kept: Vec<&str> = decisions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["tag"].as_str().unwrap())
        .collect();
    let mut expected = vec![
        "build-16", "build-17", "build-18", "build-19", "build-20", "v1.10.0", "v1.9.0", "v1.8.0", "v1.1.0", "build-3",
    ];
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    expected.sort();
    assert_eq!(kept_sorted, expected, "{plan:#}");
    let reason = |tag: &str| {
        decisions.as_array().unwrap().iter().find(|d| d["tag"] == tag).unwrap()["reason"].as_str().unwrap().to_owned()
    };
    assert!(reason("v1.10.0").contains("keep.any[1]: highest_semver 3: ranked 1"), "{}", reason("v1.10.0"));
    assert!(reason("v1.7.0").contains("ranked 4, beyond 3"), "{}", reason("v1.7.0"));
    assert!(reason("v1.1.0").starts_with("immutable[0]"), "{}", reason("v1.1.0"));
    assert!(reason("build-3").contains("pulled"), "{}", reason("build-3"));
    assert_eq!(plan["tags_deleted"], 20);
    // Only the unique layers and configs of the deleted images are freed, never the base.
    let bytes_freed = plan["bytes_freed"].as_u64().unwrap();
    assert_eq!(plan["blobs_freed"], 40, "{plan:#}");

    // A dry run changed nothing.
    assert_eq!(tag_list(&s.get("/v2/apps/web/tags/list").await.json().await.unwrap()).len(), 30);
    s.gc(false).await;
    // File lengths of the blob store: with forty small blobs, the filesystem's per-file
    // block rounding alone would exceed the tolerance, and the metadata database grows by
    // the audit records of the deletions (a few pages).
    let blobs_dir = s.data_dir.join("blobs");
    let before = apparent_size(&blobs_dir);
    let (status, applied) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    let (status, again) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let remaining = tag_list(&s.get("/v2/apps/web/tags/list").await.json().await.unwrap());
    assert_eq!(remaining, expected);
    let report = s.gc(false).await;
    assert_eq!(report["bytes_removed"].as_u64().unwrap(), bytes_freed, "{report}");
    let freed_on_disk = before as i64 - apparent_size(&blobs_dir) as i64;
    assert!(
        (freed_on_disk - bytes_freed as i64).abs() < 4 * 1024,
        "disk freed {freed_on_disk}, plan said {bytes_freed}"
    );
    for tag in &expected {
        s.verify_image("apps/web", tag).await.unwrap();
    }
    // Every deletion is recorded with the rule that caused it.
    let audit: Value = s.get("/admin/deletions?limit=100").await.json().await.unwrap();
    let by_policy: Vec<&Value> = audit.as_array().unwrap().iter().filter(|d| d["actor"] == "retention").collect();
    assert_eq!(by_policy.len(), 20);
    assert!(by_policy.iter().all(|d| d["reason"].as_str().unwrap().starts_with("retention policy \"builds\"")));
}

#[tokio::test]
async fn applying_a_stale_plan_deletes_nothing() {
    let config = r#"
[[retention]]
name = "two"
repositories = "**"
keep = { newest = 1 }
"#;
    // After the plan (delete "old", keep "new"), one change to what it rested on; the
    // last change leaves the plan valid (it can only delete less than a new one would).
    for change in ["old moves", "old is pushed again", "old is pulled", "new is deleted", "new is pushed again"] {
        let s = Server::start_with_config(config, ENV);
        let (old_body, _) = s.push_image("stale", "old", &[b"old layer"]).await;
        s.advance_clock(1000).await;
        let (new_body, _) = s.push_image("stale", "new", &[b"new layer"]).await;
        let (_, plan) = s.admin_post("/admin/retention/plan").await;
        assert_eq!(plan["tags_deleted"], 1);
        s.advance_clock(1000).await;
        let expected = match change {
            "old moves" => {
                s.put_manifest("stale", "old", OCI_MANIFEST, &new_body).await;
                "stale:old now points at"
            }
            // The same bytes again: "old" is now the newest push, which the plan did not see.
            "old is pushed again" => {
                s.put_manifest("stale", "old", OCI_MANIFEST, &old_body).await;
                "stale:old was pushed again"
            }
            // Pulled a moment ago: apply writes the pull times noted in memory first.
            "old is pulled" => {
                assert_eq!(s.get("/v2/stale/manifests/old").await.status(), StatusCode::OK);
                "stale:old was pulled since"
            }
            // Deleting "old" too would leave fewer than the newest one.
            "new is deleted" => {
                s.delete("/v2/stale/manifests/new").await;
                "stale:new no longer exists"
            }
            _ => {
                s.put_manifest("stale", "new", OCI_MANIFEST, &new_body).await;
                let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
                assert_eq!(status, StatusCode::OK, "{change}: {answer}");
                assert_eq!(tag_list(&s.get("/v2/stale/tags/list").await.json().await.unwrap()), ["new"]);
                continue;
            }
        };
        let before = tag_list(&s.get("/v2/stale/tags/list").await.json().await.unwrap());
        let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
        assert_eq!(status, StatusCode::CONFLICT, "{change}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(expected), "{change}: {answer}");
        assert_eq!(tag_list(&s.get("/v2/stale/tags/list").await.json().await.unwrap()), before, "{change}");
    }
}

/// An apply checks the whole plan first, then deletes in transactions that let other
/// writers in, each deletion checked again in its own: a tag pushed to after the check
/// is kept and shown as kept, with what changed, and the rest of the plan is applied.
/// (Applied as one transaction, the push would have waited for the apply, and been
/// deleted with it.)
#[tokio::test]
async fn a_tag_pushed_to_while_its_plan_is_applied_is_kept() {
    let s = Server::start_with_config(NEWEST_ONE, ENV);
    push_a_second_apart(&s, "mid", &["a", "b", "c"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan?repository=mid").await;
    assert_eq!(plan["tags_deleted"], 2, "{plan}");
    let apply_path = format!("/admin/retention/apply?plan={}", plan["id"]);
    let (status, applied) = apply_meanwhile(&s, "retention.checked", &apply_path, async {
        s.push_image("mid", "a", &[b"fresh"]).await;
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!((applied["tags_deleted"].as_u64(), applied["applied_at"].is_i64()), (Some(1), true), "{applied}");
    let a = applied["repositories"][0]["tags"].as_array().unwrap().iter().find(|t| t["tag"] == "a").unwrap();
    assert_eq!(a["keep"], true, "{applied}");
    assert!(a["reason"].as_str().unwrap().contains("mid:a now points at"), "{applied}");
    assert_eq!(tag_list(&s.get("/v2/mid/tags/list").await.json().await.unwrap()), ["a", "c"]);
    s.verify_image("mid", "a").await.unwrap();
    // Applied once: the plan was claimed.
    let (status, again) = s.admin_post(&apply_path).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
}

/// A plan (or run) asked for one repository or one policy covers only that: the other
/// repository's tags stay, whatever its own policy says.
#[tokio::test]
async fn a_plan_for_one_repository_or_policy_leaves_the_others() {
    let config = r#"
[[retention]]
name = "first"
repositories = "one/*"
keep = { newest = 1 }

[[retention]]
name = "second"
repositories = "two/*"
keep = { newest = 1 }
"#;
    let s = Server::start_with_config(config, ENV);
    for repo in ["one/a", "one/b", "two/a"] {
        push_a_second_apart(&s, repo, &["old", "new"]).await;
    }
    let tags = |repo: &'static str| {
        let s = &s;
        async move { tag_list(&s.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap()) }
    };
    let (_, plan) = s.admin_post("/admin/retention/plan?repository=one/a").await;
    let planned: Vec<&Value> = plan["repositories"].as_array().unwrap().iter().map(|r| &r["repository"]).collect();
    assert_eq!(planned, [&json!("one/a")], "{plan:#}");
    let (status, applied) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!((status, applied["tags_deleted"].as_u64()), (StatusCode::OK, Some(1)), "{applied}");
    assert_eq!(tags("one/a").await, ["new"]);
    assert_eq!(tags("one/b").await, ["new", "old"]);
    let (status, run) = s.admin_post("/admin/retention/run?policy=second").await;
    assert_eq!((status, run["tags_deleted"].as_u64()), (StatusCode::OK, Some(1)), "{run}");
    assert_eq!(tags("two/a").await, ["new"]);
    assert_eq!(tags("one/b").await, ["new", "old"]);
}

/// A plan saved before a restart that made one of its tags immutable (a rule added to the
/// configuration) deletes nothing: its apply checks the rules in force then.
#[tokio::test]
async fn a_plan_made_before_its_tag_became_immutable_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_in_with_config(&data, NEWEST_ONE, ENV);
    push_a_second_apart(&s, "freeze", &["v1", "v2", "v3"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(plan["tags_deleted"], 2, "{plan}");
    s.terminate();
    assert!(s.exited_within(Duration::from_secs(10)).await.expect("still running after SIGTERM").success());
    let config = format!("{NEWEST_ONE}\n[[immutable]]\nrepositories = \"freeze\"\ntags = \"v1\"\n");
    let s = Server::start_in_with_config(&data, &config, ENV);
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer.to_string().contains("freeze:v1 is now immutable"), "{answer}");
    assert_eq!(tag_list(&s.get("/v2/freeze/tags/list").await.json().await.unwrap()), ["v1", "v2", "v3"]);
}

/// A quota is checked again when an upload is recorded, in the linking transaction: an
/// upload that fit when its bytes were committed, but no longer does when it is recorded
/// (a mount took the room meanwhile), is refused, and its bytes go.
#[tokio::test]
async fn an_upload_that_no_longer_fits_when_recorded_is_refused() {
    let config = "[[quota]]\nrepositories = \"team/*\"\nmax_bytes = 10000\ntotal = true\n";
    let s = std::sync::Arc::new(Server::start_with_config(config, ENV));
    let (first, second) = (random_bytes(990, 6000), random_bytes(991, 6000));
    let second = s.push_blob("outside", &second).await;
    s.arm("upload.committed_before_row").await;
    let held = {
        let (s, first) = (s.clone(), first.clone());
        tokio::spawn(async move {
            let digest = sha256(&first);
            let url = s.url(&format!("/v2/team/one/blobs/uploads/?digest={digest}"));
            s.http.post(url).body(first).send().await.unwrap()
        })
    };
    s.wait_paused("upload.committed_before_row").await;
    let mount = s.http.post(s.url(&format!("/v2/team/two/blobs/uploads/?mount={second}&from=outside")));
    assert_eq!(mount.send().await.unwrap().status(), StatusCode::CREATED);
    s.release("upload.committed_before_row").await;
    let msg = expect_error(held.await.unwrap(), StatusCode::FORBIDDEN, "DENIED").await;
    assert!(msg.contains("quota[0] exceeded"), "{msg}");
    assert_eq!(s.head(&format!("/v2/team/one/blobs/{}", sha256(&first))).await.status(), StatusCode::NOT_FOUND);
    // Its bytes went with the refusal: nothing unknown is left for reconcile.
    let reconcile: Value = s.reconcile(true).await.json().await.unwrap();
    assert!(reconcile["removed"].as_array().unwrap().is_empty(), "{reconcile}");
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
}

/// Tags a and b in `repo` (`NEWEST_ONE` keeps b), a plan, and its apply with a pause taken
/// at the pause point `point`: the apply's answer and path, every tag still there.
async fn apply_with_a_pause_at(s: &Server, repo: &str, point: &str) -> (StatusCode, Value, String) {
    push_a_second_apart(s, repo, &["a", "b"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    let apply_path = format!("/admin/retention/apply?plan={}", plan["id"]);
    let (status, answer) = apply_meanwhile(s, point, &apply_path, async {
        assert_eq!(s.admin_post("/admin/gc/pause?reason=incident").await.0, StatusCode::OK);
    })
    .await;
    assert_eq!(tag_list(&s.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap()), ["a", "b"]);
    assert_eq!(s.admin_post("/admin/gc/resume").await.0, StatusCode::OK);
    (status, answer, apply_path)
}

/// A pause taken after an apply's check, before its claim, refuses it: nothing is
/// deleted, and the plan can be applied after the resume.
#[tokio::test]
async fn a_pause_taken_while_a_plan_is_applied_stops_it() {
    let s = Server::start_with_config(NEWEST_ONE, ENV);
    let (status, answer, apply_path) = apply_with_a_pause_at(&s, "paused", "retention.checked").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("incident"), "{answer}");
    let (status, applied) = s.admin_post(&apply_path).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(tag_list(&s.get("/v2/paused/tags/list").await.json().await.unwrap()), ["b"]);
}

/// A pause taken once an apply has claimed its plan stops it there: the answer says it
/// stopped part-way, what it had deleted (nothing yet) and why; the plan is used up (a
/// second apply is refused), and a new plan, after the resume, deletes the rest.
#[tokio::test]
async fn a_pause_taken_after_an_apply_claimed_its_plan_uses_the_plan_up() {
    let s = Server::start_with_config(NEWEST_ONE, ENV);
    let (status, answer, apply_path) = apply_with_a_pause_at(&s, "claimed", "retention.claimed").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("stopped part-way") && error.contains("incident"), "{answer}");
    assert!(error.contains("deleted 0 tags") && error.contains("a new plan deletes the rest"), "{answer}");
    let (status, again) = s.admin_post(&apply_path).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert!(again["error"].as_str().unwrap().contains("applied already"), "{again}");
    let (_, fresh) = s.admin_post("/admin/retention/plan").await;
    let (status, applied) = s.admin_post(&format!("/admin/retention/apply?plan={}", fresh["id"])).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(tag_list(&s.get("/v2/claimed/tags/list").await.json().await.unwrap()), ["b"]);
}

/// Plans are kept for a week: a newer plan forgets older ones, and applying one of those
/// says so; so does applying the newest plan once it is a week old, forgotten or not.
#[tokio::test]
async fn plans_older_than_a_week_are_forgotten() {
    let s = Server::start_with_config(NEWEST_ONE, ENV);
    s.push_image("weekly/a", "v1", &[b"v1"]).await;
    let (_, old) = s.admin_post("/admin/retention/plan").await;
    s.advance_clock(8 * DAY).await;
    let (_, new) = s.admin_post("/admin/retention/plan").await;
    assert!(new["id"].as_i64() > old["id"].as_i64());
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", old["id"])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("kept for 7 days"), "{answer}");
    let (_, stale) = s.admin_post("/admin/retention/plan").await;
    s.advance_clock(8 * DAY).await;
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", stale["id"])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", new["id"])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (_, fresh) = s.admin_post("/admin/retention/plan").await;
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", fresh["id"])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn immutable_tags_refuse_push_delete_and_policy() {
    let config = r#"
[[immutable]]
repositories = "prod/**"
tags_regex = "v[0-9]+\\.[0-9]+\\.[0-9]+"

[[retention]]
name = "nothing"
repositories = "prod/**"
keep = { matching = "never" }
"#;
    let s = Server::start_with_config(config, ENV);
    let (body, digest) = s.push_image("prod/api", "v1.0.0", &[b"release"]).await;
    // The same content again is fine; a different one is refused, naming the rule.
    assert_eq!(s.put_manifest("prod/api", "v1.0.0", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    let (other, _) = s.push_image("prod/api", "", &[b"something else"]).await;
    let msg =
        expect_error(s.put_manifest("prod/api", "v1.0.0", OCI_MANIFEST, &other).await, StatusCode::FORBIDDEN, "DENIED")
            .await;
    assert!(msg.contains("immutable[0]") && msg.contains("prod/api:v1.0.0"), "{msg}");
    let msg = expect_error(s.delete("/v2/prod/api/manifests/v1.0.0").await, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(msg.contains("immutable"), "{msg}");
    expect_error(s.delete(&format!("/v2/prod/api/manifests/{digest}")).await, StatusCode::FORBIDDEN, "DENIED").await;
    // A mutable tag in the same repository is not protected.
    s.push_image("prod/api", "latest", &[b"release"]).await;
    let (_, plan) = s.admin_post("/admin/retention/run").await;
    assert_eq!(plan["tags_deleted"], 1, "{plan:#}");
    assert_eq!(tag_list(&s.get("/v2/prod/api/tags/list").await.json().await.unwrap()), ["v1.0.0"]);
    s.verify_image("prod/api", "v1.0.0").await.unwrap();
}

#[tokio::test]
async fn restore_within_the_window_and_not_after() {
    let s = Server::start_with(&[
        ("BOSUN_GC_ENABLED", "false"),
        ("BOSUN_GC_GRACE_PERIOD", "0"),
        ("BOSUN_RESTORE_WINDOW", "1d"),
        ("BOSUN_TEST_FAILPOINTS", "true"),
    ]);
    let (_, digest) = s.push_image("undo", "v1", &[&random_bytes(950, 30_000)]).await;
    assert_eq!(s.delete("/v2/undo/manifests/v1").await.status(), StatusCode::ACCEPTED);
    // Collection keeps the manifest while the tag can be restored.
    let report = s.gc(false).await;
    assert!(report["removed"].as_array().unwrap().is_empty(), "{report}");
    let (status, restored) = s.admin_post("/admin/restore?repository=undo&tag=v1").await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["digest"], digest);
    s.verify_image("undo", "v1").await.unwrap();

    // Deleted again, and the window passes: collected, no longer restorable.
    s.delete("/v2/undo/manifests/v1").await;
    let audit: Value = s.get("/admin/deletions").await.json().await.unwrap();
    assert_eq!(audit[0]["restorable"], true, "{audit}");
    assert_eq!(audit[0]["restorable_until"].as_i64(), audit[0]["deleted_at"].as_i64().map(|at| at + DAY));
    assert_eq!(audit[1]["restorable"], false, "restored already: {audit}");
    s.advance_clock(DAY + 1000).await;
    // Refused for the window alone: the manifest is still there, not collected yet.
    let (status, answer) = s.admin_post("/admin/restore?repository=undo&tag=v1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(s.get(&format!("/v2/undo/manifests/{digest}")).await.status(), StatusCode::OK);
    let report = s.gc(false).await;
    assert_eq!(report["manifests_removed"], 1, "{report}");
    let (status, answer) = s.admin_post("/admin/restore?repository=undo&tag=v1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let audit: Value = s.get("/admin/deletions").await.json().await.unwrap();
    assert_eq!(audit.as_array().unwrap().len(), 2);
    assert!(audit[1]["restored_at"].is_number());
    assert_eq!(audit[0]["restorable"], false, "past the window: {audit}");
    assert!(audit[0]["restorable_until"].is_null());
}

/// Only a tag's latest deletion can be undone: deleted, pushed again to another image,
/// then deleted with that image, the tag does not come back pointing at the first one.
#[tokio::test]
async fn only_the_latest_deletion_of_a_tag_can_be_undone() {
    let s = Server::start_with(&[
        ("BOSUN_GC_ENABLED", "false"),
        ("BOSUN_RESTORE_WINDOW", "1d"),
        ("BOSUN_TEST_FAILPOINTS", "true"),
    ]);
    s.push_image("again", "x", &[b"first image"]).await;
    assert_eq!(s.delete("/v2/again/manifests/x").await.status(), StatusCode::ACCEPTED);
    let (_, second) = s.push_image("again", "x", &[b"second image"]).await;
    assert_eq!(s.delete(&format!("/v2/again/manifests/{second}")).await.status(), StatusCode::ACCEPTED);
    let (status, answer) = s.admin_post("/admin/restore?repository=again&tag=x").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let audit: Value = s.get("/admin/deletions").await.json().await.unwrap();
    assert_eq!((&audit[0]["restorable"], &audit[1]["restorable"]), (&json!(false), &json!(false)), "{audit}");
    assert_eq!(s.get("/v2/again/manifests/x").await.status(), StatusCode::NOT_FOUND);
}

/// A tag pushed again after its deletion is not overwritten by a restore of the deletion:
/// 409 (the state is in the way, not the client's rights), and the tag stays where it is.
#[tokio::test]
async fn a_restore_of_a_tag_that_exists_again_is_a_conflict() {
    let s = Server::start_with(&[("BOSUN_GC_ENABLED", "false"), ("BOSUN_RESTORE_WINDOW", "1d")]);
    s.push_image("back", "x", &[b"first image"]).await;
    assert_eq!(s.delete("/v2/back/manifests/x").await.status(), StatusCode::ACCEPTED);
    let (_, second) = s.push_image("back", "x", &[b"second image"]).await;
    let (status, answer) = s.admin_post("/admin/restore?repository=back&tag=x").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer.to_string().contains(&format!("exists again (it points at {second})")), "{answer}");
    let now = s.get("/v2/back/manifests/x").await;
    assert_eq!(now.headers()["docker-content-digest"], second.as_str());
}

/// A restored tag is as old as it was: `newest = 1` still keeps the tag pushed after it,
/// and the audit shows the times it was restored with. (Restored as just pushed, the old
/// tag ranked first and the plan deleted the newer one.) A plan made before the restore
/// does not delete it again.
#[tokio::test]
async fn a_restored_tag_keeps_its_push_and_pull_times() {
    let config = r#"
restore_window = "1d"

[[retention]]
name = "last"
repositories = "keep/*"
keep = { newest = 1 }
"#;
    let s = Server::start_with_config(config, ENV);
    s.push_image("keep/a", "old", &[&random_bytes(960, 20_000)]).await;
    assert_eq!(s.get("/v2/keep/a/manifests/old").await.status(), StatusCode::OK);
    s.advance_clock(3_600_000).await;
    s.push_image("keep/a", "new", &[&random_bytes(961, 20_000)]).await;
    // Planning writes the pull times noted in memory first.
    let (status, before) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(s.delete("/v2/keep/a/manifests/old").await.status(), StatusCode::ACCEPTED);
    s.advance_clock(60_000).await;
    let (status, restored) = s.admin_post("/admin/restore?repository=keep/a&tag=old").await;
    assert_eq!(status, StatusCode::OK, "{restored}");

    let decision = |plan: &Value, tag: &str| {
        plan["repositories"][0]["tags"].as_array().unwrap().iter().find(|d| d["tag"] == tag).unwrap().clone()
    };
    let audit: Value = s.get("/admin/deletions").await.json().await.unwrap();
    assert_eq!(audit[0]["pushed_at"], decision(&before, "old")["pushed_at"], "{audit}");
    assert!(audit[0]["pulled_at"].is_number(), "{audit}");

    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", before["id"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("keep/a:old was restored since"), "{answer}");
    assert_eq!(tag_list(&s.get("/v2/keep/a/tags/list").await.json().await.unwrap()), ["new", "old"]);

    let (status, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        (decision(&plan, "new")["keep"].clone(), decision(&plan, "old")["keep"].clone()),
        (json!(true), json!(false)),
        "{plan:#}"
    );
    assert_eq!(decision(&plan, "old")["pushed_at"], decision(&before, "old")["pushed_at"]);
}

/// Pushes `bytes` to `repo` in one POST, expects a quota refusal that stored nothing, and
/// returns its message.
async fn refused_by_quota(s: &Server, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let resp = s
        .http
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let msg = expect_error(resp, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(s.head(&format!("/v2/{repo}/blobs/{digest}")).await.status(), StatusCode::NOT_FOUND, "{repo}: stored");
    msg
}

#[tokio::test]
async fn quotas_at_the_boundary_count_each_blob_once_and_store_nothing_over() {
    let config = r#"
[[quota]]
repositories = "team/*"
max_bytes = 10000
total = true
"#;
    let s = Server::start_with_config(config, ENV);
    let a = random_bytes(960, 6000);
    let b = random_bytes(961, 4000);
    s.push_blob("team/one", &a).await;
    // The same blob in another repository of the group is not counted twice.
    let resp = s
        .http
        .post(s.url(&format!("/v2/team/two/blobs/uploads/?mount={}&from=team/one", sha256(&a))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    s.push_blob("team/two", &a).await;
    // Exactly at the limit.
    s.push_blob("team/two", &b).await;
    // One byte over: refused with the figures, nothing stored.
    let msg = refused_by_quota(&s, "team/one", &random_bytes(962, 1)).await;
    assert!(msg.contains("10000 bytes") && msg.contains("10001") && msg.contains("quota[0]"), "{msg}");
    let reconcile: Value = s.reconcile(true).await.json().await.unwrap();
    assert!(reconcile["removed"].as_array().unwrap().is_empty(), "bytes were left behind: {reconcile}");
    assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
    // Outside the group, no quota.
    let outside = s.push_blob("other", &random_bytes(963, 20_000)).await;
    // A mount into the group is counted like an upload: refused, nothing linked.
    let resp = s.http.post(s.url(&format!("/v2/team/one/blobs/uploads/?mount={outside}&from=other")));
    expect_error(resp.send().await.unwrap(), StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(s.head(&format!("/v2/team/one/blobs/{outside}")).await.status(), StatusCode::NOT_FOUND);
    // A monolithic upload whose declared length the quota refuses is refused before its
    // body when the client waits for 100 Continue: it is not made to send a layer for
    // nothing. Here the body never comes. The largest length hyper takes (2^64 - 3) plus
    // what the group holds does not fit in a u64: refused all the same, not waved through.
    for declared in [50_000, u64::MAX - 2] {
        let mut tcp = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        let digest = sha256(b"never sent");
        let head = format!(
            "POST /v2/team/one/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {declared}\r\n\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes()).await.unwrap();
        // The whole answer, however it is cut into segments (the server closes after it).
        let mut answer = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer);
        tokio::time::timeout(Duration::from_secs(5), read).await.expect("no answer before the body").unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("quota[0] exceeded"), "{declared}: {answer}");
        assert_eq!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().count(), 0);
    }
}

/// What a group quota counts follows every link and unlink at once, and is the same after
/// a restart, which counts it again from the links; a repository created after the start
/// joins the group.
#[tokio::test]
async fn a_group_quota_follows_unlinks_and_counts_the_same_after_a_restart() {
    let config = r#"
[[quota]]
repositories = "team/*"
max_bytes = 10000
total = true
"#;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_in_with_config(&data, config, ENV);
    let (a, b, c) = (random_bytes(980, 6000), random_bytes(981, 4000), random_bytes(982, 3999));
    s.push_blob("team/one", &a).await;
    s.push_blob("team/two", &b).await;
    refused_by_quota(&s, "team/one", &random_bytes(983, 1)).await;
    // Unlinking frees its bytes for the quota at once.
    let resp = s.delete(&format!("/v2/team/two/blobs/{}", sha256(&b))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    s.push_blob("team/two", &c).await;
    s.push_blob("team/two", &random_bytes(984, 1)).await;
    let msg = refused_by_quota(&s, "team/one", &random_bytes(985, 1)).await;
    assert!(msg.contains("hold 10000 bytes"), "{msg}");
    s.terminate();
    assert!(s.exited_within(Duration::from_secs(10)).await.expect("still running after SIGTERM").success());

    let s = Server::start_in_with_config(&data, config, ENV);
    let msg = refused_by_quota(&s, "team/one", &random_bytes(985, 1)).await;
    assert!(msg.contains("hold 10000 bytes"), "after the restart: {msg}");
    // Still counting after the restart: an unlink frees its bytes at once.
    let resp = s.delete(&format!("/v2/team/two/blobs/{}", sha256(&c))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // A repository created now joins the group, also when all it does is mount a blob from
    // outside the group: the 3,000 bytes count, so the group is full after 999 more.
    let outside = random_bytes(987, 3000);
    s.push_blob("other", &outside).await;
    let mount = format!("/v2/team/five/blobs/uploads/?mount={}&from=other", sha256(&outside));
    assert_eq!(s.http.post(s.url(&mount)).send().await.unwrap().status(), StatusCode::CREATED);
    s.push_blob("team/three", &a).await;
    s.push_blob("team/three", &random_bytes(988, 999)).await;
    let msg = refused_by_quota(&s, "team/one", &random_bytes(986, 1)).await;
    assert!(msg.contains("hold 10000 bytes"), "after the new repositories: {msg}");
}

#[tokio::test]
async fn a_per_repository_quota_limits_each_repository_on_its_own() {
    let config = r#"
[[quota]]
repositories = "team/*"
max_bytes = 10000
"#;
    let s = Server::start_with_config(config, ENV);
    let a = random_bytes(970, 6000);
    let b = random_bytes(971, 4000);
    // Each repository of the group has its own 10,000 bytes: both fill theirs exactly.
    for repo in ["team/one", "team/two"] {
        s.push_blob(repo, &a).await;
        s.push_blob(repo, &b).await;
    }
    // A blob already linked is not counted again.
    s.push_blob("team/one", &a).await;
    let over = random_bytes(972, 1);
    for repo in ["team/one", "team/two"] {
        let msg = refused_by_quota(&s, repo, &over).await;
        assert!(msg.contains("10000 bytes") && msg.contains("10001"), "{repo}: {msg}");
    }
    // A new repository of the group starts empty.
    s.push_blob("team/three", &over).await;
}

/// Moving a policy from the admin API into the configuration file (same name, or the same
/// repositories under another) must not stop the next start: the file's policy is in force,
/// the stored one is listed as not in force and logged, and can be removed through the API.
/// The same for a stored policy that today's rules refuse, or cannot read.
#[tokio::test]
async fn stored_policies_out_of_force_do_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let s = Server::start_in(&data, ENV);
        for (name, repositories) in [("zz", "y/*"), ("moved", "x/*")] {
            let policy = json!({"name": name, "repositories": repositories, "keep": {"newest": 1}});
            let put = s.http.put(s.url(&format!("/admin/retention/policies/{name}"))).json(&policy).send();
            assert_eq!(put.await.unwrap().status(), StatusCode::OK);
        }
    }
    // And one stored by an older version whose pattern this one refuses (it matches
    // nothing): out of force too, not a reason to refuse the start.
    // And one this version cannot read (a field it does not know): the same.
    let typo = json!({"name": "typo", "repositories": "Team/*", "keep": {"newest": 1}});
    let unknown = json!({"name": "unknown", "repositories": "u/*", "keep": {"newest": 1}, "future": true});
    let db = rusqlite::Connection::open(data.join("metadata.sqlite")).unwrap();
    for (name, spec) in [("typo", typo), ("unknown", unknown)] {
        db.execute(
            "INSERT INTO retention_policies (name, spec, updated_at) VALUES (?1, ?2, 0)",
            [name, &spec.to_string()],
        )
        .unwrap();
    }
    drop(db);
    let config = "[[retention]]\nname = \"zz\"\nrepositories = \"x/*\"\nkeep = { newest = 2 }\n";
    let s = Server::start_in_with_config(&data, config, ENV);
    let listed: Value = s.get("/admin/retention/policies").await.json().await.unwrap();
    let summary: Vec<(String, String, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let in_force = p["in_force"].as_bool().unwrap();
            (
                p["source"].as_str().unwrap().to_owned(),
                p["policy"]["repositories"].as_str().unwrap().to_owned(),
                in_force,
            )
        })
        .collect();
    let want = [
        ("config", "x/*", true),
        ("api", "x/*", false),
        ("api", "Team/*", false),
        ("api", "u/*", false),
        ("api", "y/*", false),
    ];
    assert_eq!(summary, want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c)), "{listed:#}");
    assert_eq!(s.logged(&["is not in force"]).await.len(), 4, "one error per policy out of force");
    // A new stored policy that the file would shadow is refused; the shadowed ones go.
    let clash = json!({"name": "again", "repositories": "x/*", "keep": {"newest": 1}});
    let put = s.http.put(s.url("/admin/retention/policies/again")).json(&clash).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::BAD_REQUEST);
    // Nor may a second stored policy take the repositories of a stored one, in force or
    // not: at a start without the file's policy, one of the two would be out of force.
    let twin = json!({"name": "twin", "repositories": "y/*", "keep": {"newest": 1}});
    let put = s.http.put(s.url("/admin/retention/policies/twin")).json(&twin).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::BAD_REQUEST);
    for name in ["zz", "moved", "typo", "unknown"] {
        let resp = s.http.delete(s.url(&format!("/admin/retention/policies/{name}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let listed: Value = s.get("/admin/retention/policies").await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
}

#[tokio::test]
async fn policies_through_the_admin_api_and_explain() {
    let s = Server::start_with(ENV);
    let put =
        |name: &str, body: Value| s.http.put(s.url(&format!("/admin/retention/policies/{name}"))).json(&body).send();
    let resp = put(
        "bad",
        json!({"name": "bad", "repositories": "**", "keep": {"any": [{"newest": 2}, {"matching_regex": "("}]}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("keep.any[1].matching_regex"), "{err}");
    // A duration too long to compare with timestamps is read as a century, not wrapped
    // around into "nothing was pushed within it" (which deleted every tag).
    let long = json!({"name": "long", "repositories": "long/**", "keep": {"pushed_within": "9223372036854776s"}});
    assert_eq!(put("long", long).await.unwrap().status(), StatusCode::OK);
    s.push_image("long/a", "v1", &[b"kept for a century"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan?policy=long").await;
    assert_eq!(plan["tags_deleted"], 0, "{plan:#}");
    assert_eq!(s.http.delete(s.url("/admin/retention/policies/long")).send().await.unwrap().status(), StatusCode::OK);
    let resp = put("all", json!({"name": "all", "repositories": "**", "keep": {"newest": 10}})).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = put(
        "team",
        json!({"name": "team", "repositories": "team/*", "keep": {"always": true}, "schedule": "0 3 * * *"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    s.push_image("team/web", "v1", &[b"x"]).await;
    let explain: Value = s.get("/admin/retention/explain?repository=team/web").await.json().await.unwrap();
    assert_eq!(explain["governed_by"], "team");
    assert_eq!(explain["matching_policies"].as_array().unwrap().len(), 2);
    assert_eq!(explain["decisions"]["tags"][0]["reason"], "keep: always");
    let policies: Value = s.get("/admin/retention/policies").await.json().await.unwrap();
    assert_eq!(policies.as_array().unwrap().len(), 2);
    assert_eq!(s.http.delete(s.url("/admin/retention/policies/team")).send().await.unwrap().status(), StatusCode::OK);
    let explain: Value = s.get("/admin/retention/explain?repository=team/web").await.json().await.unwrap();
    assert_eq!(explain["governed_by"], "all");
}

#[tokio::test]
async fn untagged_manifests_kept_or_removed_after_an_age_never_index_children() {
    let config = r#"
[[retention]]
name = "keep-untagged"
repositories = "keep/**"
keep = { always = true }
untagged = "keep"

[[retention]]
name = "age"
repositories = "age/**"
keep = { always = true }
untagged = "2d"
"#;
    let s = Server::start_with_config(
        config,
        &[
            ("BOSUN_GC_ENABLED", "false"),
            ("BOSUN_GC_GRACE_PERIOD", "0"),
            ("BOSUN_RESTORE_WINDOW", "0"),
            ("BOSUN_TEST_FAILPOINTS", "true"),
        ],
    );
    s.push_image("keep/a", "", &[b"kept untagged"]).await;
    let child = s.push_image("age/a", "", &[b"child"]).await;
    let (index_body, index) = push_index(&s, "age/a", "multi", &[child]).await;
    s.push_image("age/a", "", &[b"lonely"]).await;
    // A signature of the index: a referrer of a present subject, not untagged.
    let empty = s.push_blob("age/a", b"{}").await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}, "layers": [],
        "subject": {"mediaType": OCI_INDEX, "digest": index, "size": index_body.len()},
    }))
    .unwrap();
    assert_eq!(s.put_manifest("age/a", &sha256(&sig), OCI_MANIFEST, &sig).await.status(), StatusCode::CREATED);
    let report = s.gc(false).await;
    assert!(report["removed"].as_array().unwrap().is_empty(), "younger than 2d: {report}");
    let (_, plan) = s.admin_post("/admin/retention/plan?repository=age/a").await;
    let untagged = plan["repositories"][0]["untagged"].as_array().unwrap();
    assert_eq!(untagged.len(), 1, "neither the index child nor the signature is untagged: {plan:#}");
    s.advance_clock(3 * DAY).await;
    let report = s.gc(false).await;
    assert_eq!(report["manifests_removed"], 1, "{report}");
    s.verify_image("age/a", "multi").await.unwrap();
    s.verify_image("age/a", &sha256(&sig)).await.unwrap();
    let catalog: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert!(catalog["repositories"].as_array().unwrap().contains(&json!("keep/a")));
}

/// An untagged manifest a plan would delete, then probed by a client (which may be about to
/// list it in an index): applying the plan deletes nothing.
#[tokio::test]
async fn a_plan_does_not_delete_an_untagged_manifest_probed_since() {
    let config = r#"
[[retention]]
name = "age"
repositories = "probe/**"
keep = { always = true }
untagged = "1d"
"#;
    let s = Server::start_with_config(config, ENV);
    let (_, digest) = s.push_image("probe/a", "", &[b"untagged layer"]).await;
    s.advance_clock(2 * DAY).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(plan["manifests_deleted"], 1, "{plan:#}");
    assert_eq!(s.head(&format!("/v2/probe/a/manifests/{digest}")).await.status(), StatusCode::OK);
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("was pushed or probed since"), "{answer}");
    s.verify_image("probe/a", &digest).await.unwrap();
    // Unused for the age again, it goes, and the log names it (the audit lists tags only).
    s.advance_clock(2 * DAY).await;
    let (status, run) = s.admin_post("/admin/retention/run").await;
    assert_eq!((status, &run["manifests_deleted"]), (StatusCode::OK, &json!(1)), "{run}");
    let lines = s.logged(&[" INFO ", "retention deleted an untagged manifest", "probe/a", &digest, "age"]).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
}

/// The bytes a plan reports as freed count what collections free once the policy's
/// untagged age has passed for the manifests its deletions leave untagged.
#[tokio::test]
async fn a_plan_counts_what_goes_after_an_untagged_age() {
    let config = r#"
[[retention]]
name = "one"
repositories = "aged/**"
keep = { newest = 1 }
untagged = "7d"
"#;
    let s = Server::start_with_config(config, ENV);
    let (old, _) = s.push_image("aged/a", "old", &[&random_bytes(980, 5000)]).await;
    s.advance_clock(1000).await;
    s.push_image("aged/a", "new", &[&random_bytes(981, 6000)]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(plan["tags_deleted"], 1, "{plan:#}");
    let config_size = serde_json::from_slice::<Value>(&old).unwrap()["config"]["size"].as_u64().unwrap();
    assert_eq!(plan["blobs_freed"], 2, "{plan:#}");
    assert_eq!(plan["bytes_freed"], 5000 + config_size, "{plan:#}");
}

/// Policy changes through the admin API at the same moment: two policies for the same
/// repositories cannot both be stored (the next start would refuse them), and what is
/// stored is what is in force.
#[tokio::test]
async fn concurrent_policy_changes_never_store_a_conflicting_pair() {
    let s = std::sync::Arc::new(Server::start_with(ENV));
    let puts: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let name = format!("p{i}");
                let body = json!({"name": name, "repositories": "same/**", "keep": {"newest": i + 1}});
                let url = s.url(&format!("/admin/retention/policies/{name}"));
                (name, s.http.put(url).json(&body).send().await.unwrap().status())
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for put in puts {
        let (name, status) = put.await.unwrap();
        if status == StatusCode::OK {
            accepted.push(name);
        }
    }
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let stored: Value = s.get("/admin/retention/policies").await.json().await.unwrap();
    let names: Vec<&str> = stored.as_array().unwrap().iter().map(|p| p["policy"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, [accepted[0].as_str()]);
    let explain: Value = s.get("/admin/retention/explain?repository=same/x").await.json().await.unwrap();
    assert_eq!(explain["governed_by"], accepted[0]);
}

/// Signatures, attestations and SBOMs stored by tag (cosign's `sha256-<hex>.sig` scheme)
/// go with the image they are attached to, and take no place among the newest N.
#[tokio::test]
async fn tags_attached_to_an_image_go_with_it() {
    let config = r#"
[[retention]]
name = "newest"
repositories = "signed/**"
keep = { newest = 1 }

[[immutable]]
repositories = "signed/**"
tags_regex = "[0-9]+\\.[0-9]+\\.[0-9]+"
"#;
    let s = Server::start_with_config(config, ENV);
    let attachment = |digest: &str, kind: &str| format!("{}.{kind}", digest.replace(':', "-"));
    // Kept by immutability, not by the rule (it is the oldest): its signature stays too.
    let (_, release) = s.push_image("signed/a", "1.0.0", &[b"release layer"]).await;
    let (v1_body, v1) = s.push_image("signed/a", "v1", &[b"v1 layer"]).await;
    // A platform manifest with a tag of its own that goes, listed by a kept index: the
    // manifest stays, and so does its signature.
    let platform = s.push_image("signed/a", "amd64", &[b"platform layer"]).await;
    let platform_digest = platform.1.clone();
    push_index(&s, "signed/a", "2.0.0", &[platform]).await;
    s.advance_clock(1000).await;
    let (_, v2) = s.push_image("signed/a", "v2", &[b"v2 layer"]).await;
    let (_, untagged) = s.push_image("signed/a", "", &[b"pushed by digest"]).await;
    let absent = format!("sha256:{}", "0".repeat(64));
    s.advance_clock(1000).await;
    // Signed after the push, so newer than every image tag.
    for (target, kind) in [
        (&v1, "sig"),
        (&v2, "sig"),
        (&v2, "att"),
        (&untagged, "sbom"),
        (&absent, "sig"),
        (&release, "sig"),
        (&platform_digest, "sig"),
    ] {
        s.push_image("signed/a", &attachment(target, kind), &[format!("{kind} of {target}").as_bytes()]).await;
    }
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    let decisions: Vec<(String, bool)> = plan["repositories"][0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tag"].as_str().unwrap().to_owned(), t["keep"].as_bool().unwrap()))
        .collect();
    let mut expected = vec![
        ("v1".to_owned(), false),
        ("v2".to_owned(), true),
        ("1.0.0".to_owned(), true),
        ("amd64".to_owned(), false),
        ("2.0.0".to_owned(), true),
        (attachment(&platform_digest, "sig"), true),
        (attachment(&v1, "sig"), false),
        (attachment(&v2, "sig"), true),
        (attachment(&v2, "att"), true),
        (attachment(&untagged, "sbom"), true),
        (attachment(&absent, "sig"), false),
        (attachment(&release, "sig"), true),
    ];
    expected.sort();
    let mut decisions = decisions;
    decisions.sort();
    assert_eq!(decisions, expected, "{plan:#}");

    // v1 promoted by digest before the plan is applied: its signature is no longer one to
    // delete, and the plan deletes nothing.
    let promoted = s
        .http
        .put(s.url(&format!("/v2/signed/a/manifests/{v1}?tag=prod")))
        .header("content-type", OCI_MANIFEST)
        .body(v1_body)
        .send()
        .await
        .unwrap();
    assert_eq!(promoted.status(), StatusCode::CREATED);
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("is now tagged prod"), "{answer}");
    let signature = attachment(&v1, "sig");
    assert_eq!(s.head(&format!("/v2/signed/a/manifests/{signature}")).await.status(), StatusCode::OK);
}

/// An apply deletes an image's signature after the image's tags, whatever their names
/// (`latest` sorts before `sha256-...`, `v1` after), so that the signature's check in its own
/// transaction sees the image untagged as the plan said, not as a change; and the plan
/// counts the bytes of both, as a collection then frees them.
#[tokio::test]
async fn a_signature_goes_with_an_image_whose_tag_sorts_before_it() {
    let s = Server::start_with_config(&format!("restore_window = \"0\"\n{NEWEST_ONE}"), ENV);
    // Tags on either side of `sha256-...`.
    for tag in ["latest", "v1"] {
        let (_, old) = s.push_image("early", tag, &[tag.as_bytes()]).await;
        s.push_image("early", &format!("{}.sig", old.replace(':', "-")), &[format!("signature of {tag}").as_bytes()])
            .await;
    }
    s.advance_clock(1000).await;
    s.push_image("early", "z", &[b"z layer"]).await;
    // Garbage that collection frees anyway, one image sharing a layer with the plan's: the
    // plan does not count it.
    s.push_image("elsewhere", "", &[b"junk"]).await;
    s.push_image("early", "", &[b"latest", b"junk of early"]).await;
    let blobs = |report: &Value| report["removed"].as_array().unwrap().iter().filter(|r| r["kind"] == "blob").count();
    let anyway = s.gc(true).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(plan["tags_deleted"], 4, "{plan}");
    let (status, applied) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!((status, &applied["tags_deleted"]), (StatusCode::OK, &json!(4)), "{applied}");
    assert_eq!(tag_list(&s.get("/v2/early/tags/list").await.json().await.unwrap()), ["z"]);
    let report = s.gc(false).await;
    assert_eq!(
        (blobs(&report), report["bytes_removed"].as_u64().unwrap()),
        (
            blobs(&anyway) + plan["blobs_freed"].as_u64().unwrap() as usize,
            anyway["bytes_removed"].as_u64().unwrap() + plan["bytes_freed"].as_u64().unwrap()
        ),
        "{anyway} {plan} {report}"
    );
}

/// A tag that the plan deletes but that is pushed again during the apply is kept, and so
/// is its image's signature, which the plan deleted with it.
#[tokio::test]
async fn a_signature_stays_with_a_tag_kept_during_the_apply() {
    let s = Server::start_with_config(NEWEST_ONE, ENV);
    let (_, v1) = s.push_image("resigned", "v1", &[b"v1 layer"]).await;
    let signature = format!("{}.sig", v1.replace(':', "-"));
    s.push_image("resigned", &signature, &[b"signature of v1"]).await;
    s.advance_clock(1000).await;
    s.push_image("resigned", "v2", &[b"v2 layer"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(plan["tags_deleted"], 2, "{plan}");
    let apply_path = format!("/admin/retention/apply?plan={}", plan["id"]);
    let (status, applied) = apply_meanwhile(&s, "retention.checked", &apply_path, async {
        s.advance_clock(10).await;
        s.push_image("resigned", "v1", &[b"v1 layer"]).await;
    })
    .await;
    assert_eq!((status, &applied["tags_deleted"]), (StatusCode::OK, &json!(0)), "{applied}");
    let mut tags = tag_list(&s.get("/v2/resigned/tags/list").await.json().await.unwrap());
    tags.sort();
    assert_eq!(tags, [signature, "v1".to_owned(), "v2".to_owned()]);
}

/// Applies run one at a time: two plans made before either is applied, each keeping a
/// different tag of one repository, cannot together delete every tag; the second is
/// checked after the first has deleted, and refused.
#[tokio::test]
async fn two_applies_at_once_never_empty_a_repository() {
    let s = Server::start_with(ENV);
    let put = |keep: Value| {
        let policy = json!({"name": "p", "repositories": "both/**", "keep": keep});
        s.http.put(s.url("/admin/retention/policies/p")).json(&policy).send()
    };
    assert_eq!(put(json!({"newest": 1})).await.unwrap().status(), StatusCode::OK);
    push_a_second_apart(&s, "both/x", &["a", "b", "c"]).await;
    let (_, keeps_c) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(put(json!({"matching": "a"})).await.unwrap().status(), StatusCode::OK);
    let (_, keeps_a) = s.admin_post("/admin/retention/plan").await;
    s.arm("retention.checked").await;
    let (first, second) = (
        format!("/admin/retention/apply?plan={}", keeps_c["id"]),
        format!("/admin/retention/apply?plan={}", keeps_a["id"]),
    );
    let meanwhile = async {
        s.wait_paused("retention.checked").await;
        // Time for the other apply to reach the same point, were it not waiting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.release("retention.checked").await;
    };
    let ((one, a), (two, b), ()) = tokio::join!(s.admin_post(&first), s.admin_post(&second), meanwhile);
    let mut statuses = [one, two];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "{a} {b}");
    assert_eq!(tag_list(&s.get("/v2/both/x/tags/list").await.json().await.unwrap()).len(), 1);
}

/// A signature left beside an image whose tags retention deleted (an apply that stopped
/// between the two, or a signature pushed between a plan and its apply) goes with the
/// next plan, instead of staying until the image is collected after the restore window.
#[tokio::test]
async fn a_signature_left_by_an_earlier_apply_goes_with_the_next_plan() {
    let s = Server::start_with_config(NEWEST_ONE, ENV);
    let (_, old) = s.push_image("left", "old", &[b"old"]).await;
    s.advance_clock(1000).await;
    s.push_image("left", "new", &[b"new"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    let signature = format!("{}.sig", old.replace(':', "-"));
    s.push_image("left", &signature, &[b"signature of old"]).await;
    let (status, applied) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!((status, &applied["tags_deleted"]), (StatusCode::OK, &json!(1)), "{applied}");
    let (status, next) = s.admin_post("/admin/retention/run").await;
    assert_eq!((status, &next["tags_deleted"]), (StatusCode::OK, &json!(1)), "{next}");
    let decided = next["repositories"][0]["tags"].as_array().unwrap().iter().find(|t| t["tag"] == signature.as_str());
    assert!(decided.unwrap()["reason"].as_str().unwrap().contains("whose tags retention deleted"), "{next}");
    assert_eq!(tag_list(&s.get("/v2/left/tags/list").await.json().await.unwrap()), ["new"]);
    // Restorable like the image's tag.
    let restored = s.http.post(s.url(&format!("/admin/restore?repository=left&tag={signature}"))).send().await.unwrap();
    assert_eq!(restored.status(), StatusCode::OK);
}

/// A run (on demand, or scheduled) that comes during an apply plans once that apply is
/// done: it finds nothing left to delete, instead of a plan made stale by the apply at
/// once (refused with every deleted tag listed as a change).
#[tokio::test]
async fn a_run_during_an_apply_plans_after_it() {
    let s = Server::start_with_config(NEWEST_ONE, ENV);
    push_a_second_apart(&s, "queued", &["a", "b", "c"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    s.arm("retention.checked").await;
    let apply_path = format!("/admin/retention/apply?plan={}", plan["id"]);
    let apply = s.admin_post(&apply_path);
    let run = async {
        s.wait_paused("retention.checked").await;
        let run = s.admin_post("/admin/retention/run");
        let release = async {
            // Time for the run to plan, were it not waiting for the apply.
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.release("retention.checked").await;
        };
        tokio::join!(run, release).0
    };
    let ((applied, a), (ran, r)) = tokio::join!(apply, run);
    assert_eq!((applied, &a["tags_deleted"]), (StatusCode::OK, &json!(2)), "{a}");
    assert_eq!((ran, &r["tags_deleted"]), (StatusCode::OK, &json!(0)), "{r}");
}

/// A plan that deletes an image's last tag and its signature, applied after an index came
/// to list the image (which now stays, and keeps its signature): refused as changed.
#[tokio::test]
async fn a_plan_is_refused_when_its_image_became_an_index_child() {
    let config = r#"
[[retention]]
name = "newest"
repositories = "late/**"
keep = { newest = 1 }
"#;
    let s = Server::start_with_config(config, ENV);
    let platform = s.push_image("late/a", "amd64", &[b"platform layer"]).await;
    let digest = platform.1.clone();
    let signature = format!("{}.sig", digest.replace(':', "-"));
    s.push_image("late/a", &signature, &[b"signature"]).await;
    s.advance_clock(1000).await;
    s.push_image("late/a", "v2", &[b"v2 layer"]).await;
    let (_, plan) = s.admin_post("/admin/retention/plan").await;
    let deleted: Vec<&str> = plan["repositories"][0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["keep"] == false)
        .map(|t| t["tag"].as_str().unwrap())
        .collect();
    assert_eq!(deleted.len(), 2, "{plan:#}");
    assert!(deleted.contains(&"amd64") && deleted.contains(&signature.as_str()), "{plan:#}");
    push_index(&s, "late/a", "multi", &[platform]).await;
    let (status, answer) = s.admin_post(&format!("/admin/retention/apply?plan={}", plan["id"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains(&format!("its image {digest} is now listed by index")),
        "{answer}"
    );
    assert_eq!(s.head(&format!("/v2/late/a/manifests/{signature}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn storage_accounting() {
    let s = Server::start_with(ENV);
    let base = random_bytes(970, 10_000);
    let (m1, _) = s.push_image("acc/a", "one", &[&base, &random_bytes(971, 3000)]).await;
    let (m2, _) = s.push_image("acc/a", "two", &[&base, &random_bytes(972, 2000)]).await;
    s.push_image("acc/b", "one", &[&base]).await;
    // Two tags on one image: deleting either frees nothing, so neither has exclusive bytes.
    assert_eq!(s.put_manifest("acc/a", "twin", OCI_MANIFEST, &m2).await.status(), StatusCode::CREATED);
    let config_size = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap()["config"]["size"].as_u64().unwrap();
    let du: Value = s.get("/admin/du").await.json().await.unwrap();
    let a = du["repositories"].as_array().unwrap().iter().find(|r| r["repository"] == "acc/a").unwrap();
    let one = a["tags"].as_array().unwrap().iter().find(|t| t["tag"] == "one").unwrap();
    assert_eq!(one["exclusive_bytes"], 3000 + config_size(&m1));
    assert_eq!(one["shared_bytes"], 10_000);
    assert_eq!(one["referenced_bytes"], 13_000 + config_size(&m1));
    for tag in ["two", "twin"] {
        let t = a["tags"].as_array().unwrap().iter().find(|t| t["tag"] == tag).unwrap();
        assert_eq!(t["exclusive_bytes"], 0, "{tag}: {t}");
        assert_eq!(t["shared_bytes"], t["referenced_bytes"], "{tag}: {t}");
        assert_eq!(t["referenced_bytes"], 12_000 + config_size(&m2), "{tag}: {t}");
    }
    // The base is shared with acc/b: not exclusive to acc/a.
    assert_eq!(a["shared_bytes"], 10_000);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["du", "--url", &s.addr, "--sort", "exclusive"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().nth(2).unwrap().ends_with("acc/a"), "{text}");
}

#[tokio::test]
async fn scheduled_policies_run_by_themselves() {
    let config = r#"
retention_check_interval = "100ms"

[[retention]]
name = "hourly"
repositories = "sched/*"
keep = { newest = 1 }
schedule = "1s"
"#;
    let s = Server::start_with_config(config, ENV);
    s.push_image("sched/a", "old", &[b"old"]).await;
    s.advance_clock(1000).await;
    s.push_image("sched/a", "new", &[b"new"]).await;
    assert_eq!(tags_settled(&s, "sched/a", 1).await, ["new"]);
}

/// A scheduled policy that fails is counted, logged, and due again at the next check (not
/// a period later): once the cause is gone it runs.
#[tokio::test]
async fn a_failing_scheduled_policy_is_counted_and_retried() {
    let config = r#"
retention_check_interval = "100ms"

[[retention]]
name = "hourly"
repositories = "sched/*"
keep = { newest = 1 }
schedule = "1h"
"#;
    let s = Server::start_with_config(config, ENV);
    s.push_image("sched/b", "old", &[b"old"]).await;
    s.advance_clock(1000).await;
    s.push_image("sched/b", "new", &[b"new"]).await;
    // The first check sees the policy; it then waits for its next time.
    schedule_recorded(&s.data_dir, "hourly").await;
    s.tamper("CREATE TRIGGER refuse BEFORE DELETE ON tags BEGIN SELECT RAISE(ABORT, 'test: tags stay'); END;");
    s.advance_clock(3_600_000).await;
    let metric = |text: &str, name: &str| sample(text, name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let failures = loop {
        let text = s.get("/metrics").await.text().await.unwrap();
        let failures = metric(&text, "bosun_retention_failures_total");
        if failures >= 2.0 || std::time::Instant::now() > deadline {
            break failures;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Twice within seconds of a schedule of an hour: retried at each check.
    assert!(failures >= 2.0, "{failures}");
    assert!(!s.logged(&["retention policy failed", "hourly", "test: tags stay"]).await.is_empty());
    assert_eq!(tag_list(&s.get("/v2/sched/b/tags/list").await.json().await.unwrap()), ["new", "old"]);
    s.tamper("DROP TRIGGER refuse;");
    assert_eq!(tags_settled(&s, "sched/b", 1).await, ["new"]);
    // Counted once the apply has returned, a moment after its deletions are visible.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = s.get("/metrics").await.text().await.unwrap();
        if metric(&text, "bosun_retention_plans_applied_total") >= 1.0 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(metric(&text, "bosun_retention_plans_applied_total"), 1.0);
    assert_eq!(metric(&text, "bosun_retention_tags_deleted_total"), 1.0);
}

/// Waits until a check has seen the scheduled `policy` (its first sight recorded).
async fn schedule_recorded(data_dir: &Path, policy: &str) {
    let seen = || {
        let db = rusqlite::Connection::open(data_dir.join("metadata.sqlite")).unwrap();
        db.query_row("SELECT COUNT(*) FROM retention_schedule WHERE policy = ?1", [policy], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen() == 0 {
        assert!(std::time::Instant::now() < deadline, "no check saw the policy {policy}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The tags of `repo` once there are `want` of them, or after 30 seconds.
async fn tags_settled(s: &Server, repo: &str, want: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let tags = tag_list(&s.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap());
        if tags.len() == want || std::time::Instant::now() > deadline {
            return tags;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// When each scheduled policy last ran is kept in metadata: a policy added through the API
/// waits for its next time (it ran at once when "last" was the process's start), and a time
/// that came while Bosun was down runs at the first check after the start (it was skipped).
#[tokio::test]
async fn retention_schedules_start_when_added_and_catch_up_after_a_restart() {
    let env = &[("BOSUN_GC_ENABLED", "false"), ("BOSUN_TEST_FAILPOINTS", "true")];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = "retention_check_interval = \"100ms\"\n";
    let mut s = Server::start_in_with_config(&data, config, env);
    s.push_image("daily/a", "old", &[b"old"]).await;
    s.advance_clock(1000).await;
    s.push_image("daily/a", "new", &[b"new"]).await;
    // Two days on since the start: a daily time has passed since then, not since the add.
    s.advance_clock(2 * DAY).await;
    let policy = json!({"name": "daily", "repositories": "daily/*", "keep": {"newest": 1}, "schedule": "0 3 * * *"});
    let put = s.http.put(s.url("/admin/retention/policies/daily")).json(&policy).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    // Once a check has seen the policy, a few more checks.
    schedule_recorded(&data, "daily").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(tag_list(&s.get("/v2/daily/a/tags/list").await.json().await.unwrap()).len(), 2, "ran when added");
    s.kill();

    // Stopped for two days: its record moved back instead, as the clock cannot move forward
    // across a restart (four days: it was made at the clock moved two days ahead). The
    // time that came meanwhile runs at the first check.
    let db = rusqlite::Connection::open(data.join("metadata.sqlite")).unwrap();
    let moved = db.execute("UPDATE retention_schedule SET last_run_at = last_run_at - 4 * 86400000", []).unwrap();
    assert_eq!(moved, 1, "the policy's first sight was not recorded");
    drop(db);
    let s = Server::start_in_with_config(&data, config, env);
    assert_eq!(tags_settled(&s, "daily/a", 1).await, ["new"]);
}

/// A scheduled run cut off by a crash (between its plan and its apply) is due again at the
/// first check after the start: its time was recorded before it ran, so it waited for the
/// next one, a whole period later.
#[tokio::test]
async fn a_scheduled_run_cut_off_by_a_crash_runs_after_the_start() {
    let env = &[("BOSUN_GC_ENABLED", "false"), ("BOSUN_TEST_FAILPOINTS", "true")];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = r#"
retention_check_interval = "100ms"

[[retention]]
name = "daily"
repositories = "crashed/*"
keep = { newest = 1 }
schedule = "0 3 * * *"
"#;
    let mut s = Server::start_in_with_config(&data, config, env);
    s.push_image("crashed/a", "old", &[b"old"]).await;
    s.advance_clock(1000).await;
    s.push_image("crashed/a", "new", &[b"new"]).await;
    schedule_recorded(&data, "daily").await;
    s.arm("retention.before_apply").await;
    s.advance_clock(2 * DAY).await;
    s.wait_paused("retention.before_apply").await;
    s.kill();
    // The clock starts over at the restart; two days on again, the time is due.
    let s = Server::start_in_with_config(&data, config, env);
    assert_eq!(tag_list(&s.get("/v2/crashed/a/tags/list").await.json().await.unwrap()).len(), 2, "applied");
    s.advance_clock(2 * DAY).await;
    assert_eq!(tags_settled(&s, "crashed/a", 1).await, ["new"]);
}

/// A policy added while collection is paused is seen (recorded) all the same: its time
/// that comes during the pause runs after the resume, as any other policy's does, instead
/// of being skipped for a whole period.
#[tokio::test]
async fn a_policy_added_during_a_pause_runs_its_time_after_the_resume() {
    let env = &[("BOSUN_GC_ENABLED", "false"), ("BOSUN_TEST_FAILPOINTS", "true")];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start_in_with_config(&data, "retention_check_interval = \"100ms\"\n", env);
    s.push_image("paused/a", "old", &[b"old"]).await;
    s.advance_clock(1000).await;
    s.push_image("paused/a", "new", &[b"new"]).await;
    assert_eq!(s.admin_post("/admin/gc/pause?reason=window").await.0, StatusCode::OK);
    let policy = json!({"name": "daily", "repositories": "paused/*", "keep": {"newest": 1}, "schedule": "0 3 * * *"});
    let put = s.http.put(s.url("/admin/retention/policies/daily")).json(&policy).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    schedule_recorded(&data, "daily").await;
    s.advance_clock(DAY).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(tag_list(&s.get("/v2/paused/a/tags/list").await.json().await.unwrap()).len(), 2, "ran while paused");
    assert_eq!(s.admin_post("/admin/gc/resume").await.0, StatusCode::OK);
    assert_eq!(tags_settled(&s, "paused/a", 1).await, ["new"]);
}

#[tokio::test]
async fn an_invalid_policy_stops_the_start_and_names_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bosun.toml");
    std::fs::write(
        &config,
        "[[retention]]\nname = \"x\"\nrepositories = \"**\"\nkeep = { all = [ { newest = 3 }, { pushed_within = \"ten days\" } ] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("retention[0] \"x\": keep.all[1].pushed_within"), "{err}");
    // Refused before the data directory is made: a mistyped --data-dir stays uncreated.
    assert!(!dir.path().join("data").exists());
}

#[tokio::test]
async fn retention_leaves_untagged_manifests_inside_the_restore_window() {
    let config = r#"
restore_window = "1d"

[[retention]]
name = "quick"
repositories = "win/*"
keep = { always = true }
untagged = "1s"
"#;
    let s = Server::start_with_config(config, ENV);
    s.push_image("win/a", "v1", &[b"layer"]).await;
    s.delete("/v2/win/a/manifests/v1").await;
    s.advance_clock(2000).await;
    let (_, plan) = s.admin_post("/admin/retention/run").await;
    assert_eq!(plan["manifests_deleted"], 0, "{plan:#}");
    let (status, _) = s.admin_post("/admin/restore?repository=win/a&tag=v1").await;
    assert_eq!(status, StatusCode::OK);
    s.delete("/v2/win/a/manifests/v1").await;
    s.advance_clock(2 * DAY).await;
    let (_, plan) = s.admin_post("/admin/retention/run").await;
    assert_eq!(plan["manifests_deleted"], 1, "{plan:#}");
}

/// An untagged age shorter than the grace period does not take an untagged manifest
/// sooner than collection would: the platform manifests of an index being pushed are
/// untagged until the index arrives.
#[tokio::test]
async fn retention_leaves_untagged_manifests_inside_the_grace_period() {
    let config = r#"
[gc]
grace_period = "1h"

[[retention]]
name = "quick"
repositories = "child/*"
keep = { always = true }
untagged = "1s"
"#;
    let s = Server::start_with_config(config, &[("BOSUN_GC_ENABLED", "false"), ("BOSUN_TEST_FAILPOINTS", "true")]);
    let (_, child) = s.push_image("child/a", "", &[b"a platform of an index still being pushed"]).await;
    s.advance_clock(2000).await;
    let (_, plan) = s.admin_post("/admin/retention/run").await;
    assert_eq!(plan["manifests_deleted"], 0, "{plan:#}");
    let reason = plan["repositories"][0]["untagged"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("within the grace period (1h)"), "{reason}");
    s.verify_image("child/a", &child).await.unwrap();
    s.advance_clock(3_600_000).await;
    let (_, plan) = s.admin_post("/admin/retention/run").await;
    assert_eq!(plan["manifests_deleted"], 1, "{plan:#}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "bosun_retention_plans_applied_total"), 2.0);
    assert_eq!(sample(&metrics, "bosun_retention_manifests_deleted_total"), 1.0);
    assert_eq!(sample(&metrics, "bosun_retention_failures_total"), 0.0);
}

/// A pull is what a client received: an index refused by the GET's Accept header (404)
/// was not pulled, and does not keep its tag under a "pulled within" rule.
#[tokio::test]
async fn a_get_refused_by_its_accept_header_is_not_a_pull() {
    let config = r#"
restore_window = "0"

[[retention]]
name = "used"
repositories = "apps/*"
keep = { pulled_within = "3d" }
"#;
    let s = Server::start_with_config(config, ENV);
    let mut indexes = Vec::new();
    for (i, tag) in ["refused", "served", "by-digest"].into_iter().enumerate() {
        let child = s.push_image("apps/multi", "", &[&random_bytes(40 + i as u64, 2_000)]).await;
        indexes.push(push_index(&s, "apps/multi", tag, &[child]).await.1);
    }
    s.advance_clock(10 * DAY).await;
    let get = |reference: &str, accept: &'static str| {
        let request = s.http.get(s.url(&format!("/v2/apps/multi/manifests/{reference}"))).header("accept", accept);
        async move { request.send().await.unwrap().status() }
    };
    // A pull by digest is a pull of every tag on that image.
    assert_eq!(get(&indexes[2], OCI_INDEX).await, StatusCode::OK);
    assert_eq!(get("refused", OCI_MANIFEST).await, StatusCode::NOT_FOUND);
    assert_eq!(get("served", OCI_INDEX).await, StatusCode::OK);

    let (status, plan) = s.admin_post("/admin/retention/plan").await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let keep = |tag: &str| {
        plan["repositories"][0]["tags"].as_array().unwrap().iter().find(|d| d["tag"] == tag).unwrap()["keep"].clone()
    };
    assert_eq!(
        (keep("refused"), keep("served"), keep("by-digest")),
        (json!(false), json!(true), json!(true)),
        "{plan:#}"
    );
}
