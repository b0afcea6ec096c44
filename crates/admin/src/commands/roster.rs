//! Rosters: get_roster, add_rosteritem, delete_rosteritem. Changes are
//! pushed (RFC 6121 §2.1.6) to the owner's sessions.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use minidom::Element;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_proto::{BareJid, Jid, ns};
use palaver_storage::im::{RosterItem, Subscription};
use serde_json::{Value, json};

const NS_ROSTER: &str = "jabber:iq:roster";

fn owner(a: &Args, user: &str, host: &str) -> Result<(String, String, BareJid), CommandError> {
    let (u, h) = (a.text(user)?.to_string(), a.text(host)?.to_string());
    let bare = BareJid::new(&format!("{u}@{h}"))
        .map_err(|e| CommandError::arg(format!("`{u}@{h}` is not a valid JID ({e})")))?;
    Ok((h, u, bare))
}

async fn must_exist(cx: &Ctx, host: &str, user: &str) -> Result<(), CommandError> {
    if cx
        .core
        .storage()
        .accounts
        .account_exists(host, user)
        .await?
    {
        Ok(())
    } else {
        Err(CommandError::new(
            ErrorCode::NotFound,
            format!("{user}@{host} does not exist"),
        ))
    }
}

pub(super) async fn get_roster(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user, _) = owner(&a, "user", "host")?;
    must_exist(&cx, &host, &user).await?;
    let (_, mut items) = cx.core.storage().roster.roster(&host, &user).await?;
    items.sort_by(|a, b| a.jid.cmp(&b.jid));
    Ok(Value::Array(
        items
            .iter()
            .map(|i| {
                json!({
                    "jid": i.jid,
                    "nick": i.name.clone().unwrap_or_default(),
                    "subscription": i.subscription.as_str(),
                    "pending": if i.ask { "out" } else { "none" },
                    "groups": i.groups,
                })
            })
            .collect(),
    ))
}

fn push(cx: &Ctx, owner: &BareJid, item: Element, ver: i64) {
    let Some(m) = cx.core.cx_of(owner.domain().as_str()) else {
        return;
    };
    for h in m.sessions().sessions(owner) {
        let Ok(full) = owner.with_resource_str(&h.resource) else {
            continue;
        };
        let mut q = Element::bare("query", NS_ROSTER);
        set_attr(&mut q, "ver", ver.to_string());
        q.append_child(item.clone());
        let mut el = Element::bare("iq", ns::CLIENT);
        set_attr(&mut el, "type", "set");
        set_attr(&mut el, "id", format!("admpush{:x}", rand::random::<u64>()));
        el.append_child(q);
        m.route(Stanza::new(
            StanzaKind::Iq,
            Jid::from(owner.clone()),
            Some(Jid::from(full)),
            el,
        ));
    }
}

fn contact(a: &Args) -> Result<String, CommandError> {
    let (u, h) = (a.text("user")?, a.text("host")?);
    BareJid::new(&format!("{u}@{h}"))
        .map(|j| j.to_string())
        .map_err(|e| CommandError::arg(format!("`{u}@{h}` is not a valid contact JID ({e})")))
}

pub(super) async fn add_rosteritem(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user, bare) = owner(&a, "localuser", "localhost")?;
    let jid = contact(&a)?;
    let subs = a.text("subs")?;
    let subscription = Subscription::parse(subs).ok_or_else(|| {
        CommandError::arg(format!(
            "argument `subs` of `add_rosteritem`: `{subs}` is not none, to, from or both"
        ))
    })?;
    must_exist(&cx, &host, &user).await?;
    let mut groups = a.list("groups");
    groups.retain(|g| !g.is_empty());
    groups.sort();
    groups.dedup();
    let nick = a.text("nick")?;
    let item = RosterItem {
        jid: jid.clone(),
        name: (!nick.is_empty()).then(|| nick.to_string()),
        subscription,
        ask: false,
        approved: false,
        groups,
    };
    let ver = cx
        .core
        .storage()
        .roster
        .put_roster_item(&host, &user, &item)
        .await?;
    let mut el = Element::bare("item", NS_ROSTER);
    set_attr(&mut el, "jid", item.jid.as_str());
    if let Some(n) = &item.name {
        set_attr(&mut el, "name", n.as_str());
    }
    set_attr(&mut el, "subscription", item.subscription.as_str());
    for g in &item.groups {
        el.append_child(
            Element::builder("group", NS_ROSTER)
                .append(g.as_str())
                .build(),
        );
    }
    push(&cx, &bare, el, ver);
    Ok(Value::from(0))
}

pub(super) async fn delete_rosteritem(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user, bare) = owner(&a, "localuser", "localhost")?;
    let jid = contact(&a)?;
    must_exist(&cx, &host, &user).await?;
    let roster = &cx.core.storage().roster;
    if roster.roster_item(&host, &user, &jid).await?.is_none() {
        return Err(CommandError::new(
            ErrorCode::NotFound,
            format!("{jid} is not in the roster of {user}@{host}"),
        ));
    }
    let ver = roster.delete_roster_item(&host, &user, &jid).await?;
    let mut el = Element::bare("item", NS_ROSTER);
    set_attr(&mut el, "jid", jid.as_str());
    set_attr(&mut el, "subscription", "remove");
    push(&cx, &bare, el, ver);
    Ok(Value::from(0))
}
