//! `listen` entries: Palaver's keys and ejabberd's (`module: ejabberd_c2s`…).

use super::yaml::{Files, Node, Pos, V, bad};
use super::{ConfigError, Warnings, ejabberd};
use std::net::IpAddr;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenModule {
    /// Client-to-server XMPP over TCP (`c2s`, ejabberd's `ejabberd_c2s`).
    C2s,
    /// Server-to-server XMPP (`s2s`, `ejabberd_s2s_in`), served by the s2s crate.
    S2s,
    /// HTTP: BOSH, WebSocket, upload, discovery (`http`, `ejabberd_http`).
    Http,
    /// XEP-0114 external components (`component`, `ejabberd_service`), served by the s2s crate.
    Component,
}

/// Largest stanza when ejabberd's `max_stanza_size: infinity` is given.
pub const INFINITE_STANZA: usize = 16 * 1024 * 1024;

/// One `listen` entry.
#[derive(Debug, Clone)]
pub struct Listener {
    /// TCP port (0 picks a free one; the chosen port is logged).
    pub port: u16,
    /// Address to bind.
    pub ip: IpAddr,
    /// What is served.
    pub module: ListenModule,
    /// Offer STARTTLS.
    pub starttls: bool,
    /// Refuse everything but STARTTLS before TLS.
    pub starttls_required: bool,
    /// Direct TLS from the first byte (XEP-0368 for c2s; HTTPS for http).
    pub tls: bool,
    /// Largest stanza in bytes.
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    pub max_xml_depth: usize,
    /// Most attributes on one element.
    pub max_xml_attributes: usize,
    /// Allow SASL PLAIN on an unencrypted connection (benchmarks, loopback only).
    pub allow_plain_without_tls: bool,
    /// Seconds a connection may take to authenticate and bind.
    pub auth_timeout: u64,
    /// Seconds without any traffic before an established session is closed (0: never).
    pub idle_timeout: u64,
    /// Seconds a new connection (and one restarted after STARTTLS or SASL)
    /// may take to send its stream header.
    pub stream_header_timeout: u64,
    /// Seconds a TLS handshake (direct TLS or STARTTLS) may take.
    pub tls_handshake_timeout: u64,
    /// Connections from one address that have not authenticated yet.
    pub max_unauthenticated_per_ip: usize,
    /// ejabberd's `shaper`: a shaper rule (or shaper) name limiting the
    /// bytes read per second, before and after authentication.
    pub shaper: Option<String>,
    /// ejabberd's `shaper_rule`: the rule applied after authentication
    /// instead of `shaper`.
    pub shaper_rule: Option<String>,
    /// Largest number of simultaneous connections on this listener.
    pub max_connections: Option<usize>,
    /// HTTP: public base URL (e.g. `https://chat.example.org`) for XEP-0156
    /// discovery behind a proxy; by default derived from the request's Host.
    pub public_url: Option<String>,
    /// HTTP: origins allowed by CORS (`*` for any).
    pub cors_origins: Vec<String>,
    /// HTTP: path of the WebSocket endpoint.
    pub websocket_path: String,
    /// Component listeners: domains and secrets.
    pub component: super::ComponentOptions,
}

impl Listener {
    /// A listener with every default.
    pub fn new(port: u16, module: ListenModule) -> Listener {
        Listener {
            port,
            ip: IpAddr::from([0, 0, 0, 0]),
            module,
            starttls: true,
            starttls_required: false,
            tls: false,
            max_stanza_size: 262_144,
            max_xml_depth: 48,
            max_xml_attributes: 64,
            allow_plain_without_tls: false,
            auth_timeout: 60,
            idle_timeout: 900,
            stream_header_timeout: 10,
            tls_handshake_timeout: 10,
            max_unauthenticated_per_ip: 64,
            shaper: None,
            shaper_rule: None,
            max_connections: None,
            public_url: None,
            cors_origins: vec!["*".into()],
            websocket_path: "/ws".into(),
            component: Default::default(),
        }
    }
}

fn module_of(name: &str) -> Option<ListenModule> {
    Some(match name {
        "c2s" | "ejabberd_c2s" => ListenModule::C2s,
        "s2s" | "ejabberd_s2s_in" => ListenModule::S2s,
        "http" | "ejabberd_http" => ListenModule::Http,
        "component" | "ejabberd_service" => ListenModule::Component,
        _ => return None,
    })
}

pub(crate) fn get_bool(n: &Node, key: &str, files: &Files) -> Result<bool, ConfigError> {
    match n.v {
        V::Bool(b) => Ok(b),
        _ => Err(bad(files, key, n, "true or false")),
    }
}

pub(crate) fn get_uint(n: &Node, key: &str, files: &Files) -> Result<u64, ConfigError> {
    match n.v {
        V::Int(i) if i >= 0 => Ok(i as u64),
        _ => Err(bad(files, key, n, "a non-negative integer")),
    }
}

pub(crate) fn get_string(n: &Node, key: &str, files: &Files) -> Result<String, ConfigError> {
    match &n.v {
        V::Str(s) => Ok(s.clone()),
        V::Int(_) | V::Float(_) => Ok(n.scalar().unwrap_or_default()),
        _ => Err(bad(files, key, n, "a string")),
    }
}

/// Seconds: an integer, or ejabberd's `"5 minutes"`-style text.
pub(crate) fn get_seconds(n: &Node, key: &str, files: &Files) -> Result<u64, ConfigError> {
    if let V::Int(i) = n.v {
        return u64::try_from(i).map_err(|_| bad(files, key, n, "a number of seconds"));
    }
    let text = n
        .as_str()
        .ok_or_else(|| bad(files, key, n, "a number of seconds"))?;
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| bad(files, key, n, "a number of seconds"))?;
    let mult = match unit.trim() {
        "" | "s" | "sec" | "second" | "seconds" => 1,
        "m" | "min" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "ms" | "msec" | "millisecond" | "milliseconds" => {
            return Ok(num.div_ceil(1000));
        }
        _ => return Err(bad(files, key, n, "a number of seconds")),
    };
    Ok(num.saturating_mul(mult))
}

/// Parse one `listen` entry. `None`: a listener Palaver does not serve (warned).
/// `certfiles` receives a listener's `certfile`.
pub(crate) fn parse_listener(
    n: &Node,
    files: &Files,
    warnings: &mut Warnings,
    certfiles: &mut Vec<String>,
) -> Result<Option<(Listener, Pos)>, ConfigError> {
    let V::Map(entries) = &n.v else {
        return Err(bad(
            files,
            "listen",
            n,
            "a mapping with `port` and `module`",
        ));
    };
    let at = |p: Pos| files.describe(p);
    let module_node = entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("module"))
        .map(|(_, v)| v);
    let port_node = entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("port"))
        .map(|(_, v)| v);
    let Some(module_node) = module_node else {
        return Err(ConfigError::msg(format!(
            "config key `listen` ({}): `module` is required",
            at(n.pos)
        )));
    };
    let module_name = get_string(module_node, "listen.module", files)?;
    let Some(module) = module_of(&module_name) else {
        if ejabberd::LISTENER_MODULES
            .binary_search(&module_name.as_str())
            .is_ok()
        {
            warnings.push(
                files,
                "listen.module",
                module_node.pos,
                &format!("`{module_name}` listeners are not available in Palaver: ignored"),
            );
            return Ok(None);
        }
        return Err(ConfigError::msg(format!(
            "config key `listen.module` ({}): unknown listener module `{module_name}` (c2s, http, s2s, component, or ejabberd's ejabberd_c2s, ejabberd_http, ejabberd_s2s_in, ejabberd_service)",
            at(module_node.pos)
        )));
    };
    let Some(port_node) = port_node else {
        return Err(ConfigError::msg(format!(
            "config key `listen` ({}): `port` is required",
            at(n.pos)
        )));
    };
    let port = match port_node.v {
        V::Int(p) => u16::try_from(p).ok(),
        _ => None,
    }
    .ok_or_else(|| bad(files, "listen.port", port_node, "a port number (0-65535)"))?;
    let mut l = Listener::new(port, module);
    let mut starttls_set = false;
    for (k, v) in entries {
        let key = k.scalar().unwrap_or_default();
        let full = format!("listen.{key}");
        let full = full.as_str();
        match key.as_str() {
            "port" | "module" => {}
            "ip" => {
                let s = get_string(v, full, files)?;
                l.ip = s
                    .parse()
                    .map_err(|_| bad(files, full, v, "an IPv4 or IPv6 address"))?;
            }
            "starttls" => {
                l.starttls = get_bool(v, full, files)?;
                starttls_set = true;
            }
            "starttls_required" => l.starttls_required = get_bool(v, full, files)?,
            "tls" => l.tls = get_bool(v, full, files)?,
            "max_stanza_size" => {
                l.max_stanza_size = if v.as_str() == Some("infinity") {
                    warnings.push(
                        files,
                        full,
                        v.pos,
                        &format!("Palaver keeps a limit: `infinity` means {INFINITE_STANZA} bytes"),
                    );
                    INFINITE_STANZA
                } else {
                    get_uint(v, full, files)? as usize
                };
                if l.max_stanza_size < 1024 {
                    return Err(ConfigError::at(
                        "listen.max_stanza_size",
                        v.pos.line,
                        "must be at least 1024",
                    ));
                }
            }
            "max_xml_depth" => l.max_xml_depth = get_uint(v, full, files)? as usize,
            "max_xml_attributes" => l.max_xml_attributes = get_uint(v, full, files)? as usize,
            "allow_plain_without_tls" => l.allow_plain_without_tls = get_bool(v, full, files)?,
            "auth_timeout" => l.auth_timeout = get_seconds(v, full, files)?,
            "idle_timeout" => l.idle_timeout = get_seconds(v, full, files)?,
            "stream_header_timeout" => {
                l.stream_header_timeout = get_seconds(v, full, files)?.max(1)
            }
            "tls_handshake_timeout" => {
                l.tls_handshake_timeout = get_seconds(v, full, files)?.max(1)
            }
            "max_unauthenticated_per_ip" => {
                l.max_unauthenticated_per_ip = get_uint(v, full, files)?.max(1) as usize
            }
            "shaper" => l.shaper = Some(get_string(v, full, files)?),
            "shaper_rule" => l.shaper_rule = Some(get_string(v, full, files)?),
            "max_connections" => l.max_connections = Some(get_uint(v, full, files)? as usize),
            "public_url" => {
                let u = get_string(v, full, files)?;
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(ConfigError::msg(format!(
                        "config key `listen.public_url` ({}): must be an http:// or https:// URL",
                        at(v.pos)
                    )));
                }
                l.public_url = Some(u);
            }
            "cors_origins" => {
                l.cors_origins = match &v.v {
                    V::Seq(items) => items
                        .iter()
                        .map(|i| get_string(i, full, files))
                        .collect::<Result<_, _>>()?,
                    _ => vec![get_string(v, full, files)?],
                }
            }
            "websocket_path" => {
                l.websocket_path = get_string(v, full, files)?;
                if !l.websocket_path.starts_with('/') {
                    return Err(ConfigError::msg(format!(
                        "config key `listen.websocket_path` ({}): must start with /",
                        at(v.pos)
                    )));
                }
            }
            "certfile" => certfiles.push(get_string(v, full, files)?),
            "password" if module == ListenModule::Component => {
                l.component.password = Some(get_string(v, full, files)?)
            }
            "hosts" if module == ListenModule::Component => {
                super::s2s::component_hosts(v, &mut l.component, files)?
            }
            "request_handlers" => request_handlers(v, &mut l, files, warnings)?,
            "transport" if v.as_str() == Some("tcp") => {}
            other if ejabberd::LISTEN.binary_search(&other).is_ok() => warnings.push(
                files,
                full,
                k.pos,
                "ejabberd listener option not used by Palaver: ignored",
            ),
            other => {
                return Err(ConfigError::msg(format!(
                    "config key `listen.{other}` ({}): unknown listener option",
                    at(k.pos)
                )));
            }
        }
    }
    // ejabberd's c2s offers STARTTLS when asked for; Palaver's default is on,
    // and `starttls_required` implies it.
    if l.starttls_required && !starttls_set {
        l.starttls = true;
    }
    if l.max_xml_depth == 0 || l.max_xml_attributes == 0 {
        return Err(ConfigError::at(
            "listen",
            n.pos.line,
            "max_xml_depth and max_xml_attributes must be positive",
        ));
    }
    if l.tls && l.starttls_required {
        return Err(ConfigError::at(
            "listen.starttls_required",
            n.pos.line,
            "a direct-TLS listener has no STARTTLS",
        ));
    }
    if module == ListenModule::Component
        && l.component.password.is_none()
        && l.component.hosts.values().all(Option::is_none)
    {
        return Err(ConfigError::at(
            "listen.password",
            n.pos.line,
            "a component listener needs `password` or `hosts: {DOMAIN: {password: …}}`",
        ));
    }
    if module == ListenModule::S2s && !starttls_set {
        // STARTTLS on s2s follows `s2s_use_starttls`.
        l.starttls = true;
    }
    Ok(Some((l, n.pos)))
}

/// ejabberd's `request_handlers` of an http listener: path → handler module.
fn request_handlers(
    v: &Node,
    l: &mut Listener,
    files: &Files,
    warnings: &mut Warnings,
) -> Result<(), ConfigError> {
    let V::Map(entries) = &v.v else {
        return Err(bad(
            files,
            "listen.request_handlers",
            v,
            "a mapping of paths to handlers",
        ));
    };
    for (path, handler) in entries {
        let p = get_string(path, "listen.request_handlers", files)?;
        let h = get_string(handler, "listen.request_handlers", files)?;
        let key = format!("listen.request_handlers.{p}");
        let note = match h.as_str() {
            "ejabberd_http_ws" | "mod_websocket" => {
                if !p.starts_with('/') {
                    return Err(bad(files, &key, path, "a path starting with /"));
                }
                l.websocket_path = p.trim_end_matches('/').to_string();
                if l.websocket_path.is_empty() {
                    l.websocket_path = "/".into();
                }
                None
            }
            "mod_bosh" | "ejabberd_http_bind" | "mod_http_bind"
                if p.trim_end_matches('/') == "/bosh" =>
            {
                None
            }
            "mod_bosh" | "ejabberd_http_bind" | "mod_http_bind" => {
                Some("Palaver serves BOSH at /bosh: this path is ignored".to_string())
            }
            "mod_http_upload" => Some(
                "Palaver serves uploads at /upload on every http listener: this path is ignored"
                    .to_string(),
            ),
            "mod_host_meta" => None,
            other => Some(format!(
                "handler `{other}` is not available in Palaver: ignored"
            )),
        };
        if let Some(msg) = note {
            warnings.push(files, &key, path.pos, &msg);
        }
    }
    Ok(())
}
