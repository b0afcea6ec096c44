//! The YAML configuration, with ejabberd.yml's keys and meaning.
//!
//! An ejabberd.yml is accepted as it is: every option of ejabberd's reference
//! (versions 23.01 to today, see [`ejabberd`]) is either implemented with
//! ejabberd's meaning or accepted with one warning naming it. Keys that no
//! ejabberd version has, and bad values, are errors naming the key, line and
//! column. Before options are read, the file goes through what ejabberd does
//! to it: `include_config_file`, `define_macro` (and `EJABBERD_MACRO_<NAME>`
//! environment variables), plus Palaver's `${VAR}` environment substitution.
//!
//! Per-host options (`host_config`, `append_host_config`) cover `modules`,
//! `acl`, `access_rules`, `shaper_rules` and `auth_method`: ask with
//! [`Config::modules_for`], [`Config::access_on`], [`Config::acl_match_on`].

mod acl;
mod ejabberd;
mod listen;
mod modules;
mod yaml;

pub use acl::{
    AccessAction, AccessRule, AclRule, AclSpec, Matcher, Pattern, Shaper, ShaperRule, Subject,
    glob_match, is_glob,
};
pub use listen::{INFINITE_STANZA, ListenModule, Listener};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
use yaml::{Files, Node, Pos, V, bad};

/// A configuration error, naming the key and line when known.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct ConfigError {
    /// Human-readable message, including key and line.
    pub message: String,
}

impl ConfigError {
    /// An error about `key` at `line`.
    pub fn at(key: &str, line: u64, msg: impl std::fmt::Display) -> Self {
        ConfigError {
            message: format!("config key `{key}` (line {line}): {msg}"),
        }
    }
    /// An error without position.
    pub fn msg(msg: impl Into<String>) -> Self {
        ConfigError {
            message: msg.into(),
        }
    }
}

/// Warnings collected while reading (one line each, naming the key and line).
#[derive(Debug, Default)]
pub(crate) struct Warnings(Vec<String>);

impl Warnings {
    pub(crate) fn push(&mut self, files: &Files, key: &str, pos: Pos, msg: &str) {
        self.0.push(format!(
            "config key `{key}` ({}): {msg}",
            files.describe(pos)
        ));
    }
}

/// Which storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbKind {
    /// Embedded SQLite file (ejabberd's `mnesia` maps here).
    #[default]
    Sqlite,
    /// An SQL server (`sql_type`).
    Sql,
}

/// SQL server dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    /// PostgreSQL.
    Pgsql,
}

/// How passwords are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// Accounts stored in our database (ejabberd's `internal`, `mnesia` and `sql`).
    #[default]
    Internal,
}

/// Options of one enabled module, with the line it was configured on.
#[derive(Debug, Clone)]
pub struct ModuleConfig {
    /// Module name (e.g. `mod_ping`).
    pub name: String,
    /// Its options (`null` when none were given).
    pub options: serde_json::Value,
    /// Line in the config file (0 for defaults).
    pub line: u64,
}

/// SQL connection settings (PostgreSQL).
#[derive(Debug, Clone, Default)]
pub struct SqlConfig {
    /// Server host.
    pub server: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Database.
    pub database: Option<String>,
    /// User.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Pool size.
    pub pool_size: Option<u32>,
    /// Full URL, overriding the parts.
    pub url: Option<String>,
    /// Seconds a request waits for a database connection (`sql_connect_timeout`).
    pub connect_timeout: Option<u64>,
    /// Seconds a query may run (`sql_query_timeout`).
    pub query_timeout: Option<u64>,
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl SqlConfig {
    /// Pool settings, with defaults for what is not configured.
    pub fn settings(&self) -> palaver_storage::postgres::PgSettings {
        let d = palaver_storage::postgres::PgSettings::default();
        palaver_storage::postgres::PgSettings {
            pool_size: self.pool_size.unwrap_or(d.pool_size),
            connect_timeout: self
                .connect_timeout
                .map(std::time::Duration::from_secs)
                .unwrap_or(d.connect_timeout),
            query_timeout: self
                .query_timeout
                .map(std::time::Duration::from_secs)
                .unwrap_or(d.query_timeout),
        }
    }

    /// Default server, port, database and user when only parts are given.
    pub const DEFAULT_SERVER: &str = "localhost";
    /// Default port.
    pub const DEFAULT_PORT: u16 = 5432;
    /// Default database and user name.
    pub const DEFAULT_NAME: &str = "palaver";

    /// `sql_url`, or a `postgres://` URL built from the parts.
    pub fn url(&self) -> String {
        if let Some(u) = &self.url {
            return u.clone();
        }
        let server = self.server.as_deref().unwrap_or(Self::DEFAULT_SERVER);
        let server = if server.contains(':') && !server.starts_with('[') {
            format!("[{server}]")
        } else {
            server.to_string()
        };
        let user = url_escape(self.username.as_deref().unwrap_or(Self::DEFAULT_NAME));
        let auth = match self.password.as_deref() {
            Some(p) if !p.is_empty() => format!("{user}:{}", url_escape(p)),
            _ => user,
        };
        format!(
            "postgres://{auth}@{server}:{}/{}",
            self.port.unwrap_or(Self::DEFAULT_PORT),
            url_escape(self.database.as_deref().unwrap_or(Self::DEFAULT_NAME))
        )
    }
}

impl Config {
    /// The PostgreSQL URL when `default_db: sql` (from `sql_url` or the
    /// `sql_server`/`sql_port`/`sql_database`/`sql_username`/`sql_password` parts).
    pub fn sql_url(&self) -> Option<String> {
        (self.default_db == DbKind::Sql).then(|| self.sql.url())
    }
}

/// Options that may differ per virtual host (`host_config`).
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Enabled modules, in config order.
    pub modules: Vec<ModuleConfig>,
    /// ACL definitions.
    pub acl: BTreeMap<String, AclSpec>,
    /// Access rules, each an ordered list.
    pub access_rules: BTreeMap<String, AccessRule>,
    /// Shaper rules (parsed, not enforced yet).
    pub shaper_rules: BTreeMap<String, ShaperRule>,
    /// Authentication method.
    pub auth_method: AuthMethod,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Virtual hosts, normalised.
    pub hosts: Vec<String>,
    /// Log level filter.
    pub loglevel: String,
    /// PEM files with certificate chains and keys; may be globs
    /// (`/etc/letsencrypt/live/*/fullchain.pem`), expanded when certificates load.
    pub certfiles: Vec<PathBuf>,
    /// Data directory (SQLite file, generated certificates, uploads).
    pub data_dir: PathBuf,
    /// Listeners (s2s and component ones are kept but not served yet).
    pub listen: Vec<Listener>,
    /// Authentication method (global; see [`Config::host_options`]).
    pub auth_method: AuthMethod,
    /// PBKDF2 iterations for new SCRAM credentials.
    pub scram_iterations: u32,
    /// Storage backend.
    pub default_db: DbKind,
    /// SQLite file.
    pub sqlite_path: PathBuf,
    /// SQL dialect when `default_db: sql`.
    pub sql_type: Option<SqlType>,
    /// SQL connection.
    pub sql: SqlConfig,
    /// Modules enabled on hosts without their own list, in config order
    /// (per host: [`Config::modules_for`]).
    pub modules: Vec<ModuleConfig>,
    /// Global ACL definitions.
    pub acl: BTreeMap<String, AclSpec>,
    /// Global access rules: rule name → ordered entries.
    pub access_rules: BTreeMap<String, AccessRule>,
    /// Global shaper rules (parsed, not enforced yet).
    pub shaper_rules: BTreeMap<String, ShaperRule>,
    /// Traffic shapers by name (parsed, not enforced yet).
    pub shapers: BTreeMap<String, Shaper>,
    /// SASL mechanisms the operator disabled (`disable_sasl_mechanisms`, upper case).
    pub disable_sasl_mechanisms: Vec<String>,
    /// Hosts with options of their own (`host_config`, `append_host_config`).
    pub host_options: BTreeMap<String, HostOptions>,
    /// Warnings from reading the file (ignored ejabberd options…), one line each.
    pub warnings: Vec<String>,
    /// The file this configuration was read from.
    pub source: Option<PathBuf>,
}

/// Modules enabled when the config does not list any.
pub const DEFAULT_MODULES: &[&str] = &[
    "mod_disco",
    "mod_ping",
    "mod_version",
    "mod_time",
    "mod_roster",
    "mod_offline",
    "mod_vcard",
    "mod_private",
    "mod_last",
    "mod_blocking",
    "mod_register",
    "mod_announce",
    "mod_stream_mgmt",
];

fn default_listeners() -> Vec<Listener> {
    let mk = |port: u16, module: ListenModule, tls: bool| {
        let mut l = Listener::new(port, module);
        l.tls = tls;
        l.starttls = !tls;
        l
    };
    vec![
        mk(5222, ListenModule::C2s, false),
        mk(5223, ListenModule::C2s, true),
        mk(5280, ListenModule::Http, false),
    ]
}

/// Keys Palaver reads at the top level (besides ejabberd's it ignores).
const HOST_LEVEL: &[&str] = &[
    "modules",
    "acl",
    "access_rules",
    "shaper_rules",
    "auth_method",
];

/// SASL mechanisms Palaver may offer (for `disable_sasl_mechanisms`).
const OFFERED_MECHANISMS: &[&str] = &[
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512",
    "SCRAM-SHA-512-PLUS",
];

struct Reader<'a> {
    files: Files,
    warnings: Warnings,
    /// (host or global, rule kind, rule name, position) to check for undefined ACLs.
    rule_refs: Vec<(Option<String>, &'static str, String, Pos)>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Config {
    /// The embedded defaults: host `localhost`, data in `./palaver-data`.
    pub fn defaults() -> Config {
        let data_dir = PathBuf::from("palaver-data");
        Config {
            hosts: vec!["localhost".into()],
            loglevel: "info".into(),
            certfiles: vec![],
            sqlite_path: data_dir.join("palaver.db"),
            data_dir,
            listen: default_listeners(),
            auth_method: AuthMethod::Internal,
            scram_iterations: 4096,
            default_db: DbKind::Sqlite,
            sql_type: None,
            sql: SqlConfig::default(),
            modules: DEFAULT_MODULES
                .iter()
                .map(|m| ModuleConfig {
                    name: m.to_string(),
                    options: serde_json::Value::Null,
                    line: 0,
                })
                .collect(),
            acl: BTreeMap::new(),
            access_rules: BTreeMap::new(),
            shaper_rules: BTreeMap::new(),
            shapers: BTreeMap::new(),
            disable_sasl_mechanisms: Vec::new(),
            host_options: BTreeMap::new(),
            warnings: Vec::new(),
            source: None,
        }
    }

    /// Read and validate a config file. Relative paths in it resolve against
    /// the current directory, like ejabberd's; included files against the
    /// including file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::msg(format!("cannot read {}: {e}", path.display())))?;
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::parse_full(&text, Some(path), &|k| std::env::var(k).ok(), &vars)
            .map_err(|e| ConfigError::msg(format!("{}: {}", path.display(), e.message)))
    }

    /// Parse and validate config text (environment variables are read for
    /// `${VAR}` and `EJABBERD_MACRO_*`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::parse_full(text, None, &|k| std::env::var(k).ok(), &vars)
    }

    /// Parse with an explicit environment (`${VAR}` and `EJABBERD_MACRO_*`).
    pub fn parse_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        Self::parse_full(text, None, &lookup, &vars)
    }

    fn parse_full(
        text: &str,
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        env_vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut r = Reader {
            files: Files(vec![path.map(Path::to_path_buf)]),
            warnings: Warnings::default(),
            rule_refs: Vec::new(),
            env,
        };
        let root = yaml::parse_text(text, 0, &r.files)?;
        let mut stack = path
            .map(|p| vec![std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())])
            .unwrap_or_default();
        let mut entries = yaml::top_entries(root, &mut r.files, 0, &mut stack)?;
        let macros = yaml::Macros::take(&mut entries, env_vars, &r.files)?;
        yaml::check_duplicates(&entries, &r.files)?;
        for (k, v) in &mut entries {
            let key = k.scalar().unwrap_or_default();
            yaml::substitute_env(v, &key, &r.files, r.env)?;
            macros.apply(v, &key)?;
        }
        let mut c = Config::defaults();
        c.source = path.map(Path::to_path_buf);
        r.read(&mut c, &entries)?;
        c.warnings = r.warnings.0;
        Ok(c)
    }

    /// Options of `host` (the global ones for hosts without `host_config`).
    pub fn host_options(&self, host: &str) -> HostOptions {
        match self.host_options.get(host) {
            Some(h) => h.clone(),
            None => HostOptions {
                modules: self.modules.clone(),
                acl: self.acl.clone(),
                access_rules: self.access_rules.clone(),
                shaper_rules: self.shaper_rules.clone(),
                auth_method: self.auth_method,
            },
        }
    }

    /// The modules enabled on `host`, in config order (its `host_config`
    /// list, or the global one).
    pub fn modules_for(&self, host: &str) -> &[ModuleConfig] {
        match self.host_options.get(host) {
            Some(h) => &h.modules,
            None => &self.modules,
        }
    }

    /// Options of module `name` on `host`, when it is enabled there.
    pub fn module_on(&self, host: &str, name: &str) -> Option<&ModuleConfig> {
        self.modules_for(host).iter().find(|m| m.name == name)
    }

    fn scope(
        &self,
        host: Option<&str>,
    ) -> (&BTreeMap<String, AclSpec>, &BTreeMap<String, AccessRule>) {
        match host.and_then(|h| self.host_options.get(h)) {
            Some(h) => (&h.acl, &h.access_rules),
            None => (&self.acl, &self.access_rules),
        }
    }

    /// Whether `jid` (bare or full) matches the named global ACL (`all`, `none` included).
    pub fn acl_match(&self, acl: &str, jid: &str) -> bool {
        self.acl_match_as(None, acl, Subject::jid(jid))
    }

    /// Whether `jid` matches the named ACL as defined for `host`.
    pub fn acl_match_on(&self, host: &str, acl: &str, jid: &str) -> bool {
        self.acl_match_as(Some(host), acl, Subject::jid(jid))
    }

    /// Whether `who` (JID and/or address) matches the named ACL (of `host`, or global).
    pub fn acl_match_as(&self, host: Option<&str>, acl: &str, who: Subject<'_>) -> bool {
        let env = acl::Env {
            hosts: &self.hosts,
            acl: self.scope(host).0,
        };
        env.rule_matches(&AclRule::Acl(acl.to_string()), who, 0)
    }

    /// Evaluate a global access rule for `jid`: the first entry whose conditions
    /// all match decides; deny when none does; `default` when the rule is absent.
    pub fn access(&self, rule: &str, jid: &str, default: bool) -> bool {
        self.access_as(None, rule, Subject::jid(jid), default)
    }

    /// Evaluate an access rule as defined for `host` (see [`Config::access`]).
    pub fn access_on(&self, host: &str, rule: &str, jid: &str, default: bool) -> bool {
        self.access_as(Some(host), rule, Subject::jid(jid), default)
    }

    /// Evaluate an access rule for a JID and/or an address (`ip` ACLs).
    pub fn access_as(
        &self,
        host: Option<&str>,
        rule: &str,
        who: Subject<'_>,
        default: bool,
    ) -> bool {
        match rule {
            "all" => return true,
            "none" => return false,
            _ => {}
        }
        let (acl, rules) = self.scope(host);
        let Some(list) = rules.get(rule) else {
            return default;
        };
        let env = acl::Env {
            hosts: &self.hosts,
            acl,
        };
        for (action, conds) in &list.entries {
            if env.all_match(conds, who) {
                return *action == AccessAction::Allow;
            }
        }
        false
    }

    /// The value of a shaper rule for `jid` on `host` (first matching entry).
    pub fn shaper_rule_value(&self, host: Option<&str>, rule: &str, jid: &str) -> Option<&str> {
        let h = host.and_then(|h| self.host_options.get(h));
        let rules = h.map_or(&self.shaper_rules, |h| &h.shaper_rules);
        let env = acl::Env {
            hosts: &self.hosts,
            acl: h.map_or(&self.acl, |h| &h.acl),
        };
        rules.get(rule)?.entries.iter().find_map(|(v, conds)| {
            env.all_match(conds, Subject::jid(jid))
                .then_some(v.as_str())
        })
    }
}

fn loglevel(n: &Node, files: &Files) -> Result<String, ConfigError> {
    let ok = [
        "none",
        "emergency",
        "alert",
        "critical",
        "error",
        "warning",
        "warn",
        "notice",
        "info",
        "debug",
        "trace",
    ];
    let v = match &n.v {
        V::Int(0) => "none".to_string(),
        V::Int(1) => "critical".to_string(),
        V::Int(2) => "error".to_string(),
        V::Int(3) => "warning".to_string(),
        V::Int(4) => "info".to_string(),
        V::Int(5) => "debug".to_string(),
        V::Str(s) if ok.contains(&s.as_str()) => s.clone(),
        _ => {
            return Err(ConfigError::msg(format!(
                "config key `loglevel` ({}): `{}` is not one of {}",
                files.describe(n.pos),
                n.scalar().unwrap_or_default(),
                ok.join(", ")
            )));
        }
    };
    Ok(match v.as_str() {
        "warning" => "warn".into(),
        "critical" | "emergency" | "alert" => "error".into(),
        "notice" => "info".into(),
        "none" => "off".into(),
        _ => v,
    })
}

fn strings(n: &Node, key: &str, files: &Files) -> Result<Vec<Node>, ConfigError> {
    match &n.v {
        V::Seq(items) => {
            for i in items {
                listen::get_string(i, key, files)?;
            }
            Ok(items.clone())
        }
        V::Null => Ok(Vec::new()),
        _ => {
            listen::get_string(n, key, files)?;
            Ok(vec![n.clone()])
        }
    }
}

fn entries_of<'n>(
    n: &'n Node,
    key: &str,
    files: &Files,
) -> Result<&'n [(Node, Node)], ConfigError> {
    match &n.v {
        V::Map(e) => Ok(e),
        V::Null => Ok(&[]),
        _ => Err(bad(files, key, n, "a mapping")),
    }
}

impl Reader<'_> {
    fn warn(&mut self, key: &str, pos: Pos, msg: &str) {
        self.warnings.push(&self.files, key, pos, msg);
    }

    fn err(&self, key: &str, pos: Pos, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError::msg(format!(
            "config key `{key}` ({}): {msg}",
            self.files.describe(pos)
        ))
    }

    fn read(&mut self, c: &mut Config, entries: &[(Node, Node)]) -> Result<(), ConfigError> {
        let mut sql_parts = false;
        let mut host_config = None;
        let mut append_host_config = None;
        let mut saw_hosts = false;
        let mut global = HostOptions {
            modules: c.modules.clone(),
            ..HostOptions::default()
        };
        let mut extra_certs = Vec::new();
        let mut listen_seen = std::collections::HashSet::new();
        for (k, v) in entries {
            let key = k.scalar().unwrap_or_default();
            let files = &self.files;
            match key.as_str() {
                "hosts" => {
                    saw_hosts = true;
                    c.hosts.clear();
                    for h in strings(v, "hosts", files)? {
                        let s = h.scalar().unwrap_or_default();
                        let norm = jid::BareJid::new(&s)
                            .ok()
                            .filter(|j| j.node().is_none())
                            .map(|j| j.domain().to_string())
                            .ok_or_else(|| {
                                self.err("hosts", h.pos, format!("`{s}` is not a valid domain"))
                            })?;
                        if c.hosts.contains(&norm) {
                            return Err(self.err(
                                "hosts",
                                h.pos,
                                format!("`{norm}` is listed twice"),
                            ));
                        }
                        c.hosts.push(norm);
                    }
                }
                "loglevel" => c.loglevel = loglevel(v, files)?,
                "certfiles" => {
                    c.certfiles = strings(v, "certfiles", files)?
                        .iter()
                        .map(|n| PathBuf::from(n.scalar().unwrap_or_default()))
                        .collect();
                }
                "data_dir" => c.data_dir = PathBuf::from(listen::get_string(v, "data_dir", files)?),
                "sqlite_path" => {
                    c.sqlite_path = PathBuf::from(listen::get_string(v, "sqlite_path", files)?)
                }
                "listen" => {
                    c.listen.clear();
                    let V::Seq(items) = &v.v else {
                        return Err(bad(files, "listen", v, "a list of listeners"));
                    };
                    for item in items {
                        let parsed = listen::parse_listener(
                            item,
                            files,
                            &mut self.warnings,
                            &mut extra_certs,
                        )?;
                        if let Some((l, pos)) = parsed {
                            if l.port != 0 && !listen_seen.insert((l.ip, l.port)) {
                                return Err(self.err(
                                    "listen.port",
                                    pos,
                                    format!("{}:{} is listed twice", l.ip, l.port),
                                ));
                            }
                            c.listen.push(l);
                        }
                    }
                }
                "auth_scram_iterations" => {
                    let i = listen::get_uint(v, "auth_scram_iterations", files)?;
                    if !(4096..=u64::from(u32::MAX)).contains(&i) {
                        return Err(self.err(
                            "auth_scram_iterations",
                            v.pos,
                            "must be at least 4096 (RFC 7677)",
                        ));
                    }
                    c.scram_iterations = i as u32;
                }
                "default_db" => {
                    c.default_db = match v.as_str() {
                        Some("sqlite") => DbKind::Sqlite,
                        Some("sql") => DbKind::Sql,
                        Some("mnesia") => {
                            self.warn("default_db", v.pos, "Palaver's embedded database is SQLite (data_dir): used instead of mnesia");
                            DbKind::Sqlite
                        }
                        _ => {
                            return Err(bad(files, "default_db", v, "`sqlite`, `sql` or `mnesia`"));
                        }
                    }
                }
                "sql_type" => {
                    c.sql_type = match v.as_str() {
                        Some("pgsql") => Some(SqlType::Pgsql),
                        Some(other @ ("mysql" | "sqlite" | "mssql" | "odbc")) => {
                            self.warn("sql_type", v.pos, &format!("`{other}` is not supported by Palaver (PostgreSQL only): ignored"));
                            None
                        }
                        _ => return Err(bad(files, "sql_type", v, "`pgsql`")),
                    }
                }
                "sql_server" => {
                    sql_parts = true;
                    c.sql.server = Some(listen::get_string(v, &key, files)?)
                }
                "sql_port" => {
                    sql_parts = true;
                    let p = listen::get_uint(v, &key, files)?;
                    c.sql.port =
                        Some(u16::try_from(p).map_err(|_| bad(files, &key, v, "a port number"))?);
                }
                "sql_database" => c.sql.database = Some(listen::get_string(v, &key, files)?),
                "sql_username" => c.sql.username = Some(listen::get_string(v, &key, files)?),
                "sql_password" => c.sql.password = Some(listen::get_string(v, &key, files)?),
                "sql_url" => c.sql.url = Some(listen::get_string(v, &key, files)?),
                "sql_pool_size" => {
                    let n = listen::get_uint(v, &key, files)?;
                    c.sql.pool_size =
                        Some(u32::try_from(n).map_err(|_| bad(files, &key, v, "a pool size"))?);
                }
                "sql_connect_timeout" => {
                    c.sql.connect_timeout = Some(listen::get_seconds(v, &key, files)?)
                }
                "sql_query_timeout" => {
                    c.sql.query_timeout = Some(listen::get_seconds(v, &key, files)?)
                }
                "shaper" => {
                    for (sk, sv) in entries_of(v, "shaper", files)? {
                        let name = sk.scalar().unwrap_or_default();
                        let s = acl::parse_shaper(&name, sv, files)?;
                        c.shapers.insert(name, s);
                    }
                    self.warn(
                        "shaper",
                        k.pos,
                        "parsed and kept, but traffic shaping is not enforced yet",
                    );
                }
                "disable_sasl_mechanisms" => {
                    c.disable_sasl_mechanisms = strings(v, &key, files)?
                        .iter()
                        .map(|n| n.scalar().unwrap_or_default().to_uppercase())
                        .collect();
                    let offered: Vec<&String> = c
                        .disable_sasl_mechanisms
                        .iter()
                        .filter(|m| OFFERED_MECHANISMS.contains(&m.as_str()))
                        .collect();
                    if !offered.is_empty() {
                        let list: Vec<&str> = offered.iter().map(|s| s.as_str()).collect();
                        self.warn(
                            &key,
                            k.pos,
                            &format!("not enforced yet: Palaver still offers {}", list.join(", ")),
                        );
                    }
                }
                "auth_password_format" => match v.as_str() {
                    Some("scram") => {}
                    Some("plain") => self.warn(
                        &key,
                        v.pos,
                        "Palaver stores SCRAM credentials only, never passwords: ignored",
                    ),
                    _ => return Err(bad(files, &key, v, "`scram` or `plain`")),
                },
                "host_config" => host_config = Some((k.clone(), v.clone())),
                "append_host_config" => append_host_config = Some((k.clone(), v.clone())),
                k2 if HOST_LEVEL.contains(&k2) => self.host_level(&mut global, None, k, v)?,
                other if ejabberd::TOP_LEVEL.binary_search(&other).is_ok() => {
                    self.warn(other, k.pos, "ejabberd option not used by Palaver: ignored")
                }
                other => {
                    return Err(self.err(
                        other,
                        k.pos,
                        "unknown option (not a Palaver or ejabberd option)",
                    ));
                }
            }
        }
        if !saw_hosts || c.hosts.is_empty() {
            return Err(ConfigError::msg(
                "config key `hosts`: at least one host is required",
            ));
        }
        c.certfiles
            .extend(extra_certs.into_iter().map(PathBuf::from));
        let _ = sql_parts;
        c.modules = global.modules.clone();
        c.acl = global.acl.clone();
        c.access_rules = global.access_rules.clone();
        c.shaper_rules = global.shaper_rules.clone();
        c.auth_method = global.auth_method;
        if !entries
            .iter()
            .any(|(k, _)| k.as_str() == Some("sqlite_path"))
        {
            c.sqlite_path = c.data_dir.join("palaver.db");
        }
        if let Some((hk, hv)) = host_config {
            for (host, opts) in entries_of(&hv, "host_config", &self.files)? {
                let Some(h) = self.host_key(c, host, "host_config")? else {
                    continue;
                };
                let mut ho = c
                    .host_options
                    .remove(&h)
                    .unwrap_or_else(|| c.host_options(&h));
                for (ok, ov) in entries_of(opts, &format!("host_config.{h}"), &self.files)? {
                    self.host_level(&mut ho, Some(&h), ok, ov)?;
                }
                c.host_options.insert(h, ho);
            }
            let _ = hk;
        }
        if let Some((_, av)) = append_host_config {
            for (host, opts) in entries_of(&av, "append_host_config", &self.files)? {
                let Some(h) = self.host_key(c, host, "append_host_config")? else {
                    continue;
                };
                let mut ho = c
                    .host_options
                    .remove(&h)
                    .unwrap_or_else(|| c.host_options(&h));
                let mut add = HostOptions::default();
                for (ok, ov) in entries_of(opts, &format!("append_host_config.{h}"), &self.files)? {
                    self.host_level(&mut add, Some(&h), ok, ov)?;
                }
                for m in add.modules {
                    ho.modules.retain(|x| x.name != m.name);
                    ho.modules.push(m);
                }
                ho.acl.extend(add.acl);
                ho.access_rules.extend(add.access_rules);
                ho.shaper_rules.extend(add.shaper_rules);
                c.host_options.insert(h, ho);
            }
        }
        self.check_sql(c)?;
        // Access and shaper rules naming ACLs that are not defined match nobody (as in ejabberd).
        for (host, kind, name, pos) in std::mem::take(&mut self.rule_refs) {
            let ho = host.as_deref().and_then(|h| c.host_options.get(h));
            let acl = ho.map_or(&c.acl, |h| &h.acl);
            let rules: Vec<&AclRule> = if kind == "access_rules" {
                ho.map_or(&c.access_rules, |h| &h.access_rules)
                    .get(&name)
                    .map(|r| r.entries.iter().flat_map(|(_, c)| c.iter()).collect())
                    .unwrap_or_default()
            } else {
                ho.map_or(&c.shaper_rules, |h| &h.shaper_rules)
                    .get(&name)
                    .map(|r| r.entries.iter().flat_map(|(_, c)| c.iter()).collect())
                    .unwrap_or_default()
            };
            let missing = acl::undefined_acls(rules.into_iter(), acl);
            if !missing.is_empty() {
                let key = match &host {
                    Some(h) => format!("host_config.{h}.{kind}.{name}"),
                    None => format!("{kind}.{name}"),
                };
                self.warn(
                    &key,
                    pos,
                    &format!(
                        "acl {} is not defined: matches nobody",
                        missing
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        Ok(())
    }

    /// A `host_config` key: a served host (others are warned and skipped).
    fn host_key(
        &mut self,
        c: &Config,
        host: &Node,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        let s = host.scalar().unwrap_or_default();
        let norm = s.to_lowercase();
        if c.hosts.contains(&norm) {
            Ok(Some(norm))
        } else {
            self.warn(
                &format!("{key}.{s}"),
                host.pos,
                "not a host listed in `hosts`: ignored",
            );
            Ok(None)
        }
    }

    /// An option that may be set globally or per host.
    fn host_level(
        &mut self,
        ho: &mut HostOptions,
        host: Option<&str>,
        k: &Node,
        v: &Node,
    ) -> Result<(), ConfigError> {
        let key = k.scalar().unwrap_or_default();
        let full = match host {
            Some(h) => format!("host_config.{h}.{key}"),
            None => key.clone(),
        };
        let files = &self.files;
        match key.as_str() {
            "modules" => {
                let mut list: Vec<ModuleConfig> = Vec::new();
                for (mk, mv) in entries_of(v, &full, files)? {
                    let name = mk.scalar().unwrap_or_default();
                    if list.iter().any(|m| m.name == name) {
                        return Err(self.err(&format!("{full}.{name}"), mk.pos, "listed twice"));
                    }
                    list.push(ModuleConfig {
                        name,
                        options: mv.to_json(),
                        line: mk.pos.line,
                    });
                }
                ho.modules = list;
            }
            "acl" => {
                ho.acl.clear();
                for (ak, av) in entries_of(v, &full, files)? {
                    let name = ak.scalar().unwrap_or_default();
                    let spec = acl::parse_acl(&name, av, files, &mut self.warnings)?;
                    ho.acl.insert(name, spec);
                }
            }
            "access_rules" => {
                ho.access_rules.clear();
                for (rk, rv) in entries_of(v, &full, files)? {
                    let name = rk.scalar().unwrap_or_default();
                    let rule = acl::parse_access_rule(&name, rv, files)?;
                    self.rule_refs.push((
                        host.map(str::to_string),
                        "access_rules",
                        name.clone(),
                        rk.pos,
                    ));
                    ho.access_rules.insert(name, rule);
                }
            }
            "shaper_rules" => {
                ho.shaper_rules.clear();
                for (rk, rv) in entries_of(v, &full, files)? {
                    let name = rk.scalar().unwrap_or_default();
                    let rule = acl::parse_shaper_rule(&name, rv, files)?;
                    self.rule_refs.push((
                        host.map(str::to_string),
                        "shaper_rules",
                        name.clone(),
                        rk.pos,
                    ));
                    ho.shaper_rules.insert(name, rule);
                }
                self.warn(&full, k.pos, "parsed and kept, but traffic shaping and limits from shaper_rules are not enforced yet");
            }
            "auth_method" => {
                let methods = strings(v, &full, files)?;
                for m in &methods {
                    match m.as_str() {
                        Some("internal" | "mnesia" | "sql") => {}
                        _ => {
                            return Err(self.err(&full, m.pos, format!(
                                "`{}` is not supported: Palaver checks passwords against its own database (internal, mnesia or sql)",
                                m.scalar().unwrap_or_default()
                            )));
                        }
                    }
                }
                ho.auth_method = AuthMethod::Internal;
            }
            "hosts"
            | "listen"
            | "host_config"
            | "append_host_config"
            | "include_config_file"
            | "define_macro"
                if host.is_some() =>
            {
                return Err(self.err(&full, k.pos, "cannot be set per host"));
            }
            other
                if host.is_some()
                    && (ejabberd::TOP_LEVEL.binary_search(&other).is_ok()
                        || matches!(
                            other,
                            "data_dir" | "sqlite_path" | "sql_url" | "auth_scram_iterations"
                        )) =>
            {
                self.warn(&full, k.pos, "not used per host by Palaver: ignored (set it at the top level if Palaver supports it)");
            }
            other => return Err(self.err(&full, k.pos, format!("unknown option `{other}`"))),
        }
        Ok(())
    }

    fn check_sql(&self, c: &Config) -> Result<(), ConfigError> {
        if c.default_db != DbKind::Sql {
            return Ok(());
        }
        if c.sql_type != Some(SqlType::Pgsql) {
            return Err(ConfigError::msg(
                "config key `sql_type`: `default_db: sql` requires `sql_type: pgsql`",
            ));
        }
        if c.sql.pool_size == Some(0) {
            return Err(ConfigError::msg(
                "config key `sql_pool_size`: must be at least 1",
            ));
        }
        if c.sql.connect_timeout == Some(0) || c.sql.query_timeout == Some(0) {
            return Err(ConfigError::msg(
                "config keys `sql_connect_timeout`, `sql_query_timeout`: seconds, at least 1",
            ));
        }
        match &c.sql.url {
            Some(u) => {
                if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                    return Err(ConfigError::msg(
                        "config key `sql_url`: must be a postgres:// or postgresql:// URL",
                    ));
                }
            }
            None => {
                if c.sql.server.as_deref().is_some_and(str::is_empty)
                    || c.sql.database.as_deref().is_some_and(str::is_empty)
                    || c.sql.username.as_deref().is_some_and(str::is_empty)
                {
                    return Err(ConfigError::msg(
                        "config keys `sql_server`, `sql_database`, `sql_username` must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
