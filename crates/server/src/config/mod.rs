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
mod read;
mod s2s;
mod yaml;

pub use acl::{
    AccessAction, AccessRule, AclRule, AclSpec, Matcher, Pattern, Shaper, ShaperRule, Subject,
    glob_match, is_glob,
};
pub use listen::{INFINITE_STANZA, ListenModule, Listener};
pub use s2s::{ComponentOptions, S2sConfig, S2sTls};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
use yaml::{Files, Pos};

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
    /// The operator's HTTP service (`auth_opts`).
    Http,
    /// An external program speaking ejabberd's extauth protocol (`extauth_program`).
    External,
    /// A signed JSON Web Token as the password (`jwt_key`).
    Jwt,
    /// No passwords: SASL ANONYMOUS only (`auth_method: anonymous` alone).
    Anonymous,
}

/// The HTTP authentication service of a host (`auth_opts`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpAuthOptions {
    /// Base URL; requests go to `URL/check_password`, `URL/user_exists`, …
    pub url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub bearer_token: Option<String>,
    /// Time allowed for one request.
    pub timeout: std::time::Duration,
    /// The SCRAM mechanisms offered for the host (`scram: [sha1, sha256,
    /// sha512]`): the service answers `scram_credentials` for them. Empty
    /// (the default): PLAIN only.
    pub scram: Vec<palaver_proto::sasl::ScramHash>,
}

/// Authentication settings of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// SASL ANONYMOUS is offered (`anonymous` in `auth_method`).
    pub anonymous: bool,
    /// `auth_opts` of the `http` method.
    pub http: Option<HttpAuthOptions>,
    /// `extauth_program` (a command line, split on spaces).
    pub extauth_program: Option<String>,
    /// `extauth_pool_size` (default 1).
    pub extauth_pool_size: usize,
    /// `jwt_key`: a JWK (or JWK set) file — `kty` oct (HS256/384/512), RSA
    /// (RS256/384/512) or EC (ES256/384) — or a PEM file of RSA or EC
    /// public keys.
    pub jwt_key: Option<PathBuf>,
    /// `jwt_jid_field` (default `jid`).
    pub jwt_jid_field: String,
    /// `auth_cache_life_time`: how long a correct password is remembered
    /// for external backends (default 60 s; 0 disables).
    pub cache_life_time: std::time::Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            anonymous: false,
            http: None,
            extauth_program: None,
            extauth_pool_size: 1,
            jwt_key: None,
            jwt_jid_field: "jid".into(),
            cache_life_time: std::time::Duration::from_secs(60),
        }
    }
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
    /// Its settings.
    pub auth: AuthSettings,
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
    /// Listeners.
    pub listen: Vec<Listener>,
    /// Authentication method (global; see [`Config::host_options`]).
    pub auth_method: AuthMethod,
    /// Its settings (global).
    pub auth: AuthSettings,
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
    /// Federation (`s2s_*` options and the `s2s_hosts` override).
    pub s2s: S2sConfig,
    /// Warnings from reading the file (ignored ejabberd options…), one line each.
    pub warnings: Vec<String>,
    /// The file this configuration was read from.
    pub source: Option<PathBuf>,
}

/// Largest config file read (the main file or an included one).
const MAX_CONFIG_FILE: u64 = 16 << 20;

/// Read a config file: a regular file of at most [`MAX_CONFIG_FILE`] bytes
/// (not a device or pipe that would be read forever), as UTF-8.
pub(crate) fn read_config_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_CONFIG_FILE >> 20),
        ));
    }
    Ok(text)
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
    "mod_fail2ban",
    "mod_pubsub",
    "mod_adhoc",
    "mod_carboncopy",
    "mod_client_state",
    "mod_push",
    "mod_auth_fast",
    "mod_muc",
    "mod_mam",
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
            auth: AuthSettings::default(),
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
            s2s: S2sConfig::default(),
            warnings: Vec::new(),
            source: None,
        }
    }

    /// Read and validate a config file. Relative paths in it resolve against
    /// the current directory, like ejabberd's; included files against the
    /// including file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path)
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
        let mut r = read::Reader {
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
                auth: self.auth.clone(),
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

    /// The traffic shaper named by a listener's `shaper` (or `shaper_rule`)
    /// for `who` on `host`: a shaper rule evaluated for `who`, or a shaper
    /// named directly; `None` for `none` or no match (unlimited).
    pub fn shaper_for(&self, host: Option<&str>, name: &str, who: Subject<'_>) -> Option<Shaper> {
        let h = host.and_then(|h| self.host_options.get(h));
        let rules = h.map_or(&self.shaper_rules, |h| &h.shaper_rules);
        let value = match rules.get(name).or_else(|| self.shaper_rules.get(name)) {
            Some(rule) => {
                let env = acl::Env {
                    hosts: &self.hosts,
                    acl: h.map_or(&self.acl, |h| &h.acl),
                };
                rule.entries
                    .iter()
                    .find_map(|(v, conds)| env.all_match(conds, who).then_some(v.as_str()))?
            }
            None => name,
        };
        self.shapers.get(value).cloned()
    }

    /// Whether an access rule given inline in a module's options (ejabberd
    /// accepts `access: [allow]` or `access_admin: [{allow: admin}]` as
    /// well as a rule's name; see [`inline_access_rule`]) allows `jid` on
    /// `host`: the first entry whose conditions all match decides; deny
    /// when none does.
    pub fn inline_access(&self, host: &str, rule: &AccessRule, jid: &str) -> bool {
        let env = acl::Env {
            hosts: &self.hosts,
            acl: self.scope(Some(host)).0,
        };
        rule.entries
            .iter()
            .find(|(_, conds)| env.all_match(conds, Subject::jid(jid)))
            .is_some_and(|(action, _)| *action == AccessAction::Allow)
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

/// Read an access rule written inline in a module's options, in any of
/// ejabberd's forms (`[allow]`, `[{allow: admin}, deny]`, `{allow: [admin]}`).
/// `key` names the option in the error.
pub fn inline_access_rule(key: &str, v: &serde_json::Value) -> Result<AccessRule, String> {
    acl::parse_access_rule(key, &yaml::Node::from_json(v), &Files::default())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
