//! The `bosun` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bosun::config::Config;

#[derive(Parser)]
#[command(name = "bosun", version, about = "A container image registry whose storage lifecycle is correct by design")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI Distribution API.
    Serve {
        /// TOML configuration file (see README.md for every setting).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides config and BOSUN_LISTEN).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory (overrides config and BOSUN_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn load(config: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut cfg = Config::from_file(config.as_deref())?;
    cfg.apply_env(|k| std::env::var(k).ok())?;
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen, data_dir } => {
            let mut cfg = load(config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            tracing_subscriber::fmt()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cfg.log)?)
                .init();
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bosun::server::serve(cfg))
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
