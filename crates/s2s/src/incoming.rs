//! Incoming s2s streams (`ejabberd_s2s_in`): STARTTLS or direct TLS, SASL
//! EXTERNAL for peers whose certificate is valid for their domain, Server
//! Dialback (XEP-0220) for the others and for further domain pairs on the
//! same stream, answers to dialback verification requests (we are the
//! authoritative server), and the stanzas of authenticated domain pairs.
//!
//! Stream errors: a header to a domain not served here → `host-unknown`; a
//! remote domain refused by `s2s_access` → `policy-violation`; a stanza
//! without `from`/`to`, or whose addresses are no JIDs →
//! `improper-addressing`; whose `from` domain is not authenticated on the
//! stream → `invalid-from`; to a domain not served here → `host-unknown`;
//! whose (from domain, to domain) pair was not validated on the stream
//! (SASL EXTERNAL validates the stream's header pair, dialback each pair it
//! is asked for) → `invalid-from`; over the size limit →
//! `policy-violation` (framer). A dialback key the authoritative server
//! calls invalid closes the stream with `type='invalid'`, or, when other
//! pairs are validated on it, gets a `<forbidden/>` dialback error that
//! keeps them (XEP-0220 §2.2.1); when the authoritative server cannot be
//! asked, a `remote-server-not-found` / `remote-server-timeout` dialback
//! error (§2.4.2).

use crate::stream::{Io, StreamEnd, XmlStream, esc, to_client_ns};
use crate::{Counted, NS_DIALBACK, S2s, new_id, stream_header};
use base64::Engine;
use jid::Jid;
use palaver_proto::error::{StreamError, StreamErrorCondition as C};
use palaver_proto::framer::Frame;
use palaver_proto::ns;
use palaver_proto::stanza::Stanza;
use palaver_server::config::{Listener, S2sTls};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

pub(crate) async fn accept_loop(s2s: Arc<S2s>, l: Listener, sock: TcpListener) {
    let limit = Arc::new(Semaphore::new(
        l.max_connections.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let l = Arc::new(l);
    let mut shutdown = s2s.core.shutdown_signal();
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
                let (s2s, l) = (s2s.clone(), l.clone());
                tokio::spawn(async move {
                    serve(s2s, l, tcp, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "s2s accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(s2s: Arc<S2s>, l: Arc<Listener>, tcp: TcpStream, peer: SocketAddr) {
    let _count = Counted::new(&s2s.incoming_count);
    let _ = tcp.set_nodelay(true);
    // The listener's limits (ejabberd's `max_stanza_size` on `ejabberd_s2s_in`).
    let limits = palaver_proto::framer::Limits {
        max_stanza_bytes: l.max_stanza_size,
        max_depth: l.max_xml_depth,
        max_attributes: l.max_xml_attributes,
    };
    let mut st = XmlStream::new(Io::Plain(tcp), limits);
    let auth_limit = Duration::from_secs(l.auth_timeout.max(1));
    let tls_limit = Duration::from_secs(l.tls_handshake_timeout.max(1));
    if l.tls {
        match tokio::time::timeout(tls_limit, st.accept_tls(s2s.tls.server(true))).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let mut conn = Conn {
        s2s: s2s.clone(),
        authed: HashSet::new(),
        sasl_done: false,
        header_sent: false,
    };
    let header_limit = Duration::from_secs(l.stream_header_timeout.max(1));
    match conn.run(&mut st, auth_limit, header_limit, tls_limit).await {
        Ok(()) => st.close().await,
        Err(e) => {
            tracing::info!(%peer, error = %e, "s2s incoming stream refused");
            if !conn.header_sent {
                let _ = st
                    .send_raw(&stream_header(
                        ns::SERVER,
                        None,
                        None,
                        Some(&new_id()),
                        true,
                    ))
                    .await;
            }
            st.fail(&e).await;
        }
    }
}

struct Conn {
    s2s: Arc<S2s>,
    /// Authenticated (remote domain, local domain) pairs.
    authed: HashSet<(String, String)>,
    sasl_done: bool,
    header_sent: bool,
}

fn stream_err(c: C, text: &str) -> StreamError {
    StreamError::with_text(c, text)
}

impl Conn {
    async fn run(
        &mut self,
        st: &mut XmlStream,
        auth_limit: Duration,
        header_limit: Duration,
        tls_limit: Duration,
    ) -> Result<(), StreamError> {
        let s2s = self.s2s.clone();
        let (vtx, mut vrx) = mpsc::channel::<(String, String, Verdict)>(16);
        let idle = s2s.idle().unwrap_or(Duration::from_secs(86_400 * 365));
        let mut shutdown = s2s.core.shutdown_signal();
        'stream: loop {
            let h = match st.next_within(header_limit).await {
                Ok(Frame::Open(h)) => h,
                Ok(_) => return Err(stream_err(C::NotWellFormed, "expected a stream header")),
                Err(StreamEnd::Xml(e)) => return Err(e),
                Err(_) => return Ok(()),
            };
            let id = new_id();
            let to =
                h.to.as_deref()
                    .map(str::to_ascii_lowercase)
                    .or_else(|| s2s.core.config().hosts.first().cloned())
                    .unwrap_or_default();
            st.send_raw(&stream_header(
                ns::SERVER,
                Some(&to),
                h.from.as_deref(),
                Some(&id),
                true,
            ))
            .await
            .map_err(|_| stream_err(C::UndefinedCondition, "write failed"))?;
            self.header_sent = true;
            if !h.is_stream || h.default_ns.as_deref() != Some(ns::SERVER) {
                return Err(stream_err(C::InvalidNamespace, "expected jabber:server"));
            }
            if !s2s.is_ours(&to) {
                return Err(stream_err(C::HostUnknown, "this domain is not served here"));
            }
            let peer_domain = h.from.as_deref().map(str::to_ascii_lowercase);
            if let Some(f) = &peer_domain
                && !s2s.allowed(f)
            {
                return Err(stream_err(
                    C::PolicyViolation,
                    "federation with your domain is not allowed",
                ));
            }
            let cert_valid = st.is_tls()
                && peer_domain
                    .as_deref()
                    .is_some_and(|d| st.peer_certs().is_some_and(|c| s2s.tls.valid_for(&c, d)));
            if h.version.as_deref() == Some("1.0") {
                let mut f = String::from("<stream:features>");
                if !st.is_tls() && s2s.cfg.use_starttls != S2sTls::Off {
                    f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                    if s2s.cfg.use_starttls == S2sTls::Required {
                        f.push_str("<required/>");
                    }
                    f.push_str("</starttls>");
                }
                if cert_valid && !self.sasl_done {
                    f.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>");
                }
                if s2s.cfg.dialback && (st.is_tls() || s2s.cfg.use_starttls != S2sTls::Required) {
                    f.push_str("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>");
                }
                f.push_str("</stream:features>");
                st.send_raw(&f)
                    .await
                    .map_err(|_| stream_err(C::UndefinedCondition, "write failed"))?;
            }
            loop {
                let wait = if self.authed.is_empty() {
                    auth_limit
                } else {
                    idle
                };
                let el = tokio::select! {
                    f = st.next_within(wait) => match f {
                        Ok(Frame::Element(el)) => el,
                        Ok(_) => return Err(stream_err(C::NotWellFormed, "unexpected stream header")),
                        Err(StreamEnd::Xml(e)) => return Err(e),
                        Err(StreamEnd::Timeout) if self.authed.is_empty() => {
                            return Err(stream_err(C::ConnectionTimeout, "not authenticated in time"));
                        }
                        Err(_) => return Ok(()),
                    },
                    Some((from, local, verdict)) = vrx.recv() => {
                        let w = |_| stream_err(C::UndefinedCondition, "write failed");
                        match verdict {
                            Verdict::Valid => {
                                st.send_raw(&format!(
                                    "<db:result from='{}' to='{}' type='valid'/>",
                                    esc(&local),
                                    esc(&from)
                                ))
                                .await
                                .map_err(w)?;
                                tracing::info!(remote = %from, %local, "s2s incoming stream authenticated (dialback)");
                                self.authed.insert((from, local));
                            }
                            Verdict::Invalid if !self.authed.is_empty() => {
                                // XEP-0220 §2.2.1: a <forbidden/> dialback error
                                // keeps the pairs already validated here.
                                tracing::warn!(remote = %from, %local, "dialback key refused by the authoritative server");
                                st.send_raw(&db_error(&local, &from, "forbidden")).await.map_err(w)?;
                            }
                            Verdict::Invalid => {
                                // A spoofing attempt: answer and close (XEP-0220 §2.2.1).
                                tracing::warn!(remote = %from, %local, "dialback key refused by the authoritative server");
                                st.send_raw(&format!(
                                    "<db:result from='{}' to='{}' type='invalid'/>",
                                    esc(&local),
                                    esc(&from)
                                ))
                                .await
                                .map_err(w)?;
                                return Ok(());
                            }
                            Verdict::Error(cond) => {
                                st.send_raw(&db_error(&local, &from, cond)).await.map_err(w)?;
                            }
                        }
                        continue;
                    }
                    _ = shutdown.changed() => {
                        return Err(stream_err(C::SystemShutdown, "the server is shutting down"));
                    }
                };
                if el.is("starttls", ns::TLS) {
                    if st.is_tls() || s2s.cfg.use_starttls == S2sTls::Off {
                        let _ = st
                            .send_raw("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                            .await;
                        return Ok(());
                    }
                    st.send_raw("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                        .await
                        .map_err(|_| stream_err(C::UndefinedCondition, "write failed"))?;
                    match tokio::time::timeout(tls_limit, st.accept_tls(s2s.tls.server(false)))
                        .await
                    {
                        Ok(Ok(())) => {}
                        _ => return Ok(()),
                    }
                    continue 'stream;
                }
                if el.is("auth", ns::SASL) {
                    if self
                        .sasl_external(st, &el, peer_domain.as_deref(), &to, cert_valid)
                        .await?
                    {
                        st.restart();
                        continue 'stream;
                    }
                    continue;
                }
                if el.is("result", NS_DIALBACK) {
                    self.db_result(st, &el, &id, &vtx).await?;
                    continue;
                }
                if el.is("verify", NS_DIALBACK) {
                    self.db_verify(st, &el).await?;
                    continue;
                }
                if el.is("error", ns::STREAM) {
                    return Ok(());
                }
                self.stanza(el)?;
            }
        }
    }

    /// SASL EXTERNAL (RFC 6120 §13.7.1.2): `true` on success (stream restarts).
    async fn sasl_external(
        &mut self,
        st: &mut XmlStream,
        el: &minidom::Element,
        peer: Option<&str>,
        local: &str,
        cert_valid: bool,
    ) -> Result<bool, StreamError> {
        let fail = |cond: &str| {
            format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{cond}/></failure>")
        };
        let w = |_| stream_err(C::UndefinedCondition, "write failed");
        if el.attr("mechanism") != Some("EXTERNAL") || self.sasl_done || !st.is_tls() {
            st.send_raw(&fail("invalid-mechanism")).await.map_err(w)?;
            return Ok(false);
        }
        let text = el.text();
        let text = text.trim();
        let authzid = if text.is_empty() || text == "=" {
            None
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        };
        let claimed = authzid
            .map(|a| a.to_ascii_lowercase())
            .or(peer.map(str::to_string));
        match claimed {
            Some(d) if cert_valid && Some(d.as_str()) == peer => {
                st.send_raw("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                    .await
                    .map_err(w)?;
                tracing::info!(remote = %d, %local, "s2s incoming stream authenticated (SASL EXTERNAL)");
                self.authed.insert((d, local.to_string()));
                self.sasl_done = true;
                Ok(true)
            }
            _ => {
                st.send_raw(&fail("not-authorized")).await.map_err(w)?;
                Ok(false)
            }
        }
    }

    /// A dialback request (we are the receiving server): verify with the
    /// authoritative server in a task; the answer comes back through `vtx`.
    async fn db_result(
        &mut self,
        st: &mut XmlStream,
        el: &minidom::Element,
        id: &str,
        vtx: &mpsc::Sender<(String, String, Verdict)>,
    ) -> Result<(), StreamError> {
        let s2s = self.s2s.clone();
        if el.attr("type").is_some() {
            return Ok(());
        }
        if !s2s.cfg.dialback {
            return Err(stream_err(
                C::NotAuthorized,
                "dialback is not accepted here",
            ));
        }
        if s2s.cfg.use_starttls == S2sTls::Required && !st.is_tls() {
            return Err(stream_err(C::PolicyViolation, "TLS is required"));
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Err(stream_err(
                C::ImproperAddressing,
                "db:result without from or to",
            ));
        };
        let (from, to) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
        let error = |cond: &str| db_error(&to, &from, cond);
        let w = |_| stream_err(C::UndefinedCondition, "write failed");
        if !s2s.is_ours(&to) {
            st.send_raw(&error("item-not-found")).await.map_err(w)?;
            return Ok(());
        }
        if !s2s.allowed(&from) {
            st.send_raw(&error("forbidden")).await.map_err(w)?;
            return Ok(());
        }
        if self.authed.contains(&(from.clone(), to.clone())) {
            let _ = vtx.try_send((from, to, Verdict::Valid));
            return Ok(());
        }
        let key = el.text();
        let (vtx, id) = (vtx.clone(), id.to_string());
        tokio::spawn(async move {
            let verdict = verify(&s2s, &from, &to, &id, key.trim()).await;
            let _ = vtx.send((from, to, verdict)).await;
        });
        Ok(())
    }

    /// A verification request (we are the authoritative server).
    async fn db_verify(
        &mut self,
        st: &mut XmlStream,
        el: &minidom::Element,
    ) -> Result<(), StreamError> {
        if el.attr("type").is_some() {
            return Ok(());
        }
        let (Some(from), Some(to), Some(id)) = (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return Err(stream_err(
                C::ImproperAddressing,
                "db:verify without from, to or id",
            ));
        };
        let (from, to) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
        let valid = self.s2s.is_ours(&to) && {
            let expected = self.s2s.dialback_key(&from, &to, id);
            let got = el.text();
            subtle_eq(expected.as_bytes(), got.trim().as_bytes())
        };
        st.send_raw(&format!(
            "<db:verify from='{}' to='{}' id='{}' type='{}'/>",
            esc(&to),
            esc(&from),
            esc(id),
            if valid { "valid" } else { "invalid" }
        ))
        .await
        .map_err(|_| stream_err(C::UndefinedCondition, "write failed"))
    }

    /// A stanza from an authenticated domain.
    fn stanza(&mut self, el: minidom::Element) -> Result<(), StreamError> {
        let Some(el) = to_client_ns(&el, ns::SERVER) else {
            return Err(stream_err(C::UnsupportedStanzaType, "unexpected element"));
        };
        if palaver_proto::stanza::StanzaKind::of(el.name()).is_none() {
            return Err(stream_err(C::UnsupportedStanzaType, "not a stanza"));
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Err(stream_err(
                C::ImproperAddressing,
                "a stanza needs from and to",
            ));
        };
        // RFC 6120 §4.9.3.10: an address that is no JID.
        let from = Jid::new(from)
            .map_err(|_| stream_err(C::ImproperAddressing, "malformed from address"))?;
        let to =
            Jid::new(to).map_err(|_| stream_err(C::ImproperAddressing, "malformed to address"))?;
        let fd = from.domain().as_str();
        let td = to.domain().as_str();
        if !self.authed.iter().any(|(r, _)| r == fd) {
            return Err(stream_err(
                C::InvalidFrom,
                "the from domain is not authenticated on this stream",
            ));
        }
        if !self.s2s.is_ours(td) {
            return Err(stream_err(
                C::HostUnknown,
                "the to domain is not served here",
            ));
        }
        // Dialback authenticates domain pairs (XEP-0220 §1.4, §2.5): the
        // sender domain is validated for this target domain or not at all.
        if !self.authed.contains(&(fd.to_string(), td.to_string())) {
            return Err(stream_err(
                C::InvalidFrom,
                "the from domain is not authenticated for this to domain on this stream",
            ));
        }
        let Ok(st) = Stanza::from_element(el, from) else {
            return Err(stream_err(C::ImproperAddressing, "bad stanza addresses"));
        };
        self.s2s.core.route(st);
        Ok(())
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the authoritative server said of a dialback key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Valid,
    Invalid,
    /// It could not be asked: the dialback error condition (XEP-0220 §2.4.2).
    Error(&'static str),
}

/// A dialback error from `local` (one of ours) to `remote`.
fn db_error(local: &str, remote: &str, cond: &str) -> String {
    format!(
        "<db:result from='{}' to='{}' type='error'><error type='cancel'><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
        esc(local),
        esc(remote)
    )
}

/// Ask the authoritative server of `originating` whether `key` is its key
/// for the stream `id` it opened to `receiving` (one of ours).
async fn verify(
    s2s: &Arc<S2s>,
    originating: &str,
    receiving: &str,
    id: &str,
    key: &str,
) -> Verdict {
    let limit = Duration::from_secs(s2s.cfg.connect_timeout.max(1) * 2);
    let r = tokio::time::timeout(limit, async {
        let mut o = crate::outgoing::open(s2s, receiving, originating)
            .await
            .map_err(|e| (e, "remote-server-not-found"))?;
        let lost = |e: String| (e, "remote-server-timeout");
        o.stream
            .send_raw(&format!(
                "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
                esc(receiving),
                esc(originating),
                esc(id),
                esc(key)
            ))
            .await
            .map_err(|e| lost(e.to_string()))?;
        loop {
            let el = o
                .stream
                .element_within(limit)
                .await
                .map_err(|e| lost(e.to_string()))?;
            if el.is("verify", NS_DIALBACK) && el.attr("id") == Some(id) {
                let v = match el.attr("type") {
                    Some("valid") => Verdict::Valid,
                    Some("invalid") => Verdict::Invalid,
                    // The authoritative server does not know the domain.
                    _ => Verdict::Error("remote-server-not-found"),
                };
                o.stream.close().await;
                return Ok::<Verdict, (String, &'static str)>(v);
            }
            if el.is("error", ns::STREAM) {
                return Err(("stream error".into(), "remote-server-not-found"));
            }
        }
    })
    .await;
    match r {
        Ok(Ok(v)) => v,
        Ok(Err((e, cond))) => {
            tracing::info!(%originating, error = %e, "dialback verification failed");
            Verdict::Error(cond)
        }
        Err(_) => {
            tracing::info!(%originating, "dialback verification timed out");
            Verdict::Error("remote-server-timeout")
        }
    }
}
