//! Where a remote domain's server is: the `s2s_hosts` override, then DNS
//! (`_xmpps-server._tcp` for XEP-0368 direct TLS and `_xmpp-server._tcp`,
//! ordered by priority and weight; without SRV records, the domain itself on
//! `outgoing_s2s_port`). DNS sits behind [`Dns`] so tests can stand in.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Priority (lower first).
    pub priority: u16,
    /// Weight among equal priorities (higher first here).
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host (`.` means "no service").
    pub target: String,
}

/// DNS lookups needed for federation.
#[async_trait::async_trait]
pub trait Dns: Send + Sync {
    /// SRV records of `name` (empty when there are none).
    async fn srv(&self, name: &str) -> io::Result<Vec<Srv>>;
    /// A and AAAA records of `host`.
    async fn ips(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (hickory, `/etc/resolv.conf`).
pub struct Hickory(hickory_resolver::TokioResolver);

impl Hickory {
    /// A resolver from the system configuration, with a per-query timeout.
    pub fn system(timeout: Duration) -> io::Result<Hickory> {
        let mut b = hickory_resolver::TokioResolver::builder_tokio().map_err(io::Error::other)?;
        b.options_mut().timeout = timeout;
        Ok(Hickory(b.build().map_err(io::Error::other)?))
    }
}

#[async_trait::async_trait]
impl Dns for Hickory {
    async fn srv(&self, name: &str) -> io::Result<Vec<Srv>> {
        match self.0.srv_lookup(name).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(s) => Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii().trim_end_matches('.').to_string(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    async fn ips(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let l = self.0.lookup_ip(host).await.map_err(io::Error::other)?;
        Ok(l.iter().collect())
    }
}

/// No resolver (the system configuration could not be read): every lookup
/// fails with the reason; `s2s_hosts` still apply.
pub struct NoDns(pub String);

#[async_trait::async_trait]
impl Dns for NoDns {
    async fn srv(&self, _name: &str) -> io::Result<Vec<Srv>> {
        Err(io::Error::other(self.0.clone()))
    }
    async fn ips(&self, _host: &str) -> io::Result<Vec<IpAddr>> {
        Err(io::Error::other(self.0.clone()))
    }
}

/// A place to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fixed address (from `s2s_hosts`).
    Addr(SocketAddr),
    /// A host name and port, with direct TLS (XEP-0368) or not.
    Host {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
        /// Direct TLS.
        tls: bool,
    },
}

/// The targets for `domain`, in the order to try them.
pub async fn targets(
    dns: &dyn Dns,
    statics: &BTreeMap<String, String>,
    domain: &str,
    default_port: u16,
) -> io::Result<Vec<Target>> {
    if let Some(a) = statics.get(domain) {
        let addr = a
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad s2s_hosts address"))?;
        return Ok(vec![Target::Addr(addr)]);
    }
    if domain.parse::<IpAddr>().is_ok() {
        return Ok(vec![Target::Host {
            host: domain.into(),
            port: default_port,
            tls: false,
        }]);
    }
    let (n1, n2) = (
        format!("_xmpps-server._tcp.{domain}."),
        format!("_xmpp-server._tcp.{domain}."),
    );
    let (direct, starttls) = tokio::join!(dns.srv(&n1), dns.srv(&n2));
    let mut all: Vec<(Srv, bool)> = Vec::new();
    // A failing SRV query counts as no records (the A/AAAA fallback still applies).
    all.extend(direct.unwrap_or_default().into_iter().map(|s| (s, true)));
    all.extend(starttls.unwrap_or_default().into_iter().map(|s| (s, false)));
    if all.len() == 1 && all[0].0.target.is_empty() {
        // RFC 6120 §3.2.1: a target of "." means the service is not offered.
        return Ok(Vec::new());
    }
    all.retain(|(s, _)| !s.target.is_empty());
    if all.is_empty() {
        return Ok(vec![Target::Host {
            host: domain.into(),
            port: default_port,
            tls: false,
        }]);
    }
    // Priority first; then weight (heavier first); direct TLS before STARTTLS on ties.
    all.sort_by(|a, b| {
        a.0.priority
            .cmp(&b.0.priority)
            .then(b.0.weight.cmp(&a.0.weight))
            .then(b.1.cmp(&a.1))
    });
    Ok(all
        .into_iter()
        .map(|(s, tls)| Target::Host {
            host: s.target,
            port: s.port,
            tls,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<String, Vec<Srv>>);

    #[async_trait::async_trait]
    impl Dns for Fake {
        async fn srv(&self, name: &str) -> io::Result<Vec<Srv>> {
            Ok(self.0.get(name).cloned().unwrap_or_default())
        }
        async fn ips(&self, _host: &str) -> io::Result<Vec<IpAddr>> {
            Ok(vec![IpAddr::from([127, 0, 0, 1])])
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[tokio::test]
    async fn srv_order_override_and_fallback() {
        let mut m = HashMap::new();
        m.insert(
            "_xmpps-server._tcp.example.org.".to_string(),
            vec![srv(10, 0, 5270, "tls.example.org")],
        );
        m.insert(
            "_xmpp-server._tcp.example.org.".to_string(),
            vec![
                srv(5, 0, 5269, "a.example.org"),
                srv(10, 0, 5269, "b.example.org"),
            ],
        );
        m.insert(
            "_xmpp-server._tcp.none.org.".to_string(),
            vec![srv(0, 0, 0, "")],
        );
        let dns = Fake(m);
        let mut statics = BTreeMap::new();
        statics.insert("fixed.org".to_string(), "127.0.0.9:6000".to_string());
        let t = targets(&dns, &statics, "example.org", 5269).await.unwrap();
        let hosts: Vec<(String, bool)> = t
            .iter()
            .map(|t| match t {
                Target::Host { host, tls, .. } => (host.clone(), *tls),
                Target::Addr(a) => (a.to_string(), false),
            })
            .collect();
        assert_eq!(
            hosts,
            [
                ("a.example.org".to_string(), false),
                ("tls.example.org".to_string(), true),
                ("b.example.org".to_string(), false)
            ]
        );
        assert_eq!(
            targets(&dns, &statics, "fixed.org", 5269).await.unwrap(),
            [Target::Addr("127.0.0.9:6000".parse().unwrap())]
        );
        assert_eq!(
            targets(&dns, &statics, "plain.org", 5269).await.unwrap(),
            [Target::Host {
                host: "plain.org".into(),
                port: 5269,
                tls: false
            }]
        );
        assert!(
            targets(&dns, &statics, "none.org", 5269)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
