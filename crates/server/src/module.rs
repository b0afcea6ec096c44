//! The module API: what a feature module registers on a virtual host.
//!
//! A module is a function that receives a [`HostSetup`] and its options,
//! and registers declaratively: disco features and identities, IQ handlers
//! by namespace, hooks with priorities, stream features. Modules never
//! import each other; disco, the router and account removal find their
//! registrations here.

use crate::core::Core;
use futures_util::future::BoxFuture;
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::stanza::Stanza;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// Result of an IQ handler: a result payload (or none), or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// An IQ request delivered to a handler.
pub struct IqRequest {
    /// The request stanza (`from` stamped, `to` set).
    pub stanza: Stanza,
    /// The server core (router, storage, hosts).
    pub core: Arc<Core>,
    /// The virtual host the request was addressed to.
    pub host: Arc<crate::host::Host>,
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

/// What a stanza hook decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// Let the stanza go on.
    Continue,
    /// Stop: the hook consumed or dropped the stanza.
    Drop,
}

/// Context a stanza hook runs in.
pub struct HookCtx<'a> {
    /// Server core.
    pub core: &'a Arc<Core>,
    /// The session's full JID.
    pub session_jid: &'a jid::FullJid,
}

/// A synchronous stanza hook (hot path: no storage, no awaiting).
pub type StanzaHook = Arc<dyn Fn(&HookCtx<'_>, &mut Stanza) -> HookAction + Send + Sync>;
/// Called for a message that found no available resource; returns `true` when it took the message.
pub type OfflineHook = Arc<dyn Fn(Arc<Core>, Stanza) -> BoxFuture<'static, bool> + Send + Sync>;
/// Called when an account is removed, to delete the module's data.
pub type RemoveUserHook =
    Arc<dyn Fn(Arc<Core>, String, String) -> BoxFuture<'static, ()> + Send + Sync>;
/// Adds elements to c2s stream features.
pub type FeatureHook = Arc<dyn Fn(&crate::host::Host) -> Vec<Element> + Send + Sync>;
/// An async stanza hook: returns `true` when it took the stanza.
pub type AsyncStanzaHook = Arc<dyn Fn(Arc<Core>, Stanza) -> BoxFuture<'static, bool> + Send + Sync>;
/// A presence broadcast by a local session (initial, update or unavailable).
pub type PresenceOutHook = Arc<
    dyn Fn(Arc<Core>, jid::FullJid, Stanza, PresenceEvent) -> BoxFuture<'static, ()> + Send + Sync,
>;
/// A session event (bound, closed).
pub type SessionHook = Arc<dyn Fn(Arc<Core>, jid::FullJid) -> BoxFuture<'static, ()> + Send + Sync>;
/// An IQ before authentication (in-band registration).
pub type PreAuthIqHook = Arc<dyn Fn(PreAuthIq) -> BoxFuture<'static, IqResult> + Send + Sync>;

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

/// Everything the enabled modules registered on one host, sorted by priority.
#[derive(Default, Clone)]
pub struct Registrations {
    pub(crate) features: Vec<String>,
    pub(crate) identities: Vec<Identity>,
    pub(crate) iq: HashMap<(IqScope, IqType, String), IqHandler>,
    pub(crate) user_send: Vec<(i32, StanzaHook)>,
    pub(crate) user_receive: Vec<(i32, StanzaHook)>,
    pub(crate) offline: Vec<(i32, OfflineHook)>,
    pub(crate) remove_user: Vec<(i32, RemoveUserHook)>,
    pub(crate) stream_features: Vec<FeatureHook>,
    pub(crate) pre_auth_features: Vec<FeatureHook>,
    pub(crate) pre_auth_iq: HashMap<String, PreAuthIqHook>,
    pub(crate) presence_in: Vec<(i32, AsyncStanzaHook)>,
    pub(crate) subscription_out: Vec<(i32, AsyncStanzaHook)>,
    pub(crate) host_message: Vec<(i32, AsyncStanzaHook)>,
    pub(crate) presence_out: Vec<(i32, PresenceOutHook)>,
    pub(crate) session_bound: Vec<(i32, SessionHook)>,
    pub(crate) session_closed: Vec<(i32, SessionHook)>,
    pub(crate) modules: Vec<String>,
    /// Service subdomains (upload.example.org…) and their IQ handlers.
    pub(crate) services: Vec<String>,
    pub(crate) service_iq: HashMap<(String, IqType, String), IqHandler>,
    /// XEP-0198 settings when stream management is offered.
    pub(crate) stream_mgmt: Option<crate::c2s::StreamMgmtConfig>,
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

/// Registration surface handed to each module when a host starts.
pub struct HostSetup {
    host: String,
    config: crate::config::Config,
    regs: Registrations,
    current: String,
}

impl HostSetup {
    pub(crate) fn new(host: &str, config: &crate::config::Config) -> Self {
        HostSetup {
            host: host.to_string(),
            config: config.clone(),
            regs: Registrations::default(),
            current: String::new(),
        }
    }

    pub(crate) fn begin_module(&mut self, name: &str) {
        self.current = name.to_string();
        self.regs.modules.push(name.to_string());
    }

    pub(crate) fn finish(mut self) -> Registrations {
        self.regs.features.sort();
        self.regs.features.dedup();
        self.regs.identities.sort();
        self.regs.identities.dedup();
        self.regs.user_send.sort_by_key(|(p, _)| -*p);
        self.regs.user_receive.sort_by_key(|(p, _)| -*p);
        self.regs.offline.sort_by_key(|(p, _)| -*p);
        self.regs.remove_user.sort_by_key(|(p, _)| -*p);
        self.regs.presence_in.sort_by_key(|(p, _)| -*p);
        self.regs.subscription_out.sort_by_key(|(p, _)| -*p);
        self.regs.host_message.sort_by_key(|(p, _)| -*p);
        self.regs.presence_out.sort_by_key(|(p, _)| -*p);
        self.regs.session_bound.sort_by_key(|(p, _)| -*p);
        self.regs.session_closed.sort_by_key(|(p, _)| -*p);
        self.regs
    }

    /// The server configuration (ACLs, access rules…).
    pub fn config(&self) -> &crate::config::Config {
        &self.config
    }

    /// The host being set up.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Advertise a disco feature.
    pub fn add_feature(&mut self, var: &str) {
        self.regs.features.push(var.to_string());
    }

    /// Advertise a disco identity.
    pub fn add_identity(&mut self, category: &str, kind: &str, name: Option<&str>) {
        self.regs.identities.push(Identity {
            category: category.into(),
            kind: kind.into(),
            name: name.map(Into::into),
        });
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

    /// Hook every stanza a local user sends (before routing). Higher priority runs first.
    pub fn hook_user_send(&mut self, priority: i32, f: StanzaHook) {
        self.regs.user_send.push((priority, f));
    }

    /// Hook every stanza delivered to a local session (before it is written).
    pub fn hook_user_receive(&mut self, priority: i32, f: StanzaHook) {
        self.regs.user_receive.push((priority, f));
    }

    /// Hook messages to users with no available resource.
    pub fn hook_offline_message(&mut self, priority: i32, f: OfflineHook) {
        self.regs.offline.push((priority, f));
    }

    /// Hook account removal, to delete the module's data.
    pub fn hook_remove_user(&mut self, priority: i32, f: RemoveUserHook) {
        self.regs.remove_user.push((priority, f));
    }

    /// Offer XEP-0198 stream management (acknowledgements) on c2s streams.
    pub fn enable_stream_mgmt(&mut self, cfg: crate::c2s::StreamMgmtConfig) {
        self.regs.stream_mgmt = Some(cfg);
    }

    /// Add c2s stream features (offered after authentication).
    pub fn add_stream_features(&mut self, f: FeatureHook) {
        self.regs.stream_features.push(f);
    }

    /// Serve a subdomain (e.g. `upload.example.org`) with IQ handlers.
    pub fn add_service(&mut self, domain: &str) {
        if !self.regs.services.iter().any(|d| d == domain) {
            self.regs.services.push(domain.to_string());
        }
    }

    /// Handle IQs of `kind` in namespace `ns` addressed to service `domain`.
    pub fn on_service_iq<F, Fut>(&mut self, domain: &str, kind: IqType, ns: &str, f: F)
    where
        F: Fn(IqRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = IqResult> + Send + 'static,
    {
        self.add_service(domain);
        let h: IqHandler = Arc::new(move |req| Box::pin(f(req)));
        self.regs
            .service_iq
            .insert((domain.to_string(), kind, ns.to_string()), h);
    }

    /// Add c2s stream features offered before authentication.
    pub fn add_pre_auth_stream_features(&mut self, f: FeatureHook) {
        self.regs.pre_auth_features.push(f);
    }

    /// Handle IQs in namespace `ns` sent before authentication (e.g. XEP-0077).
    pub fn on_pre_auth_iq(&mut self, ns: &str, f: PreAuthIqHook) {
        self.regs.pre_auth_iq.insert(ns.to_string(), f);
    }

    /// Hook inbound presence to a local bare JID of type subscribe, subscribed,
    /// unsubscribe, unsubscribed or probe.
    pub fn hook_presence_in(&mut self, priority: i32, f: AsyncStanzaHook) {
        self.regs.presence_in.push((priority, f));
    }

    /// Hook subscription presence a local user sends (before it is routed);
    /// a hook returning `true` routes it itself.
    pub fn hook_subscription_out(&mut self, priority: i32, f: AsyncStanzaHook) {
        self.regs.subscription_out.push((priority, f));
    }

    /// Hook messages addressed to the host itself (any resource).
    pub fn hook_host_message(&mut self, priority: i32, f: AsyncStanzaHook) {
        self.regs.host_message.push((priority, f));
    }

    /// Hook presence broadcasts of local sessions.
    ///
    /// These hooks run inside the broadcasting session's own task: a hook
    /// must never wait for room in that session's queue (it cannot drain
    /// while the hook runs); hand long work to a spawned task instead.
    pub fn hook_presence_out(&mut self, priority: i32, f: PresenceOutHook) {
        self.regs.presence_out.push((priority, f));
    }

    /// Hook a resource being bound (before any stanza is exchanged).
    pub fn hook_session_bound(&mut self, priority: i32, f: SessionHook) {
        self.regs.session_bound.push((priority, f));
    }

    /// Hook a session ending (after it left the session table).
    pub fn hook_session_closed(&mut self, priority: i32, f: SessionHook) {
        self.regs.session_closed.push((priority, f));
    }
}

/// Parse a module's options into its serde struct (`null` means defaults).
pub fn parse_options<T: DeserializeOwned + Default>(v: &serde_json::Value) -> Result<T, String> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

/// A module: its name and the function that registers it on a host.
#[derive(Clone, Copy)]
pub struct ModuleDef {
    /// Config name, e.g. `mod_ping`.
    pub name: &'static str,
    /// Register on a host with the given options; `Err` names the bad option.
    pub start: fn(&mut HostSetup, &serde_json::Value) -> Result<(), String>,
}
