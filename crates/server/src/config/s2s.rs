//! Federation options (ejabberd's `s2s_*` keys, plus Palaver's `s2s_hosts`
//! static override) and the options of component listeners.

use super::listen::{get_bool, get_seconds, get_string, get_uint};
use super::yaml::{Files, Node, V, bad};
use super::{ConfigError, Warnings};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// When TLS is used on server-to-server streams (ejabberd's `s2s_use_starttls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S2sTls {
    /// Never (`false`): no STARTTLS offered or attempted.
    Off,
    /// Offered and attempted, not required (`optional`, `true`).
    Optional,
    /// Required in both directions (`required`; `required_trusted` also
    /// turns dialback off, so only trusted certificates authenticate).
    Required,
}

/// Federation settings.
#[derive(Debug, Clone)]
pub struct S2sConfig {
    /// `s2s_use_starttls` (Palaver's default: optional).
    pub use_starttls: S2sTls,
    /// `s2s_access`: access rule naming the remote domains allowed (default: all).
    pub access: Option<String>,
    /// `s2s_cafile`: extra trusted CA certificates (PEM), besides the system roots.
    pub cafile: Option<PathBuf>,
    /// `s2s_dialback`: accept and use Server Dialback (XEP-0220). Default true.
    pub dialback: bool,
    /// `s2s_timeout`: seconds an s2s stream may stay idle before it is closed.
    pub idle_timeout: u64,
    /// `s2s_max_retry_delay`: longest wait before connecting again to a
    /// domain that failed (stanzas meanwhile are bounced).
    pub max_retry_delay: u64,
    /// `outgoing_s2s_timeout`: seconds to connect and authenticate.
    pub connect_timeout: u64,
    /// `outgoing_s2s_port`: port used when DNS has no SRV record.
    pub port: u16,
    /// `s2s_dns_timeout`: seconds for one DNS query.
    pub dns_timeout: u64,
    /// `s2s_queue_limit`: stanzas queued per remote domain while connecting.
    pub queue_limit: usize,
    /// `s2s_max_connections`: outgoing streams open at once.
    pub max_connections: usize,
    /// `s2s_max_stanza_size`: largest stanza read on an outgoing s2s stream
    /// (bytes); incoming streams use their listener's `max_stanza_size`.
    pub max_stanza_size: usize,
    /// `s2s_hosts`: static addresses (`DOMAIN: "IP:PORT"`), used before DNS.
    pub hosts: BTreeMap<String, String>,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            use_starttls: S2sTls::Optional,
            access: None,
            cafile: None,
            dialback: true,
            idle_timeout: 600,
            max_retry_delay: 300,
            connect_timeout: 10,
            port: 5269,
            dns_timeout: 10,
            queue_limit: 1000,
            max_connections: 10_000,
            max_stanza_size: 524_288,
            hosts: BTreeMap::new(),
        }
    }
}

/// The top-level keys read here.
pub(super) const KEYS: &[&str] = &[
    "outgoing_s2s_port",
    "outgoing_s2s_timeout",
    "s2s_access",
    "s2s_cafile",
    "s2s_dhfile",
    "s2s_dialback",
    "s2s_dns_timeout",
    "s2s_hosts",
    "s2s_max_connections",
    "s2s_max_retry_delay",
    "s2s_max_stanza_size",
    "s2s_queue_limit",
    "s2s_timeout",
    "s2s_use_starttls",
];

/// Read one of [`KEYS`].
pub(super) fn read(
    s: &mut S2sConfig,
    key: &str,
    k: &Node,
    v: &Node,
    files: &Files,
    warnings: &mut Warnings,
) -> Result<(), ConfigError> {
    match key {
        "s2s_use_starttls" => {
            s.use_starttls = match (&v.v, v.as_str()) {
                (V::Bool(false), _) | (_, Some("false")) => S2sTls::Off,
                (V::Bool(true), _) | (_, Some("true" | "optional")) => S2sTls::Optional,
                (_, Some("required")) => S2sTls::Required,
                (_, Some("required_trusted")) => {
                    // Only peers with a trusted certificate: no dialback.
                    s.dialback = false;
                    S2sTls::Required
                }
                _ => {
                    return Err(bad(
                        files,
                        key,
                        v,
                        "false, optional, true, required or required_trusted",
                    ));
                }
            }
        }
        "s2s_access" => s.access = Some(get_string(v, key, files)?),
        "s2s_cafile" => s.cafile = Some(PathBuf::from(get_string(v, key, files)?)),
        "s2s_dhfile" => warnings.push(
            files,
            key,
            k.pos,
            "Palaver's TLS uses (EC)DHE groups built in: no DH file is needed, ignored",
        ),
        "s2s_dialback" => s.dialback = get_bool(v, key, files)?,
        "s2s_timeout" => s.idle_timeout = get_seconds_or_infinity(v, key, files)?,
        "s2s_max_retry_delay" => s.max_retry_delay = get_seconds(v, key, files)?,
        "outgoing_s2s_timeout" => {
            s.connect_timeout = get_seconds_or_infinity(v, key, files)?.clamp(1, 3600)
        }
        "s2s_dns_timeout" => s.dns_timeout = get_seconds(v, key, files)?.max(1),
        "outgoing_s2s_port" => {
            s.port = u16::try_from(get_uint(v, key, files)?)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(files, key, v, "a port number"))?
        }
        "s2s_queue_limit" => s.queue_limit = (get_uint(v, key, files)? as usize).max(1),
        "s2s_max_connections" => s.max_connections = (get_uint(v, key, files)? as usize).max(1),
        "s2s_max_stanza_size" => {
            s.max_stanza_size = get_uint(v, key, files)? as usize;
            if s.max_stanza_size < 1024 {
                return Err(bad(files, key, v, "at least 1024 bytes"));
            }
        }
        "s2s_hosts" => {
            let V::Map(entries) = &v.v else {
                return Err(bad(files, key, v, "a mapping of domains to \"IP:PORT\""));
            };
            for (dk, dv) in entries {
                let domain = get_string(dk, key, files)?.to_ascii_lowercase();
                let addr = get_string(dv, key, files)?;
                let full = format!("{key}.{domain}");
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(bad(files, &full, dv, "\"IP:PORT\""));
                }
                s.hosts.insert(domain, addr);
            }
        }
        _ => unreachable!("only KEYS are passed"),
    }
    Ok(())
}

fn get_seconds_or_infinity(n: &Node, key: &str, files: &Files) -> Result<u64, ConfigError> {
    match n.as_str() {
        Some("infinity" | "infinite") => Ok(0),
        _ => get_seconds(n, key, files),
    }
}

/// Options of an external component listener (XEP-0114).
#[derive(Debug, Clone, Default)]
pub struct ComponentOptions {
    /// Secret for every component domain without its own (`password`).
    pub password: Option<String>,
    /// Component domains and their own secrets (`hosts: {DOMAIN: {password: …}}`).
    pub hosts: BTreeMap<String, Option<String>>,
}

impl ComponentOptions {
    /// The secret a component connecting as `domain` must prove: its own,
    /// else the listener's when `hosts` is empty or lists the domain.
    pub fn secret_for(&self, domain: &str) -> Option<&str> {
        match self.hosts.get(domain) {
            Some(Some(p)) => Some(p),
            Some(None) => self.password.as_deref(),
            None if self.hosts.is_empty() => self.password.as_deref(),
            None => None,
        }
    }
}

/// A component listener's `hosts` mapping.
pub(super) fn component_hosts(
    v: &Node,
    opts: &mut ComponentOptions,
    files: &Files,
) -> Result<(), ConfigError> {
    let key = "listen.hosts";
    match &v.v {
        V::Map(entries) => {
            for (dk, dv) in entries {
                let domain = get_string(dk, key, files)?.to_ascii_lowercase();
                let mut secret = None;
                match &dv.v {
                    V::Map(o) => {
                        for (ok, ov) in o {
                            match ok.as_str() {
                                Some("password") => {
                                    secret = Some(get_string(ov, "listen.hosts.password", files)?)
                                }
                                _ => {
                                    return Err(bad(
                                        files,
                                        "listen.hosts",
                                        ok,
                                        "`password` (the only per-component option)",
                                    ));
                                }
                            }
                        }
                    }
                    V::Null => {}
                    _ => return Err(bad(files, key, dv, "a mapping with `password`")),
                }
                opts.hosts.insert(domain, secret);
            }
        }
        V::Seq(items) => {
            for i in items {
                opts.hosts
                    .insert(get_string(i, key, files)?.to_ascii_lowercase(), None);
            }
        }
        _ => return Err(bad(files, key, v, "a mapping of component domains")),
    }
    Ok(())
}
