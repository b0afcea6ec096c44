//! External components (XEP-0114, `ejabberd_service` listener).
//!
//! A component opens a `jabber:component:accept` stream to its domain,
//! proves the shared secret with `<handshake>` (hex SHA-1 of the stream id
//! and the secret), and owns its domain in the routing table while it is
//! connected: every stanza for that domain or a JID at it is written to the
//! component. Its stanzas must come from its domain (`invalid-from`
//! otherwise). A second component for a taken domain gets `conflict`.

use crate::stream::{Io, StreamEnd, XmlStream, to_client_ns};
use crate::{NS_COMPONENT, new_id, stream_header};
use jid::Jid;
use palaver_proto::error::{Condition, StanzaError, StreamError, StreamErrorCondition as C};
use palaver_proto::framer::{Frame, Limits};
use palaver_proto::ns;
use palaver_proto::stanza::Stanza;
use palaver_server::Core;
use palaver_server::config::Listener;
use palaver_server::router::{Destination, StanzaSink};
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// Stanzas queued for a component before senders get `resource-constraint`.
const QUEUE: usize = 1024;

pub(crate) async fn accept_loop(core: Arc<Core>, l: Listener, sock: TcpListener) {
    let limit = Arc::new(Semaphore::new(
        l.max_connections.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let l = Arc::new(l);
    let mut shutdown = core.shutdown_signal();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            a = sock.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let (core, l) = (core.clone(), l.clone());
                tokio::spawn(async move {
                    serve(core, l, tcp, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "component accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct ComponentSink {
    tx: mpsc::Sender<Stanza>,
}

impl StanzaSink for ComponentSink {
    fn kind(&self) -> &'static str {
        "component"
    }
    fn deliver(&self, core: &Arc<Core>, st: Stanza) {
        match self.tx.try_send(st) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(st)) => core.bounce_with(
                &st,
                StanzaError::new(Condition::ResourceConstraint).text("the component is busy"),
                None,
            ),
            Err(mpsc::error::TrySendError::Closed(st)) => {
                core.bounce(&st, Condition::ServiceUnavailable, None)
            }
        }
    }
}

async fn serve(core: Arc<Core>, l: Arc<Listener>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let limits = Limits {
        max_stanza_bytes: l.max_stanza_size,
        max_depth: l.max_xml_depth,
        max_attributes: l.max_xml_attributes,
    };
    let mut st = XmlStream::new(Io::Plain(tcp), limits);
    let mut domain = None;
    let r = run(&core, &l, &mut st, &mut domain).await;
    if let Some(d) = &domain {
        core.routes().remove(d);
        tracing::info!(domain = %d, %peer, "component disconnected");
    }
    match r {
        Ok(()) => st.close().await,
        Err(e) => {
            tracing::info!(%peer, error = %e, "component stream ended with an error");
            st.fail(&e).await
        }
    }
}

async fn run(
    core: &Arc<Core>,
    l: &Listener,
    st: &mut XmlStream,
    registered: &mut Option<String>,
) -> Result<(), StreamError> {
    let auth_limit = Duration::from_secs(l.auth_timeout.max(1));
    let header_limit = Duration::from_secs(l.stream_header_timeout.max(1));
    let h = match st.next_within(header_limit).await {
        Ok(Frame::Open(h)) => h,
        Ok(_) => return Err(StreamError::new(C::NotWellFormed)),
        Err(StreamEnd::Xml(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let id = new_id();
    let domain = h.to.as_deref().unwrap_or_default().to_ascii_lowercase();
    let w = |_| StreamError::new(C::UndefinedCondition);
    st.send_raw(&stream_header(
        NS_COMPONENT,
        Some(&domain),
        None,
        Some(&id),
        false,
    ))
    .await
    .map_err(w)?;
    if !h.is_stream || h.default_ns.as_deref() != Some(NS_COMPONENT) {
        return Err(StreamError::with_text(
            C::InvalidNamespace,
            "expected jabber:component:accept",
        ));
    }
    let Some(secret) = l.component.secret_for(&domain) else {
        return Err(StreamError::with_text(
            C::HostUnknown,
            "no component is configured for this domain",
        ));
    };
    let el = match st.next_within(auth_limit).await {
        Ok(Frame::Element(el)) => el,
        Ok(_) => return Err(StreamError::new(C::NotWellFormed)),
        Err(StreamEnd::Xml(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    if !el.is("handshake", NS_COMPONENT) {
        return Err(StreamError::with_text(
            C::NotAuthorized,
            "expected <handshake/>",
        ));
    }
    let expected = hex::encode(Sha1::digest(format!("{id}{secret}").as_bytes()));
    if !el.text().trim().eq_ignore_ascii_case(&expected) {
        return Err(StreamError::with_text(C::NotAuthorized, "wrong secret"));
    }
    let (tx, mut rx) = mpsc::channel(QUEUE);
    if core
        .routes()
        .add(
            &domain,
            Destination::External(Arc::new(ComponentSink { tx })),
        )
        .is_err()
    {
        return Err(StreamError::with_text(
            C::Conflict,
            "this domain is already routed",
        ));
    }
    *registered = Some(domain.clone());
    tracing::info!(%domain, "component connected");
    st.send_raw("<handshake/>").await.map_err(w)?;
    let idle = (l.idle_timeout > 0).then(|| Duration::from_secs(l.idle_timeout));
    let mut shutdown = core.shutdown_signal();
    let result = loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break Ok(()) };
                if st.send_stanza(&out).await.is_err() {
                    core.bounce(&out, Condition::ServiceUnavailable, None);
                    break Ok(());
                }
            }
            f = async {
                match idle {
                    Some(d) => st.next_within(d).await,
                    None => st.next().await,
                }
            } => match f {
                Ok(Frame::Element(el)) => {
                    if el.is("error", ns::STREAM) {
                        break Ok(());
                    }
                    if let Err(e) = stanza(core, &domain, el) {
                        break Err(e);
                    }
                }
                Ok(_) => break Err(StreamError::new(C::NotWellFormed)),
                Err(StreamEnd::Xml(e)) => break Err(e),
                Err(StreamEnd::Timeout) => break Err(StreamError::new(C::ConnectionTimeout)),
                Err(_) => break Ok(()),
            },
            _ = shutdown.changed() => break Err(StreamError::new(C::SystemShutdown)),
        }
    };
    // What was queued for the component and not written is answered.
    core.routes().remove(&domain);
    *registered = None;
    rx.close();
    while let Ok(st) = rx.try_recv() {
        core.bounce(&st, Condition::ServiceUnavailable, None);
    }
    result
}

fn stanza(core: &Arc<Core>, domain: &str, el: minidom::Element) -> Result<(), StreamError> {
    let Some(el) = to_client_ns(&el, NS_COMPONENT) else {
        return Err(StreamError::new(C::UnsupportedStanzaType));
    };
    if palaver_proto::stanza::StanzaKind::of(el.name()).is_none() {
        return Err(StreamError::new(C::UnsupportedStanzaType));
    }
    let from = el
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .ok_or_else(|| StreamError::with_text(C::ImproperAddressing, "a stanza needs a from"))?;
    let fd = from.domain().as_str();
    if fd != domain && !fd.ends_with(&format!(".{domain}")) {
        return Err(StreamError::with_text(
            C::InvalidFrom,
            "from is not the component's domain",
        ));
    }
    if el.attr("to").is_none() {
        return Err(StreamError::with_text(
            C::ImproperAddressing,
            "a stanza needs a to",
        ));
    }
    match Stanza::from_element(el, from) {
        Ok(st) => {
            core.route(st);
            Ok(())
        }
        Err(_) => Err(StreamError::with_text(
            C::ImproperAddressing,
            "malformed to",
        )),
    }
}
