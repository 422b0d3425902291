//! Assembling the registry from its configuration and serving it until a signal.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::metadata::Metadata;
use crate::registry::Registry;
use crate::storage::FilesystemStore;

/// Opens the data directory: the blob store and the metadata database beside it.
pub fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    let store = FilesystemStore::open(dir).with_context(|| format!("opening blob storage in {}", dir.display()))?;
    let meta = Metadata::open(&dir.join("metadata.sqlite")).context("opening the metadata database")?;
    Ok(Registry::new(meta, Arc::new(store), config.registry_options()))
}

/// Serves the API until SIGINT or SIGTERM, then finishes the requests in flight.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let registry = Arc::new(open_registry(&config)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "bosun is serving");
    axum::serve(listener, crate::api::router(registry))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}
