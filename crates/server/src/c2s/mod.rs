//! Client-to-server connections (RFC 6120): stream negotiation, STARTTLS,
//! SASL, resource binding, and the established session's stanza flow.
//!
//! [`C2sSession`] (`session.rs`, with one file per concern beside it) is the
//! state machine; [`run`] (`connection.rs`) is the one connection loop that
//! drives it over a [`Transport`]: TCP/TLS here (`tcp.rs`), WebSocket and
//! BOSH in `palaver-http`. The session writes [`Output`] frames
//! (`output.rs`), which each transport serializes its own way.

mod bind;
mod bind2;
mod connection;
mod csi;
mod delivery;
mod negotiation;
mod output;
mod presence;
mod sasl;
mod sasl2;
mod session;
mod stream_mgmt;
mod tcp;

pub use connection::{Input, Transport, run};
pub use output::{Framing, OutFrame, Output, StreamOpen};
pub use session::{C2sSession, Next};
pub use stream_mgmt::{NS as SM_NS, ResumeRequest, StreamMgmtConfig};

use crate::config::Listener;
use crate::core::Core;
use crate::tls::CertStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tcp::{Socket, TcpTransport};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Shared by all connections of one listener.
pub struct C2sListener {
    /// Server core.
    pub core: Arc<Core>,
    /// Listener settings.
    pub cfg: Listener,
    /// Certificates.
    pub certs: Arc<CertStore>,
    /// TLS config for STARTTLS.
    pub starttls: Arc<rustls::ServerConfig>,
    /// TLS config for direct TLS (ALPN `xmpp-client`).
    pub direct: Arc<rustls::ServerConfig>,
}

/// Serve one accepted TCP connection until it ends.
pub async fn serve(ctx: Arc<C2sListener>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    // Beyond its address's unauthenticated connections, a connection waits
    // (unread) for one of them to authenticate or go, as long as its own
    // stream header could take.
    let header_due = Instant::now() + Duration::from_secs(ctx.cfg.stream_header_timeout.max(1));
    let Some(guard) = Box::pin(ctx.core.unauthenticated(
        peer.ip(),
        ctx.cfg.max_unauthenticated_per_ip,
        header_due,
    ))
    .await
    else {
        refuse(ctx.cfg.tls, tcp).await;
        return;
    };
    let now = Instant::now();
    let auth_deadline = now + Duration::from_secs(ctx.cfg.auth_timeout.max(1));
    let socket = if ctx.cfg.tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(ctx.direct.clone());
        let handshake = now + Duration::from_secs(ctx.cfg.tls_handshake_timeout.max(1));
        match tokio::time::timeout_at(handshake.min(auth_deadline), Box::pin(acceptor.accept(tcp)))
            .await
        {
            Ok(Ok(s)) => Socket::Tls(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        Socket::Plain(tcp)
    };
    connection(ctx, socket, peer, auth_deadline, guard).await;
}

/// Close a connection that found no free unauthenticated slot of its
/// address in time: a plain stream gets a `policy-violation` stream error
/// (RFC 6120 §4.9.1.3: the server's header first), a TLS one is closed.
async fn refuse(tls: bool, mut tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    if !tls {
        let text = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
            <stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>too many unauthenticated \
            connections from this address</text></stream:error></stream:stream>";
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(text.as_bytes())).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.shutdown()).await;
}

/// The connection's future, built outside `serve`'s own state so that the
/// session and its transport are stored in the task once.
fn connection(
    ctx: Arc<C2sListener>,
    socket: Socket,
    peer: SocketAddr,
    auth_deadline: Instant,
    guard: crate::limits::UnauthGuard,
) -> impl Future<Output = ()> {
    let mut session = C2sSession::new(ctx.core.clone(), ctx.cfg.clone(), peer, Framing::Stream);
    session.set_unauthenticated(guard);
    if let Socket::Tls(s) = &socket {
        session.set_secure(ctx.certs.channel_bindings(s.get_ref().1));
    }
    let idle = Duration::from_secs(ctx.cfg.idle_timeout);
    run(session, TcpTransport::new(ctx, socket), auth_deadline, idle)
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// An idle session's memory is mostly its task's future, whose size is
    /// the largest state of the whole c2s state machine: keep it within a
    /// page. Rare, large paths (TLS handshakes, SASL, presence hooks,
    /// resumption) are boxed so that every session does not carry them.
    #[tokio::test]
    async fn session_task_stays_small() {
        let dir = std::env::temp_dir().join(format!("palaver-size-{}", std::process::id()));
        let text = format!(
            "hosts: [localhost]\ndata_dir: {}\nmodules: {{}}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n",
            dir.display()
        );
        let config = crate::Config::parse(&text).expect("config");
        let srv = crate::Server::start(config.clone(), &[])
            .await
            .expect("start");
        let certs = Arc::new(
            CertStore::load(&config.certfiles, &config.hosts, &config.data_dir).expect("certs"),
        );
        let ctx = Arc::new(C2sListener {
            core: srv.core.clone(),
            cfg: config.listen[0].clone(),
            starttls: certs.server_config(&[]),
            direct: certs.server_config(&[b"xmpp-client"]),
            certs,
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let _c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, peer) = l.accept().await.expect("accept");
        let task = std::mem::size_of_val(&serve(ctx.clone(), s, peer));
        let mut session = C2sSession::new(srv.core.clone(), ctx.cfg.clone(), peer, Framing::Stream);
        let el = minidom::Element::bare("message", "jabber:client");
        let stanza = std::mem::size_of_val(&session.handle_element(el));
        assert!(
            task <= 4096 && stanza <= 1024,
            "session task future {task} B (budget 4096), stanza handling {stanza} B (budget 1024)"
        );
        srv.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
