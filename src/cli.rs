//! Commands that act on a Bosun instance: through its admin API when it is running,
//! directly on its data directory when it is not.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;

/// What `bosun gc` does.
#[derive(Debug)]
pub enum GcAction {
    /// With a grace period for this run only, if given.
    Collect {
        dry_run: bool,
        grace_period: Option<Duration>,
    },
    Reconcile {
        dry_run: bool,
    },
    History,
    /// For `duration`, if given; else until a resume.
    Pause {
        reason: String,
        duration: Option<Duration>,
    },
    Resume,
    /// Whether collection is paused, and what runs now.
    Status,
}

impl GcAction {
    fn http(&self) -> (&'static str, String) {
        match self {
            GcAction::Collect { dry_run, grace_period } => {
                let grace = grace_period.map(|g| format!("&grace_period={}ms", g.as_millis())).unwrap_or_default();
                ("POST", format!("/admin/gc?dry_run={dry_run}{grace}"))
            }
            GcAction::Reconcile { dry_run } => ("POST", format!("/admin/reconcile?dry_run={dry_run}")),
            GcAction::History => ("GET", "/admin/gc/runs".to_owned()),
            GcAction::Pause { reason, duration } => {
                let until = duration.map(|d| format!("&for={}ms", d.as_millis())).unwrap_or_default();
                ("POST", format!("/admin/gc/pause?reason={}{until}", encode(reason)))
            }
            GcAction::Resume => ("POST", "/admin/gc/resume".to_owned()),
            GcAction::Status => ("GET", "/admin/gc/status".to_owned()),
        }
    }
}

/// The address a local client reaches the server at (a wildcard listen address is
/// reached through loopback).
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    addr
}

/// Where the admin API is: `--url` (`HOST:PORT`; a name is resolved here, and each of its
/// addresses is tried in turn, as `localhost` may name `::1` before 127.0.0.1), or the
/// configured listen address. A data directory named to the command (`--data-dir`,
/// `BOSUN_DATA_DIR`, the file's `data_dir`) goes with each request to a local server, which
/// refuses it unless that is the directory it serves: `bosun gc --data-dir B` must never
/// pause or collect A, whose server happens to answer at the configured address.
pub struct AdminAddr {
    shown: String,
    addrs: Vec<SocketAddr>,
    data_dir: Option<PathBuf>,
}

impl AdminAddr {
    pub fn of(config: &Config, url: Option<&str>) -> anyhow::Result<AdminAddr> {
        let data_dir = match config.data_dir_named {
            true => Some(std::path::absolute(&config.data_dir).context("the data directory's path")?),
            false => None,
        };
        let Some(url) = url else {
            let addr = local_addr(config.listen);
            return Ok(AdminAddr { shown: addr.to_string(), addrs: vec![addr], data_dir });
        };
        let addrs: Vec<SocketAddr> =
            url.to_socket_addrs().with_context(|| format!("--url {url:?} is no HOST:PORT"))?.collect();
        if addrs.is_empty() {
            bail!("--url {url:?}: the name has no address");
        }
        // Another machine's server cannot look at this machine's directories.
        let data_dir = data_dir.filter(|_| addrs.iter().all(|a| a.ip().is_loopback()));
        Ok(AdminAddr { shown: url.to_owned(), addrs, data_dir })
    }

    /// Whether every address is this machine's loopback.
    fn is_loopback(&self) -> bool {
        self.addrs.iter().all(|a| a.ip().is_loopback())
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// How long a question (a status, a listing) or a quick action (a resume, a restore) may
/// wait for its answer before the server is deemed hung, per read of it; other actions get
/// no limit, as a collection, a reconcile, a pause or a retention run may wait for a long run.
const QUESTION_PATIENCE: Duration = Duration::from_secs(60);

/// A plain HTTP/1.1 request to the admin API; `Ok(None)` when nothing listens at any of its
/// addresses. `patience` bounds each wait for the answer.
fn request(
    admin: &AdminAddr,
    method: &str,
    path: &str,
    body: &str,
    patience: Option<Duration>,
) -> anyhow::Result<Option<(u16, String)>> {
    let mut connected = None;
    for addr in &admin.addrs {
        match TcpStream::connect_timeout(addr, Duration::from_secs(3)) {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
        }
    }
    let Some(mut stream) = connected else { return Ok(None) };
    stream.set_read_timeout(patience)?;
    let data_dir = match &admin.data_dir {
        // Its bytes, percent-encoded: a path need not be UTF-8.
        Some(dir) => format!(
            "{}: {}\r\n",
            crate::api::DATA_DIR_HEADER,
            percent_encoding::percent_encode(
                std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()),
                percent_encoding::NON_ALPHANUMERIC
            )
        ),
        None => String::new(),
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{data_dir}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| match patience {
        Some(p) => format!("reading the answer of {admin} (waited {p:?} for a part of it)"),
        None => format!("reading the answer of {admin}"),
    })?;
    if response.is_empty() {
        bail!("{admin} closed the connection without answering (was the server stopping?)");
    }
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed status line")?;
    Ok(Some((status, body.to_owned())))
}

/// A 200's body, if it is what Bosun answers (JSON): a web server or a proxy at a mistyped
/// address answers 200 too, and a command must not report as done what nobody did.
fn bosun_answer(addr: &AdminAddr, body: String) -> anyhow::Result<String> {
    if serde_json::from_str::<serde_json::Value>(&body).is_err() {
        let start: String = body.trim().chars().take(120).collect();
        bail!("what answered at {addr} is not Bosun (its answer is no JSON): {start}");
    }
    Ok(body)
}

/// A refusal from the admin API, with the message its JSON body carries.
fn refused(addr: &AdminAddr, status: u16, body: &str) -> anyhow::Error {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    anyhow::anyhow!("the admin API at {addr} answered {status}: {message}")
}

/// Runs `bosun gc`: prints the JSON report (or history) on stdout.
pub fn gc(config: &Config, url: Option<&str>, action: GcAction) -> anyhow::Result<()> {
    let addr = AdminAddr::of(config, url)?;
    let (method, path) = action.http();
    let patience = match action {
        GcAction::History | GcAction::Status | GcAction::Resume => Some(QUESTION_PATIENCE),
        GcAction::Collect { .. } | GcAction::Reconcile { .. } | GcAction::Pause { .. } => None,
    };
    let answer = request(&addr, method, &path, "", patience).map_err(|e| {
        anyhow::anyhow!("{e:#} (a collection or reconcile it started, if any, is in bosun gc --history)")
    })?;
    let nobody = match answer {
        Some((200, body)) => {
            print(&format!("{}\n", bosun_answer(&addr, body)?))?;
            return Ok(());
        }
        // The server that answered serves another directory than the one named.
        Some((421, body)) => {
            eprintln!("{}", refused(&addr, 421, &body));
            format!("the Bosun at {addr} serves another data directory")
        }
        Some((status, body)) => return Err(refused(&addr, status, &body)),
        None => format!("no Bosun answered at {addr}"),
    };
    // Nothing listens (or not the named directory's server): work on the data directory
    // directly (refused if a server holds it), unless --url named another machine, whose
    // data directory this is not.
    if url.is_some() && !addr.is_loopback() {
        bail!("{nobody}; only a local instance's data directory can be worked on directly");
    }
    // Never a new, empty one: a mistyped directory would be "collected" or "paused" while
    // the real instance is not.
    let dir = &config.data_dir;
    if !dir.join(crate::server::METADATA_FILE).is_file() {
        bail!(
            "{nobody}, and {} holds no Bosun data (no metadata.sqlite): check --url, -c or --data-dir",
            dir.display()
        );
    }
    eprintln!("{nobody}: working on {} directly", dir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let out = runtime.block_on(async move {
        let opened = crate::server::open(config, crate::metadata::SchemaChange::Refused)
            .await
            .with_context(|| format!("{nobody}, and {} could not be opened", dir.display()))?;
        let collector = opened.state.collector.clone();
        Ok::<_, anyhow::Error>(match action {
            GcAction::Collect { dry_run, grace_period } => {
                serde_json::to_string_pretty(&collector.collect("cli", dry_run, grace_period).await?)?
            }
            GcAction::Reconcile { dry_run } => {
                serde_json::to_string_pretty(&collector.reconcile("cli", dry_run).await?)?
            }
            GcAction::History => serde_json::to_string_pretty(&collector.history(50).await?)?,
            GcAction::Pause { reason, duration } => {
                serde_json::to_string_pretty(&collector.pause("cli".into(), reason, duration).await?)?
            }
            GcAction::Resume => serde_json::to_string_pretty(&collector.resume("cli").await?)?,
            GcAction::Status => serde_json::to_string_pretty(&collector.status().await?)?,
        })
    })?;
    print(&format!("{out}\n"))
}

/// Writes a command's answer on standard output. A reader that went away (`bosun gc |
/// head -1`) ends nothing: the command did its work, and says so by its exit status.
/// (SIGPIPE is ignored, as Rust sets it: killed by it, a collection on a stopped
/// instance, which logs on standard error as it goes, could stop half-way.)
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

/// Calls the admin API of the running instance; returns the JSON answer.
pub fn admin(config: &Config, url: Option<&str>, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
    let addr = AdminAddr::of(config, url)?;
    // Retention plans and runs may take long on a large registry; the rest (listings, a
    // restore, a policy change) are questions or quick actions.
    let long = ["/admin/retention/plan", "/admin/retention/apply", "/admin/retention/run"];
    let patience = (!long.iter().any(|p| path.starts_with(p))).then_some(QUESTION_PATIENCE);
    match request(&addr, method, path, body, patience)? {
        Some((200, answer)) => bosun_answer(&addr, answer),
        Some((status, answer)) => Err(refused(&addr, status, &answer)),
        None => bail!("no Bosun answered at {addr} (this command needs the running instance; --url sets its address)"),
    }
}

/// Query-string encoding of one value.
pub fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// How `bosun du` sorts its table.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DuSort {
    /// The most bytes only this repository or tag holds first.
    Exclusive,
    /// The most bytes referenced first.
    Referenced,
    Name,
}

/// `bosun du`: a table sorted by `sort`, or the JSON.
pub fn du(json_text: &str, sort: DuSort, as_json: bool) -> anyhow::Result<String> {
    if as_json {
        return Ok(format!("{json_text}\n"));
    }
    let report: serde_json::Value = serde_json::from_str(json_text)?;
    let mut rows: Vec<(String, u64, u64, u64)> = Vec::new();
    for repo in report["repositories"].as_array().into_iter().flatten() {
        let name = repo["repository"].as_str().unwrap_or_default();
        let get = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        rows.push((
            name.to_owned(),
            get(repo, "referenced_bytes"),
            get(repo, "exclusive_bytes"),
            get(repo, "shared_bytes"),
        ));
        for tag in repo["tags"].as_array().into_iter().flatten() {
            rows.push((
                format!("{name}:{}", tag["tag"].as_str().unwrap_or_default()),
                get(tag, "referenced_bytes"),
                get(tag, "exclusive_bytes"),
                get(tag, "shared_bytes"),
            ));
        }
    }
    match sort {
        DuSort::Name => rows.sort_by(|a, b| a.0.cmp(&b.0)),
        DuSort::Referenced => rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0))),
        DuSort::Exclusive => rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0))),
    }
    let mut out = format!("{:>14} {:>14} {:>14}  NAME\n", "REFERENCED", "EXCLUSIVE", "SHARED");
    out += &format!(
        "{:>14} {:>14} {:>14}  (registry; {} bytes unreferenced)\n",
        report["referenced_bytes"], "", "", report["unreferenced_bytes"]
    );
    for (name, referenced, exclusive, shared) in rows {
        out += &format!("{referenced:>14} {exclusive:>14} {shared:>14}  {name}\n");
    }
    Ok(out)
}

/// `bosun audit`: the tag deletions, newest first, as a table (times in UTC), or the JSON.
pub fn audit(json_text: &str, as_json: bool) -> anyhow::Result<String> {
    if as_json {
        return Ok(format!("{json_text}\n"));
    }
    let deletions: Vec<serde_json::Value> = serde_json::from_str(json_text)?;
    let row = |cells: [&str; 7]| {
        format!(
            "{:<19}  {:<9}  {:<19}  {:<19}  {:<19}  {:<40}  {}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    let mut out = row(["DELETED (UTC)", "ACTOR", "RESTORED (UTC)", "RESTORABLE UNTIL", "DIGEST", "TAG", "REASON"]);
    for d in &deletions {
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
        let time = |k: &str| d[k].as_i64().map(crate::time::utc).unwrap_or_else(|| "-".to_owned());
        let digest = text("digest");
        let tag = format!("{}:{}", text("repository"), text("tag"));
        out += &row([
            &time("deleted_at"),
            &text("actor"),
            &time("restored_at"),
            &time("restorable_until"),
            digest.get(..19).unwrap_or(&digest),
            &tag,
            &text("reason"),
        ]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_as_a_table() {
        let json = serde_json::json!([
            {"repository": "team/app", "tag": "v1", "digest": format!("sha256:{}", "ab".repeat(32)),
             "deleted_at": 1_796_524_880_966_i64, "actor": "retention", "reason": "policy keep-3: not among the 3 newest",
             "restorable": true, "restorable_until": 1_796_611_280_966_i64, "restored_at": null},
            {"repository": "team/app", "tag": "v0", "digest": "sha256:00", "deleted_at": -1, "actor": "api",
             "reason": "tag deleted through the API", "restorable": false, "restored_at": 86_400_000},
            {"repository": "team/app", "tag": "v2", "digest": "sha256:01", "actor": "api", "reason": "no time"},
        ])
        .to_string();
        let table = audit(&json, false).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("DELETED (UTC)"), "{table}");
        assert!(
            lines[1].starts_with("2026-12-06 02:41:20  retention  -                    2026-12-07 02:41:20"),
            "{table}"
        );
        assert!(lines[1].contains("sha256:abababababab ") && lines[1].contains("team/app:v1"), "{table}");
        assert!(lines[1].ends_with("policy keep-3: not among the 3 newest"), "{table}");
        assert!(lines[2].starts_with("1969-12-31 23:59:59  api        1970-01-02 00:00:00  -  "), "{table}");
        assert!(lines[3].starts_with("-                    api"), "a deletion with no time: {table}");
    }
}
