//! The c2s session state machine, independent of the byte transport.

use crate::auth::AuthOutcome;
use crate::c2s::stream_mgmt::{self, AckError, Resumption, StreamMgmt};
use crate::config::Listener;
use crate::core::Core;
use crate::host::Host;
use crate::module::{HookAction, PresenceEvent};
use crate::sm::{SessionHandle, SessionMsg};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError, StreamError, StreamErrorCondition as SC};
use palaver_proto::framer::StreamHeader;
use palaver_proto::ns;
use palaver_proto::sasl::{
    ChannelBindings, Mechanism, SaslFailure, ScramServer, decode_sasl_payload, encode_sasl_payload,
    parse_plain,
};
use palaver_proto::stanza::{Stanza, StanzaKind, StanzaParseError, set_attr};
use palaver_proto::writer::{escape_into, write_element};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the connection loop does after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep going.
    Continue,
    /// Expect a new stream header (after SASL success).
    Restart,
    /// Upgrade to TLS, then expect a new stream header.
    StartTls,
    /// Flush and close the connection.
    Close,
}

/// Queue length of a session's inbox.
const INBOX: usize = 256;
/// Stanzas of one session whose deferred work may be in flight at once.
const MAX_INFLIGHT: usize = 32;
/// Longest wait for in-flight work before reading the next stanza anyway.
const INFLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Wrong credentials (not-authorized) before the stream is closed.
const MAX_AUTH_FAILURES: u8 = 5;

enum SaslState {
    None,
    /// SCRAM waiting for client-first (empty initial response).
    ScramStart(Mechanism),
    /// SCRAM waiting for client-final.
    Scram(Box<ScramServer>),
}

struct Bound {
    jid: FullJid,
    id: u64,
    rx: mpsc::Receiver<SessionMsg>,
    priority: Option<i8>,
    /// Entities that received directed available presence (RFC 6121 §4.6).
    directed: Vec<Jid>,
}

/// A new connection asking a resumable session for its state (XEP-0198 §5).
pub struct ResumeRequest {
    reply: oneshot::Sender<ResumeState>,
}

impl std::fmt::Debug for ResumeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeRequest")
    }
}

/// What moves from a resumed session to the connection resuming it.
pub struct ResumeState {
    host: Option<Arc<Host>>,
    user: Option<String>,
    bound: Bound,
    sm: Box<StreamMgmt>,
    inflight: Arc<crate::ack::AckTracker>,
    received: u64,
}

/// One client session.
pub struct C2sSession {
    core: Arc<Core>,
    cfg: Listener,
    peer: SocketAddr,
    out: String,
    header_sent: bool,
    stream_id: String,
    host: Option<Arc<Host>>,
    secure: bool,
    cb: ChannelBindings,
    user: Option<String>,
    sasl: SaslState,
    auth_failures: u8,
    bound: Option<Bound>,
    /// XEP-0198 state once the client enabled it.
    /// (Boxed: most sessions never enable it, and idle sessions stay small.)
    sm: Option<Box<StreamMgmt>>,
    /// Work the router deferred for this session's stanzas (storage, IQ
    /// handlers), by inbound stanza number; see [`crate::ack`].
    inflight: Arc<crate::ack::AckTracker>,
    /// Stanzas received since binding.
    received: u64,
    /// The connection ended in a way that allows resumption (lost, timed
    /// out), not by the client's `</stream:stream>` or a stream error.
    resumable_end: bool,
    closing: bool,
}

fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl C2sSession {
    /// A new session for a connection from `peer`.
    pub fn new(core: Arc<Core>, cfg: Listener, peer: SocketAddr) -> Self {
        C2sSession {
            core,
            cfg,
            peer,
            out: String::new(),
            header_sent: false,
            stream_id: String::new(),
            host: None,
            secure: false,
            cb: ChannelBindings::default(),
            user: None,
            sasl: SaslState::None,
            auth_failures: 0,
            bound: None,
            sm: None,
            inflight: crate::ack::AckTracker::new(),
            received: 0,
            resumable_end: true,
            closing: false,
        }
    }

    /// The transport is now encrypted, with these channel bindings.
    pub fn set_secure(&mut self, cb: ChannelBindings) {
        self.secure = true;
        self.cb = cb;
    }

    /// When the connection times out: `auth_deadline` until a resource is
    /// bound, then `idle` after the last input (never when `idle` is zero).
    pub fn deadline(
        &self,
        auth_deadline: tokio::time::Instant,
        idle: std::time::Duration,
        last_read: tokio::time::Instant,
        now: tokio::time::Instant,
    ) -> tokio::time::Instant {
        if !self.is_bound() {
            auth_deadline
        } else if idle.is_zero() {
            now + std::time::Duration::from_secs(86_400)
        } else {
            last_read + idle
        }
    }

    /// Whether a resource is bound.
    pub fn is_bound(&self) -> bool {
        self.bound.is_some()
    }

    /// Output waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Take the pending output.
    pub fn take_output(&mut self) -> String {
        std::mem::take(&mut self.out)
    }

    /// Give back the output buffer for reuse (kept small while idle).
    pub fn recycle_output(&mut self, mut buf: String) {
        // Keep a small buffer for the next burst; idle sessions hold little.
        buf.clear();
        if buf.capacity() <= 512 && self.out.is_empty() {
            self.out = buf;
        }
    }

    /// Wait for a message to the session (pending forever before binding).
    /// While an acknowledgement waits for deferred work, also wakes
    /// ([`SessionMsg::Wake`]) when some of that work finishes.
    pub async fn recv(&mut self) -> Option<SessionMsg> {
        let Some(b) = &mut self.bound else {
            return std::future::pending().await;
        };
        let Some(sm) = &mut self.sm else {
            return b.rx.recv().await;
        };
        let wake = sm.ack_pending();
        let control = sm.resume.as_mut().map(|r| &mut r.control);
        tokio::select! {
            m = b.rx.recv() => m,
            () = self.inflight.changed(), if wake => Some(SessionMsg::Wake),
            Some(req) = async {
                match control {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => Some(SessionMsg::Resume(req)),
        }
    }

    fn write_header(&mut self) {
        if self.header_sent {
            return;
        }
        self.header_sent = true;
        if self.stream_id.is_empty() {
            self.stream_id = random_id();
        }
        let from = self
            .host
            .as_ref()
            .map(|h| h.name.clone())
            .or_else(|| self.core.config.hosts.first().cloned())
            .unwrap_or_default();
        self.out.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
        self.out.push_str(&self.stream_id);
        self.out.push_str("' from='");
        escape_into(&mut self.out, &from);
        self.out.push_str("' version='1.0' xml:lang='en'>");
    }

    /// Emit a stream error and close (RFC 6120 §4.9).
    pub fn stream_error(&mut self, e: StreamError) -> Next {
        if self.closing {
            return Next::Close;
        }
        tracing::debug!(peer = %self.peer, error = %e, "stream error");
        // A session that timed out may still be resumed; one we ended may not.
        self.resumable_end &= e.condition == SC::ConnectionTimeout;
        self.write_header();
        self.out.push_str(&e.to_xml());
        self.out.push_str("</stream:stream>");
        self.closing = true;
        Next::Close
    }

    /// The client closed its stream.
    pub fn close_requested(&mut self) -> Next {
        self.resumable_end = false;
        if !self.closing {
            self.write_header();
            self.out.push_str("</stream:stream>");
            self.closing = true;
        }
        Next::Close
    }

    /// The connection is gone without a closing handshake.
    pub fn closed_by_peer(&mut self) {
        self.closing = true;
    }

    /// Handle a stream header.
    pub fn handle_open(&mut self, h: &StreamHeader) -> Result<(), StreamError> {
        self.header_sent = false;
        self.stream_id = random_id();
        if !h.is_stream || h.default_ns.as_deref() != Some(ns::CLIENT) {
            return Err(StreamError::with_text(
                SC::InvalidNamespace,
                "expected a jabber:client stream",
            ));
        }
        let host = match &h.to {
            Some(to) => {
                let domain = jid::BareJid::new(to)
                    .ok()
                    .filter(|j| j.node().is_none())
                    .map(|j| j.domain().to_string());
                domain.and_then(|d| self.core.host(&d).cloned())
            }
            None if self.core.hosts.len() == 1 => self.core.hosts.values().next().cloned(),
            None => None,
        };
        let Some(host) = host else {
            return Err(StreamError::with_text(
                SC::HostUnknown,
                "this server does not serve that domain",
            ));
        };
        if let Some(old) = &self.host
            && old.name != host.name
        {
            return Err(StreamError::new(SC::HostUnknown));
        }
        self.host = Some(host);
        match h.version.as_deref() {
            Some(v) if v.split('.').next().and_then(|m| m.parse::<u32>().ok()) == Some(1) => {}
            _ => {
                return Err(StreamError::with_text(
                    SC::UnsupportedVersion,
                    "XMPP 1.0 is required",
                ));
            }
        }
        self.write_header();
        self.write_features();
        Ok(())
    }

    fn tls_possible(&self) -> bool {
        !self.secure && self.cfg.starttls && !self.cfg.tls && self.user.is_none()
    }

    fn plain_allowed(&self) -> bool {
        self.secure || self.cfg.allow_plain_without_tls
    }

    fn write_features(&mut self) {
        self.out.push_str("<stream:features>");
        if self.user.is_none() {
            if self.tls_possible() {
                self.out
                    .push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if self.cfg.starttls_required {
                    self.out.push_str("<required/>");
                }
                self.out.push_str("</starttls>");
            }
            if !(self.tls_possible() && self.cfg.starttls_required) {
                self.out
                    .push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                for m in Mechanism::ALL {
                    if self.offers(m) {
                        self.out.push_str("<mechanism>");
                        self.out.push_str(m.name());
                        self.out.push_str("</mechanism>");
                    }
                }
                self.out.push_str("</mechanisms>");
                if !self.cb.is_empty() {
                    self.out
                        .push_str("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
                    for t in self.cb.supported() {
                        self.out.push_str("<channel-binding type='");
                        self.out.push_str(t.name());
                        self.out.push_str("'/>");
                    }
                    self.out.push_str("</sasl-channel-binding>");
                }
                if let Some(host) = self.host.clone() {
                    for f in &host.regs.pre_auth_features {
                        for el in f(&host) {
                            write_element(&mut self.out, &el, ns::CLIENT);
                        }
                    }
                }
            }
        } else {
            self.out
                .push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
            self.out.push_str(
                "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>",
            );
            if self.stream_mgmt_config().is_some() {
                self.out.push_str("<sm xmlns='urn:xmpp:sm:3'/>");
            }
            if let Some(host) = self.host.clone() {
                for f in &host.regs.stream_features {
                    for el in f(&host) {
                        write_element(&mut self.out, &el, ns::CLIENT);
                    }
                }
            }
        }
        self.out.push_str("</stream:features>");
    }

    fn offers(&self, m: Mechanism) -> bool {
        match m {
            Mechanism::Plain => self.plain_allowed(),
            Mechanism::Scram { plus, .. } => !plus || !self.cb.is_empty(),
        }
    }

    /// Handle a complete top-level element.
    pub async fn handle_element(&mut self, el: Element) -> Result<Next, StreamError> {
        if !self.header_sent {
            return Err(StreamError::new(SC::NotWellFormed));
        }
        if self.bound.is_some() {
            if el.has_ns(stream_mgmt::NS) {
                return self.handle_sm(el);
            }
            // Back-pressure: while this client has too much deferred work in
            // flight (a flood of IQs, messages to offline users), stop reading
            // its stream, so one client cannot take the database pool or the
            // offline queue from everyone else.
            while self.inflight.pending() >= MAX_INFLIGHT {
                if tokio::time::timeout(INFLIGHT_WAIT, self.inflight.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // Number the stanza; work the router defers for it carries a
            // ticket, which holds back its acknowledgement (XEP-0198).
            self.received += 1;
            let (tracker, seq) = (self.inflight.clone(), self.received);
            let next = crate::ack::scope(tracker, seq, self.handle_stanza(el)).await;
            // The wait above may have taken the wake-up a pending <a/> needed.
            self.answer_ready_acks();
            return next;
        }
        if el.is("starttls", ns::TLS) {
            if !self.tls_possible() {
                self.out
                    .push_str("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>");
                self.closing = true;
                return Ok(Next::Close);
            }
            self.out
                .push_str("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            return Ok(Next::StartTls);
        }
        if self.tls_possible() && self.cfg.starttls_required {
            return Err(StreamError::with_text(
                SC::PolicyViolation,
                "STARTTLS is required",
            ));
        }
        if el.has_ns(ns::SASL) {
            if self.user.is_some() {
                return Err(StreamError::with_text(
                    SC::PolicyViolation,
                    "already authenticated",
                ));
            }
            return Box::pin(self.handle_sasl(el)).await;
        }
        if self.user.is_none() {
            if el.is("iq", ns::CLIENT) {
                return Box::pin(self.handle_pre_auth_iq(el)).await;
            }
            return Err(StreamError::with_text(
                SC::NotAuthorized,
                "authenticate first",
            ));
        }
        if el.is("iq", ns::CLIENT) {
            return Box::pin(self.handle_pre_bind_iq(el)).await;
        }
        if el.is("resume", stream_mgmt::NS) {
            Box::pin(self.handle_resume(&el)).await;
            return Ok(Next::Continue);
        }
        if el.is("enable", stream_mgmt::NS) {
            // XEP-0198: enable only after binding (a client may bind now).
            self.sm_failed(Condition::UnexpectedRequest);
            return Ok(Next::Continue);
        }
        Err(StreamError::with_text(
            SC::NotAuthorized,
            "bind a resource first",
        ))
    }

    /// The host's XEP-0198 settings, when `mod_stream_mgmt` is enabled.
    fn stream_mgmt_config(&self) -> Option<stream_mgmt::StreamMgmtConfig> {
        self.host.as_ref().and_then(|h| h.regs.stream_mgmt)
    }

    fn sm_failed(&mut self, cond: Condition) {
        self.out.push_str("<failed xmlns='urn:xmpp:sm:3'><");
        self.out.push_str(cond.name());
        self.out
            .push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>");
    }

    /// `<resume previd='…' h='…'/>` after authentication (XEP-0198 §5): take
    /// over the account's detached (or still connected) session, then send
    /// again what the client has not acknowledged.
    async fn handle_resume(&mut self, el: &Element) {
        let (Some(user), Some(host)) = (self.user.clone(), self.host.clone()) else {
            self.sm_failed(Condition::UnexpectedRequest);
            return;
        };
        let bare = format!("{user}@{}", host.name);
        let previd = el.attr("previd").unwrap_or_default();
        let Some(tx) = self.core.sm.resumable(previd, &bare) else {
            self.sm_failed(Condition::ItemNotFound);
            return;
        };
        let (reply, answer) = oneshot::channel();
        let wait = std::time::Duration::from_secs(10);
        let state = match tokio::time::timeout(wait, tx.send(ResumeRequest { reply })).await {
            Ok(Ok(())) => tokio::time::timeout(wait, answer)
                .await
                .ok()
                .and_then(Result::ok),
            _ => None,
        };
        let Some(state) = state else {
            self.sm_failed(Condition::ItemNotFound);
            return;
        };
        self.host = state.host;
        self.user = state.user;
        self.bound = Some(state.bound);
        self.inflight = state.inflight;
        self.received = state.received;
        let mut sm = state.sm;
        if el.attr("h").is_some() && sm.on_ack(el.attr("h")).is_err() {
            // An impossible count: resume, but send everything again.
            tracing::debug!(peer = %self.peer, "resume with a bad h");
        }
        let handled = self.inflight.handled(self.received);
        let h = sm.h_of(handled);
        self.out.push_str("<resumed xmlns='urn:xmpp:sm:3' previd='");
        escape_into(&mut self.out, previd);
        self.out.push_str("' h='");
        self.out.push_str(&h.to_string());
        self.out.push_str("'/>");
        for st in &sm.unacked {
            write_element(&mut self.out, &st.el, ns::CLIENT);
        }
        sm.requested = false;
        self.sm = Some(sm);
        self.request_ack();
        tracing::debug!(peer = %self.peer, "stream resumed");
    }

    /// Hand the session's state to a connection resuming it.
    fn hand_over(&mut self, req: ResumeRequest) {
        let (Some(bound), Some(sm)) = (self.bound.take(), self.sm.take()) else {
            return;
        };
        let state = ResumeState {
            host: self.host.clone(),
            user: self.user.clone(),
            bound,
            sm,
            inflight: self.inflight.clone(),
            received: self.received,
        };
        if let Err(state) = req.reply.send(state) {
            // The new connection gave up meanwhile: keep the session.
            self.bound = Some(state.bound);
            self.sm = Some(state.sm);
        }
    }

    /// Answer the pending `<r/>`s whose stanzas are all handled, if any.
    fn answer_ready_acks(&mut self) {
        let (inflight, received) = (&self.inflight, self.received);
        if let Some(h) = self
            .sm
            .as_mut()
            .and_then(|sm| sm.ack_ready(inflight, received))
        {
            self.write_ack(h);
        }
    }

    fn write_ack(&mut self, h: u32) {
        self.out.push_str("<a xmlns='urn:xmpp:sm:3' h='");
        self.out.push_str(&h.to_string());
        self.out.push_str("'/>");
    }

    /// A XEP-0198 element on a bound stream.
    fn handle_sm(&mut self, el: Element) -> Result<Next, StreamError> {
        match (el.name(), &mut self.sm) {
            ("enable", None) => match self.stream_mgmt_config() {
                Some(cfg) => {
                    let mut sm = StreamMgmt::new(cfg, self.received);
                    let wants = matches!(el.attr("resume"), Some("true" | "1"));
                    if wants && cfg.resume_timeout > 0 {
                        // The client may ask for a shorter wait (`max`).
                        let timeout = el
                            .attr("max")
                            .and_then(|m| m.parse::<u64>().ok())
                            .filter(|m| *m > 0)
                            .map_or(cfg.resume_timeout, |m| m.min(cfg.resume_timeout));
                        let id = format!("{:032x}", rand::random::<u128>());
                        let (tx, rx) = mpsc::channel(1);
                        if let Some(b) = &self.bound {
                            self.core
                                .sm
                                .add_resumable(&id, b.jid.to_bare().as_str(), tx);
                        }
                        self.out.push_str("<enabled xmlns='urn:xmpp:sm:3' id='");
                        self.out.push_str(&id);
                        self.out.push_str("' resume='true' max='");
                        self.out.push_str(&timeout.to_string());
                        self.out.push_str("'/>");
                        sm.resume = Some(Resumption {
                            id,
                            timeout,
                            control: rx,
                        });
                    } else {
                        self.out.push_str("<enabled xmlns='urn:xmpp:sm:3'/>");
                    }
                    self.sm = Some(Box::new(sm));
                }
                None => self.sm_failed(Condition::FeatureNotImplemented),
            },
            ("enable", Some(_)) => self.sm_failed(Condition::UnexpectedRequest),
            ("resume", _) => self.sm_failed(Condition::UnexpectedRequest),
            ("r", Some(sm)) => {
                sm.ack_requested(self.received);
                self.answer_ready_acks();
            }
            ("a", Some(sm)) => match sm.on_ack(el.attr("h")) {
                Ok(()) => {}
                Err(AckError::Malformed) => {
                    return Err(StreamError::with_text(
                        SC::InvalidXml,
                        "<a/> needs a numeric 'h'",
                    ));
                }
                Err(AckError::TooHigh(h, sent)) => {
                    return Err(StreamError::with_text(
                        SC::UndefinedCondition,
                        format!("handled-count-too-high: h={h}, sent {sent}"),
                    ));
                }
            },
            ("r" | "a", None) => {
                return Err(StreamError::with_text(
                    SC::UnsupportedStanzaType,
                    "stream management is not enabled",
                ));
            }
            (other, _) => {
                return Err(StreamError::with_text(
                    SC::UnsupportedStanzaType,
                    format!("<{other}/> is not supported"),
                ));
            }
        }
        Ok(Next::Continue)
    }

    fn sasl_failure(&mut self, f: SaslFailure, text: Option<&str>) -> Next {
        self.sasl = SaslState::None;
        self.out
            .push_str("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><");
        self.out.push_str(f.condition());
        self.out.push_str("/>");
        if let Some(t) = text {
            self.out.push_str("<text xml:lang='en'>");
            escape_into(&mut self.out, t);
            self.out.push_str("</text>");
        }
        self.out.push_str("</failure>");
        // Only wrong credentials count towards the limit; negotiation
        // (invalid-mechanism, a refused channel-binding type or `y` flag,
        // aborted, malformed) never does, so a client may try its mechanisms.
        if f == SaslFailure::NotAuthorized {
            self.auth_failures += 1;
        }
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return self.stream_error(StreamError::with_text(
                SC::PolicyViolation,
                "too many authentication failures",
            ));
        }
        Next::Continue
    }

    fn sasl_success(&mut self, user: String, additional: Option<Vec<u8>>) -> Next {
        self.sasl = SaslState::None;
        self.out
            .push_str("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'");
        match additional {
            Some(data) => {
                self.out.push('>');
                self.out.push_str(&encode_sasl_payload(&data));
                self.out.push_str("</success>");
            }
            None => self.out.push_str("/>"),
        }
        tracing::debug!(peer = %self.peer, user, "authenticated");
        self.user = Some(user);
        Next::Restart
    }

    /// Normalise a SASL username to a node of this host.
    fn nodeprep(&self, user: &str) -> Option<String> {
        let host = self.host.as_ref()?;
        let bare = BareJid::new(&format!("{user}@{}", host.name)).ok()?;
        let node = bare.node()?.as_str().to_string();
        // Reject usernames that smuggle a different domain or resource.
        if user.contains('@') || user.contains('/') {
            return None;
        }
        Some(node)
    }

    async fn handle_sasl(&mut self, el: Element) -> Result<Next, StreamError> {
        let Some(host) = self.host.clone() else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        match el.name() {
            "abort" => Ok(self.sasl_failure(SaslFailure::Aborted, None)),
            "auth" => {
                if !matches!(self.sasl, SaslState::None) {
                    return Ok(self.sasl_failure(
                        SaslFailure::MalformedRequest,
                        Some("exchange in progress"),
                    ));
                }
                let Some(mech) = el.attr("mechanism").and_then(Mechanism::from_name) else {
                    return Ok(self.sasl_failure(SaslFailure::InvalidMechanism, None));
                };
                if mech == Mechanism::Plain && !self.plain_allowed() {
                    return Ok(self.sasl_failure(SaslFailure::EncryptionRequired, None));
                }
                if !self.offers(mech) {
                    return Ok(self.sasl_failure(SaslFailure::InvalidMechanism, None));
                }
                let data = match decode_sasl_payload(&el.text()) {
                    Ok(d) => d,
                    Err(f) => return Ok(self.sasl_failure(f, None)),
                };
                match mech {
                    Mechanism::Plain => {
                        if data.is_empty() {
                            // Empty initial response: ask for the credentials.
                            self.out
                                .push_str("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
                            self.sasl = SaslState::ScramStart(Mechanism::Plain);
                            return Ok(Next::Continue);
                        }
                        Ok(self.plain(&host, &data).await)
                    }
                    Mechanism::Scram { .. } => {
                        if data.is_empty() {
                            self.out
                                .push_str("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
                            self.sasl = SaslState::ScramStart(mech);
                            return Ok(Next::Continue);
                        }
                        Ok(self.scram_first(&host, mech, &data).await)
                    }
                }
            }
            "response" => {
                let data = match decode_sasl_payload(&el.text()) {
                    Ok(d) => d,
                    Err(f) => return Ok(self.sasl_failure(f, None)),
                };
                match std::mem::replace(&mut self.sasl, SaslState::None) {
                    SaslState::None => Ok(self.sasl_failure(
                        SaslFailure::MalformedRequest,
                        Some("no exchange in progress"),
                    )),
                    SaslState::ScramStart(Mechanism::Plain) => Ok(self.plain(&host, &data).await),
                    SaslState::ScramStart(mech) => Ok(self.scram_first(&host, mech, &data).await),
                    SaslState::Scram(mut server) => match server.client_final(&data) {
                        Ok(v) => {
                            let user = server.username().to_string();
                            match self.nodeprep(&user) {
                                Some(node) => Ok(self.sasl_success(node, Some(v))),
                                None => Ok(self.sasl_failure(SaslFailure::NotAuthorized, None)),
                            }
                        }
                        Err(f) => Ok(self.sasl_failure(f, None)),
                    },
                }
            }
            _ => Err(StreamError::with_text(
                SC::UnsupportedStanzaType,
                "unknown SASL element",
            )),
        }
    }

    fn authzid_ok(&self, authzid: Option<&str>, node: &str, host: &Host) -> bool {
        match authzid {
            None => true,
            Some(a) => BareJid::new(a).ok().is_some_and(|j| {
                j.node().map(|n| n.as_str()) == Some(node) && j.domain().as_str() == host.name
            }),
        }
    }

    async fn plain(&mut self, host: &Arc<Host>, data: &[u8]) -> Next {
        let (authzid, authcid, password) = match parse_plain(data) {
            Ok(p) => p,
            Err(f) => return self.sasl_failure(f, None),
        };
        let Some(node) = self.nodeprep(&authcid) else {
            return self.sasl_failure(SaslFailure::NotAuthorized, None);
        };
        if !self.authzid_ok(authzid.as_deref(), &node, host) {
            return self.sasl_failure(SaslFailure::InvalidAuthzid, None);
        }
        match self
            .core
            .auth
            .check_password(&host.name, &node, &password)
            .await
        {
            AuthOutcome::Ok => self.sasl_success(node, None),
            AuthOutcome::Denied => self.sasl_failure(SaslFailure::NotAuthorized, None),
            AuthOutcome::Temporary => self.sasl_failure(SaslFailure::TemporaryAuthFailure, None),
        }
    }

    async fn scram_first(&mut self, host: &Arc<Host>, mech: Mechanism, data: &[u8]) -> Next {
        let Mechanism::Scram { hash, plus } = mech else {
            return self.sasl_failure(SaslFailure::InvalidMechanism, None);
        };
        let mut server = match ScramServer::new(hash, plus, &self.cb, data) {
            Ok(s) => s,
            Err(f) => return self.sasl_failure(f, None),
        };
        let node = self.nodeprep(server.username());
        if let Some(node) = &node
            && !self.authzid_ok(server.authzid(), node, host)
        {
            return self.sasl_failure(SaslFailure::InvalidAuthzid, None);
        }
        let creds = match &node {
            Some(n) => match self.core.auth.credentials(&host.name, n, hash).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "credential lookup failed");
                    return self.sasl_failure(SaslFailure::TemporaryAuthFailure, None);
                }
            },
            None => None,
        };
        let challenge = server.server_first(creds.as_ref());
        self.out
            .push_str("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
        self.out.push_str(&encode_sasl_payload(&challenge));
        self.out.push_str("</challenge>");
        self.sasl = SaslState::Scram(Box::new(server));
        Next::Continue
    }

    fn iq_reply_raw(&mut self, id: Option<&str>, kind: &str, inner: &str) {
        self.out.push_str("<iq type='");
        self.out.push_str(kind);
        self.out.push('\'');
        if let Some(id) = id {
            self.out.push_str(" id='");
            escape_into(&mut self.out, id);
            self.out.push('\'');
        }
        if inner.is_empty() {
            self.out.push_str("/>");
        } else {
            self.out.push('>');
            self.out.push_str(inner);
            self.out.push_str("</iq>");
        }
    }

    fn iq_error_raw(&mut self, id: Option<&str>, cond: Condition) {
        let err = StanzaError::new(cond).to_element(ns::CLIENT);
        let mut s = String::new();
        write_element(&mut s, &err, ns::CLIENT);
        self.iq_reply_raw(id, "error", &s);
    }

    async fn handle_pre_bind_iq(&mut self, el: Element) -> Result<Next, StreamError> {
        let id = el.attr("id").map(str::to_string);
        let bind = el.get_child("bind", ns::BIND);
        if el.attr("type") != Some("set") || bind.is_none() {
            return Err(StreamError::with_text(
                SC::NotAuthorized,
                "bind a resource first",
            ));
        }
        let (Some(user), Some(host)) = (self.user.clone(), self.host.clone()) else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        let requested = bind
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let resource = match requested {
            Some(r) => r,
            None => format!("palaver-{}", &random_id()[..10]),
        };
        let jid = match FullJid::new(&format!("{user}@{}/{resource}", host.name)) {
            Ok(j) => j,
            Err(_) => {
                self.iq_error_raw(id.as_deref(), Condition::BadRequest);
                return Ok(Next::Continue);
            }
        };
        let (tx, rx) = mpsc::channel(INBOX);
        let sid = self.core.sm.next_id();
        self.core.sm.bind(
            &jid,
            SessionHandle {
                id: sid,
                resource: jid.resource().as_str().to_string(),
                priority: None,
                presence: None,
                tx,
            },
        );
        self.core.run_session_bound(&jid).await;
        let mut inner = String::from("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>");
        escape_into(&mut inner, jid.as_str());
        inner.push_str("</jid></bind>");
        self.iq_reply_raw(id.as_deref(), "result", &inner);
        tracing::debug!(peer = %self.peer, jid = %jid, "resource bound");
        self.bound = Some(Bound {
            jid,
            id: sid,
            rx,
            priority: None,
            directed: Vec::new(),
        });
        Ok(Next::Continue)
    }

    async fn handle_pre_auth_iq(&mut self, el: Element) -> Result<Next, StreamError> {
        let Some(host) = self.host.clone() else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        let id = el.attr("id").map(str::to_string);
        let ns_of = el.children().next().map(|c| c.ns());
        let hook = ns_of
            .as_ref()
            .and_then(|n| host.regs.pre_auth_iq.get(n))
            .cloned();
        let Some(hook) = hook else {
            return Err(StreamError::with_text(
                SC::NotAuthorized,
                "authenticate first",
            ));
        };
        if !matches!(el.attr("type"), Some("get") | Some("set")) {
            return Ok(Next::Continue);
        }
        let res = hook(crate::module::PreAuthIq {
            core: self.core.clone(),
            host,
            el,
            peer: self.peer,
            secure: self.secure,
        })
        .await;
        match res {
            Ok(payload) => {
                let mut inner = String::new();
                if let Some(p) = payload {
                    write_element(&mut inner, &p, ns::CLIENT);
                }
                self.iq_reply_raw(id.as_deref(), "result", &inner);
            }
            Err(e) => {
                let mut s = String::new();
                write_element(&mut s, &e.to_element(ns::CLIENT), ns::CLIENT);
                self.iq_reply_raw(id.as_deref(), "error", &s);
            }
        }
        Ok(Next::Continue)
    }

    async fn handle_stanza(&mut self, el: Element) -> Result<Next, StreamError> {
        let Some(b) = &self.bound else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        if !el.has_ns(ns::CLIENT) {
            return Err(StreamError::with_text(
                SC::UnsupportedStanzaType,
                format!("<{}/> is not supported", el.name()),
            ));
        }
        let me = b.jid.clone();
        // Legacy session establishment: nothing to do.
        if el.name() == "iq"
            && el.attr("type") == Some("set")
            && el.has_child("session", ns::SESSION)
        {
            let id = el.attr("id").map(str::to_string);
            self.iq_reply_raw(id.as_deref(), "result", "");
            return Ok(Next::Continue);
        }
        if el.name() == "iq" && el.has_child("bind", ns::BIND) {
            let id = el.attr("id").map(str::to_string);
            self.iq_error_raw(id.as_deref(), Condition::NotAllowed);
            return Ok(Next::Continue);
        }
        let name = el.name().to_string();
        let id = el.attr("id").map(str::to_string);
        let was_error = el.attr("type") == Some("error");
        let mut st = match Stanza::from_element(el, Jid::from(me.clone())) {
            Ok(st) => st,
            Err(StanzaParseError::NotAStanza) => {
                return Err(StreamError::with_text(
                    SC::UnsupportedStanzaType,
                    "not a stanza",
                ));
            }
            Err(StanzaParseError::JidMalformed) => {
                if !was_error {
                    self.reply_jid_malformed(&name, id.as_deref(), &me);
                }
                return Ok(Next::Continue);
            }
        };
        if st.kind == StanzaKind::Presence {
            // Boxed: presence awaits module hooks, a large future that an idle
            // session should not carry in its task (messages stay unboxed).
            return Ok(Box::pin(self.handle_presence(me, st)).await);
        }
        if self.core.run_user_send(&me, &mut st) == HookAction::Drop {
            return Ok(Next::Continue);
        }
        self.core.route(st);
        Ok(Next::Continue)
    }

    async fn handle_presence(&mut self, me: FullJid, mut st: Stanza) -> Next {
        let kind = st.type_attr().map(str::to_string);
        if st.to.is_none() {
            // Broadcast presence (RFC 6121 §4.2, §4.4, §4.5).
            let event = match kind.as_deref() {
                None => {
                    let prio = st
                        .el
                        .get_child("priority", ns::CLIENT)
                        .and_then(|p| p.text().trim().parse::<i8>().ok())
                        .unwrap_or(0);
                    if self.core.run_user_send(&me, &mut st) == HookAction::Drop {
                        return Next::Continue;
                    }
                    let Some(b) = &mut self.bound else {
                        return Next::Continue;
                    };
                    let first = b.priority.is_none();
                    b.priority = Some(prio);
                    self.core
                        .sm
                        .set_presence(&b.jid, b.id, Some((prio, Arc::new(st.el.clone()))));
                    if first {
                        PresenceEvent::Initial
                    } else {
                        PresenceEvent::Update
                    }
                }
                Some("unavailable") => {
                    if self.core.run_user_send(&me, &mut st) == HookAction::Drop {
                        return Next::Continue;
                    }
                    let Some(b) = &mut self.bound else {
                        return Next::Continue;
                    };
                    if b.priority.is_none() {
                        return Next::Continue;
                    }
                    b.priority = None;
                    self.core.sm.set_presence(&b.jid, b.id, None);
                    self.send_directed_unavailable(&st);
                    PresenceEvent::Unavailable
                }
                // Other types without a recipient make no sense.
                _ => return Next::Continue,
            };
            self.broadcast_own(&me, &st);
            self.core.run_presence_out(&me, &st, event).await;
            return Next::Continue;
        }
        if self.core.run_user_send(&me, &mut st) == HookAction::Drop {
            return Next::Continue;
        }
        match kind.as_deref() {
            Some("subscribe") | Some("subscribed") | Some("unsubscribe") | Some("unsubscribed") => {
                // RFC 6121 §3: the server stamps the bare JID and updates the roster.
                let bare: Jid = me.to_bare().into();
                st = Stanza::new(st.kind, bare, st.to.clone(), st.el);
                if !self.core.run_subscription_out(&st).await {
                    self.core.route(st);
                }
            }
            None | Some("unavailable") => {
                // Directed presence (RFC 6121 §4.6): remember where it went.
                if let (Some(b), Some(to)) = (&mut self.bound, &st.to) {
                    let pos = b.directed.iter().position(|j| j == to);
                    match (kind.is_none(), pos) {
                        (true, None) if b.directed.len() < 1000 => b.directed.push(to.clone()),
                        (false, Some(p)) => {
                            b.directed.swap_remove(p);
                        }
                        _ => {}
                    }
                }
                self.core.route(st);
            }
            _ => self.core.route(st),
        }
        Next::Continue
    }

    /// Send the user's broadcast presence to all of their available resources,
    /// including this one (RFC 6121 §4.2.2).
    fn broadcast_own(&self, me: &FullJid, st: &Stanza) {
        let bare = me.to_bare();
        let my_id = self.bound.as_ref().map_or(0, |b| b.id);
        for h in self.core.sm.sessions(&bare) {
            if (h.priority.is_some() || h.id == my_id)
                && let Ok(to) = bare.with_resource_str(&h.resource)
            {
                let mut copy = st.clone();
                copy.set_to(Some(Jid::from(to)));
                let _ = crate::sm::SessionManager::deliver(&h, copy);
            }
        }
    }

    /// Unavailable presence to every entity that got directed presence (RFC 6121 §4.6.3).
    fn send_directed_unavailable(&mut self, unavailable: &Stanza) {
        let Some(b) = &mut self.bound else { return };
        for to in std::mem::take(&mut b.directed) {
            let mut copy = unavailable.clone();
            copy.set_to(Some(to));
            self.core.route(copy);
        }
    }

    /// RFC 6120 §8.3.3.8: a `to` that is not a valid JID.
    fn reply_jid_malformed(&mut self, name: &str, id: Option<&str>, me: &FullJid) {
        let mut el = Element::bare(name, ns::CLIENT);
        set_attr(&mut el, "type", "error");
        if let Some(id) = id {
            set_attr(&mut el, "id", id);
        }
        set_attr(&mut el, "from", me.domain().as_str());
        set_attr(&mut el, "to", me.as_str());
        el.append_child(StanzaError::new(Condition::JidMalformed).to_element(ns::CLIENT));
        write_element(&mut self.out, &el, ns::CLIENT);
    }

    /// Handle a message from the router or session manager.
    pub fn handle_msg(&mut self, msg: SessionMsg) -> Next {
        match msg {
            SessionMsg::Stanza(st) => {
                let mut st = *st;
                let Some(b) = &self.bound else {
                    return Next::Continue;
                };
                let me = b.jid.clone();
                if self.core.run_user_receive(&me, &mut st) == HookAction::Drop {
                    return Next::Continue;
                }
                self.emit(st);
                // Drain whatever else is queued, so a burst costs one write.
                let mut n = 0;
                while n < 64 {
                    let Some(b) = &mut self.bound else { break };
                    match b.rx.try_recv() {
                        Ok(SessionMsg::Stanza(st)) => {
                            let mut st = *st;
                            if self.core.run_user_receive(&me, &mut st) != HookAction::Drop {
                                self.emit(st);
                            }
                        }
                        Ok(other) => {
                            self.request_ack();
                            return self.handle_msg(other);
                        }
                        Err(_) => break,
                    }
                    n += 1;
                }
                self.request_ack();
                match &self.sm {
                    Some(sm) if sm.unacked.len() > sm.max_queue => {
                        self.stream_error(StreamError::with_text(
                            SC::PolicyViolation,
                            "too many unacknowledged stanzas",
                        ))
                    }
                    _ => Next::Continue,
                }
            }
            SessionMsg::Wake => {
                self.answer_ready_acks();
                Next::Continue
            }
            SessionMsg::Resume(req) => {
                self.hand_over(req);
                if self.bound.is_some() {
                    return Next::Continue;
                }
                // XEP-0198 §5: the old stream of a resumed session ends.
                self.resumable_end = false;
                self.stream_error(StreamError::with_text(
                    SC::Conflict,
                    "the session was resumed on another connection",
                ))
            }
            SessionMsg::Replaced => {
                // The table already holds the new session; `finish` still tells
                // contacts and other resources that this one went away.
                self.stream_error(StreamError::with_text(
                    SC::Conflict,
                    "replaced by a new session",
                ))
            }
            SessionMsg::Kick(reason) => {
                self.stream_error(StreamError::with_text(SC::PolicyViolation, reason))
            }
        }
    }

    /// Write a stanza to the client; with stream management, keep it until acknowledged.
    fn emit(&mut self, st: Stanza) {
        write_element(&mut self.out, &st.el, ns::CLIENT);
        if let Some(sm) = &mut self.sm {
            sm.unacked.push_back(st);
        }
    }

    /// Ask the client to acknowledge what was written (one `<r/>` outstanding).
    fn request_ack(&mut self) {
        if let Some(sm) = &mut self.sm
            && !sm.requested
            && !sm.unacked.is_empty()
        {
            sm.requested = true;
            self.out.push_str("<r xmlns='urn:xmpp:sm:3'/>");
        }
    }

    /// XEP-0198 §4: stanzas the client never acknowledged are not lost when
    /// the session ends: messages go to the account again (another resource,
    /// or offline storage), IQ requests are answered with an error.
    fn reroute(&self, stanzas: std::collections::VecDeque<Stanza>) {
        for mut st in stanzas {
            match st.kind {
                StanzaKind::Message => {
                    if matches!(st.type_attr(), Some("error" | "groupchat" | "headline")) {
                        continue;
                    }
                    let Some(to) = st.to.as_ref().map(|t| Jid::from(t.to_bare())) else {
                        continue;
                    };
                    st.set_to(Some(to));
                    self.core.route(st);
                }
                StanzaKind::Iq if matches!(st.type_attr(), Some("get" | "set")) => {
                    self.core.bounce(&st, Condition::ServiceUnavailable, None);
                }
                _ => {}
            }
        }
    }

    /// The connection ended. A resumable session that lost its connection
    /// waits, detached, to be resumed; otherwise (and when the wait is over)
    /// it is finished.
    pub async fn end(&mut self) {
        let timeout = match self.sm.as_deref() {
            Some(StreamMgmt {
                resume: Some(r), ..
            }) if self.resumable_end && self.bound.is_some() => r.timeout,
            _ => {
                self.finish();
                return;
            }
        };
        tracing::debug!(peer = %self.peer, timeout, "session detached, waiting to be resumed");
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut shutdown = self.core.shutdown.clone();
        enum Event {
            Msg(Option<SessionMsg>),
            Resume(ResumeRequest),
            Over,
        }
        loop {
            let event = {
                let Some(b) = &mut self.bound else { return };
                let Some(StreamMgmt {
                    resume: Some(r), ..
                }) = self.sm.as_deref_mut()
                else {
                    break;
                };
                tokio::select! {
                    m = b.rx.recv() => Event::Msg(m),
                    Some(req) = r.control.recv() => Event::Resume(req),
                    () = &mut deadline => Event::Over,
                    _ = shutdown.changed() => Event::Over,
                }
            };
            match event {
                // Kept (unacknowledged) for the connection that resumes.
                Event::Msg(Some(SessionMsg::Stanza(st))) => {
                    let mut st = *st;
                    let Some(me) = self.bound.as_ref().map(|b| b.jid.clone()) else {
                        break;
                    };
                    if self.core.run_user_receive(&me, &mut st) != HookAction::Drop
                        && let Some(sm) = &mut self.sm
                    {
                        sm.unacked.push_back(st);
                        if sm.unacked.len() > sm.max_queue {
                            break;
                        }
                    }
                }
                Event::Msg(Some(SessionMsg::Wake)) => {}
                Event::Msg(Some(SessionMsg::Resume(req))) | Event::Resume(req) => {
                    self.hand_over(req)
                }
                Event::Msg(Some(SessionMsg::Replaced | SessionMsg::Kick(_)) | None) => break,
                Event::Over => break,
            }
        }
        self.finish();
    }

    /// The connection ended: unbind, tell the user's other resources, contacts
    /// and directed-presence recipients, and run the session-closed hooks.
    pub fn finish(&mut self) {
        let was_available = self.bound.as_ref().is_some_and(|b| b.priority.is_some());
        let mut unavailable = None;
        if was_available && let Some(b) = &self.bound {
            let mut el = Element::bare("presence", ns::CLIENT);
            set_attr(&mut el, "type", "unavailable");
            let mut st = Stanza::new(StanzaKind::Presence, Jid::from(b.jid.clone()), None, el);
            if self.core.run_user_send(&b.jid, &mut st) != HookAction::Drop {
                unavailable = Some(st);
            }
        }
        if let Some(st) = &unavailable {
            self.send_directed_unavailable(st);
        }
        let Some(mut b) = self.bound.take() else {
            return;
        };
        self.core.sm.unbind(&b.jid, b.id);
        // Stanzas still queued for this session were never written: like
        // unacknowledged ones, they go to the account again.
        b.rx.close();
        let mut pending = match self.sm.take() {
            Some(sm) => {
                if let Some(r) = &sm.resume {
                    self.core.sm.remove_resumable(&r.id);
                }
                sm.unacked
            }
            None => Default::default(),
        };
        while let Ok(msg) = b.rx.try_recv() {
            if let SessionMsg::Stanza(st) = msg {
                pending.push_back(*st);
            }
        }
        self.reroute(pending);
        if let Some(st) = &unavailable {
            let bare = b.jid.to_bare();
            for h in self.core.sm.sessions(&bare) {
                if h.priority.is_some()
                    && let Ok(to) = bare.with_resource_str(&h.resource)
                {
                    let mut copy = st.clone();
                    copy.set_to(Some(Jid::from(to)));
                    let _ = crate::sm::SessionManager::deliver(&h, copy);
                }
            }
        }
        let core = self.core.clone();
        tokio::spawn(async move {
            if let Some(st) = unavailable {
                core.run_presence_out(&b.jid, &st, PresenceEvent::Unavailable)
                    .await;
            }
            core.run_session_closed(&b.jid).await;
        });
    }
}
