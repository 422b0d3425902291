//! Configuration: one documented struct with its defaults in code. Values come from, in
//! increasing precedence: the defaults, a TOML file, `BOSUN_*` environment variables, and
//! command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::gc::GcOptions;
use crate::metadata::gc::ManifestRules;
use crate::policy::{ImmutableSpec, Policies, QuotaSpec, RetentionSpec, StoredPolicy};
use crate::registry::RegistryOptions;
use crate::storage::space::MinFreeSpace;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the API listens on. Env: `BOSUN_LISTEN`.
    pub listen: SocketAddr,
    /// Directory holding everything: `blobs/`, `uploads/` and `metadata.sqlite`.
    /// Env: `BOSUN_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Whether DELETE of manifests, tags and blobs is allowed. Env: `BOSUN_DELETE_ENABLED`.
    pub delete_enabled: bool,
    /// Mount a blob the registry already has when a client asks to upload it into another
    /// repository (no bytes are sent twice). Env: `BOSUN_AUTO_MOUNT`.
    pub auto_mount: bool,
    /// Largest manifest accepted, in bytes. Env: `BOSUN_MAX_MANIFEST_BYTES`.
    pub max_manifest_bytes: u64,
    /// Flush blob bytes and metadata commits to stable storage before a write is
    /// acknowledged, so that a power loss or kernel crash loses nothing a client was told
    /// is stored. Off, writes survive a crash of Bosun but not of the machine. Env:
    /// `BOSUN_SYNC_WRITES`.
    pub sync_writes: bool,
    /// Log filter, in `tracing` syntax (`info`, `bosun=debug`). Env: `BOSUN_LOG`.
    pub log: String,
    /// `text` (a line a person reads) or `json` (one object per line, for a log
    /// collector). Env: `BOSUN_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Limits on clients that stop sending or reading.
    pub http: HttpConfig,
    /// Enables the test-only pause points under `/admin/failpoints/` (never in
    /// production). Env: `BOSUN_TEST_FAILPOINTS`.
    pub test_failpoints: bool,
    /// How long a deleted tag can be restored (`bosun restore`); garbage collection keeps
    /// its manifest that long. Env: `BOSUN_RESTORE_WINDOW`.
    #[serde(deserialize_with = "de_duration")]
    pub restore_window: Duration,
    /// `[[retention]]` policies.
    pub retention: Vec<RetentionSpec>,
    /// How often scheduled retention policies are checked for being due.
    #[serde(deserialize_with = "de_duration")]
    pub retention_check_interval: Duration,
    /// `[[immutable]]` tag rules.
    pub immutable: Vec<ImmutableSpec>,
    /// `[[quota]]` rules.
    pub quota: Vec<QuotaSpec>,
    /// Let non-loopback clients use `/admin/...` (there is no authentication yet).
    /// Env: `BOSUN_ADMIN_REMOTE`.
    pub admin_remote: bool,
    /// The audit of tag deletions (`GET /admin/deletions`) keeps each one this long (at least
    /// the restore window and a week, for which the registry reads it); older ones are
    /// pruned by reconcile. `0` keeps them all. Env: `BOSUN_AUDIT_RETENTION`.
    #[serde(deserialize_with = "de_duration")]
    pub audit_retention: Duration,
    /// Free space under which no new upload session is opened (507): a share of the data
    /// directory's disk (`"2%"`) or a size (`"10GiB"`, or bytes); `0` turns it off. Env:
    /// `BOSUN_MIN_FREE_SPACE`.
    pub min_free_space: MinFreeSpace,
    /// Whether `data_dir` was named (in the file, by `BOSUN_DATA_DIR` or `--data-dir`)
    /// rather than left at its default: a command then acts on that directory's server
    /// only (`cli::AdminAddr`).
    #[serde(skip)]
    pub data_dir_named: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("log_format {raw:?} is neither text nor json")),
        }
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[gc]` section. Durations are written `500ms`, `30s`, `10m`, `1h`, `7d`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Collect in the background every `interval`. Env: `BOSUN_GC_ENABLED`.
    pub enabled: bool,
    /// Env: `BOSUN_GC_INTERVAL`.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// How long unreferenced content (and a blob a client just probed) is kept before it
    /// may be collected. Env: `BOSUN_GC_GRACE_PERIOD`.
    #[serde(deserialize_with = "de_duration")]
    pub grace_period: Duration,
    /// Collect manifests that have no tag and are no child of an index (children of a
    /// live index and referrers of a present subject are never untagged garbage).
    /// Env: `BOSUN_GC_UNTAGGED`.
    pub untagged: bool,
    /// Collect referrers (signatures, SBOMs) whose subject is gone. Env:
    /// `BOSUN_GC_ORPHAN_REFERRERS`.
    pub orphan_referrers: bool,
    /// Upload sessions idle this long are abandoned. Env: `BOSUN_GC_UPLOAD_MAX_AGE`.
    #[serde(deserialize_with = "de_duration")]
    pub upload_max_age: Duration,
    /// How often storage is compared with metadata. Env: `BOSUN_GC_RECONCILE_INTERVAL`.
    #[serde(deserialize_with = "de_duration")]
    pub reconcile_interval: Duration,
    /// Records of collection and reconcile runs older than this are pruned (by reconcile;
    /// the last successful run of each kind stays); `0` keeps them all. Env:
    /// `BOSUN_GC_HISTORY_RETENTION`.
    #[serde(deserialize_with = "de_duration")]
    pub history_retention: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            interval: Duration::from_secs(10 * 60),
            grace_period: Duration::from_secs(60 * 60),
            untagged: true,
            orphan_referrers: true,
            upload_max_age: Duration::from_secs(24 * 60 * 60),
            reconcile_interval: Duration::from_secs(24 * 60 * 60),
            history_retention: Duration::from_secs(90 * 24 * 60 * 60),
        }
    }
}

/// The `[http]` section: how long a client may hold a connection without making progress,
/// how long a shutdown waits for requests in flight, and how many connections are served
/// at once (see `api/connections.rs`). A zero duration turns its limit off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Time a client has to send a request's headers, counted from the connection's
    /// opening or the end of the previous response: it also closes idle keep-alive
    /// connections. Longer than the 90 s Go clients (docker, containerd, skopeo) keep an
    /// idle connection, so that the client closes it first: a server closing it just as
    /// the client reuses it fails an upload chunk the client will not retry. Env:
    /// `BOSUN_HTTP_HEADER_TIMEOUT`.
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// Longest a request body may pause, and a response wait for the client to read (each
    /// pause, not the whole transfer: a slow client that keeps moving is served). An
    /// upload chunk cut off by it is rolled back; the session stays, to be resumed. Env:
    /// `BOSUN_HTTP_STALL_TIMEOUT`.
    #[serde(deserialize_with = "de_duration")]
    pub stall_timeout: Duration,
    /// On SIGTERM, SIGINT or SIGHUP, how long the requests in flight get to finish once no new
    /// connection is accepted; those still running then are cut off as by a crash (an
    /// upload's session resumes from its last finished chunk after the restart). Shorter
    /// than the supervisor's wait before SIGKILL (10 s for `docker stop`, 30 s in
    /// Kubernetes, 90 s in systemd) leaves time to record the last pulls (up to 5 s). `0s`
    /// waits for every request. Env: `BOSUN_HTTP_DRAIN_TIMEOUT`.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// Connections served at once; more wait in the kernel's listen queue until one
    /// closes, instead of being accepted and then failing for want of a file descriptor
    /// half-way through an upload. `0` (the default) derives it from the open-file limit
    /// (raised to its hard maximum at start): five descriptors per connection (its socket,
    /// a blob or upload file, and a database reader's three files when the idle readers
    /// are taken), with a reserve for the database and background work
    /// (`api::connections`).
    /// Env: `BOSUN_HTTP_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// A second address that serves only `/healthz` and `/metrics`, on connections of its
    /// own (a few, not counted against `max_connections`): a supervisor's probe and a
    /// scrape are then answered while clients hold every connection of the API, where on
    /// the API's address they wait in the listen queue like any client. Keep it private.
    /// Env: `BOSUN_HTTP_MONITOR_LISTEN`.
    pub monitor_listen: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(25),
            max_connections: 0,
            monitor_listen: None,
        }
    }
}

/// The longest duration anywhere (100 years); a longer one is read as this. Durations are
/// compared with timestamps as signed milliseconds, where a longer one could wrap negative
/// and turn "keep what was pushed within" or a grace period into "nothing is recent".
/// Clamped rather than refused: a policy stored before the limit existed must not stop the
/// server from starting, and "longer than a century" means the same thing.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `500ms`, `30s`, `10m`, `1h`, `7d` (or `0`); at most [`MAX_DURATION`].
pub fn parse_duration(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    if raw == "0" {
        return Ok(Duration::ZERO);
    }
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = match number.parse() {
        Ok(n) => n,
        // More digits than any count holds: as long as any other duration past the limit.
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => u64::MAX,
        Err(_) => bail!("duration {raw:?} does not start with a whole number"),
    };
    let (per, millis) = match unit {
        "ms" => (1, true),
        "s" => (1, false),
        "m" => (60, false),
        "h" => (3600, false),
        "d" => (86_400, false),
        _ => bail!("duration {raw:?} needs a unit: ms, s, m, h or d"),
    };
    let duration = match n.checked_mul(per) {
        Some(n) if millis => Duration::from_millis(n),
        Some(secs) => Duration::from_secs(secs),
        None => Duration::MAX,
    };
    Ok(duration.min(MAX_DURATION))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    parse_duration(&raw).map_err(serde::de::Error::custom)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".parse().expect("valid default address"),
            data_dir: PathBuf::from("bosun-data"),
            delete_enabled: true,
            auto_mount: true,
            max_manifest_bytes: 4 * 1024 * 1024,
            sync_writes: true,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            gc: GcConfig::default(),
            http: HttpConfig::default(),
            test_failpoints: false,
            restore_window: Duration::from_secs(24 * 60 * 60),
            retention: Vec::new(),
            retention_check_interval: Duration::from_secs(60),
            immutable: Vec::new(),
            quota: Vec::new(),
            admin_remote: false,
            min_free_space: MinFreeSpace::default(),
            audit_retention: Duration::from_secs(365 * 24 * 60 * 60),
            data_dir_named: false,
        }
    }
}

pub fn parse_bool(key: &str, raw: &str) -> anyhow::Result<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{key}={raw:?} is not a boolean (true or false)"),
    }
}

impl Config {
    /// The defaults, overridden by the TOML file at `path` if given.
    pub fn from_file(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
        config.data_dir_named = toml::from_str::<toml::Table>(&text)?.contains_key("data_dir");
        Ok(config)
    }

    /// Applies the `BOSUN_*` variables of `vars` (the process environment in production);
    /// returns the names of those it does not know.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> anyhow::Result<Vec<String>> {
        let env: std::collections::BTreeMap<String, std::ffi::OsString> = vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| k.starts_with("BOSUN_"))
            .collect();
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        // A value that is not UTF-8 is refused, never taken as "not set" (the defaults then
        // made a new registry on every interface).
        let var = |key: &'static str| -> anyhow::Result<Option<String>> {
            read.borrow_mut().insert(key);
            env.get(key)
                .map(|v| v.clone().into_string().map_err(|v| anyhow::anyhow!("{key}={v:?} is not valid UTF-8")))
                .transpose()
        };
        if let Some(v) = var("BOSUN_LISTEN")? {
            self.listen = v.parse().with_context(|| format!("BOSUN_LISTEN={v:?}"))?;
        }
        // A path, taken as given (it need not be UTF-8).
        read.borrow_mut().insert("BOSUN_DATA_DIR");
        if let Some(v) = env.get("BOSUN_DATA_DIR") {
            if v.is_empty() {
                bail!("BOSUN_DATA_DIR is empty: give the data directory's path");
            }
            self.data_dir = PathBuf::from(v);
            self.data_dir_named = true;
        }
        if let Some(v) = var("BOSUN_DELETE_ENABLED")? {
            self.delete_enabled = parse_bool("BOSUN_DELETE_ENABLED", &v)?;
        }
        if let Some(v) = var("BOSUN_AUTO_MOUNT")? {
            self.auto_mount = parse_bool("BOSUN_AUTO_MOUNT", &v)?;
        }
        if let Some(v) = var("BOSUN_MAX_MANIFEST_BYTES")? {
            self.max_manifest_bytes = v.parse().with_context(|| format!("BOSUN_MAX_MANIFEST_BYTES={v:?}"))?;
        }
        if let Some(v) = var("BOSUN_SYNC_WRITES")? {
            self.sync_writes = parse_bool("BOSUN_SYNC_WRITES", &v)?;
        }
        if let Some(v) = var("BOSUN_LOG")? {
            self.log = v;
        }
        if let Some(v) = var("BOSUN_LOG_FORMAT")? {
            self.log_format =
                v.parse().map_err(anyhow::Error::msg).with_context(|| format!("BOSUN_LOG_FORMAT={v:?}"))?;
        }
        let duration = |key: &str, v: String| parse_duration(&v).with_context(|| format!("{key}={v:?}"));
        if let Some(v) = var("BOSUN_GC_ENABLED")? {
            self.gc.enabled = parse_bool("BOSUN_GC_ENABLED", &v)?;
        }
        if let Some(v) = var("BOSUN_GC_INTERVAL")? {
            self.gc.interval = duration("BOSUN_GC_INTERVAL", v)?;
        }
        if let Some(v) = var("BOSUN_GC_GRACE_PERIOD")? {
            self.gc.grace_period = duration("BOSUN_GC_GRACE_PERIOD", v)?;
        }
        if let Some(v) = var("BOSUN_GC_UNTAGGED")? {
            self.gc.untagged = parse_bool("BOSUN_GC_UNTAGGED", &v)?;
        }
        if let Some(v) = var("BOSUN_GC_ORPHAN_REFERRERS")? {
            self.gc.orphan_referrers = parse_bool("BOSUN_GC_ORPHAN_REFERRERS", &v)?;
        }
        if let Some(v) = var("BOSUN_GC_UPLOAD_MAX_AGE")? {
            self.gc.upload_max_age = duration("BOSUN_GC_UPLOAD_MAX_AGE", v)?;
        }
        if let Some(v) = var("BOSUN_GC_RECONCILE_INTERVAL")? {
            self.gc.reconcile_interval = duration("BOSUN_GC_RECONCILE_INTERVAL", v)?;
        }
        if let Some(v) = var("BOSUN_GC_HISTORY_RETENTION")? {
            self.gc.history_retention = duration("BOSUN_GC_HISTORY_RETENTION", v)?;
        }
        if let Some(v) = var("BOSUN_AUDIT_RETENTION")? {
            self.audit_retention = duration("BOSUN_AUDIT_RETENTION", v)?;
        }
        if let Some(v) = var("BOSUN_HTTP_HEADER_TIMEOUT")? {
            self.http.header_timeout = duration("BOSUN_HTTP_HEADER_TIMEOUT", v)?;
        }
        if let Some(v) = var("BOSUN_HTTP_STALL_TIMEOUT")? {
            self.http.stall_timeout = duration("BOSUN_HTTP_STALL_TIMEOUT", v)?;
        }
        if let Some(v) = var("BOSUN_HTTP_DRAIN_TIMEOUT")? {
            self.http.drain_timeout = duration("BOSUN_HTTP_DRAIN_TIMEOUT", v)?;
        }
        if let Some(v) = var("BOSUN_HTTP_MAX_CONNECTIONS")? {
            self.http.max_connections = v.parse().with_context(|| format!("BOSUN_HTTP_MAX_CONNECTIONS={v:?}"))?;
        }
        if let Some(v) = var("BOSUN_HTTP_MONITOR_LISTEN")? {
            self.http.monitor_listen = Some(v.parse().with_context(|| format!("BOSUN_HTTP_MONITOR_LISTEN={v:?}"))?);
        }
        if let Some(v) = var("BOSUN_RESTORE_WINDOW")? {
            self.restore_window = duration("BOSUN_RESTORE_WINDOW", v)?;
        }
        if let Some(v) = var("BOSUN_MIN_FREE_SPACE")? {
            self.min_free_space =
                v.parse().map_err(anyhow::Error::msg).with_context(|| format!("BOSUN_MIN_FREE_SPACE={v:?}"))?;
        }
        if let Some(v) = var("BOSUN_ADMIN_REMOTE")? {
            self.admin_remote = parse_bool("BOSUN_ADMIN_REMOTE", &v)?;
        }
        if let Some(v) = var("BOSUN_TEST_FAILPOINTS")? {
            self.test_failpoints = parse_bool("BOSUN_TEST_FAILPOINTS", &v)?;
        }
        // Unknown ones are told (a typo would otherwise change nothing, silently), not
        // refused: the environment is shared with whatever else runs.
        let read = read.into_inner();
        Ok(env.into_keys().filter(|k| !read.contains(k.as_str())).collect())
    }

    /// Refuses what a server cannot run with (checked once the command line's `--listen`
    /// is applied): a period of zero for a background task, which would never run (a timer
    /// cannot tick every 0 s); limits that would refuse every push or let one take any
    /// memory; and a monitoring address that is the API's own, whose second bind would fail
    /// with a less helpful message.
    pub fn check_for_serving(&self) -> anyhow::Result<()> {
        const MAX_MANIFEST_LIMIT: u64 = 256 << 20;
        let gc_off = "; gc.enabled = false stops background collection and reconcile";
        let mut periods = vec![("retention_check_interval", self.retention_check_interval, "")];
        if self.gc.enabled {
            periods.extend([
                ("gc.interval", self.gc.interval, gc_off),
                ("gc.reconcile_interval", self.gc.reconcile_interval, gc_off),
            ]);
        }
        // Zero would remove every upload session between two of its chunks; refused, not
        // read as "never" as for the retentions, where 0 keeps everything.
        periods.push((
            "gc.upload_max_age",
            self.gc.upload_max_age,
            "; sessions must be allowed to idle between chunks",
        ));
        if let Some((name, _, hint)) = periods.into_iter().find(|(_, period, _)| period.is_zero()) {
            bail!("{name} must be more than zero{hint}");
        }
        // A manifest is read into memory whole before it is parsed.
        if !(1..=MAX_MANIFEST_LIMIT).contains(&self.max_manifest_bytes) {
            bail!("max_manifest_bytes must be from 1 to {MAX_MANIFEST_LIMIT} (256 MiB)");
        }
        if let Some(monitor) = self.http.monitor_listen
            && monitor.port() != 0
            && monitor.port() == self.listen.port()
            && (monitor.ip() == self.listen.ip() || monitor.ip().is_unspecified() || self.listen.ip().is_unspecified())
        {
            bail!("http.monitor_listen ({monitor}) must be another address than listen ({})", self.listen);
        }
        // The file's policies alone, before the data directory is made or opened (those
        // of the admin API are checked again with them once it is).
        self.policies(&[]).context("invalid policies")?;
        Ok(())
    }

    /// The configuration's policies with the ones stored through the admin API, validated.
    pub fn policies(&self, stored: &[StoredPolicy]) -> anyhow::Result<Policies> {
        Policies::compile(&self.retention, stored, &self.immutable, &self.quota).map_err(anyhow::Error::msg)
    }

    pub fn gc_options(&self) -> GcOptions {
        GcOptions {
            grace_period: self.gc.grace_period,
            rules: ManifestRules { untagged: self.gc.untagged, orphan_referrers: self.gc.orphan_referrers },
            upload_max_age: self.gc.upload_max_age,
            history_retention: (!self.gc.history_retention.is_zero()).then_some(self.gc.history_retention),
            audit_retention: (!self.audit_retention.is_zero()).then(|| self.audit_retention.max(self.audit_read_for())),
        }
    }

    /// How long the audit of a tag deletion is read by the registry itself: a restore
    /// reads it for the restore window, and applying a retention plan (kept a week) asks
    /// whether a tag was restored since the plan, up to a restore window after its
    /// deletion.
    fn audit_read_for(&self) -> Duration {
        self.restore_window.saturating_add(Duration::from_millis(crate::metadata::retention::PLAN_KEPT_MS as u64))
    }

    pub fn registry_options(&self) -> RegistryOptions {
        RegistryOptions {
            delete_enabled: self.delete_enabled,
            auto_mount: self.auto_mount,
            max_manifest_bytes: self.max_manifest_bytes,
            grace_period: self.gc.grace_period,
            restore_window: self.restore_window,
            min_free_space: self.min_free_space,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    /// A value that is not UTF-8 is refused, naming the variable, except the data
    /// directory's, a path taken as given; unknown `BOSUN_*` variables are returned (to be
    /// told), others ignored; an empty data directory is refused.
    #[test]
    fn the_environment_is_read_whole() {
        use std::os::unix::ffi::OsStringExt;
        let odd = |prefix: &str| std::ffi::OsString::from_vec([prefix.as_bytes(), b"\xfe"].concat());
        let err = Config::default().apply_env([("BOSUN_LISTEN".into(), odd("127.0.0.1:6050"))]).unwrap_err();
        assert!(err.to_string().contains("BOSUN_LISTEN") && err.to_string().contains("not valid UTF-8"), "{err}");
        let mut config = Config::default();
        let unknown = config
            .apply_env([
                ("BOSUN_DATA_DIR".into(), odd("/srv/x")),
                ("BOSUN_GC_GRACE_PERIODS".into(), "0s".into()),
                ("HOME".into(), "/root".into()),
            ])
            .unwrap();
        assert_eq!(config.data_dir, std::path::PathBuf::from(odd("/srv/x")));
        assert_eq!(unknown, ["BOSUN_GC_GRACE_PERIODS"]);
        let err = Config::default().apply_env(env(&[("BOSUN_DATA_DIR", "")])).unwrap_err();
        assert!(err.to_string().contains("BOSUN_DATA_DIR is empty"), "{err}");
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bosun.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:6000\"\ndelete_enabled = false\n").unwrap();
        let mut config = Config::from_file(Some(&path)).unwrap();
        assert_eq!(config.listen.port(), 6000);
        assert!(!config.delete_enabled);
        config.apply_env(env(&[("BOSUN_DELETE_ENABLED", "true"), ("BOSUN_ADMIN_REMOTE", "true")])).unwrap();
        assert!(config.delete_enabled);
        assert!(config.admin_remote);
        assert_eq!(config.max_manifest_bytes, 4 * 1024 * 1024);
        assert_eq!(config.min_free_space, MinFreeSpace::Share(200));
    }

    #[test]
    fn the_audit_is_kept_while_the_registry_reads_it_and_zero_keeps_it_all() {
        let day = Duration::from_secs(86_400);
        let mut config = Config { audit_retention: day, restore_window: 2 * day, ..Config::default() };
        assert_eq!(config.gc_options().audit_retention, Some(9 * day), "a restore window and a plan's week");
        config.audit_retention = 30 * day;
        assert_eq!(config.gc_options().audit_retention, Some(30 * day));
        config.audit_retention = Duration::ZERO;
        assert_eq!(config.gc_options().audit_retention, None);
        config.gc.history_retention = Duration::ZERO;
        assert_eq!(config.gc_options().history_retention, None);
    }

    #[test]
    fn the_monitoring_address_is_not_the_apis() {
        let with = |listen: &str, monitor: &str| {
            let mut config = Config { listen: listen.parse().unwrap(), ..Config::default() };
            config.http.monitor_listen = Some(monitor.parse().unwrap());
            config.check_for_serving()
        };
        assert!(with("0.0.0.0:5000", "127.0.0.1:5000").is_err());
        assert!(with("127.0.0.1:5000", "0.0.0.0:5000").is_err());
        assert!(with("127.0.0.1:5000", "127.0.0.1:5000").unwrap_err().to_string().contains("http.monitor_listen"));
        assert!(with("127.0.0.1:5000", "127.0.0.1:5001").is_ok());
        assert!(with("10.0.0.1:5000", "127.0.0.1:5000").is_ok());
        assert!(with("127.0.0.1:0", "127.0.0.1:0").is_ok());
        assert!(Config::default().check_for_serving().is_ok());
    }

    #[test]
    fn background_tasks_need_a_period() {
        let refusal =
            |toml: &str| toml::from_str::<Config>(toml).unwrap().check_for_serving().map_err(|e| e.to_string());
        for (toml, name) in [
            ("[gc]\ninterval = \"0s\"", "gc.interval"),
            ("[gc]\nreconcile_interval = \"0ms\"", "gc.reconcile_interval"),
            ("retention_check_interval = \"0s\"", "retention_check_interval"),
            ("[gc]\nupload_max_age = \"0s\"", "gc.upload_max_age"),
            ("max_manifest_bytes = 0", "max_manifest_bytes"),
            ("max_manifest_bytes = 268435457", "max_manifest_bytes"),
        ] {
            assert!(refusal(toml).unwrap_err().starts_with(name), "{toml}");
        }
        // Without background collection, its periods are never used.
        assert!(refusal("[gc]\nenabled = false\ninterval = \"0s\"\nreconcile_interval = \"0s\"").is_ok());
    }

    #[test]
    fn min_free_space_as_a_share_a_size_or_bytes() {
        let parse = |toml: &str| toml::from_str::<Config>(toml).map(|c| c.min_free_space);
        assert_eq!(parse("min_free_space = \"5%\"").unwrap(), MinFreeSpace::Share(500));
        assert_eq!(parse("min_free_space = \"20GiB\"").unwrap(), MinFreeSpace::Bytes(20 << 30));
        assert_eq!(parse("min_free_space = 4096").unwrap(), MinFreeSpace::Bytes(4096));
        let err = parse("min_free_space = \"lots\"").unwrap_err().to_string();
        assert!(err.contains("lots"), "{err}");
        let mut config = Config::default();
        config.apply_env(env(&[("BOSUN_MIN_FREE_SPACE", "0")])).unwrap();
        assert!(config.min_free_space.is_off());
        let err = Config::default().apply_env(env(&[("BOSUN_MIN_FREE_SPACE", "9x")])).unwrap_err();
        assert!(err.to_string().contains("BOSUN_MIN_FREE_SPACE"), "{err}");
    }

    #[test]
    fn gc_section_and_durations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bosun.toml");
        std::fs::write(&path, "[gc]\ngrace_period = \"30s\"\nuntagged = false\n").unwrap();
        let mut config = Config::from_file(Some(&path)).unwrap();
        assert_eq!(config.gc.grace_period, Duration::from_secs(30));
        assert!(!config.gc.untagged);
        config.apply_env(env(&[("BOSUN_GC_GRACE_PERIOD", "0")])).unwrap();
        assert_eq!(config.gc.grace_period, Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        // Too long to compare with millisecond timestamps, or too long to compute at all.
        for raw in ["36501d", "9223372036854776s", "213503982334602d", "18446744073709551615m", "99999999999999999999d"]
        {
            assert_eq!(parse_duration(raw).unwrap(), MAX_DURATION, "{raw}");
        }
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1w").is_err());
        std::fs::write(&path, "[gc]\ngrace_period = \"soon\"\n").unwrap();
        let err = format!("{:#}", Config::from_file(Some(&path)).unwrap_err());
        assert!(err.contains("grace_period") || err.contains("soon"), "{err}");
    }

    #[test]
    fn errors_name_the_culprit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bosun.toml");
        std::fs::write(&path, "delete_enable = false\n").unwrap();
        let err = format!("{:#}", Config::from_file(Some(&path)).unwrap_err());
        assert!(err.contains("delete_enable"), "{err}");
        let err = Config::default().apply_env(env(&[("BOSUN_AUTO_MOUNT", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("BOSUN_AUTO_MOUNT"));
        let err = Config::default().apply_env(env(&[("BOSUN_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("BOSUN_LOG_FORMAT"));
        assert_eq!(toml::from_str::<Config>("log_format = \"json\"").unwrap().log_format, LogFormat::Json);
        assert_eq!(toml::from_str::<Config>("log_format = \"JSON\"").unwrap().log_format, LogFormat::Json);
        assert!(toml::from_str::<Config>("log_format = \"xml\"").is_err());
    }
}
