//! XEP-0280 Message Carbons across three resources on two transports (two
//! TCP, one WebSocket).
mod common;
use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use palaver_proto::sasl::{ScramClient, ScramHash};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const MODULES: &str =
    "modules:\n  mod_disco: {}\n  mod_roster: {}\n  mod_offline: {}\n  mod_carboncopy: {}\n";

/// A WebSocket client, as the other tests' TCP `Raw`: text of every frame
/// appended, read until a needle.
struct WsClient {
    ws: Ws,
    buf: String,
}

impl WsClient {
    async fn send(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .await
            .expect("send");
    }

    async fn until(&mut self, needle: &str) -> String {
        let r = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(pos) = self.buf.find(needle) {
                    let end = pos + needle.len();
                    let out = self.buf[..end].to_string();
                    self.buf.drain(..end);
                    return out;
                }
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => self.buf.push_str(&t),
                    Some(Ok(_)) => {}
                    other => panic!("websocket ended: {other:?}; got {:?}", self.buf),
                }
            }
        })
        .await;
        r.unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {:?}", self.buf))
    }
}

const OPEN: &str =
    "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";

async fn ws_login(srv: &TestServer, user: &str, pw: &str, resource: &str) -> WsClient {
    let mut req = format!("ws://{}/ws", srv.http_addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "xmpp".parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let mut c = WsClient {
        ws,
        buf: String::new(),
    };
    c.send(OPEN).await;
    c.until("</stream:features>").await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut client = ScramClient::new(ScramHash::Sha256, user, pw, None);
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64.encode(client.client_first())
    ))
    .await;
    let ch = c.until("</challenge>").await;
    let data = ch
        .split("<challenge")
        .nth(1)
        .and_then(|x| x.split('>').nth(1))
        .and_then(|x| x.split('<').next())
        .expect("challenge");
    let fin = client
        .handle_server_first(&b64.decode(data).expect("b64"))
        .expect("server-first");
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        b64.encode(fin)
    ))
    .await;
    assert!(c.until("</success>").await.contains("<success"));
    c.send(OPEN).await;
    c.until("</stream:features>").await;
    c.send(&format!("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
    c.until("</iq>").await;
    c
}

const ENABLE: &str = "<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>";
const ENABLE_WS: &str =
    "<iq xmlns='jabber:client' type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>";

fn chat(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
}

fn chat_ws(to: &str, body: &str) -> String {
    format!(
        "<message xmlns='jabber:client' to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
    )
}

#[tokio::test]
async fn carbons_across_three_resources_and_two_transports() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a1 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a1").await;
    let mut a2 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a2").await;
    let mut a3 = ws_login(&srv, "alice", "pw", "a3").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;

    // Advertised on the server.
    a1.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(a1.until("</iq>").await.contains("urn:xmpp:carbons:2"));

    a1.send(ENABLE).await;
    assert!(a1.until("/>").await.contains("type='result'"));
    a3.send(ENABLE_WS).await;
    assert!(a3.until("/>").await.contains("type='result'"));
    for c in [&mut a1, &mut a2, &mut bob] {
        c.send("<presence/>").await;
    }
    a3.send("<presence xmlns='jabber:client'/>").await;

    // Received: bob → a1 reaches a1, a copy reaches a3 (enabled), not a2.
    bob.send(&chat("alice@localhost/a1", "to-a1")).await;
    let got = a1.until("to-a1</body></message>").await;
    assert!(!got.contains("urn:xmpp:carbons:2"), "{got}");
    let copy = a3.until("</received></message>").await;
    assert!(
        copy.contains("<received xmlns='urn:xmpp:carbons:2'>")
            && copy.contains("from='alice@localhost'")
            && copy.contains("to='alice@localhost/a3'")
            && copy.contains("<forwarded xmlns='urn:xmpp:forward:0'>")
            && copy.contains("from='bob@localhost/b'")
            && copy.contains("to='alice@localhost/a1'")
            && copy.contains("to-a1"),
        "{copy}"
    );

    // Sent: a1 → bob reaches bob; a copy to a3, none to a1 itself or a2.
    a1.send(&chat("bob@localhost", "from-a1")).await;
    bob.until("from-a1</body></message>").await;
    let copy = a3.until("</sent></message>").await;
    assert!(
        copy.contains("<sent xmlns='urn:xmpp:carbons:2'>")
            && copy.contains("from='alice@localhost/a1'")
            && copy.contains("from-a1"),
        "{copy}"
    );
    // Sent from the WebSocket resource: a copy to a1.
    a3.send(&chat_ws("bob@localhost", "from-a3")).await;
    bob.until("from-a3</body></message>").await;
    let copy = a1.until("</sent></message>").await;
    assert!(
        copy.contains("<sent xmlns='urn:xmpp:carbons:2'>") && copy.contains("from-a3"),
        "{copy}"
    );

    // <private/> is not copied and is removed before the recipient sees it.
    a1.send("<message to='bob@localhost' type='chat' id='p'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>").await;
    let got = bob.until("</message>").await;
    assert!(got.contains("secret") && !got.contains("private"), "{got}");
    // <no-copy/>, groupchat and headline are not copied either.
    bob.send("<message to='alice@localhost/a1' type='chat' id='nc'><body>nocopy</body><no-copy xmlns='urn:xmpp:hints'/></message>").await;
    a1.until("nocopy").await;
    bob.send(
        "<message to='alice@localhost/a1' type='headline' id='hl'><body>headline</body></message>",
    )
    .await;
    a1.until("headline</body>").await;

    // To the bare JID with all three available at priority 0: each gets the
    // message itself, no copies.
    bob.send(&chat("alice@localhost", "to-bare")).await;
    let got = a3.until("to-bare</body></message>").await;
    assert!(!got.contains("carbons"), "{got}");
    a1.until("to-bare</body></message>").await;
    a2.until("to-bare</body></message>").await;

    // Marker: a3 got nothing between (no copy of the private message, of
    // the no-copy, the headline, or of to-bare).
    bob.send(&chat("alice@localhost/a3", "marker1")).await;
    let between = a3.until("marker1</body></message>").await;
    assert!(
        !between.contains("secret")
            && !between.contains("nocopy")
            && !between.contains("headline")
            && !between.contains("to-bare"),
        "{between}"
    );
    let copy = a1.until("</received></message>").await;
    assert!(
        copy.contains("<received") && copy.contains("marker1"),
        "{copy}"
    );
    // a2 never enabled: it saw only what was addressed to it.
    bob.send(&chat("alice@localhost/a2", "marker2")).await;
    let seen = a2.until("marker2</body></message>").await;
    assert!(!seen.contains("carbons"), "{seen}");

    // A resource with a negative priority is skipped by the router for
    // messages to the bare JID; once enabled it gets a received copy.
    a2.send(ENABLE).await;
    a2.until("type='result'").await;
    a2.send("<presence><priority>-1</priority></presence>")
        .await;
    // Wait until the priority is in effect (a1 sees a2's presence).
    a1.until("<priority>-1</priority>").await;
    bob.send(&chat("alice@localhost", "bare2")).await;
    a1.until("bare2</body></message>").await;
    a3.until("bare2</body></message>").await;
    let copy = a2.until("</received></message>").await;
    assert!(
        copy.contains("<received") && copy.contains("bare2"),
        "{copy}"
    );

    // Disabling: a1 no longer gets copies.
    a1.send("<iq type='set' id='c2'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    a1.until("id='c2'").await;
    bob.send(&chat("alice@localhost/a3", "after-disable")).await;
    a3.until("after-disable").await;
    a2.until("after-disable").await;
    bob.send(&chat("alice@localhost/a1", "marker3")).await;
    let between = a1.until("marker3</body></message>").await;
    assert!(!between.contains("after-disable"), "{between}");
    srv.stop().await;
}

#[tokio::test]
async fn without_the_module_nothing_is_advertised_or_copied() {
    let srv = TestServer::start_with("", "modules:\n  mod_disco: {}\n").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut a1 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a1").await;
    a1.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(!a1.until("</iq>").await.contains("carbons"));
    a1.send(ENABLE).await;
    assert!(a1.until("</iq>").await.contains("service-unavailable"));
    srv.stop().await;
}
