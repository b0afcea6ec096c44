//! The module API: what a feature module is and what it registers on a
//! virtual host.
//!
//! A module is a type implementing [`Module`]: a name, a `serde` options
//! struct (parsed once, with defaults; a bad option is a config error) and a
//! `start` that registers declaratively on a [`HostSetup`]: disco features
//! and identities, IQ handlers by namespace, hooks with priorities
//! ([`crate::hooks`]), stream features, service subdomains that receive every
//! stanza kind, HTTP routes, background tasks that `stop` ends, and its part
//! of an account's portable data ([`crate::account_data`]). Modules
//! never import each other, and never reach a session but through the
//! router: at run time they act through a [`ModuleCx`] (route, session
//! queries, storage, config, spawn holding the stanza's ticket).
//!
//! `docs/architecture.md` has a complete small example.

use crate::core::Core;
use crate::hooks::{AsyncHook, HookCx, SyncHook};
use crate::host::Host;
use futures_util::future::BoxFuture;
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::stanza::Stanza;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::hooks::HookAction;

/// Result of an IQ handler: a result payload (or none), or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// An IQ request delivered to a handler.
pub struct IqRequest {
    /// The request stanza (`from` stamped, `to` set).
    pub stanza: Stanza,
    /// The module context of the host (or service) it was addressed to.
    pub cx: ModuleCx,
}

impl IqRequest {
    /// The request payload (first child).
    pub fn payload(&self) -> Option<&Element> {
        self.stanza.payload()
    }
    /// The requester's own account, when the IQ is addressed to it (or to no
    /// one); anyone else gets `forbidden`. Returns (bare JID, host, user).
    pub fn own_account(&self) -> Result<(jid::BareJid, String, String), StanzaError> {
        let me = self.stanza.from.to_bare();
        if self.stanza.to.as_ref().map(|t| t.to_bare()) != Some(me.clone()) {
            return Err(StanzaError::new(palaver_proto::error::Condition::Forbidden));
        }
        let user = me
            .node()
            .map(|n| n.to_string())
            .ok_or_else(|| StanzaError::new(palaver_proto::error::Condition::Forbidden))?;
        let host = me.domain().to_string();
        Ok((me, host, user))
    }

    /// `true` for `type='get'`.
    pub fn is_get(&self) -> bool {
        self.stanza.type_attr() == Some("get")
    }
}

/// A boxed IQ handler.
pub type IqHandler = Arc<dyn Fn(IqRequest) -> BoxFuture<'static, IqResult> + Send + Sync>;

/// Who an IQ handler answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqScope {
    /// Addressed to the host itself (`to='example.org'`).
    Server,
    /// Addressed to a user's bare JID, answered by the server on the user's behalf.
    Account,
}

/// IQ request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqType {
    /// `get`
    Get,
    /// `set`
    Set,
}

/// Answers disco#info (`items == false`) or disco#items for one node of
/// the host (e.g. XEP-0050's command list).
pub type DiscoNodeHandler =
    Arc<dyn Fn(IqRequest, bool) -> BoxFuture<'static, IqResult> + Send + Sync>;

/// Adds elements to c2s stream features.
pub type FeatureHook = Arc<dyn Fn(&crate::host::Host) -> Vec<Element> + Send + Sync>;
/// An IQ before authentication (in-band registration).
pub type PreAuthIqHook = Arc<dyn Fn(PreAuthIq) -> BoxFuture<'static, IqResult> + Send + Sync>;
/// Handles every stanza addressed to a service subdomain that no IQ handler
/// took (messages, presence, other IQs). Runs on the router's path: queue or
/// spawn anything that waits.
pub type ServiceHandler = Arc<dyn Fn(&ModuleCx, Stanza) + Send + Sync>;
/// Builds a module's HTTP route once the server runs.
pub type HttpRouteFn = Arc<dyn Fn(ModuleCx) -> axum::routing::MethodRouter + Send + Sync>;
pub(crate) type TaskFn = Box<dyn FnOnce(ModuleCx) -> BoxFuture<'static, ()> + Send>;

/// A pre-authentication IQ request on a c2s stream.
pub struct PreAuthIq {
    /// Server core.
    pub core: Arc<Core>,
    /// Host of the stream.
    pub host: Arc<crate::host::Host>,
    /// The request element.
    pub el: Element,
    /// Peer address.
    pub peer: std::net::SocketAddr,
    /// Whether the stream is encrypted.
    pub secure: bool,
}

impl PreAuthIq {
    /// The module context of the stream's host.
    pub fn cx(&self) -> ModuleCx {
        ModuleCx {
            core: self.core.clone(),
            host: self.host.clone(),
        }
    }
}

/// Kind of presence broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// First available presence of the session.
    Initial,
    /// A later available presence.
    Update,
    /// The session became unavailable (explicitly or by disconnecting).
    Unavailable,
}

/// A disco identity (XEP-0030).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    /// Category.
    pub category: String,
    /// Type.
    pub kind: String,
    /// Name.
    pub name: Option<String>,
}

/// A service subdomain (e.g. `upload.example.org`) served by a module.
#[derive(Default, Clone)]
pub(crate) struct ServiceRegs {
    pub(crate) iq: HashMap<(IqType, String), IqHandler>,
    pub(crate) stanzas: Option<ServiceHandler>,
}

/// A module's HTTP route.
#[derive(Clone)]
pub struct HttpRoute {
    /// Path pattern (axum syntax, e.g. `/upload/{a}/{b}`).
    pub path: String,
    /// Module that registered it.
    pub module: &'static str,
    pub(crate) make: HttpRouteFn,
}

impl HttpRoute {
    /// Build the route's handler for a running server.
    pub fn build(&self, cx: ModuleCx) -> axum::routing::MethodRouter {
        (self.make)(cx)
    }
}

/// Everything the enabled modules registered on one host (or one module's
/// part of it: a host's are its modules' merged, see [`Registrations::merge`]).
#[derive(Default)]
pub struct Registrations {
    pub(crate) features: Vec<String>,
    pub(crate) account_features: Vec<String>,
    pub(crate) bind2_features: Vec<String>,
    pub(crate) fast: Option<Arc<dyn FastTokens>>,
    /// The rooms of the host's MUC services, for the room commands.
    pub(crate) room_admin: Option<Arc<dyn crate::rooms::RoomAdmin>>,
    pub(crate) identities: Vec<Identity>,
    pub(crate) account_identities: Vec<Identity>,
    pub(crate) disco_nodes: HashMap<String, DiscoNodeHandler>,
    pub(crate) account_disco: Vec<DiscoNodeHandler>,
    pub(crate) iq: HashMap<(IqScope, IqType, String), IqHandler>,
    pub(crate) hooks: crate::hooks::Hooks,
    pub(crate) stream_features: Vec<FeatureHook>,
    pub(crate) pre_auth_features: Vec<FeatureHook>,
    pub(crate) pre_auth_iq: HashMap<String, PreAuthIqHook>,
    pub(crate) modules: Vec<String>,
    /// Service subdomains and what serves them, in registration order.
    pub(crate) services: Vec<(String, ServiceRegs)>,
    pub(crate) http: Vec<HttpRoute>,
    pub(crate) migrations: Vec<(&'static str, &'static [palaver_storage::ModuleMigration])>,
    /// XEP-0198 settings when stream management is offered.
    pub(crate) stream_mgmt: Option<crate::c2s::StreamMgmtConfig>,
    /// The modules' parts of portable account data (XEP-0227).
    pub(crate) account_data: Vec<crate::account_data::AccountDataPart>,
}

impl Registrations {
    /// Add what another module registered, as if it had registered after
    /// the modules already here (a host's registrations are its modules',
    /// merged in config order; a reload merges them again, keeping the
    /// modules it does not restart).
    pub(crate) fn merge(&mut self, other: &Registrations) {
        self.features.extend(other.features.iter().cloned());
        self.account_features
            .extend(other.account_features.iter().cloned());
        self.bind2_features
            .extend(other.bind2_features.iter().cloned());
        if other.fast.is_some() {
            self.fast = other.fast.clone();
        }
        if other.room_admin.is_some() {
            self.room_admin = other.room_admin.clone();
        }
        self.account_disco
            .extend(other.account_disco.iter().cloned());
        self.identities.extend(other.identities.iter().cloned());
        self.account_identities
            .extend(other.account_identities.iter().cloned());
        for (k, v) in &other.disco_nodes {
            self.disco_nodes.insert(k.clone(), v.clone());
        }
        for (k, v) in &other.iq {
            if self.iq.insert(k.clone(), v.clone()).is_some() {
                tracing::warn!(ns = %k.2, "IQ handler registered by two modules; the later one wins");
            }
        }
        self.hooks.merge(&other.hooks);
        self.stream_features
            .extend(other.stream_features.iter().cloned());
        self.pre_auth_features
            .extend(other.pre_auth_features.iter().cloned());
        for (k, v) in &other.pre_auth_iq {
            self.pre_auth_iq.insert(k.clone(), v.clone());
        }
        self.modules.extend(other.modules.iter().cloned());
        for (domain, svc) in &other.services {
            match self.services.iter_mut().find(|(d, _)| d == domain) {
                Some((_, mine)) => {
                    for (k, v) in &svc.iq {
                        mine.iq.insert(k.clone(), v.clone());
                    }
                    if svc.stanzas.is_some() {
                        mine.stanzas = svc.stanzas.clone();
                    }
                }
                None => self.services.push((domain.clone(), svc.clone())),
            }
        }
        self.http.extend(other.http.iter().cloned());
        self.migrations.extend(other.migrations.iter().cloned());
        if other.stream_mgmt.is_some() {
            self.stream_mgmt = other.stream_mgmt;
        }
        self.account_data.extend(other.account_data.iter().cloned());
    }

    /// Sort and deduplicate what is advertised (disco features, identities).
    pub(crate) fn finish(mut self) -> Registrations {
        self.features.sort();
        self.features.dedup();
        self.account_features.sort();
        self.account_features.dedup();
        self.identities.sort();
        self.identities.dedup();
        self.account_identities.sort();
        self.account_identities.dedup();
        self
    }
}

/// A storage failure as the stanza error the user sees (and a log line):
/// `resource-constraint` (type wait: retry later) while the database is
/// unreachable or its pool exhausted, `internal-server-error` otherwise.
pub fn storage_failure(what: &str, e: &palaver_storage::StorageError) -> StanzaError {
    tracing::warn!(error = %e, "{what} storage error");
    match e {
        palaver_storage::StorageError::Unavailable(_) => {
            StanzaError::new(Condition::ResourceConstraint)
        }
        _ => StanzaError::new(Condition::InternalServerError),
    }
}

/// Any other failure while serving a request: `internal-server-error`, logged.
pub fn internal_error(what: &str, e: impl std::fmt::Display) -> StanzaError {
    tracing::warn!(error = %e, "{what} failed");
    StanzaError::new(Condition::InternalServerError)
}

/// Registration surface handed to a module when it starts on a host.
pub struct HostSetup {
    host: String,
    config: Arc<crate::config::Config>,
    regs: Registrations,
    tasks: Vec<TaskFn>,
    instance: Option<Box<dyn RunningModule>>,
    current: &'static str,
}

impl HostSetup {
    pub(crate) fn new(host: &str, config: Arc<crate::config::Config>) -> Self {
        HostSetup {
            host: host.to_string(),
            config,
            regs: Registrations::default(),
            tasks: Vec::new(),
            instance: None,
            current: "",
        }
    }

    pub(crate) fn begin_module(&mut self, name: &'static str) {
        self.current = name;
        self.regs.modules.push(name.to_string());
    }

    pub(crate) fn add_instance(&mut self, m: Box<dyn RunningModule>) {
        self.instance = Some(m);
    }

    /// What the module registered, its started instance and the tasks it
    /// asked for (not started yet).
    pub(crate) fn into_parts(
        self,
    ) -> (
        &'static str,
        Registrations,
        Option<Box<dyn RunningModule>>,
        Vec<TaskFn>,
    ) {
        (self.current, self.regs, self.instance, self.tasks)
    }

    /// The server configuration (ACLs, access rules…).
    pub fn config(&self) -> &crate::config::Config {
        &self.config
    }

    /// The host being set up.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Advertise a disco feature of the host.
    pub fn add_feature(&mut self, var: &str) {
        self.regs.features.push(var.to_string());
    }

    /// Advertise a disco feature of every account of the host (the
    /// disco#info of a user's bare JID: services the server runs on the
    /// account's behalf, e.g. XEP-0313 archives, PEP).
    pub fn add_account_feature(&mut self, var: &str) {
        self.regs.account_features.push(var.to_string());
    }

    /// Advertise an inline feature of XEP-0386 Bind 2 (the namespace of
    /// what the client may enable while binding; the module handles the
    /// [`Bind2Inline`](crate::hooks::Bind2Inline) hook for it).
    pub fn add_bind2_feature(&mut self, var: &str) {
        self.regs.bind2_features.push(var.to_string());
    }

    /// Offer XEP-0484 FAST tokens in XEP-0388 authentication, kept by `tokens`.
    pub fn fast_tokens(&mut self, tokens: Arc<dyn FastTokens>) {
        self.regs.fast = Some(tokens);
    }

    /// Let the command layer administer the module's chat rooms
    /// ([`crate::rooms`]).
    pub fn room_admin(&mut self, admin: Arc<dyn crate::rooms::RoomAdmin>) {
        self.regs.room_admin = Some(admin);
    }

    /// Advertise a disco identity of the host.
    pub fn add_identity(&mut self, category: &str, kind: &str, name: Option<&str>) {
        self.regs.identities.push(Identity {
            category: category.into(),
            kind: kind.into(),
            name: name.map(Into::into),
        });
    }

    /// Advertise a disco identity of every account's bare JID (e.g.
    /// `pubsub/pep`).
    pub fn add_account_identity(&mut self, category: &str, kind: &str, name: Option<&str>) {
        self.regs.account_identities.push(Identity {
            category: category.into(),
            kind: kind.into(),
            name: name.map(Into::into),
        });
    }

    /// Answer disco#info and disco#items queries to the host for `node`
    /// (the disco module asks the handler; `items` tells which query).
    pub fn on_disco_node<F, Fut>(&mut self, node: &str, f: F)
    where
        F: Fn(IqRequest, bool) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = IqResult> + Send + 'static,
    {
        let h: DiscoNodeHandler = Arc::new(move |req, items| Box::pin(f(req, items)));
        self.regs.disco_nodes.insert(node.to_string(), h);
    }

    /// Take part in disco queries to every account's bare JID (the disco
    /// module asks each handler in turn; `items` tells which query):
    /// for a query naming a node, the first handler answering `Some` gives
    /// the answer (`None`: not its node); for disco#items without a node,
    /// the children of every `Some` are listed after the account's own.
    pub fn on_account_disco<F, Fut>(&mut self, f: F)
    where
        F: Fn(IqRequest, bool) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = IqResult> + Send + 'static,
    {
        let h: DiscoNodeHandler = Arc::new(move |req, items| Box::pin(f(req, items)));
        self.regs.account_disco.push(h);
    }

    /// Handle IQs of `kind` whose payload is in namespace `ns`.
    pub fn on_iq<F, Fut>(&mut self, scope: IqScope, kind: IqType, ns: &str, f: F)
    where
        F: Fn(IqRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = IqResult> + Send + 'static,
    {
        let h: IqHandler = Arc::new(move |req| Box::pin(f(req)));
        if self
            .regs
            .iq
            .insert((scope, kind, ns.to_string()), h)
            .is_some()
        {
            tracing::warn!(module = %self.current, ns, "IQ handler registered twice; the later one wins");
        }
    }

    /// Shorthand: a `get` handler addressed to the server.
    pub fn on_iq_get<F, Fut>(&mut self, ns: &str, f: F)
    where
        F: Fn(IqRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = IqResult> + Send + 'static,
    {
        self.on_iq(IqScope::Server, IqType::Get, ns, f)
    }

    /// Register a handler of a synchronous hook point (see [`crate::hooks`]).
    /// Higher priority runs first.
    pub fn hook<H: SyncHook>(
        &mut self,
        priority: i32,
        f: impl Fn(&HookCx<'_>, &mut H::Arg) -> HookAction + Send + Sync + 'static,
    ) {
        self.regs
            .hooks
            .add_sync::<H>(self.current, priority, Arc::new(f));
    }

    /// Register a handler of an asynchronous hook point (see [`crate::hooks`]).
    /// Higher priority runs first.
    pub fn hook_async<H: AsyncHook, Fut>(
        &mut self,
        priority: i32,
        f: impl Fn(ModuleCx, H::Arg) -> Fut + Send + Sync + 'static,
    ) where
        Fut: std::future::Future<Output = HookAction> + Send + 'static,
    {
        self.regs.hooks.add_async::<H>(
            self.current,
            priority,
            Arc::new(move |cx, arg| Box::pin(f(cx, arg))),
        );
    }

    /// Offer XEP-0198 stream management (acknowledgements) on c2s streams.
    pub fn enable_stream_mgmt(&mut self, cfg: crate::c2s::StreamMgmtConfig) {
        self.regs.stream_mgmt = Some(cfg);
    }

    /// Add c2s stream features (offered after authentication).
    pub fn add_stream_features(&mut self, f: FeatureHook) {
        self.regs.stream_features.push(f);
    }

    /// Add c2s stream features offered before authentication.
    pub fn add_pre_auth_stream_features(&mut self, f: FeatureHook) {
        self.regs.pre_auth_features.push(f);
    }

    /// Handle IQs in namespace `ns` sent before authentication (e.g. XEP-0077).
    pub fn on_pre_auth_iq(&mut self, ns: &str, f: PreAuthIqHook) {
        self.regs.pre_auth_iq.insert(ns.to_string(), f);
    }

    fn service(&mut self, domain: &str) -> &mut ServiceRegs {
        let pos = match self.regs.services.iter().position(|(d, _)| d == domain) {
            Some(p) => p,
            None => {
                self.regs
                    .services
                    .push((domain.to_string(), ServiceRegs::default()));
                self.regs.services.len() - 1
            }
        };
        &mut self.regs.services[pos].1
    }

    /// Serve a subdomain (e.g. `upload.example.org`): the routing table
    /// sends it every stanza addressed to it or to any JID at it.
    pub fn add_service(&mut self, domain: &str) {
        self.service(domain);
    }

    /// Handle IQs of `kind` in namespace `ns` addressed to service `domain`
    /// (or to any JID at it).
    pub fn on_service_iq<F, Fut>(&mut self, domain: &str, kind: IqType, ns: &str, f: F)
    where
        F: Fn(IqRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = IqResult> + Send + 'static,
    {
        let h: IqHandler = Arc::new(move |req| Box::pin(f(req)));
        self.service(domain).iq.insert((kind, ns.to_string()), h);
    }

    /// Handle every other stanza (messages, presence, IQs without a
    /// handler) addressed to service `domain`. Without one, the router
    /// answers as RFC 6120 says (`service-unavailable` for messages and IQ
    /// requests, presence is ignored).
    pub fn on_service_stanza(
        &mut self,
        domain: &str,
        f: impl Fn(&ModuleCx, Stanza) + Send + Sync + 'static,
    ) {
        self.service(domain).stanzas = Some(Arc::new(f));
    }

    /// Serve an HTTP route on every HTTP listener (axum path syntax). The
    /// route is built once the server runs; when several hosts enable the
    /// module, the first host's route serves all of them.
    pub fn http_route(
        &mut self,
        path: &str,
        make: impl Fn(ModuleCx) -> axum::routing::MethodRouter + Send + Sync + 'static,
    ) {
        self.regs.http.push(HttpRoute {
            path: path.to_string(),
            module: self.current,
            make: Arc::new(make),
        });
    }

    /// The module's own tables: schema steps applied (once per module, in
    /// order, under its name) before the server serves; see
    /// `palaver_storage::Db` for writing the store beside the module.
    pub fn migrations(&mut self, steps: &'static [palaver_storage::ModuleMigration]) {
        self.regs.migrations.push((self.current, steps));
    }

    /// Export and import the module's part of an account's portable data
    /// (the children of a XEP-0227 `<user/>` it owns; see
    /// [`crate::account_data`]).
    pub fn account_data<T: crate::account_data::AccountData>(&mut self, part: T) {
        self.regs
            .account_data
            .push(crate::account_data::AccountDataPart::new(
                self.current,
                part,
            ));
    }

    /// Run a background task of the module once the server runs; it is
    /// cancelled when the module stops (at shutdown, or when a
    /// configuration reload disables or restarts the module). Its
    /// `ModuleCx` is the host's as it was when the task started: a reload
    /// that keeps the module keeps the task, so a task that must see a
    /// later configuration asks `cx.core()` for it.
    pub fn spawn_task<Fut>(&mut self, f: impl FnOnce(ModuleCx) -> Fut + Send + 'static)
    where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let task: TaskFn = Box::new(move |cx| Box::pin(f(cx)));
        self.tasks.push(task);
    }
}

/// XEP-0484 FAST tokens of a host (`mod_auth_fast`): issued after a
/// XEP-0388 authentication that asks for one, checked by the `HT-*`
/// mechanisms. The kernel never sees how they are stored.
pub trait FastTokens: Send + Sync {
    /// A new token for `user`'s client `agent` (XEP-0388 user-agent id),
    /// bound to the FAST `mechanism` the client named: `(token, expiry in
    /// ms since the epoch)`. The token the client used last stays valid
    /// until this one is used (rotation).
    fn issue(
        &self,
        cx: ModuleCx,
        user: String,
        agent: String,
        mechanism: String,
    ) -> BoxFuture<'static, Option<(String, i64)>>;

    /// Check an `HT-SHA-256-*` proof (`HMAC(token, "Initiator" || cb)`).
    fn verify(&self, cx: ModuleCx, attempt: FastAttempt) -> BoxFuture<'static, FastVerdict>;
}

/// One FAST authentication attempt (XEP-0484 §3.4).
#[derive(Debug, Clone)]
pub struct FastAttempt {
    /// The account (nodeprepped).
    pub user: String,
    /// The client's XEP-0388 user-agent id.
    pub agent: String,
    /// The `HT-SHA-256-*` mechanism used.
    pub mechanism: String,
    /// The client's `HMAC(token, "Initiator" || cb)`.
    pub proof: Vec<u8>,
    /// The channel-binding data of the mechanism on this connection
    /// (empty for `HT-SHA-256-NONE`).
    pub cb: Vec<u8>,
    /// The `<fast count='…'/>` replay counter, when given: it must be
    /// above every count already seen with this token.
    pub count: Option<u64>,
    /// `<fast invalidate='true'/>`: forget the token after this login.
    pub invalidate: bool,
}

/// What [`FastTokens::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastVerdict {
    /// The proof matches a valid token: the token (for the server's
    /// answer `HMAC(token, "Responder" || cb)`), and whether it is due
    /// for rotation (the server then issues a new one unprompted).
    Ok { token: String, rotate: bool },
    /// The proof matches a token that is no longer trusted (expired, or
    /// issued before a password change): `credentials-expired`.
    Expired,
    /// No token matches, the token is bound to another mechanism, or the
    /// count was replayed: `not-authorized`.
    Refused,
}

/// A feature module.
///
/// ```ignore
/// pub struct Ping;
/// impl Module for Ping {
///     const NAME: &'static str = "mod_ping";
///     type Options = NoOptions;
///     fn start(host: &mut HostSetup, _: NoOptions) -> Result<Self, String> {
///         host.add_feature(ns::PING);
///         host.on_iq_get(ns::PING, |_req| async { Ok(None) });
///         Ok(Ping)
///     }
/// }
/// pub const MODULE: ModuleDef = ModuleDef::of::<Ping>();
/// ```
pub trait Module: Send + Sync + Sized + 'static {
    /// Name in the config (`mod_ping`).
    const NAME: &'static str;
    /// Options, read from the module's config entry (`{}` or absent:
    /// defaults). Use `#[serde(deny_unknown_fields, default)]`.
    type Options: DeserializeOwned + Default;
    /// Register on a host. `Err` names the bad option.
    fn start(host: &mut HostSetup, opts: Self::Options) -> Result<Self, String>;
    /// The module stops (the server is stopping, or a configuration reload
    /// disabled the module or changed its options, when a new instance has
    /// taken its place already): release what it holds. Its background
    /// tasks are cancelled by the kernel after this.
    fn stop(&self, _cx: &ModuleCx) {}
}

/// A started module, as the kernel keeps it.
pub(crate) trait RunningModule: Send + Sync {
    fn stop(&self, cx: &ModuleCx);
}

impl<M: Module> RunningModule for M {
    fn stop(&self, cx: &ModuleCx) {
        Module::stop(self, cx)
    }
}

/// Options of a module that has none: only `{}` (or nothing) is accepted.
#[derive(serde::Deserialize, Default, Debug, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// Parse a module's options into its serde struct (`null` means defaults).
pub fn parse_options<T: DeserializeOwned + Default>(v: &serde_json::Value) -> Result<T, String> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

fn start_module<M: Module>(setup: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    let opts: M::Options = parse_options(opts)?;
    let m = M::start(setup, opts)?;
    setup.add_instance(Box::new(m));
    Ok(())
}

/// A module as the registry lists it: its name and how to start it.
#[derive(Clone, Copy)]
pub struct ModuleDef {
    /// Config name, e.g. `mod_ping`.
    pub name: &'static str,
    start: fn(&mut HostSetup, &serde_json::Value) -> Result<(), String>,
}

impl ModuleDef {
    /// The definition of module type `M`.
    pub const fn of<M: Module>() -> ModuleDef {
        ModuleDef {
            name: M::NAME,
            start: start_module::<M>,
        }
    }

    /// Parse the options and register on a host; `Err` names the bad option.
    pub(crate) fn start(
        &self,
        setup: &mut HostSetup,
        opts: &serde_json::Value,
    ) -> Result<(), String> {
        (self.start)(setup, opts)
    }
}

/// What a module acts through at run time: the router, the session
/// registry (queries), storage, configuration, and tasks that hold the
/// current stanza's acknowledgement ticket. Cheap to clone.
#[derive(Clone)]
pub struct ModuleCx {
    pub(crate) core: Arc<Core>,
    pub(crate) host: Arc<Host>,
}

impl ModuleCx {
    /// The virtual host this context belongs to.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The server core (for the command layer, which runs over it).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Connected external components (XEP-0114) under this host's domain.
    pub fn components(&self) -> Vec<String> {
        self.core.routes.externals_under(&self.host.name)
    }

    /// Route a stanza (the only way a stanza reaches anyone).
    pub fn route(&self, st: Stanza) {
        self.core.route(st)
    }

    /// Route `st` once the work already queued for its recipient's account
    /// has run (see [`crate::serial`]), when that account is local: a
    /// stanza that must not overtake a subscription change routed just
    /// before it (the contact's presence after `subscribed`, RFC 6121
    /// §3.1.5). To anyone else it is routed at once: a server-to-server
    /// stream keeps the order itself. It holds the current stanza's ticket.
    pub fn route_after_account(&self, st: Stanza) {
        let key = match st.to.as_ref() {
            Some(to) if to.node().is_some() && self.is_local(to.domain().as_str()) => {
                to.to_bare().to_string()
            }
            _ => return self.route(st),
        };
        let core = self.core.clone();
        let job = crate::ack::with_ticket(self.ticket(), async move { core.route(st) });
        self.core.serial.run_or_spawn(&key, job, "a routed stanza");
    }

    /// Deliver `st` to the session bound as `session`, whatever the
    /// stanza's own `to` (e.g. a subscription request addressed to the bare
    /// JID, handed to each available resource). Nothing happens when no such
    /// session is bound.
    pub fn deliver_to(&self, session: &jid::FullJid, st: Stanza) {
        self.core.deliver_to(session, st)
    }

    /// Deliver a stanza addressed to a local full JID now if the session's
    /// queue has room; otherwise it comes back (nothing is bounced).
    pub fn try_deliver(&self, st: Stanza) -> Result<(), crate::router::local::Undelivered> {
        self.core.try_deliver(st)
    }

    /// Deliver a stanza addressed to a local full JID, waiting (bounded) for
    /// room in the session's queue instead of bouncing when it is full. `Err`
    /// gives the stanza back when no such session exists or it stays full.
    pub async fn deliver_waiting(&self, st: Stanza) -> Result<(), Stanza> {
        self.core.deliver_waiting(st).await
    }

    /// Reply to `st` with an error (never to an error).
    pub fn bounce(&self, st: &Stanza, cond: Condition, error_from: Option<jid::Jid>) {
        self.core.bounce(st, cond, error_from)
    }

    /// Reply to `st` with a specific error (never to an error).
    pub fn bounce_with(&self, st: &Stanza, err: StanzaError, error_from: Option<jid::Jid>) {
        self.core.bounce_with(st, err, error_from)
    }

    /// The session registry (who is online, with which priority and presence).
    pub fn sessions(&self) -> &dyn crate::sessions::SessionRegistry {
        self.core.sessions()
    }

    /// Storage.
    pub fn storage(&self) -> &palaver_storage::Storage {
        &self.core.storage
    }

    /// Configuration (as it was when this context's host was built: a
    /// configuration reload builds every host again).
    pub fn config(&self) -> &crate::config::Config {
        &self.host.config
    }

    /// Password checks and credential cache.
    pub fn auth(&self) -> &crate::auth::Authenticator {
        &self.core.auth
    }

    /// Whether `domain` is a virtual host served here.
    pub fn is_local(&self, domain: &str) -> bool {
        self.core.is_local(domain)
    }

    /// When the server started.
    pub fn started(&self) -> std::time::Instant {
        self.core.started
    }

    /// Addresses of the HTTP listeners (once they are bound).
    pub fn http_addrs(&self) -> &[std::net::SocketAddr] {
        self.core.http_addrs.get().map_or(&[], |v| v.as_slice())
    }

    /// A receiver that becomes `true` when the server shuts down.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.core.shutdown.clone()
    }

    /// A ticket for the client stanza being handled, if any: keep it while
    /// work for that stanza is pending elsewhere (XEP-0198 `<a/>` waits).
    pub fn ticket(&self) -> Option<crate::ack::Ticket> {
        crate::ack::current()
    }

    /// Spawn work for the stanza being handled: it holds that stanza's
    /// ticket until it finishes, and work it routes or spawns in turn does too.
    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let ticket = crate::ack::current();
        tokio::spawn(crate::ack::with_ticket(ticket, fut));
    }

    /// Run a synchronous hook chain of this host in the name of `session`.
    pub fn run_hook<H: SyncHook>(
        &self,
        session: Option<&jid::FullJid>,
        arg: &mut H::Arg,
    ) -> HookAction {
        let hcx = HookCx { cx: self, session };
        self.host.regs.hooks.run::<H>(&hcx, arg)
    }

    /// Run an asynchronous hook chain of this host.
    pub fn run_hook_async<H: AsyncHook>(
        &self,
        arg: H::Arg,
    ) -> impl std::future::Future<Output = HookAction> + Send + 'static {
        self.host.regs.hooks.run_async::<H>(self, arg)
    }

    /// Remove an account and every module's data about it; its sessions end.
    pub async fn remove_user(&self, host: &str, user: &str) -> palaver_storage::Result<()> {
        self.core.remove_user(host, user).await
    }
}
