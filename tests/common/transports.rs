//! Logged-in clients over each transport (direct TLS, WebSocket, BOSH),
//! for tests that look at sessions by transport (the session commands,
//! the metrics). Include with `#[path = "common/transports.rs"] mod
//! transports;` next to `mod common;`.
#![allow(dead_code)]

use crate::common::*;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use palaver_proto::sasl::{ScramClient, ScramHash};
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A raw client over direct TLS (the listener with `tls: true`), logged
/// in with PLAIN and bound to `resource`.
pub async fn tls_login(
    srv: &TestServer,
    user: &str,
    password: &str,
    resource: &str,
) -> Raw<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let pem = std::fs::read(srv.cert_path()).expect("certificate");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("certificate")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(srv.tls_addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from(DOMAIN.to_string()).expect("name");
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut c = Raw {
        s,
        buf: String::new(),
    };
    c.login_plain(user, DOMAIN, password, resource).await;
    c
}

/// Next text frame of a WebSocket (pings skipped).
pub async fn ws_next(ws: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("message in time");
        match m {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Send a text frame.
pub async fn ws_send(ws: &mut Ws, s: &str) {
    ws.send(Message::Text(s.to_string().into()))
        .await
        .expect("send");
}

/// The next frame containing `needle`.
pub async fn ws_until(ws: &mut Ws, needle: &str) -> String {
    loop {
        let t = ws_next(ws).await;
        if t.contains(needle) {
            return t;
        }
    }
}

/// SCRAM-SHA-256 `<auth/>` and `<response/>` over any request/answer pair:
/// returns the client's first message and, from the challenge, the final one.
fn scram(user: &str, password: &str) -> ScramClient {
    ScramClient::new(ScramHash::Sha256, user, password, None)
}

fn challenge_of(r: &str) -> Vec<u8> {
    let data = r
        .split("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")
        .nth(1)
        .and_then(|x| x.split('<').next())
        .unwrap_or_else(|| panic!("no challenge in {r}"));
    b64().decode(data).expect("base64 challenge")
}

/// A WebSocket session (`/ws`, SCRAM-SHA-256) bound to `resource` on `localhost`.
pub async fn ws_login(srv: &TestServer, user: &str, password: &str, resource: &str) -> Ws {
    const OPEN: &str =
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";
    let mut req = format!("ws://{}/ws", srv.http_addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "xmpp".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket");
    ws_send(&mut ws, OPEN).await;
    ws_until(&mut ws, "</stream:features>").await;
    let mut c = scram(user, password);
    ws_send(
        &mut ws,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            b64().encode(c.client_first())
        ),
    )
    .await;
    let ch = ws_until(&mut ws, "challenge").await;
    let fin = c
        .handle_server_first(&challenge_of(&ch))
        .expect("server-first");
    ws_send(
        &mut ws,
        &format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64().encode(fin)
        ),
    )
    .await;
    let r = ws_next(&mut ws).await;
    assert!(r.contains("<success"), "{r}");
    ws_send(&mut ws, OPEN).await;
    ws_until(&mut ws, "</stream:features>").await;
    ws_send(&mut ws, &format!("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
    let r = ws_until(&mut ws, "</iq>").await;
    assert!(r.contains("<jid>"), "{r}");
    ws
}

const BOSH_NS: &str = "http://jabber.org/protocol/httpbind";

/// A BOSH session's ids.
pub struct Bosh {
    pub addr: SocketAddr,
    pub sid: String,
    pub rid: u64,
}

/// POST one BOSH body; the response body.
pub async fn bosh_post(addr: SocketAddr, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /bosh HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn attr(s: &str, name: &str) -> Option<String> {
    let key = format!("{name}='");
    let start = s.find(&key)? + key.len();
    let end = s[start..].find('\'')? + start;
    Some(s[start..end].to_string())
}

impl Bosh {
    /// Send `inner` in the next body; the answer.
    pub async fn send(&mut self, inner: &str) -> String {
        self.send_with(inner, "").await
    }

    async fn send_with(&mut self, inner: &str, extra: &str) -> String {
        self.rid += 1;
        let b = format!(
            "<body xmlns='{BOSH_NS}' rid='{}' sid='{}'{extra}>{inner}</body>",
            self.rid, self.sid
        );
        bosh_post(self.addr, &b).await
    }
}

/// A BOSH session (`/bosh`, SCRAM-SHA-256) bound to `resource` on `localhost`.
pub async fn bosh_login(srv: &TestServer, user: &str, password: &str, resource: &str) -> Bosh {
    let rid = 5000;
    let r = bosh_post(srv.http_addr, &format!("<body xmlns='{BOSH_NS}' rid='{rid}' to='localhost' wait='2' hold='1' ack='1' ver='1.6' xml:lang='en' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>")).await;
    let mut b = Bosh {
        addr: srv.http_addr,
        sid: attr(&r, "sid").expect("sid"),
        rid,
    };
    let mut c = scram(user, password);
    let r = b
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            b64().encode(c.client_first())
        ))
        .await;
    let fin = c
        .handle_server_first(&challenge_of(&r))
        .expect("server-first");
    let r = b
        .send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64().encode(fin)
        ))
        .await;
    assert!(r.contains("<success"), "{r}");
    let r = b
        .send_with(
            "",
            " to='localhost' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'",
        )
        .await;
    assert!(r.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{r}");
    let r = b.send(&format!("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
    assert!(r.contains("<jid>"), "{r}");
    b
}
