//! RFC 7395 XMPP over WebSocket.

use crate::HttpState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::framer::{Frame, Framer, Limits, StreamHeader};
use palaver_proto::ns;
use palaver_proto::writer::{escape_into, write_element};
use palaver_server::c2s::{C2sSession, Next};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// RFC 7395 framing namespace.
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const STREAM_OPEN: &str =
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    tls: Option<axum::Extension<crate::tls::TlsSession>>,
) -> Response {
    let tls = tls.map(|t| t.0.0);
    let ws = ws.protocols(["xmpp"]);
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol `xmpp` is required (RFC 7395)\n",
        )
            .into_response();
    }
    let limit = state.cfg.max_stanza_size;
    ws.max_message_size(limit.saturating_add(1024))
        .on_upgrade(move |socket| run(state, socket, peer, tls))
}

/// Parse one WebSocket message: exactly one complete element.
pub fn parse_message(text: &str, limits: Limits) -> Result<Element, StreamError> {
    let mut f = Framer::new(limits);
    let mut hdr = STREAM_OPEN.as_bytes();
    while f.next_frame(&mut hdr)?.is_some() {}
    let mut data = text.as_bytes();
    let mut found = None;
    while let Some(frame) = f.next_frame(&mut data)? {
        match frame {
            Frame::Element(el) if found.is_none() => found = Some(el),
            _ => {
                return Err(StreamError::with_text(
                    SC::NotWellFormed,
                    "one element per WebSocket message",
                ));
            }
        }
    }
    if f.in_stanza() {
        return Err(StreamError::with_text(
            SC::NotWellFormed,
            "incomplete element in WebSocket message",
        ));
    }
    found
        .ok_or_else(|| StreamError::with_text(SC::NotWellFormed, "no element in WebSocket message"))
}

/// Turns the c2s session's stream output into RFC 7395 messages.
pub(crate) struct OutConverter {
    framer: Framer,
}

/// One unit of session output.
pub(crate) enum OutItem {
    /// The stream header, as an RFC 7395 `<open/>`.
    Open(String),
    /// A top-level element as a standalone document.
    Element(String),
    /// The end of the stream.
    Close,
}

impl OutConverter {
    pub(crate) fn new() -> Self {
        OutConverter {
            framer: Framer::new(Self::limits()),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_stanza_bytes: 64 << 20,
            max_depth: 4096,
            max_attributes: 4096,
        }
    }

    fn convert(&mut self, out: &str, msgs: &mut Vec<String>) {
        let mut items = Vec::new();
        self.items(out, &mut items);
        msgs.extend(items.into_iter().map(|i| match i {
            OutItem::Open(s) | OutItem::Element(s) => s,
            OutItem::Close => format!("<close xmlns='{FRAMING}'/>"),
        }));
    }

    /// Split the session's stream output into items.
    pub(crate) fn items(&mut self, out: &str, items: &mut Vec<OutItem>) {
        let mut rest = out;
        while !rest.is_empty() {
            let split = rest
                .get(1..)
                .and_then(|r| r.find("<?xml"))
                .map(|i| i + 1)
                .unwrap_or(rest.len());
            let (chunk, next) = rest.split_at(split);
            rest = next;
            if chunk.starts_with("<?xml") {
                // A new stream header: the session restarted its stream.
                self.framer = Framer::new(Self::limits());
            }
            let mut data = chunk.as_bytes();
            loop {
                match self.framer.next_frame(&mut data) {
                    Ok(Some(Frame::Open(h))) => items.push(OutItem::Open(open_element(&h))),
                    Ok(Some(Frame::Element(el))) => {
                        items.push(OutItem::Element(element_message(&el)))
                    }
                    Ok(Some(Frame::Close)) => items.push(OutItem::Close),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reframe c2s output");
                        break;
                    }
                }
            }
        }
    }
}

fn open_element(h: &StreamHeader) -> String {
    let mut s = format!("<open xmlns='{FRAMING}'");
    for (name, v) in [("from", &h.from), ("id", &h.id), ("version", &h.version)] {
        if let Some(v) = v {
            s.push(' ');
            s.push_str(name);
            s.push_str("='");
            escape_into(&mut s, v);
            s.push('\'');
        }
    }
    s.push_str(" xml:lang='en'/>");
    s
}

/// Every message is a standalone document: stanzas carry `xmlns`, and
/// stream-namespace elements use the `stream:` prefix, declared locally.
fn element_message(el: &Element) -> String {
    let mut s = String::with_capacity(256);
    if el.has_ns(ns::STREAM) {
        s.push_str("<stream:");
        s.push_str(el.name());
        s.push_str(" xmlns:stream='http://etherx.jabber.org/streams'>");
        for child in el.children() {
            write_element(&mut s, child, "");
        }
        s.push_str("</stream:");
        s.push_str(el.name());
        s.push('>');
    } else {
        write_element(&mut s, el, "");
    }
    s
}

pub(crate) fn header_of(el: &Element) -> StreamHeader {
    StreamHeader {
        to: el.attr("to").map(str::to_string),
        from: el.attr("from").map(str::to_string),
        version: el.attr("version").map(str::to_string),
        lang: None,
        id: None,
        is_stream: true,
        default_ns: Some(ns::CLIENT.to_string()),
    }
}

async fn run(
    state: HttpState,
    socket: WebSocket,
    peer: SocketAddr,
    tls: Option<palaver_proto::sasl::ChannelBindings>,
) {
    let mut cfg = state.cfg.clone();
    cfg.starttls = false;
    cfg.tls = false;
    let limits = Limits {
        max_stanza_bytes: cfg.max_stanza_size,
        max_depth: cfg.max_xml_depth,
        max_attributes: cfg.max_xml_attributes,
    };
    let auth_deadline = Instant::now() + Duration::from_secs(cfg.auth_timeout.max(1));
    let idle = Duration::from_secs(cfg.idle_timeout);
    let mut session = C2sSession::new(state.core.clone(), cfg, peer);
    if let Some(cb) = tls {
        session.set_secure(cb);
    }
    let (mut tx, mut rx) = socket.split();
    let mut conv = OutConverter::new();
    let mut shutdown = state.core.shutdown.clone();
    let mut last_read = Instant::now();
    let timer = tokio::time::sleep_until(auth_deadline);
    tokio::pin!(timer);
    let mut keepalive = tokio::time::interval(Duration::from_secs(30));
    keepalive.reset();
    let mut msgs = Vec::new();
    loop {
        let mut next = Next::Continue;
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    last_read = Instant::now();
                    next = match parse_message(text.as_str(), limits) {
                        Ok(el) if el.is("open", FRAMING) => match session.handle_open(&header_of(&el)) {
                            Ok(()) => Next::Continue,
                            Err(e) => session.stream_error(e),
                        },
                        Ok(el) if el.is("close", FRAMING) => session.close_requested(),
                        Ok(el) => match session.handle_element(el).await {
                            Ok(n) => n,
                            Err(e) => session.stream_error(e),
                        },
                        Err(e) => session.stream_error(e),
                    };
                }
                Some(Ok(Message::Binary(_))) => {
                    next = session.stream_error(StreamError::with_text(SC::BadFormat, "binary WebSocket frames are not XMPP"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => last_read = Instant::now(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    session.closed_by_peer();
                    break;
                }
            },
            msg = session.recv() => {
                if let Some(msg) = msg {
                    next = session.handle_msg(msg);
                }
            }
            _ = keepalive.tick() => {
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    session.closed_by_peer();
                    break;
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                let due = session.deadline(auth_deadline, idle, last_read, now);
                if now >= due {
                    next = session.stream_error(StreamError::with_text(SC::ConnectionTimeout, "timed out"));
                } else {
                    timer.as_mut().reset(due);
                }
            }
            _ = shutdown.changed() => {
                next = session.stream_error(StreamError::new(SC::SystemShutdown));
            }
        }
        if session.has_output() {
            let out = session.take_output();
            conv.convert(&out, &mut msgs);
            session.recycle_output(out);
            let mut failed = false;
            for m in msgs.drain(..) {
                let sent =
                    tokio::time::timeout(Duration::from_secs(30), tx.send(Message::Text(m.into())))
                        .await;
                if !matches!(sent, Ok(Ok(()))) {
                    failed = true;
                    break;
                }
            }
            if failed {
                session.closed_by_peer();
                break;
            }
        }
        match next {
            Next::Continue | Next::Restart => {}
            Next::Close | Next::StartTls => {
                let _ = tx.send(Message::Close(None)).await;
                break;
            }
        }
    }
    // The socket goes now; a resumable session may wait on without it.
    drop((tx, rx));
    session.end().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_reframe() {
        let l = Limits::default();
        let el = parse_message(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>",
            l,
        )
        .unwrap();
        assert!(el.is("open", FRAMING));
        assert!(parse_message("<message/><message/>", l).is_err());
        assert!(parse_message("<message>", l).is_err());
        assert!(parse_message("", l).is_err());
        assert!(parse_message("<!-- x --><a/>", l).is_err());
        let mut c = OutConverter::new();
        let mut msgs = Vec::new();
        c.convert("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='x' from='localhost' version='1.0' xml:lang='en'><stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features><iq type='result' id='1'/>", &mut msgs);
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='localhost' id='x'"
        ));
        assert!(msgs[1].starts_with("<stream:features xmlns:stream="));
        assert_eq!(msgs[2], "<iq xmlns='jabber:client' id='1' type='result'/>");
        msgs.clear();
        c.convert("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>", &mut msgs);
        assert_eq!(msgs.len(), 2);
        assert!(msgs[0].starts_with("<stream:error xmlns:stream="));
        assert!(msgs[1].starts_with("<close"));
    }
}
