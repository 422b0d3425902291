//! The `bosun` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use bosun::cli::GcAction;
use bosun::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "bosun", version, about = "A container image registry whose storage lifecycle is correct by design")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from (file, then BOSUN_* variables, then these flags).
#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (see README.md for every setting).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (overrides config and BOSUN_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI Distribution API.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on (overrides config and BOSUN_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Collect garbage now, on a running instance (through its admin API) or a stopped one
    /// (on its data directory); prints the report as JSON.
    Gc {
        #[command(flatten)]
        config: ConfigArgs,
        /// Report what would be removed and how many bytes freed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A grace period for this collection's blobs and links only, instead of
        /// gc.grace_period (`0s`, `10m`): for a disk that is full now, frees at once the
        /// blobs of images deleted by digest. Manifests keep their grace, and images whose
        /// tags were deleted wait out the restore window (--dry-run shows what would go). A
        /// push in flight may be told its blobs are unknown and have to be made again.
        #[arg(long, value_parser = parse_duration, conflicts_with_all = ["reconcile", "history", "pause", "resume", "status"])]
        grace_period: Option<std::time::Duration>,
        /// Compare storage with metadata instead (remove bytes metadata does not know).
        #[arg(long, conflicts_with = "history")]
        reconcile: bool,
        /// List recorded collections and reconciles instead.
        #[arg(long, conflicts_with = "dry_run")]
        history: bool,
        /// Pause collection: nothing is removed (runs and retention deletions are refused,
        /// dry runs and plans still report) until --resume. The pause is kept in metadata:
        /// it lasts through restarts, and a stopped instance can be paused before it starts.
        #[arg(long, conflicts_with_all = ["reconcile", "history", "resume", "status", "dry_run"])]
        pause: bool,
        /// Why collection is paused (with --pause): shown to whoever asks, and logged.
        #[arg(long, requires = "pause")]
        reason: Option<String>,
        /// How long the pause lasts (with --pause; `2h`): it ends by itself then, restarts
        /// included. Without it, only --resume ends it.
        #[arg(long = "for", value_parser = parse_pause_length, requires = "pause")]
        pause_for: Option<std::time::Duration>,
        /// Resume a paused collection.
        #[arg(long, conflicts_with_all = ["reconcile", "history", "status", "dry_run"])]
        resume: bool,
        /// Say whether collection is paused (since when, by whom, why) and what runs now.
        #[arg(long, conflicts_with_all = ["reconcile", "history", "dry_run"])]
        status: bool,
        /// Admin API address of the running instance, HOST:PORT (default: the configured
        /// listen address).
        #[arg(long)]
        url: Option<String>,
    },
    /// Retention policies: list, change, explain, plan, apply (on the running instance).
    Retention {
        #[command(flatten)]
        config: ConfigArgs,
        /// Admin API address of the running instance, HOST:PORT (default: the configured
        /// listen address).
        #[arg(long, global = true)]
        url: Option<String>,
        #[command(subcommand)]
        action: RetentionAction,
    },
    /// Restore a deleted tag (`REPO:TAG`) within the restore window.
    Restore {
        #[command(flatten)]
        config: ConfigArgs,
        /// Admin API address of the running instance, HOST:PORT.
        #[arg(long)]
        url: Option<String>,
        reference: String,
    },
    /// The audit of tag deletions, newest first: when, by whom (`api` or `retention`), why,
    /// and whether the tag was restored (on the running instance).
    Audit {
        #[command(flatten)]
        config: ConfigArgs,
        /// Admin API address of the running instance, HOST:PORT (default: the configured
        /// listen address).
        #[arg(long)]
        url: Option<String>,
        /// How many deletions to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the JSON.
        #[arg(long)]
        json: bool,
    },
    /// Storage accounting: referenced, exclusive and shared bytes per repository and tag.
    Du {
        #[command(flatten)]
        config: ConfigArgs,
        /// Admin API address of the running instance, HOST:PORT.
        #[arg(long)]
        url: Option<String>,
        /// Only this repository.
        repository: Option<String>,
        /// How to sort the table.
        #[arg(long, value_enum, default_value_t = bosun::cli::DuSort::Exclusive)]
        sort: bosun::cli::DuSort,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RetentionAction {
    /// List the policies: those in force, and stored ones out of force with why.
    Policies,
    /// Add or replace a policy managed through the API, from a JSON file (same fields as
    /// a `[[retention]]` table).
    Put { file: PathBuf },
    /// Remove a policy managed through the API.
    Remove { name: String },
    /// Which policies match a repository, which one governs it, and every tag's decision.
    Explain { repository: String },
    /// Plan (dry run): every decision, the rule behind it, and the bytes really freed.
    Plan {
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
        policy: Option<String>,
    },
    /// Apply a plan made before, exactly as shown (nothing if the registry changed since).
    Apply { plan: i64 },
    /// Plan and apply now.
    Run {
        #[arg(long)]
        policy: Option<String>,
    },
}

/// How long background work may take to end once the server has stopped serving.
const RUNTIME_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `--grace-period`, `--for`: a duration as the configuration writes one.
fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    bosun::config::parse_duration(raw).map_err(|e| e.to_string())
}

/// `bosun restore REPOSITORY:TAG`, checked here so that the error names the wrong part.
fn restore_target(reference: &str) -> anyhow::Result<(&str, &str)> {
    if reference.contains('@') {
        anyhow::bail!("{reference:?}: restore takes a tag (REPOSITORY:TAG), not a digest");
    }
    let (repo, tag) = reference.rsplit_once(':').with_context(|| format!("{reference:?}: give REPOSITORY:TAG"))?;
    repo.parse::<bosun::oci::RepoName>().map_err(|e| anyhow::anyhow!("{repo:?} is no repository name: {e}"))?;
    tag.parse::<bosun::oci::Tag>().map_err(|e| anyhow::anyhow!("{tag:?} is no tag: {e}"))?;
    Ok((repo, tag))
}

/// `--for`: a pause that ends as it begins would pause nothing.
fn parse_pause_length(raw: &str) -> Result<std::time::Duration, String> {
    match parse_duration(raw)? {
        d if d.is_zero() => Err("a pause must last more than zero (leave --for out for a pause until --resume)".into()),
        d => Ok(d),
    }
}

/// The configuration (file, then environment, then flags), and the `BOSUN_*` variables
/// it does not know, to be told once logging is set up.
fn load(args: ConfigArgs) -> anyhow::Result<(Config, Vec<String>)> {
    let mut cfg = Config::from_file(args.config.as_deref())?;
    let unknown = cfg.apply_env(std::env::vars_os())?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
        cfg.data_dir_named = true;
    }
    if cfg.data_dir.as_os_str().is_empty() {
        anyhow::bail!("data_dir is empty: give the data directory's path");
    }
    Ok((cfg, unknown))
}

/// Tells of `BOSUN_*` variables that set nothing (a typo, or a setting with no variable).
fn warn_unknown(unknown: &[String]) {
    for name in unknown {
        tracing::warn!(variable = %name, "an environment variable that Bosun does not know is ignored (see the README's table)");
    }
}

/// Logs to standard output for the server; to standard error for a command whose answer
/// is its standard output (`bosun gc` on a stopped instance logs what it removes).
fn init_logging(cfg: &Config, to_stderr: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (writer, terminal) = if to_stderr {
        (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal())
    } else {
        (BoxMakeWriter::new(std::io::stdout), std::io::stdout().is_terminal())
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log)
                .map_err(|e| anyhow::anyhow!("log (BOSUN_LOG) {:?}: {e}", cfg.log))?,
        )
        .with_writer(writer);
    match cfg.log_format {
        LogFormat::Text => logs.with_ansi(terminal).init(),
        // The event's fields at the top level, beside the time, level and target (so no
        // event may have a field of one of those names, or `message`: the key would repeat).
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen } => {
            let (mut cfg, unknown) = load(config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            init_logging(&cfg, false)?;
            warn_unknown(&unknown);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let lock = runtime.block_on(bosun::server::serve(cfg))?;
            // Whatever the runtime still runs ends (blocking work to its end, tasks at their
            // next await) before the data directory is released. Work that outlasts
            // RUNTIME_STOP_LIMIT (a reconcile walking a huge or hung store) is left to the
            // process's exit, which releases the directory only as it ends that work, as
            // for a crash: a supervisor's SIGKILL would otherwise come first.
            let stopping = std::time::Instant::now();
            runtime.shutdown_timeout(RUNTIME_STOP_LIMIT);
            if stopping.elapsed() >= RUNTIME_STOP_LIMIT {
                tracing::warn!(limit = ?RUNTIME_STOP_LIMIT, "background work did not end in time: left to the exit, as after a crash (the metadata log holds the last commits)");
                std::mem::forget(lock);
                return Ok(());
            }
            drop(lock);
            tracing::info!("stopped");
            Ok(())
        }
        Command::Gc {
            config,
            dry_run,
            grace_period,
            reconcile,
            history,
            pause,
            reason,
            pause_for,
            resume,
            status,
            url,
        } => {
            let (cfg, unknown) = load(config)?;
            init_logging(&cfg, true)?;
            warn_unknown(&unknown);
            let action = if pause {
                GcAction::Pause { reason: reason.unwrap_or_default(), duration: pause_for }
            } else if resume {
                GcAction::Resume
            } else if status {
                GcAction::Status
            } else if history {
                GcAction::History
            } else if reconcile {
                GcAction::Reconcile { dry_run }
            } else {
                GcAction::Collect { dry_run, grace_period }
            };
            bosun::cli::gc(&cfg, url.as_deref(), action)
        }
        Command::Retention { config, url, action } => {
            // A client: unknown variables are the server's business.
            let (cfg, _) = load(config)?;
            let enc = bosun::cli::encode;
            let (method, path, body) = match action {
                RetentionAction::Policies => ("GET", "/admin/retention/policies".to_owned(), String::new()),
                RetentionAction::Put { file } => {
                    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                    let spec: serde_json::Value =
                        serde_json::from_str(&text).with_context(|| format!("{} is no JSON", file.display()))?;
                    let name =
                        spec["name"].as_str().ok_or_else(|| anyhow::anyhow!("the policy file has no \"name\""))?;
                    ("PUT", format!("/admin/retention/policies/{}", enc(name)), text)
                }
                RetentionAction::Remove { name } => {
                    ("DELETE", format!("/admin/retention/policies/{}", enc(&name)), String::new())
                }
                RetentionAction::Explain { repository } => {
                    ("GET", format!("/admin/retention/explain?repository={}", enc(&repository)), String::new())
                }
                RetentionAction::Plan { repository, policy } => {
                    let mut q = Vec::new();
                    q.extend(repository.map(|r| format!("repository={}", enc(&r))));
                    q.extend(policy.map(|p| format!("policy={}", enc(&p))));
                    ("POST", format!("/admin/retention/plan?{}", q.join("&")), String::new())
                }
                RetentionAction::Apply { plan } => {
                    ("POST", format!("/admin/retention/apply?plan={plan}"), String::new())
                }
                RetentionAction::Run { policy } => (
                    "POST",
                    format!(
                        "/admin/retention/run?{}",
                        policy.map(|p| format!("policy={}", enc(&p))).unwrap_or_default()
                    ),
                    String::new(),
                ),
            };
            bosun::cli::print(&format!("{}\n", bosun::cli::admin(&cfg, url.as_deref(), method, &path, &body)?))
        }
        Command::Restore { config, url, reference } => {
            let (cfg, _) = load(config)?;
            let (repo, tag) = restore_target(&reference)?;
            let path =
                format!("/admin/restore?repository={}&tag={}", bosun::cli::encode(repo), bosun::cli::encode(tag));
            bosun::cli::print(&format!("{}\n", bosun::cli::admin(&cfg, url.as_deref(), "POST", &path, "")?))
        }
        Command::Audit { config, url, limit, json } => {
            let (cfg, _) = load(config)?;
            let answer =
                bosun::cli::admin(&cfg, url.as_deref(), "GET", &format!("/admin/deletions?limit={limit}"), "")?;
            bosun::cli::print(&bosun::cli::audit(&answer, json)?)
        }
        Command::Du { config, url, repository, sort, json } => {
            let (cfg, _) = load(config)?;
            let path = match repository {
                Some(r) => format!("/admin/du?repository={}", bosun::cli::encode(&r)),
                None => "/admin/du".to_owned(),
            };
            bosun::cli::print(&bosun::cli::du(&bosun::cli::admin(&cfg, url.as_deref(), "GET", &path, "")?, sort, json)?)
        }
    }
}

/// Keeps freed buffers in the process instead of giving them back to the kernel at once.
///
/// glibc returns large blocks (from 128 KiB, a threshold it raises when it sees larger ones
/// freed) and the free top of a heap (from twice that) to the kernel as soon as they are
/// freed. A push streams its bytes through megabyte buffers, so every page of every
/// buffer was faulted in and zeroed again: about 150,000 page faults per GiB pushed, and a
/// tenth of the push throughput (BENCHMARKS.md). Blocks now come from the heap up to
/// 4 MiB, above any buffer a request allocates (1 MiB chunks, hyper's read buffer of at
/// most 408 KiB), and a heap gives back its free top only beyond 16 MiB: more than an
/// upload's buffers in flight. glibc makes up to eight heaps per core, and each could keep
/// that much: over a push, pulls, five parallel pushes and a `wrk` run, peak memory was 76
/// MiB (26 MiB before these settings and the pipelined upload writer came in); with one
/// heap per core (one in all on a one-core machine or cgroup) it is 45-47 MiB, at the same
/// speed. Free memory below a heap's top
/// stays with the heap, as it always did, for later allocations.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    let heaps = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: mallopt only sets allocator parameters, and runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_ARENA_MAX, heaps.try_into().unwrap_or(libc::c_int::MAX));
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bosun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
