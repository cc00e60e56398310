//! The attach server: a Unix socket on which each `baton attach` connection gets the screen,
//! then the output as it comes, and has what it sends typed into the terminal.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ACCEPT_BACKOFF;
use super::session::{Command, Session};

/// The attach server: a Unix socket on which each connection gets the screen, then the output
/// as it comes, and has what it sends typed into the terminal.
pub(super) struct Server {
    pub(super) cancel: CancellationToken,
    pub(super) task: tokio::task::JoinHandle<()>,
}

pub(super) type Current = Arc<Mutex<Option<Arc<Session>>>>;

pub(super) async fn serve(listener: UnixListener, current: Current, cancel: CancellationToken) {
    let clients = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::warn!(%error, "cannot accept an attach connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let session = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                clients.spawn(serve_client(stream, session, cancel.clone()));
            }
            () = cancel.cancelled() => break,
        }
    }
    clients.close();
    clients.wait().await;
}

pub(super) async fn serve_client(stream: UnixStream, session: Option<Arc<Session>>, cancel: CancellationToken) {
    let (mut from_client, mut to_client) = stream.into_split();
    let Some(session) = session.filter(|session| !session.exited.is_cancelled()) else {
        let _ = to_client.write_all(b"\r\n[baton] the program is not running; it restarts soon\r\n").await;
        return;
    };
    let (screen, output) = session.attach().await;
    if to_client.write_all(&screen).await.is_err() {
        return;
    }
    let Some(mut output) = output else { return };
    let mut buffer = vec![0u8; 4096];
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Ok(bytes) => {
                    if to_client.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // A client too slow to keep up misses some output, not the program's time.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            read = from_client.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => session.send(Command::Type(buffer[..n].to_vec())),
            },
            () = cancel.cancelled() => break,
        }
    }
}
