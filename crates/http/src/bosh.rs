//! BOSH (XEP-0124) carrying XMPP (XEP-0206).
//!
//! Each BOSH session is one task owning a c2s session; HTTP requests are
//! handed to it over a channel and answered (possibly after being held for
//! up to `wait` seconds) in `rid` order. Out-of-order requests inside the
//! window wait for the gap; the last `requests` responses are kept for
//! retransmission. Long polls hold no thread: they are parked oneshot senders.

use crate::HttpState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use minidom::{Element, Node};
use palaver_proto::framer::{Frame, Framer, Limits, StreamHeader};
use palaver_proto::ns;
use palaver_proto::writer::escape_into;
use palaver_server::c2s::{self, C2sSession, Framing, Input, OutFrame, Output, Transport};
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
pub fn parse_body(bytes: &[u8], limits: Limits) -> Option<Element> {
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
    tls: Option<axum::Extension<crate::tls::TlsSession>>,
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
            let secure = tls.is_some();
            tokio::spawn(session_task(
                state, sid, peer, secure, rid, body, tx, req_rx,
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

/// A c2s session's transport over BOSH: the HTTP handler passes requests
/// over a channel; their payloads become the session's inputs in `rid`
/// order, and its output answers the held requests.
struct BoshTransport {
    sid: String,
    rx: mpsc::Receiver<Request>,
    wait: u64,
    hold: u64,
    requests: u64,
    next_rid: u64,
    pending: BTreeMap<u64, (Element, oneshot::Sender<String>)>,
    /// Inputs of the last request taken in order, not yet handled.
    inputs: VecDeque<Input>,
    held: VecDeque<Held>,
    out: Vec<String>,
    cache: BTreeMap<u64, String>,
    terminated: bool,
    /// The session creation request, answered (with these `<body/>`
    /// attributes) by the session's first output.
    creation: Option<(Held, String)>,
    /// The client asked for acknowledgements (`ack='1'` at creation).
    acks: bool,
    /// When the last empty poll arrived (polling sessions).
    last_poll: Option<Instant>,
    inactivity: Duration,
    last_activity: Instant,
}

fn body_with(items: &[String], extra: &str) -> String {
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

impl BoshTransport {
    /// The transport of a session created by `first` (with `rid`), to be
    /// answered through `reply`.
    fn new(
        sid: String,
        rx: mpsc::Receiver<Request>,
        rid: u64,
        first: &Element,
        reply: oneshot::Sender<String>,
    ) -> Self {
        let wait = num(first, "wait").unwrap_or(MAX_WAIT).min(MAX_WAIT);
        let hold = num(first, "hold").unwrap_or(1).min(MAX_HOLD);
        let requests = hold + 1;
        let ver = bosh_version(first.attr("ver"));
        let mut attrs = format!(
            " sid='{sid}' wait='{wait}' hold='{hold}' requests='{requests}' inactivity='{INACTIVITY}' polling='{POLLING}' maxpause='{MAX_PAUSE}' ver='{ver}' xmpp:version='1.0' xmlns:xmpp='{NS_XBOSH}' xmlns:stream='http://etherx.jabber.org/streams'"
        );
        if let Some(to) = first.attr("to") {
            attrs.push_str(" from='");
            escape_into(&mut attrs, to);
            attrs.push('\'');
        }
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
        let creation = Held {
            rid,
            reply,
            deadline: Instant::now(),
        };
        BoshTransport {
            sid,
            rx,
            wait,
            hold,
            requests,
            next_rid: rid + 1,
            pending: BTreeMap::new(),
            inputs: VecDeque::from([Input::Open(header)]),
            held: VecDeque::new(),
            out: Vec::new(),
            cache: BTreeMap::new(),
            terminated: false,
            creation: Some((creation, attrs)),
            acks: first.attr("ack") == Some("1"),
            last_poll: None,
            inactivity: Duration::from_secs(INACTIVITY),
            last_activity: Instant::now(),
        }
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

    /// Take the session's output into the outgoing queue.
    fn collect(&mut self, out: &mut Output) {
        for frame in out.drain_frames() {
            match frame {
                // The stream header is carried by the body's attributes.
                OutFrame::Open(_) => {}
                OutFrame::Element(e) => self.out.push(e),
                OutFrame::Close => self.terminated = true,
            }
        }
        out.clear();
    }

    /// Answer held requests: with pending output, or empty when over `hold`.
    fn flush(&mut self) {
        if self.terminated {
            let items = std::mem::take(&mut self.out);
            let mut first = true;
            while let Some(h) = self.held.pop_front() {
                let body = if first {
                    body_with(&items, " type='terminate'")
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
            let body = body_with(&items, "");
            self.respond(h, body);
        }
        while self.held.len() as u64 > self.hold {
            if let Some(h) = self.held.pop_front() {
                let body = body_with(&[], "");
                self.respond(h, body);
            }
        }
    }

    /// A request of the session: answered from the cache, refused, or kept
    /// until its `rid` is next.
    fn process(&mut self, rid: u64, body: Element, reply: oneshot::Sender<String>) {
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
    }

    /// Take the next request in `rid` order, if it came: its payload
    /// becomes inputs, and it is held for the answer.
    fn take_in_order(&mut self) -> bool {
        let Some((mut body, reply)) = self.pending.remove(&self.next_rid) else {
            return false;
        };
        let rid = self.next_rid;
        self.next_rid += 1;
        let children = body.take_nodes().into_iter().filter_map(|n| match n {
            Node::Element(el) => Some(Input::Element(el)),
            Node::Text(_) => None,
        });
        if body.attr("type") == Some("terminate") {
            self.inputs.extend(children);
            self.inputs.push_back(Input::Close);
        } else if body.attr_ns(NS_XBOSH, "restart") == Some("true") {
            self.inputs.push_back(Input::Open(StreamHeader {
                to: body.attr("to").map(str::to_string),
                version: Some("1.0".into()),
                is_stream: true,
                default_ns: Some(ns::CLIENT.to_string()),
                ..Default::default()
            }));
        } else {
            self.inputs.extend(children);
        }
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
        true
    }
}

impl Transport for BoshTransport {
    async fn recv(&mut self) -> Input {
        loop {
            if let Some(input) = self.next_buffered() {
                return input;
            }
            if self.terminated {
                return Input::Lost;
            }
            // Requests taken without payload (empty polls) are answered
            // now if over `hold`; the session has no output waiting.
            self.flush();
            let inactive_at = if self.held.is_empty() {
                self.last_activity + self.inactivity
            } else {
                Instant::now() + Duration::from_secs(3600)
            };
            let wake = self
                .held
                .iter()
                .map(|h| h.deadline)
                .min()
                .map_or(inactive_at, |d| d.min(inactive_at));
            tokio::select! {
                req = self.rx.recv() => match req {
                    // Taken in `rid` order by `next_buffered`, held, and
                    // answered with the session's output (`send`).
                    Some(r) => self.process(r.rid, r.body, r.reply),
                    None => return Input::Lost,
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if self.held.is_empty() && now >= self.last_activity + self.inactivity {
                        // XEP-0124 §12: no request within the inactivity period.
                        self.terminated = true;
                        return Input::Lost;
                    }
                    while self.held.front().is_some_and(|h| h.deadline <= now) {
                        if let Some(h) = self.held.pop_front() {
                            self.respond(h, body_with(&[], ""));
                        }
                    }
                    self.flush();
                }
            }
        }
    }

    fn next_buffered(&mut self) -> Option<Input> {
        loop {
            if let Some(input) = self.inputs.pop_front() {
                return Some(input);
            }
            if self.terminated || !self.take_in_order() {
                return None;
            }
        }
    }

    async fn send(&mut self, out: &mut Output) -> std::io::Result<()> {
        self.collect(out);
        if let Some((held, mut attrs)) = self.creation.take() {
            if self.terminated {
                attrs.push_str(" type='terminate'");
            }
            let items = std::mem::take(&mut self.out);
            let body = body_with(&items, &attrs);
            self.respond(held, body);
        }
        self.flush();
        Ok(())
    }

    async fn close(&mut self) {
        self.terminated = true;
        self.flush();
    }
}

impl Drop for BoshTransport {
    /// The session's HTTP side ends: requests still held are answered, and
    /// later ones get `item-not-found` from the handler.
    fn drop(&mut self) {
        self.flush();
        SESSIONS.remove(&self.sid);
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

/// A new BOSH session's task (not an `async fn`, so that the session and
/// its transport are stored in the task once).
#[allow(clippy::too_many_arguments)]
fn session_task(
    state: HttpState,
    sid: String,
    peer: SocketAddr,
    secure: bool,
    rid: u64,
    first: Element,
    reply: oneshot::Sender<String>,
    rx: mpsc::Receiver<Request>,
) -> impl Future<Output = ()> {
    let mut cfg = state.cfg.clone();
    cfg.starttls = false;
    cfg.tls = false;
    let auth_deadline = Instant::now() + Duration::from_secs(cfg.auth_timeout.max(1));
    let transport = BoshTransport::new(sid, rx, rid, &first, reply);
    let mut session = C2sSession::new(state.core.clone(), cfg, peer, Framing::Documents);
    session.set_transport(palaver_server::sessions::Transport::Bosh);
    if secure {
        // Over HTTPS: encrypted, but a BOSH session spans several
        // connections, so there is no channel to bind (-PLUS is not offered).
        session.set_secure(palaver_proto::sasl::ChannelBindings::default());
    }
    // No idle timeout: BOSH has its own inactivity rule (XEP-0124 §12).
    c2s::run(session, transport, auth_deadline, Duration::ZERO)
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

#[cfg(test)]
mod transport_tests {
    use super::*;

    fn body(xml: &str) -> Element {
        xml.parse().expect("test body")
    }

    /// The session's output frames are wrapped in `<body/>` as they are:
    /// the header goes into the body's attributes, elements are children,
    /// the stream's end terminates the session.
    #[tokio::test]
    async fn frames_are_wrapped_in_bodies() {
        let (_tx, rx) = mpsc::channel(1);
        let (reply, mut answer) = oneshot::channel();
        let first = body(
            "<body xmlns='http://jabber.org/protocol/httpbind' rid='10' to='localhost' wait='30' hold='1'/>",
        );
        let mut t = BoshTransport::new("s1".into(), rx, 10, &first, reply);
        let Some(Input::Open(h)) = t.next_buffered() else {
            panic!("the session request opens the stream");
        };
        assert_eq!(h.to.as_deref(), Some("localhost"));
        assert!(t.next_buffered().is_none());

        let mut out = Output::new(Framing::Documents);
        out.open("id1", "localhost");
        out.stream_element("features", |s, _| {
            s.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>")
        });
        t.send(&mut out).await.expect("send");
        assert!(out.is_empty());
        let r = answer.try_recv().expect("creation answered at once");
        assert!(
            r.starts_with("<body xmlns='http://jabber.org/protocol/httpbind' sid='s1' wait='30' hold='1' requests='2'"),
            "{r}"
        );
        assert!(r.contains(" from='localhost'"), "{r}");
        assert!(
            r.ends_with("><stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features></body>"),
            "{r}"
        );
        assert!(!r.contains("<open") && !r.contains("terminate"), "{r}");

        // rid 12 waits for rid 11; both are taken in order.
        let (reply12, mut answer12) = oneshot::channel();
        t.process(
            12,
            body("<body xmlns='http://jabber.org/protocol/httpbind' rid='12' sid='s1' type='terminate'/>"),
            reply12,
        );
        assert!(t.next_buffered().is_none());
        let (reply11, mut answer11) = oneshot::channel();
        t.process(
            11,
            body("<body xmlns='http://jabber.org/protocol/httpbind' rid='11' sid='s1'><message xmlns='jabber:client' to='a@localhost'/></body>"),
            reply11,
        );
        assert!(
            matches!(t.next_buffered(), Some(Input::Element(el)) if el.is("message", ns::CLIENT))
        );
        assert!(matches!(t.next_buffered(), Some(Input::Close)));
        assert!(t.next_buffered().is_none());

        let mut iq = Element::bare("iq", ns::CLIENT);
        palaver_proto::stanza::set_attr(&mut iq, "id", "1");
        out.element(&iq);
        out.close();
        t.send(&mut out).await.expect("send");
        let r11 = answer11.try_recv().expect("answered");
        assert_eq!(
            r11,
            "<body xmlns='http://jabber.org/protocol/httpbind' type='terminate'><iq xmlns='jabber:client' id='1'/></body>"
        );
        let r12 = answer12.try_recv().expect("answered");
        assert!(r12.contains("remote-connection-failed"), "{r12}");
        // The session is over: the loop is told so.
        assert!(matches!(t.recv().await, Input::Lost));
    }

    /// Long polling: a request over `hold` answers the oldest held one at
    /// once, also without payload.
    #[tokio::test]
    async fn requests_over_hold_answer_the_oldest() {
        let (tx, rx) = mpsc::channel(4);
        let (reply, _answer) = oneshot::channel();
        let first = body(
            "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='localhost' wait='30' hold='1'/>",
        );
        let mut t = BoshTransport::new("s2".into(), rx, 1, &first, reply);
        assert!(matches!(t.next_buffered(), Some(Input::Open(_))));
        let mut out = Output::new(Framing::Documents);
        t.send(&mut out).await.expect("send");
        let short = std::time::Duration::from_millis(50);
        let mut answers = Vec::new();
        for rid in [2, 3] {
            let (reply, answer) = oneshot::channel();
            let b = body(&format!(
                "<body xmlns='http://jabber.org/protocol/httpbind' rid='{rid}' sid='s2'/>"
            ));
            tx.send(Request {
                rid,
                body: b,
                reply,
            })
            .await
            .expect("queued");
            answers.push(answer);
            // Nothing for the session: recv keeps waiting.
            assert!(tokio::time::timeout(short, t.recv()).await.is_err());
        }
        assert_eq!(
            answers[0].try_recv().as_deref(),
            Ok("<body xmlns='http://jabber.org/protocol/httpbind'/>")
        );
        assert!(answers[1].try_recv().is_err(), "held");
    }
}
