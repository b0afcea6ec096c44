//! XEP-0160: offline messages, delivered in order at the next available
//! presence with a XEP-0203 `<delay/>`.

use dashmap::DashMap;
use jid::{FullJid, Jid};
use minidom::Element;
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::{OfflineMessage, PresenceOut, RemoveUser};
use palaver_server::module::PresenceEvent;
use palaver_server::router::local::Undelivered;
use palaver_server::{HookAction, ModuleCx};
use palaver_server::{HostSetup, Module, ModuleDef};
use std::sync::Arc;

/// `mod_offline`.
pub struct Offline;

/// `mod_offline` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Offline>();

impl Module for Offline {
    const NAME: &'static str = "mod_offline";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Offline)
    }
}

const HINTS: &str = "urn:xmpp:hints";

/// `mod_offline` options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
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

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    let limit = o.max_user_offline_messages;
    host.add_feature("msgoffline");
    host.hook_async::<OfflineMessage, _>(50, move |cx, st| async move {
        if store(cx, st, limit).await {
            HookAction::Drop
        } else {
            HookAction::Continue
        }
    });
    let busy: Arc<DashMap<String, ()>> = Arc::new(DashMap::new());
    host.hook_async::<PresenceOut, _>(40, move |cx, p| {
        let busy = busy.clone();
        async move {
            if p.event != PresenceEvent::Initial {
                return HookAction::Continue;
            }
            // One delivery per account at a time: two resources coming
            // online together must not both get the backlog.
            let bare = p.session.to_bare().to_string();
            if busy.insert(bare.clone(), ()).is_some() {
                return HookAction::Continue;
            }
            deliver(cx, p.session, Busy(busy, bare)).await;
            HookAction::Continue
        }
    });
    host.account_data(portable::OfflineData);
    host.hook_async::<RemoveUser, _>(50, |cx, a| async move {
        let offline = &cx.storage().offline;
        if let Err(e) = offline.remove_offline_user(&a.host, &a.user).await {
            tracing::warn!(error = %e, "removing offline messages failed");
        }
        HookAction::Continue
    });
    Ok(())
}

/// Marks an account's delivery as running until dropped (also on panic).
struct Busy(Arc<DashMap<String, ()>>, String);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

fn now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Returns `true` when the message was taken (stored, or dropped as not worth
/// storing); `false` makes the router answer `service-unavailable`.
async fn store(core: ModuleCx, st: Stanza, limit: usize) -> bool {
    if !matches!(st.type_attr(), None | Some("chat") | Some("normal")) {
        return false;
    }
    let el = st.el();
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
    let mut copy = st.to_element();
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
        .storage()
        .offline
        .store_offline(&host, node.as_str(), &xml, t.as_millis() as i64, limit)
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            // Not stored: the sender learns it (the database may be down).
            let err = palaver_server::module::storage_failure("offline message", &e);
            core.bounce_with(&st, err, None);
            true
        }
    }
}

/// Deliver the stored messages to the session `jid` (which just sent its
/// initial presence), in order, then delete them.
///
/// This runs inside the session's own task, which cannot drain its queue
/// meanwhile: what fits in the queue is handed over here; a longer backlog
/// is finished by a task of its own that waits for room (through the
/// router), so it is neither lost nor blocks the login.
async fn deliver(core: ModuleCx, jid: FullJid, busy: Busy) {
    let host = jid.domain().to_string();
    let Some(node) = jid.node().map(|n| n.to_string()) else {
        return;
    };
    let msgs = match core.storage().offline.offline_messages(&host, &node).await {
        Ok(m) if !m.is_empty() => m,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "reading offline messages failed");
            return;
        }
    };
    // The session that sent the initial presence, and only that one.
    if core
        .sessions()
        .get(&jid)
        .is_none_or(|h| h.priority.is_none())
    {
        return;
    }
    let mut last = None;
    let mut msgs = msgs.into_iter();
    while let Some((id, xml, _)) = msgs.next() {
        let Some(st) = restore(id, &xml, &jid) else {
            last = Some(id);
            continue;
        };
        match core.try_deliver(st) {
            Ok(()) => last = Some(id),
            Err(Undelivered::NoSession(_)) => break,
            Err(Undelivered::Full(first)) => {
                tokio::spawn(async move {
                    let _busy = busy;
                    let mut next = Some((id, *first));
                    while let Some((id, st)) = next.take() {
                        if core.deliver_waiting(st).await.is_err() {
                            // Gone, or stopped reading: the rest stays stored.
                            break;
                        }
                        last = Some(id);
                        next = msgs.by_ref().find_map(|(id, xml, _)| {
                            let st = restore(id, &xml, &jid);
                            if st.is_none() {
                                last = Some(id);
                            }
                            st.map(|st| (id, st))
                        });
                    }
                    delete_upto(&core, &host, &node, last).await;
                });
                return;
            }
        }
    }
    delete_upto(&core, &host, &node, last).await;
}

/// A stored message as a stanza for `to`; `None` (logged) when unreadable.
fn restore(id: i64, xml: &str, to: &FullJid) -> Option<Stanza> {
    let el = match xml.parse::<Element>() {
        Ok(el) => el,
        Err(e) => {
            tracing::warn!(error = %e, id, "skipping an unreadable offline message");
            return None;
        }
    };
    let Some(from) = el.attr("from").and_then(|f| Jid::new(f).ok()) else {
        tracing::warn!(id, "skipping an offline message without a sender");
        return None;
    };
    Some(Stanza::new(
        StanzaKind::Message,
        from,
        Some(Jid::from(to.clone())),
        el,
    ))
}

async fn delete_upto(core: &ModuleCx, host: &str, node: &str, last: Option<i64>) {
    if let Some(id) = last
        && let Err(e) = core
            .storage()
            .offline
            .delete_offline_upto(host, node, id)
            .await
    {
        tracing::warn!(error = %e, "deleting delivered offline messages failed");
    }
}

/// Offline messages' part of portable account data (XEP-0227):
/// `<offline-messages>` with `jabber:client` messages, each carrying a
/// XEP-0203 `<delay/>` (the legacy XEP-0091 stamp is read too).
mod portable {
    use jid::Jid;
    use minidom::Element;
    use palaver_proto::datetime::{format_datetime, parse_datetime};
    use palaver_proto::ns;
    use palaver_proto::stanza::set_attr;
    use palaver_server::ModuleCx;
    use palaver_server::account_data::{AccountData, Tally, describe};
    use palaver_server::hooks::Account;
    use palaver_storage::StorageError;

    /// XEP-0227 namespace (the element lives in it).
    const NS_PIE: &str = "urn:xmpp:pie:0";
    /// XEP-0227 before version 1.0.
    const NS_PIE_DRAFT: &str = "http://www.xmpp.org/extensions/xep-0227.html#ns";
    const NS_LEGACY_DELAY: &str = "jabber:x:delay";
    const OFFLINE: &str = "offline message(s)";

    pub(super) struct OfflineData;

    fn now_ms() -> i64 {
        super::now().as_millis() as i64
    }

    fn delay_el(host: &str, ms: i64) -> Element {
        let mut delay = Element::bare("delay", ns::DELAY);
        set_attr(&mut delay, "from", host.to_string());
        set_attr(&mut delay, "stamp", format_datetime(ms));
        delay
    }

    /// XEP-0091 legacy stamp `CCYYMMDDThh:mm:ss` (UTC).
    pub(super) fn parse_legacy_stamp(s: &str) -> Option<i64> {
        let (date, time) = s.trim().split_once('T')?;
        if date.len() != 8 || !date.is_ascii() {
            return None;
        }
        parse_datetime(&format!(
            "{}-{}-{}T{}Z",
            &date[..4],
            &date[4..6],
            &date[6..],
            time
        ))
    }

    impl AccountData for OfflineData {
        /// Messages with their receive time (ms since the epoch), oldest first.
        type Data = Vec<(Element, i64)>;
        const ELEMENTS: &'static [(&'static str, &'static str)] = &[
            ("offline-messages", NS_PIE),
            ("offline-messages", NS_PIE_DRAFT),
        ];

        async fn export(
            &self,
            cx: &ModuleCx,
            a: &Account,
            tally: &mut Tally,
        ) -> Result<Vec<Element>, StorageError> {
            let jid = a.jid();
            let mut o = Element::bare("offline-messages", NS_PIE);
            let mut n = 0;
            for (id, xml, stamp) in cx
                .storage()
                .offline
                .offline_messages(&a.host, &a.user)
                .await?
            {
                match xml.parse::<Element>() {
                    Ok(mut el) if el.is("message", ns::CLIENT) => {
                        if !el.has_child("delay", ns::DELAY) {
                            el.append_child(delay_el(&a.host, stamp));
                        }
                        o.append_child(el);
                        n += 1;
                    }
                    Ok(_) | Err(_) => tally.warn(format!(
                        "{jid}: stored offline message {id} is unreadable; left out"
                    )),
                }
            }
            tally.count(OFFLINE, n);
            Ok(if n == 0 { vec![] } else { vec![o] })
        }

        fn read(
            &self,
            a: &Account,
            el: &Element,
            data: &mut Self::Data,
            tally: &mut Tally,
        ) -> Result<(), String> {
            let bare = a.jid();
            for m in el.children() {
                if !m.is("message", ns::CLIENT) {
                    tally.warn(format!(
                        "{bare}: ignored {} in <offline-messages/> (expected jabber:client messages)",
                        describe(m)
                    ));
                    continue;
                }
                if !matches!(m.attr("from").map(Jid::new), Some(Ok(_))) {
                    tally.warn(format!(
                        "{bare}: ignored offline message without a valid from"
                    ));
                    continue;
                }
                let mut msg = m.clone();
                let to_ok = msg
                    .attr("to")
                    .and_then(|t| Jid::new(t).ok())
                    .is_some_and(|t| t.to_bare().to_string() == bare);
                if !to_ok {
                    set_attr(&mut msg, "to", bare.clone());
                }
                // XEP-0359 §4: a stanza-id claiming to be by the account
                // comes from the file, not from this server's archive.
                if msg
                    .children()
                    .any(|c| c.is("stanza-id", "urn:xmpp:sid:0") && c.attr("by") == Some(&bare))
                {
                    for node in msg.take_nodes() {
                        match node {
                            minidom::Node::Element(c)
                                if c.is("stanza-id", "urn:xmpp:sid:0")
                                    && c.attr("by") == Some(&bare) => {}
                            other => msg.append_node(other),
                        }
                    }
                }
                let stamp = msg
                    .get_child("delay", ns::DELAY)
                    .and_then(|d| d.attr("stamp"))
                    .and_then(parse_datetime)
                    .or_else(|| {
                        msg.get_child("x", NS_LEGACY_DELAY)
                            .and_then(|d| d.attr("stamp"))
                            .and_then(parse_legacy_stamp)
                    });
                let stamp = match stamp {
                    Some(s) => s,
                    None => {
                        let now = now_ms();
                        if !msg.has_child("delay", ns::DELAY) {
                            msg.append_child(delay_el(&a.host, now));
                        }
                        tally.warn(format!(
                            "{bare}: offline message without a readable delay stamp; stamped with the import time"
                        ));
                        now
                    }
                };
                data.push((msg, stamp));
            }
            Ok(())
        }

        async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> {
            cx.storage()
                .offline
                .remove_offline_user(&a.host, &a.user)
                .await
        }

        async fn write(
            &self,
            cx: &ModuleCx,
            a: &Account,
            data: Self::Data,
            tally: &mut Tally,
        ) -> Result<(), StorageError> {
            tally.count(OFFLINE, 0);
            for (msg, stamp) in &data {
                let xml = palaver_proto::writer::to_string(msg, "");
                let stored = cx
                    .storage()
                    .offline
                    .store_offline(&a.host, &a.user, &xml, *stamp, usize::MAX)
                    .await?;
                if stored {
                    tally.count(OFFLINE, 1);
                } else {
                    tally.warn(format!(
                        "{}: the store refused an offline message; it was not imported",
                        a.jid()
                    ));
                }
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn legacy_stamps() {
            assert_eq!(
                parse_legacy_stamp("20261202T00:31:40"),
                parse_datetime("2026-12-02T00:31:40Z")
            );
            assert_eq!(parse_legacy_stamp("2026-12-02"), None);
        }
    }
}
