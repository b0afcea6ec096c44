//! A virtual host: its name, its configuration and what its modules
//! registered.
//!
//! Each enabled module is a [`ModulePart`]: its registrations, its running
//! instance and its background tasks. A host's registrations are its parts'
//! merged in config order. A configuration reload builds every host again
//! ([`Host::rebuild`]): a module whose options did not change keeps its
//! part (its state, e.g. MUC rooms, and its tasks), a new or changed one
//! starts a new part, and the parts left over are stopped once the new host
//! serves.

use crate::config::{Config, ConfigError};
use crate::hooks::Hooks;
use crate::module::{
    HostSetup, HttpRoute, Identity, IqHandler, IqScope, IqType, ModuleCx, ModuleDef, Registrations,
    RunningModule, ServiceHandler, TaskFn,
};
use std::sync::{Arc, Mutex};

/// One module started on one host.
pub(crate) struct ModulePart {
    /// Module name.
    pub(crate) name: &'static str,
    /// The options it was started with (a reload restarts it when they change).
    pub(crate) options: serde_json::Value,
    /// What it registered.
    pub(crate) regs: Registrations,
    instance: Option<Box<dyn RunningModule>>,
    /// Tasks asked for, not started yet.
    pending: Mutex<Vec<TaskFn>>,
    /// Running tasks.
    running: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl ModulePart {
    /// Start `def` on host `name` with `options`.
    fn start(
        name: &str,
        config: &Arc<Config>,
        def: &ModuleDef,
        options: &serde_json::Value,
        line: u64,
    ) -> Result<ModulePart, ConfigError> {
        let mut setup = HostSetup::new(name, config.clone());
        setup.begin_module(def.name);
        def.start(&mut setup, options)
            .map_err(|e| ConfigError::at(&format!("modules.{}", def.name), line, e))?;
        let (module, regs, instance, tasks) = setup.into_parts();
        Ok(ModulePart {
            name: module,
            options: options.clone(),
            regs,
            instance,
            pending: Mutex::new(tasks),
            running: Mutex::new(Vec::new()),
        })
    }

    /// Start the tasks it asked for (once).
    fn start_tasks(&self, host: &str, cx: &ModuleCx) {
        let pending: Vec<TaskFn> = match self.pending.lock() {
            Ok(mut p) => p.drain(..).collect(),
            Err(_) => return,
        };
        if pending.is_empty() {
            return;
        }
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        for task in pending {
            tracing::debug!(host, module = self.name, "module task started");
            running.push(tokio::spawn(task(cx.clone())).abort_handle());
        }
    }

    /// The module's `stop`, then its tasks are cancelled.
    pub(crate) fn stop(&self, host: &str, cx: &ModuleCx) {
        tracing::debug!(host, module = self.name, "stopping module");
        if let Some(m) = &self.instance {
            m.stop(cx);
        }
        if let Ok(mut running) = self.running.lock() {
            for h in running.drain(..) {
                h.abort();
            }
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }
}

/// One served domain. Its registrations are immutable once started (a
/// reload builds a new `Host`).
pub struct Host {
    /// Domain name.
    pub name: String,
    /// The configuration it was built with.
    pub(crate) config: Arc<Config>,
    /// Its modules' registrations, merged.
    pub(crate) regs: Registrations,
    /// Its modules, in config order.
    pub(crate) parts: Vec<Arc<ModulePart>>,
}

/// A host built again: the new host, the old parts it does not keep, and
/// what changed.
pub(crate) type Rebuilt = (Arc<Host>, Vec<Arc<ModulePart>>, ModuleChanges);

/// What [`Host::rebuild`] changed on a host's modules.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleChanges {
    /// Modules enabled by the new configuration.
    pub started: Vec<String>,
    /// Modules whose options changed (a new instance replaces the old).
    pub restarted: Vec<String>,
    /// Modules the new configuration no longer enables.
    pub stopped: Vec<String>,
}

impl ModuleChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.restarted.is_empty() && self.stopped.is_empty()
    }
}

fn find_def<'a>(
    registry: &'a [ModuleDef],
    name: &str,
    line: u64,
) -> Result<&'a ModuleDef, ConfigError> {
    registry.iter().find(|d| d.name == name).ok_or_else(|| {
        let known: Vec<&str> = registry.iter().map(|d| d.name).collect();
        ConfigError::at(
            &format!("modules.{name}"),
            line,
            format!("unknown module; available: {}", known.join(", ")),
        )
    })
}

impl Host {
    /// Start the configured modules for `name`.
    pub fn start(
        name: &str,
        config: Arc<Config>,
        registry: &[ModuleDef],
    ) -> Result<Arc<Host>, ConfigError> {
        let mut parts = Vec::new();
        for m in config.modules_for(name) {
            let def = find_def(registry, &m.name, m.line)?;
            parts.push(Arc::new(ModulePart::start(
                name, &config, def, &m.options, m.line,
            )?));
        }
        Ok(Self::assemble(name, config, parts))
    }

    /// The host `name` under a new configuration, next to the running
    /// `old`: modules whose options are unchanged keep their running part;
    /// new ones and changed ones start (their tasks start with
    /// [`Host::start_tasks`]). The parts of `old` the new host does not
    /// keep are returned, to be stopped once the new host serves.
    pub(crate) fn rebuild(
        old: &Host,
        config: Arc<Config>,
        registry: &[ModuleDef],
    ) -> Result<Rebuilt, ConfigError> {
        let name = old.name.as_str();
        let mut parts = Vec::new();
        let mut changes = ModuleChanges::default();
        let mut kept: Vec<&Arc<ModulePart>> = Vec::new();
        for m in config.modules_for(name) {
            let def = find_def(registry, &m.name, m.line)?;
            let same = old.parts.iter().find(|p| p.name == def.name);
            match same {
                Some(p) if p.options == m.options => {
                    kept.push(p);
                    parts.push(p.clone());
                }
                Some(_) => {
                    changes.restarted.push(def.name.to_string());
                    parts.push(Arc::new(ModulePart::start(
                        name, &config, def, &m.options, m.line,
                    )?));
                }
                None => {
                    changes.started.push(def.name.to_string());
                    parts.push(Arc::new(ModulePart::start(
                        name, &config, def, &m.options, m.line,
                    )?));
                }
            }
        }
        let mut dropped = Vec::new();
        for p in &old.parts {
            if kept.iter().any(|k| Arc::ptr_eq(k, p)) {
                continue;
            }
            if !changes.restarted.iter().any(|r| r == p.name) {
                changes.stopped.push(p.name.to_string());
            }
            dropped.push(p.clone());
        }
        Ok((Self::assemble(name, config, parts), dropped, changes))
    }

    fn assemble(name: &str, config: Arc<Config>, parts: Vec<Arc<ModulePart>>) -> Arc<Host> {
        let mut regs = Registrations::default();
        for p in &parts {
            regs.merge(&p.regs);
        }
        Arc::new(Host {
            name: name.to_string(),
            config,
            regs: regs.finish(),
            parts,
        })
    }

    /// The configuration this host was built with.
    pub fn config(&self) -> &Config {
        &self.config
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

    /// The rooms of the host's MUC services, when a module serves rooms.
    pub fn room_admin(&self) -> Option<&std::sync::Arc<dyn crate::rooms::RoomAdmin>> {
        self.regs.room_admin.as_ref()
    }

    /// HTTP routes the modules registered.
    pub fn http_routes(&self) -> &[HttpRoute] {
        &self.regs.http
    }

    /// Start the modules' background tasks that have not started yet (at
    /// server start; after a reload, those of the modules it started).
    pub(crate) fn start_tasks(&self, cx: &ModuleCx) {
        for p in &self.parts {
            p.start_tasks(&self.name, cx);
        }
    }

    /// Stop the modules: each module's `stop`, then its tasks are cancelled.
    pub(crate) fn stop_modules(&self, cx: &ModuleCx) {
        for p in &self.parts {
            p.stop(&self.name, cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{HookAction, UserSend};
    use crate::module::{Module, NoOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static STOPPED: AtomicUsize = AtomicUsize::new(0);

    struct A;
    impl Module for A {
        const NAME: &'static str = "mod_a";
        type Options = NoOptions;
        fn start(host: &mut HostSetup, _: NoOptions) -> Result<Self, String> {
            host.add_feature("urn:a");
            host.hook::<UserSend>(10, |_, _| HookAction::Continue);
            Ok(A)
        }
    }

    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct BOpts {
        size: u32,
    }
    struct B;
    impl Module for B {
        const NAME: &'static str = "mod_b";
        type Options = BOpts;
        fn start(host: &mut HostSetup, o: BOpts) -> Result<Self, String> {
            if o.size == 99 {
                return Err("size must not be 99".into());
            }
            host.add_feature("urn:b");
            host.hook::<UserSend>(10, |_, _| HookAction::Continue);
            host.add_service(&format!("b.{}", host.host()));
            Ok(B)
        }
        fn stop(&self, _cx: &ModuleCx) {
            STOPPED.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn config(modules: &str) -> Arc<Config> {
        Arc::new(Config::parse(&format!("hosts: [a.test]\nmodules:\n{modules}")).expect("config"))
    }

    const REGISTRY: &[ModuleDef] = &[ModuleDef::of::<A>(), ModuleDef::of::<B>()];

    /// A rebuild keeps the parts of unchanged modules, starts new and
    /// changed ones and hands back the rest; the merged registrations are
    /// those of a fresh start.
    #[test]
    fn rebuild_keeps_unchanged_modules() {
        let old = Host::start("a.test", config("  mod_a: {}\n"), REGISTRY).expect("start");
        assert_eq!(old.features(), ["urn:a"]);
        let (new, dropped, changes) =
            Host::rebuild(&old, config("  mod_a: {}\n  mod_b: {size: 1}\n"), REGISTRY)
                .expect("rebuild");
        assert!(dropped.is_empty());
        assert_eq!(changes.started, ["mod_b"]);
        assert!(Arc::ptr_eq(&old.parts[0], &new.parts[0]), "mod_a kept");
        assert_eq!(new.features(), ["urn:a", "urn:b"]);
        assert_eq!(new.services(), ["b.a.test"]);
        let names: Vec<&str> = new
            .hooks()
            .registrations()
            .iter()
            .map(|(_, _, m)| m.as_str())
            .collect();
        assert_eq!(names, ["mod_a", "mod_b"], "hooks in module order");

        // Options changed: a new part; the old one is handed back.
        let (newer, dropped, changes) =
            Host::rebuild(&new, config("  mod_a: {}\n  mod_b: {size: 2}\n"), REGISTRY)
                .expect("rebuild");
        assert_eq!(changes.restarted, ["mod_b"]);
        assert!(changes.started.is_empty() && changes.stopped.is_empty());
        assert_eq!(dropped.len(), 1);
        assert!(Arc::ptr_eq(&dropped[0], &new.parts[1]));
        assert!(!Arc::ptr_eq(&newer.parts[1], &new.parts[1]));

        // Disabled: handed back, to be stopped by the caller.
        let (last, dropped, changes) =
            Host::rebuild(&newer, config("  mod_a: {}\n"), REGISTRY).expect("rebuild");
        assert_eq!(changes.stopped, ["mod_b"]);
        assert!(last.services().is_empty());
        assert_eq!(dropped.len(), 1);
        assert_eq!(
            STOPPED.load(Ordering::SeqCst),
            0,
            "stopping is the caller's"
        );

        // A bad option: an error naming it.
        let err = Host::rebuild(
            &last,
            config("  mod_a: {}\n  mod_b: {size: 99}\n"),
            REGISTRY,
        )
        .err()
        .expect("refused");
        assert!(
            err.message.contains("size must not be 99"),
            "{}",
            err.message
        );
    }
}
