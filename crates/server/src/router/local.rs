//! Delivery to a virtual host served here: RFC 6120 §10.5 and RFC 6121 §8.5.
//!
//! - to the host itself (`example.org`, `example.org/res`): IQs to the
//!   server's handlers, messages to the [`HostMessage`](crate::hooks::HostMessage) hooks;
//! - to a full JID: that session; if none, the bare-JID rules for messages
//!   and subscription presence, `service-unavailable` for IQ requests,
//!   nothing for other presence (§8.5.3.2);
//! - to a bare JID: IQs answered by the server on the account's behalf;
//!   subscription presence and probes to the [`PresenceIn`](crate::hooks::PresenceIn) hooks,
//!   one transition of the account at a time; other presence to every
//!   available resource; messages to the most available resource(s) by
//!   type (§8.5.2.1), or — with none available — to the
//!   [`OfflineMessage`](crate::hooks::OfflineMessage) hooks in arrival order per
//!   account, after checking that the account exists (§8.5.1, §8.5.2.2).
//!
//! A session whose queue is full is a slow reader: the sender gets
//! `resource-constraint` instead of losing the stanza silently.

use crate::core::Core;
use crate::hooks::{self, HookAction};
use crate::host::Host;
use crate::module::IqScope;
use crate::sessions::{DeliverError, SessionHandle, SessionManager, SessionMsg};
use jid::{BareJid, FullJid};
use palaver_proto::error::Condition;
use palaver_proto::stanza::{Stanza, StanzaKind};
use std::sync::Arc;
use std::time::Duration;

/// Longest a [`Core::deliver_waiting`] waits for room in a session's queue.
const DELIVER_WAIT: Duration = Duration::from_secs(30);

/// Route a stanza addressed to a JID of `host`.
pub(crate) fn route(core: &Arc<Core>, host: Arc<Host>, st: Stanza) {
    let Some(to) = st.to.clone() else {
        return;
    };
    if to.node().is_none() {
        to_host(core, host, st);
        return;
    }
    let mut st = st;
    if st.kind == StanzaKind::Message
        && host.hooks().has::<hooks::MessageIn>()
        && core.cx(&host).run_hook::<hooks::MessageIn>(None, &mut st) == HookAction::Drop
    {
        return;
    }
    match to.try_as_full() {
        Ok(full) => to_full(core, host, full.clone(), st),
        Err(bare) => to_bare(core, host, bare.clone(), st),
    }
}

fn to_host(core: &Arc<Core>, host: Arc<Host>, st: Stanza) {
    match st.kind {
        StanzaKind::Iq => core.dispatch_iq(host, IqScope::Server, st),
        StanzaKind::Message => {
            if st.is_error() {
                return;
            }
            let cx = core.cx(&host);
            cx.clone().spawn(async move {
                if cx.run_hook_async::<hooks::HostMessage>(st.clone()).await == HookAction::Drop {
                    return;
                }
                if !matches!(st.type_attr(), Some("headline") | Some("groupchat")) {
                    cx.bounce(&st, Condition::ServiceUnavailable, None);
                }
            });
        }
        // Presence to the server itself has no meaning without modules.
        StanzaKind::Presence => {}
    }
}

fn deliver(core: &Arc<Core>, handle: &SessionHandle, st: Stanza) {
    if let Err((err, st)) = SessionManager::deliver(handle, st) {
        match err {
            DeliverError::Full => {
                tracing::warn!(resource = %handle.resource, "session queue full; bouncing stanza");
                core.bounce(&st, Condition::ResourceConstraint, None);
            }
            // The session just ended: treat as if no resource were available.
            DeliverError::Gone | DeliverError::NoSession => {
                if let Some(host) = st.to.as_ref().and_then(|t| core.host(t.domain().as_str())) {
                    no_session(core, host, *st);
                }
            }
        }
    }
}

fn to_full(core: &Arc<Core>, host: Arc<Host>, to: FullJid, st: Stanza) {
    let st = match core.registry.deliver_full(&to, st) {
        Ok(()) => return,
        Err((DeliverError::NoSession, st)) => *st,
        Err((DeliverError::Full, st)) => {
            tracing::warn!(to = %to, "session queue full; bouncing stanza");
            core.bounce(&st, Condition::ResourceConstraint, None);
            return;
        }
        Err((DeliverError::Gone, st)) => *st,
    };
    // RFC 6121 §8.5.3.2: no such resource.
    match st.kind {
        StanzaKind::Message => match st.type_attr() {
            Some("error") => {}
            Some("groupchat") => core.bounce(&st, Condition::ServiceUnavailable, None),
            Some("headline") => {}
            _ => to_bare(core, host, to.to_bare(), st),
        },
        // A request gets an error; a result or error is never answered
        // (RFC 6120 §8.2.3, §8.3.1).
        StanzaKind::Iq if matches!(st.type_attr(), Some("get" | "set")) => {
            core.bounce(&st, Condition::ServiceUnavailable, None)
        }
        StanzaKind::Iq => {}
        StanzaKind::Presence => match st.type_attr() {
            Some("subscribe") | Some("subscribed") | Some("unsubscribe") | Some("unsubscribed") => {
                to_bare(core, host, to.to_bare(), st)
            }
            _ => {}
        },
    }
}

/// A copy of `st` to every available resource of `to`.
fn to_available(core: &Arc<Core>, to: &BareJid, st: &Stanza) {
    for h in core.registry.sessions(to) {
        if h.priority.is_some() {
            deliver(core, &h, st.clone());
        }
    }
}

fn to_bare(core: &Arc<Core>, host: Arc<Host>, to: BareJid, st: Stanza) {
    match st.kind {
        StanzaKind::Iq => core.dispatch_iq(host, IqScope::Account, st),
        StanzaKind::Presence => {
            if matches!(
                st.type_attr(),
                Some("subscribe")
                    | Some("subscribed")
                    | Some("unsubscribe")
                    | Some("unsubscribed")
                    | Some("probe")
            ) {
                // Subscription management and probes are answered by the
                // server (RFC 6121 §3, §4.3), one transition of the account
                // at a time.
                let key = to.to_string();
                let target = to.clone();
                let cx = core.cx(&host);
                let ticket = cx.ticket();
                let refused = st.clone();
                let job = crate::ack::with_ticket(ticket, async move {
                    let taken = cx.run_hook_async::<hooks::PresenceIn>(st.clone()).await;
                    if taken == HookAction::Continue && st.type_attr() != Some("probe") {
                        // No module keeps subscriptions: the user's clients decide.
                        to_available(&cx.core, &target, &st);
                    }
                });
                if core.serial.try_run(&key, job).is_err() {
                    tracing::warn!(to = %key, "subscription queue full; bouncing presence");
                    core.bounce(&refused, Condition::ResourceConstraint, None);
                }
                return;
            }
            // Presence to a bare JID goes to every available resource (RFC 6121 §8.5.2.1.2).
            to_available(core, &to, &st);
        }
        StanzaKind::Message => {
            let sessions = core.registry.sessions(&to);
            let top = sessions
                .iter()
                .filter_map(|h| h.priority)
                .filter(|p| *p >= 0)
                .max();
            let Some(top) = top else {
                no_session(core, host, st);
                return;
            };
            match st.type_attr() {
                Some("error") => {}
                Some("groupchat") => core.bounce(&st, Condition::ServiceUnavailable, None),
                Some("headline") => {
                    for h in sessions
                        .iter()
                        .filter(|h| h.priority.is_some_and(|p| p >= 0))
                    {
                        deliver(core, h, st.clone());
                    }
                }
                Some("chat") => {
                    let targets: Vec<&SessionHandle> = sessions
                        .iter()
                        .filter(|h| h.priority == Some(top))
                        .collect();
                    let n = targets.len();
                    for (i, h) in targets.into_iter().enumerate() {
                        if i + 1 == n {
                            deliver(core, h, st);
                            break;
                        }
                        deliver(core, h, st.clone());
                    }
                }
                _ => {
                    // normal: the most available resource.
                    if let Some(h) = sessions.iter().find(|h| h.priority == Some(top)) {
                        deliver(core, h, st);
                    }
                }
            }
        }
    }
}

/// A message for a user with no available resource (RFC 6121 §8.5.2.2):
/// in arrival order per account, an unknown account gets
/// `service-unavailable` (§8.5.1), then the offline hooks; without a taker,
/// `service-unavailable` (headline messages are dropped, groupchat ones
/// bounced).
fn no_session(core: &Arc<Core>, host: Arc<Host>, st: Stanza) {
    if st.kind != StanzaKind::Message || st.is_error() {
        return;
    }
    let Some(to) = st.to.as_ref().map(|t| t.to_bare()) else {
        return;
    };
    let cx = core.cx(&host);
    let ticket = cx.ticket();
    let job_cx = cx.clone();
    let job_st = st.clone();
    let job = crate::ack::with_ticket(ticket, async move {
        let (cx, st) = (job_cx, job_st);
        let exists = match &to.node() {
            Some(node) => {
                cx.storage()
                    .accounts
                    .account_exists(to.domain().as_str(), node.as_str())
                    .await
            }
            None => Ok(false),
        };
        match exists {
            Ok(true) => {}
            Ok(false) => {
                cx.bounce(&st, Condition::ServiceUnavailable, None);
                return;
            }
            Err(e) => {
                let err = crate::module::storage_failure("account lookup", &e);
                cx.bounce_with(&st, err, None);
                return;
            }
        }
        match st.type_attr() {
            Some("headline") => return,
            // RFC 6121 §8.5.2.2.1: groupchat to an account without an
            // available resource gets an error, not silence.
            Some("groupchat") => {
                cx.bounce(&st, Condition::ServiceUnavailable, None);
                return;
            }
            _ => {}
        }
        if cx.run_hook_async::<hooks::OfflineMessage>(st.clone()).await == HookAction::Drop {
            return;
        }
        cx.bounce(&st, Condition::ServiceUnavailable, None);
    });
    let key = st
        .to
        .as_ref()
        .map(|t| t.to_bare().to_string())
        .unwrap_or_default();
    if core.serial.try_run(&key, job).is_err() {
        tracing::warn!("offline queue full; bouncing message");
        core.bounce(&st, Condition::ResourceConstraint, None);
    }
}

/// A stanza [`Core::try_deliver`] could not hand to a session.
#[derive(Debug)]
pub enum Undelivered {
    /// The session's queue is full (try again, or wait).
    Full(Box<Stanza>),
    /// No session is bound to that full JID (or it is not local).
    NoSession(Box<Stanza>),
}

impl Core {
    /// Deliver `st` to the session bound as `session`, whatever the stanza's
    /// own `to` (a subscription request addressed to the bare JID, handed to
    /// each available resource). Nothing happens when no such session is
    /// bound; a full queue bounces it with `resource-constraint`.
    pub fn deliver_to(self: &Arc<Self>, session: &FullJid, st: Stanza) {
        if let Some(h) = self.registry.get(session) {
            deliver(self, &h, st);
        }
    }

    /// Deliver a stanza to a local full JID now if its session's queue has
    /// room; otherwise give it back and say why (nothing is bounced).
    pub(crate) fn try_deliver(self: &Arc<Self>, st: Stanza) -> Result<(), Undelivered> {
        let full = match st.to.as_ref().map(|t| t.try_as_full()) {
            Some(Ok(full)) => full.clone(),
            _ => return Err(Undelivered::NoSession(Box::new(st))),
        };
        match self.registry.deliver_full(&full, st) {
            Ok(()) => Ok(()),
            Err((DeliverError::Full, st)) => Err(Undelivered::Full(st)),
            Err((_, st)) => Err(Undelivered::NoSession(st)),
        }
    }

    /// Deliver a stanza to a local full JID, waiting (bounded) for room in
    /// the session's queue; `Err` gives it back when there is no such
    /// session or it stays full. Other addressees are routed normally.
    pub(crate) async fn deliver_waiting(self: &Arc<Self>, st: Stanza) -> Result<(), Stanza> {
        let full = match st.to.as_ref().map(|t| t.try_as_full()) {
            Some(Ok(full)) if self.is_local(full.domain().as_str()) => full.clone(),
            _ => {
                self.route(st);
                return Ok(());
            }
        };
        let Some(h) = self.registry.get(&full) else {
            return Err(st);
        };
        match tokio::time::timeout(DELIVER_WAIT, h.tx.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(SessionMsg::Stanza(Box::new(st), None));
                Ok(())
            }
            // The session ended, or stayed full.
            Ok(Err(_)) | Err(_) => Err(st),
        }
    }
}
