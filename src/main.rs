//! `palaver`: the XMPP server binary and its command-line tools.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use palaver_server::config::Config;
use palaver_server::server::check_modules;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "palaver", version, about = "Palaver XMPP server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (embedded defaults when no config is given).
    Serve {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage accounts (works while the server runs).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Database schema tools.
    Db {
        #[command(subcommand)]
        cmd: DbCmd,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Bring the database schema up to date (also done at server start).
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the backend, the database's schema version and this binary's.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add {
        /// user@host
        jid: String,
        /// Password.
        password: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Change an account's password.
    Passwd {
        /// user@host
        jid: String,
        /// New password.
        password: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Delete an account.
    Del {
        /// user@host
        jid: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// List accounts of a host (all hosts when omitted).
    List {
        /// Host.
        host: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::defaults()),
    }
}

fn init_logging(level: &str) {
    let filter =
        std::env::var("PALAVER_LOG").unwrap_or_else(|_| format!("{level},sqlx=warn,rustls=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .try_init();
}

/// Split `user@host` and check the host is served.
fn account(config: &Config, jid: &str) -> Result<(String, String)> {
    let bare =
        palaver_proto::BareJid::new(jid).map_err(|e| anyhow!("`{jid}` is not a valid JID: {e}"))?;
    let node = bare
        .node()
        .ok_or_else(|| anyhow!("`{jid}` has no user part (expected user@host)"))?
        .to_string();
    let host = bare.domain().to_string();
    if !config.hosts.contains(&host) {
        bail!(
            "host `{host}` is not served by this configuration (hosts: {})",
            config.hosts.join(", ")
        );
    }
    Ok((host, node))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve { config } => serve(config).await,
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => {
            let c = load_config(config.as_ref())?;
            check_modules(&c, &palaver_modules::registry())?;
            println!(
                "configuration OK: {} host(s), {} listener(s), {} module(s)",
                c.hosts.len(),
                c.listen.len(),
                c.modules.len()
            );
            Ok(())
        }
        Cmd::User { cmd } => user(cmd).await,
        Cmd::Db { cmd } => db(cmd).await,
    }
}

/// Where the database is, for messages (never the password).
fn db_location(config: &Config) -> String {
    match config.sql_url() {
        Some(url) => redact_url(&url),
        None => config.sqlite_path.display().to_string(),
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Schema version in the database and the one this binary supports.
async fn db_versions(config: &Config) -> Result<(&'static str, i64, i64)> {
    Ok(match config.sql_url() {
        Some(url) => {
            let (found, supported) = palaver_storage::status::postgres(&url).await?;
            ("postgresql", found, supported)
        }
        None => {
            let (found, supported) = palaver_storage::status::sqlite(&config.sqlite_path).await?;
            ("sqlite", found, supported)
        }
    })
}

async fn db(cmd: DbCmd) -> Result<()> {
    let path = match &cmd {
        DbCmd::Migrate { config } | DbCmd::Status { config } => config.clone(),
    };
    let config = load_config(path.as_ref())?;
    init_logging("warn");
    match cmd {
        DbCmd::Migrate { .. } => {
            let (_, before, _) = db_versions(&config).await?;
            // Opening migrates (under a lock on PostgreSQL).
            let storage = palaver_server::server::open_storage(&config).await?;
            let (backend, after, _) = db_versions(&config).await?;
            drop(storage);
            if before == after {
                println!(
                    "{backend} database {} is up to date (schema version {after})",
                    db_location(&config)
                );
            } else {
                println!(
                    "{backend} database {} migrated from schema version {before} to {after}",
                    db_location(&config)
                );
            }
        }
        DbCmd::Status { .. } => {
            let (backend, found, supported) = db_versions(&config).await?;
            println!("backend: {backend}");
            println!("database: {}", db_location(&config));
            println!("schema version: {found}");
            println!("supported version: {supported}");
            if found > supported {
                bail!(
                    "the database schema ({found}) is newer than this binary supports ({supported}); upgrade palaver"
                );
            } else if found < supported {
                println!("status: migration pending (run `palaver db migrate`)");
            } else {
                println!("status: up to date");
            }
        }
    }
    Ok(())
}

async fn serve(config_path: Option<PathBuf>) -> Result<()> {
    let config = load_config(config_path.as_ref())?;
    init_logging(&config.loglevel);
    let data = config.data_dir.clone();
    let db = db_location(&config);
    let mut server = palaver_server::Server::start(config, &palaver_modules::registry()).await?;
    palaver_http::start(&mut server);
    println!(
        "palaver {} serving {}",
        env!("CARGO_PKG_VERSION"),
        server.core.config.hosts.join(", ")
    );
    for (module, tls, addr) in &server.listeners {
        println!(
            "  listening on {addr} ({module:?}{})",
            if *tls { ", direct TLS" } else { "" }
        );
    }
    println!("  data directory: {}", data.display());
    println!("  database: {db}");
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn user(cmd: UserCmd) -> Result<()> {
    let path = match &cmd {
        UserCmd::Add { config, .. }
        | UserCmd::Passwd { config, .. }
        | UserCmd::Del { config, .. }
        | UserCmd::List { config, .. } => config.clone(),
    };
    let config = load_config(path.as_ref())?;
    init_logging("warn");
    let core =
        palaver_server::Server::tool_core(config.clone(), &palaver_modules::registry()).await?;
    let storage = core.storage.clone();
    match cmd {
        UserCmd::Add { jid, password, .. } => {
            let (host, node) = account(&config, &jid)?;
            if password.is_empty() {
                bail!("the password must not be empty");
            }
            let creds = palaver_server::auth::derive_all(&password, config.scram_iterations);
            match storage.accounts.create_account(&host, &node, &creds).await {
                Ok(()) => println!("created {node}@{host}"),
                Err(palaver_storage::StorageError::Conflict) => {
                    bail!("{node}@{host} already exists")
                }
                Err(e) => return Err(e.into()),
            }
        }
        UserCmd::Passwd { jid, password, .. } => {
            let (host, node) = account(&config, &jid)?;
            if password.is_empty() {
                bail!("the password must not be empty");
            }
            let creds = palaver_server::auth::derive_all(&password, config.scram_iterations);
            match storage.accounts.set_credentials(&host, &node, &creds).await {
                Ok(()) => println!("password changed for {node}@{host}"),
                Err(palaver_storage::StorageError::NotFound) => {
                    bail!("{node}@{host} does not exist")
                }
                Err(e) => return Err(e.into()),
            }
        }
        UserCmd::Del { jid, .. } => {
            let (host, node) = account(&config, &jid)?;
            match core.remove_user(&host, &node).await {
                Ok(()) => println!("deleted {node}@{host}"),
                Err(palaver_storage::StorageError::NotFound) => {
                    bail!("{node}@{host} does not exist")
                }
                Err(e) => return Err(e.into()),
            }
        }
        UserCmd::List { host, .. } => {
            let hosts = match host {
                Some(h) => {
                    if !config.hosts.contains(&h) {
                        bail!("host `{h}` is not served by this configuration");
                    }
                    vec![h]
                }
                None => config.hosts.clone(),
            };
            for h in hosts {
                for u in storage.accounts.list_accounts(&h).await? {
                    println!("{u}@{h}");
                }
            }
        }
    }
    Ok(())
}
