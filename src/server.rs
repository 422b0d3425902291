//! Assembling the registry from its configuration and serving it until a signal.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::api::{AppState, connections};
use crate::config::Config;
use crate::failpoints::Failpoints;
use crate::gc::Collector;
use crate::metadata::{Metadata, SchemaChange};
use crate::metrics::Metrics;
use crate::policy::Retention;
use crate::registry::Registry;
use crate::storage::FilesystemStore;

/// An opened data directory: the registry over it, its collector, and the lock that
/// keeps a second process from writing to it at the same time.
pub struct Opened {
    pub state: Arc<AppState>,
    lock: DataDirLock,
}

/// The data directory is this process's while this is held (an advisory lock on
/// `bosun.lock`).
pub struct DataDirLock {
    _file: File,
}

/// The metadata database's file in the data directory.
pub const METADATA_FILE: &str = "metadata.sqlite";

/// Opens the data directory (blob store and metadata database) for exclusive use, with
/// every retention policy installed: a collection decides what untagged manifests to keep
/// by them, whether it runs in a server or from `bosun gc` on a stopped instance.
pub async fn open(config: &Config, change: SchemaChange) -> anyhow::Result<Opened> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    let lock_path = dir.join("bosun.lock");
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!("another Bosun process is using {}", dir.display()),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e)
                .with_context(|| format!("locking {} (does its file system support locks?)", lock_path.display()));
        }
    }
    // The database first: refused (a command on a stopped instance, given a file that is
    // no Bosun database), nothing else is made.
    let meta = Metadata::open_with(&dir.join(METADATA_FILE), config.sync_writes, change)
        .context("opening the metadata database")?;
    let store = FilesystemStore::open(dir, config.sync_writes)
        .with_context(|| format!("opening blob storage in {}", dir.display()))?;
    // The database and its log may have just been created (a first start, or a log removed
    // by hand): their names must be durable before any commit is acknowledged, which
    // SQLite's own flushes of the log data do not make them.
    if config.sync_writes {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("flushing data directory {}", dir.display()))?;
    }
    let registry = Arc::new(Registry::new(
        meta,
        Arc::new(store),
        config.registry_options(),
        Arc::new(Failpoints::new(config.test_failpoints)),
        Arc::new(Metrics::default()),
    ));
    let collector = Arc::new(Collector::new(registry.clone(), config.gc_options()));
    let retention = Arc::new(Retention::new(collector.clone()));
    let state = Arc::new(AppState {
        registry,
        collector,
        retention,
        config: config.clone(),
        policy_changes: tokio::sync::Mutex::default(),
        requests: Default::default(),
    });
    load_policies(&state).await?;
    // The quota groups this run's policies make, counted from the links once.
    let policies = state.registry.policies();
    state
        .registry
        .meta
        .write(move |c| {
            let groups = crate::registry::quota::groups(c, &policies)?;
            crate::metadata::quota::rebuild(c, !policies.quotas.is_empty(), &groups).map(|_| ())
        })
        .await
        .context("counting the quota groups")?;
    Ok(Opened { state, lock: DataDirLock { _file: lock } })
}

/// Loads the retention policies managed through the admin API and installs every policy;
/// an invalid one of the configuration file stops the start with a message naming it. A
/// stored one that is invalid, or that a policy of the file shadows, is not in force, which
/// is logged as an error.
async fn load_policies(state: &AppState) -> anyhow::Result<()> {
    let stored = state.registry.meta.read(|c| crate::metadata::retention::api_policies(c)).await?;
    let policies = state.config.policies(&stored).context("invalid policies")?;
    for p in &policies.inactive {
        tracing::error!(
            policy = %p.name,
            why = %p.why,
            "a retention policy stored through the admin API is not in force; remove it (bosun retention remove NAME) \
             or put it right"
        );
    }
    state.registry.set_policies(policies);
    Ok(())
}

/// Serves the API until SIGINT, SIGTERM or SIGHUP, then finishes the requests in flight (for
/// `http.drain_timeout` at most) and records the last pulls. Garbage collection, reconcile
/// and retention run in the background on their intervals, and start no new run once the
/// signal has come. Returns the data directory's lock, for the caller to release only once
/// the runtime has stopped: work the runtime still runs (a collection's unlinks, the last
/// write of an upload cut off) must end before another process may take the directory.
pub async fn serve(config: Config) -> anyhow::Result<DataDirLock> {
    config.check_for_serving()?;
    // The addresses first: a start that cannot serve must fail before it upgrades the
    // data directory or starts any background work (which could outlive the lock
    // released by that failure). Connections wait in the backlog until serving starts.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (listen)", config.listen))?;
    let monitor_listener = match config.http.monitor_listen {
        Some(addr) => {
            let monitor = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (http.monitor_listen)"))?;
            Some((monitor.local_addr()?, monitor))
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    let opened = open(&config, SchemaChange::Allowed).await?;
    if config.gc.grace_period.is_zero() {
        tracing::warn!(
            "gc.grace_period is 0: a collection may remove a blob between its upload and the manifest that references it (for tests only)"
        );
    }
    // A pause outlives restarts, so an operator who forgot it should hear of it.
    match opened.state.collector.paused().await {
        Ok(Some(pause)) => {
            tracing::warn!(%pause, "garbage collection is paused: nothing is removed until bosun gc --resume")
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "reading whether garbage collection is paused failed"),
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let state = opened.state.clone();
    every("recording pull times", Duration::from_secs(5), &stopping, move || {
        let s = state.clone();
        async move {
            if let Err(e) = s.registry.pulls.flush(&s.registry.meta).await {
                tracing::error!(error = %e, "recording pull times failed");
            }
        }
    });
    // glibc keeps what a burst of requests freed (the read-ahead buffers of hundreds of
    // stalled downloads, say) in its arenas: the resident size stayed at the burst's peak
    // (295 MB after 200 stalled downloads of a 1 GiB blob, 1.4 GB after 800), which reads as
    // a leak. Trimming hands the free pages back; every 10 s it costs a few milliseconds.
    #[cfg(target_env = "gnu")]
    every("returning freed memory", Duration::from_secs(10), &stopping, || async {
        // SAFETY: malloc_trim takes no pointers; it only releases free heap memory.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    });
    let state = opened.state.clone();
    every("scheduled retention", config.retention_check_interval, &stopping, move || {
        let s = state.clone();
        async move { s.retention.run_due().await }
    });
    if config.gc.enabled {
        let collector = opened.state.collector.clone();
        every("scheduled collection", config.gc.interval, &stopping, move || {
            let c = collector.clone();
            async move {
                let _ = c.collect("schedule", false, None).await;
            }
        });
        let collector = opened.state.collector.clone();
        every("scheduled reconcile", config.gc.reconcile_interval, &stopping, move || {
            let c = collector.clone();
            async move {
                let _ = c.reconcile("schedule", false).await;
            }
        });
    }
    let max_connections =
        connections::connection_cap(config.http.max_connections, connections::raise_open_files_limit());
    let monitoring = match monitor_listener {
        Some((monitor_addr, monitor)) => {
            tracing::info!(addr = %monitor_addr, "serving /healthz and /metrics");
            Some(serve_monitoring(monitor, &opened.state, &config, &stopping))
        }
        None => None,
    };
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        max_connections,
        "bosun is serving"
    );

    let router = crate::api::router(opened.state.clone());
    let signalled = async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    };
    let metrics = opened.state.registry.metrics.clone();
    connections::serve("api", listener, router, &config.http, max_connections, metrics, signalled).await;
    if let Some(monitoring) = monitoring {
        let _ = monitoring.await;
    }
    // The pulls noted since the last periodic write: a restart should not lose them (a
    // crash loses at most those seconds; see `registry/pulls.rs`). Bounded, so that the
    // exit comes soon after the drain even behind a long write.
    let registry = &opened.state.registry;
    match tokio::time::timeout(LAST_PULLS_WAIT, registry.pulls.flush(&registry.meta)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "recording the last pull times failed"),
        Err(_) => {
            tracing::error!(after = ?LAST_PULLS_WAIT, "recording the last pull times took too long; they may be lost")
        }
    }
    tracing::info!("stopped serving");
    Ok(opened.lock)
}

/// Connections the monitoring address serves at once: probes and scrapes, a few at a time.
const MONITOR_CONNECTIONS: usize = 16;

/// The longest a connection to the monitoring address may idle or stall: probes and
/// scrapes are quick, and a client holding its few slots would fail the probes.
const MONITOR_PATIENCE: Duration = Duration::from_secs(10);

/// Serves `/healthz` and `/metrics` on `listener` (`http.monitor_listen`) until `stopping`.
fn serve_monitoring(
    listener: tokio::net::TcpListener,
    state: &Arc<crate::api::AppState>,
    config: &Config,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let patience = |limit: Duration| if limit.is_zero() { MONITOR_PATIENCE } else { limit.min(MONITOR_PATIENCE) };
    let limits = crate::config::HttpConfig {
        header_timeout: patience(config.http.header_timeout),
        stall_timeout: patience(config.http.stall_timeout),
        ..config.http.clone()
    };
    let (router, mut stopping) = (crate::api::monitor_router(state.clone()), stopping.clone());
    // Metrics of its own, not exported: the connection gauges describe the API's address.
    let gauges = Arc::new(Metrics::default());
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        connections::serve("monitoring", listener, router, &limits, MONITOR_CONNECTIONS, gauges, stop).await;
    })
}

/// How long the exit waits to record the last pulls.
const LAST_PULLS_WAIT: Duration = Duration::from_secs(5);

/// Runs `task` every `period` (first after one period) until `stopping` turns true; a run
/// in progress then goes on. Failures are logged by the task; a run that panics is logged
/// here, and the schedule goes on (a panic would otherwise end it for good, unseen).
fn every<F, Fut>(name: &'static str, period: Duration, stopping: &tokio::sync::watch::Receiver<bool>, task: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut stopping = stopping.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            if let Err(e) = tokio::spawn(task()).await {
                tracing::error!(task = name, error = %e, "a background task failed; it runs again at its next period");
            }
        }
    });
}

/// Waits for SIGINT, SIGTERM or SIGHUP. From then on, a second one stops the process at once, in
/// the drain or while background work ends: an operator who presses Ctrl-C again means it,
/// and a stop cut short is a crash, which Bosun is built to survive. (Tokio's handlers stay
/// installed for the life of the process, and would swallow it.)
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // SIGHUP (the terminal closed, or an operator who expects a reload, which Bosun has
    // not) stops as SIGTERM does: its default action ended the process at once, as a crash.
    let mut term = signal(SignalKind::terminate()).ok();
    // Left alone when the process was told to ignore it (`nohup`).
    let mut hangup = if hangup_ignored() { None } else { signal(SignalKind::hangup()).ok() };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = received(term.as_mut()) => {}
        _ = received(hangup.as_mut()) => {}
    }
    // SAFETY: sets the action of three signals; no handler of ours is involved. A second
    // SIGHUP (a closed terminal may send two) is ignored rather than fatal.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    tracing::info!("shutting down (a second SIGINT or SIGTERM stops at once)");
}

/// Whether SIGHUP was set to be ignored when the process started (`nohup`).
fn hangup_ignored() -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: with a null new action, sigaction only writes the current one into `old`,
    // which is read only if the call succeeded.
    unsafe {
        libc::sigaction(libc::SIGHUP, std::ptr::null(), old.as_mut_ptr()) == 0
            && old.assume_init().sa_sigaction == libc::SIG_IGN
    }
}

/// Waits for `signal`, or for ever if its handler could not be installed.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_scheduled_run_that_panics_does_not_end_its_schedule() {
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        every("test", Duration::from_millis(5), &stopping, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move { assert!(n > 0, "the first run fails") }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the schedule ended with its first run");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
