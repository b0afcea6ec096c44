//! Client-to-server connections (RFC 6120): stream negotiation, STARTTLS,
//! SASL, resource binding, and the established session's stanza flow.

mod session;
mod stream_mgmt;
mod transport;

pub use session::{C2sSession, Next, ResumeRequest};
pub use stream_mgmt::{NS as SM_NS, StreamMgmtConfig};
pub use transport::Transport;

use crate::config::Listener;
use crate::core::Core;
use crate::tls::CertStore;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::framer::{Frame, Framer, Limits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
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

const READ_CHUNK: usize = 4096;

/// Serve one accepted TCP connection until it ends.
pub async fn serve(ctx: Arc<C2sListener>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let auth_deadline = Instant::now() + Duration::from_secs(ctx.cfg.auth_timeout.max(1));
    let transport = if ctx.cfg.tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(ctx.direct.clone());
        match tokio::time::timeout_at(auth_deadline, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(s)) => Transport::Tls(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        Transport::Plain(tcp)
    };
    let mut session = C2sSession::new(ctx.core.clone(), ctx.cfg.clone(), peer);
    if let Transport::Tls(s) = &transport {
        session.set_secure(ctx.certs.channel_bindings(s.get_ref().1));
    }
    run(ctx, session, transport, auth_deadline).await;
}

async fn run(
    ctx: Arc<C2sListener>,
    mut session: C2sSession,
    transport: Transport,
    auth_deadline: Instant,
) {
    drive(&ctx, &mut session, transport, auth_deadline).await;
    // The socket is closed by now; a resumable session may wait on without it.
    session.end().await;
}

/// The connection's read/write loop, until the connection ends.
async fn drive(
    ctx: &Arc<C2sListener>,
    session: &mut C2sSession,
    mut transport: Transport,
    auth_deadline: Instant,
) {
    let limits = Limits {
        max_stanza_bytes: ctx.cfg.max_stanza_size,
        max_depth: ctx.cfg.max_xml_depth,
        max_attributes: ctx.cfg.max_xml_attributes,
    };
    let mut framer = Framer::new(limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut shutdown = ctx.core.shutdown.clone();
    let idle = Duration::from_secs(ctx.cfg.idle_timeout);
    let mut last_read = Instant::now();
    // One timer per connection, re-armed only when it fires: the hot path
    // registers no timers.
    let timer = tokio::time::sleep_until(auth_deadline);
    tokio::pin!(timer);
    loop {
        let mut next = Next::Continue;
        tokio::select! {
            r = transport.read_chunk(&mut buf, READ_CHUNK) => {
                match r {
                    Ok(0) | Err(_) => {
                        session.closed_by_peer();
                        break;
                    }
                    Ok(_) => {
                        last_read = Instant::now();
                        let mut data: &[u8] = &buf;
                        loop {
                            match framer.next_frame(&mut data) {
                                Ok(None) => break,
                                Ok(Some(Frame::Open(h))) => {
                                    if let Err(e) = session.handle_open(&h) {
                                        next = session.stream_error(e);
                                    }
                                }
                                Ok(Some(Frame::Element(el))) => {
                                    next = match session.handle_element(el).await {
                                        Ok(n) => n,
                                        Err(e) => session.stream_error(e),
                                    };
                                }
                                Ok(Some(Frame::Close)) => next = session.close_requested(),
                                Err(e) => next = session.stream_error(e),
                            }
                            match next {
                                Next::Continue => {}
                                Next::Restart => {
                                    framer.reset();
                                    next = Next::Continue;
                                }
                                Next::StartTls | Next::Close => break,
                            }
                        }
                        // Idle connections keep no read buffer.
                        buf = Vec::new();
                    }
                }
            }
            msg = session.recv() => {
                if let Some(msg) = msg {
                    next = session.handle_msg(msg);
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                let due = session.deadline(auth_deadline, idle, last_read, now);
                if now >= due {
                    next = session.stream_error(StreamError::with_text(SC::ConnectionTimeout, "timed out"));
                } else {
                    timer.as_mut().reset(due);
                }
            }
            _ = shutdown.changed() => {
                next = session.stream_error(StreamError::new(SC::SystemShutdown));
            }
        }
        if session.has_output() {
            let out = session.take_output();
            let res = transport
                .write_all_bounded(out.as_bytes(), Duration::from_secs(30))
                .await;
            session.recycle_output(out);
            if res.is_err() {
                session.closed_by_peer();
                break;
            }
        }
        match next {
            Next::Continue | Next::Restart => {}
            Next::Close => {
                let _ = tokio::time::timeout(Duration::from_secs(5), transport.shutdown()).await;
                break;
            }
            Next::StartTls => {
                let Transport::Plain(tcp) = transport else {
                    break;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(ctx.starttls.clone());
                match tokio::time::timeout_at(auth_deadline, Box::pin(acceptor.accept(tcp))).await {
                    Ok(Ok(s)) => {
                        session.set_secure(ctx.certs.channel_bindings(s.get_ref().1));
                        transport = Transport::Tls(Box::new(s));
                        framer.reset();
                    }
                    _ => break,
                }
            }
        }
    }
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
        let mut session = C2sSession::new(srv.core.clone(), ctx.cfg.clone(), peer);
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
