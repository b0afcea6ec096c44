//! BOSH (XEP-0124/0206): login, chat with a TCP user, long polling,
//! retransmission and rid ordering.
mod common;
use base64::Engine;
use common::*;
use palaver_proto::sasl::{ScramClient, ScramHash};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "http://jabber.org/protocol/httpbind";

async fn post(addr: SocketAddr, body: &str) -> String {
    let (status, body) = post_status(addr, body).await;
    assert!(status == 200 || status == 400, "HTTP {status}: {body}");
    body
}

/// POST a BOSH body; returns the HTTP status and the response body.
async fn post_status(addr: SocketAddr, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /bosh HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(90), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) => {
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|h| h.get(..3))
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("bad status line: {head}"));
            (status, body.to_string())
        }
        None => panic!("bad HTTP response {text}"),
    }
}

fn attr(s: &str, name: &str) -> Option<String> {
    let key = format!("{name}='");
    let start = s.find(&key)? + key.len();
    let end = s[start..].find('\'')? + start;
    Some(s[start..end].to_string())
}

struct Bosh {
    addr: SocketAddr,
    sid: String,
    rid: u64,
}

impl Bosh {
    fn body(&mut self, inner: &str, extra: &str) -> String {
        self.rid += 1;
        format!(
            "<body xmlns='{NS}' rid='{}' sid='{}'{extra}>{inner}</body>",
            self.rid, self.sid
        )
    }
    async fn send(&mut self, inner: &str) -> String {
        let b = self.body(inner, "");
        post(self.addr, &b).await
    }
}

async fn login(srv: &TestServer, user: &str) -> (Bosh, String) {
    login_wait(srv, user, 2).await
}

/// Log in over BOSH with the given `wait` (seconds a request may be held).
async fn login_wait(srv: &TestServer, user: &str, wait: u64) -> (Bosh, String) {
    let rid = 1000;
    let r = post(srv.http_addr, &format!("<body xmlns='{NS}' rid='{rid}' to='localhost' wait='{wait}' hold='1' ack='1' ver='1.6' xml:lang='en' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>")).await;
    let sid = attr(&r, "sid").expect("sid");
    assert_eq!(attr(&r, "requests").as_deref(), Some("2"), "{r}");
    assert!(
        r.contains("<stream:features") && r.contains("SCRAM-SHA-256"),
        "{r}"
    );
    let mut b = Bosh {
        addr: srv.http_addr,
        sid,
        rid,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut c = ScramClient::new(ScramHash::Sha256, user, "pw", None);
    let r = b
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            b64.encode(c.client_first())
        ))
        .await;
    let ch = r
        .split("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")
        .nth(1)
        .and_then(|x| x.split('<').next())
        .expect("challenge");
    let fin = c
        .handle_server_first(&b64.decode(ch).expect("b64"))
        .expect("server-first");
    let r = b
        .send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64.encode(fin)
        ))
        .await;
    assert!(r.contains("<success"), "{r}");
    let restart = b.body(
        "",
        " to='localhost' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'",
    );
    let r = post(b.addr, &restart).await;
    assert!(r.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{r}");
    let r = b.send("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>").await;
    assert!(
        r.contains(&format!("<jid>{user}@localhost/bosh</jid>")),
        "{r}"
    );
    (b, r)
}

#[tokio::test]
async fn bosh_chat_retransmission_and_rid_gap() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    srv.add_user("carol", DOMAIN, "pw").await;
    // carol has a long `wait`: a held request answered quickly was answered
    // by the stanza's arrival, not by its timer.
    let (mut c, _) = login_wait(&srv, "carol", 30).await;
    let r = c.send("<presence xmlns='jabber:client'/>").await;
    assert!(
        r.contains("from='carol@localhost/bosh'"),
        "own presence: {r}"
    );
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "tcp").await;
    bob.send("<presence/>").await;
    bob.until("<presence").await;
    // A held long poll is answered as soon as a message arrives: the
    // request is still unanswered after a while (the server holds it),
    // then bob's message answers it, long before `wait` runs out.
    let poll = c.body("", "");
    let addr = c.addr;
    let mut held = tokio::spawn(async move { post_status(addr, &poll).await });
    let early = tokio::time::timeout(std::time::Duration::from_millis(700), &mut held).await;
    assert!(
        early.is_err(),
        "an empty poll is held, not answered: {early:?}"
    );
    bob.send("<message to='carol@localhost/bosh' type='chat'><body>to bosh</body></message>")
        .await;
    let (status, got) = tokio::time::timeout(std::time::Duration::from_secs(10), held)
        .await
        .expect("the held request is answered when the message arrives, not at wait=30")
        .expect("join");
    assert_eq!(status, 200, "{got}");
    assert!(
        got.contains("to bosh") && got.contains("from='bob@localhost/tcp'"),
        "the held request carries the message: {got}"
    );
    // Retransmission (XEP-0124 §9): the same rid gets the identical answer.
    let (status, again) = post_status(
        c.addr,
        &format!("<body xmlns='{NS}' rid='{}' sid='{}'/>", c.rid, c.sid),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, got, "the retransmitted answer is the same");
    let t = c.body("", " type='terminate'");
    assert!(post(c.addr, &t).await.contains("type='terminate'"));
    let (mut b, _) = login(&srv, "alice").await;
    b.send("<presence xmlns='jabber:client'/>").await;
    // Sending to the TCP user.
    b.send("<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>from bosh</body></message>").await;
    assert!(
        bob.until("from bosh")
            .await
            .contains("from='alice@localhost/bosh'")
    );
    // rid gap: rid+2 waits until rid+1 arrives, then both are answered.
    let r1 = b.rid + 1;
    let r2 = b.rid + 2;
    b.rid = r2;
    let (sid, addr) = (b.sid.clone(), b.addr);
    let later = tokio::spawn(async move {
        post(addr, &format!("<body xmlns='{NS}' rid='{r2}' sid='{sid}'><message xmlns='jabber:client' to='bob@localhost' type='chat'><body>second</body></message></body>")).await
    });
    let first = post(b.addr, &format!("<body xmlns='{NS}' rid='{r1}' sid='{}'><message xmlns='jabber:client' to='bob@localhost' type='chat'><body>first</body></message></body>", b.sid)).await;
    assert!(first.starts_with("<body"), "{first}");
    assert!(
        first.contains(&format!("ack='{r2}'")),
        "ack of the highest rid: {first}"
    );
    let later = later.await.expect("join");
    assert!(later.starts_with("<body"), "{later}");
    let seen = bob.until("second").await;
    assert!(
        seen.find("first")
            .is_some_and(|f| f < seen.find("second").unwrap_or(0)),
        "order: {seen}"
    );
    // Unknown sid and out-of-window rid.
    let r = post(b.addr, &format!("<body xmlns='{NS}' rid='1' sid='nope'/>")).await;
    assert!(
        r.contains("type='terminate'") && r.contains("item-not-found"),
        "{r}"
    );
    let r = post(
        b.addr,
        &format!("<body xmlns='{NS}' rid='{}' sid='{}'/>", b.rid + 50, b.sid),
    )
    .await;
    assert!(r.contains("item-not-found"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn bosh_terminate_and_bad_requests() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let r = post(srv.http_addr, "not xml").await;
    assert!(r.contains("bad-request"), "{r}");
    let (mut b, _) = login(&srv, "alice").await;
    assert_eq!(srv.core().sessions().count(), 1);
    let t = b.body(
        "<presence xmlns='jabber:client' type='unavailable'/>",
        " type='terminate'",
    );
    let r = post(b.addr, &t).await;
    assert!(r.contains("type='terminate'"), "{r}");
    let r = b.send("").await;
    assert!(r.contains("item-not-found"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn bosh_polling_overactivity() {
    let srv = TestServer::start().await;
    let r = post(srv.http_addr, &format!("<body xmlns='{NS}' rid='10' to='localhost' wait='2' hold='0' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>")).await;
    let sid = attr(&r, "sid").expect("sid");
    assert_eq!(attr(&r, "hold").as_deref(), Some("0"));
    // Two empty polls back to back: the second breaks the polling interval.
    let _ = post(
        srv.http_addr,
        &format!("<body xmlns='{NS}' rid='11' sid='{sid}'/>"),
    )
    .await;
    let r = post(
        srv.http_addr,
        &format!("<body xmlns='{NS}' rid='12' sid='{sid}'/>"),
    )
    .await;
    assert!(r.contains("policy-violation"), "{r}");
    srv.stop().await;
}

impl Bosh {
    /// Long-poll (empty bodies, each held up to `wait`) until `needle` has
    /// arrived; everything received so far.
    async fn poll_until(&mut self, seen: &mut String, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !seen.contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {needle:?} over BOSH; got {seen}"
            );
            let r = self.send("").await;
            seen.push_str(&r);
        }
        std::mem::take(seen)
    }
}

/// XEP-0280 carbons with one resource on BOSH: it gets the received and
/// sent copies of what its TCP sibling gets and sends, and its own sends
/// are copied to the sibling (never back to itself).
#[tokio::test]
async fn bosh_carbons() {
    let srv = TestServer::start_with(
        "",
        "modules:\n  mod_disco: {}\n  mod_roster: {}\n  mod_carboncopy: {}\n",
    )
    .await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let (mut b, _) = login(&srv, "alice").await;
    let mut seen = String::new();
    seen.push_str(
        &b.send("<iq xmlns='jabber:client' type='set' id='cb1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await,
    );
    let r = b.poll_until(&mut seen, "id='cb1'").await;
    assert!(r.contains("type='result'"), "{r}");
    seen.push_str(&b.send("<presence xmlns='jabber:client'/>").await);
    let mut pc = raw_login(srv.addr, "alice", DOMAIN, "pw", "pc").await;
    pc.send("<iq type='set' id='cb2'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    pc.until("id='cb2'").await;
    pc.send("<presence/>").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "tcp").await;
    bob.send("<presence/>").await;

    // Received: bob writes to the PC's full JID; the BOSH resource gets
    // the <received/> copy.
    bob.send(
        "<message to='alice@localhost/pc' type='chat' id='r1'><body>to the pc</body></message>",
    )
    .await;
    pc.until("to the pc</body>").await;
    let r = b.poll_until(&mut seen, "to the pc</body>").await;
    assert!(
        r.contains("<received xmlns='urn:xmpp:carbons:2'>")
            && r.contains("from='bob@localhost/tcp'")
            && r.contains("to='alice@localhost/bosh'"),
        "{r}"
    );

    // Sent: the PC writes to bob; the BOSH resource gets the <sent/> copy.
    pc.send("<message to='bob@localhost' type='chat' id='s1'><body>from the pc</body></message>")
        .await;
    bob.until("from the pc</body>").await;
    let r = b.poll_until(&mut seen, "from the pc</body>").await;
    assert!(
        r.contains("<sent xmlns='urn:xmpp:carbons:2'>") && r.contains("from='alice@localhost/pc'"),
        "{r}"
    );

    // The BOSH resource writes: bob gets it, the PC gets the <sent/> copy,
    // the BOSH resource no copy of its own message.
    seen.push_str(
        &b.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='s2'><body>from bosh</body></message>")
            .await,
    );
    bob.until("from bosh</body>").await;
    let r = pc.until("from bosh</body>").await;
    assert!(
        r.contains("<sent xmlns='urn:xmpp:carbons:2'>")
            && r.contains("from='alice@localhost/bosh'"),
        "{r}"
    );
    // A ping after it: everything routed to the BOSH resource before the
    // answer is in `seen` by then.
    seen.push_str(
        &b.send("<iq xmlns='jabber:client' type='get' id='pg' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await,
    );
    let r = b.poll_until(&mut seen, "id='pg'").await;
    assert!(!r.contains("from bosh"), "a copy to the sender: {r}");
    srv.stop().await;
}
