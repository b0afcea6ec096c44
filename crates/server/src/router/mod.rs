//! The router: every stanza, from whatever door it came in by, is delivered
//! by [`Core::route`]. The routing table maps a domain to its destination:
//!
//! - a **virtual host** served here: its users' sessions and the server
//!   entity, by the RFC 6121 §8.5 rules in [`local`];
//! - a **service** subdomain of a module (upload, and later MUC, PubSub…),
//!   which gets every stanza kind addressed to it, with the full `to`;
//! - an **external** destination ([`StanzaSink`]): the slot for external
//!   components (XEP-0114) and, for domains in no entry, the remote-server
//!   fallback (s2s). A session on another cluster node is reached through
//!   the session registry ([`crate::sm`]), not through this table.
//!
//! The router is the only way a stanza reaches a session, for modules and
//! for the kernel alike. It never blocks: slow paths (storage, IQ handlers,
//! async hooks) run in tasks that hold the stanza's acknowledgement ticket.

pub mod local;

use crate::core::Core;
use crate::host::Host;
use crate::module::{IqHandler, IqRequest, IqScope, IqType};
use jid::Jid;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::stanza::{Stanza, StanzaKind};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A destination that takes stanzas for a whole domain (an external
/// component, a remote server's connection, a cluster node's link). It owns
/// the stanza from then on: delivered, queued or bounced, never lost.
pub trait StanzaSink: Send + Sync {
    /// What it is, for logs (`component`, `s2s`…).
    fn kind(&self) -> &'static str;
    /// Take a stanza; must not block.
    fn deliver(&self, core: &Arc<Core>, st: Stanza);
}

/// Where the stanzas of one domain go.
#[derive(Clone)]
pub enum Destination {
    /// A virtual host served here.
    Host(Arc<Host>),
    /// A service subdomain registered by a module of this host.
    Service(Arc<Host>),
    /// An external destination (component).
    External(Arc<dyn StanzaSink>),
}

/// Why a domain cannot be added to the routing table.
#[derive(Debug, thiserror::Error)]
#[error("domain `{0}` is already routed")]
pub struct DomainTaken(pub String);

/// Domain → destination, plus the fallback for every other domain.
#[derive(Default)]
pub struct RoutingTable {
    domains: RwLock<HashMap<String, Destination>>,
    remote: RwLock<Option<Arc<dyn StanzaSink>>>,
}

impl RoutingTable {
    /// Add a domain; a domain is routed to one destination only.
    pub fn add(&self, domain: &str, dest: Destination) -> Result<(), DomainTaken> {
        let mut map = self
            .domains
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.contains_key(domain) {
            return Err(DomainTaken(domain.to_string()));
        }
        map.insert(domain.to_string(), dest);
        Ok(())
    }

    /// Apply a configuration reload's changes at once: each `(domain,
    /// destination)` of `set` is routed there (replacing what was), each
    /// domain of `remove` stops being routed. Nothing else changes (connected
    /// components keep their domains).
    pub(crate) fn replace(&self, set: Vec<(String, Destination)>, remove: &[String]) {
        let mut map = self
            .domains
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for d in remove {
            map.remove(d);
        }
        for (d, dest) in set {
            map.insert(d, dest);
        }
    }

    /// Remove a domain (a component disconnected); `true` when it was routed.
    pub fn remove(&self, domain: &str) -> bool {
        self.domains
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(domain)
            .is_some()
    }

    /// The destination of `domain`, if it has an entry.
    pub fn lookup(&self, domain: &str) -> Option<Destination> {
        self.domains
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(domain)
            .cloned()
    }

    /// Every routed domain, sorted.
    pub fn domains(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .domains
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Domains with an external destination (connected components) that
    /// are subdomains of `parent`, sorted (a host's disco#items).
    pub fn externals_under(&self, parent: &str) -> Vec<String> {
        let suffix = format!(".{parent}");
        let mut v: Vec<String> = self
            .domains
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|(d, dest)| d.ends_with(&suffix) && matches!(dest, Destination::External(_)))
            .map(|(d, _)| d.clone())
            .collect();
        v.sort();
        v
    }

    /// Set where stanzas for domains without an entry go (s2s). Without it
    /// they are answered `remote-server-not-found`.
    pub fn set_remote(&self, sink: Option<Arc<dyn StanzaSink>>) {
        *self
            .remote
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = sink;
    }

    fn remote(&self) -> Option<Arc<dyn StanzaSink>> {
        self.remote
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Core {
    /// Route a stanza to its destination. Never blocks.
    pub fn route(self: &Arc<Self>, st: Stanza) {
        let Some(to) = &st.to else {
            // Stanzas without `to` are addressed to the sender's account (RFC 6120 §10.3).
            let bare: Jid = st.from.to_bare().into();
            let mut st = st;
            st.set_to(Some(bare));
            return self.route(st);
        };
        metrics::counter!("palaver_stanzas_routed_total", "kind" => st.kind.as_str()).increment(1);
        match self.routes.lookup(to.domain().as_str()) {
            Some(Destination::Host(host)) => local::route(self, host, st),
            Some(Destination::Service(host)) => self.route_to_service(host, st),
            Some(Destination::External(sink)) => sink.deliver(self, st),
            None => match self.routes.remote() {
                Some(sink) => sink.deliver(self, st),
                None => {
                    let domain = Jid::from(to.to_bare());
                    self.bounce(&st, Condition::RemoteServerNotFound, Some(domain));
                }
            },
        }
    }

    /// Reply to `st` with an error, unless it is an error itself.
    pub fn bounce(self: &Arc<Self>, st: &Stanza, cond: Condition, error_from: Option<Jid>) {
        self.bounce_with(st, StanzaError::new(cond), error_from);
    }

    /// Reply to `st` with a specific error, unless it is an error itself.
    pub fn bounce_with(self: &Arc<Self>, st: &Stanza, err: StanzaError, error_from: Option<Jid>) {
        if let Some(reply) = st.error_reply(&err, error_from) {
            self.route(reply);
        }
    }

    /// A stanza for a service subdomain: IQ requests go to the handler of
    /// their payload namespace, everything else (and IQs without a handler)
    /// to the service's stanza handler; without one, RFC 6120 defaults.
    fn route_to_service(self: &Arc<Self>, host: Arc<Host>, st: Stanza) {
        let domain = st
            .to
            .as_ref()
            .map(|t| t.domain().to_string())
            .unwrap_or_default();
        if st.kind == StanzaKind::Iq {
            let kind = match st.type_attr() {
                Some("get") => Some(IqType::Get),
                Some("set") => Some(IqType::Set),
                Some("result") | Some("error") => None,
                _ => {
                    self.bounce(&st, Condition::BadRequest, None);
                    return;
                }
            };
            let handler = kind.and_then(|kind| {
                st.payload()
                    .and_then(|p| host.service_iq_handler(&domain, kind, &p.ns()))
            });
            if let Some(handler) = handler {
                self.run_iq_handler(handler, host, st);
                return;
            }
        }
        if let Some(handler) = host.service_handler(&domain) {
            handler(&self.cx(&host), st);
            return;
        }
        match st.kind {
            StanzaKind::Iq if matches!(st.type_attr(), Some("get" | "set")) => {
                self.bounce(&st, Condition::ServiceUnavailable, None)
            }
            StanzaKind::Message => self.bounce(&st, Condition::ServiceUnavailable, None),
            _ => {}
        }
    }

    /// Hand an IQ to the module handling its payload namespace, or answer
    /// `service-unavailable` (RFC 6120 §8.4). Results and errors are never answered.
    pub(crate) fn dispatch_iq(self: &Arc<Self>, host: Arc<Host>, scope: IqScope, st: Stanza) {
        let kind = match st.type_attr() {
            Some("get") => IqType::Get,
            Some("set") => IqType::Set,
            Some("result") | Some("error") => {
                if host.hooks().has::<crate::hooks::IqResponse>() {
                    let mut st = st;
                    self.cx(&host)
                        .run_hook::<crate::hooks::IqResponse>(None, &mut st);
                }
                return;
            }
            _ => {
                self.bounce(&st, Condition::BadRequest, None);
                return;
            }
        };
        let mut children = st.el().children();
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

    /// Run an IQ handler in its own task (holding the request's ticket) and
    /// answer with its result or error.
    fn run_iq_handler(self: &Arc<Self>, handler: IqHandler, host: Arc<Host>, st: Stanza) {
        let cx = self.cx(&host);
        let core = self.clone();
        cx.clone().spawn(async move {
            let req_copy = st.clone();
            let res = handler(IqRequest { stanza: st, cx }).await;
            match res {
                Ok(payload) => core.route(req_copy.iq_result(payload)),
                Err(e) => core.bounce_with(&req_copy, e, None),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that keeps what it gets.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl StanzaSink for Recorder {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn deliver(&self, _core: &Arc<Core>, st: Stanza) {
            let to = st.to.map(|t| t.to_string()).unwrap_or_default();
            self.0.lock().map(|mut v| v.push(to)).ok();
        }
    }

    fn message(to: &str) -> Stanza {
        let el = minidom::Element::bare("message", palaver_proto::ns::CLIENT);
        let from = Jid::new("alice@localhost/r").expect("jid");
        Stanza::new(StanzaKind::Message, from, Jid::new(to).ok(), el)
    }

    /// The component slot (a domain entry) and the remote fallback (no entry)
    /// receive what is routed to them; a domain is routed once.
    #[tokio::test]
    async fn external_and_remote_destinations() {
        let dir = std::env::temp_dir().join(format!("palaver-route-{}", std::process::id()));
        let text = format!(
            "hosts: [localhost]\ndata_dir: {}\nmodules: {{}}\n",
            dir.display()
        );
        let config = crate::Config::parse(&text).expect("config");
        let core = crate::Server::tool_core(config, &[]).await.expect("core");
        let component = Arc::new(Recorder::default());
        let remote = Arc::new(Recorder::default());
        core.routes()
            .add("comp.localhost", Destination::External(component.clone()))
            .expect("free domain");
        assert!(
            core.routes()
                .add("localhost", Destination::External(component.clone()))
                .is_err(),
            "a host's domain is taken"
        );
        core.routes().set_remote(Some(remote.clone()));
        core.route(message("bot@comp.localhost/x"));
        core.route(message("bob@example.net"));
        assert!(core.routes().remove("comp.localhost"));
        core.route(message("bot@comp.localhost"));
        let got = |r: &Recorder| r.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(got(&component), ["bot@comp.localhost/x"]);
        assert_eq!(got(&remote), ["bob@example.net", "bot@comp.localhost"]);
        assert_eq!(core.routes().domains(), ["localhost"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
