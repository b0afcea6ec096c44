//! The server core: configuration, storage, virtual hosts, the routing table
//! and the session table. Its fields are the kernel's own; modules act
//! through a [`ModuleCx`], and stanzas move only through the router
//! ([`Core::route`], in [`crate::router`]).

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hooks::{self, Account, HookAction, PresenceBroadcast};
use crate::host::Host;
use crate::module::{ModuleCx, PresenceEvent};
use crate::router::RoutingTable;
use crate::serial::Serializer;
use crate::sessions::{SessionManager, SessionRegistry};
use jid::{BareJid, FullJid};
use palaver_proto::stanza::Stanza;
use palaver_storage::Storage;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::watch;

/// Virtual hosts by domain.
pub(crate) type HostMap = HashMap<String, Arc<Host>>;

/// Shared state of a running server.
pub struct Core {
    /// Validated configuration (replaced whole by a reload).
    pub(crate) config: RwLock<Arc<Config>>,
    /// Storage backend.
    pub(crate) storage: Storage,
    /// Virtual hosts by domain (replaced whole by a reload).
    pub(crate) hosts: RwLock<Arc<HostMap>>,
    /// Bumped by every reload that installed new hosts, so that holders of
    /// an `Arc<Host>` (c2s sessions) know to look theirs up again.
    pub(crate) generation: AtomicU64,
    /// The modules this build has (a reload starts modules from it).
    pub(crate) modules: Vec<crate::module::ModuleDef>,
    /// One reload at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// Domain → destination.
    pub(crate) routes: RoutingTable,
    /// Bound HTTP listener addresses (set once listeners are up).
    pub(crate) http_addrs: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// Local session table.
    pub(crate) registry: SessionManager,
    /// Per-account ordered work.
    pub(crate) serial: Serializer,
    /// Password checks.
    pub(crate) auth: Authenticator,
    /// When the server started.
    pub(crate) started: Instant,
    /// Becomes `true` on shutdown.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Connections not yet authenticated, by address.
    pub(crate) unauth: Arc<crate::limits::Unauthenticated>,
    /// The certificates every TLS listener serves (set once at start).
    pub(crate) certs: std::sync::OnceLock<Arc<crate::tls::CertStore>>,
}

impl Core {
    /// The host serving `domain` (as it is now: a reload replaces it).
    pub fn host(&self, domain: &str) -> Option<Arc<Host>> {
        self.hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }

    /// Every virtual host, by name.
    pub(crate) fn host_map(&self) -> Arc<HostMap> {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every virtual host, in config order.
    pub fn hosts(&self) -> Vec<Arc<Host>> {
        let map = self.host_map();
        self.config()
            .hosts
            .iter()
            .filter_map(|h| map.get(h).cloned())
            .collect()
    }

    /// Whether `domain` is a virtual host served here.
    pub fn is_local(&self, domain: &str) -> bool {
        self.hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(domain)
    }

    /// Changes whenever a reload installs new hosts.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Count a new unauthenticated connection from `ip` against `cap`,
    /// waiting until `deadline` while that address has `cap` open; `None`
    /// (close it) when none freed up in time.
    pub async fn unauthenticated(
        &self,
        ip: std::net::IpAddr,
        cap: usize,
        deadline: tokio::time::Instant,
    ) -> Option<crate::limits::UnauthGuard> {
        if let Some(g) = self.unauth.try_acquire(ip, cap) {
            return Some(g);
        }
        let guard = self.unauth.acquire(ip, cap, deadline).await;
        if guard.is_none() {
            tracing::warn!(%ip, cap, "closed a connection: too many unauthenticated connections from this address");
        }
        guard
    }

    /// The certificates every TLS listener serves (c2s, HTTPS, s2s).
    pub fn certs(&self) -> Option<&Arc<crate::tls::CertStore>> {
        self.certs.get()
    }

    /// Read the certificate files again (renewed certificates): new TLS
    /// handshakes use them, established connections stay. On an error the
    /// current certificates stay in use.
    pub fn reload_certificates(&self) -> Result<(), String> {
        let Some(certs) = self.certs.get() else {
            return Ok(());
        };
        match certs.reload() {
            Ok(()) => {
                tracing::info!("certificates reloaded");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                for w in certs.warnings(now) {
                    tracing::warn!("{w}");
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate reload failed; the current certificates stay in use");
                Err(e.to_string())
            }
        }
    }

    /// The configuration (as it is now: a reload replaces it).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The session registry (queries).
    pub fn sessions(&self) -> &dyn SessionRegistry {
        &self.registry
    }

    /// The routing table.
    pub fn routes(&self) -> &RoutingTable {
        &self.routes
    }

    /// A receiver that becomes `true` when the server shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Bound HTTP listener addresses.
    pub fn http_addrs(&self) -> &[std::net::SocketAddr] {
        self.http_addrs.get().map_or(&[], |v| v.as_slice())
    }

    /// The module context of host `host`.
    pub fn cx(self: &Arc<Self>, host: &Arc<Host>) -> ModuleCx {
        ModuleCx {
            core: self.clone(),
            host: host.clone(),
        }
    }

    /// The module context of the host named `domain`.
    pub fn cx_of(self: &Arc<Self>, domain: &str) -> Option<ModuleCx> {
        self.host(domain).map(|h| self.cx(&h))
    }

    /// Run the `user_send_packet` hooks of the sender's host.
    pub(crate) fn run_user_send(
        self: &Arc<Self>,
        session: &FullJid,
        st: &mut Stanza,
    ) -> HookAction {
        self.run_session_hook::<hooks::UserSend>(session, st)
    }

    /// Run the `user_receive_packet` hooks for a session about to receive `st`.
    pub(crate) fn run_user_receive(
        self: &Arc<Self>,
        session: &FullJid,
        st: &mut Stanza,
    ) -> HookAction {
        self.run_session_hook::<hooks::UserReceive>(session, st)
    }

    fn run_session_hook<H: hooks::SyncHook<Arg = Stanza>>(
        self: &Arc<Self>,
        session: &FullJid,
        st: &mut Stanza,
    ) -> HookAction {
        let Some(host) = self.host(session.domain().as_str()) else {
            return HookAction::Continue;
        };
        if !host.hooks().has::<H>() {
            return HookAction::Continue;
        }
        self.cx(&host).run_hook::<H>(Some(session), st)
    }

    /// A stanza a local session sent was routed: observers that must finish
    /// before it is acknowledged ([`hooks::UserSent`]) run holding its ticket.
    pub(crate) fn sent(self: &Arc<Self>, session: &FullJid, st: &Stanza) {
        let Some(host) = self.host(session.domain().as_str()) else {
            return;
        };
        if !host.hooks().has::<hooks::UserSent>() {
            return;
        }
        let cx = self.cx(&host);
        let arg = hooks::SentStanza {
            session: session.clone(),
            stanza: st.clone(),
        };
        // In the order the account sent them (an archive keeps that order),
        // holding the stanza's ticket.
        let chain = cx.run_hook_async::<hooks::UserSent>(arg);
        let job = crate::ack::with_ticket(cx.ticket(), async move {
            chain.await;
        });
        self.serial
            .run_or_spawn(&session.to_bare().to_string(), job, "user_sent hooks");
    }

    /// Run the subscription-out hooks for the sender's account, one
    /// transition of that account at a time; `true` when a module routed the
    /// stanza.
    pub(crate) async fn run_subscription_out(self: &Arc<Self>, st: &Stanza) -> bool {
        let Some(cx) = self.cx_of(st.from.domain().as_str()) else {
            return false;
        };
        let key = st.from.to_bare().to_string();
        let st = st.clone();
        let ticket = crate::ack::current();
        let fut = crate::ack::with_ticket(ticket, async move {
            cx.run_hook_async::<hooks::SubscriptionOut>(st).await
        });
        self.serial.run(&key, fut).await == Some(HookAction::Drop)
    }

    /// Run the presence-out hooks for a broadcast by `session`.
    pub(crate) async fn run_presence_out(
        self: &Arc<Self>,
        session: &FullJid,
        st: &Stanza,
        ev: PresenceEvent,
    ) {
        let Some(cx) = self.cx_of(session.domain().as_str()) else {
            return;
        };
        cx.run_hook_async::<hooks::PresenceOut>(PresenceBroadcast {
            session: session.clone(),
            stanza: st.clone(),
            event: ev,
        })
        .await;
    }

    /// Run the session-bound hooks.
    pub(crate) async fn run_session_bound(self: &Arc<Self>, session: &FullJid) {
        if let Some(cx) = self.cx_of(session.domain().as_str()) {
            cx.run_hook_async::<hooks::SessionBound>(session.clone())
                .await;
        }
    }

    /// Run the session-closed hooks.
    pub(crate) async fn run_session_closed(self: &Arc<Self>, session: &FullJid) {
        if let Some(cx) = self.cx_of(session.domain().as_str()) {
            cx.run_hook_async::<hooks::SessionClosed>(session.clone())
                .await;
        }
    }

    /// Remove an account and every module's data about it; its sessions end.
    pub async fn remove_user(
        self: &Arc<Self>,
        host: &str,
        user: &str,
    ) -> palaver_storage::Result<()> {
        // The account goes first, so nothing new is stored for it while the
        // modules delete their data.
        self.storage.accounts.delete_account(host, user).await?;
        if let Some(cx) = self.cx_of(host) {
            cx.run_hook_async::<hooks::RemoveUser>(Account {
                host: host.to_string(),
                user: user.to_string(),
            })
            .await;
        }
        self.auth.forget(host, user);
        if let Ok(bare) = BareJid::new(&format!("{user}@{host}")) {
            self.registry.kick(&bare, "account removed");
        }
        Ok(())
    }

    /// The HTTP routes of every host's modules, each path once (the first
    /// host in config order that registered it serves it). They change
    /// with a reload ([`Core::generation`]).
    pub fn http_routes(self: &Arc<Self>) -> Vec<(String, axum::routing::MethodRouter)> {
        let mut out: Vec<(String, axum::routing::MethodRouter)> = Vec::new();
        for h in self.hosts() {
            for r in h.http_routes() {
                if out.iter().any(|(p, _)| *p == r.path) {
                    continue;
                }
                out.push((r.path.clone(), r.build(self.cx(&h))));
            }
        }
        out
    }

    /// Apply the schema steps of every enabled module's own tables.
    pub(crate) async fn migrate_modules(&self) -> palaver_storage::Result<()> {
        let todo = steps_of(self.host_map().values().map(|h| &h.regs));
        migrate(&self.storage, todo).await
    }

    /// Start the modules' background tasks on every host.
    pub(crate) fn start_modules(self: &Arc<Self>) {
        for h in self.host_map().values() {
            h.start_tasks(&self.cx(h));
        }
    }

    /// Stop every module of every host (their tasks are cancelled).
    pub fn stop_modules(self: &Arc<Self>) {
        for h in self.host_map().values() {
            h.stop_modules(&self.cx(h));
        }
    }
}

/// Schema steps of a module's own tables.
pub(crate) type Steps = (&'static str, &'static [palaver_storage::ModuleMigration]);

/// The schema steps of the modules of `regs`, each module once.
pub(crate) fn steps_of<'a>(
    regs: impl Iterator<Item = &'a crate::module::Registrations>,
) -> Vec<Steps> {
    let mut todo: Vec<Steps> = Vec::new();
    for r in regs {
        for (module, steps) in &r.migrations {
            if !todo.iter().any(|(m, _)| m == module) {
                todo.push((module, steps));
            }
        }
    }
    todo
}

/// Apply schema steps (see [`steps_of`]).
pub(crate) async fn migrate(storage: &Storage, todo: Vec<Steps>) -> palaver_storage::Result<()> {
    for (module, steps) in todo {
        storage.db.migrate_module(module, steps).await?;
    }
    Ok(())
}
