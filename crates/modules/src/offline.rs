//! XEP-0160: offline messages, delivered in order at the next available
//! presence with a XEP-0203 `<delay/>`.

use jid::{FullJid, Jid};
use minidom::Element;
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::core::Core;
use palaver_server::module::PresenceEvent;
use palaver_server::sm::SessionMsg;
use palaver_server::{HostSetup, ModuleDef};
use std::sync::Arc;

/// `mod_offline`.
pub const MODULE: ModuleDef = ModuleDef {
    name: "mod_offline",
    start,
};

const HINTS: &str = "urn:xmpp:hints";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Most messages stored per user; past it the sender gets `service-unavailable`.
    max_user_offline_messages: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_user_offline_messages: 1000,
        }
    }
}

fn start(host: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    let o: Options = palaver_server::module::parse_options(opts)?;
    let limit = o.max_user_offline_messages;
    host.add_feature("msgoffline");
    host.hook_offline_message(
        50,
        Arc::new(move |core, st| Box::pin(async move { store(core, st, limit).await })),
    );
    host.hook_presence_out(
        40,
        Arc::new(|core, jid, _st, ev| {
            Box::pin(async move {
                if ev == PresenceEvent::Initial {
                    deliver(core, jid).await;
                }
            })
        }),
    );
    host.hook_remove_user(
        50,
        Arc::new(|core, host, user| {
            Box::pin(async move {
                if let Err(e) = core.storage.offline.remove_offline_user(&host, &user).await {
                    tracing::warn!(error = %e, "removing offline messages failed");
                }
            })
        }),
    );
    Ok(())
}

fn now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Returns `true` when the message was taken (stored, or dropped as not worth
/// storing); `false` makes the router answer `service-unavailable`.
async fn store(core: Arc<Core>, st: Stanza, limit: usize) -> bool {
    if !matches!(st.type_attr(), None | Some("chat") | Some("normal")) {
        return false;
    }
    let el = &st.el;
    if el.has_child("no-store", HINTS) || el.has_child("no-permanent-store", HINTS) {
        return true;
    }
    // XEP-0160/0334: only messages with content (a body) or an explicit hint.
    if !el.has_child("body", ns::CLIENT) && !el.has_child("store", HINTS) {
        return true;
    }
    let Some(to) = st.to.as_ref() else {
        return false;
    };
    let Some(node) = to.node() else { return false };
    let host = to.domain().to_string();
    let t = now();
    let mut copy = st.el.clone();
    let mut delay = Element::bare("delay", ns::DELAY);
    set_attr(&mut delay, "from", host.as_str());
    set_attr(
        &mut delay,
        "stamp",
        crate::time::format_utc(t.as_secs(), t.subsec_millis()),
    );
    copy.append_child(delay);
    let xml = palaver_proto::writer::to_string(&copy, "");
    match core
        .storage
        .offline
        .store_offline(&host, node.as_str(), &xml, t.as_millis() as i64, limit)
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "storing an offline message failed");
            false
        }
    }
}

async fn deliver(core: Arc<Core>, jid: FullJid) {
    let host = jid.domain().to_string();
    let Some(node) = jid.node() else { return };
    let msgs = match core
        .storage
        .offline
        .offline_messages(&host, node.as_str())
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "reading offline messages failed");
            return;
        }
    };
    let mut last = None;
    for (id, xml, _) in msgs {
        match xml.parse::<Element>() {
            Ok(el) => {
                let from = el.attr("from").and_then(|f| Jid::new(f).ok());
                let Some(from) = from else {
                    last = Some(id);
                    continue;
                };
                let st = Stanza::new(StanzaKind::Message, from, Some(Jid::from(jid.clone())), el);
                // Wait for room in the session's queue: a long backlog is
                // delivered whole, in order.
                let Some(h) = core.sm.get(&jid) else { break };
                if h.tx.send(SessionMsg::Stanza(Box::new(st))).await.is_err() {
                    break;
                }
                last = Some(id);
            }
            Err(e) => {
                tracing::warn!(error = %e, id, "skipping an unreadable offline message");
                last = Some(id);
            }
        }
    }
    if let Some(id) = last
        && let Err(e) = core
            .storage
            .offline
            .delete_offline_upto(&host, node.as_str(), id)
            .await
    {
        tracing::warn!(error = %e, "deleting delivered offline messages failed");
    }
}
