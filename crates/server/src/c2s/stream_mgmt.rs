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

use crate::ack::AckTracker;
use palaver_proto::stanza::Stanza;
use std::collections::VecDeque;

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
    pub control: tokio::sync::mpsc::Receiver<super::ResumeRequest>,
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
