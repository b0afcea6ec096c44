//! RFC 7395 XMPP over WebSocket.

use crate::HttpState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::framer::{Frame, Framer, Limits, StreamHeader};
use palaver_proto::ns;
use palaver_proto::writer::escape_into;
use palaver_server::c2s::{self, C2sSession, Framing, Input, OutFrame, Output, Transport};
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

/// The RFC 7395 message of one frame of session output.
pub(crate) fn message(frame: OutFrame) -> String {
    match frame {
        OutFrame::Open(o) => {
            let mut s = format!("<open xmlns='{FRAMING}' from='");
            escape_into(&mut s, &o.from);
            s.push_str("' id='");
            escape_into(&mut s, &o.id);
            s.push_str("' version='1.0' xml:lang='en'/>");
            s
        }
        // Already a standalone document.
        OutFrame::Element(s) => s,
        OutFrame::Close => format!("<close xmlns='{FRAMING}'/>"),
    }
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

/// The connection's future (not an `async fn`, so that the session and its
/// transport are stored in the task once).
fn run(
    state: HttpState,
    socket: WebSocket,
    peer: SocketAddr,
    tls: Option<palaver_proto::sasl::ChannelBindings>,
) -> impl Future<Output = ()> {
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
    let mut session = C2sSession::new(state.core.clone(), cfg, peer, Framing::Documents);
    if let Some(cb) = tls {
        // wss://: the connection is encrypted, with these channel bindings.
        session.set_secure(cb);
    }
    let (tx, rx) = socket.split();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    let transport = WsTransport {
        tx,
        rx,
        limits,
        keepalive,
    };
    c2s::run(session, transport, auth_deadline, idle)
}

/// Interval of our WebSocket pings.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Longest wait for a client to take a message.
const WRITE_LIMIT: Duration = Duration::from_secs(30);

/// A c2s connection over a WebSocket: one element per message.
struct WsTransport {
    tx: SplitSink<WebSocket, Message>,
    rx: SplitStream<WebSocket>,
    limits: Limits,
    /// Pings keep proxies from closing a quiet connection.
    keepalive: tokio::time::Interval,
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Input {
        loop {
            tokio::select! {
                m = self.rx.next() => return match m {
                    Some(Ok(Message::Text(text))) => match parse_message(text.as_str(), self.limits) {
                        Ok(el) if el.is("open", FRAMING) => Input::Open(header_of(&el)),
                        Ok(el) if el.is("close", FRAMING) => Input::Close,
                        Ok(el) => Input::Element(el),
                        Err(e) => Input::Error(e),
                    },
                    Some(Ok(Message::Binary(_))) => Input::Error(StreamError::with_text(
                        SC::BadFormat,
                        "binary WebSocket frames are not XMPP",
                    )),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Input::Alive,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Input::Lost,
                },
                _ = self.keepalive.tick() => {
                    if self.tx.send(Message::Ping(Default::default())).await.is_err() {
                        return Input::Lost;
                    }
                }
            }
        }
    }

    fn next_buffered(&mut self) -> Option<Input> {
        None
    }

    async fn send(&mut self, out: &mut Output) -> std::io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let mut res = Ok(());
        for frame in out.drain_frames() {
            let m = Message::Text(message(frame).into());
            if !matches!(
                tokio::time::timeout(WRITE_LIMIT, self.tx.send(m)).await,
                Ok(Ok(()))
            ) {
                res = Err(std::io::ErrorKind::BrokenPipe.into());
                break;
            }
        }
        out.clear();
        res
    }

    async fn close(&mut self) {
        let _ = self.tx.send(Message::Close(None)).await;
    }
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
    }

    /// Each frame of session output is one RFC 7395 message; elements come
    /// from the session already standalone (no second parse).
    #[test]
    fn frames_become_messages() {
        let mut out = Output::new(Framing::Documents);
        out.open("x", "localhost");
        out.stream_element("features", |s, _| {
            s.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>")
        });
        let mut iq = Element::bare("iq", ns::CLIENT);
        palaver_proto::stanza::set_attr(&mut iq, "id", "1");
        out.element(&iq);
        out.stream_error(&StreamError::new(SC::Conflict));
        out.close();
        let msgs: Vec<String> = out.drain_frames().map(message).collect();
        assert_eq!(msgs.len(), 5, "{msgs:?}");
        assert_eq!(
            msgs[0],
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='localhost' id='x' version='1.0' xml:lang='en'/>"
        );
        assert_eq!(
            msgs[1],
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        );
        assert_eq!(msgs[2], "<iq xmlns='jabber:client' id='1'/>");
        assert!(
            msgs[3].starts_with("<stream:error xmlns:stream="),
            "{}",
            msgs[3]
        );
        assert_eq!(
            msgs[4],
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
        );
        // What the client gets parses back as what the session meant.
        let l = Limits::default();
        for m in &msgs {
            assert!(parse_message(m, l).is_ok(), "{m}");
        }
        assert!(parse_message(&msgs[2], l).is_ok_and(|el| el.is("iq", ns::CLIENT)));
    }
}
