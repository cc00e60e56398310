//! The local API: the whole router on a Unix socket beside the store (`api.sock` in the store
//! file's directory), so that the CLI on this machine reaches the process executing a run —
//! `baton run` as well as `baton serve` — without an address or a token.
//!
//! The socket file's mode is the access control: it is made 0600 (its owner only) before it
//! has a name anyone can connect to — bound inside a fresh 0700 directory, its mode set, then
//! linked into place — and a request through it without a token is the `local` admin (see
//! [`crate::auth`]). A file left by a process that died (`kill -9`) is replaced when nothing
//! answers on it; a socket something answers on is never taken over. The [`LocalSocket`] is
//! the accept loop's listener; when it is dropped it closes, and the file goes with it unless
//! another process's socket, one that answers, has replaced it by then.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// The socket's name in the store's directory.
pub const SOCKET_NAME: &str = "api.sock";

/// Where the local API of the run whose store file is `store_file` is: beside it.
pub fn socket_path(store_file: &Path) -> PathBuf {
    store_file.parent().unwrap_or(Path::new(".")).join(SOCKET_NAME)
}

/// The bound socket, a [`Listener`](crate::Listener) for the accept loop; closed and its file
/// removed when this is dropped.
#[derive(Debug)]
pub struct LocalSocket {
    /// `None` only while it is dropped.
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
    /// The socket's inode when it was bound.
    inode: u64,
}

impl LocalSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl crate::Listener for LocalSocket {
    type Io = tokio::net::UnixStream;

    async fn accept(&self) -> std::io::Result<(tokio::net::UnixStream, crate::Peer)> {
        match &self.listener {
            Some(listener) => crate::Listener::accept(listener).await,
            None => Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "the socket is closed")),
        }
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        // Closed first: then whatever answers at the path is another process's socket, which
        // replaced this one (an inode can be reused, so its number alone does not tell).
        drop(self.listener.take());
        let same_inode = std::fs::symlink_metadata(&self.path).is_ok_and(|metadata| metadata.ino() == self.inode);
        if same_inode && std::os::unix::net::UnixStream::connect(&self.path).is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the local socket at `path`, mode 0600, replacing a stale file (nothing answers on
/// it); refuses with [`Error::SocketInUse`] when something answers there. Call it from within
/// a tokio runtime.
pub fn bind(path: &Path) -> Result<LocalSocket, Error> {
    let failed = |source: std::io::Error| Error::Socket { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_socket() => {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it",
            )));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(Error::SocketInUse { path: path.to_path_buf() }),
            // Left by a process that is gone: nobody listens.
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::debug!(path = %path.display(), "replacing a stale API socket");
                match std::fs::remove_file(path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(failed(error)),
                    _ => {}
                }
            }
            Err(error) => return Err(failed(error)),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    // Short, so that the temporary path fits a socket address wherever the final one does.
    let private = dir.join(format!(".api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(failed)?;
    let bound = bind_privately(&private.join("s"), path);
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound?;
    let inode = std::fs::symlink_metadata(path).map_err(failed)?.ino();
    listener.set_nonblocking(true).map_err(failed)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(failed)?;
    Ok(LocalSocket { listener: Some(listener), path: path.to_path_buf(), inode })
}

/// Binds at `temporary` (in a directory only this user can enter), makes the file 0600, and
/// gives it the name `path` — a link, which fails rather than replace a file that appeared there
/// in the meantime.
fn bind_privately(temporary: &Path, path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    let failed = |source: std::io::Error| Error::Socket { path: path.to_path_buf(), source };
    let listener = std::os::unix::net::UnixListener::bind(temporary).map_err(failed)?;
    std::fs::set_permissions(temporary, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    match std::fs::hard_link(temporary, path) {
        Ok(()) => Ok(listener),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Error::SocketInUse { path: path.to_path_buf() })
        }
        Err(error) => Err(failed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Listener as _;

    #[tokio::test]
    async fn the_socket_is_private_answers_and_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(&dir.path().join("baton.db"));
        let socket = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let connected = tokio::net::UnixStream::connect(&path).await;
        assert!(connected.is_ok(), "{connected:?}");
        let (_, peer) = socket.accept().await.unwrap();
        assert_eq!(peer, crate::Peer::Local);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
        // Never taken over while it answers.
        assert!(matches!(bind(&path), Err(Error::SocketInUse { .. })));
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        // A socket whose process is gone: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = bind(&path).unwrap();
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
        drop(socket);

        std::fs::write(&path, "not a socket").unwrap();
        let refused = bind(&path).unwrap_err().to_string();
        assert!(refused.contains("not a socket"), "{refused}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn a_replaced_socket_is_not_removed_by_its_predecessor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let first = bind(&path).unwrap();
        // Someone removed the file and another process bound its own there.
        std::fs::remove_file(&path).unwrap();
        let _second = bind(&path).unwrap();
        drop(first);
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok(), "the second socket stays");
    }
}
