//! XEP-0198 Stream Management on a c2s session: acknowledgements in both
//! directions (no resumption).
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

use crate::ack::AckTracker;
use palaver_proto::stanza::Stanza;
use std::collections::VecDeque;
use std::sync::Arc;

/// Namespace of XEP-0198 version 3.
pub const NS: &str = "urn:xmpp:sm:3";

/// Per-host settings (from `mod_stream_mgmt`).
#[derive(Debug, Clone, Copy)]
pub struct StreamMgmtConfig {
    /// Most unacknowledged outbound stanzas before the stream is closed.
    pub max_ack_queue: usize,
}

/// Stream management state of one session, once enabled.
pub(crate) struct StreamMgmt {
    pub tracker: Arc<AckTracker>,
    /// Inbound stanzas received since enabling.
    pub received: u64,
    /// The client asked (`<r/>`) when this many stanzas had been received,
    /// and is waiting for their deferred work.
    pub ack_wanted: Option<u64>,
    /// Outbound stanzas not yet acknowledged, oldest first.
    pub unacked: VecDeque<Stanza>,
    /// Outbound stanzas acknowledged so far.
    pub acked: u64,
    /// An `<r/>` of ours is unanswered.
    pub requested: bool,
    pub max_queue: usize,
}

/// Why an `<a/>` from the client is refused.
pub(crate) enum AckError {
    /// Not a number.
    Malformed,
    /// More than was sent: (h, sent).
    TooHigh(u32, u32),
}

impl StreamMgmt {
    pub fn new(cfg: StreamMgmtConfig) -> Self {
        StreamMgmt {
            tracker: AckTracker::new(),
            received: 0,
            ack_wanted: None,
            unacked: VecDeque::new(),
            acked: 0,
            requested: false,
            max_queue: cfg.max_ack_queue,
        }
    }

    /// The `h` to answer a pending `<r/>` with, once every stanza received
    /// before it is handled (later ones may be included when done too).
    pub fn ack_ready(&mut self) -> Option<u32> {
        let wanted = self.ack_wanted?;
        let done = self.tracker.handled(self.received);
        if done < wanted {
            return None;
        }
        self.ack_wanted = None;
        Some(done as u32)
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
