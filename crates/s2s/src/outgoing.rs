//! Outgoing streams: the routing table's remote fallback.
//!
//! One stream per remote domain and sender domain pair to start with. The
//! first stanza for a pair starts a task that resolves, connects,
//! negotiates TLS and authenticates (SASL EXTERNAL when the peer's
//! certificate is valid and it offers it, else Server Dialback); stanzas
//! wait in the stream's bounded queue meanwhile. A pair that fails is marked
//! failed for a back-off delay (doubling up to `s2s_max_retry_delay`): its
//! queued stanzas, and those that come during the delay, are bounced with
//! `remote-server-not-found` or `remote-server-timeout` (never an error for
//! an error: see [`Core::bounce`]).
//!
//! Sender multiplexing (XEP-0220 §2.5.1): once a stream to a remote domain
//! is authenticated by dialback, another of our domains (a second virtual
//! host, `conference.HOST`…) with stanzas for the same remote domain uses
//! it too: the stream task sends a `<db:result/>` for the new pair there and
//! holds the pair's stanzas until the peer answers `valid`. When the peer
//! answers `error`, closes the stream or does not answer in
//! `outgoing_s2s_timeout`, the pair falls back to a stream of its own (and
//! after a closed stream, that remote domain is no longer multiplexed);
//! `invalid` bounces them (the peer says our key is bogus: a new stream
//! would hear the same). A stream authenticated by SASL EXTERNAL carries
//! its one sender domain only (RFC 6120 §6.4.6 authenticates one identity).

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
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Key = (String, String);

/// What [`send`] knows of a stream's task.
#[derive(Default)]
struct Conn {
    /// Authenticated by dialback: further sender domains may join it.
    mux: AtomicBool,
    /// Sender domains the peer would not take on this stream.
    refused: Mutex<HashSet<String>>,
}

impl Conn {
    fn refused(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Pair {
    Up {
        tx: mpsc::Sender<Stanza>,
        generation: u64,
        last_delay: Duration,
        conn: Arc<Conn>,
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
    /// Remote domains whose server closed a stream on a multiplexed
    /// `<db:result/>`: every pair gets its own stream there.
    no_mux: Mutex<HashSet<String>>,
}

impl Outgoing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Pair>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn no_mux(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.no_mux.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (local domain, remote domain) pairs with an open or opening stream.
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

    /// Which outgoing stream carries the pair (`local`, `remote`), if one
    /// does: pairs with the same number share a stream.
    pub fn stream_of(&self, local: &str, remote: &str) -> Option<u64> {
        match self.lock().get(&(local.to_string(), remote.to_string())) {
            Some(Pair::Up { generation, .. }) => Some(*generation),
            _ => None,
        }
    }

    /// Outgoing streams open or opening (several pairs may share one).
    pub fn streams(&self) -> usize {
        let pairs = self.lock();
        let gens: HashSet<u64> = pairs
            .values()
            .filter_map(|p| match p {
                Pair::Up { generation, .. } => Some(*generation),
                Pair::Failed { .. } => None,
            })
            .collect();
        gens.len()
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
                    // Sender multiplexing: a dialback-authenticated stream
                    // to the same remote domain that has not refused us.
                    let shared = if s2s.out.no_mux().contains(&key.1) {
                        None
                    } else {
                        pairs.iter().find_map(|((_, r), p)| match p {
                            Pair::Up {
                                tx,
                                generation,
                                conn,
                                ..
                            } if *r == key.1
                                && conn.mux.load(Ordering::Acquire)
                                && !conn.refused().contains(&key.0) =>
                            {
                                Some((tx.clone(), *generation, conn.clone()))
                            }
                            _ => None,
                        })
                    };
                    if let Some((tx, generation, conn)) = shared {
                        pairs.insert(
                            key.clone(),
                            Pair::Up {
                                tx: tx.clone(),
                                generation,
                                last_delay,
                                conn,
                            },
                        );
                        tx
                    } else {
                        let streams: HashSet<u64> = pairs
                            .values()
                            .filter_map(|p| match p {
                                Pair::Up { generation, .. } => Some(*generation),
                                Pair::Failed { .. } => None,
                            })
                            .collect();
                        if streams.len() >= s2s.cfg.max_connections {
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
                        let conn = Arc::new(Conn::default());
                        pairs.insert(
                            key.clone(),
                            Pair::Up {
                                tx: tx.clone(),
                                generation,
                                last_delay,
                                conn: conn.clone(),
                            },
                        );
                        tokio::spawn(run(s2s.clone(), key.clone(), generation, conn, rx));
                        tx
                    }
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
    forget(s2s, generation);
    rx.close();
    while let Ok(st) = rx.try_recv() {
        bounce(s2s, &st, cond, "the remote server could not be reached");
    }
}

/// Leave the table: every pair on the stream `generation`.
fn forget(s2s: &S2s, generation: u64) {
    s2s.out
        .lock()
        .retain(|_, p| !matches!(p, Pair::Up { generation: g, .. } if *g == generation));
}

/// Leave the table: one pair, if it is still on the stream `generation`.
fn forget_pair(s2s: &S2s, key: &Key, generation: u64) {
    let mut pairs = s2s.out.lock();
    if let Some(Pair::Up { generation: g, .. }) = pairs.get(key)
        && *g == generation
    {
        pairs.remove(key);
    }
}

/// A sender domain waiting for the peer's answer to its `<db:result/>`
/// on a multiplexed stream.
struct Waiting {
    queue: VecDeque<Stanza>,
    until: tokio::time::Instant,
}

/// What the stream task does with the sender domains it carries.
struct Senders {
    /// Sender domains the peer accepted on this stream.
    authed: HashSet<String>,
    /// Sender domains asked for, with their stanzas.
    waiting: HashMap<String, Waiting>,
}

impl Senders {
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.waiting.values().map(|w| w.until).min()
    }
}

/// A multiplexed sender domain goes to a stream of its own: this stream
/// will not carry it again, and its stanzas are routed anew.
fn fall_back(
    s2s: &Arc<S2s>,
    conn: &Conn,
    remote: &str,
    generation: u64,
    local: String,
    w: Waiting,
    why: &str,
) {
    tracing::info!(%local, %remote, why, "s2s: multiplexing refused; using a stream of its own");
    conn.refused().insert(local.clone());
    forget_pair(s2s, &(local, remote.to_string()), generation);
    for st in w.queue {
        send(s2s, st);
    }
}

async fn run(
    s2s: Arc<S2s>,
    key: Key,
    generation: u64,
    conn: Arc<Conn>,
    mut rx: mpsc::Receiver<Stanza>,
) {
    let (local, remote) = (&key.0, &key.1);
    let limit = Duration::from_secs(s2s.cfg.connect_timeout);
    let Authed {
        mut stream,
        id,
        sasl,
    } = match tokio::time::timeout(limit, connect(&s2s, local, remote)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return fail(&s2s, &key, generation, &mut rx, e.cond, &e.why);
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
    tracing::info!(%local, %remote, sasl, "s2s outgoing stream established");
    // RFC 6120: SASL authenticates one identity; dialback works per pair.
    if !sasl && s2s.cfg.dialback {
        conn.mux.store(true, Ordering::Release);
    }
    let mut senders = Senders {
        authed: HashSet::from([local.clone()]),
        waiting: HashMap::new(),
    };
    let _connected = crate::Connected::new("out");
    let opened = Instant::now();
    let idle = s2s.idle();
    let mut shutdown = s2s.core.shutdown_signal();
    let mut last = Instant::now();
    let end = loop {
        let idle_at = if senders.waiting.is_empty() {
            idle.map(|d| tokio::time::Instant::from_std(last + d))
        } else {
            None
        };
        let answer_by = senders.next_deadline();
        tokio::select! {
            next = rx.recv() => {
                let Some(st) = next else { break "closed" };
                last = Instant::now();
                let from = st.from.domain().to_string();
                if senders.authed.contains(&from) {
                    if let Err(e) = stream.send_stanza(&st).await {
                        tracing::info!(%remote, error = %e, "s2s write failed");
                        bounce(&s2s, &st, Condition::RemoteServerNotFound, "the connection to the remote server failed");
                        break "write failed";
                    }
                } else if conn.refused().contains(&from) {
                    // Queued before the pair left this stream: it has one
                    // of its own now.
                    send(&s2s, st);
                } else if let Some(w) = senders.waiting.get_mut(&from) {
                    if w.queue.len() >= s2s.cfg.queue_limit {
                        bounce(&s2s, &st, Condition::ResourceConstraint, "too many stanzas queued for the remote server");
                    } else {
                        w.queue.push_back(st);
                    }
                } else {
                    // A further sender domain on this stream (XEP-0220 §2.5.1).
                    let k = s2s.dialback_key(remote, &from, &id);
                    let req = format!(
                        "<db:result from='{}' to='{}'>{k}</db:result>",
                        crate::stream::esc(&from),
                        crate::stream::esc(remote)
                    );
                    tracing::debug!(local = %from, %remote, "s2s: dialback for a further sender domain");
                    let mut queue = VecDeque::new();
                    queue.push_back(st);
                    senders.waiting.insert(from, Waiting { queue, until: tokio::time::Instant::now() + limit });
                    if let Err(e) = stream.send_raw(&req).await {
                        tracing::info!(%remote, error = %e, "s2s write failed");
                        break "write failed";
                    }
                }
            }
            frame = stream.next() => match frame {
                Ok(Frame::Element(el)) if el.is("error", ns::STREAM) => break "stream error",
                Ok(Frame::Element(el)) if el.is("result", NS_DIALBACK) => {
                    last = Instant::now();
                    let Some(to) = el.attr("to").map(str::to_ascii_lowercase) else { continue };
                    if el.attr("from").map(str::to_ascii_lowercase).as_deref() != Some(remote.as_str()) {
                        continue;
                    }
                    // Only answers to our own requests (XEP-0220 §3.1 "unsolicited").
                    let Some(w) = senders.waiting.remove(&to) else { continue };
                    match el.attr("type") {
                        Some("valid") => {
                            tracing::info!(local = %to, %remote, "s2s: further sender domain authenticated on the stream");
                            senders.authed.insert(to);
                            let mut failed = false;
                            for st in w.queue {
                                if failed {
                                    bounce(&s2s, &st, Condition::RemoteServerNotFound, "the connection to the remote server failed");
                                } else if stream.send_stanza(&st).await.is_err() {
                                    failed = true;
                                    bounce(&s2s, &st, Condition::RemoteServerNotFound, "the connection to the remote server failed");
                                }
                            }
                            if failed {
                                break "write failed";
                            }
                        }
                        Some("invalid") => {
                            // The peer judged our key bogus (XEP-0220 §2.1.1):
                            // internal-server-error to the senders.
                            tracing::info!(local = %to, %remote, "s2s: the peer refused our dialback key");
                            conn.refused().insert(to.clone());
                            forget_pair(&s2s, &(to, remote.clone()), generation);
                            for st in w.queue {
                                bounce(&s2s, &st, Condition::InternalServerError, "the remote server did not accept this domain");
                            }
                        }
                        _ => fall_back(&s2s, &conn, remote, generation, to, w, "dialback error"),
                    }
                }
                Ok(_) => last = Instant::now(),
                Err(_) => break "peer closed",
            },
            _ = async { match answer_by { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                let now = tokio::time::Instant::now();
                let late: Vec<String> = senders.waiting.iter().filter(|(_, w)| w.until <= now).map(|(k, _)| k.clone()).collect();
                for l in late {
                    if let Some(w) = senders.waiting.remove(&l) {
                        fall_back(&s2s, &conn, remote, generation, l, w, "no dialback answer in time");
                    }
                }
            }
            _ = async { match idle_at { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                // Idle: leave the table, send what raced in, close.
                conn.mux.store(false, Ordering::Release);
                forget(&s2s, generation);
                rx.close();
                let mut again = Vec::new();
                while let Ok(st) = rx.try_recv() {
                    if senders.authed.contains(st.from.domain().as_str()) {
                        let _ = stream.send_stanza(&st).await;
                    } else {
                        again.push(st);
                    }
                }
                stream.close().await;
                for st in again {
                    send(&s2s, st);
                }
                tracing::debug!(%local, %remote, "s2s outgoing stream closed (idle)");
                return;
            }
            _ = shutdown.changed() => {
                conn.mux.store(false, Ordering::Release);
                forget(&s2s, generation);
                rx.close();
                while let Ok(st) = rx.try_recv() {
                    if senders.authed.contains(st.from.domain().as_str()) {
                        let _ = stream.send_stanza(&st).await;
                    } else {
                        bounce(&s2s, &st, Condition::RemoteServerNotFound, "the server is shutting down");
                    }
                }
                for w in std::mem::take(&mut senders.waiting).into_values() {
                    for st in w.queue {
                        bounce(&s2s, &st, Condition::RemoteServerNotFound, "the server is shutting down");
                    }
                }
                stream.close().await;
                return;
            }
        }
    };
    tracing::info!(%local, %remote, why = end, "s2s outgoing stream ended");
    conn.mux.store(false, Ordering::Release);
    forget(&s2s, generation);
    rx.close();
    if !senders.waiting.is_empty() {
        // The peer ended the stream while asked for a further sender
        // domain: it may not take them; one stream per pair from now on.
        s2s.out.no_mux().insert(remote.clone());
        for w in std::mem::take(&mut senders.waiting).into_values() {
            for st in w.queue {
                send(&s2s, st);
            }
        }
    }
    let young = opened.elapsed() < Duration::from_secs(5);
    while let Ok(st) = rx.try_recv() {
        if young && senders.authed.contains(st.from.domain().as_str()) {
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

/// An authenticated outgoing stream.
struct Authed {
    stream: XmlStream,
    /// The peer's stream id (dialback keys of further pairs use it).
    id: String,
    /// Authenticated by SASL EXTERNAL (else by dialback).
    sasl: bool,
}

/// Why a stream could not be set up, with the stanza error its queued
/// stanzas get.
struct ConnectError {
    cond: Condition,
    why: String,
}

impl From<String> for ConnectError {
    fn from(why: String) -> Self {
        ConnectError {
            cond: Condition::RemoteServerNotFound,
            why,
        }
    }
}

impl From<&str> for ConnectError {
    fn from(why: &str) -> Self {
        why.to_string().into()
    }
}

/// Open and authenticate a stream from `local` to `remote`.
async fn connect(s2s: &S2s, local: &str, remote: &str) -> Result<Authed, ConnectError> {
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
            let (new_id, v1) = open_stream(&mut o.stream, local, remote).await?;
            o.id = new_id;
            if v1 {
                let f = o
                    .stream
                    .element_within(Duration::from_secs(60))
                    .await
                    .map_err(e)?;
                if !f.is("features", ns::STREAM) {
                    return Err(stream_error_text(&f).into());
                }
            }
            tracing::debug!(%local, %remote, "s2s authenticated with SASL EXTERNAL");
            return Ok(Authed {
                stream: o.stream,
                id: o.id,
                sasl: true,
            });
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
                Some("valid") => Ok(Authed {
                    stream: o.stream,
                    id: o.id,
                    sasl: false,
                }),
                // XEP-0220 §2.1.1: `invalid` → internal-server-error, a
                // dialback error → remote-server-timeout.
                Some("invalid") => Err(ConnectError {
                    cond: Condition::InternalServerError,
                    why: "the remote server did not accept our dialback key".into(),
                }),
                Some(t) => Err(ConnectError {
                    cond: Condition::RemoteServerTimeout,
                    why: format!("dialback {t}"),
                }),
                None => Err("dialback answer without type".into()),
            };
        }
        if r.is("error", ns::STREAM) {
            return Err(stream_error_text(&r).into());
        }
    }
}
