//! Hook points: named, typed places in the stanza flow where modules act.
//!
//! A hook point is a type declared once (below, or in any crate):
//!
//! ```ignore
//! pub struct UserSend;
//! impl SyncHook for UserSend {
//!     const NAME: &'static str = "user_send_packet";
//!     type Arg = Stanza;
//! }
//! ```
//!
//! Modules register handlers with a priority on a host
//! ([`HostSetup::hook`](crate::module::HostSetup::hook) /
//! [`hook_async`](crate::module::HostSetup::hook_async)); handlers run from
//! the highest priority down, and one returning [`HookAction::Drop`] stops the
//! chain (the stanza was taken, answered or dropped by that module).
//!
//! - **Synchronous** points ([`SyncHook`]) run on the hot path, inside the
//!   task that handles the stanza; a handler gets `&mut Arg` and must not
//!   block. The session in whose name it runs is [`HookCx::session`].
//! - **Asynchronous** points ([`AsyncHook`]) run handlers that may await
//!   (storage). When the kernel runs such a chain on behalf of a client's
//!   stanza — awaited in the session, or in a task of its own — the chain
//!   holds that stanza's XEP-0198 ticket ([`crate::ack`]): the client's
//!   `<a/>` counts the stanza only once every handler has finished, so a
//!   module's write is committed before it is acknowledged.
//!
//! Adding a hook point is one declaration; the registry is keyed by type.

use crate::module::ModuleCx;
use futures_util::future::BoxFuture;
use jid::FullJid;
use palaver_proto::stanza::Stanza;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// What a hook handler decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// Let the stanza (or event) go on to the next handler and the kernel.
    Continue,
    /// Stop: this handler consumed, answered or dropped it.
    Drop,
}

/// A synchronous hook point (hot path: no awaiting).
pub trait SyncHook: 'static {
    /// Name, for logs and documentation (ejabberd's hook name where one exists).
    const NAME: &'static str;
    /// What handlers receive, mutably.
    type Arg: 'static;
}

/// An asynchronous hook point (handlers may await; the chain holds the
/// triggering stanza's acknowledgement ticket).
pub trait AsyncHook: 'static {
    /// Name, for logs and documentation.
    const NAME: &'static str;
    /// What handlers receive (each handler gets its own clone).
    type Arg: Clone + Send + Sync + 'static;
}

/// Context of a synchronous handler: the server and host it runs on, and
/// the local session in whose name it runs, if any.
pub struct HookCx<'a> {
    pub(crate) cx: &'a ModuleCx,
    pub(crate) session: Option<&'a FullJid>,
}

impl<'a> HookCx<'a> {
    /// The module context (route, sessions, storage, config…).
    pub fn cx(&self) -> &'a ModuleCx {
        self.cx
    }

    /// The local session sending or receiving the stanza (user send/receive hooks).
    pub fn session(&self) -> Option<&'a FullJid> {
        self.session
    }
}

impl std::ops::Deref for HookCx<'_> {
    type Target = ModuleCx;
    fn deref(&self) -> &ModuleCx {
        self.cx
    }
}

type SyncHandler<A> = Arc<dyn Fn(&HookCx<'_>, &mut A) -> HookAction + Send + Sync>;
type AsyncHandler<A> = Arc<dyn Fn(ModuleCx, A) -> BoxFuture<'static, HookAction> + Send + Sync>;

#[derive(Clone)]
struct Chain<F> {
    handlers: Vec<(i32, F)>,
}

/// Every handler registered on one host, by hook point, sorted by priority.
/// Each entry holds an `Arc<Chain<handler type of that point>>`.
#[derive(Default)]
pub struct Hooks {
    chains: HashMap<TypeId, Box<dyn AnyChain>>,
    names: Vec<(&'static str, i32, String)>,
}

/// A chain of some handler type, with what merging hosts' registrations
/// needs without knowing that type.
trait AnyChain: Any + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Append every handler of this chain to `into`'s chain `id`.
    fn append_to(&self, into: &mut Hooks, id: TypeId);
}

impl<F: Clone + Send + Sync + 'static> AnyChain for Arc<Chain<F>> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn append_to(&self, into: &mut Hooks, id: TypeId) {
        for (p, f) in &self.handlers {
            into.push(id, *p, f.clone());
        }
    }
}

impl Hooks {
    fn push<F: Clone + Send + Sync + 'static>(&mut self, id: TypeId, priority: i32, f: F) {
        let entry = self
            .chains
            .entry(id)
            .or_insert_with(|| Box::new(Arc::new(Chain::<F> { handlers: vec![] })));
        match entry.as_any_mut().downcast_mut::<Arc<Chain<F>>>() {
            Some(arc) => {
                // Registration happens before the host is shared: no copy is made.
                let chain = Arc::make_mut(arc);
                chain.handlers.push((priority, f));
                // Stable: equal priorities keep their registration order.
                chain.handlers.sort_by_key(|(p, _)| -*p);
            }
            // A hook point type always has the same handler type.
            None => {
                *entry = Box::new(Arc::new(Chain::<F> {
                    handlers: vec![(priority, f)],
                }))
            }
        }
    }

    /// Add every handler of `other` (another module's registrations) after
    /// this one's: the result is what registering both in that order gives.
    pub(crate) fn merge(&mut self, other: &Hooks) {
        // Each chain is appended after this one's handlers of the same
        // point, so equal priorities keep module order.
        for (id, chain) in &other.chains {
            chain.append_to(self, *id);
        }
        self.names.extend(other.names.iter().cloned());
    }

    /// Register a handler of a synchronous hook point.
    pub(crate) fn add_sync<H: SyncHook>(
        &mut self,
        module: &str,
        priority: i32,
        f: SyncHandler<H::Arg>,
    ) {
        self.names.push((H::NAME, priority, module.to_string()));
        self.push(TypeId::of::<H>(), priority, f);
    }

    /// Register a handler of an asynchronous hook point.
    pub(crate) fn add_async<H: AsyncHook>(
        &mut self,
        module: &str,
        priority: i32,
        f: AsyncHandler<H::Arg>,
    ) {
        self.names.push((H::NAME, priority, module.to_string()));
        self.push(TypeId::of::<H>(), priority, f);
    }

    fn sync_chain<H: SyncHook>(&self) -> Option<&Chain<SyncHandler<H::Arg>>> {
        self.chains
            .get(&TypeId::of::<H>())
            .and_then(|c| c.as_any().downcast_ref::<Arc<Chain<SyncHandler<H::Arg>>>>())
            .map(|a| &**a)
    }

    fn async_chain<H: AsyncHook>(&self) -> Option<Arc<Chain<AsyncHandler<H::Arg>>>> {
        self.chains
            .get(&TypeId::of::<H>())
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<Arc<Chain<AsyncHandler<H::Arg>>>>()
            })
            .cloned()
    }

    /// Whether any handler is registered for `H`.
    pub fn has<H: 'static>(&self) -> bool {
        self.chains.contains_key(&TypeId::of::<H>())
    }

    /// Run a synchronous chain.
    pub fn run<H: SyncHook>(&self, cx: &HookCx<'_>, arg: &mut H::Arg) -> HookAction {
        if let Some(chain) = self.sync_chain::<H>() {
            for (_, h) in &chain.handlers {
                if h(cx, arg) == HookAction::Drop {
                    return HookAction::Drop;
                }
            }
        }
        HookAction::Continue
    }

    /// Run an asynchronous chain to its end (or the first `Drop`).
    pub fn run_async<H: AsyncHook>(
        &self,
        cx: &ModuleCx,
        arg: H::Arg,
    ) -> impl std::future::Future<Output = HookAction> + Send + 'static {
        let chain = self.async_chain::<H>();
        let cx = cx.clone();
        async move {
            let Some(chain) = chain else {
                return HookAction::Continue;
            };
            for (_, h) in &chain.handlers {
                if h(cx.clone(), arg.clone()).await == HookAction::Drop {
                    return HookAction::Drop;
                }
            }
            HookAction::Continue
        }
    }

    /// `(hook point, priority, module)` of every registration, for
    /// diagnostics and documentation.
    pub fn registrations(&self) -> &[(&'static str, i32, String)] {
        &self.names
    }
}

macro_rules! sync_hook {
    ($(#[$m:meta])* $name:ident, $hook:literal, $arg:ty) => {
        $(#[$m])*
        pub struct $name;
        impl SyncHook for $name {
            const NAME: &'static str = $hook;
            type Arg = $arg;
        }
    };
}

macro_rules! async_hook {
    ($(#[$m:meta])* $name:ident, $hook:literal, $arg:ty) => {
        $(#[$m])*
        pub struct $name;
        impl AsyncHook for $name {
            const NAME: &'static str = $hook;
            type Arg = $arg;
        }
    };
}

sync_hook!(
    /// Every stanza a local session sends, before it is routed (the session
    /// is [`HookCx::session`]); `Drop` stops it (the module answered it).
    UserSend,
    "user_send_packet",
    Stanza
);
sync_hook!(
    /// Every stanza about to be written to a local session (the session is
    /// [`HookCx::session`]); `Drop` keeps it from the client.
    UserReceive,
    "user_receive_packet",
    Stanza
);
sync_hook!(
    /// A message addressed to a user of a local host (bare or full JID), as
    /// the router takes it — before any delivery decision (a session, the
    /// offline hooks, an error), whatever its origin (a local session, a
    /// service, a remote server, a stanza routed again after its session
    /// ended). Runs inside the routing task (`ModuleCx::spawn` holds the
    /// sender's ticket); `Drop` stops the message. For modules that stamp
    /// or record every message an account receives (an archive adding
    /// XEP-0359 stanza-ids).
    MessageIn,
    "message_to_user",
    Stanza
);
sync_hook!(
    /// XEP-0198: a session lost its connection and now waits, detached, to
    /// be resumed, with stanzas its client had not acknowledged (they may
    /// never have reached the device). The session is
    /// [`HookCx::session`], already marked detached. For a push module
    /// that wakes the device (ejabberd's `c2s_session_pending`).
    SessionPending,
    "c2s_session_pending",
    PendingStanzas
);
sync_hook!(
    /// An IQ result or error addressed to a local host or to a user's bare
    /// JID: the answer to a request a module sent in that name (a push
    /// notification, a ping). Without a handler it is dropped, as before.
    IqResponse,
    "iq_response",
    Stanza
);
sync_hook!(
    /// A client stream was opened (and again after STARTTLS and SASL) from
    /// `ip`, before anything else is done on it: a module that refuses the
    /// address sets [`StreamOpen::refuse`] (the stream ends with
    /// `policy-violation` and that text).
    StreamOpened,
    "c2s_stream_started",
    StreamOpen
);
sync_hook!(
    /// A login failed with wrong credentials (`not-authorized`).
    AuthFailed,
    "c2s_auth_result",
    AuthFailure
);

sync_hook!(
    /// XEP-0352: the client of a session ([`HookCx::session`]) says it is
    /// `<active/>` or `<inactive/>`. Without a handler the kernel refuses
    /// both (`unsupported-stanza-type`); a handler accepts by setting
    /// [`ClientState::accepted`] and, going inactive, the most stanzas the
    /// session may hold back ([`ClientState::max_held`]).
    ClientStateChanged,
    "csi_activity",
    ClientState
);
sync_hook!(
    /// XEP-0352: a stanza about to be written to a session whose client is
    /// inactive (after the user-receive hooks). A handler sets
    /// [`HeldStanza::hold`] to keep it back: the session keeps it, in order,
    /// and writes every held stanza before the next one that is not held
    /// (or when the client becomes active, or more than
    /// [`ClientState::max_held`] wait). A held stanza with a `key` replaces
    /// the held one with the same key (the latest presence of a contact).
    /// Held stanzas are never lost: a session that ends or detaches treats
    /// them as written and unacknowledged (resent on resumption, routed to
    /// the account again otherwise).
    CsiFilter,
    "csi_filter_stanza",
    HeldStanza
);

sync_hook!(
    /// XEP-0386 Bind 2: a resource was just bound inside a XEP-0388
    /// authentication; the client's inline requests in other namespaces
    /// (`<enable xmlns='urn:xmpp:carbons:2'/>`…) are offered to the modules
    /// that advertised them with `HostSetup::add_bind2_feature`. A handler
    /// acts on its own namespace and may add elements to the `<bound/>`
    /// answer. (XEP-0198 `<enable/>` is the kernel's own.)
    Bind2Inline,
    "bind2_inline",
    Bind2Request
);

/// The inline part of a Bind 2 request ([`Bind2Inline`]).
#[derive(Clone, Debug, Default)]
pub struct Bind2Request {
    /// The client's `<bind/>` children other than `<tag/>`.
    pub requests: Vec<minidom::Element>,
    /// Elements for the `<bound/>` answer.
    pub results: Vec<minidom::Element>,
}

/// A client's XEP-0352 state change ([`ClientStateChanged`]).
#[derive(Clone, Debug)]
pub struct ClientState {
    /// `<active/>` (or `<inactive/>`).
    pub active: bool,
    /// Set by the module that implements XEP-0352.
    pub accepted: bool,
    /// While inactive, the most stanzas held back before all are written.
    pub max_held: usize,
}

/// What a detached session had not had acknowledged ([`SessionPending`]).
#[derive(Clone, Debug)]
pub struct PendingStanzas {
    /// Copies of the unacknowledged stanzas, oldest first (changes are
    /// ignored).
    pub unacked: Vec<Stanza>,
}

/// A stanza for an inactive client ([`CsiFilter`]).
#[derive(Clone, Debug)]
pub struct HeldStanza {
    /// The stanza (read-only for the decision; changes are ignored).
    pub stanza: Stanza,
    /// `None`: write it (after what is held). `Some(key)`: hold it; a
    /// non-empty key replaces a held stanza with the same key.
    pub hold: Option<String>,
}

/// A client stream being opened ([`StreamOpened`]).
#[derive(Clone, Debug)]
pub struct StreamOpen {
    /// The client's address.
    pub ip: std::net::IpAddr,
    /// Set by a module to refuse the stream, with the reason.
    pub refuse: Option<String>,
}

/// A failed login ([`AuthFailed`]).
#[derive(Clone, Debug)]
pub struct AuthFailure {
    /// The client's address.
    pub ip: std::net::IpAddr,
    /// The user name it tried (as given).
    pub user: String,
    /// The host of the stream.
    pub host: String,
    /// How long to wait before answering the failure (a handler sets it:
    /// a delay growing with the address's failures slows password guessing).
    pub delay: std::time::Duration,
}

async_hook!(
    /// A message for an existing local account with no available resource,
    /// in arrival order per account. A module that takes it (stores it, or
    /// answers it) returns `Drop`; the sender's acknowledgement waits for the
    /// chain. Without a taker the router answers `service-unavailable`.
    OfflineMessage,
    "offline_message_hook",
    Stanza
);
async_hook!(
    /// A stanza a local session sent, after the synchronous hooks and while
    /// it is routed: for modules that must write it somewhere (an archive)
    /// before the client's `<a/>` counts it. Runs holding the stanza's
    /// ticket, in the order the account sent its stanzas.
    UserSent,
    "user_sent_async",
    SentStanza
);
async_hook!(
    /// Presence of type subscribe, subscribed, unsubscribe, unsubscribed or
    /// probe addressed to a local bare JID (RFC 6121 §3, §4.3).
    PresenceIn,
    "s2s_receive_presence",
    Stanza
);
async_hook!(
    /// Subscription presence a local user sends, before it is routed; a
    /// handler returning `Drop` routed it itself.
    SubscriptionOut,
    "roster_out_subscription",
    Stanza
);
async_hook!(
    /// A message addressed to a host itself (any resource).
    HostMessage,
    "local_send_to_resource_hook",
    Stanza
);
async_hook!(
    /// A local session's broadcast presence: initial, update or unavailable.
    /// Runs in the broadcasting session's task: never wait for room in that
    /// session's own queue (it cannot drain meanwhile).
    PresenceOut,
    "user_presence_broadcast",
    PresenceBroadcast
);
async_hook!(
    /// A resource was bound (before any stanza is exchanged).
    SessionBound,
    "sm_register_connection_hook",
    FullJid
);
async_hook!(
    /// A session ended (after it left the session table).
    SessionClosed,
    "sm_remove_connection_hook",
    FullJid
);
async_hook!(
    /// An element was stored in a user's private XML storage (XEP-0049) at
    /// the user's request; modules keeping another copy of it follow (e.g.
    /// XEP-0048 bookmarks mirrored into XEP-0402 PEP items, XEP-0411).
    PrivateStored,
    "private_set",
    PrivateXml
);
async_hook!(
    /// An account was removed: delete the module's data about it.
    RemoveUser,
    "remove_user",
    Account
);

/// A stanza a local session sent ([`UserSent`]).
#[derive(Clone, Debug)]
pub struct SentStanza {
    /// The sending session.
    pub session: FullJid,
    /// The stanza as routed.
    pub stanza: Stanza,
}

/// An element stored in private XML storage ([`PrivateStored`]).
#[derive(Clone, Debug)]
pub struct PrivateXml {
    /// Whose storage.
    pub account: Account,
    /// The stored element.
    pub element: minidom::Element,
}

/// A presence broadcast ([`PresenceOut`]).
#[derive(Clone, Debug)]
pub struct PresenceBroadcast {
    /// The broadcasting session.
    pub session: FullJid,
    /// The presence as broadcast.
    pub stanza: Stanza,
    /// Initial, update or unavailable.
    pub event: crate::module::PresenceEvent,
}

/// An account of a local host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Host.
    pub host: String,
    /// Local part.
    pub user: String,
}

impl Account {
    /// An account of `host`.
    pub fn new(host: impl Into<String>, user: impl Into<String>) -> Self {
        Account {
            host: host.into(),
            user: user.into(),
        }
    }

    /// `user@host`.
    pub fn jid(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> SyncHandler<Stanza> {
        Arc::new(|_, _| HookAction::Continue)
    }

    /// Merging modules' hooks gives the chain registering them in that
    /// order gives: by priority, equal priorities in module order.
    #[test]
    fn merge_keeps_priority_then_module_order() {
        let (a5, a1, b5, b10) = (handler(), handler(), handler(), handler());
        let mut a = Hooks::default();
        a.add_sync::<UserSend>("mod_a", 5, a5.clone());
        a.add_sync::<UserSend>("mod_a", 1, a1.clone());
        let mut b = Hooks::default();
        b.add_sync::<UserSend>("mod_b", 5, b5.clone());
        b.add_sync::<UserSend>("mod_b", 10, b10.clone());
        b.add_async::<SessionBound>(
            "mod_b",
            0,
            Arc::new(|_, _| Box::pin(async { HookAction::Continue })),
        );
        let mut merged = Hooks::default();
        merged.merge(&a);
        merged.merge(&b);
        let chain = merged.sync_chain::<UserSend>().expect("chain");
        let order: Vec<i32> = chain.handlers.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, [10, 5, 5, 1]);
        let expected = [&b10, &a5, &b5, &a1];
        for ((_, got), want) in chain.handlers.iter().zip(expected) {
            assert!(Arc::ptr_eq(got, want));
        }
        assert!(merged.has::<SessionBound>());
        assert!(!a.has::<SessionBound>());
        assert_eq!(merged.registrations().len(), 5);
    }
}
