//! Announcements as ejabberd addresses them, by a message to the host with
//! a resource:
//!
//! - `HOST/announce/online`: a copy (subject and body) to every bound session of HOST;
//! - `HOST/announce/motd`: store the message of the day and send it to the
//!   sessions online now (their users will not get it again at their next login);
//! - `HOST/announce/motd/update`: store it without sending;
//! - `HOST/announce/motd/delete`: delete it.
//!
//! A user gets the stored message once, with the first available presence
//! of a session after it was set. Only members of the `access_acl` ACL
//! (default `admin`) may announce; others get `forbidden`. Any other
//! resource under `announce/` gets `item-not-found`; messages to the host
//! with other resources are left to the server's default handling.

use jid::Jid;
use minidom::Element;
use palaver_proto::error::Condition;
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::core::Core;
use palaver_server::module::PresenceEvent;
use palaver_server::sm::SessionManager;
use palaver_server::{HostSetup, ModuleDef};
use std::sync::Arc;

/// `mod_announce`.
pub const MODULE: ModuleDef = ModuleDef {
    name: "mod_announce",
    start,
};

#[derive(serde::Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// ACL whose members may announce.
    access_acl: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            access_acl: "admin".into(),
        }
    }
}

fn start(host: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    let o: Options = palaver_server::module::parse_options(opts)?;
    let acl = Arc::new(o.access_acl);
    host.hook_host_message(
        50,
        Arc::new(move |core, st| {
            let acl = acl.clone();
            Box::pin(async move { announce(core, st, &acl).await })
        }),
    );
    host.hook_presence_out(
        30,
        Arc::new(|core, jid, _st, ev| {
            Box::pin(async move {
                if ev != PresenceEvent::Initial {
                    return;
                }
                let host = jid.domain().to_string();
                let Some(node) = jid.node() else { return };
                let Ok(Some(xml)) = core.storage.kv.host_get(&host, "motd").await else {
                    return;
                };
                if !matches!(
                    core.storage
                        .kv
                        .user_flag_set(&host, node.as_str(), "motd")
                        .await,
                    Ok(true)
                ) {
                    return;
                }
                if let (Ok(el), Some(h)) = (xml.parse::<Element>(), core.sm.get(&jid)) {
                    let st = message_to(&host, &el, Jid::from(jid.clone()));
                    let _ = SessionManager::deliver(&h, st);
                }
            })
        }),
    );
    host.hook_remove_user(
        50,
        Arc::new(|core, host, user| {
            Box::pin(async move {
                let _ = core.storage.kv.remove_user_flags(&host, &user).await;
            })
        }),
    );
    Ok(())
}

/// A copy of the announcement (subject and body) from the host to `to`.
fn message_to(host: &str, src: &Element, to: Jid) -> Stanza {
    let mut el = Element::bare("message", ns::CLIENT);
    set_attr(&mut el, "type", "normal");
    for c in src
        .children()
        .filter(|c| c.is("subject", ns::CLIENT) || c.is("body", ns::CLIENT))
    {
        el.append_child(c.clone());
    }
    let from = Jid::new(host).unwrap_or_else(|_| to.clone());
    Stanza::new(StanzaKind::Message, from, Some(to), el)
}

async fn announce(core: Arc<Core>, st: Stanza, acl: &str) -> bool {
    let Some(to) = st.to.clone() else {
        return false;
    };
    let Some(resource) = to.resource().map(|r| r.to_string()) else {
        return false;
    };
    let Some(what) = resource.strip_prefix("announce/") else {
        return false;
    };
    if !core.config.acl_match(acl, st.from.to_bare().as_str()) {
        core.bounce(&st, Condition::Forbidden, None);
        return true;
    }
    let host = to.domain().to_string();
    let store_motd = |xml: Option<String>| {
        let core = core.clone();
        let host = host.clone();
        async move {
            let r = core
                .storage
                .kv
                .host_set(&host, "motd", xml.as_deref())
                .await;
            let r2 = core.storage.kv.user_flag_clear_all(&host, "motd").await;
            r.is_ok() && r2.is_ok()
        }
    };
    let xml = palaver_proto::writer::to_string(&st.el, "");
    let ok = match what {
        "online" => {
            send_online(&core, &host, &st.el);
            true
        }
        "motd" => {
            let ok = store_motd(Some(xml)).await;
            // Online users get it now: don't repeat it at their next login.
            for (bare, _) in core.sm.all() {
                if bare.domain().as_str() == host
                    && let Some(n) = bare.node()
                {
                    let _ = core
                        .storage
                        .kv
                        .user_flag_set(&host, n.as_str(), "motd")
                        .await;
                }
            }
            send_online(&core, &host, &st.el);
            ok
        }
        "motd/update" => store_motd(Some(xml)).await,
        "motd/delete" => store_motd(None).await,
        _ => {
            core.bounce(&st, Condition::ItemNotFound, None);
            return true;
        }
    };
    if !ok {
        core.bounce(&st, Condition::InternalServerError, None);
    }
    true
}

fn send_online(core: &Arc<Core>, host: &str, src: &Element) {
    for (bare, h) in core.sm.all() {
        if bare.domain().as_str() != host {
            continue;
        }
        let Ok(full) = bare.with_resource_str(&h.resource) else {
            continue;
        };
        let _ = SessionManager::deliver(&h, message_to(host, src, Jid::from(full)));
    }
}
