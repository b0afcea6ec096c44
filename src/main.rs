//! `palaver`: the XMPP server binary and its command-line tools.

use anyhow::{Context, Result, anyhow, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use palaver_admin::Request;
use palaver_server::config::Config;
use palaver_server::server::check_modules;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

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
        /// Log to this file instead of standard output (also
        /// `PALAVER_LOG_FILE`); reopened on SIGUSR1 and by `palaver ctl reopen_log`.
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Manage accounts (through the running server when there is one).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Database tools: schema migrations, XEP-0227 export and import.
    Db {
        #[command(subcommand)]
        cmd: DbCmd,
    },
    /// Run an administration command (in the running server when there is
    /// one): `palaver ctl COMMAND ARG…`, `palaver ctl help [COMMAND]`.
    Ctl {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The command and its arguments (positional, or `--NAME VALUE`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND ARG"
        )]
        words: Vec<String>,
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
    /// Write one host's accounts and user data as a XEP-0227 file.
    Export {
        /// Host to export.
        host: String,
        /// Output file (created with mode 0600; `-` writes to standard output).
        file: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Import every host of a XEP-0227 file (with its xi:include files).
    Import {
        /// The file (the main file when the export is split with xi:include).
        file: PathBuf,
        /// Replace the credentials and data of accounts that already exist
        /// (without it, an existing account stops the import before anything is written).
        #[arg(long)]
        force: bool,
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
        /// Password (asked on the terminal without echo, or read as one line
        /// from standard input, when omitted — keeps it out of shell history).
        password: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Change an account's password.
    Passwd {
        /// user@host
        jid: String,
        /// New password (asked for when omitted, like `user add`).
        password: Option<String>,
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

/// Where the configuration is looked for when `--config` is not given, in order.
const SYSTEM_CONFIG: &str = "/etc/palaver/palaver.yml";
const LOCAL_CONFIG: &str = "palaver.yml";

/// The configuration file to use: `--config`, `$PALAVER_CONFIG`,
/// `./palaver.yml`, `/etc/palaver/palaver.yml` (with how it was found).
fn find_config(explicit: Option<&PathBuf>) -> Result<Option<(PathBuf, &'static str)>> {
    if let Some(p) = explicit {
        return Ok(Some((p.clone(), "--config")));
    }
    if let Some(p) = std::env::var_os("PALAVER_CONFIG").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("PALAVER_CONFIG names {}, which is not a file", p.display());
        }
        return Ok(Some((p, "$PALAVER_CONFIG")));
    }
    for (p, how) in [
        (LOCAL_CONFIG, "found in the current directory"),
        (SYSTEM_CONFIG, "found in /etc/palaver"),
    ] {
        if std::path::Path::new(p).is_file() {
            return Ok(Some((PathBuf::from(p), how)));
        }
    }
    Ok(None)
}

/// What a command does without any configuration file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NoConfig {
    /// `serve`: run on the embedded defaults (the one-command promise).
    Defaults,
    /// Account and database commands: use the embedded defaults only when
    /// their data exists (`./palaver-data`, made by `palaver serve` without
    /// a config); otherwise say so rather than create an empty store.
    DefaultsIfTheirDataExists,
    /// `config check`: there is nothing to check.
    Refuse,
}

/// Find and read the configuration, telling on stderr which file was used
/// and every warning (ejabberd options Palaver ignores…).
fn load_config(path: Option<&PathBuf>, none: NoConfig) -> Result<Config> {
    const LOOKED: &str = "--config FILE, $PALAVER_CONFIG, ./palaver.yml, /etc/palaver/palaver.yml";
    match find_config(path)? {
        Some((p, how)) => {
            eprintln!("palaver: using configuration {} ({how})", p.display());
            let c = Config::load(&p)?;
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            Ok(c)
        }
        None => {
            let defaults = Config::defaults();
            match none {
                NoConfig::Defaults => {
                    eprintln!(
                        "palaver: no configuration file (looked for {LOOKED}): running on the embedded defaults"
                    );
                    Ok(defaults)
                }
                NoConfig::DefaultsIfTheirDataExists if defaults.data_dir.is_dir() => {
                    eprintln!(
                        "palaver: no configuration file: using the embedded defaults and their data in ./{}",
                        defaults.data_dir.display()
                    );
                    Ok(defaults)
                }
                NoConfig::DefaultsIfTheirDataExists => bail!(
                    "no configuration file found (looked for {LOOKED}), and no ./{} from `palaver serve` on its embedded defaults here",
                    defaults.data_dir.display()
                ),
                NoConfig::Refuse => {
                    bail!("no configuration file found to check (looked for {LOOKED})")
                }
            }
        }
    }
}

/// A password from the command line, else from the terminal (no echo,
/// typed twice when `confirm`), else one line of standard input.
fn password_for(jid: &str, given: Option<String>, confirm: bool) -> Result<String> {
    use std::io::IsTerminal;
    let pw = match given {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => {
            let first = prompt_hidden(&format!("Password for {jid}: "))?;
            if confirm && prompt_hidden("Retype the password: ")? != first {
                bail!("the passwords do not match");
            }
            first
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let trimmed = line.strip_suffix('\n').unwrap_or(&line);
            trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string()
        }
    };
    if pw.is_empty() {
        bail!("the password must not be empty");
    }
    Ok(pw)
}

/// Ask on the controlling terminal with echo off.
#[cfg(unix)]
fn prompt_hidden(prompt: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal; saved is a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        bail!("cannot read the terminal settings");
    }
    struct Restore(i32, libc::termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores settings read from the same open fd.
            unsafe { libc::tcsetattr(self.0, libc::TCSANOW, &self.1) };
        }
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    let mut out = &tty;
    out.write_all(prompt.as_bytes())?;
    out.flush()?;
    // SAFETY: fd is open; quiet is a valid termios derived from the current one.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        bail!("cannot turn off the terminal echo");
    }
    let _restore = Restore(fd, saved);
    let mut line = String::new();
    std::io::BufReader::new(&tty)
        .read_line(&mut line)
        .context("reading the password")?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

#[cfg(not(unix))]
fn prompt_hidden(prompt: &str) -> Result<String> {
    use std::io::Write;
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn init_logging(level: &str) {
    let filter =
        std::env::var("PALAVER_LOG").unwrap_or_else(|_| format!("{level},sqlx=warn,rustls=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .try_init();
}

/// Split `user@host` (the command layer checks both parts).
fn account(jid: &str) -> Result<(String, String)> {
    let bare =
        palaver_proto::BareJid::new(jid).map_err(|e| anyhow!("`{jid}` is not a valid JID: {e}"))?;
    let node = bare
        .node()
        .ok_or_else(|| anyhow!("`{jid}` has no user part (expected user@host)"))?
        .to_string();
    Ok((bare.domain().to_string(), node))
}

/// mimalloc rather than glibc's malloc: the server allocates and frees
/// small objects on every worker thread and hands many of them to other
/// threads (stanzas, archive rows); glibc spent a quarter of the CPU of the
/// chat benchmark with the archive on in its slow paths (BENCHMARKS.md,
/// run 10).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<ExitCode> {
    let list = format!(
        "Commands (`palaver ctl help COMMAND` shows one):\n{}",
        palaver_admin::commands::list()
    );
    let matches = Cli::command()
        .mut_subcommand("ctl", |c| c.after_help(list))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Cmd::Ctl { config, words } = cli.cmd {
        return ctl(config, words).await;
    }
    run_other(cli.cmd).await.map(|()| ExitCode::SUCCESS)
}

async fn run_other(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Serve { config, log_file } => serve(config, log_file).await,
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => {
            let c = load_config(config.as_ref(), NoConfig::Refuse)?;
            let mut warnings = check_modules(&c, &palaver_admin::registry())?;
            warnings.extend(check_certificates(&c));
            warnings.extend(palaver_s2s::check_certificates(&c));
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let mut modules = c.modules.clone();
            modules.retain(|m| palaver_admin::registry().iter().any(|d| d.name == m.name));
            let n = c.warnings.len() + warnings.len();
            println!(
                "configuration OK: {} host(s), {} listener(s), {} module(s){}",
                c.hosts.len(),
                c.listen.len(),
                modules.len(),
                if n > 0 {
                    format!(", {n} warning(s)")
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        Cmd::User { cmd } => user(cmd).await,
        Cmd::Db { cmd } => db(cmd).await,
        Cmd::Ctl { config, words } => ctl(config, words).await.map(|_| ()),
    }
}

/// Certificates that clients will not trust or that expire within 14 days
/// (a served host no `certfiles` entry covers; expired; expiring).
fn check_certificates(c: &Config) -> Vec<String> {
    // Generated self-signed certificates go to a scratch directory: a check
    // writes nothing under the server's data directory.
    let scratch = std::env::temp_dir().join(format!("palaver-check-{}", std::process::id()));
    let out = match palaver_server::tls::CertStore::load(&c.certfiles, &c.hosts, &scratch) {
        Ok(store) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            store.warnings(now).iter().map(|w| w.to_string()).collect()
        }
        Err(e) => vec![format!("certificates: {e}")],
    };
    let _ = std::fs::remove_dir_all(&scratch);
    out
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
        DbCmd::Migrate { config }
        | DbCmd::Status { config }
        | DbCmd::Export { config, .. }
        | DbCmd::Import { config, .. } => config.clone(),
    };
    let config = load_config(path.as_ref(), NoConfig::DefaultsIfTheirDataExists)?;
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
        DbCmd::Export { host, file, .. } => {
            let to_stdout = file.as_os_str() == "-";
            let file = if to_stdout {
                "-".to_string()
            } else {
                absolute(&file)?
            };
            let out = command(
                config,
                "export_piefxis_host",
                json!({ "host": host, "file": file }),
            )
            .await?;
            if to_stdout {
                use std::io::Write;
                let xml = out.get("xml").and_then(Value::as_str).unwrap_or_default();
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(xml.as_bytes())
                    .and_then(|()| stdout.flush())
                    .context("writing to standard output")?;
            }
            print_report(&out, to_stdout);
        }
        DbCmd::Import { file, force, .. } => {
            let file = absolute(&file)?;
            let out = command(
                config,
                "import_piefxis",
                json!({ "file": file, "force": force }),
            )
            .await?;
            print_report(&out, false);
        }
    }
    Ok(())
}

/// `path` made absolute (the server may run in another directory).
fn absolute(path: &std::path::Path) -> Result<String> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    abs.to_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", abs.display()))
}

/// Run a command of the table: in the running server when there is one,
/// here otherwise. An error of the command is the error of the program.
async fn command(config: Config, name: &str, args: Value) -> Result<Value> {
    let args = match args {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let req = Request {
        command: name.to_string(),
        args,
    };
    let (_, res) = palaver_admin::dispatch(config, &palaver_admin::registry(), &req).await?;
    res.map_err(|e| anyhow!(e.message))
}

/// A report's warnings on standard error, then its message (on standard
/// error too when standard output carries data).
fn print_report(v: &Value, message_to_stderr: bool) {
    if let Some(ws) = v.get("warnings").and_then(Value::as_array) {
        for w in ws.iter().filter_map(Value::as_str) {
            eprintln!("warning: {w}");
        }
    }
    if let Some(m) = v.get("message").and_then(Value::as_str) {
        if message_to_stderr {
            eprintln!("{m}");
        } else {
            println!("{m}");
        }
    }
}

/// Print a command's result: a sentence or number as a line, a list one
/// item per line, a report as warnings and its message.
fn print_result(v: &Value) {
    match v {
        Value::String(s) => println!("{s}"),
        Value::Array(items) => {
            for i in items {
                match i {
                    Value::String(s) => println!("{s}"),
                    other => println!("{other}"),
                }
            }
        }
        Value::Object(o) if o.contains_key("message") => {
            print_report(v, false);
            if let Some(t) = o.get("token").and_then(Value::as_str) {
                println!("{t}");
            }
        }
        Value::Null => {}
        other => println!("{other}"),
    }
}

async fn serve(config_path: Option<PathBuf>, log_file: Option<PathBuf>) -> Result<()> {
    let config = load_config(config_path.as_ref(), NoConfig::Defaults)?;
    let log_file = log_file.or_else(|| std::env::var_os("PALAVER_LOG_FILE").map(PathBuf::from));
    match &log_file {
        Some(p) => {
            let f = palaver_admin::logfile::open(p)
                .with_context(|| format!("log file {}", p.display()))?;
            let filter = std::env::var("PALAVER_LOG")
                .unwrap_or_else(|_| format!("{},sqlx=warn,rustls=warn", config.loglevel));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_target(false)
                .with_ansi(false)
                .with_writer(move || palaver_admin::logfile::LogWriter(f.clone()))
                .try_init();
            tokio::spawn(async {
                let Ok(mut usr1) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                else {
                    return;
                };
                while usr1.recv().await.is_some() {
                    match palaver_admin::logfile::reopen() {
                        Ok(p) => tracing::info!(path = %p.display(), "log file reopened"),
                        Err(e) => eprintln!("palaver: reopening the log file failed: {e}"),
                    }
                }
            });
        }
        None => init_logging(&config.loglevel),
    }
    let data = config.data_dir.clone();
    let db = db_location(&config);
    // Metrics recorded while starting count too.
    palaver_http::metrics::install();
    let mut server = palaver_server::Server::start(config, &palaver_admin::registry()).await?;
    palaver_http::start(&mut server);
    let s2s = palaver_s2s::start(&mut server).await?;
    let control = palaver_admin::control::start(&mut server)?;
    println!(
        "palaver {} serving {}",
        env!("CARGO_PKG_VERSION"),
        server.core.config().hosts.join(", ")
    );
    for (module, tls, addr) in &server.listeners {
        println!(
            "  listening on {addr} ({module:?}{})",
            if *tls { ", direct TLS" } else { "" }
        );
    }
    for (tls, addr) in &s2s.s2s_addrs {
        println!(
            "  listening on {addr} (S2s{})",
            if *tls { ", direct TLS" } else { "" }
        );
    }
    for addr in &s2s.component_addrs {
        println!("  listening on {addr} (Component)");
    }
    println!("  control socket: {}", control.display());
    println!("  data directory: {}", data.display());
    println!("  database: {db}");
    reload_on_sighup(server.core.clone());
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// `SIGHUP` reloads the configuration (like `palaver ctl reload_config`):
/// modules, hosts, authentication, access rules and the certificates
/// (renewed by certbot, say); connected clients stay connected. Without a
/// configuration file (embedded defaults) it reloads the certificates only.
/// The outcome goes to the log.
fn reload_on_sighup(core: std::sync::Arc<palaver_server::Core>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if core.config().source.is_none() {
                            tracing::info!(
                                "SIGHUP: no configuration file to read again; reloading certificates"
                            );
                            let _ = core.reload_certificates();
                            continue;
                        }
                        tracing::info!("SIGHUP: reloading the configuration");
                        // The outcome (or the error) is logged by the reload.
                        let _ = core.reload_config().await;
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    let _ = core;
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
    let config = load_config(path.as_ref(), NoConfig::DefaultsIfTheirDataExists)?;
    init_logging("warn");
    let out = match cmd {
        UserCmd::Add { jid, password, .. } => {
            let (host, user) = account(&jid)?;
            let password = password_for(&jid, password, true)?;
            let args = json!({ "user": user, "host": host, "password": password });
            command(config, "register", args).await?
        }
        UserCmd::Passwd { jid, password, .. } => {
            let (host, user) = account(&jid)?;
            let password = password_for(&jid, password, true)?;
            let args = json!({ "user": user, "host": host, "newpass": password });
            command(config, "change_password", args).await?
        }
        UserCmd::Del { jid, .. } => {
            let (host, user) = account(&jid)?;
            command(config, "unregister", json!({ "user": user, "host": host })).await?
        }
        UserCmd::List { host, .. } => {
            let hosts = match host {
                Some(h) => vec![h],
                None => config.hosts.clone(),
            };
            let mut all = Vec::new();
            for h in hosts {
                let users =
                    command(config.clone(), "registered_users", json!({ "host": h })).await?;
                for u in users
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    all.push(Value::String(format!("{u}@{h}")));
                }
            }
            Value::Array(all)
        }
    };
    print_result(&out);
    Ok(())
}

/// `palaver ctl [--config FILE] COMMAND ARG…`: any command of the table.
/// `token create --scope S [--scope S…] [--description D]`, `token list`,
/// `token revoke ID`: the api_token_* commands (scopes repeated or `a;b`).
fn token_alias(words: Vec<String>) -> Result<Vec<String>> {
    if words.first().map(String::as_str) != Some("token") {
        return Ok(words);
    }
    let sub = words.get(1).map(String::as_str).unwrap_or("");
    let name = match sub {
        "create" => "api_token_create",
        "list" => "api_token_list",
        "revoke" => "api_token_revoke",
        _ => bail!("usage: palaver ctl token create --scope SCOPE… | token list | token revoke ID"),
    };
    let mut out = vec![name.to_string()];
    let mut scopes = Vec::new();
    let mut it = words.into_iter().skip(2);
    while let Some(w) = it.next() {
        if w == "--scope" {
            scopes.push(it.next().ok_or_else(|| anyhow!("--scope needs a value"))?);
        } else if let Some(v) = w.strip_prefix("--scope=") {
            scopes.push(v.to_string());
        } else {
            out.push(w);
        }
    }
    if !scopes.is_empty() {
        out.push(format!("--scope={}", scopes.join(";")));
    }
    Ok(out)
}

async fn ctl(config: Option<PathBuf>, words: Vec<String>) -> Result<ExitCode> {
    // `--config` may also come after the command.
    let mut config = config;
    let mut rest = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        if w == "--config" || w == "-c" {
            config = Some(PathBuf::from(
                it.next().ok_or_else(|| anyhow!("{w} needs a file"))?,
            ));
        } else if let Some(p) = w.strip_prefix("--config=") {
            config = Some(PathBuf::from(p));
        } else {
            rest.push(w);
        }
    }
    let rest = token_alias(rest)?;
    let Some((name, args)) = rest.split_first() else {
        eprintln!(
            "usage: palaver ctl COMMAND [ARG…]\n\nCommands:\n{}",
            palaver_admin::commands::list()
        );
        return Ok(ExitCode::from(2));
    };
    if name == "help" {
        match args.first() {
            None => print!("Commands:\n{}", palaver_admin::commands::list()),
            Some(c) => match palaver_admin::find(c) {
                Some(cmd) => print!("{}", cmd.help()),
                None => bail!("unknown command `{c}` (`palaver ctl help` lists the commands)"),
            },
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cmd = palaver_admin::find(name).ok_or_else(|| {
        anyhow!("unknown command `{name}` (`palaver ctl help` lists the commands)")
    })?;
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", cmd.help());
        return Ok(ExitCode::SUCCESS);
    }
    let mut map =
        palaver_admin::command::args_from_words(cmd, args).map_err(|e| anyhow!(e.message))?;
    for spec in cmd
        .args
        .iter()
        .filter(|a| a.ty == palaver_admin::ArgType::Path)
    {
        if let Some(Value::String(p)) = map.get(spec.name)
            && p != "-"
        {
            let abs = absolute(std::path::Path::new(p))?;
            map.insert(spec.name.to_string(), Value::String(abs));
        }
    }
    let config = load_config(config.as_ref(), NoConfig::DefaultsIfTheirDataExists)?;
    init_logging("warn");
    let out = command(config, cmd.name, Value::Object(map)).await?;
    if let Some(xml) = out.get("xml").and_then(Value::as_str) {
        print!("{xml}");
        print_report(&out, true);
    } else {
        print_result(&out);
    }
    Ok(ExitCode::SUCCESS)
}
