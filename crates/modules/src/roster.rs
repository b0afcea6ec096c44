//! Rosters (RFC 6121 §2, XEP-0237 versioning) and presence subscriptions
//! (RFC 6121 §3, §4, Appendix A), with pre-approval (§3.4), probes and
//! presence broadcast to contacts.
//!
//! Subscription state is the roster item's `subscription` and `ask` plus the
//! stored pending inbound request (a row in the pending store), so every
//! state of RFC 6121 Appendix A is represented.

use dashmap::DashSet;
use jid::{BareJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::{
    PresenceBroadcast, PresenceIn, PresenceOut, RemoveUser, SessionClosed, SubscriptionOut,
    UserSend,
};
use palaver_server::module::PresenceEvent;
use palaver_server::{HookAction, ModuleCx};
use palaver_server::{HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleDef};
use palaver_storage::{RosterItem, Subscription};
use std::sync::Arc;

/// `jabber:iq:roster`.
pub const NS_ROSTER: &str = "jabber:iq:roster";

/// `mod_roster`.
pub struct Roster;

/// `mod_roster` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Roster>();

impl Module for Roster {
    const NAME: &'static str = "mod_roster";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Roster)
    }
}

/// `mod_roster` options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Most items a roster may hold.
    max_roster_size: usize,
    /// Offer roster versioning (XEP-0237).
    versioning: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_roster_size: 1000,
            versioning: true,
        }
    }
}

struct State {
    max: usize,
    versioning: bool,
    /// Full JIDs of sessions that requested the roster (RFC 6121 §2.1.6 "interested resources").
    interested: DashSet<String>,
}

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    if o.max_roster_size == 0 {
        return Err("max_roster_size must be positive".into());
    }
    let state = Arc::new(State {
        max: o.max_roster_size,
        versioning: o.versioning,
        interested: DashSet::new(),
    });
    let s = state.clone();
    host.on_iq(IqScope::Account, IqType::Get, NS_ROSTER, move |req| {
        let s = s.clone();
        async move { roster_get(s, req).await }
    });
    let s = state.clone();
    host.on_iq(IqScope::Account, IqType::Set, NS_ROSTER, move |req| {
        let s = s.clone();
        async move { roster_set(s, req).await }
    });
    let versioning = o.versioning;
    host.add_stream_features(Arc::new(move |_h| {
        let mut v = vec![Element::bare("sub", "urn:xmpp:features:pre-approval")];
        if versioning {
            v.push(Element::bare("ver", "urn:xmpp:features:rosterver"));
        }
        v
    }));
    let s = state.clone();
    host.hook_async::<SubscriptionOut, _>(50, move |cx, st| {
        let s = s.clone();
        async move { subscription_out(s, cx, st).await }
    });
    let s = state.clone();
    host.hook_async::<PresenceIn, _>(50, move |cx, st| {
        let s = s.clone();
        async move { presence_in(s, cx, st).await }
    });
    host.hook_async::<PresenceOut, _>(50, |cx, p| async move {
        presence_out(cx, p).await;
        HookAction::Continue
    });
    let s = state.clone();
    host.hook_async::<SessionClosed, _>(50, move |_cx, jid| {
        s.interested.remove(jid.as_str());
        async { HookAction::Continue }
    });
    host.account_data(portable::RosterData);
    host.hook_async::<RemoveUser, _>(50, |cx, a| async move {
        if let Err(e) = cx
            .storage()
            .roster
            .remove_roster_user(&a.host, &a.user)
            .await
        {
            tracing::warn!(error = %e, "removing roster failed");
        }
        HookAction::Continue
    });
    Ok(())
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("roster", &e)
}

/// The account (host, user) an account-scope IQ is about, only for its owner.
fn own_account(req: &IqRequest) -> Result<(String, String), StanzaError> {
    req.own_account().map(|(_, host, user)| (host, user))
}

fn item_el(item: &RosterItem) -> Element {
    let mut el = Element::bare("item", NS_ROSTER);
    set_attr(&mut el, "jid", item.jid.as_str());
    if let Some(n) = &item.name {
        set_attr(&mut el, "name", n.as_str());
    }
    set_attr(&mut el, "subscription", item.subscription.as_str());
    if item.ask {
        set_attr(&mut el, "ask", "subscribe");
    }
    if item.approved {
        set_attr(&mut el, "approved", "true");
    }
    for g in &item.groups {
        el.append_child(
            Element::builder("group", NS_ROSTER)
                .append(g.as_str())
                .build(),
        );
    }
    el
}

async fn roster_get(s: Arc<State>, req: IqRequest) -> IqResult {
    let (host, user) = own_account(&req)?;
    s.interested.insert(req.stanza.from.as_str().to_string());
    let requested_ver = req
        .payload()
        .and_then(|p| p.attr("ver"))
        .map(str::to_string);
    if s.versioning
        && let Some(v) = &requested_ver
    {
        let current = req
            .cx
            .storage()
            .roster
            .roster_version(&host, &user)
            .await
            .map_err(internal)?;
        if !v.is_empty() && *v == current.to_string() {
            // XEP-0237 §2.3: nothing changed; pushes will follow changes.
            return Ok(None);
        }
    }
    let (ver, items) = req
        .cx
        .storage()
        .roster
        .roster(&host, &user)
        .await
        .map_err(internal)?;
    let mut q = Element::bare("query", NS_ROSTER);
    if s.versioning {
        set_attr(&mut q, "ver", ver.to_string());
    }
    for it in &items {
        q.append_child(item_el(it));
    }
    Ok(Some(q))
}

fn parse_contact(s: &str) -> Result<String, StanzaError> {
    let j = BareJid::new(s).map_err(|_| StanzaError::new(Condition::JidMalformed))?;
    Ok(j.to_string())
}

async fn roster_set(s: Arc<State>, req: IqRequest) -> IqResult {
    let (host, user) = own_account(&req)?;
    let q = req
        .payload()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let mut items = q.children().filter(|c| c.is("item", NS_ROSTER));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaError::new(Condition::BadRequest).text("exactly one item is required"));
    };
    let raw_jid = item
        .attr("jid")
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    // A full JID in a roster set is refused rather than silently truncated.
    let parsed = Jid::new(raw_jid).map_err(|_| StanzaError::new(Condition::JidMalformed))?;
    if parsed.resource().is_some() {
        return Err(StanzaError::new(Condition::BadRequest).text("roster items are bare JIDs"));
    }
    let contact = parse_contact(raw_jid)?;
    if contact == format!("{user}@{host}") {
        return Err(StanzaError::new(Condition::NotAllowed).text("you cannot add yourself"));
    }
    let core = req.cx.clone();
    let store = &core.storage().roster;
    let existing = store
        .roster_item(&host, &user, &contact)
        .await
        .map_err(internal)?;
    let me = user_bare(&host, &user)?;
    if item.attr("subscription") == Some("remove") {
        let Some(old) = existing else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        // RFC 6121 §2.5.2: cancel both directions.
        if let Ok(cj) = Jid::new(&contact) {
            if old.subscription.has_to() || old.ask {
                core.route(presence(me.clone().into(), cj.clone(), "unsubscribe"));
            }
            if old.subscription.has_from() {
                core.route(presence(me.clone().into(), cj.clone(), "unsubscribed"));
            }
        }
        store
            .remove_pending_in(&host, &user, &contact)
            .await
            .map_err(internal)?;
        let ver = store
            .delete_roster_item(&host, &user, &contact)
            .await
            .map_err(internal)?;
        let mut el = Element::bare("item", NS_ROSTER);
        set_attr(&mut el, "jid", contact.as_str());
        set_attr(&mut el, "subscription", "remove");
        push(&s, &core, &me, el, ver);
        return Ok(None);
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", NS_ROSTER)) {
        let name = g.text();
        if name.is_empty() {
            return Err(StanzaError::new(Condition::NotAcceptable).text("empty group name"));
        }
        if groups.contains(&name) {
            return Err(StanzaError::new(Condition::BadRequest).text("duplicate group"));
        }
        groups.push(name);
    }
    groups.sort();
    let name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let mut new = match existing {
        Some(e) => e,
        None => {
            let count = store.roster_count(&host, &user).await.map_err(internal)?;
            if count >= s.max {
                return Err(StanzaError::new(Condition::NotAcceptable)
                    .text(format!("roster is full ({} items)", s.max)));
            }
            RosterItem::new(&contact)
        }
    };
    new.name = name;
    new.groups = groups;
    let ver = store
        .put_roster_item(&host, &user, &new)
        .await
        .map_err(internal)?;
    push(&s, &core, &me, item_el(&new), ver);
    Ok(None)
}

fn user_bare(host: &str, user: &str) -> Result<BareJid, StanzaError> {
    BareJid::new(&format!("{user}@{host}")).map_err(|_| StanzaError::new(Condition::JidMalformed))
}

fn presence(from: Jid, to: Jid, kind: &str) -> Stanza {
    let mut el = Element::bare("presence", ns::CLIENT);
    if !kind.is_empty() {
        set_attr(&mut el, "type", kind);
    }
    Stanza::new(StanzaKind::Presence, from, Some(to), el)
}

/// Roster push to every interested resource of `user` (RFC 6121 §2.1.6).
fn push(s: &State, core: &ModuleCx, user: &BareJid, item: Element, ver: i64) {
    for h in core.sessions().sessions(user) {
        let Ok(full) = user.with_resource_str(&h.resource) else {
            continue;
        };
        if !s.interested.contains(full.as_str()) {
            continue;
        }
        let mut q = Element::bare("query", NS_ROSTER);
        if s.versioning {
            set_attr(&mut q, "ver", ver.to_string());
        }
        q.append_child(item.clone());
        let mut el = Element::bare("iq", ns::CLIENT);
        set_attr(&mut el, "type", "set");
        set_attr(&mut el, "id", format!("push{}", rand_id()));
        el.append_child(q);
        core.route(Stanza::new(
            StanzaKind::Iq,
            Jid::from(user.clone()),
            Some(Jid::from(full)),
            el,
        ));
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Deliver `st` to every available resource of `user`.
fn deliver_available(core: &ModuleCx, user: &BareJid, st: &Stanza) {
    for h in core.sessions().available(user) {
        let Ok(full) = user.with_resource_str(&h.resource) else {
            continue;
        };
        core.deliver_to(&full, st.clone());
    }
}

/// Send the current presence of every available resource of `user` to `to`
/// (after an approval), or unavailable presence (after a cancellation),
/// after the subscription change routed to `to` just before: a local
/// contact gets the `subscribed` (and its roster push) first.
fn send_presence_of(core: &ModuleCx, user: &BareJid, to: &Jid, available: bool) {
    for h in core.sessions().sessions(user) {
        let (Some(_), Some(p)) = (h.priority, h.presence.as_ref()) else {
            continue;
        };
        let Ok(full) = user.with_resource_str(&h.resource) else {
            continue;
        };
        let st = if available {
            Stanza::new(
                StanzaKind::Presence,
                Jid::from(full),
                Some(to.clone()),
                (**p).clone(),
            )
        } else {
            presence(Jid::from(full), to.clone(), "unavailable")
        };
        core.route_after_account(st);
    }
}

fn split(bare: &BareJid) -> Option<(String, String)> {
    Some((bare.domain().to_string(), bare.node()?.to_string()))
}

/// RFC 6121 §3 and Appendix A.2: subscription presence sent by a local user.
async fn subscription_out(s: Arc<State>, core: ModuleCx, st: Stanza) -> HookAction {
    let Some(to) = st.to.clone() else {
        return HookAction::Continue;
    };
    let me = st.from.to_bare();
    let Some((host, user)) = split(&me) else {
        return HookAction::Continue;
    };
    let contact_jid = to.to_bare();
    let contact = contact_jid.to_string();
    if contact == me.to_string() {
        return HookAction::Drop;
    }
    let kind = st.type_attr().unwrap_or("").to_string();
    let store = &core.storage().roster;
    let existing = match store.roster_item(&host, &user, &contact).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "roster lookup failed");
            core.bounce(
                &st,
                Condition::InternalServerError,
                Some(Jid::from(me.clone())),
            );
            return HookAction::Drop;
        }
    };
    let pending_in = match store.pending_in(&host, &user).await {
        Ok(p) => p.iter().any(|(j, _)| *j == contact),
        Err(_) => false,
    };
    // Route with a bare `to` as RFC 6121 §3.1.2 requires.
    let mut out = st.clone();
    out.set_to(Some(Jid::from(contact_jid.clone())));
    let mut item = existing
        .clone()
        .unwrap_or_else(|| RosterItem::new(&contact));
    let mut route = true;
    let mut changed = false;
    match kind.as_str() {
        "subscribe" => {
            if existing.is_none() {
                match store.roster_count(&host, &user).await {
                    Ok(n) if n >= s.max => {
                        let err = StanzaError::new(Condition::PolicyViolation)
                            .text(format!("roster is full ({} items)", s.max));
                        core.bounce_with(&st, err, Some(Jid::from(me.clone())));
                        return HookAction::Drop;
                    }
                    Ok(_) => {}
                    Err(_) => return HookAction::Drop,
                }
            }
            if !item.subscription.has_to() && !item.ask {
                item.ask = true;
                changed = true;
            }
        }
        "subscribed" => {
            // Approve: A.2.2 (contact's server on outbound approval).
            if item.subscription.has_from() {
                route = false;
            } else if pending_in {
                item.subscription = match item.subscription {
                    Subscription::To => Subscription::Both,
                    _ => Subscription::From,
                };
                item.approved = false;
                changed = true;
            } else {
                // Pre-approval (§3.4): no request yet.
                route = false;
                if !item.approved {
                    item.approved = true;
                    changed = true;
                }
            }
            if pending_in {
                let _ = store.remove_pending_in(&host, &user, &contact).await;
            }
        }
        "unsubscribe" => {
            let before = (item.subscription, item.ask);
            item.ask = false;
            item.subscription = match item.subscription {
                Subscription::To => Subscription::None,
                Subscription::Both => Subscription::From,
                other => other,
            };
            changed = before != (item.subscription, item.ask);
        }
        "unsubscribed" => {
            let before = (item.subscription, item.approved);
            item.approved = false;
            item.subscription = match item.subscription {
                Subscription::From => Subscription::None,
                Subscription::Both => Subscription::To,
                other => other,
            };
            changed = before != (item.subscription, item.approved);
            let had_pending = pending_in
                && store
                    .remove_pending_in(&host, &user, &contact)
                    .await
                    .unwrap_or(false);
            if !changed && !had_pending && existing.is_none() {
                route = false;
            }
            if before.0.has_from() {
                // The contact no longer receives our presence.
                send_presence_of(&core, &me, &Jid::from(contact_jid.clone()), false);
            }
        }
        _ => return HookAction::Continue,
    }
    if changed && (existing.is_some() || kind == "subscribe" || kind == "subscribed") {
        match store.put_roster_item(&host, &user, &item).await {
            Ok(ver) => push(&s, &core, &me, item_el(&item), ver),
            Err(e) => {
                tracing::warn!(error = %e, "roster update failed");
                core.bounce(
                    &st,
                    Condition::InternalServerError,
                    Some(Jid::from(me.clone())),
                );
                return HookAction::Drop;
            }
        }
    }
    if route {
        core.route(out);
    }
    if kind == "subscribed" && changed && item.subscription.has_from() {
        // The new subscriber gets our current presence (§3.1.5).
        send_presence_of(&core, &me, &Jid::from(contact_jid), true);
    }
    HookAction::Drop
}

/// RFC 6121 Appendix A.3 and §4.3: subscription presence and probes to a local user.
async fn presence_in(s: Arc<State>, core: ModuleCx, st: Stanza) -> HookAction {
    let Some(to) = st.to.clone() else {
        return HookAction::Continue;
    };
    let user_jid = to.to_bare();
    let Some((host, user)) = split(&user_jid) else {
        return HookAction::Continue;
    };
    let from_bare = st.from.to_bare();
    let contact = from_bare.to_string();
    let kind = st.type_attr().unwrap_or("").to_string();
    let store = &core.storage().roster;
    let exists = core
        .storage()
        .accounts
        .account_exists(&host, &user)
        .await
        .unwrap_or(false);
    if !exists {
        if matches!(kind.as_str(), "subscribe" | "probe") {
            core.route(presence(
                Jid::from(user_jid),
                Jid::from(from_bare),
                "unsubscribed",
            ));
        }
        return HookAction::Drop;
    }
    let existing = match store.roster_item(&host, &user, &contact).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "roster lookup failed");
            return HookAction::Drop;
        }
    };
    let mut item = existing
        .clone()
        .unwrap_or_else(|| RosterItem::new(&contact));
    // Deliver with a bare `from` (§3.1.3).
    let mut delivered = st.clone();
    delivered.from = Jid::from(from_bare.clone());
    set_attr(delivered.el_mut(), "from", contact.as_str());
    match kind.as_str() {
        "probe" => {
            if item.subscription.has_from() {
                let mut any = false;
                for h in core.sessions().sessions(&user_jid) {
                    let (Some(_), Some(p)) = (h.priority, h.presence.as_ref()) else {
                        continue;
                    };
                    let Ok(full) = user_jid.with_resource_str(&h.resource) else {
                        continue;
                    };
                    any = true;
                    let mut reply = Stanza::new(
                        StanzaKind::Presence,
                        Jid::from(full.clone()),
                        Some(st.from.clone()),
                        (**p).clone(),
                    );
                    if core.run_hook::<UserSend>(Some(&full), &mut reply) == HookAction::Continue {
                        core.route(reply);
                    }
                }
                if !any {
                    core.route(presence(
                        Jid::from(user_jid),
                        st.from.clone(),
                        "unavailable",
                    ));
                }
            }
        }
        "subscribe" => {
            if item.subscription.has_from() {
                // Already subscribed: answer on the user's behalf (§3.1.3).
                core.route(presence(
                    Jid::from(user_jid),
                    Jid::from(from_bare),
                    "subscribed",
                ));
            } else if item.approved && existing.is_some() {
                item.approved = false;
                item.subscription = match item.subscription {
                    Subscription::To => Subscription::Both,
                    _ => Subscription::From,
                };
                if let Ok(ver) = store.put_roster_item(&host, &user, &item).await {
                    push(&s, &core, &user_jid, item_el(&item), ver);
                }
                core.route(presence(
                    Jid::from(user_jid.clone()),
                    Jid::from(from_bare.clone()),
                    "subscribed",
                ));
                send_presence_of(&core, &user_jid, &Jid::from(from_bare), true);
            } else if store
                .pending_in(&host, &user)
                .await
                .is_ok_and(|p| p.iter().any(|(j, _)| *j == contact))
            {
                // Already pending: no state change, not delivered again
                // (RFC 6121 Appendix A.3.1); the user gets it at each login.
            } else {
                let xml = palaver_proto::writer::to_string(&delivered.to_element(), "");
                if let Err(e) = store.add_pending_in(&host, &user, &contact, &xml).await {
                    tracing::warn!(error = %e, "storing subscription request failed");
                }
                deliver_available(&core, &user_jid, &delivered);
            }
        }
        "subscribed" => {
            if item.ask && existing.is_some() {
                item.ask = false;
                item.subscription = match item.subscription {
                    Subscription::From => Subscription::Both,
                    _ => Subscription::To,
                };
                if let Ok(ver) = store.put_roster_item(&host, &user, &item).await {
                    push(&s, &core, &user_jid, item_el(&item), ver);
                }
                deliver_available(&core, &user_jid, &delivered);
            }
        }
        "unsubscribe" => {
            let had_pending = store
                .remove_pending_in(&host, &user, &contact)
                .await
                .unwrap_or(false);
            let before = item.subscription;
            item.subscription = match item.subscription {
                Subscription::From => Subscription::None,
                Subscription::Both => Subscription::To,
                other => other,
            };
            if existing.is_some() && before != item.subscription {
                if let Ok(ver) = store.put_roster_item(&host, &user, &item).await {
                    push(&s, &core, &user_jid, item_el(&item), ver);
                }
                send_presence_of(&core, &user_jid, &Jid::from(from_bare), false);
            }
            if had_pending || before.has_from() {
                deliver_available(&core, &user_jid, &delivered);
            }
        }
        "unsubscribed" => {
            let before = (item.subscription, item.ask);
            item.ask = false;
            item.subscription = match item.subscription {
                Subscription::To => Subscription::None,
                Subscription::Both => Subscription::From,
                other => other,
            };
            if existing.is_some() && before != (item.subscription, item.ask) {
                if let Ok(ver) = store.put_roster_item(&host, &user, &item).await {
                    push(&s, &core, &user_jid, item_el(&item), ver);
                }
                deliver_available(&core, &user_jid, &delivered);
            }
        }
        _ => return HookAction::Continue,
    }
    HookAction::Drop
}

/// Broadcast a session's presence to contacts (RFC 6121 §4.2–4.5); on the
/// first presence also probe contacts and redeliver pending requests.
async fn presence_out(core: ModuleCx, p: PresenceBroadcast) {
    let PresenceBroadcast {
        session,
        stanza: st,
        event: ev,
    } = p;
    let bare = session.to_bare();
    let Some((host, user)) = split(&bare) else {
        return;
    };
    let items = match core.storage().roster.roster(&host, &user).await {
        Ok((_, items)) => items,
        Err(e) => {
            tracing::warn!(error = %e, "roster lookup failed");
            return;
        }
    };
    for it in &items {
        let Ok(cj) = Jid::new(&it.jid) else { continue };
        if it.subscription.has_from() {
            let mut copy = st.clone();
            copy.set_to(Some(cj.clone()));
            if core.run_hook::<UserSend>(Some(&session), &mut copy) == HookAction::Continue {
                core.route(copy);
            }
        }
        if ev == PresenceEvent::Initial && it.subscription.has_to() {
            core.route(presence(Jid::from(bare.clone()), cj, "probe"));
        }
    }
    if ev == PresenceEvent::Initial {
        // Pending inbound subscription requests are delivered at each login (§3.1.3).
        if let Ok(pending) = core.storage().roster.pending_in(&host, &user).await {
            for (from, xml) in pending {
                let Ok(mut el) = xml.parse::<Element>() else {
                    continue;
                };
                let Ok(fj) = Jid::new(&from) else { continue };
                set_attr(&mut el, "to", bare.as_str());
                let st = Stanza::new(StanzaKind::Presence, fj, Some(Jid::from(bare.clone())), el);
                core.deliver_to(&session, st);
            }
        }
    }
}

/// The roster's part of portable account data (XEP-0227): roster items as
/// `<query xmlns='jabber:iq:roster'>` (with `ask`, `approved`, groups) and
/// pending inbound subscription requests as `jabber:client` presence.
mod portable {
    use super::NS_ROSTER;
    use jid::{BareJid, Jid};
    use minidom::Element;
    use palaver_proto::ns;
    use palaver_proto::stanza::set_attr;
    use palaver_server::ModuleCx;
    use palaver_server::account_data::{AccountData, Tally, describe};
    use palaver_server::hooks::Account;
    use palaver_storage::{RosterItem, StorageError, Subscription};

    const ITEMS: &str = "roster item(s)";
    const PENDING: &str = "subscription request(s)";

    pub(super) struct RosterData;

    #[derive(Default)]
    pub(super) struct Data {
        items: Vec<RosterItem>,
        /// `(bare JID, presence stanza)`.
        pending: Vec<(String, Element)>,
    }

    fn item_element(it: &RosterItem) -> Element {
        let mut i = Element::bare("item", NS_ROSTER);
        set_attr(&mut i, "jid", it.jid.clone());
        if let Some(n) = &it.name {
            set_attr(&mut i, "name", n.clone());
        }
        set_attr(&mut i, "subscription", it.subscription.as_str());
        if it.ask {
            set_attr(&mut i, "ask", "subscribe");
        }
        if it.approved {
            set_attr(&mut i, "approved", "true");
        }
        for g in &it.groups {
            i.append_child(
                Element::builder("group", NS_ROSTER)
                    .append(g.clone())
                    .build(),
            );
        }
        i
    }

    impl AccountData for RosterData {
        type Data = Data;
        const ELEMENTS: &'static [(&'static str, &'static str)] =
            &[("query", NS_ROSTER), ("presence", ns::CLIENT)];

        async fn export(
            &self,
            cx: &ModuleCx,
            a: &Account,
            tally: &mut Tally,
        ) -> Result<Vec<Element>, StorageError> {
            let store = &cx.storage().roster;
            let jid = a.jid();
            let (_, items) = store.roster(&a.host, &a.user).await?;
            let mut out = Vec::new();
            tally.count(ITEMS, items.len());
            if !items.is_empty() {
                let mut q = Element::bare("query", NS_ROSTER);
                for it in &items {
                    q.append_child(item_element(it));
                }
                out.push(q);
            }
            let pending = store.pending_in(&a.host, &a.user).await?;
            tally.count(PENDING, pending.len());
            for (from, xml) in pending {
                // Keep the request itself even when the stored stanza is unreadable.
                let mut el = match xml.parse::<Element>() {
                    Ok(el) if el.is("presence", ns::CLIENT) => el,
                    _ => Element::bare("presence", ns::CLIENT),
                };
                set_attr(&mut el, "from", from);
                set_attr(&mut el, "to", jid.clone());
                set_attr(&mut el, "type", "subscribe");
                out.push(el);
            }
            Ok(out)
        }

        fn read(
            &self,
            a: &Account,
            el: &Element,
            data: &mut Data,
            tally: &mut Tally,
        ) -> Result<(), String> {
            let jid = a.jid();
            if el.is("presence", ns::CLIENT) {
                if el.attr("type") != Some("subscribe") {
                    tally.warn(format!(
                        "{jid}: ignored presence of type '{}' (only pending subscribe requests are kept)",
                        el.attr("type").unwrap_or("available")
                    ));
                    return Ok(());
                }
                let Some(Ok(from)) = el.attr("from").map(Jid::new) else {
                    tally.warn(format!(
                        "{jid}: ignored subscription request without a valid from"
                    ));
                    return Ok(());
                };
                let from = from.to_bare().to_string();
                let mut p = el.clone();
                set_attr(&mut p, "from", from.clone());
                set_attr(&mut p, "to", jid.clone());
                data.pending.retain(|(f, _)| *f != from);
                data.pending.push((from, p));
                return Ok(());
            }
            for item in el.children() {
                if !item.is("item", NS_ROSTER) {
                    tally.warn(format!("{jid}: ignored {} in the roster", describe(item)));
                    continue;
                }
                let Some(contact) = item.attr("jid") else {
                    tally.warn(format!("{jid}: ignored roster item without jid"));
                    continue;
                };
                let contact = match BareJid::new(contact) {
                    Ok(c) => c.to_string(),
                    Err(e) => {
                        tally.warn(format!("{jid}: ignored roster item `{contact}`: {e}"));
                        continue;
                    }
                };
                let sub = item.attr("subscription").unwrap_or("none");
                let Some(subscription) = Subscription::parse(sub) else {
                    tally.warn(format!(
                        "{jid}: ignored roster item {contact} with subscription='{sub}'"
                    ));
                    continue;
                };
                let mut groups: Vec<String> = item
                    .children()
                    .filter(|g| g.is("group", NS_ROSTER))
                    .map(|g| g.text())
                    .filter(|g| !g.is_empty())
                    .collect();
                groups.sort();
                groups.dedup();
                let new = RosterItem {
                    jid: contact.clone(),
                    name: item
                        .attr("name")
                        .filter(|n| !n.is_empty())
                        .map(String::from),
                    subscription,
                    ask: item.attr("ask") == Some("subscribe"),
                    approved: matches!(item.attr("approved"), Some("true" | "1")),
                    groups,
                };
                if let Some(old) = data.items.iter_mut().find(|i| i.jid == contact) {
                    tally.warn(format!(
                        "{jid}: roster item {contact} appears twice; the last one is kept"
                    ));
                    *old = new;
                } else {
                    data.items.push(new);
                }
            }
            Ok(())
        }

        async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> {
            cx.storage()
                .roster
                .remove_roster_user(&a.host, &a.user)
                .await
        }

        async fn write(
            &self,
            cx: &ModuleCx,
            a: &Account,
            mut data: Data,
            tally: &mut Tally,
        ) -> Result<(), StorageError> {
            let store = &cx.storage().roster;
            data.items.sort_by(|x, y| x.jid.cmp(&y.jid));
            tally.count(ITEMS, 0);
            tally.count(PENDING, 0);
            for item in &data.items {
                store.put_roster_item(&a.host, &a.user, item).await?;
                tally.count(ITEMS, 1);
            }
            for (from, el) in &data.pending {
                let xml = palaver_proto::writer::to_string(el, "");
                store.add_pending_in(&a.host, &a.user, from, &xml).await?;
                tally.count(PENDING, 1);
            }
            Ok(())
        }
    }
}
