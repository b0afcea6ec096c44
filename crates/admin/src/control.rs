//! The control channel: a running server listens on a Unix socket in its
//! data directory (`DATA_DIR/palaver.sock`, mode 0600, removed at
//! shutdown) and runs the commands of the table for the command line.
//!
//! Protocol: one request and one response per connection, each a JSON
//! document. The client writes `{"command": NAME, "args": {…}}` and shuts
//! its writing side; the server answers `{"ok": RESULT}` or
//! `{"error": {"code": CODE, "message": TEXT}}` and closes. Only a peer
//! running as the server's own user is served (`SO_PEERCRED`); the socket's
//! mode and the data directory's owner already keep others out.
//!
//! A socket file left by a killed server is detected (nothing answers on
//! it) and replaced; a socket a live server answers on stops a second
//! server from starting on the same data directory.

use crate::command::{CommandError, ErrorCode, Request, Response, execute};
use palaver_server::{Config, Core, RunningServer};
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// File name of the socket in the data directory.
pub const SOCKET_NAME: &str = "palaver.sock";
/// Largest request accepted.
const MAX_REQUEST: u64 = 1 << 20;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests served at once.
const CONCURRENCY: usize = 8;

/// Control-channel failures (binding, or talking to a server).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another server answers on the socket.
    #[error(
        "another palaver server is running with this data directory (it answers on {0}); stop it first"
    )]
    Running(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; move it away")]
    NotSocket(PathBuf),
    /// An I/O failure on the socket.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server's answer is not a response.
    #[error("control socket {path}: unreadable response: {msg}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
}

/// Where the control socket of a configuration is.
pub fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join(SOCKET_NAME)
}

/// Removes the socket file when the listener ends, if it is still ours.
struct Unlink {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.dev() == self.dev
            && m.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A bound control socket, not yet serving.
pub struct ControlSocket {
    listener: UnixListener,
    unlink: Unlink,
    /// The uid that owns the socket: the server's own.
    uid: u32,
}

impl ControlSocket {
    /// Bind `path` (mode 0600), replacing a stale socket file.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(ControlError::NotSocket(path.to_path_buf()));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::Running(path.to_path_buf())),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).map_err(io)?;
                }
                Err(e) => return Err(io(e)),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        let unlink = Unlink {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(ControlSocket {
            listener,
            unlink,
            uid: meta.uid(),
        })
    }

    /// Serve commands on `core` until it shuts down; the socket file is
    /// removed when this ends (or is dropped).
    pub async fn serve(self, core: Arc<Core>) {
        let ControlSocket {
            listener,
            unlink,
            uid,
        } = self;
        let _unlink = unlink;
        let limit = Arc::new(Semaphore::new(CONCURRENCY));
        let mut shutdown = core.shutdown_signal();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let core = core.clone();
            tokio::spawn(async move {
                serve_one(core, stream, uid).await;
                drop(permit);
            });
        }
    }
}

/// Bind the control socket of a started server and serve it as one of the
/// server's tasks (ended, and the file removed, at shutdown).
pub fn start(server: &mut RunningServer) -> Result<PathBuf, ControlError> {
    let path = socket_path(&server.core.config());
    let sock = ControlSocket::bind(&path)?;
    let core = server.core.clone();
    server.spawn(sock.serve(core));
    tracing::info!(path = %path.display(), "control socket listening");
    Ok(path)
}

async fn serve_one(core: Arc<Core>, mut stream: UnixStream, uid: u32) {
    let response = match stream.peer_cred() {
        Ok(c) if c.uid() == uid => match read_request(&mut stream).await {
            Ok(req) => {
                tracing::info!(command = %req.command, "control command");
                Response::from(execute(&core, true, &req).await)
            }
            Err(e) => Response::Error(e),
        },
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                "control socket: refused a peer of another user"
            );
            Response::Error(CommandError::new(
                ErrorCode::Forbidden,
                "only the server's own user may use the control socket",
            ))
        }
        Err(e) => Response::Error(CommandError::new(
            ErrorCode::Forbidden,
            format!("cannot identify the peer: {e}"),
        )),
    };
    let mut out = match serde_json::to_vec(&response) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "control response not serializable");
            return;
        }
    };
    out.push(b'\n');
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, CommandError> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut *stream).take(MAX_REQUEST + 1).read_to_end(&mut buf),
    )
    .await;
    let bad = |m: String| CommandError::new(ErrorCode::BadRequest, m);
    match read {
        Err(_) => return Err(bad("no complete request in time".into())),
        Ok(Err(e)) => return Err(bad(format!("reading the request: {e}"))),
        Ok(Ok(_)) => {}
    }
    if buf.len() as u64 > MAX_REQUEST {
        return Err(bad(format!("request larger than {MAX_REQUEST} bytes")));
    }
    serde_json::from_slice(&buf).map_err(|e| {
        bad(format!(
            "expected {{\"command\": NAME, \"args\": {{…}}}}: {e}"
        ))
    })
}

/// Send `req` to the server listening on `path`. `Ok(None)` when no server
/// listens there (no socket, or a stale one).
pub async fn call(path: &Path, req: &Request) -> Result<Option<Response>, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    let body = serde_json::to_vec(req).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    stream.write_all(&body).await.map_err(io)?;
    stream.shutdown().await.map_err(io)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.map_err(io)?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| ControlError::Protocol {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
}
