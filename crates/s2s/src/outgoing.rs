//! Outgoing streams: the routing table's remote fallback.
//!
//! One stream per (local domain, remote domain) pair. The first stanza for
//! a pair starts a task that resolves, connects, negotiates TLS and
//! authenticates (SASL EXTERNAL when the peer's certificate is valid and it
//! offers it, else Server Dialback); stanzas wait in the pair's bounded
//! queue meanwhile. A pair that fails is marked failed for a back-off delay
//! (doubling up to `s2s_max_retry_delay`): its queued stanzas, and those
//! that come during the delay, are bounced with `remote-server-not-found`
//! or `remote-server-timeout` (never an error for an error: see
//! [`Core::bounce`]).

use crate::stream::{Io, StreamEnd, XmlStream};
use crate::{NS_DIALBACK, NS_DIALBACK_FEATURE, S2s, stream_header};
use base64::Engine;
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::framer::Frame;
use palaver_proto::ns;
use palaver_proto::stanza::Stanza;
use palaver_server::Core;
use palaver_server::config::S2sTls;
use palaver_server::router::StanzaSink;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Key = (String, String);

enum Pair {
    Up {
        tx: mpsc::Sender<Stanza>,
        generation: u64,
        last_delay: Duration,
    },
    Failed {
        until: Instant,
        cond: Condition,
        delay: Duration,
    },
}

/// The outgoing pairs.
#[derive(Default)]
pub struct Outgoing {
    pairs: Mutex<HashMap<Key, Pair>>,
    generation: AtomicU64,
}

impl Outgoing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Pair>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remote domains with an open or opening stream from `local`.
    pub fn connected(&self) -> Vec<(String, String)> {
        let mut v: Vec<Key> = self
            .lock()
            .iter()
            .filter(|(_, p)| matches!(p, Pair::Up { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }
}

/// The sink in the routing table's remote slot.
pub struct RemoteSink(pub Arc<S2s>);

impl StanzaSink for RemoteSink {
    fn kind(&self) -> &'static str {
        "s2s"
    }
    fn deliver(&self, _core: &Arc<Core>, st: Stanza) {
        send(&self.0, st);
    }
}

fn bounce(s2s: &S2s, st: &Stanza, cond: Condition, text: &str) {
    let err = StanzaError::new(cond).text(text);
    s2s.core.bounce_with(st, err, None);
}

/// Send a stanza to a remote domain.
pub fn send(s2s: &Arc<S2s>, mut st: Stanza) {
    let Some(to) = st.to.clone() else {
        return;
    };
    let remote = to.domain().to_string();
    let local = st.from.domain().to_string();
    if !s2s.is_ours(&local) {
        // Not ours to relay: we cannot authenticate as another domain.
        bounce(
            s2s,
            &st,
            Condition::NotAllowed,
            "relaying between remote domains is refused",
        );
        return;
    }
    if s2s.is_component_domain(&remote) {
        // A configured component that is not connected now.
        bounce(
            s2s,
            &st,
            Condition::ServiceUnavailable,
            "the component is not connected",
        );
        return;
    }
    if !s2s.allowed(&remote) {
        bounce(
            s2s,
            &st,
            Condition::RemoteServerNotFound,
            "federation with this domain is not allowed",
        );
        return;
    }
    let key = (local, remote);
    loop {
        let tx = {
            let mut pairs = s2s.out.lock();
            match pairs.get(&key) {
                Some(Pair::Up { tx, .. }) => tx.clone(),
                Some(Pair::Failed { until, cond, .. }) if Instant::now() < *until => {
                    let cond = *cond;
                    drop(pairs);
                    bounce(s2s, &st, cond, "the remote server could not be reached");
                    return;
                }
                prev => {
                    let last_delay = match prev {
                        Some(Pair::Failed { delay, .. }) => *delay,
                        _ => Duration::ZERO,
                    };
                    let up = pairs
                        .values()
                        .filter(|p| matches!(p, Pair::Up { .. }))
                        .count();
                    if up >= s2s.cfg.max_connections {
                        drop(pairs);
                        bounce(
                            s2s,
                            &st,
                            Condition::ResourceConstraint,
                            "too many server-to-server connections",
                        );
                        return;
                    }
                    let (tx, rx) = mpsc::channel(s2s.cfg.queue_limit);
                    let generation = s2s.out.generation.fetch_add(1, Ordering::Relaxed);
                    pairs.insert(
                        key.clone(),
                        Pair::Up {
                            tx: tx.clone(),
                            generation,
                            last_delay,
                        },
                    );
                    tokio::spawn(run(s2s.clone(), key.clone(), generation, rx));
                    tx
                }
            }
        };
        match tx.try_send(st) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(s)) => {
                bounce(
                    s2s,
                    &s,
                    Condition::ResourceConstraint,
                    "too many stanzas queued for the remote server",
                );
                return;
            }
            Err(mpsc::error::TrySendError::Closed(s)) => {
                // The stream ended just now: its entry is being replaced.
                st = s;
                let mut pairs = s2s.out.lock();
                if let Some(Pair::Up { tx: t, .. }) = pairs.get(&key)
                    && t.same_channel(&tx)
                {
                    pairs.remove(&key);
                }
            }
        }
    }
}

/// Mark the pair failed (if it is still this task's) and bounce what waits.
fn fail(
    s2s: &Arc<S2s>,
    key: &Key,
    generation: u64,
    rx: &mut mpsc::Receiver<Stanza>,
    cond: Condition,
    why: &str,
) {
    tracing::info!(local = %key.0, remote = %key.1, error = why, "s2s connection failed");
    {
        let mut pairs = s2s.out.lock();
        if let Some(Pair::Up {
            generation: g,
            last_delay,
            ..
        }) = pairs.get(key)
            && *g == generation
        {
            let max = Duration::from_secs(s2s.cfg.max_retry_delay);
            let delay =
                (*last_delay * 2).clamp(Duration::from_secs(1), max.max(Duration::from_secs(1)));
            let delay = if s2s.cfg.max_retry_delay == 0 {
                Duration::ZERO
            } else {
                delay
            };
            pairs.insert(
                key.clone(),
                Pair::Failed {
                    until: Instant::now() + delay,
                    cond,
                    delay,
                },
            );
        }
    }
    rx.close();
    while let Ok(st) = rx.try_recv() {
        bounce(s2s, &st, cond, "the remote server could not be reached");
    }
}

fn forget(s2s: &S2s, key: &Key, generation: u64) {
    let mut pairs = s2s.out.lock();
    if let Some(Pair::Up { generation: g, .. }) = pairs.get(key)
        && *g == generation
    {
        pairs.remove(key);
    }
}

async fn run(s2s: Arc<S2s>, key: Key, generation: u64, mut rx: mpsc::Receiver<Stanza>) {
    let (local, remote) = (&key.0, &key.1);
    let limit = Duration::from_secs(s2s.cfg.connect_timeout);
    let mut stream = match tokio::time::timeout(limit, connect(&s2s, local, remote)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return fail(
                &s2s,
                &key,
                generation,
                &mut rx,
                Condition::RemoteServerNotFound,
                &e,
            );
        }
        Err(_) => {
            return fail(
                &s2s,
                &key,
                generation,
                &mut rx,
                Condition::RemoteServerTimeout,
                "timed out",
            );
        }
    };
    tracing::info!(%local, %remote, "s2s outgoing stream established");
    let _connected = crate::Connected::new("out");
    let opened = Instant::now();
    let idle = s2s.idle();
    let mut shutdown = s2s.core.shutdown_signal();
    let mut last = Instant::now();
    let end = loop {
        let deadline = idle.map(|d| tokio::time::Instant::from_std(last + d));
        tokio::select! {
            next = rx.recv() => {
                let Some(st) = next else { break "closed" };
                last = Instant::now();
                if let Err(e) = stream.send(&st.el).await {
                    tracing::info!(%remote, error = %e, "s2s write failed");
                    bounce(&s2s, &st, Condition::RemoteServerNotFound, "the connection to the remote server failed");
                    break "write failed";
                }
            }
            frame = stream.next() => match frame {
                Ok(Frame::Element(el)) if el.is("error", ns::STREAM) => break "stream error",
                Ok(_) => last = Instant::now(),
                Err(_) => break "peer closed",
            },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                // Idle: leave the table, send what raced in, close.
                forget(&s2s, &key, generation);
                rx.close();
                while let Ok(st) = rx.try_recv() {
                    let _ = stream.send(&st.el).await;
                }
                stream.close().await;
                tracing::debug!(%local, %remote, "s2s outgoing stream closed (idle)");
                return;
            }
            _ = shutdown.changed() => {
                forget(&s2s, &key, generation);
                rx.close();
                while let Ok(st) = rx.try_recv() {
                    let _ = stream.send(&st.el).await;
                }
                stream.close().await;
                return;
            }
        }
    };
    tracing::info!(%local, %remote, why = end, "s2s outgoing stream ended");
    forget(&s2s, &key, generation);
    rx.close();
    let young = opened.elapsed() < Duration::from_secs(5);
    while let Ok(st) = rx.try_recv() {
        if young {
            bounce(
                &s2s,
                &st,
                Condition::RemoteServerNotFound,
                "the remote server closed the connection",
            );
        } else {
            send(&s2s, st);
        }
    }
    stream.close().await;
}

/// A stream to `remote` as `local`, through TLS negotiation, with the
/// peer's stream id and features.
pub(crate) struct Opened {
    pub stream: XmlStream,
    pub id: String,
    pub features: Option<Element>,
}

impl Opened {
    fn has_feature(&self, name: &str, ns: &str) -> bool {
        self.features
            .as_ref()
            .is_some_and(|f| f.get_child(name, ns).is_some())
    }

    fn offers_external(&self) -> bool {
        self.features.as_ref().is_some_and(|f| {
            f.get_child("mechanisms", ns::SASL).is_some_and(|m| {
                m.children()
                    .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
            })
        })
    }
}

/// Resolve, connect and negotiate TLS (not yet authenticated).
pub(crate) async fn open(s2s: &S2s, local: &str, remote: &str) -> Result<Opened, String> {
    let targets = crate::resolve::targets(&*s2s.dns, &s2s.cfg.hosts, remote, s2s.cfg.port)
        .await
        .map_err(|e| format!("resolving {remote}: {e}"))?;
    if targets.is_empty() {
        return Err(format!("{remote} offers no server-to-server service"));
    }
    let mut last = format!("{remote}: no address");
    for t in targets {
        let (addrs, direct, host) = match t {
            crate::resolve::Target::Addr(a) => (vec![a], false, remote.to_string()),
            crate::resolve::Target::Host { host, port, tls } => match s2s.dns.ips(&host).await {
                Ok(ips) => (
                    ips.into_iter()
                        .map(|ip| std::net::SocketAddr::new(ip, port))
                        .collect(),
                    tls,
                    host,
                ),
                Err(e) => {
                    last = format!("resolving {host}: {e}");
                    continue;
                }
            },
        };
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(tcp) => match negotiate(s2s, tcp, direct, local, remote).await {
                    Ok(o) => return Ok(o),
                    Err(e) => last = format!("{host} ({a}): {e}"),
                },
                Err(e) => last = format!("connecting to {host} ({a}): {e}"),
            }
        }
    }
    Err(last)
}

async fn negotiate(
    s2s: &S2s,
    tcp: TcpStream,
    direct: bool,
    local: &str,
    remote: &str,
) -> Result<Opened, String> {
    let _ = tcp.set_nodelay(true);
    let mut stream = XmlStream::new(Io::Plain(tcp), s2s.limits());
    let e = |e: StreamEnd| e.to_string();
    if direct {
        let cfg = s2s.tls.client(local, true)?;
        stream
            .connect_tls(cfg, remote)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
    }
    loop {
        let id = open_stream(&mut stream, local, remote).await?;
        let features = if id.1 {
            let f = stream
                .element_within(Duration::from_secs(60))
                .await
                .map_err(e)?;
            if !f.is("features", ns::STREAM) {
                return Err(stream_error_text(&f));
            }
            Some(f)
        } else {
            None
        };
        let offered = features
            .as_ref()
            .is_some_and(|f| f.get_child("starttls", ns::TLS).is_some());
        if !stream.is_tls() && offered && s2s.cfg.use_starttls != S2sTls::Off {
            stream
                .send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await
                .map_err(|e| e.to_string())?;
            let r = stream
                .element_within(Duration::from_secs(60))
                .await
                .map_err(e)?;
            if !r.is("proceed", ns::TLS) {
                return Err("STARTTLS refused".into());
            }
            let cfg = s2s.tls.client(local, false)?;
            stream
                .connect_tls(cfg, remote)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            continue;
        }
        if !stream.is_tls() && s2s.cfg.use_starttls == S2sTls::Required {
            return Err("TLS is required (s2s_use_starttls) and the peer offers none".into());
        }
        return Ok(Opened {
            stream,
            id: id.0,
            features,
        });
    }
}

/// Send our header and read the peer's: (stream id, version 1.0).
async fn open_stream(
    stream: &mut XmlStream,
    local: &str,
    remote: &str,
) -> Result<(String, bool), String> {
    stream
        .send_raw(&stream_header(
            ns::SERVER,
            Some(local),
            Some(remote),
            None,
            true,
        ))
        .await
        .map_err(|e| e.to_string())?;
    match stream.next_within(Duration::from_secs(60)).await {
        Ok(Frame::Open(h)) => {
            if h.default_ns.as_deref() != Some(ns::SERVER) {
                return Err("the peer's stream is not jabber:server".into());
            }
            let id = h.id.ok_or("the peer's stream has no id")?;
            Ok((id, h.version.as_deref() == Some("1.0")))
        }
        Ok(_) => Err("expected a stream header".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn stream_error_text(el: &Element) -> String {
    if el.is("error", ns::STREAM) {
        let cond = el
            .children()
            .find(|c| c.ns() == ns::STREAMS && c.name() != "text")
            .map(|c| c.name().to_string())
            .unwrap_or_default();
        format!("stream error from peer: {cond}")
    } else {
        format!("unexpected <{}/>", el.name())
    }
}

/// Open and authenticate a stream from `local` to `remote`.
async fn connect(s2s: &S2s, local: &str, remote: &str) -> Result<XmlStream, String> {
    let mut o = open(s2s, local, remote).await?;
    let e = |e: StreamEnd| e.to_string();
    let valid = o.stream.is_tls()
        && o.stream
            .peer_certs()
            .is_some_and(|c| s2s.tls.valid_for(&c, remote));
    if valid && o.offers_external() {
        let authzid = base64::engine::general_purpose::STANDARD.encode(local);
        o.stream
            .send_raw(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"
            ))
            .await
            .map_err(|e| e.to_string())?;
        let r = o
            .stream
            .element_within(Duration::from_secs(60))
            .await
            .map_err(e)?;
        if r.is("success", ns::SASL) {
            o.stream.restart();
            let (_, v1) = open_stream(&mut o.stream, local, remote).await?;
            if v1 {
                let f = o
                    .stream
                    .element_within(Duration::from_secs(60))
                    .await
                    .map_err(e)?;
                if !f.is("features", ns::STREAM) {
                    return Err(stream_error_text(&f));
                }
            }
            tracing::debug!(%local, %remote, "s2s authenticated with SASL EXTERNAL");
            return Ok(o.stream);
        }
        tracing::info!(%local, %remote, "SASL EXTERNAL refused by the peer; trying dialback");
    }
    if !s2s.cfg.dialback {
        return Err("the peer's certificate is not valid for it and dialback is disabled".into());
    }
    let _ = o.has_feature("dialback", NS_DIALBACK_FEATURE);
    let key = s2s.dialback_key(remote, local, &o.id);
    o.stream
        .send_raw(&format!(
            "<db:result from='{}' to='{}'>{key}</db:result>",
            crate::stream::esc(local),
            crate::stream::esc(remote)
        ))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let r = o
            .stream
            .element_within(Duration::from_secs(60))
            .await
            .map_err(e)?;
        if r.is("result", NS_DIALBACK) {
            return match r.attr("type") {
                Some("valid") => Ok(o.stream),
                Some(t) => Err(format!("dialback {t}")),
                None => Err("dialback answer without type".into()),
            };
        }
        if r.is("error", ns::STREAM) {
            return Err(stream_error_text(&r));
        }
    }
}
