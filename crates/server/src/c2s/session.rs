//! The c2s session: its state, and the dispatch of what comes in — from the
//! client (stream headers, top-level elements) and from the server (messages
//! routed to the session) — to the parts that own each concern:
//! `negotiation.rs` (stream header, features, STARTTLS, pre-auth IQs),
//! `sasl.rs`, `bind.rs`, `stream_mgmt.rs` (XEP-0198), `presence.rs` and
//! `delivery.rs` (stanzas to the client, rerouting on end). Independent of
//! the transport: output goes to an [`Output`] the transport frames.

use super::output::{Framing, Output};
use super::sasl::SaslState;
use super::stream_mgmt::{self, StreamMgmt};
use crate::config::Listener;
use crate::core::Core;
use crate::host::Host;
use crate::module::{HookAction, PresenceEvent};
use crate::sessions::SessionMsg;
use jid::{FullJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError, StreamError, StreamErrorCondition as SC};
use palaver_proto::ns;
use palaver_proto::sasl::ChannelBindings;
use palaver_proto::stanza::{Stanza, StanzaKind, StanzaParseError, set_attr};
use palaver_proto::writer::{escape_into, write_element};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

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

/// A [`C2sSession::host_gen`] that makes the next input look the host up again.
pub(super) const STALE_HOST: u64 = u64::MAX;

/// Stanzas of one session whose deferred work may be in flight at once.
const MAX_INFLIGHT: usize = 32;

/// An IQ request the server answers (to the server, a bare JID, a service)
/// rather than another client's full JID.
fn answered_by_server(el: &Element) -> bool {
    if el.name() != "iq" || !matches!(el.attr("type"), Some("get" | "set")) {
        return false;
    }
    match el.attr("to").map(Jid::new) {
        None => true,
        Some(Ok(to)) => to.resource().is_none() || to.node().is_none(),
        Some(Err(_)) => false,
    }
}

/// A bound resource.
pub(super) struct Bound {
    pub(super) jid: FullJid,
    /// The session's ID in the session table.
    pub(super) id: u64,
    /// Messages to the session (its handle in the session table sends them).
    pub(super) rx: mpsc::Receiver<SessionMsg>,
    /// Priority of the last available broadcast presence; `None` while unavailable.
    pub(super) priority: Option<i8>,
    /// Entities that received directed available presence (RFC 6121 §4.6).
    pub(super) directed: Vec<Jid>,
}

/// One client session.
pub struct C2sSession {
    pub(super) core: Arc<Core>,
    pub(super) cfg: Listener,
    pub(super) peer: SocketAddr,
    /// The transport (recorded in the session table at bind).
    pub(super) transport: crate::sessions::Transport,
    pub(super) out: Output,
    pub(super) header_sent: bool,
    pub(super) stream_id: String,
    pub(super) host: Option<Arc<Host>>,
    /// The [`Core::generation`] `host` was current at: after a
    /// configuration reload the session takes the new host (its modules'
    /// registrations) on its next input.
    pub(super) host_gen: u64,
    pub(super) secure: bool,
    pub(super) cb: ChannelBindings,
    pub(super) user: Option<String>,
    pub(super) sasl: SaslState,
    /// A XEP-0388 exchange in progress (`sasl2.rs`).
    pub(super) sasl2: Option<Box<super::sasl2::Sasl2>>,
    pub(super) auth_failures: u8,
    /// The user name of the SASL exchange in progress (for the failure log).
    pub(super) last_auth_user: String,
    pub(super) bound: Option<Bound>,
    /// XEP-0198 state once the client enabled it.
    /// (Boxed: most sessions never enable it, and idle sessions stay small.)
    pub(super) stream_mgmt: Option<Box<StreamMgmt>>,
    /// XEP-0352: stanzas held back while the client is inactive (`csi.rs`).
    pub(super) csi: Option<Box<super::csi::Held>>,
    /// Work the router deferred for this session's stanzas (storage, IQ
    /// handlers), by inbound stanza number; see [`crate::ack`].
    pub(super) inflight: Arc<crate::ack::AckTracker>,
    /// Stanzas received since binding.
    pub(super) received: u64,
    /// The connection ended in a way that allows resumption (lost, timed
    /// out), not by the client's `</stream:stream>` or a stream error.
    pub(super) resumable_end: bool,
    pub(super) closing: bool,
    /// A server-answered request read from the client, waiting for the
    /// deferred work of the stanzas before it (see `handle_element`).
    pub(super) held: Option<Element>,
    /// When the client's next stream header is due (a new connection, or
    /// one restarted after STARTTLS or SASL); `None` once it came.
    pub(super) header_due: Option<tokio::time::Instant>,
    /// This connection counted against its address until it authenticates.
    pub(super) unauth: Option<crate::limits::UnauthGuard>,
    /// Wait this long before writing the answer to a failed login.
    pub(super) auth_delay: Option<std::time::Duration>,
}

pub(super) fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl C2sSession {
    /// A new session for a connection from `peer`, whose transport frames
    /// output with `framing`.
    pub fn new(core: Arc<Core>, cfg: Listener, peer: SocketAddr, framing: Framing) -> Self {
        let host_gen = core.generation();
        C2sSession {
            core,
            host_gen,
            cfg,
            peer,
            transport: match framing {
                Framing::Stream => crate::sessions::Transport::Tcp,
                Framing::Documents => crate::sessions::Transport::WebSocket,
            },
            out: Output::new(framing),
            header_sent: false,
            stream_id: String::new(),
            host: None,
            secure: false,
            cb: ChannelBindings::default(),
            user: None,
            sasl: SaslState::None,
            sasl2: None,
            auth_failures: 0,
            last_auth_user: String::new(),
            bound: None,
            stream_mgmt: None,
            csi: None,
            inflight: crate::ack::AckTracker::new(),
            received: 0,
            resumable_end: true,
            closing: false,
            held: None,
            header_due: None,
            unauth: None,
            auth_delay: None,
        }
    }

    /// Count this connection against its address until it authenticates.
    pub fn set_unauthenticated(&mut self, guard: crate::limits::UnauthGuard) {
        self.unauth = Some(guard);
    }

    /// A stream header is expected now (a new or restarted stream): it must
    /// come within the listener's `stream_header_timeout`.
    pub fn expect_header(&mut self) {
        self.header_due = Some(
            tokio::time::Instant::now()
                + std::time::Duration::from_secs(self.cfg.stream_header_timeout.max(1)),
        );
    }

    /// The traffic shaper for this connection now: the listener's
    /// `shaper_rule` (or `shaper`) for the authenticated user, or its
    /// `shaper` for the address before authentication.
    pub fn shaper(&self) -> Option<crate::config::Shaper> {
        let ip = Some(self.peer.ip());
        match &self.bound {
            Some(b) => {
                let name = self.cfg.shaper_rule.as_ref().or(self.cfg.shaper.as_ref())?;
                let jid = b.jid.to_bare();
                let who = crate::config::Subject {
                    jid: Some(jid.as_str()),
                    ip,
                };
                self.core
                    .config()
                    .shaper_for(Some(b.jid.domain().as_str()), name, who)
            }
            None => {
                let name = self.cfg.shaper.as_ref()?;
                let who = crate::config::Subject { jid: None, ip };
                self.core.config().shaper_for(None, name, who)
            }
        }
    }

    /// The session came in by `t` (BOSH: its output is framed as
    /// WebSocket's, so it says so).
    pub fn set_transport(&mut self, t: crate::sessions::Transport) {
        self.transport = t;
    }

    /// How this connection is connected, for the session table.
    pub(super) fn connection(&self, since: std::time::SystemTime) -> crate::sessions::Connection {
        crate::sessions::Connection {
            transport: self.transport,
            tls: self.secure,
            peer: self.peer,
            since,
        }
    }

    /// The transport is now encrypted, with these channel bindings.
    pub fn set_secure(&mut self, cb: ChannelBindings) {
        self.secure = true;
        self.cb = cb;
    }

    /// The listener's settings.
    pub fn listener(&self) -> &Listener {
        &self.cfg
    }

    /// The server core.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
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
            match self.header_due {
                Some(due) => due.min(auth_deadline),
                None => auth_deadline,
            }
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

    /// Output waiting to be written; the transport clears it once written.
    pub fn output(&mut self) -> &mut Output {
        &mut self.out
    }

    /// Wait for a message to the session (pending forever before binding),
    /// or a resumption request for it.
    pub async fn recv(&mut self) -> Option<SessionMsg> {
        let Some(b) = &mut self.bound else {
            return std::future::pending().await;
        };
        let control = self
            .stream_mgmt
            .as_mut()
            .and_then(|mgmt| mgmt.resume.as_mut())
            .map(|r| &mut r.control);
        let Some(control) = control else {
            return b.rx.recv().await;
        };
        tokio::select! {
            m = b.rx.recv() => m,
            Some(req) = control.recv() => Some(SessionMsg::Resume(req)),
        }
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
        self.out.stream_error(&e);
        self.out.close();
        self.closing = true;
        Next::Close
    }

    /// The client closed its stream.
    pub fn close_requested(&mut self) -> Next {
        self.resumable_end = false;
        if !self.closing {
            self.write_header();
            self.out.close();
            self.closing = true;
        }
        Next::Close
    }

    /// The connection is gone without a closing handshake.
    pub fn closed_by_peer(&mut self) {
        self.closing = true;
    }

    /// After a configuration reload, take the host's new instance (the
    /// modules it enables now); an error when the host is no longer served
    /// (RFC 6120 §4.9.3.6 `host-unknown`).
    pub(super) fn refresh_host(&mut self) -> Result<(), StreamError> {
        let generation = self.core.generation();
        if generation == self.host_gen {
            return Ok(());
        }
        let Some(name) = self.host.as_ref().map(|h| h.name.clone()) else {
            self.host_gen = generation;
            return Ok(());
        };
        match self.core.host(&name) {
            Some(current) => {
                self.host = Some(current);
                self.host_gen = generation;
                Ok(())
            }
            None => Err(StreamError::with_text(
                SC::HostUnknown,
                format!("{name} is no longer served here"),
            )),
        }
    }

    /// Handle a complete top-level element.
    pub async fn handle_element(&mut self, el: Element) -> Result<Next, StreamError> {
        if !self.header_sent {
            return Err(StreamError::new(SC::NotWellFormed));
        }
        self.refresh_host()?;
        if self.bound.is_some() {
            if el.has_ns(stream_mgmt::NS) {
                return self.handle_stream_mgmt(el);
            }
            if el.has_ns(super::csi::NS) {
                return self.handle_csi(&el);
            }
            // RFC 6120 §10.1: an answer the server gives implies that the
            // client's earlier stanzas are handled. A server-answered request
            // waits until their deferred work (offline storage, IQ handlers
            // writing to the store) is committed; until then nothing more is
            // read from the client (see `reading`).
            if self.inflight.pending() > 0 && answered_by_server(&el) {
                self.held = Some(el);
                return Ok(Next::Continue);
            }
            return self.handle_numbered(el).await;
        }
        if el.is("starttls", ns::TLS) {
            return Ok(self.handle_starttls());
        }
        if self.tls_possible() && self.cfg.starttls_required {
            return Err(StreamError::with_text(
                SC::PolicyViolation,
                "STARTTLS is required",
            ));
        }
        if el.has_ns(super::sasl2::NS) {
            return Box::pin(self.handle_sasl2(el)).await;
        }
        if el.has_ns(ns::SASL) {
            if self.user.is_some() {
                return Err(StreamError::with_text(
                    SC::PolicyViolation,
                    "already authenticated",
                ));
            }
            let next = Box::pin(self.handle_sasl(el)).await;
            if let Some(delay) = self.auth_delay.take() {
                // A failure answered later (mod_fail2ban's growing delay).
                Box::pin(tokio::time::sleep(delay)).await;
            }
            return next;
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
            self.stream_mgmt_failed(Condition::UnexpectedRequest);
            return Ok(Next::Continue);
        }
        Err(StreamError::with_text(
            SC::NotAuthorized,
            "bind a resource first",
        ))
    }

    /// Number a stanza of a bound stream and handle it: work the router
    /// defers for it carries a ticket, which holds back its acknowledgement
    /// (XEP-0198) and the reading of further input (back-pressure).
    async fn handle_numbered(&mut self, el: Element) -> Result<Next, StreamError> {
        self.received += 1;
        let (tracker, seq) = (self.inflight.clone(), self.received);
        let next = crate::ack::scope(tracker, seq, self.handle_stanza(el)).await;
        self.answer_ready_acks();
        next
    }

    /// Whether the connection loop should read the client's next input.
    /// Not while a server-answered request waits for earlier stanzas' work,
    /// nor while [`MAX_INFLIGHT`] stanzas have work in flight — their own
    /// (storage, handlers) or deliveries still queued at slow recipients
    /// (see [`SessionMsg::Stanza`]). The loop keeps writing what is routed
    /// to the session meanwhile, so a client flooding itself drains.
    pub fn reading(&self) -> bool {
        self.held.is_none() && !(self.bound.is_some() && self.inflight.pending() >= MAX_INFLIGHT)
    }

    /// Whether an XEP-0198 acknowledgement waits for deferred work (so its
    /// progress matters to the connection loop even while reading).
    pub fn ack_pending(&self) -> bool {
        self.stream_mgmt
            .as_ref()
            .is_some_and(|mgmt| mgmt.ack_pending())
    }

    /// The deferred work of the session's stanzas (its `changed` resolves
    /// when some of it finished).
    pub fn inflight(&self) -> Arc<crate::ack::AckTracker> {
        self.inflight.clone()
    }

    /// Deferred work finished: answer acknowledgements that became ready and
    /// handle a held request once everything before it is done.
    pub async fn inflight_progress(&mut self) -> Result<Next, StreamError> {
        self.answer_ready_acks();
        if self.inflight.pending() == 0
            && let Some(el) = self.held.take()
        {
            return self.handle_numbered(el).await;
        }
        Ok(Next::Continue)
    }

    /// A stanza from the client on a bound stream.
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
        self.core.sent(&me, &st);
        self.core.route(st);
        Ok(Next::Continue)
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
        self.out.element(&el);
    }

    /// An IQ reply written by the server for the stream itself (its `inner`
    /// content written with `jabber:client` in scope).
    pub(super) fn iq_reply_raw(&mut self, id: Option<&str>, kind: &str, inner: &str) {
        self.out.element_with(|out, scope| {
            out.push_str("<iq");
            if scope != ns::CLIENT {
                out.push_str(" xmlns='jabber:client'");
            }
            out.push_str(" type='");
            out.push_str(kind);
            out.push('\'');
            if let Some(id) = id {
                out.push_str(" id='");
                escape_into(out, id);
                out.push('\'');
            }
            if inner.is_empty() {
                out.push_str("/>");
            } else {
                out.push('>');
                out.push_str(inner);
                out.push_str("</iq>");
            }
        });
    }

    pub(super) fn iq_error_raw(&mut self, id: Option<&str>, cond: Condition) {
        let err = StanzaError::new(cond).to_element(ns::CLIENT);
        let mut s = String::new();
        write_element(&mut s, &err, ns::CLIENT);
        self.iq_reply_raw(id, "error", &s);
    }

    /// Handle a message from the router or session manager.
    pub fn handle_msg(&mut self, msg: SessionMsg) -> Next {
        // A host no longer served: its sessions are told (`Kick`) by the reload.
        let _ = self.refresh_host();
        match msg {
            // The sender's ticket (if any) is let go once the stanza is written.
            SessionMsg::Stanza(st, _ticket) => self.deliver(*st),
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
            SessionMsg::Kick(cond, reason) => {
                self.stream_error(StreamError::with_text(cond, reason))
            }
        }
    }

    /// The connection ended: unbind, tell the user's other resources, contacts
    /// and directed-presence recipients, and run the session-closed hooks.
    pub fn finish(&mut self) {
        let unavailable = self.final_unavailable();
        let Some(mut b) = self.bound.take() else {
            return;
        };
        self.core.registry.unbind(&b.jid, b.id);
        // Stanzas still queued for this session were never written: like
        // unacknowledged ones, they go to the account again.
        b.rx.close();
        let mut pending = match self.stream_mgmt.take() {
            Some(mgmt) => {
                if let Some(r) = &mgmt.resume {
                    self.core.registry.remove_resumable(&r.id);
                }
                mgmt.unacked
            }
            None => Default::default(),
        };
        // Held back for an inactive client (XEP-0352): never written either.
        if let Some(held) = self.csi.take() {
            pending.extend(held.into_stanzas());
        }
        while let Ok(msg) = b.rx.try_recv() {
            if let SessionMsg::Stanza(st, _) = msg {
                pending.push_back(*st);
            }
        }
        self.reroute(pending);
        if let Some(st) = &unavailable {
            self.broadcast_final_unavailable(&b.jid, st);
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
