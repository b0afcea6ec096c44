//! BOSH (XEP-0124) carrying XMPP (XEP-0206).
//!
//! Each BOSH session is one task owning a c2s session; HTTP requests are
//! handed to it over a channel and answered (possibly after being held for
//! up to `wait` seconds) in `rid` order. Out-of-order requests inside the
//! window wait for the gap; the last `requests` responses are kept for
//! retransmission. Long polls hold no thread: they are parked oneshot senders.

use crate::HttpState;
use crate::ws::{OutConverter, OutItem};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::framer::{Frame, Framer, Limits, StreamHeader};
use palaver_proto::ns;
use palaver_proto::writer::escape_into;
use palaver_server::c2s::{C2sSession, Next};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// XEP-0124 namespace.
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 namespace.
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";
const MAX_WAIT: u64 = 60;
const MAX_HOLD: u64 = 2;
const INACTIVITY: u64 = 60;
const POLLING: u64 = 2;
const MAX_PAUSE: u64 = 120;

struct Request {
    rid: u64,
    body: Element,
    reply: oneshot::Sender<String>,
}

static SESSIONS: LazyLock<DashMap<String, mpsc::Sender<Request>>> = LazyLock::new(DashMap::new);

fn terminate(condition: &str) -> String {
    format!("<body xmlns='{NS_HTTPBIND}' type='terminate' condition='{condition}'/>")
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Parse the request: one `<body/>` in the httpbind namespace.
fn parse_body(bytes: &[u8], limits: Limits) -> Option<Element> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.trim_start();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>")?.1,
        None => text,
    };
    let mut f = Framer::new(limits);
    let mut hdr: &[u8] =
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    while f.next_frame(&mut hdr).ok()?.is_some() {}
    let mut data = text.as_bytes();
    let mut body = None;
    while let Some(frame) = f.next_frame(&mut data).ok()? {
        match frame {
            Frame::Element(el) if body.is_none() && el.is("body", NS_HTTPBIND) => body = Some(el),
            _ => return None,
        }
    }
    if f.in_stanza() { None } else { body }
}

fn num(el: &Element, name: &str) -> Option<u64> {
    el.attr(name).and_then(|v| v.trim().parse().ok())
}

/// `POST /bosh`.
pub(crate) async fn handle(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    bytes: Bytes,
) -> Response {
    let limits = Limits {
        max_stanza_bytes: state.cfg.max_stanza_size,
        max_depth: state.cfg.max_xml_depth,
        max_attributes: state.cfg.max_xml_attributes,
    };
    if bytes.len() > state.cfg.max_stanza_size.saturating_mul(4) {
        return xml_response(StatusCode::OK, terminate("policy-violation"));
    }
    let Some(body) = parse_body(&bytes, limits) else {
        // XEP-0124 §17.1: a request that is not a valid body is a bad request.
        return xml_response(StatusCode::BAD_REQUEST, terminate("bad-request"));
    };
    let Some(rid) = num(&body, "rid") else {
        return xml_response(StatusCode::BAD_REQUEST, terminate("bad-request"));
    };
    let (tx, rx) = oneshot::channel();
    match body.attr("sid").map(str::to_string) {
        None => {
            let sid = format!("{:032x}", rand_u128());
            let (req_tx, req_rx) = mpsc::channel(8);
            SESSIONS.insert(sid.clone(), req_tx);
            tokio::spawn(session_task(
                state, sid, peer, limits, rid, body, tx, req_rx,
            ));
        }
        Some(sid) => {
            let Some(chan) = SESSIONS.get(&sid).map(|c| c.clone()) else {
                return xml_response(StatusCode::OK, terminate("item-not-found"));
            };
            if chan
                .send(Request {
                    rid,
                    body,
                    reply: tx,
                })
                .await
                .is_err()
            {
                return xml_response(StatusCode::OK, terminate("item-not-found"));
            }
        }
    }
    match rx.await {
        Ok(s) => xml_response(StatusCode::OK, s),
        Err(_) => xml_response(StatusCode::OK, terminate("item-not-found")),
    }
}

fn rand_u128() -> u128 {
    rand::random()
}

struct Held {
    rid: u64,
    reply: oneshot::Sender<String>,
    deadline: Instant,
}

struct Bosh {
    sid: String,
    session: C2sSession,
    conv: OutConverter,
    wait: u64,
    hold: u64,
    requests: u64,
    next_rid: u64,
    pending: BTreeMap<u64, (Element, oneshot::Sender<String>)>,
    held: VecDeque<Held>,
    out: Vec<String>,
    cache: BTreeMap<u64, String>,
    terminated: bool,
    /// The client asked for acknowledgements (`ack='1'` at creation).
    acks: bool,
    /// When the last empty poll arrived (polling sessions).
    last_poll: Option<Instant>,
    inactivity: Duration,
    last_activity: Instant,
}

impl Bosh {
    fn body_with(&self, items: &[String], extra: &str) -> String {
        let mut s = format!("<body xmlns='{NS_HTTPBIND}'{extra}");
        if items.is_empty() {
            s.push_str("/>");
            return s;
        }
        s.push('>');
        for i in items {
            s.push_str(i);
        }
        s.push_str("</body>");
        s
    }

    fn respond(&mut self, held: Held, mut body: String) {
        // XEP-0124 §9.1: when answering an older request while newer ones
        // arrived, report the highest rid received in order.
        let highest = self.next_rid.saturating_sub(1);
        if self.acks && held.rid < highest {
            body = body.replacen("<body ", &format!("<body ack='{highest}' "), 1);
        }
        self.cache.insert(held.rid, body.clone());
        while self.cache.len() as u64 > self.requests {
            self.cache.pop_first();
        }
        let _ = held.reply.send(body);
    }

    /// Collect session output into the outgoing queue.
    fn collect(&mut self) {
        if !self.session.has_output() {
            return;
        }
        let out = self.session.take_output();
        let mut items = Vec::new();
        self.conv.items(&out, &mut items);
        self.session.recycle_output(out);
        for i in items {
            match i {
                // The stream header is carried by the body's attributes.
                OutItem::Open(_) => {}
                OutItem::Element(e) => self.out.push(e),
                OutItem::Close => self.terminated = true,
            }
        }
    }

    /// Answer held requests: with pending output, or empty when over `hold`.
    fn flush(&mut self) {
        self.collect();
        if self.terminated {
            let items = std::mem::take(&mut self.out);
            let mut first = true;
            while let Some(h) = self.held.pop_front() {
                let body = if first {
                    self.body_with(&items, " type='terminate'")
                } else {
                    terminate("remote-connection-failed")
                };
                first = false;
                self.respond(h, body);
            }
            return;
        }
        if !self.out.is_empty()
            && let Some(h) = self.held.pop_front()
        {
            let items = std::mem::take(&mut self.out);
            let body = self.body_with(&items, "");
            self.respond(h, body);
        }
        while self.held.len() as u64 > self.hold {
            if let Some(h) = self.held.pop_front() {
                let body = self.body_with(&[], "");
                self.respond(h, body);
            }
        }
    }

    async fn process(&mut self, rid: u64, body: Element, reply: oneshot::Sender<String>) {
        self.last_activity = Instant::now();
        if let Some(cached) = self.cache.get(&rid) {
            // Retransmission of a response the client lost (XEP-0124 §14.3).
            let _ = reply.send(cached.clone());
            return;
        }
        if rid < self.next_rid || rid > self.next_rid + self.requests.max(1) {
            let _ = reply.send(terminate("item-not-found"));
            self.terminated = true;
            return;
        }
        // XEP-0124 §12: a polling session (hold 0) may not send empty
        // requests more often than every `polling` seconds.
        let empty = body.children().next().is_none()
            && body.attr("type").is_none()
            && body.attr("pause").is_none();
        if self.hold == 0 && empty {
            if self
                .last_poll
                .is_some_and(|t| t.elapsed() < Duration::from_secs(POLLING))
            {
                let _ = reply.send(terminate("policy-violation"));
                self.terminated = true;
                return;
            }
            self.last_poll = Some(Instant::now());
        }
        if self.pending.len() as u64 > self.requests {
            let _ = reply.send(terminate("policy-violation"));
            self.terminated = true;
            return;
        }
        self.pending.insert(rid, (body, reply));
        while let Some((body, reply)) = self.pending.remove(&self.next_rid) {
            let rid = self.next_rid;
            self.next_rid += 1;
            self.apply(&body).await;
            let wait = if body.attr("pause").is_some() {
                0
            } else {
                self.wait
            };
            if let Some(p) = num(&body, "pause") {
                self.inactivity = Duration::from_secs(p.min(MAX_PAUSE));
            } else {
                self.inactivity = Duration::from_secs(INACTIVITY);
            }
            self.held.push_back(Held {
                rid,
                reply,
                deadline: Instant::now() + Duration::from_secs(wait),
            });
            if self.terminated {
                break;
            }
        }
        self.flush();
    }

    async fn apply(&mut self, body: &Element) {
        if body.attr("type") == Some("terminate") {
            for el in body.children() {
                if let Err(e) = self.session.handle_element(el.clone()).await {
                    self.session.stream_error(e);
                }
            }
            self.session.close_requested();
            self.terminated = true;
            return;
        }
        if body.attr_ns(NS_XBOSH, "restart") == Some("true") {
            let header = StreamHeader {
                to: body.attr("to").map(str::to_string),
                version: Some("1.0".into()),
                is_stream: true,
                default_ns: Some(ns::CLIENT.to_string()),
                ..Default::default()
            };
            if let Err(e) = self.session.handle_open(&header) {
                self.session.stream_error(e);
            }
            return;
        }
        for el in body.children() {
            let next = match self.session.handle_element(el.clone()).await {
                Ok(n) => n,
                Err(e) => self.session.stream_error(e),
            };
            if matches!(next, Next::Close | Next::StartTls) {
                self.terminated = true;
                break;
            }
        }
    }
}

/// XEP-0124 §7.1: answer with the lower of the client's `ver` and ours (1.11).
fn bosh_version(client: Option<&str>) -> String {
    const OURS: (u32, u32) = (1, 11);
    let parsed = client.and_then(|v| {
        let (major, minor) = v.trim().split_once('.')?;
        Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
    });
    let (major, minor) = match parsed {
        Some(v) if v < OURS => v,
        _ => OURS,
    };
    format!("{major}.{minor}")
}

#[allow(clippy::too_many_arguments)]
async fn session_task(
    state: HttpState,
    sid: String,
    peer: SocketAddr,
    _limits: Limits,
    rid: u64,
    first: Element,
    reply: oneshot::Sender<String>,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut cfg = state.cfg.clone();
    cfg.starttls = false;
    cfg.tls = false;
    let auth_deadline = Instant::now() + Duration::from_secs(cfg.auth_timeout.max(1));
    let wait = num(&first, "wait").unwrap_or(MAX_WAIT).min(MAX_WAIT);
    let hold = num(&first, "hold").unwrap_or(1).min(MAX_HOLD);
    let requests = hold + 1;
    let mut b = Bosh {
        sid: sid.clone(),
        session: C2sSession::new(state.core.clone(), cfg, peer),
        conv: OutConverter::new(),
        wait,
        hold,
        requests,
        next_rid: rid + 1,
        pending: BTreeMap::new(),
        held: VecDeque::new(),
        out: Vec::new(),
        cache: BTreeMap::new(),
        terminated: false,
        acks: first.attr("ack") == Some("1"),
        last_poll: None,
        inactivity: Duration::from_secs(INACTIVITY),
        last_activity: Instant::now(),
    };
    let header = StreamHeader {
        to: first.attr("to").map(str::to_string),
        version: first
            .attr_ns(NS_XBOSH, "version")
            .map(str::to_string)
            .or(Some("1.0".into())),
        is_stream: true,
        default_ns: Some(ns::CLIENT.to_string()),
        ..Default::default()
    };
    if let Err(e) = b.session.handle_open(&header) {
        b.session.stream_error(e);
    }
    b.collect();
    let ver = bosh_version(first.attr("ver"));
    let mut attrs = format!(
        " sid='{}' wait='{wait}' hold='{hold}' requests='{requests}' inactivity='{INACTIVITY}' polling='{POLLING}' maxpause='{MAX_PAUSE}' ver='{ver}' xmpp:version='1.0' xmlns:xmpp='{NS_XBOSH}' xmlns:stream='http://etherx.jabber.org/streams'",
        b.sid
    );
    if let Some(to) = first.attr("to") {
        attrs.push_str(" from='");
        escape_into(&mut attrs, to);
        attrs.push('\'');
    }
    if b.terminated {
        attrs.push_str(" type='terminate'");
    }
    let items = std::mem::take(&mut b.out);
    let body = b.body_with(&items, &attrs);
    b.respond(
        Held {
            rid,
            reply,
            deadline: Instant::now(),
        },
        body,
    );
    let mut shutdown = state.core.shutdown_signal();
    while !b.terminated {
        let next_deadline = b.held.iter().map(|h| h.deadline).min();
        let inactive_at = if b.held.is_empty() {
            b.last_activity + b.inactivity
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        let auth_due = if b.session.is_bound() {
            Instant::now() + Duration::from_secs(3600)
        } else {
            auth_deadline
        };
        let wake = [next_deadline, Some(inactive_at), Some(auth_due)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(inactive_at);
        tokio::select! {
            req = rx.recv() => match req {
                Some(r) => b.process(r.rid, r.body, r.reply).await,
                None => break,
            },
            msg = b.session.recv() => {
                if let Some(m) = msg {
                    let next = b.session.handle_msg(m);
                    if next == Next::Close {
                        b.terminated = true;
                    }
                    b.flush();
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if b.held.is_empty() && now >= b.last_activity + b.inactivity {
                    // XEP-0124 §12: no request within the inactivity period.
                    b.terminated = true;
                    break;
                }
                if !b.session.is_bound() && now >= auth_deadline {
                    b.session.stream_error(StreamError::with_text(SC::ConnectionTimeout, "timed out"));
                    b.terminated = true;
                }
                while b.held.front().is_some_and(|h| h.deadline <= now) {
                    if let Some(h) = b.held.pop_front() {
                        let body = b.body_with(&[], "");
                        b.respond(h, body);
                    }
                }
                b.flush();
            }
            _ = shutdown.changed() => {
                b.session.stream_error(StreamError::new(SC::SystemShutdown));
                b.terminated = true;
                b.flush();
            }
        }
    }
    b.flush();
    SESSIONS.remove(&sid);
    // Requests that arrive after termination get item-not-found from the handler.
    b.session.closed_by_peer();
    b.session.end().await;
}

#[cfg(test)]
mod version_tests {
    use super::bosh_version;

    #[test]
    fn lower_version_wins() {
        assert_eq!(bosh_version(Some("1.6")), "1.6");
        assert_eq!(bosh_version(Some("1.11")), "1.11");
        assert_eq!(bosh_version(Some("1.12")), "1.11");
        assert_eq!(bosh_version(Some("2.0")), "1.11");
        assert_eq!(bosh_version(Some("junk")), "1.11");
        assert_eq!(bosh_version(None), "1.11");
    }
}
