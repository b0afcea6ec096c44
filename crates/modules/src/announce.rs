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

use jid::FullJid;
use jid::Jid;
use minidom::Element;
use palaver_proto::error::Condition;
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::{HostMessage, PresenceOut, RemoveUser};
use palaver_server::module::PresenceEvent;
use palaver_server::{HookAction, ModuleCx};
use palaver_server::{HostSetup, Module, ModuleDef};
use std::sync::Arc;

/// `mod_announce`.
pub struct Announce;

/// `mod_announce` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Announce>();

impl Module for Announce {
    const NAME: &'static str = "mod_announce";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Announce)
    }
}

/// `mod_announce` options.
#[derive(serde::Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
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

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    host.migrations(store::MIGRATIONS);
    let acl = Arc::new(o.access_acl);
    host.hook_async::<HostMessage, _>(50, move |cx, st| {
        let acl = acl.clone();
        async move {
            if announce(cx, st, &acl).await {
                HookAction::Drop
            } else {
                HookAction::Continue
            }
        }
    });
    host.hook_async::<PresenceOut, _>(30, |cx, p| async move {
        if p.event == PresenceEvent::Initial {
            motd_at_login(&cx, &p.session).await;
        }
        HookAction::Continue
    });
    host.hook_async::<RemoveUser, _>(50, |cx, a| async move {
        let _ = store::KvSql::of(&cx)
            .remove_user_flags(&a.host, &a.user)
            .await;
        HookAction::Continue
    });
    Ok(())
}

/// The stored message of the day, once per user, at a session's first
/// available presence.
async fn motd_at_login(cx: &ModuleCx, jid: &FullJid) {
    let host = jid.domain().to_string();
    let Some(node) = jid.node() else { return };
    let Ok(Some(xml)) = store::KvSql::of(cx).host_get(&host, "motd").await else {
        return;
    };
    if !matches!(
        store::KvSql::of(cx)
            .user_flag_set(&host, node.as_str(), "motd")
            .await,
        Ok(true)
    ) {
        return;
    }
    if let Ok(el) = xml.parse::<Element>() {
        cx.route(message_to(&host, &el, Jid::from(jid.clone())));
    }
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

async fn announce(core: ModuleCx, st: Stanza, acl: &str) -> bool {
    let Some(to) = st.to.clone() else {
        return false;
    };
    let Some(resource) = to.resource().map(|r| r.to_string()) else {
        return false;
    };
    let Some(what) = resource.strip_prefix("announce/") else {
        return false;
    };
    let host_name = core.host().name.clone();
    if !core
        .config()
        .acl_match_on(&host_name, acl, st.from.to_bare().as_str())
    {
        core.bounce(&st, Condition::Forbidden, None);
        return true;
    }
    let host = to.domain().to_string();
    let store_motd = |xml: Option<String>| {
        let core = core.clone();
        let host = host.clone();
        async move {
            let r = store::KvSql::of(&core)
                .host_set(&host, "motd", xml.as_deref())
                .await;
            let r2 = store::KvSql::of(&core)
                .user_flag_clear_all(&host, "motd")
                .await;
            r.is_ok() && r2.is_ok()
        }
    };
    let xml = palaver_proto::writer::to_string(&st.to_element(), "");
    let ok = match what {
        "online" => {
            send_online(&core, &host, st.el());
            true
        }
        "motd" => {
            let ok = store_motd(Some(xml)).await;
            // Online users get it now: don't repeat it at their next login.
            for full in core.sessions().online(&host) {
                if let Some(n) = full.node() {
                    let _ = store::KvSql::of(&core)
                        .user_flag_set(&host, n.as_str(), "motd")
                        .await;
                }
            }
            send_online(&core, &host, st.el());
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

fn send_online(core: &ModuleCx, host: &str, src: &Element) {
    for full in core.sessions().online(host) {
        core.route(message_to(host, src, Jid::from(full)));
    }
}

/// The store of `mod_announce` (message of the day, per-user "seen" flags),
/// beside the module (see `palaver_storage::Db`).
pub mod store {
    use palaver_server::ModuleCx;
    use palaver_storage::{Db, ModuleMigration, Result, on_db};

    /// The module's own tables. (Created by the base schema before stores
    /// moved beside their modules; this step keeps new databases right.)
    pub const MIGRATIONS: &[ModuleMigration] = &[ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS host_kv (host TEXT NOT NULL, key TEXT NOT NULL, \
                 value TEXT NOT NULL, PRIMARY KEY (host, key)); \
                 CREATE TABLE IF NOT EXISTS user_flags (host TEXT NOT NULL, username TEXT NOT NULL, \
                 key TEXT NOT NULL, PRIMARY KEY (host, username, key))",
        postgres: "CREATE TABLE IF NOT EXISTS host_kv (host TEXT NOT NULL, key TEXT NOT NULL, \
                   value TEXT NOT NULL, PRIMARY KEY (host, key)); \
                   CREATE TABLE IF NOT EXISTS user_flags (host TEXT NOT NULL, username TEXT NOT NULL, \
                   key TEXT NOT NULL, PRIMARY KEY (host, username, key)); \
                   CREATE INDEX IF NOT EXISTS user_flags_key ON user_flags (host, key)",
    }];

    /// Per-host settings and per-user flags, on either backend.
    pub struct KvSql(Db);

    impl KvSql {
        /// The store over the server's pool.
        pub fn new(db: Db) -> KvSql {
            KvSql(db)
        }

        /// The store of a running server.
        pub fn of(cx: &ModuleCx) -> KvSql {
            KvSql(cx.storage().db.clone())
        }

        /// Value of a host setting.
        pub async fn host_get(&self, host: &str, key: &str) -> Result<Option<String>> {
            Ok(on_db!(&self.0, |pool| {
                sqlx::query_scalar("SELECT value FROM host_kv WHERE host = $1 AND key = $2")
                    .bind(host)
                    .bind(key)
                    .fetch_optional(pool)
                    .await?
            }))
        }

        /// Set (or with `None` delete) a host setting.
        pub async fn host_set(&self, host: &str, key: &str, value: Option<&str>) -> Result<()> {
            on_db!(&self.0, |pool| match value {
                Some(v) => {
                    sqlx::query(
                        "INSERT INTO host_kv (host, key, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (host, key) DO UPDATE SET value = excluded.value",
                    )
                    .bind(host)
                    .bind(key)
                    .bind(v)
                    .execute(pool)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM host_kv WHERE host = $1 AND key = $2")
                        .bind(host)
                        .bind(key)
                        .execute(pool)
                        .await?;
                }
            });
            Ok(())
        }

        /// Set a per-user flag; `true` when it was not set before.
        pub async fn user_flag_set(&self, host: &str, user: &str, key: &str) -> Result<bool> {
            let n = on_db!(&self.0, |pool| {
                sqlx::query(
                    "INSERT INTO user_flags (host, username, key) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(host)
                .bind(user)
                .bind(key)
                .execute(pool)
                .await?
                .rows_affected()
            });
            Ok(n > 0)
        }

        /// Clear a flag for every user of the host.
        pub async fn user_flag_clear_all(&self, host: &str, key: &str) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query("DELETE FROM user_flags WHERE host = $1 AND key = $2")
                    .bind(host)
                    .bind(key)
                    .execute(pool)
                    .await?;
            });
            Ok(())
        }

        /// Delete all flags of a user.
        pub async fn remove_user_flags(&self, host: &str, user: &str) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query("DELETE FROM user_flags WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(pool)
                    .await?;
            });
            Ok(())
        }
    }
}
