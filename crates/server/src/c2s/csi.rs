//! XEP-0352 Client State Indication on a c2s session: the kernel's part.
//!
//! The client says `<inactive/>` (a phone screen off) or `<active/>`. What
//! to hold back is the module's policy (`mod_client_state`, through the
//! [`ClientStateChanged`] and [`CsiFilter`] hooks); this file only keeps
//! the held stanzas, in order, and writes them:
//!
//! - before the next stanza the filter lets through (a message with a body,
//!   an IQ), so the client sees everything in the order it was routed;
//! - all at once when the client becomes active, or when more than the
//!   module's bound wait;
//! - never lost: when the session detaches or ends they join the
//!   unacknowledged stanzas (sent again on resumption, or routed to the
//!   account again, as XEP-0198 §4 does for what a client never
//!   acknowledged).
//!
//! Without a module handling the hooks, `<active/>`/`<inactive/>` get the
//! `unsupported-stanza-type` stream error any unknown element gets.

use super::session::{C2sSession, Next};
use crate::hooks::{ClientState, ClientStateChanged, CsiFilter, HeldStanza};
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::stanza::Stanza;
use std::collections::VecDeque;

/// Namespace of XEP-0352.
pub const NS: &str = "urn:xmpp:csi:0";

/// Stanzas held back while the client is inactive.
pub(crate) struct Held {
    /// (key, stanza), oldest first.
    queue: VecDeque<(Option<String>, Stanza)>,
    max: usize,
}

impl Held {
    /// The held stanzas, oldest first.
    pub(crate) fn into_stanzas(self) -> impl Iterator<Item = Stanza> {
        self.queue.into_iter().map(|(_, st)| st)
    }
}

impl C2sSession {
    /// `<active/>` or `<inactive/>` (a nonza: not counted by XEP-0198).
    pub(super) fn handle_csi(&mut self, el: &Element) -> Result<Next, StreamError> {
        let active = match el.name() {
            "active" => true,
            "inactive" => false,
            other => {
                return Err(StreamError::with_text(
                    SC::UnsupportedStanzaType,
                    format!("<{other}/> is not supported"),
                ));
            }
        };
        let (Some(host), Some(b)) = (self.host.clone(), self.bound.as_ref()) else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        let jid = b.jid.clone();
        let id = b.id;
        let mut state = ClientState {
            active,
            accepted: false,
            max_held: 0,
        };
        if host.hooks().has::<ClientStateChanged>() {
            self.core
                .cx(&host)
                .run_hook::<ClientStateChanged>(Some(&jid), &mut state);
        }
        if !state.accepted {
            return Err(StreamError::with_text(
                SC::UnsupportedStanzaType,
                "client state indication is not supported",
            ));
        }
        if active {
            self.csi_flush();
            self.request_ack();
            self.core.registry.set_inactive(&jid, id, None);
        } else {
            if self.csi.is_none() {
                self.core
                    .registry
                    .set_inactive(&jid, id, Some(std::time::SystemTime::now()));
            }
            let held = self.csi.get_or_insert_with(|| {
                Box::new(Held {
                    queue: VecDeque::new(),
                    max: 0,
                })
            });
            held.max = state.max_held.max(1);
        }
        Ok(Next::Continue)
    }

    /// The client is active again: write everything held back, oldest first.
    fn csi_flush(&mut self) {
        if let Some(held) = self.csi.take() {
            for st in held.into_stanzas() {
                self.write_stanza(st);
            }
        }
    }

    /// A stanza for the client: `None` when it was held back; otherwise
    /// what is held was written first and the stanza is to be written now.
    pub(super) fn csi_filter(&mut self, st: Stanza) -> Option<Stanza> {
        if self.csi.is_none() {
            return Some(st);
        }
        let (Some(host), Some(b)) = (self.host.clone(), self.bound.as_ref()) else {
            return Some(st);
        };
        let jid = b.jid.clone();
        let mut arg = HeldStanza {
            stanza: st,
            hold: None,
        };
        self.core
            .cx(&host)
            .run_hook::<CsiFilter>(Some(&jid), &mut arg);
        let HeldStanza { stanza, hold } = arg;
        let Some(held) = self.csi.as_mut() else {
            return Some(stanza);
        };
        match hold {
            Some(key) => {
                let key = (!key.is_empty()).then_some(key);
                if let Some(k) = &key
                    && let Some(pos) = held.queue.iter().position(|(h, _)| h.as_ref() == Some(k))
                {
                    held.queue.remove(pos);
                }
                held.queue.push_back((key, stanza));
                if held.queue.len() > held.max {
                    let queue = std::mem::take(&mut held.queue);
                    for (_, st) in queue {
                        self.write_stanza(st);
                    }
                }
                None
            }
            None => {
                let queue = std::mem::take(&mut held.queue);
                for (_, st) in queue {
                    self.write_stanza(st);
                }
                Some(stanza)
            }
        }
    }
}
