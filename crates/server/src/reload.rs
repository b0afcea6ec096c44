//! Configuration reload without a restart (`SIGHUP`, `palaver ctl
//! reload_config`, `POST /api/reload_config`).
//!
//! The file the server started from is read and validated again; a bad
//! file changes nothing and the error goes back to the caller. Otherwise
//! everything is prepared first — every host built again, its routes
//! checked, authentication backends and certificates loaded, new modules'
//! tables migrated — and only then swapped in:
//!
//! - **hosts** are built again ([`Host::rebuild`]): a module whose options
//!   did not change keeps running as it is (its state and tasks); a module
//!   newly enabled starts; one whose options changed starts anew and its old
//!   instance stops; one no longer enabled stops (its tasks are cancelled,
//!   its service subdomains leave the routing table). Sessions stay
//!   connected and use the new registrations from their next stanza;
//! - **hosts added** are routed and get their certificates and
//!   authentication backend; **hosts removed** leave the routing table and
//!   their sessions are closed with the `host-unknown` stream error (RFC
//!   6120 §4.9.3.6: the host is not served here any more; `see-other-host`
//!   would need a server to send clients to, which Palaver cannot know);
//! - per-host `auth_method` and its options, ACLs, access and shaper rules,
//!   `scram_iterations` and `certfiles` take effect;
//! - what needs a restart — listeners, storage (`default_db`, `sql_*`,
//!   `sqlite_path`), `data_dir`, federation (`s2s_*`), `loglevel` — keeps its
//!   running value, and the reload says so in a warning for each.

use crate::config::{Config, ConfigError};
use crate::core::Core;
use crate::host::{Host, ModuleChanges, ModulePart};
use crate::router::Destination;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What a reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// One paragraph for the operator.
    pub message: String,
    /// Warnings: settings that need a restart, ignored ejabberd options,
    /// certificates that will not be trusted or expire soon.
    pub warnings: Vec<String>,
    /// Hosts served from now on.
    pub hosts_added: Vec<String>,
    /// Hosts no longer served.
    pub hosts_removed: Vec<String>,
    /// Sessions of removed hosts that were closed.
    pub sessions_closed: usize,
    /// Per host, the modules started, restarted and stopped (hosts without
    /// changes are left out).
    pub modules: BTreeMap<String, ModuleChanges>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server runs without a configuration file.
    #[error(
        "the server runs on the embedded defaults, not from a configuration file: there is nothing to read again (start it with --config FILE)"
    )]
    NoFile,
    /// The new configuration is invalid (the running one stays).
    #[error("{0}; the running configuration is unchanged")]
    Config(String),
    /// The new configuration's certificates cannot be loaded.
    #[error("certificates: {0}; the running configuration is unchanged")]
    Certificates(String),
    /// Preparing the storage of newly enabled modules failed.
    #[error("storage: {0}; the running configuration is unchanged")]
    Storage(String),
}

impl From<ConfigError> for ReloadError {
    fn from(e: ConfigError) -> Self {
        ReloadError::Config(e.message)
    }
}

/// Settings a running server cannot change: the new configuration gets the
/// running values, with a warning for each one that differs.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut check = |differs: bool, what: &str| {
        if differs {
            warnings.push(format!(
                "{what} changed: this needs a restart; the running value stays in use until then"
            ));
        }
    };
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    check(dbg(&old.listen) != dbg(&new.listen), "`listen`");
    new.listen = old.listen.clone();
    check(
        old.default_db != new.default_db
            || old.sql_type != new.sql_type
            || dbg(&old.sql) != dbg(&new.sql)
            || old.sqlite_path != new.sqlite_path,
        "the storage (`default_db`, `sql_*`)",
    );
    new.default_db = old.default_db;
    new.sql_type = old.sql_type;
    new.sql = old.sql.clone();
    new.sqlite_path = old.sqlite_path.clone();
    check(old.data_dir != new.data_dir, "`data_dir`");
    new.data_dir = old.data_dir.clone();
    check(dbg(&old.s2s) != dbg(&new.s2s), "federation (`s2s_*`)");
    new.s2s = old.s2s.clone();
    check(old.loglevel != new.loglevel, "`loglevel`");
    new.loglevel = old.loglevel.clone();
    warnings
}

/// The hosts of the new configuration, built but not serving yet.
struct Plan {
    hosts: HashMap<String, Arc<Host>>,
    /// Modules of running hosts that the new hosts do not keep, with the
    /// host they ran on.
    dropped: Vec<(Arc<Host>, Vec<Arc<ModulePart>>)>,
    added: Vec<String>,
    removed: Vec<Arc<Host>>,
    changes: BTreeMap<String, ModuleChanges>,
    /// Routing-table entries to set, and domains to remove.
    routes: Vec<(String, Destination)>,
    unroute: Vec<String>,
}

impl Core {
    /// Read the configuration file again and apply it (see the module
    /// documentation): the report of what changed, or why nothing did.
    pub async fn reload_config(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let _one = self.reloading.lock().await;
        let old = self.config();
        let Some(path) = old.source.clone() else {
            return Err(ReloadError::NoFile);
        };
        tracing::info!(path = %path.display(), "reloading the configuration");
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Config::load(&path))
                .await
                .map_err(|e| ReloadError::Config(format!("reading the configuration: {e}")))
        };
        let result = match loaded {
            Ok(Ok(new)) => self.apply(&old, new, &path).await,
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e),
        };
        match &result {
            Ok(r) => {
                for w in &r.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!("{}", r.message);
            }
            Err(e) => tracing::error!("configuration reload failed: {e}"),
        }
        result
    }

    async fn apply(
        self: &Arc<Self>,
        old: &Arc<Config>,
        mut new: Config,
        path: &std::path::Path,
    ) -> Result<ReloadReport, ReloadError> {
        let mut warnings = std::mem::take(&mut new.warnings);
        warnings.extend(new.resolve_modules(&self.modules)?);
        warnings.extend(keep_restart_only(old, &mut new));
        new.warnings = warnings.clone();
        let new = Arc::new(new);
        let plan = self.plan(&new)?;
        let auth = self.auth.prepare(&new)?;
        let certs = match self.certs() {
            Some(store) => {
                let store = store.clone();
                let (files, hosts) = (new.certfiles.clone(), new.hosts.clone());
                let prepared = tokio::task::spawn_blocking(move || store.prepare(&files, &hosts))
                    .await
                    .map_err(|e| ReloadError::Certificates(e.to_string()))?
                    .map_err(|e| ReloadError::Certificates(e.to_string()))?;
                Some(prepared)
            }
            None => None,
        };
        // The tables of modules that start now, before anything uses them.
        let todo = {
            let running = self.host_map();
            crate::core::steps_of(
                plan.hosts
                    .values()
                    .flat_map(|h| h.parts.iter())
                    .filter(|p| {
                        !running
                            .values()
                            .any(|h| h.parts.iter().any(|q| Arc::ptr_eq(q, p)))
                    })
                    .map(|p| &p.regs),
            )
        };
        crate::core::migrate(&self.storage, todo)
            .await
            .map_err(|e| ReloadError::Storage(e.to_string()))?;

        // Everything is ready: swap it in.
        let Plan {
            hosts,
            dropped,
            added,
            removed,
            changes,
            routes,
            unroute,
        } = plan;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        *self.hosts.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(hosts.clone());
        self.routes.replace(routes, &unroute);
        self.auth.install(auth);
        if let (Some(store), Some(prepared)) = (self.certs(), certs) {
            store.install(prepared);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);

        // New modules' tasks start on the new hosts; the left-over ones stop.
        for h in new.hosts.iter().filter_map(|h| hosts.get(h)) {
            h.start_tasks(&self.cx(h));
        }
        for (host, parts) in &dropped {
            let cx = self.cx(host);
            for p in parts {
                p.stop(&host.name, &cx);
            }
        }
        let mut closed = 0;
        for host in &removed {
            host.stop_modules(&self.cx(host));
            closed += self.registry.close_host(
                &host.name,
                &format!("{} is no longer served here", host.name),
            );
        }

        if let Some(store) = self.certs() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            warnings.extend(store.warnings(now).iter().map(|w| w.to_string()));
        }
        let removed: Vec<String> = removed.iter().map(|h| h.name.clone()).collect();
        let message = describe(path, &added, &removed, closed, &changes);
        Ok(ReloadReport {
            message,
            warnings,
            hosts_added: added,
            hosts_removed: removed,
            sessions_closed: closed,
            modules: changes,
        })
    }

    /// Build every host of `new` next to the running ones and work out the
    /// routing table's changes; an error (a module's bad option, a domain
    /// routed twice) leaves everything as it is.
    fn plan(&self, new: &Arc<Config>) -> Result<Plan, ReloadError> {
        let running = self.host_map();
        let mut plan = Plan {
            hosts: HashMap::new(),
            dropped: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            changes: BTreeMap::new(),
            routes: Vec::new(),
            unroute: Vec::new(),
        };
        for name in &new.hosts {
            let host = match running.get(name) {
                Some(old) => {
                    let (host, dropped, changes) = Host::rebuild(old, new.clone(), &self.modules)?;
                    if !dropped.is_empty() {
                        plan.dropped.push((old.clone(), dropped));
                    }
                    if !changes.is_empty() {
                        plan.changes.insert(name.clone(), changes);
                    }
                    host
                }
                None => {
                    let host = Host::start(name, new.clone(), &self.modules)?;
                    plan.added.push(name.clone());
                    plan.changes.insert(
                        name.clone(),
                        ModuleChanges {
                            started: host.modules().to_vec(),
                            ..Default::default()
                        },
                    );
                    host
                }
            };
            plan.hosts.insert(name.clone(), host);
        }
        for (name, host) in running.iter() {
            if !plan.hosts.contains_key(name) {
                plan.removed.push(host.clone());
            }
        }
        plan.removed.sort_by(|a, b| a.name.cmp(&b.name));

        // Each domain once: hosts, then their services; none may take a
        // domain a connected component holds.
        let mut taken: HashSet<String> = HashSet::new();
        let ours = |d: &str| {
            running.contains_key(d)
                || running
                    .values()
                    .any(|h| h.services().iter().any(|s| s == d))
        };
        let routed_elsewhere =
            |d: &str| matches!(self.routes.lookup(d), Some(Destination::External(_))) && !ours(d);
        for name in &new.hosts {
            let Some(host) = plan.hosts.get(name) else {
                continue;
            };
            if routed_elsewhere(name) {
                return Err(ReloadError::Config(format!(
                    "host `{name}` is the domain of a connected component"
                )));
            }
            taken.insert(name.clone());
            plan.routes
                .push((name.clone(), Destination::Host(host.clone())));
        }
        for name in &new.hosts {
            let Some(host) = plan.hosts.get(name) else {
                continue;
            };
            for d in host.services() {
                if !taken.insert(d.clone()) {
                    return Err(ReloadError::Config(format!(
                        "service domain `{d}` is configured twice"
                    )));
                }
                if routed_elsewhere(&d) {
                    return Err(ReloadError::Config(format!(
                        "service domain `{d}` is the domain of a connected component"
                    )));
                }
                plan.routes
                    .push((d.clone(), Destination::Service(host.clone())));
            }
        }
        for (name, host) in running.iter() {
            for d in std::iter::once(name.clone()).chain(host.services()) {
                if !taken.contains(&d) && !plan.unroute.contains(&d) {
                    plan.unroute.push(d);
                }
            }
        }
        Ok(plan)
    }
}

/// The report's message.
fn describe(
    path: &std::path::Path,
    added: &[String],
    removed: &[String],
    closed: usize,
    changes: &BTreeMap<String, ModuleChanges>,
) -> String {
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("hosts added: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!(
            "hosts removed: {} ({closed} session(s) closed)",
            removed.join(", ")
        ));
    }
    for (host, c) in changes {
        if added.contains(host) {
            continue;
        }
        let mut what = Vec::new();
        if !c.started.is_empty() {
            what.push(format!("started {}", c.started.join(", ")));
        }
        if !c.restarted.is_empty() {
            what.push(format!(
                "restarted {} (options changed)",
                c.restarted.join(", ")
            ));
        }
        if !c.stopped.is_empty() {
            what.push(format!("stopped {}", c.stopped.join(", ")));
        }
        parts.push(format!("{host}: {}", what.join("; ")));
    }
    if parts.is_empty() {
        parts.push("no host or module changed".into());
    }
    format!(
        "configuration reloaded from {}: {}; certificates reloaded",
        path.display(),
        parts.join("; ")
    )
}
