//! Starting and stopping a server: storage, hosts, listeners.

use crate::auth::Authenticator;
use crate::c2s::{self, C2sListener};
use crate::config::{Config, ConfigError, DbKind, ListenModule};
use crate::core::Core;
use crate::host::Host;
use crate::module::ModuleDef;
use crate::router::{Destination, RoutingTable};
use crate::sessions::SessionManager;
use crate::tls::CertStore;
use palaver_storage::Storage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Startup errors.
#[derive(Debug, Error)]
pub enum StartError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Storage.
    #[error("storage: {0}")]
    Storage(#[from] palaver_storage::StorageError),
    /// TLS.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding a listener.
    #[error("cannot listen on {addr}: {err}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Error.
        err: std::io::Error,
    },
}

/// Entry point for building a server.
pub struct Server;

/// A started server.
pub struct RunningServer {
    /// Shared core.
    pub core: Arc<Core>,
    /// Bound listener addresses, in config order, with their module.
    pub listeners: Vec<(ListenModule, bool, SocketAddr)>,
    http: Vec<(crate::config::Listener, TcpListener)>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Open the configured storage.
pub async fn open_storage(config: &Config) -> Result<Storage, StartError> {
    match config.default_db {
        DbKind::Sqlite => Ok(Storage::open_sqlite(&config.sqlite_path).await?),
        DbKind::Sql => {
            let url = config
                .sql_url()
                .ok_or_else(|| ConfigError::msg("default_db: sql without a PostgreSQL URL"))?;
            Ok(Storage::open_postgres(&url, &config.sql.settings()).await?)
        }
    }
}

/// Validate module options for every host without starting anything; the
/// warnings name modules and ejabberd options Palaver does not use.
pub fn check_modules(config: &Config, registry: &[ModuleDef]) -> Result<Vec<String>, ConfigError> {
    let mut config = config.clone();
    let warnings = config.resolve_modules(registry)?;
    let config = Arc::new(config);
    for h in &config.hosts {
        Host::start(h, config.clone(), registry)?;
    }
    Ok(warnings)
}

impl Server {
    /// A core without listeners, for command-line tools that must run the
    /// modules' hooks (e.g. account removal cleaning every module's data).
    pub async fn tool_core(
        config: Config,
        registry: &[ModuleDef],
    ) -> Result<Arc<Core>, StartError> {
        let storage = open_storage(&config).await?;
        Self::tool_core_with_storage(config, registry, storage).await
    }

    /// [`Server::tool_core`] over an already opened storage.
    pub async fn tool_core_with_storage(
        config: Config,
        registry: &[ModuleDef],
        storage: Storage,
    ) -> Result<Arc<Core>, StartError> {
        let (_tx, shutdown) = watch::channel(false);
        let core = build_core(config, registry, storage, shutdown)?;
        core.migrate_modules().await?;
        Ok(core)
    }

    /// Open storage, start hosts and listeners.
    pub async fn start(
        config: Config,
        registry: &[ModuleDef],
    ) -> Result<RunningServer, StartError> {
        let storage = open_storage(&config).await?;
        Self::start_with_storage(config, registry, storage).await
    }

    /// Start with an already opened storage.
    pub async fn start_with_storage(
        config: Config,
        registry: &[ModuleDef],
        storage: Storage,
    ) -> Result<RunningServer, StartError> {
        let certs = Arc::new(CertStore::load(
            &config.certfiles,
            &config.hosts,
            &config.data_dir,
        )?);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let core = build_core(config, registry, storage, shutdown_rx)?;
        let _ = core.certs.set(certs.clone());
        core.migrate_modules().await?;
        let config = core.config();
        let mut tasks = JoinSet::new();
        let mut listeners = Vec::new();
        let mut http = Vec::new();
        for l in &config.listen {
            let addr = SocketAddr::new(l.ip, l.port);
            match l.module {
                ListenModule::C2s => {
                    let sock = TcpListener::bind(addr)
                        .await
                        .map_err(|err| StartError::Bind { addr, err })?;
                    let local = sock
                        .local_addr()
                        .map_err(|err| StartError::Bind { addr, err })?;
                    let ctx = Arc::new(C2sListener {
                        core: core.clone(),
                        cfg: l.clone(),
                        certs: certs.clone(),
                        starttls: certs.server_config(&[]),
                        direct: certs.server_config(&[b"xmpp-client"]),
                    });
                    tracing::info!(addr = %local, tls = l.tls, starttls = l.starttls && !l.tls, "c2s listening");
                    listeners.push((l.module, l.tls, local));
                    tasks.spawn(accept_loop(ctx, sock));
                }
                ListenModule::Http => {
                    // Bound here so address errors surface at start; served by the
                    // HTTP crate (see `RunningServer::take_http_listeners`).
                    let sock = TcpListener::bind(addr)
                        .await
                        .map_err(|err| StartError::Bind { addr, err })?;
                    let local = sock
                        .local_addr()
                        .map_err(|err| StartError::Bind { addr, err })?;
                    tracing::info!(addr = %local, "http listening");
                    listeners.push((l.module, l.tls, local));
                    http.push((l.clone(), sock));
                }
                ListenModule::S2s | ListenModule::Component => {}
            }
        }
        core.start_modules();
        let _ = core.http_addrs.set(
            listeners
                .iter()
                .filter(|(m, _, _)| *m == ListenModule::Http)
                .map(|(_, _, a)| *a)
                .collect(),
        );
        Ok(RunningServer {
            core,
            listeners,
            http,
            shutdown_tx,
            tasks,
        })
    }
}

/// Start every host's modules and assemble the shared core.
fn build_core(
    config: Config,
    registry: &[ModuleDef],
    storage: Storage,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<Core>, StartError> {
    let mut config = config;
    for w in config.resolve_modules(registry)? {
        tracing::warn!("{w}");
    }
    let config = Arc::new(config);
    let mut hosts = HashMap::new();
    let routes = RoutingTable::default();
    for h in &config.hosts {
        let host = Host::start(h, config.clone(), registry)?;
        routes
            .add(h, Destination::Host(host.clone()))
            .map_err(|e| ConfigError::msg(e.to_string()))?;
        hosts.insert(h.clone(), host);
    }
    // Service subdomains after every host: a domain is routed only once.
    for h in config.hosts.iter().filter_map(|h| hosts.get(h)) {
        for d in h.services() {
            routes
                .add(&d, Destination::Service(h.clone()))
                .map_err(|_| {
                    ConfigError::msg(format!("service domain `{d}` is configured twice"))
                })?;
        }
    }
    let auth = Authenticator::from_config(storage.clone(), &config)?;
    Ok(Arc::new(Core {
        auth,
        config: std::sync::RwLock::new(config),
        storage,
        hosts: std::sync::RwLock::new(Arc::new(hosts)),
        generation: Default::default(),
        modules: registry.to_vec(),
        reloading: Default::default(),
        routes,
        http_addrs: std::sync::OnceLock::new(),
        registry: SessionManager::default(),
        serial: Default::default(),
        started: Instant::now(),
        shutdown,
        unauth: Default::default(),
        certs: Default::default(),
    }))
}

async fn accept_loop(ctx: Arc<C2sListener>, sock: TcpListener) {
    let limit = Arc::new(Semaphore::new(
        ctx.cfg.max_connections.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let mut shutdown = ctx.core.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            a = sock.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    c2s::serve(ctx, tcp, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl RunningServer {
    /// The first c2s listener's address (plain or STARTTLS).
    pub fn c2s_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(m, tls, _)| *m == ListenModule::C2s && !tls)
            .map(|(_, _, a)| *a)
    }

    /// The bound HTTP listeners, for the HTTP crate to serve.
    pub fn take_http_listeners(&mut self) -> Vec<(crate::config::Listener, TcpListener)> {
        std::mem::take(&mut self.http)
    }

    /// Run a task that belongs to the server (ended at shutdown).
    pub fn spawn(&mut self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(fut);
    }

    /// The first HTTP listener's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(m, _, _)| *m == ListenModule::Http)
            .map(|(_, _, a)| *a)
    }

    /// The first direct-TLS c2s listener's address.
    pub fn c2s_tls_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(m, tls, _)| *m == ListenModule::C2s && *tls)
            .map(|(_, _, a)| *a)
    }

    /// Stop accepting, send `<system-shutdown/>` to every session and wait
    /// (bounded) for them to close, then close the storage's connections.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        self.core.stop_modules();
        self.tasks.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.core.registry.count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.core.storage().db.close(Duration::from_secs(5)).await;
    }
}
