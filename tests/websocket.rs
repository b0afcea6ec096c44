//! RFC 7395 XMPP over WebSocket, against a TCP user.
mod common;
use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use palaver_proto::sasl::{ScramClient, ScramHash};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(srv: &TestServer, protocol: Option<&str>) -> Result<Ws, String> {
    let mut req = format!("ws://{}/ws", srv.http_addr)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().map_err(|_| "header")?);
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("xmpp")
            );
            Ok(ws)
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn next_text(ws: &mut Ws) -> String {
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

async fn send(ws: &mut Ws, s: &str) {
    ws.send(Message::Text(s.to_string().into()))
        .await
        .expect("send");
}

async fn until(ws: &mut Ws, needle: &str) -> String {
    loop {
        let t = next_text(ws).await;
        if t.contains(needle) {
            return t;
        }
    }
}

const OPEN: &str =
    "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";

async fn ws_login(srv: &TestServer, user: &str, pw: &str) -> Ws {
    let mut ws = connect(srv, Some("xmpp")).await.expect("connect");
    send(&mut ws, OPEN).await;
    let open = next_text(&mut ws).await;
    assert!(
        open.starts_with("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'"),
        "{open}"
    );
    let feats = next_text(&mut ws).await;
    assert!(
        feats.starts_with("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"),
        "{feats}"
    );
    assert!(feats.contains("SCRAM-SHA-1"), "{feats}");
    assert!(!feats.contains("starttls"), "{feats}");
    // PLAIN needs TLS here; SCRAM does not.
    send(
        &mut ws,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
    )
    .await;
    let r = next_text(&mut ws).await;
    assert!(r.contains("encryption-required"), "{r}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut client = ScramClient::new(ScramHash::Sha256, user, pw, None);
    send(
        &mut ws,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            b64.encode(client.client_first())
        ),
    )
    .await;
    let ch = next_text(&mut ws).await;
    let data = ch
        .split('>')
        .nth(1)
        .and_then(|x| x.split('<').next())
        .expect("challenge");
    let server_first = b64.decode(data).expect("b64");
    let fin = client
        .handle_server_first(&server_first)
        .expect("server-first");
    send(
        &mut ws,
        &format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64.encode(fin)
        ),
    )
    .await;
    let r = next_text(&mut ws).await;
    assert!(r.contains("<success"), "{r}");
    send(&mut ws, OPEN).await;
    next_text(&mut ws).await;
    let feats = next_text(&mut ws).await;
    assert!(
        feats.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{feats}"
    );
    send(&mut ws, "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>").await;
    let r = next_text(&mut ws).await;
    assert!(
        r.contains(&format!("<jid>{user}@localhost/web</jid>")),
        "{r}"
    );
    assert!(r.starts_with("<iq xmlns='jabber:client'"), "{r}");
    ws
}

#[tokio::test]
async fn websocket_chat_with_tcp_user() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut ws = ws_login(&srv, "alice", "pw").await;
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;
    until(&mut ws, "<presence").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "tcp").await;
    bob.send("<presence/>").await;
    bob.send("<message to='alice@localhost/web' type='chat'><body>hi from tcp</body></message>")
        .await;
    let m = until(&mut ws, "hi from tcp").await;
    assert!(
        m.starts_with("<message xmlns='jabber:client'") && m.contains("from='bob@localhost/tcp'"),
        "{m}"
    );
    send(&mut ws, "<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>hi from web</body></message>").await;
    let got = bob.until("hi from web").await;
    assert!(got.contains("from='alice@localhost/web'"), "{got}");
    // WebSocket sessions are in the session table like TCP ones.
    assert_eq!(srv.core().sessions().count(), 2);
    send(
        &mut ws,
        "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
    )
    .await;
    until(&mut ws, "<close").await;
    srv.stop().await;
}

#[tokio::test]
async fn websocket_protocol_errors() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    // The xmpp subprotocol is required.
    assert!(connect(&srv, None).await.is_err());
    // Two elements in one message → not-well-formed, then <close/>.
    let mut ws = connect(&srv, Some("xmpp")).await.expect("connect");
    send(&mut ws, OPEN).await;
    next_text(&mut ws).await;
    next_text(&mut ws).await;
    send(
        &mut ws,
        "<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>",
    )
    .await;
    let e = until(&mut ws, "stream:error").await;
    assert!(e.contains("not-well-formed"), "{e}");
    until(&mut ws, "<close").await;
    // Restricted XML.
    let mut ws = connect(&srv, Some("xmpp")).await.expect("connect");
    send(&mut ws, OPEN).await;
    next_text(&mut ws).await;
    next_text(&mut ws).await;
    send(&mut ws, "<!-- x --><presence xmlns='jabber:client'/>").await;
    let e = until(&mut ws, "stream:error").await;
    assert!(e.contains("restricted-xml"), "{e}");
    // Binary frames are refused.
    let mut ws = connect(&srv, Some("xmpp")).await.expect("connect");
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    let e = until(&mut ws, "stream:error").await;
    assert!(e.contains("bad-format"), "{e}");
    // The server still serves.
    let _ok = ws_login(&srv, "alice", "pw").await;
    srv.stop().await;
}

async fn http_get(srv: &TestServer, path: &str, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(srv.http_addr)
        .await
        .expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: chat.test:5280\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn connection_discovery_and_cors() {
    let srv = TestServer::start().await;
    let xml = http_get(
        &srv,
        "/.well-known/host-meta",
        "Origin: http://app.example\r\n",
    )
    .await;
    assert!(xml.starts_with("HTTP/1.1 200"), "{xml}");
    assert!(
        xml.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{xml}"
    );
    assert!(
        xml.contains(
            "<Link rel='urn:xmpp:alt-connections:websocket' href='ws://chat.test:5280/ws'/>"
        ),
        "{xml}"
    );
    let json = http_get(&srv, "/.well-known/host-meta.json", "").await;
    assert!(
        json.contains(
            "{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"ws://chat.test:5280/ws\"}"
        ),
        "{json}"
    );
    assert!(
        xml.contains(
            "<Link rel='urn:xmpp:alt-connections:xbosh' href='http://chat.test:5280/bosh'/>"
        ),
        "{xml}"
    );
    srv.stop().await;
}

/// XEP-0198 runs over WebSocket exactly as over TCP (one state machine):
/// each nonza is a WebSocket message of its own, acks count stored stanzas,
/// and an unacknowledged message survives the lost connection.
#[tokio::test]
async fn stream_management_over_websocket() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut ws = ws_login(&srv, "alice", "pw").await;
    send(&mut ws, "<enable xmlns='urn:xmpp:sm:3'/>").await;
    let r = next_text(&mut ws).await;
    assert_eq!(r, "<enabled xmlns='urn:xmpp:sm:3'/>");
    for i in 1..=3 {
        send(
            &mut ws,
            &format!("<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>ws {i}</body></message>"),
        )
        .await;
    }
    send(&mut ws, "<r xmlns='urn:xmpp:sm:3'/>").await;
    let r = until(&mut ws, "<a ").await;
    assert!(r.contains("<a xmlns='urn:xmpp:sm:3' h='3'/>"), "{r}");
    assert_eq!(
        srv.core()
            .storage()
            .offline
            .offline_count(DOMAIN, "bob")
            .await
            .expect("count"),
        3,
        "acknowledged means stored"
    );
    // Bob writes to alice's WebSocket session; alice never acks, and drops.
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;
    until(&mut ws, "<presence").await;
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    b.send("<message to='alice@localhost/web' type='chat'><body>to the browser</body></message>")
        .await;
    let r = until(&mut ws, "to the browser").await;
    assert!(r.contains("to the browser"), "{r}");
    drop(ws);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while srv
        .core()
        .storage()
        .offline
        .offline_count(DOMAIN, "alice")
        .await
        .expect("count")
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unacknowledged message not kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "tcp").await;
    a.send("<presence/>").await;
    a.until("to the browser").await;
    drop(b);
    srv.stop().await;
}

/// A WebSocket session that loses its connection is resumed (XEP-0198 §5)
/// on a new connection — here a TCP one: one state machine for all.
#[tokio::test]
async fn websocket_session_resumes_elsewhere() {
    use base64::Engine as _;
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut ws = ws_login(&srv, "alice", "pw").await;
    send(&mut ws, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    let r = next_text(&mut ws).await;
    assert!(r.contains("resume='true'"), "{r}");
    let start = r.find("id='").expect("id") + 4;
    let id = r[start..start + r[start..].find('\'').expect("end")].to_string();
    drop(ws);
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    b.send("<message to='alice@localhost/web' type='chat'><body>for the tab</body></message>")
        .await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let token = base64::engine::general_purpose::STANDARD.encode("\0alice\0pw");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    assert!(c.until("/>").await.contains("<success"));
    c.open(DOMAIN).await;
    c.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let r = c.until("for the tab").await;
    assert!(r.contains("<resumed xmlns='urn:xmpp:sm:3'"), "{r}");
    drop(b);
    srv.stop().await;
}
