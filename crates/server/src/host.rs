//! A virtual host: its name and what its modules registered.

use crate::config::{Config, ConfigError};
use crate::module::{HostSetup, Identity, IqHandler, IqScope, IqType, ModuleDef, Registrations};
use std::sync::Arc;

/// One served domain. Immutable once started.
pub struct Host {
    /// Domain name.
    pub name: String,
    pub(crate) regs: Registrations,
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
            (def.start)(&mut setup, &m.options)
                .map_err(|e| ConfigError::at(&format!("modules.{}", m.name), m.line, e))?;
        }
        Ok(Arc::new(Host {
            name: name.to_string(),
            regs: setup.finish(),
        }))
    }

    /// Disco features of the server entity, sorted.
    pub fn features(&self) -> &[String] {
        &self.regs.features
    }

    /// Disco identities of the server entity.
    pub fn identities(&self) -> &[Identity] {
        &self.regs.identities
    }

    /// Names of the enabled modules.
    pub fn modules(&self) -> &[String] {
        &self.regs.modules
    }

    /// Whether a module is enabled here.
    pub fn has_module(&self, name: &str) -> bool {
        self.regs.modules.iter().any(|m| m == name)
    }

    pub(crate) fn iq_handler(&self, scope: IqScope, kind: IqType, ns: &str) -> Option<IqHandler> {
        // Avoid allocating a key String on lookup for the common miss/hit path.
        self.regs
            .iq
            .iter()
            .find(|((s, k, n), _)| *s == scope && *k == kind && n == ns)
            .map(|(_, h)| h.clone())
    }

    /// Service subdomains registered by modules.
    pub fn services(&self) -> &[String] {
        &self.regs.services
    }

    pub(crate) fn service_iq_handler(
        &self,
        domain: &str,
        kind: IqType,
        ns: &str,
    ) -> Option<IqHandler> {
        self.regs
            .service_iq
            .iter()
            .find(|((d, k, n), _)| d == domain && *k == kind && n == ns)
            .map(|(_, h)| h.clone())
    }

    /// Whether any module handles IQs in `ns` for `scope`.
    pub fn handles_iq_ns(&self, scope: IqScope, ns: &str) -> bool {
        self.regs.iq.keys().any(|(s, _, n)| *s == scope && n == ns)
    }
}
