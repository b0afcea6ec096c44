//! The server core and its router: every stanza, from whatever door it came
//! in by, is delivered by [`Core::route`].

use crate::auth::Authenticator;
use crate::config::Config;
use crate::host::Host;
use crate::module::{HookAction, HookCtx, IqRequest, IqScope, IqType, PresenceEvent};
use crate::sm::{DeliverError, SessionHandle, SessionManager};
use jid::{BareJid, FullJid, Jid};
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::stanza::{Stanza, StanzaKind};
use palaver_storage::Storage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

const OFFLINE_SHARDS: usize = 4;

/// Sender side of one ordered offline-handling queue.
/// The ticket keeps the sender's stream-management acknowledgement back
/// until the message is handled (stored).
pub type OfflineQueue = tokio::sync::mpsc::Sender<(Arc<Host>, Stanza, Option<crate::ack::Ticket>)>;

/// Shared state of a running server.
pub struct Core {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Storage backend.
    pub storage: Storage,
    /// Virtual hosts by domain.
    pub hosts: HashMap<String, Arc<Host>>,
    /// Service subdomains → the host whose module serves them.
    pub services: HashMap<String, Arc<Host>>,
    /// Bound HTTP listener addresses (set once listeners are up).
    pub http_addrs: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// XEP-0363 settings, resolved on first use.
    pub upload: std::sync::OnceLock<Option<Arc<crate::upload::Upload>>>,
    /// Ordered queues for messages to users without an available resource.
    pub offline_queues: std::sync::OnceLock<Vec<OfflineQueue>>,
    /// Local session table.
    pub sm: SessionManager,
    /// Password checks.
    pub auth: Authenticator,
    /// When the server started.
    pub started: Instant,
    /// Becomes `true` on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl Core {
    /// The host serving `domain`.
    pub fn host(&self, domain: &str) -> Option<&Arc<Host>> {
        self.hosts.get(domain)
    }

    /// Whether `domain` is served here.
    pub fn is_local(&self, domain: &str) -> bool {
        self.hosts.contains_key(domain)
    }

    /// Run the `user_send_packet` hooks of the sender's host.
    pub fn run_user_send(self: &Arc<Self>, session: &FullJid, st: &mut Stanza) -> HookAction {
        let Some(host) = self.host(session.domain().as_str()) else {
            return HookAction::Continue;
        };
        let ctx = HookCtx {
            core: self,
            session_jid: session,
        };
        for (_, h) in &host.regs.user_send {
            if h(&ctx, st) == HookAction::Drop {
                return HookAction::Drop;
            }
        }
        HookAction::Continue
    }

    /// Run the `user_receive_packet` hooks for a session about to receive `st`.
    pub fn run_user_receive(self: &Arc<Self>, session: &FullJid, st: &mut Stanza) -> HookAction {
        let Some(host) = self.host(session.domain().as_str()) else {
            return HookAction::Continue;
        };
        let ctx = HookCtx {
            core: self,
            session_jid: session,
        };
        for (_, h) in &host.regs.user_receive {
            if h(&ctx, st) == HookAction::Drop {
                return HookAction::Drop;
            }
        }
        HookAction::Continue
    }

    /// Route a stanza to its destination. Never blocks: slow paths (storage,
    /// IQ handlers) run in their own tasks.
    pub fn route(self: &Arc<Self>, st: Stanza) {
        let to = match &st.to {
            Some(t) => t.clone(),
            None => {
                // Stanzas without `to` are addressed to the sender's account (RFC 6120 §10.3).
                let bare: Jid = st.from.to_bare().into();
                let mut st = st;
                st.set_to(Some(bare));
                return self.route(st);
            }
        };
        let domain = to.domain().as_str();
        if let Some(host) = self.services.get(domain).cloned() {
            self.route_to_service(host, st);
            return;
        }
        let Some(host) = self.hosts.get(domain).cloned() else {
            // No federation yet: nothing else is reachable.
            self.bounce(
                &st,
                Condition::RemoteServerNotFound,
                Some(Jid::from(to.to_bare())),
            );
            return;
        };
        if to.node().is_none() {
            self.route_to_host(host, st);
            return;
        }
        match to.try_as_full() {
            Ok(full) => self.route_to_full(host, full.clone(), st),
            Err(bare) => self.route_to_bare(host, bare.clone(), st),
        }
    }

    /// A stanza for a service subdomain: IQs go to the service's handlers.
    fn route_to_service(self: &Arc<Self>, host: Arc<Host>, st: Stanza) {
        if st.kind != StanzaKind::Iq {
            if st.kind == StanzaKind::Message {
                self.bounce(&st, Condition::ServiceUnavailable, None);
            }
            return;
        }
        let kind = match st.type_attr() {
            Some("get") => IqType::Get,
            Some("set") => IqType::Set,
            Some("result") | Some("error") => return,
            _ => {
                self.bounce(&st, Condition::BadRequest, None);
                return;
            }
        };
        let domain = st
            .to
            .as_ref()
            .map(|t| t.domain().to_string())
            .unwrap_or_default();
        let handler = st
            .payload()
            .and_then(|p| host.service_iq_handler(&domain, kind, &p.ns()));
        let Some(handler) = handler else {
            self.bounce(&st, Condition::ServiceUnavailable, None);
            return;
        };
        self.run_iq_handler(handler, host, st);
    }

    /// Reply to `st` with an error, unless it is an error itself.
    pub fn bounce(self: &Arc<Self>, st: &Stanza, cond: Condition, error_from: Option<Jid>) {
        self.bounce_with(st, StanzaError::new(cond), error_from);
    }

    /// Reply to `st` with a specific error.
    pub fn bounce_with(self: &Arc<Self>, st: &Stanza, err: StanzaError, error_from: Option<Jid>) {
        if let Some(reply) = st.error_reply(&err, error_from) {
            self.route(reply);
        }
    }

    fn route_to_host(self: &Arc<Self>, host: Arc<Host>, st: Stanza) {
        match st.kind {
            StanzaKind::Iq => self.dispatch_iq(host, IqScope::Server, st),
            StanzaKind::Message => {
                if st.is_error() {
                    return;
                }
                let core = self.clone();
                let ticket = crate::ack::current();
                tokio::spawn(async move {
                    let _ticket = ticket;
                    for (_, hook) in &host.regs.host_message {
                        if hook(core.clone(), st.clone()).await {
                            return;
                        }
                    }
                    if !matches!(st.type_attr(), Some("headline") | Some("groupchat")) {
                        core.bounce(&st, Condition::ServiceUnavailable, None);
                    }
                });
            }
            // Presence to the server itself has no meaning without modules.
            StanzaKind::Presence => {}
        }
    }

    /// Hand an IQ to the module handling its payload namespace, or answer
    /// `service-unavailable` (RFC 6120 §8.4). Results and errors are never answered.
    fn dispatch_iq(self: &Arc<Self>, host: Arc<Host>, scope: IqScope, st: Stanza) {
        let kind = match st.type_attr() {
            Some("get") => IqType::Get,
            Some("set") => IqType::Set,
            Some("result") | Some("error") => return,
            _ => {
                self.bounce(&st, Condition::BadRequest, None);
                return;
            }
        };
        let mut children = st.el.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            self.bounce(&st, Condition::BadRequest, None);
            return;
        };
        let handler = host.iq_handler(scope, kind, &payload.ns());
        let Some(handler) = handler else {
            self.bounce(&st, Condition::ServiceUnavailable, None);
            return;
        };
        self.run_iq_handler(handler, host, st);
    }

    /// Run an IQ handler in its own task and answer with its result or error.
    fn run_iq_handler(
        self: &Arc<Self>,
        handler: crate::module::IqHandler,
        host: Arc<Host>,
        st: Stanza,
    ) {
        let core = self.clone();
        let ticket = crate::ack::current();
        tokio::spawn(async move {
            let _ticket = ticket;
            let req_copy = st.clone();
            let res = handler(IqRequest {
                stanza: st,
                core: core.clone(),
                host,
            })
            .await;
            match res {
                Ok(payload) => core.route(req_copy.iq_result(payload)),
                Err(e) => core.bounce_with(&req_copy, e, None),
            }
        });
    }

    /// Whether the addressee's account exists (`Err` when storage failed).
    async fn user_exists_for(&self, st: &Stanza) -> palaver_storage::Result<bool> {
        let Some(to) = &st.to else { return Ok(false) };
        let Some(node) = to.node() else {
            return Ok(false);
        };
        self.storage
            .accounts
            .account_exists(to.domain().as_str(), node.as_str())
            .await
    }

    fn deliver(self: &Arc<Self>, handle: &SessionHandle, st: Stanza) {
        if let Err((err, st)) = SessionManager::deliver(handle, st) {
            match err {
                DeliverError::Full => {
                    tracing::warn!(resource = %handle.resource, "session queue full; bouncing stanza");
                    self.bounce(&st, Condition::ResourceConstraint, None);
                }
                // The session just ended: treat as if no resource were available.
                DeliverError::Gone | DeliverError::NoSession => {
                    if let Some(host) = st
                        .to
                        .as_ref()
                        .and_then(|t| self.hosts.get(t.domain().as_str()))
                        .cloned()
                    {
                        self.no_session(host, *st);
                    }
                }
            }
        }
    }

    fn route_to_full(self: &Arc<Self>, host: Arc<Host>, to: FullJid, st: Stanza) {
        let st = match self.sm.deliver_full(&to, st) {
            Ok(()) => return,
            Err((DeliverError::NoSession, st)) => *st,
            Err((DeliverError::Full, st)) => {
                tracing::warn!(to = %to, "session queue full; bouncing stanza");
                self.bounce(&st, Condition::ResourceConstraint, None);
                return;
            }
            Err((DeliverError::Gone, st)) => {
                self.no_session(host, *st);
                return;
            }
        };
        // RFC 6121 §8.5.3.2: no such resource.
        match st.kind {
            StanzaKind::Message => match st.type_attr() {
                Some("error") => {}
                Some("groupchat") => self.bounce(&st, Condition::ServiceUnavailable, None),
                Some("headline") => {}
                _ => self.route_to_bare(host, to.to_bare(), st),
            },
            StanzaKind::Iq => self.bounce(&st, Condition::ServiceUnavailable, None),
            StanzaKind::Presence => match st.type_attr() {
                Some("subscribe") | Some("subscribed") | Some("unsubscribe")
                | Some("unsubscribed") => self.route_to_bare(host, to.to_bare(), st),
                _ => {}
            },
        }
    }

    fn route_to_bare(self: &Arc<Self>, host: Arc<Host>, to: BareJid, st: Stanza) {
        match st.kind {
            StanzaKind::Iq => self.dispatch_iq(host, IqScope::Account, st),
            StanzaKind::Presence => {
                if matches!(
                    st.type_attr(),
                    Some("subscribe")
                        | Some("subscribed")
                        | Some("unsubscribe")
                        | Some("unsubscribed")
                        | Some("probe")
                ) {
                    // Subscription management and probes are answered by the server (RFC 6121 §3, §4.3).
                    let core = self.clone();
                    let ticket = crate::ack::current();
                    tokio::spawn(async move {
                        let _ticket = ticket;
                        for (_, hook) in &host.regs.presence_in {
                            if hook(core.clone(), st.clone()).await {
                                return;
                            }
                        }
                    });
                    return;
                }
                // Presence to a bare JID goes to every available resource (RFC 6121 §8.5.2.1.2).
                for h in self.sm.sessions(&to) {
                    if h.priority.is_some() {
                        self.deliver(&h, st.clone());
                    }
                }
            }
            StanzaKind::Message => {
                let sessions = self.sm.sessions(&to);
                let top = sessions
                    .iter()
                    .filter_map(|h| h.priority)
                    .filter(|p| *p >= 0)
                    .max();
                let Some(top) = top else {
                    self.no_session(host, st);
                    return;
                };
                match st.type_attr() {
                    Some("error") => {}
                    Some("groupchat") => self.bounce(&st, Condition::ServiceUnavailable, None),
                    Some("headline") => {
                        for h in sessions
                            .iter()
                            .filter(|h| h.priority.is_some_and(|p| p >= 0))
                        {
                            self.deliver(h, st.clone());
                        }
                    }
                    Some("chat") => {
                        let targets: Vec<&SessionHandle> = sessions
                            .iter()
                            .filter(|h| h.priority == Some(top))
                            .collect();
                        let n = targets.len();
                        for (i, h) in targets.into_iter().enumerate() {
                            if i + 1 == n {
                                self.deliver(h, st);
                                break;
                            }
                            self.deliver(h, st.clone());
                        }
                    }
                    _ => {
                        // normal: the most available resource.
                        if let Some(h) = sessions.iter().find(|h| h.priority == Some(top)) {
                            self.deliver(h, st);
                        }
                    }
                }
            }
        }
    }

    /// A message for a user with no available resource: offline hooks, or an error.
    fn no_session(self: &Arc<Self>, host: Arc<Host>, st: Stanza) {
        if st.kind != StanzaKind::Message || matches!(st.type_attr(), Some("error")) {
            return;
        }
        // Messages for one recipient are handled in arrival order: one queue
        // per shard of recipients, so offline storage keeps their order.
        let queues = self.offline_queues.get_or_init(|| {
            (0..OFFLINE_SHARDS)
                .map(|_| {
                    let (tx, mut rx) = tokio::sync::mpsc::channel(10_000);
                    let core = Arc::downgrade(self);
                    tokio::spawn(async move {
                        while let Some((host, st, ticket)) = rx.recv().await {
                            let Some(core) = core.upgrade() else { return };
                            core.offline_one(host, st).await;
                            drop(ticket);
                        }
                    });
                    tx
                })
                .collect()
        });
        let bare = st
            .to
            .as_ref()
            .map(|t| t.to_bare().to_string())
            .unwrap_or_default();
        let shard = bare
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % OFFLINE_SHARDS;
        if let Err(e) = queues[shard].try_send((host, st, crate::ack::current())) {
            let (_, st, _) = e.into_inner();
            tracing::warn!("offline queue full; bouncing message");
            self.bounce(&st, Condition::ResourceConstraint, None);
        }
    }

    async fn offline_one(self: &Arc<Self>, host: Arc<Host>, st: Stanza) {
        match self.user_exists_for(&st).await {
            Ok(true) => {}
            Ok(false) => {
                self.bounce(&st, Condition::ServiceUnavailable, None);
                return;
            }
            Err(e) => {
                let err = crate::module::storage_failure("account lookup", &e);
                self.bounce_with(&st, err, None);
                return;
            }
        }
        if matches!(st.type_attr(), Some("headline") | Some("groupchat")) {
            return;
        }
        for (_, hook) in &host.regs.offline {
            if hook(self.clone(), st.clone()).await {
                return;
            }
        }
        self.bounce(&st, Condition::ServiceUnavailable, None);
    }

    /// Run the subscription-out hooks; `true` when a module routed the stanza.
    pub async fn run_subscription_out(self: &Arc<Self>, st: &Stanza) -> bool {
        let Some(host) = self.hosts.get(st.from.domain().as_str()).cloned() else {
            return false;
        };
        for (_, hook) in &host.regs.subscription_out {
            if hook(self.clone(), st.clone()).await {
                return true;
            }
        }
        false
    }

    /// Run the presence-out hooks for a broadcast by `session`.
    pub async fn run_presence_out(
        self: &Arc<Self>,
        session: &FullJid,
        st: &Stanza,
        ev: PresenceEvent,
    ) {
        let Some(host) = self.hosts.get(session.domain().as_str()).cloned() else {
            return;
        };
        for (_, hook) in &host.regs.presence_out {
            hook(self.clone(), session.clone(), st.clone(), ev).await;
        }
    }

    /// Run the session-bound hooks.
    pub async fn run_session_bound(self: &Arc<Self>, session: &FullJid) {
        let Some(host) = self.hosts.get(session.domain().as_str()).cloned() else {
            return;
        };
        for (_, hook) in &host.regs.session_bound {
            hook(self.clone(), session.clone()).await;
        }
    }

    /// Run the session-closed hooks.
    pub async fn run_session_closed(self: &Arc<Self>, session: &FullJid) {
        let Some(host) = self.hosts.get(session.domain().as_str()).cloned() else {
            return;
        };
        for (_, hook) in &host.regs.session_closed {
            hook(self.clone(), session.clone()).await;
        }
    }

    /// Remove an account and every module's data about it.
    pub async fn remove_user(
        self: &Arc<Self>,
        host: &str,
        user: &str,
    ) -> palaver_storage::Result<()> {
        // The account goes first, so nothing new is stored for it while the
        // modules delete their data.
        self.storage.accounts.delete_account(host, user).await?;
        if let Some(h) = self.hosts.get(host) {
            for (_, hook) in &h.regs.remove_user {
                hook(self.clone(), host.to_string(), user.to_string()).await;
            }
        }
        self.auth.forget(host, user);
        if let Ok(bare) = BareJid::new(&format!("{user}@{host}")) {
            for s in self.sm.sessions(&bare) {
                let _ =
                    s.tx.try_send(crate::sm::SessionMsg::Kick("account removed".into()));
            }
        }
        Ok(())
    }
}
