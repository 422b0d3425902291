//! Commands that act on a Bosun instance: through its admin API when it is running,
//! directly on its data directory when it is not.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;

/// What `bosun gc` does.
#[derive(Debug, Clone, Copy)]
pub enum GcAction {
    Collect { dry_run: bool },
    Reconcile { dry_run: bool },
    History,
}

impl GcAction {
    fn http(self) -> (&'static str, String) {
        match self {
            GcAction::Collect { dry_run } => ("POST", format!("/admin/gc?dry_run={dry_run}")),
            GcAction::Reconcile { dry_run } => ("POST", format!("/admin/reconcile?dry_run={dry_run}")),
            GcAction::History => ("GET", "/admin/gc/runs".to_owned()),
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

/// A plain HTTP/1.1 request to the admin API; `Ok(None)` when nothing listens there.
fn request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<Option<(u16, String)>> {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
    };
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("reading the admin API's answer")?;
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed status line")?;
    Ok(Some((status, body.to_owned())))
}

/// Runs `bosun gc`: prints the JSON report (or history) on stdout.
pub fn gc(config: &Config, url: Option<SocketAddr>, action: GcAction) -> anyhow::Result<()> {
    let addr = url.unwrap_or_else(|| local_addr(config.listen));
    let (method, path) = action.http();
    if let Some((status, body)) = request(addr, method, &path)? {
        if status != 200 {
            bail!("the admin API at {addr} answered {status}: {body}");
        }
        println!("{body}");
        return Ok(());
    }
    // Nothing listens: work on the data directory directly (refused if a server holds it).
    let opened = crate::server::open(config)
        .with_context(|| format!("no Bosun answered at {addr}, and its data directory could not be opened"))?;
    let collector = opened.state.collector.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let out = runtime.block_on(async move {
        Ok::<_, anyhow::Error>(match action {
            GcAction::Collect { dry_run } => serde_json::to_string_pretty(&collector.collect("cli", dry_run).await?)?,
            GcAction::Reconcile { dry_run } => {
                serde_json::to_string_pretty(&collector.reconcile("cli", dry_run).await?)?
            }
            GcAction::History => serde_json::to_string_pretty(&collector.history(50).await?)?,
        })
    })?;
    println!("{out}");
    Ok(())
}
