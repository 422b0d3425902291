//! The `bosun` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use bosun::cli::GcAction;
use bosun::config::Config;

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
        /// Compare storage with metadata instead (remove bytes metadata does not know).
        #[arg(long, conflicts_with = "history")]
        reconcile: bool,
        /// List recorded collections and reconciles instead.
        #[arg(long)]
        history: bool,
        /// Admin API address of the running instance (default: the configured listen address).
        #[arg(long)]
        url: Option<SocketAddr>,
    },
}

fn load(args: ConfigArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::from_file(args.config.as_deref())?;
    cfg.apply_env(|k| std::env::var(k).ok())?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    Ok(cfg)
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cfg.log)?)
        .init();
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen } => {
            let mut cfg = load(config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            init_logging(&cfg)?;
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bosun::server::serve(cfg))
        }
        Command::Gc { config, dry_run, reconcile, history, url } => {
            let cfg = load(config)?;
            let action = match (reconcile, history) {
                (_, true) => GcAction::History,
                (true, _) => GcAction::Reconcile { dry_run },
                _ => GcAction::Collect { dry_run },
            };
            bosun::cli::gc(&cfg, url, action)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bosun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
