//! XEP-0191 blocking command.
//!
//! The block list of every user with a bound session is cached in memory
//! (loaded when a resource binds, dropped when the last one closes) so the
//! stanza hooks never touch storage. Paths that reach a user without a
//! session (offline messages, subscription requests and probes) read the
//! stored list.
//!
//! Enforcement (§3.5, §3.6): nothing from a blocked entity reaches the user
//! (messages and IQ requests are answered with `service-unavailable`,
//! presence and subscription requests are dropped, probes go unanswered),
//! and nothing the user sends reaches a blocked entity (messages and IQ
//! requests are answered with `not-acceptable` + `<blocked/>`). IQs
//! addressed to the user's bare JID and answered by the server itself
//! (vCard…) are not filtered.

use dashmap::DashMap;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::{
    OfflineMessage, PresenceIn, RemoveUser, SessionBound, SessionClosed, UserReceive, UserSend,
};
use palaver_server::{HookAction, HookCx, ModuleCx};
use palaver_server::{
    HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleDef, NoOptions,
};
use std::collections::HashSet;
use std::sync::Arc;

/// `mod_blocking`.
pub struct Blocking;

/// `mod_blocking` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Blocking>();

impl Module for Blocking {
    const NAME: &'static str = "mod_blocking";
    type Options = NoOptions;
    fn start(host: &mut HostSetup, o: NoOptions) -> Result<Self, String> {
        start(host, o)?;
        Ok(Blocking)
    }
}

const NS_BLOCKING: &str = "urn:xmpp:blocking";
const NS_BLOCKED_ERR: &str = "urn:xmpp:blocking:errors";

/// Bare JID of a user → blocked JIDs (bare, full or domain).
type Cache = DashMap<String, Arc<HashSet<String>>>;

fn start(host: &mut HostSetup, _o: NoOptions) -> Result<(), String> {
    host.migrations(store::MIGRATIONS);
    let cache: Arc<Cache> = Arc::new(DashMap::new());
    host.add_feature(NS_BLOCKING);
    let c = cache.clone();
    host.on_iq(IqScope::Account, IqType::Get, NS_BLOCKING, move |req| {
        let c = c.clone();
        async move { get(req, c).await }
    });
    let c = cache.clone();
    host.on_iq(IqScope::Account, IqType::Set, NS_BLOCKING, move |req| {
        let c = c.clone();
        async move { set(req, c).await }
    });
    let c = cache.clone();
    host.hook_async::<SessionBound, _>(60, move |cx, jid| {
        let c = c.clone();
        async move {
            let _ = load(&cx, &c, &jid.to_bare()).await;
            HookAction::Continue
        }
    });
    let c = cache.clone();
    host.hook_async::<SessionClosed, _>(60, move |cx, jid| {
        // Checked under the map's shard lock: a resource binding meanwhile
        // is already in the session table, or loads its list after this.
        let bare = jid.to_bare();
        c.remove_if(bare.as_str(), |_, _| !cx.sessions().has_sessions(&bare));
        async { HookAction::Continue }
    });
    let c = cache.clone();
    host.hook::<UserReceive>(90, move |cx, st| receive(&c, cx, st));
    let c = cache.clone();
    host.hook::<UserSend>(90, move |cx, st| send(&c, cx, st));
    let c = cache.clone();
    host.hook_async::<OfflineMessage, _>(90, move |cx, st| {
        let c = c.clone();
        async move {
            if !blocked_by_recipient(&cx, &c, &st).await {
                return HookAction::Continue;
            }
            let me = st.to.as_ref().map(|t| Jid::from(t.to_bare()));
            cx.bounce(&st, Condition::ServiceUnavailable, me);
            HookAction::Drop
        }
    });
    let c = cache.clone();
    host.hook_async::<PresenceIn, _>(90, move |cx, st| {
        let c = c.clone();
        async move {
            // Subscription requests and probes from a blocked entity are
            // dropped: the user looks offline and is not pestered. Other
            // subscription states still update the roster (their delivery
            // to the user's sessions is filtered by the receive hook).
            if matches!(st.type_attr(), Some("subscribe") | Some("probe"))
                && blocked_by_recipient(&cx, &c, &st).await
            {
                HookAction::Drop
            } else {
                HookAction::Continue
            }
        }
    });
    host.account_data(portable::BlockingData);
    let c = cache;
    host.hook_async::<RemoveUser, _>(50, move |cx, a| {
        c.remove(&format!("{}@{}", a.user, a.host));
        async move {
            if let Err(e) = store::BlocksSql::of(&cx)
                .unblock(&a.host, &a.user, &[])
                .await
            {
                tracing::warn!(error = %e, "removing block list failed");
            }
            HookAction::Continue
        }
    });
    Ok(())
}

/// §3.5: a stanza from a blocked entity to a session of the user.
fn receive(cache: &Cache, ctx: &HookCx<'_>, st: &mut Stanza) -> HookAction {
    // Errors are let through: they include the user's own "blocked" bounces.
    if st.is_error() {
        return HookAction::Continue;
    }
    let Some(session) = ctx.session() else {
        return HookAction::Continue;
    };
    let me = session.to_bare();
    let Some(list) = cache.get(me.as_str()).map(|l| l.clone()) else {
        return HookAction::Continue;
    };
    if list.is_empty() || st.from.to_bare() == me || !matches(&list, &st.from) {
        return HookAction::Continue;
    }
    if answerable(st) {
        ctx.bounce(st, Condition::ServiceUnavailable, Some(Jid::from(me)));
    }
    HookAction::Drop
}

/// §3.6: a stanza from the user to a blocked entity.
fn send(cache: &Cache, ctx: &HookCx<'_>, st: &mut Stanza) -> HookAction {
    let Some(to) = st.to.clone() else {
        return HookAction::Continue;
    };
    let Some(session) = ctx.session() else {
        return HookAction::Continue;
    };
    let me = session.to_bare();
    let Some(list) = cache.get(me.as_str()).map(|l| l.clone()) else {
        return HookAction::Continue;
    };
    if list.is_empty() || to.to_bare() == me || !matches(&list, &to) {
        return HookAction::Continue;
    }
    if answerable(st) {
        let err = StanzaError::new(Condition::NotAcceptable)
            .with_extra(Element::bare("blocked", NS_BLOCKED_ERR));
        let mut bounce = st.clone();
        bounce.from = Jid::from(session.clone());
        if let Some(reply) = bounce.error_reply(&err, Some(to)) {
            ctx.route(reply);
        }
    }
    HookAction::Drop
}

/// Messages and IQ requests get an error back; presence, results and errors don't.
fn answerable(st: &Stanza) -> bool {
    match st.kind {
        StanzaKind::Message => !st.is_error(),
        StanzaKind::Iq => matches!(st.type_attr(), Some("get") | Some("set")),
        StanzaKind::Presence => false,
    }
}

/// Whether the local recipient of `st` (online or not) blocks its sender.
async fn blocked_by_recipient(core: &ModuleCx, cache: &Cache, st: &Stanza) -> bool {
    let Some(to) = &st.to else { return false };
    let bare = to.to_bare();
    if st.from.to_bare() == bare {
        return false;
    }
    if let Some(list) = cache.get(bare.as_str()).map(|l| l.clone()) {
        return matches(&list, &st.from);
    }
    let Some(node) = bare.node() else {
        return false;
    };
    match store::BlocksSql::of(core)
        .blocklist(bare.domain().as_str(), node.as_str())
        .await
    {
        Ok(list) => {
            let list: HashSet<String> = list.into_iter().collect();
            matches(&list, &st.from)
        }
        Err(e) => {
            tracing::warn!(error = %e, "blocklist lookup failed");
            false
        }
    }
}

/// Whether `jid` is covered by a block list entry (XEP-0191 §3.7 / XEP-0016
/// matching: the full JID, the bare JID, the domain with the resource, or the domain).
fn matches(list: &HashSet<String>, jid: &Jid) -> bool {
    if list.contains(jid.as_str())
        || list.contains(jid.to_bare().as_str())
        || list.contains(jid.domain().as_str())
    {
        return true;
    }
    match jid.resource() {
        Some(r) if jid.node().is_some() => list.contains(&format!("{}/{}", jid.domain(), r)),
        _ => false,
    }
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("blocklist", &e)
}

/// Read the stored list; refresh the cache while the user has sessions.
async fn load(
    core: &ModuleCx,
    cache: &Cache,
    bare: &BareJid,
) -> Result<Arc<HashSet<String>>, StanzaError> {
    let node = bare
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let list: HashSet<String> = store::BlocksSql::of(core)
        .blocklist(bare.domain().as_str(), &node)
        .await
        .map_err(internal)?
        .into_iter()
        .collect();
    let list = Arc::new(list);
    if core.sessions().has_sessions(bare) {
        cache.insert(bare.to_string(), list.clone());
    }
    Ok(list)
}

fn item(jid: &str) -> Element {
    let mut i = Element::bare("item", NS_BLOCKING);
    set_attr(&mut i, "jid", jid);
    i
}

async fn get(req: IqRequest, cache: Arc<Cache>) -> IqResult {
    let (me, _, _) = req.own_account()?;
    let list = load(&req.cx, &cache, &me).await?;
    let mut sorted: Vec<&String> = list.iter().collect();
    sorted.sort();
    let mut q = Element::bare("blocklist", NS_BLOCKING);
    for j in sorted {
        q.append_child(item(j));
    }
    Ok(Some(q))
}

async fn set(req: IqRequest, cache: Arc<Cache>) -> IqResult {
    let (me, host, node) = req.own_account()?;
    let p = req
        .payload()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let block = p.is("block", NS_BLOCKING);
    if !block && !p.is("unblock", NS_BLOCKING) {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    let mut jids = Vec::new();
    for i in p.children().filter(|c| c.is("item", NS_BLOCKING)) {
        let raw = i
            .attr("jid")
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        let j = Jid::new(raw).map_err(|_| StanzaError::new(Condition::JidMalformed))?;
        let j = j.to_string();
        if !jids.contains(&j) {
            jids.push(j);
        }
    }
    if block && jids.is_empty() {
        return Err(StanzaError::new(Condition::BadRequest).text("block needs at least one item"));
    }
    let core = req.cx.clone();
    let before = load(&core, &cache, &me).await?;
    if block {
        store::BlocksSql::of(&core)
            .block(&host, &node, &jids)
            .await
            .map_err(internal)?;
    } else {
        store::BlocksSql::of(&core)
            .unblock(&host, &node, &jids)
            .await
            .map_err(internal)?;
    }
    load(&core, &cache, &me).await?;
    push(&core, &me, block, &jids);
    if block {
        // §3.3: newly blocked contacts see the user go offline.
        for j in jids.iter().filter(|j| !before.contains(*j)) {
            let Ok(to) = Jid::new(j) else { continue };
            for full in available(&core, &me) {
                let mut el = Element::bare("presence", ns::CLIENT);
                set_attr(&mut el, "type", "unavailable");
                core.route(Stanza::new(
                    StanzaKind::Presence,
                    Jid::from(full),
                    Some(to.clone()),
                    el,
                ));
            }
        }
    } else {
        // §3.4: unblocked contacts subscribed to the user's presence get it again.
        let unblocked: Vec<String> = if jids.is_empty() {
            before.iter().cloned().collect()
        } else {
            jids.into_iter().filter(|j| before.contains(j)).collect()
        };
        for j in unblocked {
            let subscribed = matches!(
                core.storage().roster.roster_item(&host, &node, &j).await,
                Ok(Some(it)) if it.subscription.has_from()
            );
            let Ok(to) = Jid::new(&j) else { continue };
            if !subscribed {
                continue;
            }
            for h in core.sessions().sessions(&me) {
                let (Some(_), Some(p)) = (h.priority, h.presence.as_ref()) else {
                    continue;
                };
                let Ok(full) = me.with_resource_str(&h.resource) else {
                    continue;
                };
                let mut st = Stanza::new(
                    StanzaKind::Presence,
                    Jid::from(full.clone()),
                    Some(to.clone()),
                    (**p).clone(),
                );
                if core.run_hook::<UserSend>(Some(&full), &mut st) == HookAction::Continue {
                    core.route(st);
                }
            }
        }
    }
    Ok(None)
}

/// Full JIDs of the user's available resources.
fn available(core: &ModuleCx, me: &BareJid) -> Vec<FullJid> {
    core.sessions()
        .available(me)
        .into_iter()
        .filter_map(|h| me.with_resource_str(&h.resource).ok())
        .collect()
}

/// §3.3.3 / §3.4.3: tell every resource of the user about the change.
fn push(core: &ModuleCx, me: &BareJid, block: bool, jids: &[String]) {
    let mut payload = Element::bare(if block { "block" } else { "unblock" }, NS_BLOCKING);
    for j in jids {
        payload.append_child(item(j));
    }
    for h in core.sessions().sessions(me) {
        let Ok(full) = me.with_resource_str(&h.resource) else {
            continue;
        };
        let mut el = Element::bare("iq", ns::CLIENT);
        set_attr(&mut el, "type", "set");
        set_attr(
            &mut el,
            "id",
            format!("block-push-{}", rand::random::<u32>()),
        );
        el.append_child(payload.clone());
        core.route(Stanza::new(
            StanzaKind::Iq,
            Jid::from(me.clone()),
            Some(Jid::from(full)),
            el,
        ));
    }
}

/// The block list's part of portable account data: `<blocklist
/// xmlns='urn:xmpp:blocking'>` (XEP-0191 as an extension of XEP-0227; other
/// servers ignore it, as the XEP allows). Privacy lists (XEP-0016) from
/// other servers are reported and skipped.
mod portable {
    use super::NS_BLOCKING;
    use jid::Jid;
    use minidom::Element;
    use palaver_proto::stanza::set_attr;
    use palaver_server::ModuleCx;
    use palaver_server::account_data::{AccountData, Tally, describe};
    use palaver_server::hooks::Account;
    use palaver_storage::StorageError;

    const NS_PRIVACY: &str = "jabber:iq:privacy";
    const BLOCKED: &str = "blocked JID(s)";

    pub(super) struct BlockingData;

    impl AccountData for BlockingData {
        type Data = Vec<String>;
        const ELEMENTS: &'static [(&'static str, &'static str)] =
            &[("blocklist", NS_BLOCKING), ("query", NS_PRIVACY)];

        async fn export(
            &self,
            cx: &ModuleCx,
            a: &Account,
            tally: &mut Tally,
        ) -> Result<Vec<Element>, StorageError> {
            let list = super::store::BlocksSql::of(cx)
                .blocklist(&a.host, &a.user)
                .await?;
            tally.count(BLOCKED, list.len());
            if list.is_empty() {
                return Ok(vec![]);
            }
            let mut b = Element::bare("blocklist", NS_BLOCKING);
            for j in list {
                let mut i = Element::bare("item", NS_BLOCKING);
                set_attr(&mut i, "jid", j);
                b.append_child(i);
            }
            Ok(vec![b])
        }

        fn read(
            &self,
            a: &Account,
            el: &Element,
            data: &mut Vec<String>,
            tally: &mut Tally,
        ) -> Result<(), String> {
            let jid = a.jid();
            if el.is("query", NS_PRIVACY) {
                tally.warn(format!(
                    "{jid}: privacy lists (XEP-0016) are not supported by Palaver; ignored (XEP-0191 block lists are)"
                ));
                return Ok(());
            }
            for item in el.children() {
                match item.attr("jid").map(Jid::new) {
                    Some(Ok(j)) if item.is("item", NS_BLOCKING) => {
                        let j = j.to_string();
                        if !data.contains(&j) {
                            data.push(j);
                        }
                    }
                    _ => tally.warn(format!(
                        "{jid}: ignored block list entry {}",
                        describe(item)
                    )),
                }
            }
            Ok(())
        }

        async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> {
            super::store::BlocksSql::of(cx)
                .unblock(&a.host, &a.user, &[])
                .await
        }

        async fn write(
            &self,
            cx: &ModuleCx,
            a: &Account,
            data: Vec<String>,
            tally: &mut Tally,
        ) -> Result<(), StorageError> {
            tally.count(BLOCKED, 0);
            if !data.is_empty() {
                super::store::BlocksSql::of(cx)
                    .block(&a.host, &a.user, &data)
                    .await?;
                tally.count(BLOCKED, data.len());
            }
            Ok(())
        }
    }
}

/// The store of `mod_blocking`, beside the module (see `palaver_storage::Db`).
pub mod store {
    use palaver_server::ModuleCx;
    use palaver_storage::{BeginWrite, Db, Dialect, ModuleMigration, Result, on_db};

    /// The module's own table. (Created by the base schema before stores
    /// moved beside their modules; this step keeps new databases right.)
    pub const MIGRATIONS: &[ModuleMigration] = &[ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS blocklist (host TEXT NOT NULL, username TEXT NOT NULL, \
                 jid TEXT NOT NULL, PRIMARY KEY (host, username, jid))",
        postgres: "CREATE TABLE IF NOT EXISTS blocklist (host TEXT NOT NULL, username TEXT NOT NULL, \
                   jid TEXT NOT NULL, PRIMARY KEY (host, username, jid))",
    }];

    /// Block lists (XEP-0191), on either backend.
    pub struct BlocksSql(Db);

    impl BlocksSql {
        /// The store over the server's pool.
        pub fn new(db: Db) -> BlocksSql {
            BlocksSql(db)
        }

        /// The store of a running server.
        pub fn of(cx: &ModuleCx) -> BlocksSql {
            BlocksSql(cx.storage().db.clone())
        }

        /// Blocked JIDs of a user, sorted byte-wise.
        pub async fn blocklist(&self, host: &str, user: &str) -> Result<Vec<String>> {
            // PostgreSQL's default collation is locale-aware; order as bytes.
            let sql = match self.0.dialect() {
                Dialect::Sqlite => {
                    "SELECT jid FROM blocklist WHERE host = $1 AND username = $2 ORDER BY jid"
                }
                Dialect::Postgres => {
                    "SELECT jid FROM blocklist WHERE host = $1 AND username = $2 ORDER BY jid COLLATE \"C\""
                }
            };
            Ok(on_db!(&self.0, |pool| {
                sqlx::query_scalar(sql)
                    .bind(host)
                    .bind(user)
                    .fetch_all(pool)
                    .await?
            }))
        }

        /// Add JIDs (already present ones are ignored), all or none.
        pub async fn block(&self, host: &str, user: &str, jids: &[String]) -> Result<()> {
            if jids.is_empty() {
                return Ok(());
            }
            on_db!(&self.0, |pool| {
                let mut tx = pool.begin_write().await?;
                for j in jids {
                    sqlx::query(
                        "INSERT INTO blocklist (host, username, jid) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(host)
                    .bind(user)
                    .bind(j)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            });
            Ok(())
        }

        /// Remove JIDs; an empty slice removes the whole list.
        pub async fn unblock(&self, host: &str, user: &str, jids: &[String]) -> Result<()> {
            on_db!(&self.0, |pool| {
                let mut tx = pool.begin_write().await?;
                if jids.is_empty() {
                    sqlx::query("DELETE FROM blocklist WHERE host = $1 AND username = $2")
                        .bind(host)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                }
                for j in jids {
                    sqlx::query(
                        "DELETE FROM blocklist WHERE host = $1 AND username = $2 AND jid = $3",
                    )
                    .bind(host)
                    .bind(user)
                    .bind(j)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            });
            Ok(())
        }
    }
}
