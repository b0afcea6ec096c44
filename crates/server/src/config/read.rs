//! Reading the top-level options (and `host_config`) into a [`Config`].

use super::yaml::{Files, Node, Pos, V, bad};
use super::{
    AclRule, AuthMethod, Config, ConfigError, DbKind, HostOptions, ModuleConfig, SqlType, Warnings,
    acl, ejabberd, listen, s2s,
};
use std::path::PathBuf;

/// Keys Palaver reads at the top level (besides ejabberd's it ignores).
pub(super) const HOST_LEVEL: &[&str] = &[
    "modules",
    "acl",
    "access_rules",
    "shaper_rules",
    "auth_method",
    "auth_opts",
    "extauth_program",
    "extauth_pool_size",
    "jwt_key",
    "jwt_jid_field",
    "anonymous_protocol",
    "auth_cache_life_time",
];

pub(super) struct Reader<'a> {
    pub(super) files: Files,
    pub(super) warnings: Warnings,
    /// (host or global, rule kind, rule name, position) to check for undefined ACLs.
    pub(super) rule_refs: Vec<(Option<String>, &'static str, String, Pos)>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
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

    pub(super) fn read(
        &mut self,
        c: &mut Config,
        entries: &[(Node, Node)],
    ) -> Result<(), ConfigError> {
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
                    // Enforced by the c2s negotiation (RFC 6120 SASL, SASL2
                    // and FAST): a disabled mechanism is neither offered nor
                    // accepted. Names Palaver never offers need nothing.
                    c.disable_sasl_mechanisms = strings(v, &key, files)?
                        .iter()
                        .map(|n| n.scalar().unwrap_or_default().to_uppercase())
                        .collect();
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
                k2 if s2s::KEYS.contains(&k2) => {
                    s2s::read(&mut c.s2s, k2, k, v, files, &mut self.warnings)?
                }
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
        c.auth = global.auth.clone();
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
        self.check_shapers(c);
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
                // Enforced: max_user_sessions, and rules whose values name
                // shapers (listeners' `shaper`). Other numeric rules are
                // kept and warned.
                let mut not_enforced = Vec::new();
                for (rk, rv) in entries_of(v, &full, files)? {
                    let name = rk.scalar().unwrap_or_default();
                    let rule = acl::parse_shaper_rule(&name, rv, files)?;
                    let numeric = rule
                        .entries
                        .iter()
                        .any(|(v, _)| v.parse::<u64>().is_ok() || v == "infinity");
                    if name != "max_user_sessions" && numeric {
                        not_enforced.push(name.clone());
                    }
                    self.rule_refs.push((
                        host.map(str::to_string),
                        "shaper_rules",
                        name.clone(),
                        rk.pos,
                    ));
                    ho.shaper_rules.insert(name, rule);
                }
                if !not_enforced.is_empty() {
                    self.warn(
                        &full,
                        k.pos,
                        &format!(
                            "parsed and kept, but not enforced yet: {} (max_user_sessions is)",
                            not_enforced.join(", ")
                        ),
                    );
                }
            }
            "auth_method" => {
                let methods = match &v.v {
                    V::Str(_) => vec![v.clone()],
                    _ => strings(v, &full, files)?,
                };
                let mut password = None;
                ho.auth.anonymous = false;
                for m in &methods {
                    let method = match m.as_str() {
                        Some("internal" | "mnesia" | "sql") => AuthMethod::Internal,
                        Some("http") => AuthMethod::Http,
                        Some("external") => AuthMethod::External,
                        Some("jwt") => AuthMethod::Jwt,
                        Some("anonymous") => {
                            ho.auth.anonymous = true;
                            continue;
                        }
                        _ => {
                            return Err(self.err(&full, m.pos, format!(
                                "`{}` is not supported (internal, mnesia, sql, http, external, jwt, anonymous)",
                                m.scalar().unwrap_or_default()
                            )));
                        }
                    };
                    match password {
                        Some(p) if p != method => {
                            return Err(self.err(&full, m.pos, "Palaver checks passwords with one method per host (plus anonymous)"));
                        }
                        _ => password = Some(method),
                    }
                }
                ho.auth_method = password.unwrap_or(if ho.auth.anonymous {
                    AuthMethod::Anonymous
                } else {
                    AuthMethod::Internal
                });
            }
            "auth_opts" => {
                let mut h = super::HttpAuthOptions {
                    timeout: std::time::Duration::from_secs(5),
                    ..Default::default()
                };
                for (ok, ov) in entries_of(v, &full, files)? {
                    let name = ok.scalar().unwrap_or_default();
                    let sub = format!("{full}.{name}");
                    match name.as_str() {
                        "url" | "host" => h.url = listen::get_string(ov, &sub, files)?,
                        "path_prefix" => {
                            let p = listen::get_string(ov, &sub, files)?;
                            h.url.push_str(&p);
                        }
                        "bearer_token" => h.bearer_token = Some(listen::get_string(ov, &sub, files)?),
                        "timeout" => {
                            h.timeout = std::time::Duration::from_millis(listen::get_uint(ov, &sub, files)?)
                        }
                        "scram" => {
                            h.scram.clear();
                            for node in strings(ov, &sub, files)? {
                                let n = listen::get_string(&node, &sub, files)?;
                                let hash = match n.to_ascii_lowercase().replace('-', "").as_str() {
                                    "sha" | "sha1" => palaver_proto::sasl::ScramHash::Sha1,
                                    "sha256" => palaver_proto::sasl::ScramHash::Sha256,
                                    "sha512" => palaver_proto::sasl::ScramHash::Sha512,
                                    _ => return Err(self.err(&sub, ov.pos, format!("`{n}` is not sha1, sha256 or sha512"))),
                                };
                                if !h.scram.contains(&hash) {
                                    h.scram.push(hash);
                                }
                            }
                        }
                        other => return Err(self.err(&sub, ok.pos, format!("unknown option `{other}` (url, path_prefix, bearer_token, timeout in ms, scram)"))),
                    }
                }
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(self.err(&full, v.pos, "needs `url`: http://… or https://…"));
                }
                while h.url.ends_with('/') {
                    h.url.pop();
                }
                ho.auth.http = Some(h);
            }
            "extauth_program" => {
                ho.auth.extauth_program = Some(listen::get_string(v, &full, files)?)
            }
            "extauth_pool_size" => {
                let n = listen::get_uint(v, &full, files)?;
                if !(1..=64).contains(&n) {
                    return Err(self.err(&full, v.pos, "between 1 and 64"));
                }
                ho.auth.extauth_pool_size = n as usize;
            }
            "jwt_key" => {
                ho.auth.jwt_key = Some(PathBuf::from(listen::get_string(v, &full, files)?))
            }
            "jwt_jid_field" => ho.auth.jwt_jid_field = listen::get_string(v, &full, files)?,
            "anonymous_protocol" => {
                match v.as_str() {
                    Some("sasl_anon" | "both") => {}
                    Some("login_anon") => {
                        return Err(self.err(&full, v.pos, "login_anon is not supported: Palaver offers SASL ANONYMOUS (sasl_anon)"));
                    }
                    _ => return Err(bad(files, &full, v, "sasl_anon, login_anon or both")),
                }
            }
            "auth_cache_life_time" => {
                ho.auth.cache_life_time = match v.as_str() {
                    Some("infinity" | "infinite") => {
                        std::time::Duration::from_secs(u64::from(u32::MAX))
                    }
                    _ => std::time::Duration::from_secs(listen::get_uint(v, &full, files)?),
                }
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

    /// Every listener's `shaper`/`shaper_rule` names `none`, a shaper rule
    /// or a shaper, and every shaper rule used so names `none` or shapers;
    /// anything else is warned and means no shaping (as in ejabberd).
    fn check_shapers(&mut self, c: &Config) {
        let mut warnings = Vec::new();
        for l in &c.listen {
            for (key, name) in [("shaper", &l.shaper), ("shaper_rule", &l.shaper_rule)] {
                let Some(name) = name else { continue };
                if name == "none" || c.shapers.contains_key(name) {
                    continue;
                }
                let rule = c.shaper_rules.get(name).or_else(|| {
                    c.host_options
                        .values()
                        .find_map(|h| h.shaper_rules.get(name))
                });
                let Some(rule) = rule else {
                    warnings.push((
                        format!("listen.{key}"),
                        format!("`{name}` is neither a shaper (`shaper:`) nor a shaper rule (`shaper_rules:`): not shaped"),
                    ));
                    continue;
                };
                for (v, _) in &rule.entries {
                    if v != "none" && !c.shapers.contains_key(v) {
                        warnings.push((
                            format!("shaper_rules.{name}"),
                            format!("`{v}` is not a shaper defined under `shaper:`: not shaped"),
                        ));
                    }
                }
            }
        }
        for (key, msg) in warnings {
            self.warn(&key, Pos::default(), &msg);
        }
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
