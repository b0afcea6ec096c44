//! `mod_pubsub`: XEP-0060 Publish-Subscribe on `pubsub.HOST` and XEP-0163
//! Personal Eventing (PEP) on every account's bare JID, as ejabberd's
//! mod_pubsub serves both.
//!
//! - Nodes, items, affiliations and subscriptions are in the module's own
//!   store ([`store`]); a PEP service is keyed by the owner's bare JID.
//! - PEP notifications go to explicit subscribers and, implicitly, to the
//!   owner's and its presence subscribers' sessions whose XEP-0115
//!   capabilities list `NODE+notify` (§4.3.2 filtered notifications). The
//!   capabilities are learnt from the `<c/>` of a session's broadcast
//!   presence ([`PresenceOut`]): an unknown verification string is asked
//!   for with disco#info from `pubsub.HOST` (the answer comes back through
//!   the routing table), checked (SHA-1) and cached per string, in one
//!   table for every host, so contacts on another virtual host are found
//!   by their presence's `<c/>`.
//! - Remote contacts (another server's users) are learnt from the presence
//!   they send to this host's sessions ([`UserReceive`]): an unknown
//!   verification string is asked for with disco#info from the host's own
//!   domain over federation (the answer comes back through [`IqResponse`]),
//!   checked and cached the same way; the resource is forgotten on its
//!   unavailable presence. Notifications to them go over federation.
//! - On a session's first known capabilities, the last items of its own
//!   and its contacts' nodes it is interested in are sent (§4.3.4).
//! - XEP-0402 bookmarks are kept in step with XEP-0048 bookmarks in private
//!   storage both ways (XEP-0411), see [`bookmarks`].
//! - Account removal deletes the PEP service and the account's
//!   subscriptions and affiliations, and nodes on `pubsub.HOST` it alone
//!   owned; XEP-0227 export/import carries PEP nodes ([`portable`]).

pub mod bookmarks;
pub mod node;
pub mod ops;
mod portable;
pub mod store;
pub mod subopts;

use dashmap::DashMap;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::{
    IqResponse, MessageIn, PresenceOut, PrivateStored, RemoveUser, SessionClosed, UserReceive,
};
use palaver_server::module::PresenceEvent;
use palaver_server::{
    HookAction, HostSetup, IqRequest, IqScope, IqType, Module, ModuleCx, ModuleDef,
};
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;

/// XEP-0060.
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0060 owner use cases.
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// XEP-0060 notifications.
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// XEP-0060 application errors.
pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_CAPS: &str = "http://jabber.org/protocol/caps";
/// Most outstanding capability queries at once.
const MAX_PENDING_CAPS: usize = 10_000;

/// `mod_pubsub` (its state lives in the handlers it registers).
pub struct Pubsub;

/// `mod_pubsub` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Pubsub>();

/// `mod_pubsub` options (ejabberd's names).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The service's domain (`@HOST@` is replaced).
    host: String,
    /// Access rule: who may create nodes on the service.
    access_createnode: String,
    /// Largest `max_items` of a node.
    max_items_node: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "pubsub.@HOST@".into(),
            access_createnode: "all".into(),
            max_items_node: 1000,
        }
    }
}

impl Module for Pubsub {
    const NAME: &'static str = "mod_pubsub";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Pubsub)
    }

    // Digests waiting for their time stay in the store and go out when
    // due after the restart (or when the module is enabled again).
}

/// Verified XEP-0115 verification strings (SHA-1) → the nodes they ask
/// notifications for. Content-addressed, so one table serves every host
/// (a contact on another virtual host is looked up by the `<c/>` of its
/// session's presence).
static VERIFIED: std::sync::LazyLock<DashMap<String, Arc<HashSet<String>>>> =
    std::sync::LazyLock::new(DashMap::new);
/// Most verification strings remembered.
const MAX_VERIFIED: usize = 10_000;
/// Most remote contacts (bare JIDs) whose resources are remembered per host.
const MAX_REMOTE: usize = 10_000;

/// A remote contact's available resource, as its presence said.
struct RemoteResource {
    /// Its XEP-0115 verification string (empty without caps).
    ver: String,
    /// The nodes it asks notifications for, once known.
    notify: Option<Arc<HashSet<String>>>,
    /// The local accounts it sent this presence to (each sends it the
    /// last items of its nodes once).
    owners: HashSet<BareJid>,
}

/// A capability query sent to a remote resource.
struct RemoteQuery {
    full: FullJid,
    hash: String,
    ver: String,
}

/// The verified `+notify` nodes of a session's current presence.
fn presence_notify(presence: Option<&Element>) -> Option<Arc<HashSet<String>>> {
    let c = presence?.get_child("c", NS_CAPS)?;
    if c.attr("hash") != Some("sha-1") {
        return None;
    }
    VERIFIED.get(c.attr("ver")?).map(|v| v.clone())
}

/// Shared state of the module on one host.
pub struct State {
    pub(crate) host: String,
    pub(crate) service: String,
    pub(crate) access_createnode: String,
    pub(crate) max_items_node: u64,
    /// Session (full JID) → the nodes it asks notifications for.
    sessions: DashMap<String, Arc<HashSet<String>>>,
    /// Outstanding disco#info queries: id → (session, hash, ver).
    pending: DashMap<String, (FullJid, String, String)>,
    /// Remote contacts: bare JID → available resources.
    remote: DashMap<String, HashMap<String, RemoteResource>>,
    /// Outstanding disco#info queries to remote resources, by id.
    remote_pending: DashMap<String, RemoteQuery>,
    /// Notifications gathered for digest subscriptions (§6.3
    /// `pubsub#digest`): "service\0node\0recipient" → the digest.
    digests: DashMap<String, Digest>,
    /// Wakes the digest task when a digest starts.
    digest_wake: tokio::sync::Notify,
}

/// Notifications of one node for one recipient, sent together when due.
/// Each is also a row of `pubsub_digest` until the digest is sent.
pub(crate) struct Digest {
    pub(crate) due: std::time::Instant,
    pub(crate) service: String,
    pub(crate) from: Jid,
    pub(crate) to: Jid,
    pub(crate) node: String,
    pub(crate) kind: String,
    pub(crate) body: bool,
    /// `<item/>` and `<retract/>` children of the `<items/>` event.
    pub(crate) children: Vec<Element>,
    /// Their rows in the store.
    pub(crate) seqs: Vec<i64>,
}

/// Most notifications a digest gathers before it goes out early.
const MAX_DIGEST_ITEMS: usize = 500;

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A unique, increasing number for a stored digest notification (a
/// microsecond clock, bumped past the last one given).
pub(crate) fn next_digest_seq() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = now_ms().saturating_mul(1000);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// The map key of a digest.
fn digest_key(service: &str, node: &str, to: &str) -> String {
    format!("{service}\0{node}\0{to}")
}

impl State {
    /// When the digest of `to` for `node` is due, as milliseconds since
    /// the epoch: that of the digest under way, or `frequency_ms` from now.
    pub(crate) fn digest_due_ms(
        &self,
        service: &str,
        node: &str,
        to: &Jid,
        frequency_ms: u64,
    ) -> i64 {
        let now = now_ms();
        match self.digests.get(&digest_key(service, node, to.as_str())) {
            Some(d) => {
                let left = d.due.saturating_duration_since(std::time::Instant::now());
                now + i64::try_from(left.as_millis()).unwrap_or(i64::MAX / 2)
            }
            None => now.saturating_add(i64::try_from(frequency_ms).unwrap_or(i64::MAX / 2)),
        }
    }

    /// Add notifications (stored already, with their `seqs`) to the digest
    /// of `to` for `node`, started with `due_ms` if it is new. A digest
    /// that reached [`MAX_DIGEST_ITEMS`] is returned, to be sent now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_digest(
        &self,
        service: &str,
        from: &Jid,
        to: &Jid,
        node: &str,
        kind: &str,
        body: bool,
        children: Vec<(i64, Element)>,
        due_ms: i64,
    ) -> Option<Digest> {
        let key = digest_key(service, node, to.as_str());
        let full = {
            let mut d = self.digests.entry(key.clone()).or_insert_with(|| {
                self.digest_wake.notify_one();
                Digest {
                    due: instant_of(due_ms),
                    service: service.to_string(),
                    from: from.clone(),
                    to: to.clone(),
                    node: node.to_string(),
                    kind: kind.to_string(),
                    body,
                    children: Vec::new(),
                    seqs: Vec::new(),
                }
            });
            for (seq, c) in children {
                d.seqs.push(seq);
                d.children.push(c);
            }
            d.children.len() >= MAX_DIGEST_ITEMS
        };
        if full {
            self.digests.remove(&key).map(|(_, d)| d)
        } else {
            None
        }
    }

    /// Send the digests that are due.
    async fn flush_digests(&self, cx: &ModuleCx) {
        let now = std::time::Instant::now();
        let due: Vec<String> = self
            .digests
            .iter()
            .filter(|d| d.due <= now)
            .map(|d| d.key().clone())
            .collect();
        for k in due {
            if let Some((_, d)) = self.digests.remove_if(&k, |_, d| d.due <= now) {
                self.send_digest(cx, d).await;
            }
        }
    }

    /// Send a digest as one message, then forget its stored rows.
    pub(crate) async fn send_digest(&self, cx: &ModuleCx, d: Digest) {
        let (service, node, to, seqs) = (
            d.service.clone(),
            d.node.clone(),
            d.to.to_string(),
            d.seqs.clone(),
        );
        send_digest(cx, d);
        if let Err(e) = store::PubsubSql::of(cx)
            .remove_digest_rows(&self.host, &service, &node, &to, &seqs)
            .await
        {
            tracing::warn!(error = %e, "forgetting a sent pubsub digest failed (it may be sent again after a restart)");
        }
    }

    /// The digests a previous run left (a restart, a crash): gathered again
    /// from the store, each due when it was.
    async fn restore_digests(&self, cx: &ModuleCx) {
        let rows = match store::PubsubSql::of(cx).digest_rows(&self.host).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading stored pubsub digests failed");
                return;
            }
        };
        for r in rows {
            let (Ok(from), Ok(to)) = (Jid::new(&r.from_jid), Jid::new(&r.recipient)) else {
                tracing::warn!(recipient = %r.recipient, "a stored pubsub digest with a bad address is skipped");
                continue;
            };
            let Ok(child) = r.xml.parse::<Element>() else {
                tracing::warn!(node = %r.node, "a stored pubsub digest notification that does not parse is skipped");
                continue;
            };
            let key = digest_key(&r.service, &r.node, to.as_str());
            let due = instant_of(r.due_ms);
            let mut d = self.digests.entry(key).or_insert_with(|| Digest {
                due,
                service: r.service.clone(),
                from,
                to,
                node: r.node.clone(),
                kind: r.kind.clone(),
                body: r.body,
                children: Vec::new(),
                seqs: Vec::new(),
            });
            d.due = d.due.min(due);
            d.seqs.push(r.seq);
            d.children.push(child);
        }
        self.digest_wake.notify_one();
    }

    /// The background task sending digests when due.
    async fn digest_task(self: Arc<Self>, cx: ModuleCx) {
        self.restore_digests(&cx).await;
        loop {
            let next = self.digests.iter().map(|d| d.due).min();
            match next {
                None => self.digest_wake.notified().await,
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        _ = self.digest_wake.notified() => {}
                    }
                }
            }
            self.flush_digests(&cx).await;
        }
    }

    /// The available sessions of `bare` that asked for `node+notify`
    /// (sessions of this host as learnt here; of another local host by
    /// the verified capabilities of their presence).
    pub(crate) fn interested(&self, cx: &ModuleCx, bare: &BareJid, node: &str) -> Vec<FullJid> {
        cx.sessions()
            .available(bare)
            .into_iter()
            .filter_map(|h| {
                let full = bare.with_resource_str(&h.resource).ok()?;
                let wants = match self.sessions.get(full.as_str()) {
                    Some(s) => s.contains(node),
                    None => {
                        presence_notify(h.presence.as_deref()).is_some_and(|s| s.contains(node))
                    }
                };
                wants.then_some(full)
            })
            .collect()
    }

    /// The available resources of the remote contact `bare` that asked
    /// for `node+notify`.
    pub(crate) fn remote_interested(&self, bare: &BareJid, node: &str) -> Vec<FullJid> {
        let Some(res) = self.remote.get(bare.as_str()) else {
            return Vec::new();
        };
        res.iter()
            .filter(|(_, r)| r.notify.as_ref().is_some_and(|n| n.contains(node)))
            .filter_map(|(name, _)| bare.with_resource_str(name).ok())
            .collect()
    }
}

/// The features of a pubsub service (also listed on accounts for PEP).
pub fn features() -> Vec<String> {
    let mut v = vec![NS_PUBSUB.to_string()];
    for f in [
        "access-authorize",
        "access-open",
        "access-presence",
        "access-roster",
        "access-whitelist",
        "auto-create",
        "auto-subscribe",
        "config-node",
        "create-and-configure",
        "create-nodes",
        "delete-items",
        "delete-nodes",
        "filtered-notifications",
        "get-pending",
        "instant-nodes",
        "item-ids",
        "last-published",
        "manage-subscriptions",
        "member-affiliation",
        "modify-affiliations",
        "outcast-affiliation",
        "persistent-items",
        "presence-access",
        "presence-notifications",
        "publish",
        "publish-options",
        "publisher-affiliation",
        "purge-nodes",
        "retract-items",
        "retrieve-affiliations",
        "retrieve-default",
        "retrieve-items",
        "retrieve-subscriptions",
        "subscribe",
        "subscription-options",
    ] {
        v.push(format!("{NS_PUBSUB}#{f}"));
    }
    v
}

/// The moment `ms` (since the epoch) on the monotonic clock (now, when past).
fn instant_of(ms: i64) -> std::time::Instant {
    let left = u64::try_from(ms.saturating_sub(now_ms())).unwrap_or(0);
    std::time::Instant::now() + std::time::Duration::from_millis(left)
}

/// One digest as a single notification message.
fn send_digest(cx: &ModuleCx, d: Digest) {
    let count = d.children.len();
    let mut items = Element::bare("items", NS_EVENT);
    set_attr(&mut items, "node", d.node.as_str());
    for c in d.children {
        items.append_child(c);
    }
    let body = d
        .body
        .then(|| format!("{count} notifications from node {}", d.node));
    let mut event = Element::bare("event", NS_EVENT);
    event.append_child(items);
    cx.route(ops::event_message_with(&d.from, d.to, &d.kind, event, body));
}

fn start(host: &mut HostSetup, o: Options) -> Result<Arc<State>, String> {
    let service = o.host.replace("@HOST@", host.host());
    jid::BareJid::new(&service)
        .ok()
        .filter(|j| j.node().is_none())
        .ok_or_else(|| format!("host: `{service}` is not a domain"))?;
    if o.max_items_node == 0 {
        return Err("max_items_node: must be at least 1".into());
    }
    host.migrations(store::MIGRATIONS);
    let st = Arc::new(State {
        host: host.host().to_string(),
        service: service.clone(),
        access_createnode: o.access_createnode,
        max_items_node: o.max_items_node,
        sessions: DashMap::new(),
        pending: DashMap::new(),
        remote: DashMap::new(),
        remote_pending: DashMap::new(),
        digests: DashMap::new(),
        digest_wake: tokio::sync::Notify::new(),
    });
    let s = st.clone();
    host.spawn_task(move |cx| s.digest_task(cx));
    // No session is available at start: subscriptions that end with the
    // subscriber's presence have ended.
    host.spawn_task(move |cx| async move {
        if let Err(e) = store::PubsubSql::of(&cx).expire_all_presence().await {
            tracing::warn!(error = %e, "ending presence-bound pubsub subscriptions failed");
        }
    });

    // The service.
    host.add_service(&service);
    for (kind, ns_) in [
        (IqType::Get, NS_PUBSUB),
        (IqType::Set, NS_PUBSUB),
        (IqType::Get, NS_OWNER),
        (IqType::Set, NS_OWNER),
    ] {
        let s = st.clone();
        host.on_service_iq(&service, kind, ns_, move |req| {
            let s = s.clone();
            async move {
                if req.stanza.to.as_ref().is_some_and(|t| t.node().is_some()) {
                    return Err(StanzaError::new(Condition::ItemNotFound));
                }
                let t = service_target(&s);
                ops::handle(s, t, req).await
            }
        });
    }
    for (ns_, items) in [(ns::DISCO_INFO, false), (ns::DISCO_ITEMS, true)] {
        let s = st.clone();
        host.on_service_iq(&service, IqType::Get, ns_, move |req| {
            let s = s.clone();
            async move {
                let t = service_target(&s);
                disco(s, t, req, items).await
            }
        });
    }
    let s = st.clone();
    host.on_service_stanza(&service, move |cx, stanza| service_stanza(&s, cx, stanza));

    // PEP on every account.
    for f in features() {
        host.add_account_feature(&f);
    }
    host.add_account_identity("pubsub", "pep", None);
    // XEP-0402 §4: XEP-0048 private-storage bookmarks are kept in step.
    host.add_account_feature(bookmarks::COMPAT);
    for (kind, ns_) in [
        (IqType::Get, NS_PUBSUB),
        (IqType::Set, NS_PUBSUB),
        (IqType::Get, NS_OWNER),
        (IqType::Set, NS_OWNER),
    ] {
        let s = st.clone();
        host.on_iq(IqScope::Account, kind, ns_, move |req| {
            let s = s.clone();
            async move {
                let t = pep_target(&req).await?;
                ops::handle(s, t, req).await
            }
        });
    }

    // XEP-0163 / XEP-0030: the account's PEP nodes the requester may see
    // in its disco#items, and each node's disco#info/items.
    let s = st.clone();
    host.on_account_disco(move |req, items| {
        let s = s.clone();
        async move { pep_disco(s, req, items).await }
    });
    // §8.6.2 for PEP: the owner's answer to a subscription request, sent
    // to its own bare JID (the PEP service the request came from).
    let s = st.clone();
    host.hook::<MessageIn>(60, move |cx, stanza| {
        if pep_authorization(&s, cx, stanza) {
            HookAction::Drop
        } else {
            HookAction::Continue
        }
    });
    let s = st.clone();
    host.hook_async::<PresenceOut, _>(40, move |cx, pb| {
        let s = s.clone();
        async move {
            presence_out(&s, &cx, &pb.session, &pb.stanza, pb.event);
            HookAction::Continue
        }
    });
    let s = st.clone();
    host.hook::<UserReceive>(40, move |cx, stanza| {
        if stanza.kind == StanzaKind::Presence
            && let Some(session) = cx.session()
        {
            remote_presence(&s, cx, session, stanza);
        }
        HookAction::Continue
    });
    let s = st.clone();
    host.hook::<IqResponse>(40, move |cx, stanza| {
        if remote_caps_answer(&s, cx, stanza) {
            HookAction::Drop
        } else {
            HookAction::Continue
        }
    });
    let s = st.clone();
    host.hook_async::<SessionClosed, _>(40, move |cx, full| {
        s.sessions.remove(full.as_str());
        s.pending.retain(|_, (f, _, _)| *f != full);
        async move {
            expire_with_presence(&cx, &full).await;
            HookAction::Continue
        }
    });
    let s = st.clone();
    host.hook_async::<PrivateStored, _>(50, move |cx, p| {
        let s = s.clone();
        async move {
            bookmarks::private_stored(s, cx, p).await;
            HookAction::Continue
        }
    });
    host.account_data(portable::PepData);
    let s = st.clone();
    host.hook_async::<RemoveUser, _>(50, move |cx, a| {
        let s = s.clone();
        async move {
            let bare = a.jid();
            s.digests
                .retain(|_, d| d.to.to_bare().as_str() != bare && d.service != bare);
            if let Err(e) = remove_user(&s, &cx, &bare).await {
                tracing::warn!(error = %e, "removing pubsub data failed");
            }
            HookAction::Continue
        }
    });
    Ok(st)
}

fn service_target(s: &State) -> ops::Target {
    ops::Target {
        key: s.service.clone(),
        pep: None,
    }
}

/// The PEP service a request to an account addresses (it must exist).
async fn pep_target(req: &IqRequest) -> Result<ops::Target, StanzaError> {
    let owner = req
        .stanza
        .to
        .as_ref()
        .map(|t| t.to_bare())
        .unwrap_or_else(|| req.stanza.from.to_bare());
    let Some(user) = owner.node() else {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    };
    let exists = req
        .cx
        .storage()
        .accounts
        .account_exists(owner.domain().as_str(), user.as_str())
        .await
        .map_err(|e| palaver_server::module::storage_failure("pubsub", &e))?;
    if !exists {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    Ok(ops::Target {
        key: owner.to_string(),
        pep: Some(owner),
    })
}

async fn disco(
    st: Arc<State>,
    t: ops::Target,
    req: IqRequest,
    items: bool,
) -> palaver_server::IqResult {
    let node = req
        .payload()
        .and_then(|p| p.attr("node"))
        .map(str::to_string);
    let svc = ops::Svc {
        st,
        t,
        cx: req.cx.clone(),
        db: store::PubsubSql::of(&req.cx),
    };
    if items {
        svc.disco_items(&req.stanza.from, node.as_deref()).await
    } else {
        svc.disco_info(&req.stanza.from, node.as_deref()).await
    }
}

/// Stanzas to `pubsub.HOST` other than pubsub/disco requests: answers to
/// our capability queries; messages are refused.
fn service_stanza(st: &Arc<State>, cx: &ModuleCx, stanza: Stanza) {
    match stanza.kind {
        StanzaKind::Iq => match stanza.type_attr() {
            Some("result") | Some("error") => {
                let Some((_, (full, hash, ver))) = stanza.id().and_then(|id| st.pending.remove(id))
                else {
                    return;
                };
                if stanza.from != full || stanza.is_error() {
                    return;
                }
                let Some(q) = stanza.payload().filter(|q| q.is("query", ns::DISCO_INFO)) else {
                    return;
                };
                let notify = notify_nodes(q);
                if hash == "sha-1" && caps_ver(q) == ver && VERIFIED.len() < MAX_VERIFIED {
                    VERIFIED.insert(ver, notify.clone());
                }
                set_session_caps(st, cx, &full, notify);
            }
            _ => cx.bounce(&stanza, Condition::ServiceUnavailable, None),
        },
        StanzaKind::Message => authorization(st, cx, stanza),
        StanzaKind::Presence => {}
    }
}

const SUBSCRIBE_AUTHORIZATION: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";

/// A message to the service: an owner's answer to a subscription
/// authorization request (§8.6.2); anything else is refused.
fn authorization(st: &Arc<State>, cx: &ModuleCx, stanza: Stanza) {
    if stanza.is_error() {
        return;
    }
    let form = match palaver_proto::forms::DataForm::find_in(stanza.el()) {
        Some(Ok(f))
            if f.kind == palaver_proto::forms::FormType::Submit
                && f.form_type() == Some(SUBSCRIBE_AUTHORIZATION) =>
        {
            f
        }
        _ => {
            cx.bounce(&stanza, Condition::ServiceUnavailable, None);
            return;
        }
    };
    let svc = ops::Svc {
        st: st.clone(),
        t: service_target(st),
        cx: cx.clone(),
        db: store::PubsubSql::of(cx),
    };
    cx.spawn(async move {
        if let Err(e) = svc.authorize(&stanza.from, &form).await {
            svc.cx.bounce_with(&stanza, e, None);
        }
    });
}

/// Disco queries to an account for its PEP service: the nodes the
/// requester may see (disco#items without a node), or one node's
/// disco#info/items (`None`: no such PEP node).
async fn pep_disco(st: Arc<State>, req: IqRequest, items: bool) -> palaver_server::IqResult {
    let node = req
        .payload()
        .and_then(|p| p.attr("node"))
        .map(str::to_string);
    if node.is_none() && !items {
        return Ok(None);
    }
    let t = pep_target(&req).await?;
    let svc = ops::Svc {
        st,
        t,
        cx: req.cx.clone(),
        db: store::PubsubSql::of(&req.cx),
    };
    if let Some(n) = &node
        && svc
            .db
            .node(&svc.t.key, n)
            .await
            .map_err(|e| palaver_server::module::storage_failure("pubsub", &e))?
            .is_none()
    {
        return Ok(None);
    }
    let from = req.stanza.from.clone();
    if items {
        svc.disco_items(&from, node.as_deref()).await
    } else {
        svc.disco_info(&from, node.as_deref()).await
    }
}

/// A message from an account to its own bare JID carrying a submitted
/// `pubsub#subscribe_authorization` form: the owner approves or denies a
/// pending subscription to one of its PEP nodes. `true`: taken.
fn pep_authorization(
    st: &Arc<State>,
    cx: &palaver_server::hooks::HookCx<'_>,
    stanza: &Stanza,
) -> bool {
    // Cheap checks first: this runs for every message to a local user.
    let Some(to) = stanza.to.as_ref() else {
        return false;
    };
    if stanza.is_error()
        || to.node().is_none()
        || to.node() != stanza.from.node()
        || to.domain() != stanza.from.domain()
        || stanza.el().get_child("x", ns::DATA_FORMS).is_none()
    {
        return false;
    }
    let to = to.to_bare();
    let form = match palaver_proto::forms::DataForm::find_in(stanza.el()) {
        Some(Ok(f))
            if f.kind == palaver_proto::forms::FormType::Submit
                && f.form_type() == Some(SUBSCRIBE_AUTHORIZATION) =>
        {
            f
        }
        _ => return false,
    };
    let cx: ModuleCx = (*cx).clone();
    let svc = ops::Svc {
        st: st.clone(),
        t: ops::Target {
            key: to.to_string(),
            pep: Some(to),
        },
        db: store::PubsubSql::of(&cx),
        cx: cx.clone(),
    };
    let stanza = stanza.clone();
    cx.spawn(async move {
        if let Err(e) = svc.authorize(&stanza.from, &form).await {
            svc.cx.bounce_with(&stanza, e, None);
        }
    });
    true
}

/// The `+notify` features of a disco#info answer, without the suffix.
fn notify_nodes(q: &Element) -> Arc<HashSet<String>> {
    Arc::new(
        q.children()
            .filter(|c| c.is("feature", ns::DISCO_INFO))
            .filter_map(|c| c.attr("var"))
            .filter_map(|v| v.strip_suffix("+notify"))
            .map(str::to_string)
            .collect(),
    )
}

/// XEP-0115 §5.1 verification string (SHA-1) of a disco#info answer.
fn caps_ver(q: &Element) -> String {
    let mut s = String::new();
    let mut ids: Vec<String> = q
        .children()
        .filter(|c| c.is("identity", ns::DISCO_INFO))
        .map(|i| {
            format!(
                "{}/{}/{}/{}",
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr_ns(rxml::Namespace::xml(), "lang").unwrap_or(""),
                i.attr("name").unwrap_or("")
            )
        })
        .collect();
    ids.sort();
    for i in ids {
        s.push_str(&i);
        s.push('<');
    }
    let mut feats: Vec<&str> = q
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .filter_map(|c| c.attr("var"))
        .collect();
    feats.sort();
    for f in feats {
        s.push_str(f);
        s.push('<');
    }
    type Fields = Vec<(String, Vec<String>)>;
    let mut forms: Vec<(String, Fields)> = Vec::new();
    for x in q.children().filter(|c| c.is("x", ns::DATA_FORMS)) {
        let Ok(f) = palaver_proto::forms::DataForm::parse(x) else {
            continue;
        };
        let Some(ft) = f.form_type().map(str::to_string) else {
            continue;
        };
        let mut fields: Vec<(String, Vec<String>)> = f
            .fields
            .iter()
            .filter(|fl| fl.var.as_deref().is_some_and(|v| v != "FORM_TYPE"))
            .map(|fl| {
                let mut v = fl.values.clone();
                v.sort();
                (fl.var.clone().unwrap_or_default(), v)
            })
            .collect();
        fields.sort();
        forms.push((ft, fields));
    }
    forms.sort();
    for (ft, fields) in forms {
        s.push_str(&ft);
        s.push('<');
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    use base64::Engine;
    use sha1::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// A session's broadcast presence: learn its `+notify` interests.
fn presence_out(
    st: &Arc<State>,
    cx: &ModuleCx,
    full: &FullJid,
    stanza: &Stanza,
    event: PresenceEvent,
) {
    if event == PresenceEvent::Unavailable {
        st.sessions.remove(full.as_str());
        let (cx, full) = (cx.clone(), full.clone());
        cx.clone()
            .spawn(async move { expire_with_presence(&cx, &full).await });
        return;
    }
    if event == PresenceEvent::Initial {
        // Subscriptions on the service with `on_sub_and_presence`.
        let svc = ops::Svc {
            st: st.clone(),
            t: service_target(st),
            cx: cx.clone(),
            db: store::PubsubSql::of(cx),
        };
        let full = full.clone();
        cx.spawn(async move {
            if let Err(e) = svc.send_last_to_subscriber(&full).await {
                tracing::debug!(error = ?e, "sending last items to a subscriber failed");
            }
        });
    }
    let Some(c) = stanza.el().get_child("c", NS_CAPS) else {
        return;
    };
    let (Some(node), Some(ver)) = (c.attr("node"), c.attr("ver")) else {
        return;
    };
    // Legacy caps (no hash) are not verifiable: asked per session.
    let hash = c.attr("hash").unwrap_or("").to_string();
    if !hash.is_empty()
        && hash == "sha-1"
        && let Some(known) = VERIFIED.get(ver).map(|k| k.clone())
    {
        set_session_caps(st, cx, full, known);
        return;
    }
    // Bounded: queries a client never answers are dropped with its session.
    if st.pending.len() >= MAX_PENDING_CAPS {
        return;
    }
    let id = format!("caps-{:016x}", rand::random::<u64>());
    st.pending
        .insert(id.clone(), (full.clone(), hash, ver.to_string()));
    let mut iq = Element::bare("iq", ns::CLIENT);
    set_attr(&mut iq, "type", "get");
    set_attr(&mut iq, "id", id);
    let mut q = Element::bare("query", ns::DISCO_INFO);
    set_attr(&mut q, "node", format!("{node}#{ver}"));
    iq.append_child(q);
    let from = Jid::new(&st.service).unwrap_or_else(|_| Jid::from(full.to_bare()));
    cx.route(Stanza::new(
        StanzaKind::Iq,
        from,
        Some(Jid::from(full.clone())),
        iq,
    ));
}

/// Presence from a remote contact delivered to one of this host's
/// sessions: learn (or forget) the resource's `+notify` interests.
fn remote_presence(st: &Arc<State>, cx: &ModuleCx, session: &FullJid, stanza: &Stanza) {
    if cx.is_local(stanza.from.domain().as_str()) {
        return;
    }
    let Some(resource) = stanza.from.resource() else {
        return;
    };
    // Occupants of remote rooms are no contacts (and are not asked
    // through the room).
    if stanza
        .el()
        .has_child("x", "http://jabber.org/protocol/muc#user")
    {
        return;
    }
    let bare = stanza.from.to_bare();
    match stanza.type_attr() {
        None => {}
        Some("unavailable") => {
            if let Some(mut res) = st.remote.get_mut(bare.as_str()) {
                res.remove(resource.as_str());
                let empty = res.is_empty();
                drop(res);
                if empty {
                    st.remote.remove_if(bare.as_str(), |_, r| r.is_empty());
                }
            }
            return;
        }
        Some(_) => return,
    }
    let c = stanza.el().get_child("c", NS_CAPS);
    let (node, ver, hash) = match c {
        Some(c) => (
            c.attr("node").unwrap_or(""),
            c.attr("ver").unwrap_or(""),
            c.attr("hash").unwrap_or(""),
        ),
        None => ("", "", ""),
    };
    let Ok(full) = bare.with_resource_str(resource.as_str()) else {
        return;
    };
    let owner = session.to_bare();
    // The same presence reaches every session of an account: once per
    // account is enough.
    if let Some(mut res) = st.remote.get_mut(bare.as_str())
        && let Some(r) = res.get_mut(resource.as_str())
        && r.ver == ver
    {
        if r.owners.insert(owner.clone())
            && let Some(known) = r.notify.clone()
        {
            drop(res);
            send_last_remote(st, cx, &full, vec![owner], known);
        }
        return;
    }
    if !st.remote.contains_key(bare.as_str()) && st.remote.len() >= MAX_REMOTE {
        // Full: forget some other contact (it is learnt again from its
        // next presence).
        let victim = st.remote.iter().next().map(|e| e.key().clone());
        if let Some(v) = victim {
            st.remote.remove(&v);
        }
    }
    let known = if ver.is_empty() {
        Some(Arc::new(HashSet::new()))
    } else if hash == "sha-1" {
        VERIFIED.get(ver).map(|k| k.clone())
    } else {
        None
    };
    st.remote.entry(bare.to_string()).or_default().insert(
        resource.to_string(),
        RemoteResource {
            ver: ver.to_string(),
            notify: known.clone(),
            owners: HashSet::from([owner.clone()]),
        },
    );
    if let Some(known) = known {
        send_last_remote(st, cx, &full, vec![owner], known);
        return;
    }
    if st.remote_pending.len() >= MAX_PENDING_CAPS || node.is_empty() {
        return;
    }
    let id = format!("caps-{:016x}", rand::random::<u64>());
    st.remote_pending.insert(
        id.clone(),
        RemoteQuery {
            full: full.clone(),
            hash: hash.to_string(),
            ver: ver.to_string(),
        },
    );
    let mut iq = Element::bare("iq", ns::CLIENT);
    set_attr(&mut iq, "type", "get");
    set_attr(&mut iq, "id", id);
    let mut q = Element::bare("query", ns::DISCO_INFO);
    set_attr(&mut q, "node", format!("{node}#{ver}"));
    iq.append_child(q);
    // From the host itself: the answer comes back over federation to a
    // domain the remote server authenticates us for.
    let Ok(from) = Jid::new(&st.host) else {
        return;
    };
    cx.route(Stanza::new(StanzaKind::Iq, from, Some(Jid::from(full)), iq));
}

/// An IQ answer to the host: `true` when it answers one of our remote
/// capability queries (consumed).
fn remote_caps_answer(st: &Arc<State>, cx: &ModuleCx, stanza: &Stanza) -> bool {
    let Some(id) = stanza.id().filter(|i| i.starts_with("caps-")) else {
        return false;
    };
    let Some((_, q)) = st.remote_pending.remove(id) else {
        return false;
    };
    if stanza.from != q.full || stanza.is_error() {
        return true;
    }
    let Some(answer) = stanza.payload().filter(|a| a.is("query", ns::DISCO_INFO)) else {
        return true;
    };
    let notify = notify_nodes(answer);
    let verified = q.hash == "sha-1" && caps_ver(answer) == q.ver;
    if verified && VERIFIED.len() < MAX_VERIFIED {
        VERIFIED.insert(q.ver.clone(), notify.clone());
    }
    let owners: Vec<BareJid> = {
        let Some(mut res) = st.remote.get_mut(q.full.to_bare().as_str()) else {
            return true;
        };
        let Some(r) = res.get_mut(q.full.resource().as_str()) else {
            return true;
        };
        if r.ver != q.ver {
            // A newer presence changed its capabilities meanwhile.
            return true;
        }
        r.notify = Some(notify.clone());
        r.owners.iter().cloned().collect()
    };
    send_last_remote(st, cx, &q.full, owners, notify);
    true
}

/// Send the remote resource `full` the last items of each of `owners`'
/// nodes it asks for (XEP-0163 §4.3.4; access is checked per node).
fn send_last_remote(
    st: &Arc<State>,
    cx: &ModuleCx,
    full: &FullJid,
    owners: Vec<BareJid>,
    notify: Arc<HashSet<String>>,
) {
    if notify.is_empty() {
        return;
    }
    for owner in owners {
        let svc = ops::Svc {
            st: st.clone(),
            t: ops::Target {
                key: owner.to_string(),
                pep: Some(owner),
            },
            db: store::PubsubSql::of(cx),
            cx: cx.clone(),
        };
        let (full, notify) = (full.clone(), notify.clone());
        cx.spawn(async move {
            if let Err(e) = svc.send_last(&full, &notify).await {
                tracing::debug!(error = ?e, "sending last PEP items to a remote contact failed");
            }
        });
    }
}

/// Record a session's interests; on the first (or a widened) set, send
/// the last items it now wants (XEP-0163 §4.3.4).
fn set_session_caps(st: &Arc<State>, cx: &ModuleCx, full: &FullJid, notify: Arc<HashSet<String>>) {
    if cx.sessions().get(full).is_none() {
        return;
    }
    let before = st.sessions.insert(full.to_string(), notify.clone());
    let new: HashSet<String> = match before {
        Some(b) => notify.difference(&b).cloned().collect(),
        None => (*notify).clone(),
    };
    if new.is_empty() {
        return;
    }
    let st = st.clone();
    let cx2 = cx.clone();
    let full = full.clone();
    cx.spawn(async move {
        if let Err(e) = send_last_items(&st, &cx2, &full, &new).await {
            tracing::debug!(error = ?e, "sending last PEP items failed");
        }
    });
}

async fn send_last_items(
    st: &Arc<State>,
    cx: &ModuleCx,
    full: &FullJid,
    nodes: &HashSet<String>,
) -> Result<(), StanzaError> {
    let me = full.to_bare();
    let mut owners = vec![me.clone()];
    if let Some(user) = me.node() {
        let (_, roster) = cx
            .storage()
            .roster
            .roster(me.domain().as_str(), user.as_str())
            .await
            .map_err(|e| palaver_server::module::storage_failure("pubsub", &e))?;
        for it in roster {
            if it.subscription.has_to()
                && let Ok(b) = BareJid::new(&it.jid)
                && b.node().is_some()
                && cx.is_local(b.domain().as_str())
            {
                owners.push(b);
            }
        }
    }
    for o in owners {
        // Storage and routing are the server's: a contact's PEP service on
        // another local host is read the same way.
        let svc = ops::Svc {
            st: st.clone(),
            t: ops::Target {
                key: o.to_string(),
                pep: Some(o.clone()),
            },
            db: store::PubsubSql::of(cx),
            cx: cx.clone(),
        };
        svc.send_last(full, nodes).await?;
    }
    Ok(())
}

/// `pubsub#expire` = `presence`: the session `full` became unavailable;
/// its subscriptions end, and its account's when no session of it is
/// available any more.
async fn expire_with_presence(cx: &ModuleCx, full: &FullJid) {
    let bare = full.to_bare();
    let others = cx
        .sessions()
        .available(&bare)
        .into_iter()
        .any(|h| h.resource != full.resource().as_str());
    if let Err(e) = store::PubsubSql::of(cx)
        .expire_presence(full.as_str(), bare.as_str(), !others)
        .await
    {
        tracing::warn!(error = %e, "ending presence-bound pubsub subscriptions failed");
    }
}

async fn remove_user(_st: &State, cx: &ModuleCx, bare: &str) -> palaver_storage::Result<()> {
    let db = store::PubsubSql::of(cx);
    db.delete_service(bare).await?;
    for (service, node) in db.remove_entity(bare).await? {
        if !db.has_owner(&service, &node).await? {
            db.delete_node(&service, &node).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn caps_ver_of_the_xep_example() {
        // XEP-0115 §5.2 simple generation example.
        let q: minidom::Element = "<query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='><identity category='client' name='Exodus 0.9.1' type='pc'/><feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/></query>".parse().expect("xml");
        assert_eq!(super::caps_ver(&q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
        assert!(super::notify_nodes(&q).is_empty());
    }
}
