//! XEP-0402 bookmarks (`urn:xmpp:bookmarks:1`, one PEP item per room) kept
//! in step with XEP-0048 bookmarks in private storage (`<storage
//! xmlns='storage:bookmarks'/>`), both ways, as XEP-0411 describes.
//!
//! Modules never import each other, so the two directions go through the
//! kernel:
//! - private → PEP: mod_private runs the [`PrivateStored`] hook point after
//!   storing an element; this module turns a `storage:bookmarks` element
//!   into PEP items (publishing new or changed rooms, retracting removed
//!   ones, notifying the account's sessions as any publish does).
//! - PEP → private: after a publish or retract on the bookmarks node this
//!   module writes the XEP-0048 form into the shared private-XML store
//!   (`Storage::xml`, the store mod_private reads, under its key for that
//!   element); `<url/>` bookmarks, which XEP-0402 has no room for, are kept.
//!   Writing the store directly does not run the hook, so nothing loops.
//!
//! [`PrivateStored`]: palaver_server::hooks::PrivateStored

use super::State;
use super::node::{AccessModel, NodeConfig, SendLast};
use super::ops::{Svc, Target};
use minidom::Element;
use palaver_proto::stanza::set_attr;
use palaver_server::ModuleCx;
use palaver_server::hooks::PrivateXml;
use std::sync::Arc;

/// The XEP-0402 node (and payload namespace).
pub const NODE: &str = "urn:xmpp:bookmarks:1";
/// XEP-0402 §4: the account's bookmarks are in step with private storage.
pub const COMPAT: &str = "urn:xmpp:bookmarks:1#compat";
const NS_LEGACY: &str = "storage:bookmarks";
/// mod_private's key of `<storage xmlns='storage:bookmarks'/>` in the
/// private-XML store (`private:NAMESPACE:NAME`).
const PRIVATE_KEY: &str = "private:storage:bookmarks:storage";

/// XEP-0402 §3 node configuration.
fn config() -> NodeConfig {
    NodeConfig {
        access_model: AccessModel::Whitelist,
        max_items: None,
        send_last_published_item: SendLast::Never,
        persist_items: true,
        ..NodeConfig::pep_default()
    }
}

/// One room, as both forms describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Room {
    jid: String,
    name: Option<String>,
    autojoin: bool,
    nick: Option<String>,
    password: Option<String>,
}

fn child_text(el: &Element, name: &str, ns: &str) -> Option<String> {
    el.get_child(name, ns)
        .map(|c| c.text())
        .filter(|t| !t.is_empty())
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1"))
}

impl Room {
    fn from_pep(id: &str, c: &Element) -> Option<Room> {
        if !c.is("conference", NODE) || jid::BareJid::new(id).is_err() {
            return None;
        }
        Some(Room {
            jid: id.to_string(),
            name: c.attr("name").map(str::to_string),
            autojoin: truthy(c.attr("autojoin")),
            nick: child_text(c, "nick", NODE),
            password: child_text(c, "password", NODE),
        })
    }

    fn from_legacy(c: &Element) -> Option<Room> {
        let jid = c.attr("jid")?;
        jid::BareJid::new(jid).ok()?;
        Some(Room {
            jid: jid.to_string(),
            name: c.attr("name").map(str::to_string),
            autojoin: truthy(c.attr("autojoin")),
            nick: child_text(c, "nick", NS_LEGACY),
            password: child_text(c, "password", NS_LEGACY),
        })
    }

    fn to_el(&self, ns: &str) -> Element {
        let mut c = Element::bare("conference", ns);
        if ns == NS_LEGACY {
            set_attr(&mut c, "jid", self.jid.as_str());
        }
        if let Some(n) = &self.name {
            set_attr(&mut c, "name", n.as_str());
        }
        if self.autojoin {
            set_attr(&mut c, "autojoin", "true");
        }
        for (name, v) in [("nick", &self.nick), ("password", &self.password)] {
            if let Some(v) = v {
                c.append_child(Element::builder(name, ns).append(v.as_str()).build());
            }
        }
        c
    }
}

/// The bookmarks node changed: rewrite the XEP-0048 copy.
pub(super) async fn pep_changed(svc: &Svc) {
    let Some(owner) = &svc.t.pep else { return };
    let (Some(user), host) = (owner.node(), owner.domain().as_str()) else {
        return;
    };
    let items = match svc.stored_items(NODE).await {
        Ok(i) => i,
        Err(_) => return,
    };
    let store = &svc.cx.storage().xml;
    let old = match store.get_xml(host, user.as_str(), PRIVATE_KEY).await {
        Ok(o) => o.and_then(|x| x.parse::<Element>().ok()),
        Err(e) => {
            tracing::warn!(error = %e, "reading XEP-0048 bookmarks failed");
            return;
        }
    };
    let mut storage = Element::bare("storage", NS_LEGACY);
    // Oldest first, as the rooms were added.
    for it in items.iter().rev() {
        let Ok(c) = it.payload.parse::<Element>() else {
            continue;
        };
        if let Some(r) = Room::from_pep(&it.item_id, &c) {
            storage.append_child(r.to_el(NS_LEGACY));
        }
    }
    if let Some(old) = old {
        for u in old.children().filter(|c| c.is("url", NS_LEGACY)) {
            storage.append_child(u.clone());
        }
    }
    let xml = palaver_proto::writer::to_string(&storage, "");
    if let Err(e) = store.set_xml(host, user.as_str(), PRIVATE_KEY, &xml).await {
        tracing::warn!(error = %e, "writing XEP-0048 bookmarks failed");
    }
}

/// mod_private stored an element: mirror XEP-0048 bookmarks into PEP.
pub(super) async fn private_stored(st: Arc<State>, cx: ModuleCx, p: PrivateXml) {
    if !p.element.is("storage", NS_LEGACY) {
        return;
    }
    let Ok(owner) = jid::BareJid::new(&p.account.jid()) else {
        return;
    };
    let svc = Svc {
        st,
        t: Target {
            key: owner.to_string(),
            pep: Some(owner),
        },
        db: super::store::PubsubSql::of(&cx),
        cx,
    };
    let wanted: Vec<Room> = p
        .element
        .children()
        .filter(|c| c.is("conference", NS_LEGACY))
        .filter_map(Room::from_legacy)
        .collect();
    let current: Vec<Room> = match svc.stored_items(NODE).await {
        Ok(items) => items
            .iter()
            .filter_map(|i| {
                let c = i.payload.parse::<Element>().ok()?;
                Room::from_pep(&i.item_id, &c)
            })
            .collect(),
        Err(_) => return,
    };
    for r in &wanted {
        if current.contains(r) {
            continue;
        }
        if let Err(e) = svc
            .publish_as_owner(NODE, &config(), &r.jid, r.to_el(NODE))
            .await
        {
            tracing::warn!(error = ?e, "mirroring a bookmark into PEP failed");
        }
    }
    for r in &current {
        if !wanted.iter().any(|w| w.jid == r.jid)
            && let Err(e) = svc.retract_as_owner(NODE, &r.jid).await
        {
            tracing::warn!(error = ?e, "retracting a mirrored bookmark failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_round_trips_between_forms() {
        let legacy: Element = "<conference xmlns='storage:bookmarks' jid='room@muc.example' name='Room' autojoin='1'><nick>al</nick></conference>".parse().expect("xml");
        let r = Room::from_legacy(&legacy).expect("room");
        assert!(r.autojoin);
        let pep = r.to_el(NODE);
        assert_eq!(Room::from_pep("room@muc.example", &pep), Some(r.clone()));
        assert_eq!(Room::from_legacy(&r.to_el(NS_LEGACY)), Some(r));
    }
}
