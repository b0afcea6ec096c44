//! Delivery to the client: stanzas routed to the session pass the
//! user-receive hooks and are written (kept until acknowledged when stream
//! management is on); when the session ends, what was never delivered or
//! acknowledged goes to the account again (XEP-0198 §4).

use super::session::{C2sSession, Next};
use crate::module::HookAction;
use crate::sessions::SessionMsg;
use jid::Jid;
use palaver_proto::error::{Condition, StreamError, StreamErrorCondition as SC};
use palaver_proto::stanza::{Stanza, StanzaKind};
use std::collections::VecDeque;

/// Queued stanzas written together after the first (one write per burst).
const BURST: usize = 64;

impl C2sSession {
    /// A stanza routed to the session: write it, and whatever else is
    /// queued, then ask for an acknowledgement.
    pub(super) fn deliver(&mut self, mut st: Stanza) -> Next {
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
        while n < BURST {
            let Some(b) = &mut self.bound else { break };
            match b.rx.try_recv() {
                Ok(SessionMsg::Stanza(st, _ticket)) => {
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
        match &self.stream_mgmt {
            Some(mgmt) if mgmt.unacked.len() > mgmt.max_queue => self.stream_error(
                StreamError::with_text(SC::PolicyViolation, "too many unacknowledged stanzas"),
            ),
            _ => Next::Continue,
        }
    }

    /// Write a stanza to the client (unless an inactive client's filter
    /// holds it back, `csi.rs`); with stream management, keep it until
    /// acknowledged.
    fn emit(&mut self, st: Stanza) {
        let Some(st) = self.csi_filter(st) else {
            return;
        };
        self.write_stanza(st);
    }

    /// Write a stanza now; with stream management, keep it until acknowledged.
    pub(super) fn write_stanza(&mut self, st: Stanza) {
        self.out.stanza(&st);
        if let Some(mgmt) = &mut self.stream_mgmt {
            mgmt.unacked.push_back(st);
        }
    }

    /// XEP-0198 §4: stanzas the client never acknowledged are not lost when
    /// the session ends: messages go to the account again (another resource,
    /// or offline storage), IQ requests are answered with an error.
    pub(super) fn reroute(&self, stanzas: VecDeque<Stanza>) {
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
}
