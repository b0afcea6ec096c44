//! Federation (server-to-server streams, RFC 6120) and external components
//! (XEP-0114) for Palaver.
//!
//! - [`outgoing`]: the routing table's remote fallback. One stream per
//!   (local domain, remote domain) pair, opened on the first stanza,
//!   reused, closed after `s2s_timeout` idle. While it is set up stanzas
//!   wait in a bounded queue (`s2s_queue_limit`); when it cannot be set up
//!   they are bounced with `remote-server-not-found` or
//!   `remote-server-timeout`, and so is what follows for a back-off delay
//!   (up to `s2s_max_retry_delay`).
//! - [`incoming`]: the `ejabberd_s2s_in` listener (STARTTLS or direct TLS),
//!   authenticating peers with SASL EXTERNAL (certificate valid for the
//!   domain under the system roots and `s2s_cafile`) or Server Dialback
//!   (XEP-0220, keys per XEP-0185), several domain pairs per stream.
//!   Every stanza must come from a domain authenticated on the stream and
//!   go to one of ours (`invalid-from` / `host-unknown` otherwise).
//! - [`component`]: the `ejabberd_service` listener (handshake, the
//!   component's domain in the routing table while it is connected).

pub mod component;
pub mod incoming;
pub mod outgoing;
pub mod resolve;
pub mod stream;
pub mod tls;

use hmac::{Hmac, Mac};
use palaver_proto::framer::Limits;
use palaver_server::config::{ListenModule, S2sConfig, Subject};
use palaver_server::tls::CertStore;
use palaver_server::{Core, RunningServer};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Namespace of Server Dialback elements.
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// Stream feature of XEP-0220.
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// XEP-0114.
pub const NS_COMPONENT: &str = "jabber:component:accept";

/// Why federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum S2sError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {err}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Error.
        err: std::io::Error,
    },
    /// Certificates, CA file or resolver.
    #[error("s2s: {0}")]
    Setup(String),
}

/// What federation shares between its streams.
pub struct S2s {
    /// The server.
    pub core: Arc<Core>,
    /// The `s2s_*` options.
    pub cfg: S2sConfig,
    /// TLS configs and peer certificate checks.
    pub tls: tls::Tls,
    /// DNS.
    pub dns: Arc<dyn resolve::Dns>,
    /// Dialback secret (XEP-0185), random per process.
    secret: [u8; 32],
    /// Outgoing streams.
    pub out: outgoing::Outgoing,
    /// Incoming s2s streams open now.
    pub incoming_count: AtomicUsize,
}

impl S2s {
    /// The XEP-0185 dialback key for a stream `id` from `originating` to `receiving`.
    pub fn dialback_key(&self, receiving: &str, originating: &str, id: &str) -> String {
        let k = hex::encode(Sha256::digest(self.secret));
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(k.as_bytes()) else {
            return String::new();
        };
        mac.update(format!("{receiving} {originating} {id}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether federation with `domain` is allowed (`s2s_access`).
    pub fn allowed(&self, domain: &str) -> bool {
        match &self.cfg.access {
            None => true,
            Some(rule) => self
                .core
                .config()
                .access_as(None, rule, Subject::jid(domain), true),
        }
    }

    /// Whether `domain` is served here (host, service or component).
    pub fn is_ours(&self, domain: &str) -> bool {
        self.core.routes().lookup(domain).is_some()
    }

    /// Whether `domain` is configured on a component listener.
    pub fn is_component_domain(&self, domain: &str) -> bool {
        self.core
            .config()
            .listen
            .iter()
            .any(|l| l.module == ListenModule::Component && l.component.hosts.contains_key(domain))
    }

    /// Framer limits of s2s streams.
    pub fn limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.cfg.max_stanza_size,
            ..Limits::default()
        }
    }

    /// Idle timeout (none when 0).
    pub fn idle(&self) -> Option<Duration> {
        (self.cfg.idle_timeout > 0).then(|| Duration::from_secs(self.cfg.idle_timeout))
    }
}

/// Started federation: bound listener addresses.
pub struct Started {
    /// Shared state (the outgoing sink lives in the routing table).
    pub s2s: Arc<S2s>,
    /// `ejabberd_s2s_in` listeners, with whether they are direct TLS.
    pub s2s_addrs: Vec<(bool, SocketAddr)>,
    /// `ejabberd_service` listeners.
    pub component_addrs: Vec<SocketAddr>,
}

/// Start federation on a running server with the system resolver: bind the
/// s2s and component listeners and, when there is an s2s listener, take
/// the routing table's remote slot.
pub async fn start(server: &mut RunningServer) -> Result<Started, S2sError> {
    let dns = resolve::Hickory::system(Duration::from_secs(server.core.config().s2s.dns_timeout))
        .map_err(|e| S2sError::Setup(format!("DNS resolver: {e}")))?;
    start_with(server, Arc::new(dns)).await
}

/// [`start`] with a given resolver.
pub async fn start_with(
    server: &mut RunningServer,
    dns: Arc<dyn resolve::Dns>,
) -> Result<Started, S2sError> {
    let core = server.core.clone();
    let config = core.config().clone();
    // The server's certificates: reloaded on SIGHUP with c2s's and HTTPS's.
    let certs = match core.certs() {
        Some(c) => c.clone(),
        None => Arc::new(
            CertStore::load(&config.certfiles, &config.hosts, &config.data_dir)
                .map_err(|e| S2sError::Setup(e.to_string()))?,
        ),
    };
    let roots = tls::roots(config.s2s.cafile.as_deref()).map_err(S2sError::Setup)?;
    let tls = tls::Tls::new(certs, roots).map_err(S2sError::Setup)?;
    let mut secret = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
    let s2s = Arc::new(S2s {
        core: core.clone(),
        cfg: config.s2s.clone(),
        tls,
        dns,
        secret,
        out: outgoing::Outgoing::default(),
        incoming_count: AtomicUsize::new(0),
    });
    let mut started = Started {
        s2s: s2s.clone(),
        s2s_addrs: Vec::new(),
        component_addrs: Vec::new(),
    };
    for l in &config.listen {
        if !matches!(l.module, ListenModule::S2s | ListenModule::Component) {
            continue;
        }
        let addr = SocketAddr::new(l.ip, l.port);
        let sock = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|err| S2sError::Bind { addr, err })?;
        let local = sock
            .local_addr()
            .map_err(|err| S2sError::Bind { addr, err })?;
        if l.module == ListenModule::S2s {
            tracing::info!(addr = %local, tls = l.tls, "s2s listening");
            started.s2s_addrs.push((l.tls, local));
            server.spawn(incoming::accept_loop(s2s.clone(), l.clone(), sock));
        } else {
            tracing::info!(addr = %local, "component listener");
            started.component_addrs.push(local);
            server.spawn(component::accept_loop(core.clone(), l.clone(), sock));
        }
    }
    if started.s2s_addrs.is_empty() {
        // No s2s listener: no federation (remote domains stay
        // `remote-server-not-found`); components are still served.
        return Ok(started);
    }
    core.routes()
        .set_remote(Some(Arc::new(outgoing::RemoteSink(s2s.clone()))));
    // At shutdown, leave the remote slot (it holds the core: a cycle otherwise).
    let mut shutdown = core.shutdown_signal();
    let weak = Arc::downgrade(&core);
    server.spawn(async move {
        let _guard = ClearRemote(weak);
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    });
    Ok(started)
}

struct ClearRemote(std::sync::Weak<Core>);

impl Drop for ClearRemote {
    fn drop(&mut self) {
        if let Some(core) = self.0.upgrade() {
            core.routes().set_remote(None);
        }
    }
}

/// Count an open incoming stream while the guard lives (also in the
/// metrics: `palaver_s2s_connections{direction="in"}`).
pub(crate) struct Counted<'a>(&'a AtomicUsize, #[allow(dead_code)] Connected);

impl<'a> Counted<'a> {
    pub(crate) fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Counted(c, Connected::new("in"))
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An s2s connection in the gauge `palaver_s2s_connections{direction}`
/// (`in`: accepted streams; `out`: established outgoing streams) while
/// the guard lives.
pub(crate) struct Connected(&'static str);

impl Connected {
    pub(crate) fn new(direction: &'static str) -> Self {
        metrics::gauge!("palaver_s2s_connections", "direction" => direction).increment(1.0);
        Connected(direction)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics::gauge!("palaver_s2s_connections", "direction" => self.0).decrement(1.0);
    }
}

/// The opening of a stream we send.
pub(crate) fn stream_header(
    default_ns: &str,
    from: Option<&str>,
    to: Option<&str>,
    id: Option<&str>,
    dialback: bool,
) -> String {
    let mut h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{default_ns}' xmlns:stream='http://etherx.jabber.org/streams'"
    );
    if dialback {
        h.push_str(" xmlns:db='jabber:server:dialback'");
    }
    for (k, v) in [("from", from), ("to", to), ("id", id)] {
        if let Some(v) = v {
            h.push_str(&format!(" {k}='{}'", stream::esc(v)));
        }
    }
    h.push_str(" version='1.0'>");
    h
}

/// A fresh stream id.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 12];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    hex::encode(b)
}

/// `palaver config check`: a warning for each served host without a
/// certificate that remote servers can verify (in `certfiles`, valid for
/// the host, trusted by the system roots or `s2s_cafile`), when federation
/// is configured. Such a host federates with dialback only, and servers
/// that require authenticated TLS (Prosody's `s2s_secure_auth`, ejabberd's
/// `s2s_use_starttls: required_trusted`) refuse it.
pub fn check_certificates(config: &palaver_server::Config) -> Vec<String> {
    if !config.listen.iter().any(|l| l.module == ListenModule::S2s) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let roots = match tls::roots(config.s2s.cafile.as_deref()) {
        Ok(r) => r,
        Err(e) => return vec![format!("config key `s2s_cafile`: {e}")],
    };
    // Hosts no file covers get a throw-away self-signed certificate here.
    let scratch = std::env::temp_dir().join(format!("palaver-check-{}", std::process::id()));
    let certs = match CertStore::load(&config.certfiles, &config.hosts, &scratch) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return vec![format!(
                "config key `certfiles`: {e}: servers cannot verify this server's hosts"
            )];
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let t = match tls::Tls::new(certs.clone(), roots) {
        Ok(t) => t,
        Err(e) => return vec![format!("config key `certfiles`: {e}")],
    };
    for h in &config.hosts {
        let key = certs.certified_key(Some(h));
        if !t.valid_for(&key.cert, h) {
            out.push(format!(
                "config key `hosts` (`{h}`): no certificate in `certfiles` that other servers can verify for it (valid for the name, not expired, signed by a trusted CA): federation falls back to dialback, and servers requiring authenticated TLS refuse it"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_escapes() {
        let h = super::stream_header("jabber:server", Some("a'b"), None, Some("x"), true);
        assert!(h.contains("from='a&apos;b'"), "{h}");
        assert!(h.contains("xmlns:db="), "{h}");
    }
}
