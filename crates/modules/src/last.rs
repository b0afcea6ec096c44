//! XEP-0012 last activity: server uptime and users' last logout.

use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::set_attr;
use palaver_server::HookAction;
use palaver_server::hooks::{PresenceOut, RemoveUser};
use palaver_server::module::PresenceEvent;
use palaver_server::{
    HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleDef, NoOptions,
};

/// `mod_last`.
pub struct Last;

/// `mod_last` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Last>();

impl Module for Last {
    const NAME: &'static str = "mod_last";
    type Options = NoOptions;
    fn start(host: &mut HostSetup, o: NoOptions) -> Result<Self, String> {
        start(host, o)?;
        Ok(Last)
    }
}

const NS_LAST: &str = "jabber:iq:last";

fn start(host: &mut HostSetup, _o: NoOptions) -> Result<(), String> {
    host.migrations(store::MIGRATIONS);
    host.add_feature(NS_LAST);
    host.on_iq(IqScope::Server, IqType::Get, NS_LAST, |req| async move {
        Ok(Some(query(req.cx.started().elapsed().as_secs(), None)))
    });
    host.on_iq(IqScope::Account, IqType::Get, NS_LAST, user_last);
    host.hook_async::<PresenceOut, _>(50, |cx, p| async move {
        if p.event != PresenceEvent::Unavailable {
            return HookAction::Continue;
        }
        let bare = p.session.to_bare();
        if !cx.sessions().available(&bare).is_empty() {
            return HookAction::Continue;
        }
        let Some(node) = bare.node() else {
            return HookAction::Continue;
        };
        let status = p
            .stanza
            .el()
            .get_child("status", ns::CLIENT)
            .map(|s| s.text())
            .unwrap_or_default();
        let last = store::LastSql::of(&cx);
        if let Err(e) = last
            .set_last(bare.domain().as_str(), node.as_str(), now(), &status)
            .await
        {
            tracing::warn!(error = %e, "recording last activity failed");
        }
        HookAction::Continue
    });
    host.hook_async::<RemoveUser, _>(50, |cx, a| async move {
        let last = store::LastSql::of(&cx);
        if let Err(e) = last.remove_last(&a.host, &a.user).await {
            tracing::warn!(error = %e, "removing last activity failed");
        }
        HookAction::Continue
    });
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn query(seconds: u64, status: Option<&str>) -> Element {
    let mut q = Element::bare("query", NS_LAST);
    set_attr(&mut q, "seconds", seconds.to_string());
    if let Some(s) = status.filter(|s| !s.is_empty()) {
        q.append_text(s);
    }
    q
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("last activity", &e)
}

async fn user_last(req: IqRequest) -> IqResult {
    let to = req
        .stanza
        .to
        .clone()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?
        .to_bare();
    let node = to
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let host = to.domain().to_string();
    let core = &req.cx;
    if !core
        .storage()
        .accounts
        .account_exists(&host, &node)
        .await
        .map_err(internal)?
    {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    let requester = req.stanza.from.to_bare();
    if requester != to {
        // Only contacts who receive the user's presence may ask (XEP-0012 §4).
        let item = core
            .storage()
            .roster
            .roster_item(&host, &node, requester.as_str())
            .await
            .map_err(internal)?;
        if !item.is_some_and(|i| i.subscription.has_from()) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
    }
    let available = core.sessions().available(&to);
    if !available.is_empty() {
        // Online: idle since the last of its clients went inactive
        // (XEP-0352), or not idle at all.
        let idle = available
            .iter()
            .map(|h| h.inactive_since)
            .collect::<Option<Vec<_>>>()
            .and_then(|since| since.into_iter().max())
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs());
        return Ok(Some(query(idle, None)));
    }
    match store::LastSql::of(core)
        .last(&host, &node)
        .await
        .map_err(internal)?
    {
        Some((at, status)) => Ok(Some(query(
            now().saturating_sub(at).max(0) as u64,
            Some(&status),
        ))),
        None => Err(StanzaError::new(Condition::ItemNotFound)),
    }
}

/// The store of `mod_last`, beside the module (see `palaver_storage::Db`).
pub mod store {
    use palaver_server::ModuleCx;
    use palaver_storage::{Db, ModuleMigration, Result, on_db};

    /// The module's own table. (Created by the base schema before stores
    /// moved beside their modules; this step keeps new databases right.)
    pub const MIGRATIONS: &[ModuleMigration] = &[ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS last_activity (host TEXT NOT NULL, username TEXT NOT NULL, \
                 seconds INTEGER NOT NULL, status TEXT NOT NULL, PRIMARY KEY (host, username))",
        postgres: "CREATE TABLE IF NOT EXISTS last_activity (host TEXT NOT NULL, username TEXT NOT NULL, \
                   seconds BIGINT NOT NULL, status TEXT NOT NULL, PRIMARY KEY (host, username))",
    }];

    /// Users' last logout (XEP-0012), on either backend.
    pub struct LastSql(Db);

    impl LastSql {
        /// The store over the server's pool.
        pub fn new(db: Db) -> LastSql {
            LastSql(db)
        }

        /// The store of a running server.
        pub fn of(cx: &ModuleCx) -> LastSql {
            LastSql(cx.storage().db.clone())
        }

        /// Record a logout at `seconds` (Unix time) with a status.
        pub async fn set_last(
            &self,
            host: &str,
            user: &str,
            seconds: i64,
            status: &str,
        ) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query(
                    "INSERT INTO last_activity (host, username, seconds, status) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (host, username) DO UPDATE SET seconds = excluded.seconds, status = excluded.status",
                )
                .bind(host)
                .bind(user)
                .bind(seconds)
                .bind(status)
                .execute(pool)
                .await?;
            });
            Ok(())
        }

        /// The last logout: (Unix time, status).
        pub async fn last(&self, host: &str, user: &str) -> Result<Option<(i64, String)>> {
            Ok(on_db!(&self.0, |pool| {
                sqlx::query_as(
                    "SELECT seconds, status FROM last_activity WHERE host = $1 AND username = $2",
                )
                .bind(host)
                .bind(user)
                .fetch_optional(pool)
                .await?
            }))
        }

        /// Forget a user.
        pub async fn remove_last(&self, host: &str, user: &str) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query("DELETE FROM last_activity WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(pool)
                    .await?;
            });
            Ok(())
        }
    }
}
