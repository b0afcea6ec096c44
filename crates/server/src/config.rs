//! The YAML configuration, with ejabberd.yml-style keys.
//!
//! Unknown keys and bad values are errors naming the key and its line.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

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

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenModule {
    /// Client-to-server XMPP over TCP.
    C2s,
    /// Server-to-server XMPP.
    S2s,
    /// HTTP (BOSH, WebSocket, upload, admin API).
    Http,
    /// XEP-0114 external components.
    Component,
}

fn default_true() -> bool {
    true
}
fn default_max_stanza() -> usize {
    262_144
}
fn default_ip() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn default_auth_timeout() -> u64 {
    60
}
fn default_idle_timeout() -> u64 {
    900
}
fn default_max_depth() -> usize {
    48
}
fn default_max_attrs() -> usize {
    64
}

/// One `listen` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// TCP port (0 picks a free one; the chosen port is logged).
    pub port: u16,
    /// Address to bind.
    #[serde(default = "default_ip")]
    pub ip: IpAddr,
    /// What is served.
    pub module: ListenModule,
    /// Offer STARTTLS.
    #[serde(default = "default_true")]
    pub starttls: bool,
    /// Refuse everything but STARTTLS before TLS.
    #[serde(default)]
    pub starttls_required: bool,
    /// Direct TLS from the first byte (XEP-0368).
    #[serde(default)]
    pub tls: bool,
    /// Largest stanza in bytes.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    #[serde(default = "default_max_depth")]
    pub max_xml_depth: usize,
    /// Most attributes on one element.
    #[serde(default = "default_max_attrs")]
    pub max_xml_attributes: usize,
    /// Allow SASL PLAIN on an unencrypted connection (benchmarks, loopback only).
    #[serde(default)]
    pub allow_plain_without_tls: bool,
    /// Seconds a connection may take to authenticate and bind.
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout: u64,
    /// Seconds without any traffic before an established session is closed (0: never).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u64,
    /// Largest number of simultaneous connections on this listener.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// HTTP: public base URL (e.g. `https://chat.example.org`) for XEP-0156
    /// discovery behind a proxy; by default derived from the request's Host.
    #[serde(default)]
    pub public_url: Option<String>,
    /// HTTP: origins allowed by CORS (`*` for any).
    #[serde(default = "default_cors")]
    pub cors_origins: Vec<String>,
    /// HTTP: path of the WebSocket endpoint.
    #[serde(default = "default_ws_path")]
    pub websocket_path: String,
}

fn default_cors() -> Vec<String> {
    vec!["*".into()]
}
fn default_ws_path() -> String {
    "/ws".into()
}

/// Which storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    /// Embedded SQLite file.
    #[default]
    Sqlite,
    /// An SQL server (`sql_type`).
    Sql,
}

/// SQL server dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqlType {
    /// PostgreSQL.
    Pgsql,
}

/// How passwords are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Accounts stored in our database.
    #[default]
    Internal,
}

/// An ACL definition: who matches.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    /// Bare JIDs.
    #[serde(default)]
    pub user: Vec<String>,
    /// Whole domains.
    #[serde(default)]
    pub server: Vec<String>,
}

/// Raw file shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    loglevel: Option<Spanned<String>>,
    #[serde(default)]
    certfiles: Vec<Spanned<String>>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    listen: Option<Vec<Spanned<Listener>>>,
    #[serde(default)]
    auth_method: AuthMethod,
    #[serde(default)]
    auth_scram_iterations: Option<Spanned<u32>>,
    #[serde(default)]
    default_db: DbKind,
    #[serde(default)]
    sqlite_path: Option<String>,
    #[serde(default)]
    sql_type: Option<SqlType>,
    #[serde(default)]
    sql_server: Option<String>,
    #[serde(default)]
    sql_port: Option<u16>,
    #[serde(default)]
    sql_database: Option<String>,
    #[serde(default)]
    sql_username: Option<String>,
    #[serde(default)]
    sql_password: Option<String>,
    #[serde(default)]
    sql_pool_size: Option<u32>,
    #[serde(default)]
    sql_url: Option<String>,
    #[serde(default)]
    sql_connect_timeout: Option<u64>,
    #[serde(default)]
    sql_query_timeout: Option<u64>,
    #[serde(default)]
    modules: Option<BTreeMap<String, Spanned<Option<serde_json::Value>>>>,
    #[serde(default)]
    acl: BTreeMap<String, Spanned<AclSpec>>,
    #[serde(default)]
    access_rules: BTreeMap<String, Spanned<BTreeMap<String, Vec<String>>>>,
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

/// One rule of an access rule: allow or deny the ACLs listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessAction {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Virtual hosts, normalised.
    pub hosts: Vec<String>,
    /// Log level filter.
    pub loglevel: String,
    /// PEM files with certificate chains and keys.
    pub certfiles: Vec<PathBuf>,
    /// Data directory (SQLite file, generated certificates, uploads).
    pub data_dir: PathBuf,
    /// Listeners.
    pub listen: Vec<Listener>,
    /// Authentication method.
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
    /// Enabled modules, in config order.
    pub modules: Vec<ModuleConfig>,
    /// ACL definitions.
    pub acl: BTreeMap<String, AclSpec>,
    /// Access rules: rule name → ordered (action, acl) list.
    pub access_rules: BTreeMap<String, Vec<(AccessAction, String)>>,
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
    let mk = |port: u16, module: ListenModule, tls: bool| Listener {
        port,
        ip: default_ip(),
        module,
        starttls: !tls,
        starttls_required: false,
        tls,
        max_stanza_size: default_max_stanza(),
        max_xml_depth: default_max_depth(),
        max_xml_attributes: default_max_attrs(),
        allow_plain_without_tls: false,
        auth_timeout: default_auth_timeout(),
        idle_timeout: default_idle_timeout(),
        max_connections: None,
        public_url: None,
        cors_origins: default_cors(),
        websocket_path: default_ws_path(),
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
        }
    }

    /// Read and validate a config file. Relative paths resolve against the
    /// current directory, like ejabberd's.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::msg(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|e| ConfigError::msg(format!("{}: {}", path.display(), e.message)))
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::msg(e.to_string()))?;
        let mut c = Config::defaults();
        if raw.hosts.is_empty() {
            return Err(ConfigError::msg(
                "config key `hosts`: at least one host is required",
            ));
        }
        c.hosts.clear();
        for h in &raw.hosts {
            let norm = jid::BareJid::new(&h.value)
                .ok()
                .filter(|j| j.node().is_none())
                .map(|j| j.domain().to_string())
                .ok_or_else(|| {
                    ConfigError::at(
                        "hosts",
                        h.referenced.line(),
                        format!("`{}` is not a valid domain", h.value),
                    )
                })?;
            if c.hosts.contains(&norm) {
                return Err(ConfigError::at(
                    "hosts",
                    h.referenced.line(),
                    format!("`{norm}` is listed twice"),
                ));
            }
            c.hosts.push(norm);
        }
        if let Some(l) = raw.loglevel {
            let ok = [
                "error", "warning", "warn", "info", "debug", "trace", "none", "critical",
            ];
            if !ok.contains(&l.value.as_str()) {
                return Err(ConfigError::at(
                    "loglevel",
                    l.referenced.line(),
                    format!("`{}` is not one of {}", l.value, ok.join(", ")),
                ));
            }
            c.loglevel = match l.value.as_str() {
                "warning" => "warn".into(),
                "critical" => "error".into(),
                "none" => "off".into(),
                v => v.into(),
            };
        }
        for f in &raw.certfiles {
            c.certfiles.push(PathBuf::from(&f.value));
        }
        if let Some(d) = raw.data_dir {
            c.data_dir = PathBuf::from(d);
        }
        c.sqlite_path = raw
            .sqlite_path
            .map(PathBuf::from)
            .unwrap_or_else(|| c.data_dir.join("palaver.db"));
        if let Some(listen) = raw.listen {
            c.listen.clear();
            let mut seen = std::collections::HashSet::new();
            for l in listen {
                let line = l.referenced.line();
                let v = l.value;
                if v.max_stanza_size < 1024 {
                    return Err(ConfigError::at(
                        "listen.max_stanza_size",
                        line,
                        "must be at least 1024",
                    ));
                }
                if v.max_xml_depth == 0 || v.max_xml_attributes == 0 {
                    return Err(ConfigError::at(
                        "listen",
                        line,
                        "max_xml_depth and max_xml_attributes must be positive",
                    ));
                }
                if v.tls && v.starttls_required {
                    return Err(ConfigError::at(
                        "listen.starttls_required",
                        line,
                        "a direct-TLS listener has no STARTTLS",
                    ));
                }
                if matches!(v.module, ListenModule::S2s | ListenModule::Component) {
                    return Err(ConfigError::at(
                        "listen.module",
                        line,
                        format!(
                            "`{:?}` listeners are not available in this version",
                            v.module
                        )
                        .to_lowercase(),
                    ));
                }
                if !v.websocket_path.starts_with('/') {
                    return Err(ConfigError::at(
                        "listen.websocket_path",
                        line,
                        "must start with /",
                    ));
                }
                if let Some(u) = &v.public_url
                    && !(u.starts_with("http://") || u.starts_with("https://"))
                {
                    return Err(ConfigError::at(
                        "listen.public_url",
                        line,
                        "must be an http:// or https:// URL",
                    ));
                }
                if v.port != 0 && !seen.insert((v.ip, v.port)) {
                    return Err(ConfigError::at(
                        "listen.port",
                        line,
                        format!("{}:{} is listed twice", v.ip, v.port),
                    ));
                }
                c.listen.push(v);
            }
        }
        c.auth_method = raw.auth_method;
        if let Some(i) = raw.auth_scram_iterations {
            if i.value < 4096 {
                return Err(ConfigError::at(
                    "auth_scram_iterations",
                    i.referenced.line(),
                    "must be at least 4096 (RFC 7677)",
                ));
            }
            c.scram_iterations = i.value;
        }
        c.default_db = raw.default_db;
        c.sql_type = raw.sql_type;
        c.sql = SqlConfig {
            server: raw.sql_server,
            port: raw.sql_port,
            database: raw.sql_database,
            username: raw.sql_username,
            password: raw.sql_password,
            pool_size: raw.sql_pool_size,
            url: raw.sql_url,
            connect_timeout: raw.sql_connect_timeout,
            query_timeout: raw.sql_query_timeout,
        };
        if c.default_db == DbKind::Sql {
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
        }
        if let Some(mods) = raw.modules {
            c.modules = mods
                .into_iter()
                .map(|(name, v)| ModuleConfig {
                    name,
                    line: v.referenced.line(),
                    options: v.value.unwrap_or(serde_json::Value::Null),
                })
                .collect();
        }
        for (name, spec) in raw.acl {
            for u in &spec.value.user {
                if jid::BareJid::new(u).is_err() {
                    return Err(ConfigError::at(
                        &format!("acl.{name}.user"),
                        spec.referenced.line(),
                        format!("`{u}` is not a JID"),
                    ));
                }
            }
            c.acl.insert(name, spec.value);
        }
        for (name, rules) in raw.access_rules {
            let mut list = Vec::new();
            for (action, acls) in rules.value {
                let act = match action.as_str() {
                    "allow" => AccessAction::Allow,
                    "deny" => AccessAction::Deny,
                    other => {
                        return Err(ConfigError::at(
                            &format!("access_rules.{name}"),
                            rules.referenced.line(),
                            format!("`{other}` is neither allow nor deny"),
                        ));
                    }
                };
                for acl in acls {
                    if acl != "all" && acl != "none" && !c.acl.contains_key(&acl) {
                        return Err(ConfigError::at(
                            &format!("access_rules.{name}"),
                            rules.referenced.line(),
                            format!("unknown acl `{acl}`"),
                        ));
                    }
                    list.push((act.clone(), acl));
                }
            }
            c.access_rules.insert(name, list);
        }
        Ok(c)
    }

    /// Whether `jid` (bare) matches the named ACL.
    pub fn acl_match(&self, acl: &str, bare_jid: &str) -> bool {
        match acl {
            "all" => true,
            "none" => false,
            name => self.acl.get(name).is_some_and(|spec| {
                spec.user.iter().any(|u| u == bare_jid)
                    || spec
                        .server
                        .iter()
                        .any(|s| bare_jid.rsplit('@').next() == Some(s.as_str()))
            }),
        }
    }

    /// Evaluate an access rule for `bare_jid`; `default` when the rule is absent or nothing matches.
    pub fn access(&self, rule: &str, bare_jid: &str, default: bool) -> bool {
        let Some(list) = self.access_rules.get(rule) else {
            return default;
        };
        for (action, acl) in list {
            if self.acl_match(acl, bare_jid) {
                return *action == AccessAction::Allow;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_example() {
        let text = include_str!("../../../palaver.example.yml");
        let c = Config::parse(text).unwrap();
        assert!(!c.hosts.is_empty());
        assert!(c.modules.iter().any(|m| m.name == "mod_ping"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::parse(
            "hosts:\n  - localhost\nlisten:\n  - port: 5222\n    module: c2s\n    bogus: 1\n",
        )
        .unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        assert!(e.message.contains('6'), "{}", e.message);
        let e = Config::parse("hosts: [localhost]\nfoo: bar\n").unwrap_err();
        assert!(e.message.contains("foo"), "{}", e.message);
    }

    #[test]
    fn bad_values() {
        let e = Config::parse("hosts:\n  - 'bad host@'\n").unwrap_err();
        assert!(
            e.message.contains("hosts") && e.message.contains("line 2"),
            "{}",
            e.message
        );
        let e =
            Config::parse("hosts: [a]\nlisten:\n  - port: 99999\n    module: c2s\n").unwrap_err();
        assert!(
            e.message.contains("port") || e.message.contains("99999"),
            "{}",
            e.message
        );
        let e =
            Config::parse("hosts: [a]\nlisten:\n  - port: 5222\n    module: smtp\n").unwrap_err();
        assert!(e.message.contains("smtp"), "{}", e.message);
        let e = Config::parse("hosts: [a]\nloglevel: loud\n").unwrap_err();
        assert!(
            e.message.contains("loglevel") && e.message.contains("line 2"),
            "{}",
            e.message
        );
        let e = Config::parse("hosts: [a]\naccess_rules:\n  register:\n    allow: [nobody]\n")
            .unwrap_err();
        assert!(
            e.message.contains("nobody") && e.message.contains("line 4"),
            "{}",
            e.message
        );
        assert!(Config::parse("").is_err());
    }

    #[test]
    fn access_rules() {
        let c = Config::parse("hosts: [a]\nacl:\n  admin:\n    user: ['root@a']\naccess_rules:\n  configure:\n    allow: [admin]\n").unwrap();
        assert!(c.access("configure", "root@a", false));
        assert!(!c.access("configure", "bob@a", true));
        assert!(c.access("unknown_rule", "bob@a", true));
    }
}
