//! The commands: `bosun gc` against a running instance and a stopped one; `retention`,
//! `restore`, `du` and `audit` against a running one.

use std::process::Command;

use serde_json::Value;

use crate::harness::*;

fn bosun_gc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .arg("gc")
        .args(args)
        .env("BOSUN_GC_GRACE_PERIOD", "0")
        .env("BOSUN_RESTORE_WINDOW", "0")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn gc_through_a_running_instance_then_on_its_stopped_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut s = Server::start_in(dir.path(), GC_NOW);
    let (_, d) = s.push_image("cli/a", "v1", &[b"one layer"]).await;
    s.delete(&format!("/v2/cli/a/manifests/{d}")).await;

    // Running: through its admin API.
    let (ok, out, err) = bosun_gc(&["--data-dir", &data, "--url", &s.addr, "--dry-run"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["blobs_removed"], 2);
    assert_eq!(report["trigger"], "api");
    // The data directory is the server's: working on it directly is refused.
    let (ok, _, err) = bosun_gc(&["--data-dir", &data, "--url", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("another Bosun process"), "{err}");

    // Stopped: on the data directory. A dry run there changes nothing either.
    s.kill();
    let layer = blob_file(dir.path(), &sha256(b"one layer"));
    let (ok, out, err) = bosun_gc(&["--data-dir", &data, "--url", "127.0.0.1:1", "--dry-run"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((report["dry_run"].clone(), report["blobs_removed"].clone()), (Value::Bool(true), 2.into()), "{report}");
    assert!(layer.exists(), "the dry run removed the layer's bytes");
    let (ok, out, err) = bosun_gc(&["--data-dir", &data, "--url", "127.0.0.1:1"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["trigger"], "cli");
    assert_eq!(report["blobs_removed"], 2);
    assert!(!layer.exists());
    let (ok, out, err) = bosun_gc(&["--data-dir", &data, "--url", "127.0.0.1:1", "--history"]);
    assert!(ok, "{err}");
    let runs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 3);
    assert_eq!(runs[0]["trigger"], "cli");
}

/// A collection on a stopped instance keeps what the retention policies stored through the
/// admin API keep, as the server's own collections do.
#[tokio::test]
async fn an_offline_collection_keeps_what_retention_policies_keep() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut s = Server::start_in(dir.path(), GC_NOW);
    let policy =
        serde_json::json!({"name": "keep", "repositories": "kept/*", "keep": {"always": true}, "untagged": "keep"});
    let put = s.http.put(s.url("/admin/retention/policies/keep")).json(&policy).send().await.unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::OK);
    let (_, kept) = s.push_image("kept/a", "", &[b"kept untagged"]).await;
    let (_, free) = s.push_image("free/a", "", &[b"free untagged"]).await;
    s.kill();
    let (ok, out, err) = bosun_gc(&["--data-dir", &data, "--url", "127.0.0.1:1"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let manifests: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "manifest")
        .map(|r| r["digest"].as_str().unwrap())
        .collect();
    assert_eq!(manifests, [free.as_str()], "kept: {kept}");
}

#[tokio::test]
async fn retention_restore_and_du_commands() {
    let s = Server::start_with(GC_NOW);
    s.push_image("cli/r", "a", &[b"a"]).await;
    s.push_image("cli/r", "b", &[b"b"]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"name": "only-b", "repositories": "cli/*", "keep": {"matching": "b"}}"#).unwrap();
    let run = |args: &[&str]| bosun(&s, args);
    run(&["retention", "put", policy.to_str().unwrap()]);
    let explain: Value = serde_json::from_str(&run(&["retention", "explain", "cli/r"])).unwrap();
    assert_eq!(explain["governed_by"], "only-b");
    let plan: Value = serde_json::from_str(&run(&["retention", "plan"])).unwrap();
    assert_eq!(plan["tags_deleted"], 1);
    let id = plan["id"].to_string();
    run(&["retention", "apply", &id]);
    assert_eq!(s.get("/v2/cli/r/manifests/a").await.status(), reqwest::StatusCode::NOT_FOUND);
    // GC_NOW has no restore window: the tag cannot come back, and the command says so.
    let out =
        Command::new(env!("CARGO_BIN_EXE_bosun")).args(["restore", "cli/r:a", "--url", &s.addr]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("restore window"));
    run(&["retention", "remove", "only-b"]);
    assert!(run(&["du", "--sort", "name"]).contains("cli/r:b"));
    assert!(run(&["du", "cli/r"]).contains("cli/r:b"));
    // A repository of blobs and no manifest exists, and holds nothing yet.
    s.push_blob("cli/blobs-only", b"a layer before its manifest").await;
    run(&["du", "cli/blobs-only"]);
    // A repository that is not there is said so, not shown as holding nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_bosun")).args(["du", "cli/typo", "--url", &s.addr]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404: repository cli/typo is not known"));
}

/// Runs a `bosun` command against the running instance `s`; its standard output.
fn bosun(s: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bosun")).args(args).args(["--url", &s.addr]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `bosun audit` lists who deleted which tag, when, why and until when it can be restored,
/// from the running instance, newest first.
#[tokio::test]
async fn the_audit_from_the_command_line() {
    let s = Server::start();
    s.push_image("cli/audit", "v1", &[b"audited layer"]).await;
    s.push_image("cli/audit", "v2", &[b"another layer"]).await;
    for tag in ["v1", "v2"] {
        assert_eq!(s.delete(&format!("/v2/cli/audit/manifests/{tag}")).await.status(), reqwest::StatusCode::ACCEPTED);
    }
    let table = bosun(&s, &["audit"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("cli/audit:v2") && rows[1].contains("cli/audit:v1"), "newest first: {table}");
    for row in rows {
        assert!(row.contains(" api ") && row.ends_with("tag deleted through the API"), "{table}");
        // Not restored; restorable for the default day.
        let cells: Vec<&str> = row.split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(cells[2].trim(), "-", "{table}");
        assert!(cells[3].starts_with("20"), "{table}");
    }
    let json: Value = serde_json::from_str(&bosun(&s, &["audit", "--json", "--limit", "1"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["tag"], "v2");
}

/// A stopped instance can be paused before it starts (a migration that must see the
/// storage as it is from the first minute): the server comes up paused, collections are
/// refused, also on the stopped data directory, until a resume.
#[tokio::test]
async fn a_stopped_instance_paused_from_the_command_line_starts_paused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut s = Server::start_in(dir.path(), GC_NOW);
    let (_, d) = s.push_image("cli/paused", "v1", &[b"kept while paused"]).await;
    s.delete(&format!("/v2/cli/paused/manifests/{d}")).await;
    s.kill();

    // Refused at another address of this machine (as another machine's would be): that
    // instance's data directory is not known here, so nothing is worked on directly.
    let own = format!("{}:1", non_loopback_address());
    let (ok, _, err) = bosun_gc(&["--data-dir", &data, "--url", &own, "--pause"]);
    assert!(!ok && err.contains("only a local instance's data directory"), "{own}: {err}");
    let offline = ["--data-dir", &data, "--url", "127.0.0.1:1"];
    let (ok, out, err) = bosun_gc(&[&offline[..], &["--pause", "--reason", "migration"]].concat());
    assert!(ok, "{err}");
    let paused: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&paused["paused"], &paused["pause"]["paused_by"], &paused["pause"]["reason"]),
        (&Value::Bool(true), &Value::from("cli"), &Value::from("migration")),
        "{out}"
    );
    let (ok, _, err) = bosun_gc(&offline);
    assert!(
        !ok && err.contains("paused") && err.contains("migration"),
        "an offline collection ran while paused: {err}"
    );

    let s = Server::start_in(dir.path(), GC_NOW);
    let (status, answer) = s.admin_post("/admin/gc").await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{answer}");
    let (ok, out, err) = bosun_gc(&["--url", &s.addr, "--resume"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["ended"]["paused_by"], "cli", "{out}");
    assert_eq!(s.gc(false).await["blobs_removed"], 2);
}

/// An IPv4 address of this machine that is not loopback.
fn non_loopback_address() -> std::net::Ipv4Addr {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, read below and freed once.
    assert_eq!(unsafe { libc::getifaddrs(&mut list) }, 0, "getifaddrs: {}", std::io::Error::last_os_error());
    let mut found = None;
    let mut at = list;
    while !at.is_null() && found.is_none() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() && i32::from(unsafe { (*entry.ifa_addr).sa_family }) == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let addr = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            found = (!ip.is_loopback()).then_some(ip);
        }
        at = entry.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    found.expect("this machine has an IPv4 address that is not loopback")
}

/// Mistakes are caught where they are made: a data directory that holds no Bosun is not
/// collected or paused (a typo would pause nothing real, and say it did), a restore names
/// the part that is wrong, and flags that make no sense together are refused; a host name
/// is a fine --url.
#[tokio::test]
async fn command_line_mistakes_are_refused_and_names_are_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    for extra in [&[][..], &["--pause"], &["--status"], &["--dry-run"]] {
        let args = [&["--data-dir", missing.to_str().unwrap(), "--url", "127.0.0.1:1"][..], extra].concat();
        let (ok, _, err) = bosun_gc(&args);
        assert!(!ok && err.contains("holds no Bosun data"), "{args:?}: {err}");
    }
    assert!(!missing.exists(), "a mistyped data directory was created");
    let (ok, _, err) = bosun_gc(&["--history", "--dry-run"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");

    let refused = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bosun")).args(args).args(["--url", "127.0.0.1:1"]).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(refused(&["restore", "a/b@sha256:0"]).contains("not a digest"));
    assert!(refused(&["restore", "A:v1"]).contains("is no repository name"));
    assert!(refused(&["restore", "a:b:c"]).contains("\"a:b\" is no repository name"));
    assert!(refused(&["restore", "a:-x"]).contains("is no tag"));
    assert!(refused(&["du", "--sort", "size"]).contains("invalid value 'size'"));

    let s = Server::start_with(GC_NOW);
    let port = s.addr.rsplit_once(':').unwrap().1;
    let (ok, out, err) = bosun_gc(&["--url", &format!("localhost:{port}"), "--status"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["paused"], false);
    // A refusal shows the server's message, not its JSON.
    let (ok, _, err) = bosun_gc(&["--url", &s.addr, "--pause", "--reason", "r"]);
    assert!(ok, "{err}");
    let (ok, _, err) = bosun_gc(&["--url", &s.addr]);
    assert!(!ok);
    assert!(err.contains("answered 409: garbage collection is paused") && !err.contains('{'), "{err}");
}

/// A start that cannot take its address fails before it touches the data directory: no
/// database is created or upgraded, and no background work starts, for a server that
/// will not serve.
#[test]
fn a_start_on_a_busy_address_leaves_the_data_directory_alone() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["serve", "--data-dir", data.to_str().unwrap(), "--listen", &busy.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(err.contains("listening on"), "{err}");
    assert!(!data.exists(), "{:?}", std::fs::read_dir(&data).map(|d| d.count()));
}

/// A data directory that the server's user cannot write in is refused at start, naming
/// what is not writable: made by root (a first start), then only its top handed to the
/// service's user, it started, answered healthy, and failed every write with a 500. Runs
/// as root, to start the server as `nobody` (CI does; elsewhere it says so and does nothing).
#[tokio::test]
async fn a_data_directory_the_server_cannot_write_in_is_refused_at_start() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root to start the server as another user");
        eprintln!("skipped: not root, so the server cannot be started as another user");
        return;
    }
    use std::os::unix::fs::{PermissionsExt, chown};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    Server::start_in(&data, &[]).push_blob("made/by-root", b"a blob").await;
    const NOBODY: u32 = 65534;
    // A copy the user `nobody` can run: the build's may be under a home directory only
    // root enters.
    let binary = dir.path().join("bosun");
    std::fs::copy(env!("CARGO_BIN_EXE_bosun"), &binary).unwrap();
    // Its error, once it has exited (a server that starts instead is stopped, and fails
    // the test).
    let start = || {
        let spawn = || {
            Command::new(&binary)
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(&data)
                .env("BOSUN_MIN_FREE_SPACE", "0")
                .uid(NOBODY)
                .gid(NOBODY)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
        };
        // Another test's child, forked while the copy was being written, may still hold
        // it open for an instant (ETXTBSY).
        let mut child = spawn();
        for _ in 0..50 {
            match &child {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    child = spawn();
                }
                _ => break,
            }
        }
        let mut child = child.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server started on a data directory it cannot write in");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    for top in [data.clone(), data.join("bosun.lock")] {
        chown(&top, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let err = start();
    assert!(err.contains("metadata.sqlite is read-only for this process"), "{err}");
    // The database's files handed over too, the blob directories not.
    for file in std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()) {
        chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let err = start();
    assert!(err.contains("uploads is not writable by this process"), "{err}");
}

/// A command told which data directory to act on acts on that directory's server only:
/// the server answering at the address (here another instance's) refuses, and nothing is
/// paused there; `bosun gc` works on the named (stopped) directory instead. Named rightly,
/// through another path to it, the command goes through the server.
#[tokio::test]
async fn a_command_naming_another_data_directory_is_refused_by_the_server_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(&dir.path().join("a"), &[]);
    let other = dir.path().join("b");
    // A stopped instance's directory.
    let out = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["gc", "--dry-run", "--url", "127.0.0.1:1", "--data-dir", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no Bosun data there yet");
    let run =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_bosun")).args(args).args(["--url", &s.addr]).output().unwrap();
    // The server that answered is named as one, not as nobody.
    let out = run(&["gc", "--dry-run", "--data-dir", other.to_str().unwrap()]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(err.contains("serves another data directory, and") && err.contains("holds no Bosun data"), "{err}");
    assert!(!err.contains("no Bosun answered"), "{err}");
    drop(Server::start_in(&other, &[]));
    let other = other.to_str().unwrap();
    for args in [&["du", "--data-dir", other][..], &["audit", "--data-dir", other]] {
        let out = run(args);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("421") && err.contains(other), "{args:?}: {err}");
    }
    let out = run(&["gc", "--pause", "--reason", "maintenance of b", "--data-dir", other]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("421") && err.contains(&format!("serves another data directory: working on {other} directly")),
        "{err}"
    );
    let status: Value = s.get("/admin/gc/status").await.json().await.unwrap();
    assert_eq!(status["paused"], false, "{status}");
    let out = run(&["gc", "--status", "--data-dir", other]);
    let b_status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b_status["paused"], true, "{b_status}");
    // Named by the environment or by a configuration file instead of the flag: the same.
    let config = dir.path().join("b.toml");
    std::fs::write(&config, format!("data_dir = \"{other}\"\n")).unwrap();
    for (flag, env) in [(None, Some(("BOSUN_DATA_DIR", other))), (Some(["-c", config.to_str().unwrap()]), None)] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bosun"));
        command.args(["gc", "--status", "--url", &s.addr]).args(flag.iter().flatten()).envs(env);
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let named: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
        assert_eq!(named["paused"], true, "{named}: {err}");
        assert!(err.contains("421"), "{err}");
    }
    // Open endpoints do not answer the question: their clients must not learn paths.
    let probe = s.http.get(s.url("/healthz")).header("bosun-data-dir", "/nowhere").send().await.unwrap();
    assert_eq!(probe.status(), reqwest::StatusCode::OK);
    // The right directory, named through a path with a detour in it.
    let detour = dir.path().join("b/../a");
    let out = run(&["gc", "--status", "--data-dir", detour.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A command whose reader went away (`bosun gc --status | head -1`) ends quietly, its
/// work done, not with a panic and exit code 101.
#[tokio::test]
async fn a_command_whose_output_is_closed_ends_quietly() {
    let s = Server::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["gc", "--status", "--url", &s.addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// A command on a stopped instance of an older release leaves its data directory as it
/// is: upgrading it would make it unreadable to that release, which the operator did not
/// ask for. The server's start upgrades it.
#[tokio::test]
async fn a_command_on_a_stopped_older_instance_does_not_upgrade_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let db = dir.path().join("metadata.sqlite");
    let version = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
    };
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(include_str!("../../src/metadata/migrations/released/10.sql")).unwrap();
        conn.pragma_update(None, "user_version", 10).unwrap();
    }
    for args in [&["--dry-run"][..], &["--status"], &["--history"], &[]] {
        let (ok, _, err) = bosun_gc(&[&["--data-dir", &data, "--url", "127.0.0.1:1"], args].concat());
        assert!(!ok, "{args:?} worked on an older database");
        assert!(err.contains("schema version 10, older than this Bosun's") && err.contains("bosun serve"), "{err}");
        assert_eq!(version(&db), 10, "{args:?} upgraded the data directory");
    }
    let s = Server::start_in(dir.path(), GC_NOW);
    assert!(version(&db) > 10, "the server's start did not upgrade it");
    assert_eq!(s.gc(true).await["blobs_removed"], 0);
}

/// A command on a directory whose `metadata.sqlite` is no Bosun database (an empty file:
/// a hand-made placeholder, a copy cut short) refuses it and changes nothing; a dry run
/// made a data directory of it (schema, blob and upload directories, the log's room).
#[test]
fn a_command_on_a_file_that_is_no_bosun_database_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::create(data.join("metadata.sqlite")).unwrap();
    for args in [&["--dry-run"][..], &["--status"], &["--history"], &["--reconcile", "--dry-run"]] {
        let (ok, _, err) = bosun_gc(&[&["--data-dir", data.to_str().unwrap(), "--url", "127.0.0.1:1"], args].concat());
        assert!(!ok, "{args:?} worked on a file that is no Bosun database");
        assert!(err.contains("holds no Bosun metadata"), "{args:?}: {err}");
        let mut left: Vec<String> =
            std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["bosun.lock", "metadata.sqlite"], "{args:?}");
        assert_eq!(std::fs::metadata(data.join("metadata.sqlite")).unwrap().len(), 0, "{args:?}");
    }
}

/// A command sent to something that answers 200 but is not Bosun (a web server or a proxy
/// at a mistyped address) fails and says so; it printed the page and exited 0, as if the
/// restore or the removal had been done.
#[test]
fn a_command_answered_by_something_else_fails() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let page = "<html><body>It works!</body></html>";
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
            // Read what the client sent before closing, or the close would reset the
            // connection under the answer.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let _ = std::io::Read::read_to_end(&mut stream, &mut Vec::new());
        }
    });
    for args in [&["restore", "team/web:v1"][..], &["retention", "remove", "old"], &["gc", "--dry-run"], &["du"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_bosun")).args(args).args(["--url", &addr]).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains("is not Bosun") && err.contains("It works!"), "{args:?}: {err}");
    }
}

/// A data directory whose path is not UTF-8 is named to its server as it is: the command
/// reaches that server (it was told 421, another directory, and then that the directory
/// was busy).
#[tokio::test]
async fn a_command_names_a_data_directory_whose_path_is_not_utf8() {
    use std::os::unix::ffi::OsStringExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(std::ffi::OsString::from_vec(b"odd\xffname+x y".to_vec()));
    let s = Server::start_in(&data, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["gc", "--status", "--url", &s.addr, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status.get("paused").is_some(), "{status}");
}
