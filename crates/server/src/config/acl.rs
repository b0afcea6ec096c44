//! ACLs, access rules and shaper rules with ejabberd's meaning.
//!
//! - An ACL is a list of conditions; it matches when **any** matches. An ACL
//!   that is not defined matches nobody (ejabberd does the same).
//! - An access rule is an **ordered** list of `allow`/`deny` entries; the first
//!   entry that matches decides, and nothing matching means deny. An entry
//!   lists ACL names and inline conditions that must **all** match.
//! - `user: admin` (no domain) matches the local part `admin` on every served host.

use super::yaml::{Files, Node, V, bad};
use super::{ConfigError, Warnings};
use std::net::IpAddr;
use std::sync::Arc;

/// A compiled regular expression and its source (ejabberd `*_regexp`: unanchored).
#[derive(Clone)]
pub struct Pattern {
    src: String,
    re: Arc<regex_automata::dfa::regex::Regex>,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}/", self.src)
    }
}

impl Pattern {
    fn new(src: &str) -> Result<Pattern, String> {
        let re = regex_automata::dfa::regex::Regex::new(src).map_err(|e| e.to_string())?;
        Ok(Pattern {
            src: src.to_string(),
            re: Arc::new(re),
        })
    }
    /// Whether the pattern matches somewhere in `s`.
    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
}

/// Shell-style glob match of the whole string: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| glob_at(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                return t.first() == Some(&'[') && glob_at(&p[1..], &t[1..]);
            };
            let Some(&c) = t.first() else {
                return false;
            };
            let mut set = &p[1..close];
            let negate = matches!(set.first(), Some('!' | '^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_at(&p[close + 1..], &t[1..])
        }
        Some(&c) => t.first() == Some(&c) && glob_at(&p[1..], &t[1..]),
    }
}

/// Whether a string has glob characters.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Text matcher: exact, glob or regexp.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal (case-insensitively for domains and local parts).
    Exact(String),
    /// Shell glob on the whole string.
    Glob(String),
    /// Regular expression (matches anywhere, as in ejabberd).
    Regexp(Pattern),
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e.eq_ignore_ascii_case(s),
            Matcher::Glob(g) => glob_match(g, s),
            Matcher::Regexp(r) => r.is_match(s),
        }
    }
}

/// One ACL condition.
#[derive(Debug, Clone)]
pub enum AclRule {
    /// `user`, `user_regexp`, `user_glob`: the local part, on `domain` or on any served host.
    User {
        /// Local part matcher.
        node: Matcher,
        /// The domain (any served host when `None`).
        domain: Option<String>,
    },
    /// `server`, `server_regexp`, `server_glob`: the domain.
    Server(Matcher),
    /// `resource`, `resource_regexp`, `resource_glob` (full JIDs only).
    Resource(Matcher),
    /// `node_regexp`, `node_glob`: local part and domain.
    Node(Matcher, Matcher),
    /// `ip`: a network.
    Ip(IpAddr, u8),
    /// `shared_group` (no shared rosters in Palaver: never matches).
    SharedGroup(String),
    /// A reference to a named ACL (in access rules), `all` or `none`.
    Acl(String),
}

/// An ACL: matches when any of its conditions does.
#[derive(Debug, Clone, Default)]
pub struct AclSpec {
    /// Conditions.
    pub rules: Vec<AclRule>,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessAction {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
}

/// An access rule: ordered entries; the first whose conditions all match decides.
#[derive(Debug, Clone, Default)]
pub struct AccessRule {
    /// (action, conditions that must all match), in config order.
    pub entries: Vec<(AccessAction, Vec<AclRule>)>,
}

/// A shaper rule: ordered (value, conditions) entries; the first match gives the value.
#[derive(Debug, Clone, Default)]
pub struct ShaperRule {
    /// (shaper name or number, conditions that must all match).
    pub entries: Vec<(String, Vec<AclRule>)>,
}

/// A traffic shaper (`shaper:`): bytes per second and burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaper {
    /// Bytes per second.
    pub rate: u64,
    /// Burst size in bytes (ejabberd's default: the rate).
    pub burst_size: u64,
}

/// Who is asking: a JID (bare or full) and/or an address.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// `node@domain[/resource]` or `domain`.
    pub jid: Option<&'a str>,
    /// Client address.
    pub ip: Option<IpAddr>,
}

impl<'a> Subject<'a> {
    /// A JID only.
    pub fn jid(jid: &'a str) -> Self {
        Subject {
            jid: Some(jid),
            ip: None,
        }
    }
}

fn split_jid(jid: &str) -> (Option<&str>, &str, Option<&str>) {
    let (bare, res) = match jid.split_once('/') {
        Some((b, r)) => (b, Some(r)),
        None => (jid, None),
    };
    match bare.split_once('@') {
        Some((n, d)) => (Some(n), d, res),
        None => (None, bare, res),
    }
}

fn ip_in(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        (IpAddr::V6(a), IpAddr::V4(b)) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let bits = u32::from(bits).min(width);
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (ip >> shift) == (net >> shift)
}

/// What rule evaluation needs from the configuration.
pub(crate) struct Env<'c> {
    pub hosts: &'c [String],
    pub acl: &'c std::collections::BTreeMap<String, AclSpec>,
}

impl Env<'_> {
    pub fn rule_matches(&self, rule: &AclRule, who: Subject<'_>, depth: u8) -> bool {
        let parts = who.jid.map(split_jid);
        let served = |d: &str| self.hosts.iter().any(|h| h.eq_ignore_ascii_case(d));
        match rule {
            AclRule::Acl(name) => match name.as_str() {
                "all" => true,
                "none" => false,
                n => {
                    depth < 8
                        && self.acl.get(n).is_some_and(|spec| {
                            spec.rules
                                .iter()
                                .any(|r| self.rule_matches(r, who, depth + 1))
                        })
                }
            },
            AclRule::User { node, domain } => match parts {
                Some((Some(n), d, _)) => {
                    node.matches(n)
                        && match domain {
                            Some(want) => want.eq_ignore_ascii_case(d),
                            None => served(d),
                        }
                }
                _ => false,
            },
            AclRule::Server(m) => parts.is_some_and(|(_, d, _)| m.matches(d)),
            AclRule::Resource(m) => parts.is_some_and(|(_, _, r)| r.is_some_and(|r| m.matches(r))),
            AclRule::Node(n, d) => {
                matches!(parts, Some((Some(node), dom, _)) if n.matches(node) && d.matches(dom))
            }
            AclRule::Ip(net, bits) => who.ip.is_some_and(|ip| ip_in(ip, *net, *bits)),
            AclRule::SharedGroup(_) => false,
        }
    }

    pub fn all_match(&self, rules: &[AclRule], who: Subject<'_>) -> bool {
        !rules.is_empty() && rules.iter().all(|r| self.rule_matches(r, who, 0))
    }
}

// ---- parsing ----

fn list_or_single(n: &Node) -> Vec<&Node> {
    match &n.v {
        V::Seq(items) => items.iter().collect(),
        _ => vec![n],
    }
}

fn matcher(kind: &str, s: &str) -> Result<Matcher, String> {
    if kind.ends_with("_regexp") {
        Pattern::new(s).map(Matcher::Regexp)
    } else if kind.ends_with("_glob") {
        Ok(Matcher::Glob(s.to_string()))
    } else {
        Ok(Matcher::Exact(s.to_lowercase()))
    }
}

/// Parse one `type: value(s)` condition into rules.
pub(crate) fn parse_condition(
    kind: &str,
    val: &Node,
    key: &str,
    files: &Files,
    allow_acl_ref: bool,
) -> Result<Vec<AclRule>, ConfigError> {
    let err = |n: &Node, msg: String| {
        ConfigError::msg(format!(
            "config key `{key}` ({}): {msg}",
            files.describe(n.pos)
        ))
    };
    let mut out = Vec::new();
    for item in list_or_single(val) {
        match kind {
            "user" | "user_regexp" | "user_glob" | "shared_group" => {
                let pairs: Vec<(String, Option<String>)> = match &item.v {
                    V::Map(m) => m
                        .iter()
                        .map(|(u, s)| (u.scalar().unwrap_or_default(), s.scalar()))
                        .collect(),
                    _ => {
                        let s = item
                            .scalar()
                            .ok_or_else(|| bad(files, key, item, "a user name or JID"))?;
                        match s.rsplit_once('@') {
                            Some((u, d)) if kind != "user_regexp" || !d.is_empty() => {
                                vec![(u.to_string(), Some(d.to_string()))]
                            }
                            _ => vec![(s, None)],
                        }
                    }
                };
                for (u, d) in pairs {
                    let domain = d.map(|d| d.to_lowercase());
                    if kind == "shared_group" {
                        out.push(AclRule::SharedGroup(u));
                        continue;
                    }
                    if kind == "user" {
                        let jid = match &domain {
                            Some(d) => format!("{u}@{d}"),
                            None => format!("{u}@localhost"),
                        };
                        if jid::BareJid::new(&jid).is_err() {
                            return Err(err(item, format!("`{jid}` is not a JID")));
                        }
                    }
                    let node = matcher(kind, &u).map_err(|e| err(item, e))?;
                    out.push(AclRule::User { node, domain });
                }
            }
            "server" | "server_regexp" | "server_glob" => {
                let s = item
                    .scalar()
                    .ok_or_else(|| bad(files, key, item, "a domain"))?;
                out.push(AclRule::Server(
                    matcher(kind, &s).map_err(|e| err(item, e))?,
                ));
            }
            "resource" | "resource_regexp" | "resource_glob" => {
                let s = item
                    .scalar()
                    .ok_or_else(|| bad(files, key, item, "a resource"))?;
                out.push(AclRule::Resource(
                    matcher(kind, &s).map_err(|e| err(item, e))?,
                ));
            }
            "node_regexp" | "node_glob" => {
                let pairs: Vec<(String, String)> = match &item.v {
                    V::Map(m) => m
                        .iter()
                        .map(|(u, s)| {
                            (
                                u.scalar().unwrap_or_default(),
                                s.scalar().unwrap_or_default(),
                            )
                        })
                        .collect(),
                    _ => {
                        let s = item
                            .scalar()
                            .ok_or_else(|| bad(files, key, item, "user@server patterns"))?;
                        let (u, d) = s.rsplit_once('@').unwrap_or((s.as_str(), "*"));
                        vec![(u.to_string(), d.to_string())]
                    }
                };
                for (u, d) in pairs {
                    out.push(AclRule::Node(
                        matcher(kind, &u).map_err(|e| err(item, e))?,
                        matcher(kind, &d).map_err(|e| err(item, e))?,
                    ));
                }
            }
            "ip" => {
                let s = item
                    .scalar()
                    .ok_or_else(|| bad(files, key, item, "an address or network"))?;
                let (addr, bits) = match s.split_once('/') {
                    Some((a, b)) => (a, Some(b)),
                    None => (s.as_str(), None),
                };
                let ip: IpAddr = addr
                    .parse()
                    .map_err(|_| err(item, format!("`{s}` is not an IP address or network")))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    Some(b) => b
                        .parse::<u8>()
                        .ok()
                        .filter(|b| *b <= max)
                        .ok_or_else(|| err(item, format!("`{s}`: bad prefix length")))?,
                    None => max,
                };
                out.push(AclRule::Ip(ip, bits));
            }
            "acl" if allow_acl_ref => {
                let s = item
                    .scalar()
                    .ok_or_else(|| bad(files, key, item, "an ACL name"))?;
                out.push(AclRule::Acl(s));
            }
            other => {
                return Err(err(
                    val,
                    format!(
                        "unknown ACL type `{other}` (user, server, resource, user_regexp, server_regexp, resource_regexp, node_regexp, user_glob, server_glob, resource_glob, node_glob, shared_group, ip{})",
                        if allow_acl_ref { ", acl" } else { "" }
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// An ACL definition: `{type: values, …}` or a list of such mappings.
pub(crate) fn parse_acl(
    name: &str,
    n: &Node,
    files: &Files,
    warnings: &mut Warnings,
) -> Result<AclSpec, ConfigError> {
    let key = format!("acl.{name}");
    let mut spec = AclSpec::default();
    for part in list_or_single(n) {
        let V::Map(entries) = &part.v else {
            return Err(bad(files, &key, part, "a mapping like `user: [...]`"));
        };
        for (k, v) in entries {
            let kind = k.scalar().unwrap_or_default();
            let rules = parse_condition(&kind, v, &format!("{key}.{kind}"), files, false)?;
            if kind == "shared_group" {
                warnings.push(
                    files,
                    &format!("{key}.shared_group"),
                    k.pos,
                    "Palaver has no shared rosters: this condition matches nobody",
                );
            }
            spec.rules.extend(rules);
        }
    }
    Ok(spec)
}

/// The conditions of one access-rule entry: an ACL name, a list of ACL names
/// and inline conditions (`- acl: admin`, `- user: x@y`), or a mapping of conditions.
fn entry_conditions(v: &Node, key: &str, files: &Files) -> Result<Vec<AclRule>, ConfigError> {
    let mut out = Vec::new();
    for item in list_or_single(v) {
        match &item.v {
            V::Map(entries) => {
                for (k, cv) in entries {
                    let kind = k.scalar().unwrap_or_default();
                    out.extend(parse_condition(&kind, cv, key, files, true)?);
                }
            }
            V::Seq(inner) => {
                for i in inner {
                    out.extend(entry_conditions(i, key, files)?);
                }
            }
            _ => {
                let s = item
                    .scalar()
                    .ok_or_else(|| bad(files, key, item, "an ACL name"))?;
                out.push(AclRule::Acl(s));
            }
        }
    }
    Ok(out)
}

/// Generic ordered rule list: `{value: acl, …}`, `[{value: acl}, value, …]`
/// or a bare scalar (value for everyone). `is_value` filters allowed values.
fn parse_ordered(
    n: &Node,
    key: &str,
    files: &Files,
    is_value: &dyn Fn(&str) -> bool,
    expected: &str,
) -> Result<Vec<(String, Vec<AclRule>, Node)>, ConfigError> {
    let mut out = Vec::new();
    let mut push = |k: &Node, v: Option<&Node>| -> Result<(), ConfigError> {
        let value = k.scalar().ok_or_else(|| bad(files, key, k, expected))?;
        if !is_value(&value) {
            return Err(bad(files, key, k, expected));
        }
        let conds = match v {
            Some(v) if !matches!(v.v, V::Null) => entry_conditions(v, key, files)?,
            _ => vec![AclRule::Acl("all".into())],
        };
        out.push((value, conds, k.clone()));
        Ok(())
    };
    match &n.v {
        V::Map(entries) => {
            for (k, v) in entries {
                push(k, Some(v))?;
            }
        }
        V::Seq(items) => {
            for item in items {
                match &item.v {
                    V::Map(entries) => {
                        for (k, v) in entries {
                            push(k, Some(v))?;
                        }
                    }
                    _ => push(item, None)?,
                }
            }
        }
        _ => push(n, None)?,
    }
    if out.is_empty() {
        return Err(bad(files, key, n, expected));
    }
    Ok(out)
}

/// An access rule in any of ejabberd's forms.
pub(crate) fn parse_access_rule(
    name: &str,
    n: &Node,
    files: &Files,
) -> Result<AccessRule, ConfigError> {
    let key = format!("access_rules.{name}");
    let entries = parse_ordered(
        n,
        &key,
        files,
        &|v| v == "allow" || v == "deny",
        "`allow` or `deny`",
    )?;
    Ok(AccessRule {
        entries: entries
            .into_iter()
            .map(|(v, c, _)| {
                let act = if v == "allow" {
                    AccessAction::Allow
                } else {
                    AccessAction::Deny
                };
                (act, c)
            })
            .collect(),
    })
}

/// A shaper rule in any of ejabberd's forms.
pub(crate) fn parse_shaper_rule(
    name: &str,
    n: &Node,
    files: &Files,
) -> Result<ShaperRule, ConfigError> {
    let key = format!("shaper_rules.{name}");
    let entries = parse_ordered(n, &key, files, &|_| true, "a shaper name or a number")?;
    Ok(ShaperRule {
        entries: entries.into_iter().map(|(v, c, _)| (v, c)).collect(),
    })
}

/// A shaper: `rate` or `{rate, burst_size}`.
pub(crate) fn parse_shaper(name: &str, n: &Node, files: &Files) -> Result<Shaper, ConfigError> {
    let key = format!("shaper.{name}");
    let num = |n: &Node, what: &str| match n.v {
        V::Int(i) if i > 0 => {
            u64::try_from(i).map_err(|_| bad(files, what, n, "a positive integer"))
        }
        _ => Err(bad(files, what, n, "a positive integer")),
    };
    match &n.v {
        V::Map(entries) => {
            let mut rate = None;
            let mut burst = None;
            for (k, v) in entries {
                match k.as_str() {
                    Some("rate") => rate = Some(num(v, &format!("{key}.rate"))?),
                    Some("burst_size") => burst = Some(num(v, &format!("{key}.burst_size"))?),
                    _ => return Err(bad(files, &key, k, "`rate` or `burst_size`")),
                }
            }
            let rate = rate.ok_or_else(|| bad(files, &key, n, "a `rate`"))?;
            Ok(Shaper {
                rate,
                burst_size: burst.unwrap_or(rate),
            })
        }
        _ => {
            let rate = num(n, &key)?;
            Ok(Shaper {
                rate,
                burst_size: rate,
            })
        }
    }
}

/// ACL names used by `rules` that are not defined (for a warning).
pub(crate) fn undefined_acls<'a>(
    rules: impl Iterator<Item = &'a AclRule>,
    acl: &std::collections::BTreeMap<String, AclSpec>,
) -> Vec<String> {
    let mut out = Vec::new();
    for r in rules {
        if let AclRule::Acl(n) = r
            && n != "all"
            && n != "none"
            && !acl.contains_key(n)
            && !out.contains(n)
        {
            out.push(n.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.pem", "a.pem"));
        assert!(!glob_match("*.pem", "a.pem.bak"));
        assert!(glob_match("ad?in", "admin"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[!a-c]x", "bx"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn networks() {
        let net: IpAddr = "127.0.0.0".parse().unwrap();
        assert!(ip_in("127.1.2.3".parse().unwrap(), net, 8));
        assert!(!ip_in("128.0.0.1".parse().unwrap(), net, 8));
        assert!(ip_in("::ffff:127.0.0.1".parse().unwrap(), net, 8));
        let six: IpAddr = "::1".parse().unwrap();
        assert!(ip_in("::1".parse().unwrap(), six, 128));
        assert!(!ip_in("::2".parse().unwrap(), six, 128));
    }
}
