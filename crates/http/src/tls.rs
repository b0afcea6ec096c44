//! HTTPS: an `http` listener with `tls: true` serves TLS from the first
//! byte, with the certificate chosen by SNI exactly like c2s (the same
//! `certfiles`, and the self-signed certificates generated under
//! `data_dir/certs` for hosts no file covers). ALPN offers `http/1.1`.
//!
//! Each connection is a task: TLS handshake (bounded by a timeout, so a
//! silent client cannot hold a slot), then HTTP/1.1 with upgrades (WebSocket
//! over `wss://`). Handlers see the peer address as `ConnectInfo<SocketAddr>`,
//! as on plain listeners.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use palaver_server::Core;
use palaver_server::config::Listener;
use palaver_server::tls::CertStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// Set on every request that came over TLS: the connection's channel
/// bindings, so a WebSocket session over `wss://` counts as encrypted.
#[derive(Clone)]
pub(crate) struct TlsSession(pub(crate) palaver_proto::sasl::ChannelBindings);

/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `app` over TLS on `sock` until the server shuts down.
pub(crate) async fn serve(core: Arc<Core>, cfg: Listener, app: Router, sock: TcpListener) {
    let config = core.config();
    // The server's certificates (reloaded on SIGHUP with c2s's).
    let certs = match core.certs() {
        Some(c) => c.clone(),
        None => match CertStore::load(&config.certfiles, &config.hosts, &config.data_dir) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "HTTPS listener not served: no certificate");
                return;
            }
        },
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config(&[b"http/1.1"]));
    let limit = Arc::new(Semaphore::new(
        cfg.max_connections.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let mut shutdown = core.shutdown_signal();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = tokio::select! {
            a = sock.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let certs = certs.clone();
        let mut stop = core.shutdown_signal();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let session = TlsSession(certs.channel_bindings(tls.get_ref().1));
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(session.clone());
                app.clone().call(req)
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let conn = builder
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "HTTPS connection ended");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}
