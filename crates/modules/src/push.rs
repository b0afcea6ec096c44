//! XEP-0357 Push Notifications (`mod_push`).
//!
//! A client registers an app server (`<enable jid='…' node='…'>` with
//! optional publish-options, stored per account) and unregisters it
//! (`<disable/>`, all nodes of that app server or one). When a stanza
//! worth a notification reaches an account that has no connected session
//! — every session is detached, waiting for XEP-0198 resumption, or there
//! is none and the message goes offline — the server publishes a
//! notification to each registration:
//!
//! ```xml
//! <iq type='set' from='user@host' to='app.server' id='…'>
//!   <pubsub xmlns='http://jabber.org/protocol/pubsub'>
//!     <publish node='NODE'><item><notification xmlns='urn:xmpp:push:0'>
//!       <x xmlns='jabber:x:data' type='submit'>
//!         FORM_TYPE urn:xmpp:push:summary, message-count,
//!         last-message-sender (option include_sender: the bare JID),
//!         last-message-body (option include_body: the body, or a text)
//!       </x></notification></item></publish>
//!     <publish-options><x type='submit'>…as registered (e.g. secret)…</x></publish-options>
//!   </pubsub>
//! </iq>
//! ```
//!
//! Options are ejabberd's, with its defaults: `notify_on` (`all`: any
//! message, subscription request or IQ request for the user; `messages`:
//! only messages with a body or an end-to-end encrypted payload),
//! `include_sender` (false), `include_body` (`"New message"`: a fixed text
//! telling the app server a message with a body came, without its
//! content; `true`: the body, `"(encrypted)"` for an encrypted one; `false`:
//! none). Presence broadcasts never notify (a phone is not woken because
//! a contact's status changed); nor do errors.
//!
//! What app servers read, and this always gives them: Conversations' p2
//! (`p2.siacs.eu`) takes the node, the `secret` of publish-options (other
//! fields, as `endpoint`, travel along untouched), needs the sender to be
//! a bare JID, and sends a high-priority push when `last-message-body` is
//! not empty; Monal's (`mod_push_appserver`) needs the summary form
//! (it parses `message-count`, `pending-subscription-count`,
//! `last-message-sender` as a JID and `last-message-body`) and the
//! publish-options `secret`. An error answer from the app server removes
//! that registration (§6, the app server no longer knows the device),
//! except a `wait` error (a temporary failure, as ejabberd does).
//! `message-count` counts the notifications since the account last bound
//! a resource.
//!
//! A session that loses its connection with stanzas its client had not
//! acknowledged also notifies (the `SessionPending` hook; ejabberd's
//! `c2s_session_pending`) when one of them is worth it and no session of
//! the account is connected: the device may never have received it.

use dashmap::DashMap;
use jid::{BareJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::{
    IqResponse, OfflineMessage, RemoveUser, SessionBound, SessionPending, UserReceive,
};
use palaver_server::{
    HookAction, HookCx, HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleCx,
    ModuleDef,
};
use std::sync::Arc;
use std::time::Duration;

/// XEP-0357.
pub const NS_PUSH: &str = "urn:xmpp:push:0";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const SUMMARY: &str = "urn:xmpp:push:summary";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// Payloads that count as a message worth a notification without a body.
const ENCRYPTED: &[&str] = &[
    "eu.siacs.conversations.axolotl",
    "urn:xmpp:omemo:2",
    "urn:xmpp:openpgp:0",
];
/// How long an app server has to answer before the request is forgotten.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// `mod_push`.
pub struct Push;

/// `mod_push` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Push>();

/// Options (ejabberd's names and defaults).
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Which stanzas notify: `all` or `messages`.
    pub notify_on: NotifyOn,
    /// Put the message body in the notification (`false`: none, as it goes
    /// through third parties; a text: that text instead of the body).
    pub include_body: IncludeBody,
    /// Put the sender's bare JID in the notification.
    pub include_sender: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            notify_on: NotifyOn::All,
            include_body: IncludeBody::Text("New message".into()),
            include_sender: false,
        }
    }
}

/// `notify_on`.
#[derive(serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// Any message, subscription request or IQ request for the user.
    All,
    /// Only messages with a body or an end-to-end encrypted payload.
    Messages,
}

/// `include_body`: a flag, or a text sent in place of the body.
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum IncludeBody {
    Flag(bool),
    Text(String),
}

struct State {
    opts: Options,
    /// Notifications sent since the account last bound a resource.
    counts: DashMap<String, u32>,
    /// Notification IQ id → (account, app server, node), until answered.
    pending: Arc<DashMap<String, (String, String, String)>>,
}

impl Module for Push {
    const NAME: &'static str = "mod_push";
    type Options = Options;

    fn start(host: &mut HostSetup, opts: Options) -> Result<Self, String> {
        host.migrations(store::MIGRATIONS);
        host.add_feature(NS_PUSH);
        host.add_account_feature(NS_PUSH);
        let state = Arc::new(State {
            opts,
            counts: DashMap::new(),
            pending: Arc::new(DashMap::new()),
        });
        host.on_iq(IqScope::Account, IqType::Set, NS_PUSH, enable_disable);
        let s = state.clone();
        host.hook_async::<OfflineMessage, _>(100, move |cx, st| {
            let s = s.clone();
            async move {
                if worth_it(&st, s.opts.notify_on)
                    && let Some(to) = st.to.as_ref().map(|t| t.to_bare())
                {
                    notify(&s, &cx, &to, &st).await;
                }
                HookAction::Continue
            }
        });
        let s = state.clone();
        host.hook::<UserReceive>(-100, move |cx, st| {
            detached_receive(&s, cx, st);
            HookAction::Continue
        });
        let s = state.clone();
        host.hook::<SessionPending>(0, move |cx, p| {
            pending(&s, cx, &p.unacked);
            HookAction::Continue
        });
        let s = state.clone();
        host.hook::<IqResponse>(0, move |cx, st| {
            answer(&s, cx, st);
            HookAction::Continue
        });
        let s = state.clone();
        host.hook_async::<SessionBound, _>(0, move |_cx, jid| {
            s.counts.remove(jid.to_bare().as_str());
            async { HookAction::Continue }
        });
        let s = state;
        host.hook_async::<RemoveUser, _>(50, move |cx, a| {
            s.counts.remove(&a.jid());
            async move {
                if let Err(e) = store::PushSql::of(&cx)
                    .remove(&a.host, &a.user, None, None)
                    .await
                {
                    tracing::warn!(error = %e, "removing push registrations failed");
                }
                HookAction::Continue
            }
        });
        Ok(Push)
    }
}

fn bad(text: &str) -> StanzaError {
    StanzaError::new(Condition::BadRequest).text(text.to_string())
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("push registrations", &e)
}

/// `<enable/>` / `<disable/>` (§5).
async fn enable_disable(req: IqRequest) -> IqResult {
    let (_, host, user) = req.own_account()?;
    let p = req.payload().ok_or_else(|| bad("no payload"))?;
    let service = p
        .attr("jid")
        .ok_or_else(|| bad("a jid is required"))
        .and_then(|j| Jid::new(j).map_err(|_| StanzaError::new(Condition::JidMalformed)))?
        .to_string();
    let node = p.attr("node").filter(|n| !n.is_empty());
    let db = store::PushSql::of(&req.cx);
    match p.name() {
        "enable" => {
            let node = node.ok_or_else(|| bad("a node is required"))?;
            let options = match DataForm::find_in(p) {
                Some(Ok(f)) => {
                    if f.form_type().is_some_and(|t| t != PUBLISH_OPTIONS) {
                        return Err(bad("publish-options must be a pubsub#publish-options form"));
                    }
                    // Kept as the client wrote it: the app server reads it.
                    p.get_child("x", ns::DATA_FORMS).map(|x| {
                        let mut s = String::new();
                        palaver_proto::writer::write_element(&mut s, x, "");
                        s
                    })
                }
                Some(Err(e)) => return Err(bad(&e.to_string())),
                None => None,
            };
            db.add(&host, &user, &service, node, options.as_deref())
                .await
                .map_err(internal)?;
        }
        "disable" => {
            db.remove(&host, &user, Some(&service), node)
                .await
                .map_err(internal)?;
        }
        _ => return Err(bad("enable or disable")),
    }
    Ok(None)
}

/// A message with a body or an end-to-end encrypted payload.
fn has_content(st: &Stanza) -> bool {
    st.kind == StanzaKind::Message
        && !matches!(st.type_attr(), Some("error" | "headline"))
        && (st.el().has_child("body", ns::CLIENT) || encrypted(st))
}

fn encrypted(st: &Stanza) -> bool {
    st.el()
        .children()
        .any(|c| ENCRYPTED.contains(&c.ns().as_str()))
}

/// Whether a stanza is one the user should be woken for.
fn worth_it(st: &Stanza, on: NotifyOn) -> bool {
    if has_content(st) {
        return true;
    }
    if on == NotifyOn::Messages {
        return false;
    }
    match st.kind {
        // A call proposal, a receipt, a reaction…: anything but errors.
        StanzaKind::Message => st.type_attr() != Some("error"),
        StanzaKind::Presence => st.type_attr() == Some("subscribe"),
        StanzaKind::Iq => matches!(st.type_attr(), Some("get" | "set")),
    }
}

/// A message written to a session: if the session is detached and so are
/// all of the account's, the user is not connected — notify (once: from
/// the session with the lowest id, unless it was for this resource only).
fn detached_receive(state: &Arc<State>, cx: &HookCx<'_>, st: &mut Stanza) {
    let Some(session) = cx.session() else { return };
    if !worth_it(st, state.opts.notify_on) {
        return;
    }
    let bare = session.to_bare();
    let sessions = cx.sessions().sessions(&bare);
    if sessions.is_empty() || !sessions.iter().all(|h| h.detached) {
        return;
    }
    let for_me_only = st.to.as_ref().is_some_and(|t| t.resource().is_some());
    let lowest = sessions.iter().map(|h| h.id).min();
    let mine = sessions
        .iter()
        .find(|h| h.resource == session.resource().as_str())
        .map(|h| h.id);
    if !for_me_only && mine != lowest {
        return;
    }
    let (state, cx2, st) = (state.clone(), cx.cx().clone(), st.clone());
    tokio::spawn(async move { notify(&state, &cx2, &bare, &st).await });
}

/// A session lost its connection with stanzas its client had not
/// acknowledged: if the account has no connected session left and one of
/// them is worth a notification, the device may never have seen it — wake
/// it (as ejabberd does when a session becomes pending).
fn pending(state: &Arc<State>, cx: &HookCx<'_>, unacked: &[Stanza]) {
    let Some(session) = cx.session() else { return };
    let bare = session.to_bare();
    if !cx.sessions().sessions(&bare).iter().all(|h| h.detached) {
        return;
    }
    // The latest one worth it: its sender and body make the summary.
    let Some(st) = unacked
        .iter()
        .rev()
        .find(|st| worth_it(st, state.opts.notify_on))
    else {
        return;
    };
    let (state, cx2, st) = (state.clone(), cx.cx().clone(), st.clone());
    tokio::spawn(async move { notify(&state, &cx2, &bare, &st).await });
}

/// Publish a notification to every registration of the account.
async fn notify(state: &State, cx: &ModuleCx, account: &BareJid, st: &Stanza) {
    let Some(user) = account.node() else { return };
    let host = account.domain().as_str();
    let regs = match store::PushSql::of(cx).list(host, user.as_str()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "reading push registrations failed");
            return;
        }
    };
    if regs.is_empty() {
        return;
    }
    let count = {
        let mut c = state.counts.entry(account.to_string()).or_insert(0);
        *c += 1;
        *c
    };
    for (service, node, options) in regs {
        let Ok(to) = Jid::new(&service) else { continue };
        let mut summary = DataForm::with_form_type(FormType::Submit, SUMMARY).field(Field::new(
            "message-count",
            FieldType::TextSingle,
            vec![count.to_string()],
        ));
        // Sender and body only for a message with content (ejabberd).
        if has_content(st) {
            if state.opts.include_sender {
                summary = summary.field(Field::new(
                    "last-message-sender",
                    FieldType::JidSingle,
                    vec![st.from.to_bare().to_string()],
                ));
            }
            let body = st
                .el()
                .get_child("body", ns::CLIENT)
                .map(|b| b.text())
                .filter(|b| !b.is_empty());
            let body = match &state.opts.include_body {
                IncludeBody::Flag(true) => {
                    body.or_else(|| encrypted(st).then(|| "(encrypted)".to_string()))
                }
                IncludeBody::Flag(false) => None,
                IncludeBody::Text(t) => Some(t.clone()),
            };
            if let Some(b) = body {
                summary = summary.field(Field::text("last-message-body", b));
            }
        }
        let mut notification = Element::bare("notification", NS_PUSH);
        notification.append_child(summary.to_element());
        let mut item = Element::bare("item", NS_PUBSUB);
        item.append_child(notification);
        let mut publish = Element::bare("publish", NS_PUBSUB);
        set_attr(&mut publish, "node", node.clone());
        publish.append_child(item);
        let mut pubsub = Element::bare("pubsub", NS_PUBSUB);
        pubsub.append_child(publish);
        if let Some(opts) = options.as_deref().and_then(|o| o.parse::<Element>().ok()) {
            let mut po = Element::bare("publish-options", NS_PUBSUB);
            po.append_child(opts);
            pubsub.append_child(po);
        }
        let id = format!("push-{:016x}", rand::random::<u64>());
        let mut el = Element::bare("iq", ns::CLIENT);
        set_attr(&mut el, "type", "set");
        set_attr(&mut el, "id", id.clone());
        el.append_child(pubsub);
        state
            .pending
            .insert(id.clone(), (account.to_string(), service.clone(), node));
        cx.route(Stanza::new(
            StanzaKind::Iq,
            Jid::from(account.clone()),
            Some(to),
            el,
        ));
        // Forget requests that are never answered.
        let pending = state.pending.clone();
        let mut shutdown = cx.shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(ANSWER_WAIT) => {}
                _ = shutdown.changed() => {}
            }
            pending.remove(&id);
        });
    }
}

/// The app server answered: an error removes the registration (§6),
/// unless it says to wait (a temporary failure).
fn answer(state: &State, cx: &HookCx<'_>, st: &mut Stanza) {
    let Some(id) = st.id() else { return };
    if !id.starts_with("push-") {
        return;
    }
    let Some((_, (account, service, node))) = state.pending.remove(id) else {
        return;
    };
    if !st.is_error() || st.from.to_string() != service {
        return;
    }
    let temporary = st
        .el()
        .get_child("error", ns::CLIENT)
        .is_some_and(|e| e.attr("type") == Some("wait"));
    if temporary {
        tracing::info!(
            account,
            service,
            node,
            "app server asks to wait; registration kept"
        );
        return;
    }
    let Ok(bare) = BareJid::new(&account) else {
        return;
    };
    let Some(user) = bare.node().map(|n| n.to_string()) else {
        return;
    };
    let host = bare.domain().to_string();
    let cx = cx.cx().clone();
    tokio::spawn(async move {
        tracing::info!(
            account,
            service,
            node,
            "app server refused a notification; registration removed"
        );
        if let Err(e) = store::PushSql::of(&cx)
            .remove(&host, &user, Some(&service), Some(&node))
            .await
        {
            tracing::warn!(error = %e, "removing a push registration failed");
        }
    });
}

/// The store of `mod_push`, beside the module.
pub mod store {
    use palaver_server::ModuleCx;
    use palaver_storage::{Db, ModuleMigration, Result, on_db};

    /// The module's table.
    pub const MIGRATIONS: &[ModuleMigration] = &[ModuleMigration {
        sqlite: "CREATE TABLE push_registrations (host TEXT NOT NULL, username TEXT NOT NULL, \
                 service TEXT NOT NULL, node TEXT NOT NULL, options TEXT, \
                 PRIMARY KEY (host, username, service, node))",
        postgres: "CREATE TABLE push_registrations (host TEXT NOT NULL, username TEXT NOT NULL, \
                   service TEXT NOT NULL, node TEXT NOT NULL, options TEXT, \
                   PRIMARY KEY (host, username, service, node))",
    }];

    /// Push registrations (XEP-0357), on either backend.
    pub struct PushSql(Db);

    impl PushSql {
        /// The store over the server's pool.
        pub fn new(db: Db) -> PushSql {
            PushSql(db)
        }

        /// The store of a running server.
        pub fn of(cx: &ModuleCx) -> PushSql {
            PushSql(cx.storage().db.clone())
        }

        /// Add or replace a registration.
        pub async fn add(
            &self,
            host: &str,
            user: &str,
            service: &str,
            node: &str,
            options: Option<&str>,
        ) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query(
                    "INSERT INTO push_registrations (host, username, service, node, options) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (host, username, service, node) \
                     DO UPDATE SET options = excluded.options",
                )
                .bind(host)
                .bind(user)
                .bind(service)
                .bind(node)
                .bind(options)
                .execute(pool)
                .await?;
            });
            Ok(())
        }

        /// Remove registrations: all of the account's, all of one app
        /// server, or one node.
        pub async fn remove(
            &self,
            host: &str,
            user: &str,
            service: Option<&str>,
            node: Option<&str>,
        ) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query(
                    "DELETE FROM push_registrations WHERE host = $1 AND username = $2 \
                     AND ($3 IS NULL OR service = $3) AND ($4 IS NULL OR node = $4)",
                )
                .bind(host)
                .bind(user)
                .bind(service)
                .bind(node)
                .execute(pool)
                .await?;
            });
            Ok(())
        }

        /// An account's registrations: (app server, node, publish-options).
        pub async fn list(
            &self,
            host: &str,
            user: &str,
        ) -> Result<Vec<(String, String, Option<String>)>> {
            Ok(on_db!(&self.0, |pool| {
                sqlx::query_as(
                    "SELECT service, node, options FROM push_registrations \
                     WHERE host = $1 AND username = $2 ORDER BY service, node",
                )
                .bind(host)
                .bind(user)
                .fetch_all(pool)
                .await?
            }))
        }
    }
}
