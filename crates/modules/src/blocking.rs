//! XEP-0191 blocking command.

use dashmap::DashMap;
use jid::{BareJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::core::Core;
use palaver_server::module::HookAction;
use palaver_server::sm::SessionManager;
use palaver_server::{HostSetup, IqRequest, IqResult, IqScope, IqType, ModuleDef};
use std::collections::HashSet;
use std::sync::Arc;

/// `mod_blocking`.
pub const MODULE: ModuleDef = ModuleDef {
    name: "mod_blocking",
    start,
};

const NS_BLOCKING: &str = "urn:xmpp:blocking";
const NS_BLOCKED_ERR: &str = "urn:xmpp:blocking:errors";

/// Bare JID of a user → blocked JIDs (bare, full or domain).
type Cache = DashMap<String, Arc<HashSet<String>>>;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {}

fn start(host: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    palaver_server::module::parse_options::<Options>(opts)?;
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
    host.hook_session_bound(
        60,
        Arc::new(move |core, jid| {
            let c = c.clone();
            Box::pin(async move {
                let bare = jid.to_bare();
                let _ = load(&core, &c, &bare).await;
            })
        }),
    );
    let c = cache.clone();
    host.hook_user_receive(
        90,
        Arc::new(move |ctx, st| {
            let Some(list) = c.get(ctx.session_jid.to_bare().as_str()).map(|l| l.clone()) else {
                return HookAction::Continue;
            };
            // Errors (including our own "blocked" bounces) are let through.
            if st.is_error() || !matches(&list, &st.from) {
                return HookAction::Continue;
            }
            // XEP-0191 §3.5: nothing from a blocked entity reaches the user.
            let answer = match st.kind {
                StanzaKind::Message => !st.is_error(),
                StanzaKind::Iq => matches!(st.type_attr(), Some("get") | Some("set")),
                StanzaKind::Presence => false,
            };
            if answer {
                ctx.core.bounce(
                    st,
                    Condition::ServiceUnavailable,
                    Some(Jid::from(ctx.session_jid.to_bare())),
                );
            }
            HookAction::Drop
        }),
    );
    let c = cache.clone();
    host.hook_user_send(
        90,
        Arc::new(move |ctx, st| {
            let Some(to) = st.to.clone() else {
                return HookAction::Continue;
            };
            let Some(list) = c.get(ctx.session_jid.to_bare().as_str()).map(|l| l.clone()) else {
                return HookAction::Continue;
            };
            if !matches(&list, &to) {
                return HookAction::Continue;
            }
            let answer = match st.kind {
                StanzaKind::Message => !st.is_error(),
                StanzaKind::Iq => matches!(st.type_attr(), Some("get") | Some("set")),
                StanzaKind::Presence => false,
            };
            if answer {
                // §3.6: tell the user the recipient is blocked.
                let err = StanzaError::new(Condition::NotAcceptable)
                    .with_extra(Element::bare("blocked", NS_BLOCKED_ERR));
                let mut bounce = st.clone();
                bounce.from = Jid::from(ctx.session_jid.clone());
                if let Some(reply) = bounce.error_reply(&err, Some(to)) {
                    ctx.core.route(reply);
                }
            }
            HookAction::Drop
        }),
    );
    let c = cache;
    host.hook_remove_user(
        50,
        Arc::new(move |core, host, user| {
            c.remove(&format!("{user}@{host}"));
            Box::pin(async move {
                let _ = core.storage.blocks.unblock(&host, &user, &[]).await;
            })
        }),
    );
    Ok(())
}

/// Whether `jid` is covered by a block list entry (full JID, bare JID or domain).
fn matches(list: &HashSet<String>, jid: &Jid) -> bool {
    list.contains(jid.as_str())
        || list.contains(jid.to_bare().as_str())
        || list.contains(jid.domain().as_str())
}

fn internal(e: impl std::fmt::Display) -> StanzaError {
    tracing::warn!(error = %e, "blocklist storage error");
    StanzaError::new(Condition::InternalServerError)
}

async fn load(
    core: &Arc<Core>,
    cache: &Cache,
    bare: &BareJid,
) -> Result<Arc<HashSet<String>>, StanzaError> {
    let node = bare
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let list: HashSet<String> = core
        .storage
        .blocks
        .blocklist(bare.domain().as_str(), &node)
        .await
        .map_err(internal)?
        .into_iter()
        .collect();
    let list = Arc::new(list);
    cache.insert(bare.to_string(), list.clone());
    Ok(list)
}

fn own(req: &IqRequest) -> Result<BareJid, StanzaError> {
    req.own_account().map(|(me, _, _)| me)
}

fn item(jid: &str) -> Element {
    let mut i = Element::bare("item", NS_BLOCKING);
    set_attr(&mut i, "jid", jid);
    i
}

async fn get(req: IqRequest, cache: Arc<Cache>) -> IqResult {
    let me = own(&req)?;
    let list = load(&req.core, &cache, &me).await?;
    let mut sorted: Vec<&String> = list.iter().collect();
    sorted.sort();
    let mut q = Element::bare("blocklist", NS_BLOCKING);
    for j in sorted {
        q.append_child(item(j));
    }
    Ok(Some(q))
}

async fn set(req: IqRequest, cache: Arc<Cache>) -> IqResult {
    let me = own(&req)?;
    let node = me
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| StanzaError::new(Condition::Forbidden))?;
    let host = me.domain().to_string();
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
        jids.push(j.to_string());
    }
    if block && jids.is_empty() {
        return Err(StanzaError::new(Condition::BadRequest).text("block needs at least one item"));
    }
    let core = req.core.clone();
    let before = load(&core, &cache, &me).await?;
    if block {
        core.storage
            .blocks
            .block(&host, &node, &jids)
            .await
            .map_err(internal)?;
    } else {
        core.storage
            .blocks
            .unblock(&host, &node, &jids)
            .await
            .map_err(internal)?;
    }
    load(&core, &cache, &me).await?;
    // Push the change to every resource of the user (§3.3, §3.4).
    let mut payload = Element::bare(if block { "block" } else { "unblock" }, NS_BLOCKING);
    for j in &jids {
        payload.append_child(item(j));
    }
    for h in core.sm.sessions(&me) {
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
        let _ = SessionManager::deliver(
            &h,
            Stanza::new(
                StanzaKind::Iq,
                Jid::from(me.clone()),
                Some(Jid::from(full)),
                el,
            ),
        );
    }
    if block {
        // §3.3.4: newly blocked contacts see the user go offline.
        for j in jids.iter().filter(|j| !before.contains(*j)) {
            let Ok(to) = Jid::new(j) else { continue };
            for h in core.sm.sessions(&me) {
                if h.priority.is_none() {
                    continue;
                }
                let Ok(full) = me.with_resource_str(&h.resource) else {
                    continue;
                };
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
    }
    Ok(None)
}
