//! The accept loop: every connection the API holds, with the limits that keep a hostile or
//! broken client from holding the server.
//!
//! - At most `max_connections` at once (a semaphore). Past the cap new connections wait in the
//!   kernel's backlog, not in the server, and one log line says the cap was reached.
//! - A client must send a request's headers within `header_timeout` (hyper's header read
//!   timeout) and its body with no pause longer than that (`RequestBodyTimeoutLayer`), so a
//!   half-sent request cannot hold a connection.
//! - A connection that moves no byte either way for `idle_timeout` is closed ([`IdleIo`]).
//!   Event streams send keep-alives well inside it; a claim's long-poll is shorter.
//! - TLS handshakes must finish within `header_timeout` too.
//!
//! On shutdown the loop stops accepting, asks every connection to finish its request in
//! flight, and returns when all have closed.
//!
//! The loop serves any [`Listener`]: TCP (`baton serve`'s address) or the Unix socket beside
//! the store (see [`crate::local`]). Each request carries its connection's [`Peer`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Where a connection comes from; every request carries it as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A client at this TCP address (the request also carries it as `ConnectInfo`).
    Tcp(SocketAddr),
    /// A process of this machine, through the Unix socket beside the store: the socket file's
    /// mode (0600, its owner only) is the access control.
    Local,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(address) => address.fmt(f),
            Peer::Local => f.write_str("local"),
        }
    }
}

/// What the accept loop takes connections from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection, and where it comes from.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, Peer)> {
        let (stream, remote) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::Tcp(remote)))
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;

    async fn accept(&self) -> io::Result<(UnixStream, Peer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, Peer::Local))
    }
}

/// How many connections, and how slow, the server tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: u32,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: baton_core::config::DEFAULT_MAX_CONNECTIONS,
            header_timeout: baton_core::config::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: baton_core::config::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    pub fn from_spec(spec: &baton_core::config::ServerSpec) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: spec.max_connections,
            header_timeout: spec.header_timeout,
            idle_timeout: spec.idle_timeout,
        }
    }
}

/// Accepts connections on `listener` and serves `app` on each (over TLS with `tls`), within
/// `limits`, until `shutdown` fires and the connections in flight have finished.
pub async fn serve<L: Listener>(
    listener: L,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.header_timeout));
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    // Whether the cap was reported since a connection was last accepted below it: the loop is
    // one task, so a plain flag.
    let mut at_cap_said = false;
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    loop {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                at_cap_said = false;
                permit
            }
            Err(_) => {
                if !at_cap_said {
                    at_cap_said = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "the API holds {} connections, its cap (server.max_connections): new connections wait until one closes",
                        limits.max_connections
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin, and go on.
                    tracing::warn!(%error, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let tls = tls.clone();
        let closing = closing.clone();
        connections.spawn(async move {
            let _permit = permit;
            let io = IdleIo::new(stream, limits.idle_timeout);
            match tls {
                None => serve_connection(io, remote, app, limits, closing).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(io)) => serve_connection(io, remote, app, limits, closing).await,
                    Ok(Err(error)) => tracing::debug!(%error, %remote, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                },
            }
        });
    }
    closing.cancel();
    connections.close();
    connections.wait().await;
}

async fn serve_connection<I>(io: I, remote: Peer, app: Router, limits: ConnectionLimits, closing: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |request: Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(remote);
        if let Peer::Tcp(address) = remote {
            request.extensions_mut().insert(ConnectInfo(address));
        }
        request
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::trace!(%error, %remote, "connection ended");
                }
                return;
            }
            () = closing.cancelled(), if !asked_to_close => {
                asked_to_close = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A stream that fails with `TimedOut` once no byte has moved either way for `timeout` while
/// it is being read: an idle connection is closed; one busy in a handler (nobody reading) is
/// not.
struct IdleIo<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleIo<S> {
    fn new(inner: S, timeout: Duration) -> IdleIo<S> {
        IdleIo { inner, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }

    fn moved(&mut self) {
        if let Some(deadline) = Instant::now().checked_add(self.timeout) {
            self.deadline.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the connection was idle"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            self.moved();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            self.moved();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
