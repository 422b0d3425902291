//! Accepting and serving HTTP/1 connections, and closing those whose client stops.
//!
//! A client that opens a connection and then sends or reads nothing must not hold the
//! server's resources for ever: an open file, a buffer, a connection slot, a file
//! descriptor. Three limits, each where the stall can be seen for what it is:
//! - **headers**: hyper's header timeout, counted from the connection's opening or the end
//!   of the previous response, so it also closes idle keep-alive connections;
//! - **request bodies**: a body that yields nothing for the stall limit ends with an
//!   error, which the handler treats as any broken body (an upload chunk is rolled back and
//!   the session stays, so the client can resume);
//! - **responses**: a write that waits the stall limit for the client to read fails the
//!   connection.
//!
//! Not a read timeout on the socket: hyper reads it while a handler works, to notice a
//! client that hangs up, so a long commit would look like a stalled client.
//!
//! And a cap on connections served at once (`http.max_connections`). Past it the server
//! stops accepting, so new clients wait in the kernel's listen queue until a connection
//! closes: a flood of connections then delays clients, where accepting them all would run
//! the process out of file descriptors, and fail the uploads and database reads already
//! under way. An idle keep-alive connection holds its slot until the header limit closes
//! it, and the listen queue is bounded (past it the kernel drops connection attempts,
//! which clients retry); `/healthz` and `/metrics` queue like any request, unless they
//! are served on an address of their own (`http.monitor_listen`, the same loop with its
//! own small cap).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::HttpConfig;
use crate::metrics::Metrics;

/// A 204 or 304 says no length (RFC 9110 §8.6, §15.4.5): axum writes one on every answer,
/// and hyper removes it from a 204 to a GET but not to a HEAD.
fn without_length_when_bodiless(mut response: axum::response::Response) -> axum::response::Response {
    if matches!(response.status(), axum::http::StatusCode::NO_CONTENT | axum::http::StatusCode::NOT_MODIFIED) {
        response.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    }
    response
}

/// An answer given before its request's body was read whole (a refusal from the headers
/// alone) ends the connection: hyper cannot find where the next request starts. hyper
/// closes it, but says so only when it noticed in time, so the answer says it here
/// (RFC 9112 §9.6), or a keep-alive client would send its next request, often the next
/// step of a push, into a closed connection.
fn closing_unless_read_whole(
    mut response: axum::response::Response,
    read_whole: &AtomicBool,
) -> axum::response::Response {
    if !read_whole.load(Ordering::Acquire) {
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records, in `ended`, that it was read to its end.
struct EndSeen<B> {
    inner: B,
    ended: Arc<AtomicBool>,
}

impl<B: Body + Unpin> Body for EndSeen<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` (called `name` in the log), at most `max_connections`
/// connections at once, until `shutdown` completes, then stops accepting and waits for the
/// connections to finish their requests, for `limits.drain_timeout` at most. Returns with
/// those still running left to the caller, whose exit cuts them off.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: &HttpConfig,
    max_connections: usize,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(nonzero(limits.header_timeout));
    let stall_limit = nonzero(limits.stall_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    metrics.http_connection_limit.store(max_connections as u64, Ordering::Relaxed);
    let mut last_warned: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                Metrics::add(&metrics.http_connection_cap_reached, 1);
                if last_warned.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
                    last_warned = Some(Instant::now());
                    tracing::warn!(
                        listener = name,
                        max_connections,
                        "every connection slot is in use; no connection is accepted until one closes"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // never closed
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tokio::select! {
                        () = pause_after_accept_error(e) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle delay: a streamed response is written in several pieces, and waiting
        // for the client's (delayed) ACK between them costs 40 ms per small blob.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let local = tcp.local_addr().ok().map(LocalAddr);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let read_whole = Arc::new(AtomicBool::new(request.body().is_end_stream()));
            let mut request = request.map(|body| {
                axum::body::Body::new(EndSeen {
                    inner: StallLimited::new(body, stall_limit),
                    ended: read_whole.clone(),
                })
            });
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(local) = local {
                request.extensions_mut().insert(local);
            }
            let answer = router.clone().call(request);
            async move { answer.await.map(without_length_when_bodiless).map(|r| closing_unless_read_whole(r, &read_whole)) }
        });
        let connection = http.serve_connection(TokioIo::new(StallLimited::new(tcp, stall_limit)), service);
        let connection = graceful.watch(connection);
        let slot = Slot::taken(permit, metrics.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let in_flight = graceful.count();
    tracing::info!(
        listener = name,
        connections = in_flight,
        "no longer accepting connections; waiting for requests in flight"
    );
    let drained = graceful.shutdown();
    match nonzero(limits.drain_timeout) {
        Some(limit) => {
            if tokio::time::timeout(limit, drained).await.is_err() {
                tracing::warn!(listener = name, after = ?limit, "requests still in flight at shutdown are cut off");
            }
        }
        None => drained.await,
    }
}

fn nonzero(limit: Duration) -> Option<Duration> {
    (!limit.is_zero()).then_some(limit)
}

/// The address a connection was accepted on (the server's end), beside the client's
/// (`ConnectInfo`): a client whose address is this one runs on the server's own host.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub std::net::SocketAddr);

/// How often, at most, the log says that every connection slot is taken.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// File descriptors a connection can hold: its socket, the blob or upload file its request
/// reads or writes, and, when every idle database reader is taken, a reader of its own
/// (the database, its log and its index).
const FILES_PER_CONNECTION: u64 = 5;

/// File descriptors kept for everything but connections: the writer's and the idle
/// readers' database connections (three files each), the listeners, the log, reconcile's
/// directory walk, a retention plan's database copy, and the monitoring address's
/// connections (`http.monitor_listen`, 16 at most).
const RESERVED_FILES: u64 = 256;

/// The connection cap: `configured` if set, else what the open-file limit allows (at least
/// 16, so that a tiny limit still serves). A configured cap above that is kept, with a
/// warning: overcommitting is the operator's call.
pub fn connection_cap(configured: usize, open_files: Option<u64>) -> usize {
    let allowed = open_files.map(|n| (n.saturating_sub(RESERVED_FILES) / FILES_PER_CONNECTION).max(16));
    match (configured, allowed) {
        (0, Some(allowed)) => usize::try_from(allowed).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS),
        (0, None) => DEFAULT_WITHOUT_LIMIT,
        (configured, allowed) => {
            if let Some(allowed) = allowed.filter(|&a| configured as u64 > a) {
                tracing::warn!(
                    configured,
                    allowed,
                    "http.max_connections is more than the open-file limit allows; connections past it may fail uploads and reads under way"
                );
            }
            configured.min(Semaphore::MAX_PERMITS)
        }
    }
}

/// The cap when the open-file limit cannot be read (or is unlimited).
const DEFAULT_WITHOUT_LIMIT: usize = 65_536;

/// Raises this process's open-file limit to its hard maximum, as Go's runtime does for the
/// reference registry: the default soft limit (1,024 on most systems) is far below what a
/// registry serving many clients needs, and the hard limit is what the operator allowed.
/// Returns the soft limit now in effect, `None` if it cannot be read or is unlimited.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            } else {
                tracing::warn!(
                    soft = limit.rlim_cur,
                    hard = limit.rlim_max,
                    error = %io::Error::last_os_error(),
                    "could not raise the open-file limit"
                );
            }
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// A connection's place under the cap, and its count in the open-connections gauge, both
/// given back when the connection's task ends however it ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn taken(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Slot {
        metrics.http_connections.fetch_add(1, Ordering::Relaxed);
        Slot { _permit: permit, metrics }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.http_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits after a failed `accept`. Out of file descriptors (or memory), accepting again at
/// once would fail again at once and spin a core; a connection that failed on its own
/// (reset before it was accepted) is no reason to wait.
async fn pause_after_accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A body or a connection whose waits for the client are limited: once one has lasted
/// the limit, the next poll fails. Progress in between restarts the count.
struct StallLimited<T> {
    inner: T,
    limit: Option<Duration>,
    /// When the current wait started; `None` while the inner side makes progress.
    waiting_since: Option<Instant>,
    /// Fires no later than the current wait's deadline. It is moved on only when it fires
    /// early (a wait that started after it was set), so that progress, once per body frame
    /// or socket write, touches no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> StallLimited<T> {
    fn new(inner: T, limit: Option<Duration>) -> StallLimited<T> {
        StallLimited { inner, limit, waiting_since: None, timer: None }
    }

    /// Passes on what the inner side answered; a wait that has lasted the limit becomes an
    /// error saying what the client did not do.
    fn check<R>(&mut self, polled: Poll<R>, cx: &mut Context<'_>, what: &str) -> Poll<Result<R, io::Error>> {
        let Some(limit) = self.limit else { return polled.map(Ok) };
        if let Poll::Ready(r) = polled {
            self.waiting_since = None;
            return Poll::Ready(Ok(r));
        }
        let deadline = *self.waiting_since.get_or_insert_with(Instant::now) + limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // A timer set for an earlier wait fires early: move it to this wait's deadline.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                self.waiting_since = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client {what} nothing for {} s", limit.as_secs_f64()),
                )));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// A body's error as `io::Error`: `ConnectionAborted` when the client hung up before the
/// body's end (which `registry::Error::body` tells from a client's mistake).
fn body_error(e: hyper::Error) -> io::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut hung_up = e.is_incomplete_message();
    while let Some(c) = cause {
        hung_up |= c.downcast_ref::<io::Error>().is_some_and(|c| {
            matches!(
                c.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            )
        });
        cause = c.source();
    }
    io::Error::new(if hung_up { io::ErrorKind::ConnectionAborted } else { io::ErrorKind::Other }, e)
}

impl Body for StallLimited<Incoming> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match ready!(self.check(polled, cx, "sent")) {
            Ok(frame) => Poll::Ready(frame.map(|f| f.map_err(body_error))),
            Err(stalled) => Poll::Ready(Some(Err(stalled))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimited<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimited<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(polled, cx, "read").map(Result::flatten)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(polled, cx, "read").map(Result::flatten)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(polled, cx, "read").map(Result::flatten)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(polled, cx, "read").map(Result::flatten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_five_files_per_connection_after_the_reserve() {
        assert_eq!(connection_cap(0, Some(1024)), 153);
        assert_eq!(connection_cap(0, Some(1_048_576)), 209_664);
        // A tiny limit still serves a few; an unreadable or unlimited one gets a default.
        assert_eq!(connection_cap(0, Some(100)), 16);
        assert_eq!(connection_cap(0, None), DEFAULT_WITHOUT_LIMIT);
        // A configured cap is kept, above the limit too.
        assert_eq!(connection_cap(10, Some(1024)), 10);
        assert_eq!(connection_cap(5000, Some(1024)), 5000);
        assert_eq!(connection_cap(usize::MAX, None), Semaphore::MAX_PERMITS);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_its_maximum() {
        let soft = raise_open_files_limit();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in raise_open_files_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(soft, (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur));
    }
}
