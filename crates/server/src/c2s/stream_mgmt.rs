//! XEP-0198 Stream Management on a c2s session: acknowledgements in both
//! directions and stream resumption.
//!
//! Inbound, `h` counts the client's stanzas that are *handled*: routed, and
//! where the router deferred work (offline storage, an IQ handler's database
//! write) that work finished — see [`crate::ack`]. So an `<a/>` from us means
//! the stanza survives a crash of the server.
//!
//! Outbound, every stanza written is kept until the client's `<a/>` covers
//! it; when the session ends, unacknowledged messages are routed again to the
//! account (another resource or offline storage) and unacknowledged IQ
//! requests are answered with an error, as XEP-0198 §4 asks.
//!
//! Resumption (§5): a session enabled with `resume='true'` that loses its
//! connection without a closing `</stream:stream>` stays bound, detached,
//! for `resume_timeout` seconds, queueing what is routed to it. A new
//! connection of the same account that sends `<resume previd='…'/>` after
//! authenticating takes the session over (its state moves to the new
//! connection's task through the session's resumption channel), and the
//! unacknowledged stanzas are sent again.
//!
//! This file holds the state ([`StreamMgmt`]) and the session's part of it:
//! `<enable/>`, `<r/>`/`<a/>`, `<resume/>`, the hand-over to a resuming
//! connection, and the detached wait of [`C2sSession::end`].

use super::session::{Bound, C2sSession, Next};
use crate::ack::AckTracker;
use crate::host::Host;
use crate::module::HookAction;
use crate::sessions::SessionMsg;
use minidom::Element;
use palaver_proto::error::{Condition, StreamError, StreamErrorCondition as SC};
use palaver_proto::stanza::Stanza;
use palaver_proto::writer::escape_into;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Namespace of XEP-0198 version 3.
pub const NS: &str = "urn:xmpp:sm:3";

/// Unanswered `<r/>`s remembered one by one.
const MAX_PENDING_REQUESTS: usize = 1024;

/// Per-host settings (from `mod_stream_mgmt`).
#[derive(Debug, Clone, Copy)]
pub struct StreamMgmtConfig {
    /// Most unacknowledged outbound stanzas before the stream is closed.
    pub max_ack_queue: usize,
    /// Seconds a lost session waits to be resumed (0: no resumption).
    pub resume_timeout: u64,
}

/// Stream management state of one session, once enabled.
pub(crate) struct StreamMgmt {
    /// The session's inbound stanza count when stream management was enabled
    /// (`h` counts from there).
    base: u64,
    /// Unanswered `<r/>`s, oldest first: the session's inbound stanza count
    /// when each came. The answer to one waits for their deferred work.
    ack_wanted: VecDeque<u64>,
    /// Outbound stanzas not yet acknowledged, oldest first.
    pub unacked: VecDeque<Stanza>,
    /// Outbound stanzas acknowledged so far.
    pub acked: u64,
    /// An `<r/>` of ours is unanswered.
    pub requested: bool,
    pub max_queue: usize,
    /// Resumption, when the client asked for it and the host allows it.
    pub resume: Option<Resumption>,
}

/// A resumable session's identity and the channel a new connection uses
/// to take it over.
pub(crate) struct Resumption {
    /// The SM-ID (`previd` of a later `<resume/>`).
    pub id: String,
    /// Seconds the session waits, detached, after losing its connection.
    pub timeout: u64,
    pub control: mpsc::Receiver<ResumeRequest>,
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
pub(crate) struct ResumeState {
    host: Option<Arc<Host>>,
    user: Option<String>,
    bound: Bound,
    stream_mgmt: Box<StreamMgmt>,
    inflight: Arc<AckTracker>,
    received: u64,
}

/// Why an `<a/>` from the client is refused.
pub(crate) enum AckError {
    /// Not a number.
    Malformed,
    /// More than was sent: (h, sent).
    TooHigh(u32, u32),
}

impl StreamMgmt {
    /// Enabled when the session had received `received` stanzas.
    pub fn new(cfg: StreamMgmtConfig, received: u64) -> Self {
        StreamMgmt {
            base: received,
            ack_wanted: VecDeque::new(),
            unacked: VecDeque::new(),
            acked: 0,
            requested: false,
            max_queue: cfg.max_ack_queue,
            resume: None,
        }
    }

    /// Whether an `<r/>` waits for its answer.
    pub fn ack_pending(&self) -> bool {
        !self.ack_wanted.is_empty()
    }

    /// The client sent `<r/>` after the session's `received`th stanza.
    pub fn ack_requested(&mut self, received: u64) {
        // Each request is answered as soon as what came before it is handled,
        // so acks keep flowing while storage lags behind a busy client.
        // Many unanswered requests share answers (the newest is kept).
        if self.ack_wanted.len() >= MAX_PENDING_REQUESTS {
            self.ack_wanted.pop_back();
        }
        self.ack_wanted.push_back(received);
    }

    /// The `h` answering every pending `<r/>` whose stanzas are all handled
    /// (one `<a/>` for all of them, counting what else is done).
    pub fn ack_ready(&mut self, inflight: &AckTracker, received: u64) -> Option<u32> {
        let first = *self.ack_wanted.front()?;
        let done = inflight.handled(received);
        if done < first {
            return None;
        }
        while self.ack_wanted.front().is_some_and(|w| *w <= done) {
            self.ack_wanted.pop_front();
        }
        Some(self.h_of(done))
    }

    /// The protocol's `h` for `handled` inbound stanzas of the session.
    pub fn h_of(&self, handled: u64) -> u32 {
        handled.saturating_sub(self.base) as u32
    }

    /// Outbound stanzas sent since enabling.
    pub fn sent(&self) -> u64 {
        self.acked + self.unacked.len() as u64
    }

    /// Apply the client's `<a h='…'/>` (also the `h` of a `<resume/>`).
    pub fn on_ack(&mut self, h: Option<&str>) -> Result<(), AckError> {
        let h: u32 = h
            .and_then(|v| v.trim().parse().ok())
            .ok_or(AckError::Malformed)?;
        // h counts modulo 2^32 (XEP-0198 §4).
        let newly = h.wrapping_sub(self.acked as u32) as u64;
        if newly > self.unacked.len() as u64 {
            return Err(AckError::TooHigh(h, self.sent() as u32));
        }
        self.unacked.drain(..newly as usize);
        self.acked += newly;
        self.requested = false;
        Ok(())
    }
}

impl C2sSession {
    /// The host's XEP-0198 settings, when `mod_stream_mgmt` is enabled.
    pub(super) fn stream_mgmt_config(&self) -> Option<StreamMgmtConfig> {
        self.host.as_ref().and_then(|h| h.regs.stream_mgmt)
    }

    pub(super) fn stream_mgmt_failed(&mut self, cond: Condition) {
        self.out.element_with(|out, _| {
            out.push_str("<failed xmlns='urn:xmpp:sm:3'><");
            out.push_str(cond.name());
            out.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>");
        });
    }

    /// `<resume previd='…' h='…'/>` after authentication (XEP-0198 §5): take
    /// over the account's detached (or still connected) session, then send
    /// again what the client has not acknowledged.
    pub(super) async fn handle_resume(&mut self, el: &Element) {
        let (Some(user), Some(host)) = (self.user.clone(), self.host.clone()) else {
            self.stream_mgmt_failed(Condition::UnexpectedRequest);
            return;
        };
        let bare = format!("{user}@{}", host.name);
        let previd = el.attr("previd").unwrap_or_default();
        let Some(tx) = self.core.registry.resumable(previd, &bare) else {
            self.stream_mgmt_failed(Condition::ItemNotFound);
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
            self.stream_mgmt_failed(Condition::ItemNotFound);
            return;
        };
        self.host = state.host;
        // That host may predate this connection: look it up again.
        self.host_gen = super::session::STALE_HOST;
        self.user = state.user;
        self.core
            .registry
            .set_detached(&state.bound.jid, state.bound.id, false);
        let since = self
            .core
            .registry
            .get(&state.bound.jid)
            .filter(|h| h.id == state.bound.id)
            .map_or_else(std::time::SystemTime::now, |h| h.conn.since);
        self.core
            .registry
            .set_connection(&state.bound.jid, state.bound.id, self.connection(since));
        self.bound = Some(state.bound);
        self.inflight = state.inflight;
        self.received = state.received;
        let mut mgmt = state.stream_mgmt;
        if el.attr("h").is_some() && mgmt.on_ack(el.attr("h")).is_err() {
            // An impossible count: resume, but send everything again.
            tracing::debug!(peer = %self.peer, "resume with a bad h");
        }
        let handled = self.inflight.handled(self.received);
        let h = mgmt.h_of(handled);
        self.out.element_with(|out, _| {
            out.push_str("<resumed xmlns='urn:xmpp:sm:3' previd='");
            escape_into(out, previd);
            out.push_str("' h='");
            out.push_str(&h.to_string());
            out.push_str("'/>");
        });
        for st in &mgmt.unacked {
            self.out.stanza(st);
        }
        mgmt.requested = false;
        self.stream_mgmt = Some(mgmt);
        self.request_ack();
        tracing::debug!(peer = %self.peer, "stream resumed");
    }

    /// Hand the session's state to a connection resuming it.
    pub(super) fn hand_over(&mut self, req: ResumeRequest) {
        let (Some(bound), Some(stream_mgmt)) = (self.bound.take(), self.stream_mgmt.take()) else {
            return;
        };
        let state = ResumeState {
            host: self.host.clone(),
            user: self.user.clone(),
            bound,
            stream_mgmt,
            inflight: self.inflight.clone(),
            received: self.received,
        };
        if let Err(state) = req.reply.send(state) {
            // The new connection gave up meanwhile: keep the session.
            self.bound = Some(state.bound);
            self.stream_mgmt = Some(state.stream_mgmt);
        }
    }

    /// Answer the pending `<r/>`s whose stanzas are all handled, if any.
    pub(super) fn answer_ready_acks(&mut self) {
        let (inflight, received) = (&self.inflight, self.received);
        if let Some(h) = self
            .stream_mgmt
            .as_mut()
            .and_then(|mgmt| mgmt.ack_ready(inflight, received))
        {
            self.write_ack(h);
        }
    }

    fn write_ack(&mut self, h: u32) {
        self.out.element_with(|out, _| {
            out.push_str("<a xmlns='urn:xmpp:sm:3' h='");
            out.push_str(&h.to_string());
            out.push_str("'/>");
        });
    }

    /// Ask the client to acknowledge what was written (one `<r/>` outstanding).
    pub(super) fn request_ack(&mut self) {
        if let Some(mgmt) = &mut self.stream_mgmt
            && !mgmt.requested
            && !mgmt.unacked.is_empty()
        {
            mgmt.requested = true;
            self.out.raw("<r xmlns='urn:xmpp:sm:3'/>");
        }
    }

    /// A XEP-0198 element on a bound stream.
    pub(super) fn handle_stream_mgmt(&mut self, el: Element) -> Result<Next, StreamError> {
        match (el.name(), &mut self.stream_mgmt) {
            ("enable", None) => match self.stream_mgmt_config() {
                Some(cfg) => {
                    let mut mgmt = StreamMgmt::new(cfg, self.received);
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
                                .registry
                                .add_resumable(&id, b.jid.to_bare().as_str(), tx);
                        }
                        self.out.element_with(|out, _| {
                            out.push_str("<enabled xmlns='urn:xmpp:sm:3' id='");
                            out.push_str(&id);
                            out.push_str("' resume='true' max='");
                            out.push_str(&timeout.to_string());
                            out.push_str("'/>");
                        });
                        mgmt.resume = Some(Resumption {
                            id,
                            timeout,
                            control: rx,
                        });
                    } else {
                        self.out.raw("<enabled xmlns='urn:xmpp:sm:3'/>");
                    }
                    self.stream_mgmt = Some(Box::new(mgmt));
                }
                None => self.stream_mgmt_failed(Condition::FeatureNotImplemented),
            },
            ("enable", Some(_)) => self.stream_mgmt_failed(Condition::UnexpectedRequest),
            ("resume", _) => self.stream_mgmt_failed(Condition::UnexpectedRequest),
            ("r", Some(mgmt)) => {
                mgmt.ack_requested(self.received);
                self.answer_ready_acks();
            }
            ("a", Some(mgmt)) => match mgmt.on_ack(el.attr("h")) {
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

    /// The connection ended. A resumable session that lost its connection
    /// waits, detached, to be resumed; otherwise (and when the wait is over)
    /// it is finished.
    pub async fn end(&mut self) {
        let timeout = match self.stream_mgmt.as_deref() {
            Some(StreamMgmt {
                resume: Some(r), ..
            }) if self.resumable_end && self.bound.is_some() => r.timeout,
            _ => {
                self.finish();
                return;
            }
        };
        // Held back for an inactive client (XEP-0352): sent on resumption.
        if let (Some(held), Some(mgmt)) = (self.csi.take(), self.stream_mgmt.as_mut()) {
            mgmt.unacked.extend(held.into_stanzas());
        }
        if let Some(b) = &self.bound {
            self.core.registry.set_detached(&b.jid, b.id, true);
        }
        // What the client may not have received: a push module may wake it.
        if let (Some(host), Some(b), Some(mgmt)) = (
            self.host.clone(),
            self.bound.as_ref(),
            self.stream_mgmt.as_deref(),
        ) && !mgmt.unacked.is_empty()
            && host.hooks().has::<crate::hooks::SessionPending>()
        {
            let mut pending = crate::hooks::PendingStanzas {
                unacked: mgmt.unacked.iter().cloned().collect(),
            };
            self.core
                .cx(&host)
                .run_hook::<crate::hooks::SessionPending>(Some(&b.jid), &mut pending);
        }
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
                }) = self.stream_mgmt.as_deref_mut()
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
                Event::Msg(Some(SessionMsg::Stanza(st, _ticket))) => {
                    let mut st = *st;
                    let Some(me) = self.bound.as_ref().map(|b| b.jid.clone()) else {
                        break;
                    };
                    if self.core.run_user_receive(&me, &mut st) != HookAction::Drop
                        && let Some(mgmt) = &mut self.stream_mgmt
                    {
                        mgmt.unacked.push_back(st);
                        if mgmt.unacked.len() > mgmt.max_queue {
                            break;
                        }
                    }
                }
                Event::Msg(Some(SessionMsg::Resume(req))) | Event::Resume(req) => {
                    self.hand_over(req)
                }
                Event::Msg(Some(SessionMsg::Replaced | SessionMsg::Kick(..)) | None) => break,
                Event::Over => break,
            }
        }
        self.finish();
    }
}
