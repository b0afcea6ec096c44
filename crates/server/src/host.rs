//! A virtual host: its name and what its modules registered.

use crate::config::{Config, ConfigError};
use crate::hooks::Hooks;
use crate::module::{
    HostSetup, HttpRoute, Identity, IqHandler, IqScope, IqType, ModuleCx, ModuleDef, Registrations,
    ServiceHandler,
};
use std::sync::{Arc, Mutex};

/// One served domain. Its registrations are immutable once started.
pub struct Host {
    /// Domain name.
    pub name: String,
    pub(crate) regs: Registrations,
    /// Background tasks of the modules, while they run.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Host {
    /// Start the configured modules for `name`.
    pub fn start(
        name: &str,
        config: &Config,
        registry: &[ModuleDef],
    ) -> Result<Arc<Host>, ConfigError> {
        let mut setup = HostSetup::new(name, config);
        for m in config.modules_for(name) {
            let def = registry.iter().find(|d| d.name == m.name).ok_or_else(|| {
                let known: Vec<&str> = registry.iter().map(|d| d.name).collect();
                ConfigError::at(
                    &format!("modules.{}", m.name),
                    m.line,
                    format!("unknown module; available: {}", known.join(", ")),
                )
            })?;
            setup.begin_module(def.name);
            def.start(&mut setup, &m.options)
                .map_err(|e| ConfigError::at(&format!("modules.{}", m.name), m.line, e))?;
        }
        Ok(Arc::new(Host {
            name: name.to_string(),
            regs: setup.finish(),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Disco features of every account's bare JID, sorted.
    pub fn account_features(&self) -> &[String] {
        &self.regs.account_features
    }

    /// Disco features of the server entity, sorted.
    pub fn features(&self) -> &[String] {
        &self.regs.features
    }

    /// Disco identities of the server entity.
    pub fn identities(&self) -> &[Identity] {
        &self.regs.identities
    }

    /// Disco identities the modules added to every account's bare JID.
    pub fn account_identities(&self) -> &[Identity] {
        &self.regs.account_identities
    }

    /// The handler a module registered for a disco node of the host.
    pub fn disco_node(&self, node: &str) -> Option<crate::module::DiscoNodeHandler> {
        self.regs.disco_nodes.get(node).cloned()
    }

    /// The handlers modules registered for disco queries to accounts
    /// ([`HostSetup::on_account_disco`](crate::module::HostSetup::on_account_disco)).
    pub fn account_disco(&self) -> &[crate::module::DiscoNodeHandler] {
        &self.regs.account_disco
    }

    /// Names of the enabled modules.
    pub fn modules(&self) -> &[String] {
        &self.regs.modules
    }

    /// Whether a module is enabled here.
    pub fn has_module(&self, name: &str) -> bool {
        self.regs.modules.iter().any(|m| m == name)
    }

    /// The hook handlers of this host.
    pub fn hooks(&self) -> &Hooks {
        &self.regs.hooks
    }

    pub(crate) fn iq_handler(&self, scope: IqScope, kind: IqType, ns: &str) -> Option<IqHandler> {
        // Avoid allocating a key String on lookup for the common miss/hit path.
        self.regs
            .iq
            .iter()
            .find(|((s, k, n), _)| *s == scope && *k == kind && n == ns)
            .map(|(_, h)| h.clone())
    }

    /// Service subdomains registered by modules, in registration order.
    pub fn services(&self) -> Vec<String> {
        self.regs.services.iter().map(|(d, _)| d.clone()).collect()
    }

    pub(crate) fn service_iq_handler(
        &self,
        domain: &str,
        kind: IqType,
        ns: &str,
    ) -> Option<IqHandler> {
        let (_, svc) = self.regs.services.iter().find(|(d, _)| d == domain)?;
        svc.iq
            .iter()
            .find(|((k, n), _)| *k == kind && n == ns)
            .map(|(_, h)| h.clone())
    }

    pub(crate) fn service_handler(&self, domain: &str) -> Option<ServiceHandler> {
        let (_, svc) = self.regs.services.iter().find(|(d, _)| d == domain)?;
        svc.stanzas.clone()
    }

    /// Whether any module handles IQs in `ns` for `scope`.
    pub fn handles_iq_ns(&self, scope: IqScope, ns: &str) -> bool {
        self.regs.iq.keys().any(|(s, _, n)| *s == scope && n == ns)
    }

    /// The modules' parts of portable account data, in module order.
    pub fn account_data(&self) -> &[crate::account_data::AccountDataPart] {
        &self.regs.account_data
    }

    /// HTTP routes the modules registered.
    pub fn http_routes(&self) -> &[HttpRoute] {
        &self.regs.http
    }

    /// Start the modules' background tasks (once, when the server runs).
    pub(crate) fn start_tasks(&self, cx: &ModuleCx) {
        let Ok(mut handles) = self.tasks.lock() else {
            return;
        };
        let Ok(mut pending) = self.regs.tasks_to_start.lock() else {
            return;
        };
        for (module, task) in pending.drain(..) {
            tracing::debug!(host = %self.name, module, "module task started");
            handles.push(tokio::spawn(task(cx.clone())).abort_handle());
        }
    }

    /// Stop the modules: each module's `stop`, then its tasks are cancelled.
    pub(crate) fn stop_modules(&self, cx: &ModuleCx) {
        for (name, m) in &self.regs.instances {
            tracing::debug!(host = %self.name, module = name, "stopping module");
            m.stop(cx);
        }
        if let Ok(mut handles) = self.tasks.lock() {
            for h in handles.drain(..) {
                h.abort();
            }
        }
    }
}
