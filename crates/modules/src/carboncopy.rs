//! XEP-0280 Message Carbons (`urn:xmpp:carbons:2`).
//!
//! Each resource enables or disables carbons for itself (an IQ to its own
//! account); the set of enabled resources is kept in memory and a resource
//! leaves it when its session closes. Copies are ordinary stanzas given to
//! the router, addressed to the other enabled resources' full JIDs, so they
//! reach every transport (TCP, WebSocket, BOSH) and detached sessions alike.
//!
//! - **Sent** copies (§6): a message a resource sends (user-send hook) is
//!   copied, wrapped in `<sent><forwarded/></sent>`, to every other enabled
//!   resource of the account.
//! - **Received** copies (§5): when a message is written to one resource of
//!   the account (user-receive hook), the other enabled resources that did
//!   not get it from the router get `<received><forwarded/></received>`. A
//!   message addressed to the bare JID was delivered by RFC 6121 rules to
//!   the most available resource(s); only the first of those (by resource
//!   name) makes the copies, for the enabled resources the router skipped.
//!
//! Eligibility (§6.1 of version 1.0): not `groupchat`, `headline`, or
//! marked `<private/>` (XEP-0280) / `<no-copy/>` (XEP-0334); `chat`, errors,
//! and `normal` messages with a body or the usual IM payloads (chat
//! states, receipts, markers) are copied. Private messages received from a
//! MUC occupant (`<x xmlns='http://jabber.org/protocol/muc#user'/>`) are
//! not copied to the other resources (they are not in the room). The
//! `<private/>` element is removed before the message is routed (§7).

use dashmap::DashMap;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::{Bind2Inline, RemoveUser, SessionClosed, UserReceive, UserSend};
use palaver_server::{
    HookAction, HookCx, HostSetup, IqScope, IqType, Module, ModuleDef, NoOptions,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Namespace of XEP-0280.
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0297 forwarding.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 hints.
const NS_HINTS: &str = "urn:xmpp:hints";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// IM payloads that make a `normal` message without a body eligible.
const IM_PAYLOADS: &[&str] = &[
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:receipts",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:message-correct:0",
    "urn:xmpp:reactions:0",
    "urn:xmpp:message-retract:1",
];

/// `mod_carboncopy`.
pub struct Carbons;

/// `mod_carboncopy` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Carbons>();

/// Bare JID → resources with carbons enabled.
type Enabled = DashMap<String, BTreeSet<String>>;

impl Module for Carbons {
    const NAME: &'static str = "mod_carboncopy";
    type Options = NoOptions;

    fn start(host: &mut HostSetup, _o: NoOptions) -> Result<Self, String> {
        let enabled: Arc<Enabled> = Arc::new(DashMap::new());
        host.add_feature(NS_CARBONS);
        let e = enabled.clone();
        host.on_iq(IqScope::Account, IqType::Set, NS_CARBONS, move |req| {
            let e = e.clone();
            async move {
                req.own_account()?;
                let Ok(me) = req.stanza.from.try_as_full().cloned() else {
                    return Err(palaver_proto::error::StanzaError::new(
                        palaver_proto::error::Condition::BadRequest,
                    ));
                };
                match req.payload().map(|p| p.name()) {
                    Some("enable") => set(&e, &me, true),
                    Some("disable") => set(&e, &me, false),
                    _ => {
                        return Err(palaver_proto::error::StanzaError::new(
                            palaver_proto::error::Condition::BadRequest,
                        ));
                    }
                }
                Ok(None)
            }
        });
        // XEP-0386: `<enable xmlns='urn:xmpp:carbons:2'/>` while binding.
        host.add_bind2_feature(NS_CARBONS);
        let e = enabled.clone();
        host.hook::<Bind2Inline>(0, move |cx, req| {
            if let Some(me) = cx.session()
                && req.requests.iter().any(|r| r.is("enable", NS_CARBONS))
            {
                set(&e, me, true);
            }
            HookAction::Continue
        });
        let e = enabled.clone();
        host.hook_async::<SessionClosed, _>(50, move |_cx, jid| {
            set(&e, &jid, false);
            async { HookAction::Continue }
        });
        let e = enabled.clone();
        host.hook_async::<RemoveUser, _>(50, move |_cx, a| {
            e.remove(&a.jid());
            async { HookAction::Continue }
        });
        // Low priority: after blocking and the other filters decided.
        let e = enabled.clone();
        host.hook::<UserSend>(-50, move |cx, st| {
            sent(&e, cx, st);
            HookAction::Continue
        });
        let e = enabled;
        host.hook::<UserReceive>(-50, move |cx, st| {
            received(&e, cx, st);
            HookAction::Continue
        });
        Ok(Carbons)
    }
}

fn set(enabled: &Enabled, me: &FullJid, on: bool) {
    let bare = me.to_bare().to_string();
    let res = me.resource().as_str().to_string();
    if on {
        enabled.entry(bare).or_default().insert(res);
    } else {
        if let Some(mut e) = enabled.get_mut(&bare) {
            e.remove(&res);
        }
        enabled.remove_if(&bare, |_, v| v.is_empty());
    }
}

/// Whether a message may be copied (XEP-0280 §6.1).
pub fn eligible(st: &Stanza) -> bool {
    if st.kind != StanzaKind::Message {
        return false;
    }
    let el = st.el();
    if el.has_child("private", NS_CARBONS)
        || el.has_child("no-copy", NS_HINTS)
        || el.has_child("received", NS_CARBONS)
        || el.has_child("sent", NS_CARBONS)
    {
        return false;
    }
    match st.type_attr() {
        Some("groupchat") | Some("headline") => false,
        Some("chat") | Some("error") => true,
        _ => {
            el.has_child("body", ns::CLIENT)
                || el
                    .children()
                    .any(|c| IM_PAYLOADS.contains(&c.ns().as_str()))
        }
    }
}

/// The copy for `to`: `<message from=bare to=full type=…><{kind}><forwarded>original`.
fn wrap(kind: &str, me: &BareJid, to: &FullJid, st: &Stanza) -> Stanza {
    let mut el = Element::bare("message", ns::CLIENT);
    if let Some(t) = st.type_attr() {
        set_attr(&mut el, "type", t.to_string());
    }
    let mut fwd = Element::bare("forwarded", NS_FORWARD);
    let mut inner = st.to_element();
    set_attr(&mut inner, "from", st.from.to_string());
    fwd.append_child(inner);
    let mut w = Element::bare(kind, NS_CARBONS);
    w.append_child(fwd);
    el.append_child(w);
    Stanza::new(
        StanzaKind::Message,
        Jid::from(me.clone()),
        Some(Jid::from(to.clone())),
        el,
    )
}

fn copy_to(cx: &HookCx<'_>, kind: &str, me: &BareJid, resources: &[String], st: &Stanza) {
    for r in resources {
        let Ok(to) = me.with_resource_str(r) else {
            continue;
        };
        cx.route(wrap(kind, me, &to, st));
    }
}

/// §6: a message one resource sends goes to its other enabled resources.
fn sent(enabled: &Enabled, cx: &HookCx<'_>, st: &mut Stanza) {
    if st.kind != StanzaKind::Message {
        return;
    }
    let private = st.el().has_child("private", NS_CARBONS);
    if private {
        // §7: the hint is for our server only.
        st.el_mut().remove_child("private", NS_CARBONS);
    }
    let Some(session) = cx.session() else { return };
    let me = session.to_bare();
    if private || !eligible(st) {
        return;
    }
    // A message to the user's own account reaches the resources anyway.
    if st.to.as_ref().is_some_and(|t| t.to_bare() == me) {
        return;
    }
    let Some(set) = enabled.get(me.as_str()) else {
        return;
    };
    let others: Vec<String> = set
        .iter()
        .filter(|r| r.as_str() != session.resource().as_str())
        .cloned()
        .collect();
    drop(set);
    if !others.is_empty() {
        copy_to(cx, "sent", &me, &others, st);
    }
}

/// §5: a message written to one resource is copied to the other enabled
/// resources that the router did not give it to.
fn received(enabled: &Enabled, cx: &HookCx<'_>, st: &mut Stanza) {
    let Some(session) = cx.session() else { return };
    if !eligible(st) {
        return;
    }
    let me = session.to_bare();
    // From the user's own account (a self-message, a copy): never copied.
    if st.from.to_bare() == me {
        return;
    }
    if st.el().has_child("x", NS_MUC_USER) {
        return;
    }
    let Some(to) = st.to.clone() else { return };
    let Some(set) = enabled.get(me.as_str()).map(|s| s.clone()) else {
        return;
    };
    let mine = session.resource().as_str();
    let others: Vec<String> = match to.try_as_full() {
        // To this resource only.
        Ok(_) => set.into_iter().filter(|r| r != mine).collect(),
        Err(_) => {
            // To the bare JID: the router chose the most available
            // resource(s) (RFC 6121 §8.5.2.1); the first of them copies
            // for the enabled resources it did not choose.
            let sessions = cx.sessions().sessions(&me);
            let top = sessions
                .iter()
                .filter_map(|h| h.priority)
                .filter(|p| *p >= 0)
                .max();
            let chosen: Vec<&str> = match top {
                Some(top) => {
                    let mut c: Vec<&str> = sessions
                        .iter()
                        .filter(|h| h.priority == Some(top))
                        .map(|h| h.resource.as_str())
                        .collect();
                    if st.type_attr() != Some("chat") {
                        // normal: one resource (the router takes the first).
                        c.truncate(1);
                    }
                    c
                }
                None => vec![mine],
            };
            let first = chosen.iter().min().copied().unwrap_or(mine);
            if first != mine && chosen.contains(&mine) {
                return;
            }
            set.into_iter()
                .filter(|r| r != mine && !chosen.contains(&r.as_str()))
                .collect()
        }
    };
    if !others.is_empty() {
        copy_to(cx, "received", &me, &others, st);
    }
}
