//! Presence from the client (RFC 6121 §4): broadcast presence to the user's
//! resources and (through the presence hooks) contacts, directed presence
//! and its bookkeeping, subscriptions going out, and the unavailable
//! presence of a session that ends.

use super::session::C2sSession;
use super::session::Next;
use crate::module::{HookAction, PresenceEvent};
use jid::{FullJid, Jid};
use minidom::Element;
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use std::sync::Arc;

impl C2sSession {
    pub(super) async fn handle_presence(&mut self, me: FullJid, mut st: Stanza) -> Next {
        let kind = st.type_attr().map(str::to_string);
        if st.to.is_none() {
            // Broadcast presence (RFC 6121 §4.2, §4.4, §4.5).
            let event = match kind.as_deref() {
                None => {
                    let prio = st
                        .el()
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
                    self.core.registry.set_presence(
                        &b.jid,
                        b.id,
                        Some((prio, Arc::new(st.to_element()))),
                    );
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
                    self.core.registry.set_presence(&b.jid, b.id, None);
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
                st = Stanza::new(st.kind, bare, st.to.clone(), st.into_element());
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
        for h in self.core.registry.sessions(&bare) {
            if (h.priority.is_some() || h.id == my_id)
                && let Ok(to) = bare.with_resource_str(&h.resource)
            {
                let mut copy = st.clone();
                copy.set_to(Some(Jid::from(to)));
                self.core.route(copy);
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

    /// A session that ends while available: its unavailable presence (after
    /// the user-send hooks), already sent to directed-presence recipients.
    pub(super) fn final_unavailable(&mut self) -> Option<Stanza> {
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
        unavailable
    }

    /// The final unavailable presence of `me`, now unbound, to the user's
    /// available resources.
    pub(super) fn broadcast_final_unavailable(&self, me: &FullJid, st: &Stanza) {
        let bare = me.to_bare();
        for h in self.core.registry.sessions(&bare) {
            if h.priority.is_some()
                && let Ok(to) = bare.with_resource_str(&h.resource)
            {
                let mut copy = st.clone();
                copy.set_to(Some(Jid::from(to)));
                self.core.route(copy);
            }
        }
    }
}
