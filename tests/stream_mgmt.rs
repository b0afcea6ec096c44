//! XEP-0198 Stream Management: enabling, acknowledgements that mean
//! "stored", unacknowledged stanzas surviving a lost connection.
mod common;
use common::*;

/// Enable stream management on a logged-in raw client.
async fn enable(c: &mut RawTcp) {
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let r = c.until("/>").await;
    assert!(r.contains("<enabled xmlns='urn:xmpp:sm:3'"), "{r}");
    assert!(!r.contains("resume="), "no resumption is offered: {r}");
}

/// Ask for an acknowledgement and return the `h` the server answers with.
async fn ack(c: &mut RawTcp) -> u32 {
    c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    c.until("<a xmlns='urn:xmpp:sm:3' h='").await;
    let h = c.until("'").await;
    c.until("/>").await;
    h.trim_end_matches('\'').parse().expect("numeric h")
}

#[tokio::test]
async fn enable_is_offered_after_auth_and_only_after_bind() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    // (Only as an inline feature of XEP-0388 authentication.)
    let outside = match (f.find("<authentication"), f.find("</authentication>")) {
        (Some(a), Some(b)) => format!("{}{}", &f[..a], &f[b..]),
        _ => f.clone(),
    };
    assert!(!outside.contains("urn:xmpp:sm:3"), "not before auth: {f}");
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
        .await;
    assert!(c.until("/>").await.contains("<success"));
    let f = c.open(DOMAIN).await;
    assert!(f.contains("<sm xmlns='urn:xmpp:sm:3'/>"), "{f}");
    // Before binding: enable fails, resume fails with item-not-found, and
    // the client may still bind.
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let r = c.until("</failed>").await;
    assert!(r.contains("unexpected-request"), "{r}");
    c.send("<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>")
        .await;
    let r = c.until("</failed>").await;
    assert!(r.contains("item-not-found"), "{r}");
    c.bind("r").await;
    enable(&mut c).await;
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let r = c.until("</failed>").await;
    assert!(r.contains("unexpected-request"), "{r}");
    // Nonzas are not counted; nothing was sent yet.
    assert_eq!(ack(&mut c).await, 0);
    srv.stop().await;
}

#[tokio::test]
async fn without_the_module_nothing_is_offered() {
    let srv = TestServer::start_with("", "modules:\n  mod_ping: {}\n").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
        .await;
    c.until("/>").await;
    let f = c.open(DOMAIN).await;
    assert!(!f.contains("urn:xmpp:sm"), "{f}");
    c.bind("r").await;
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let r = c.until("</failed>").await;
    assert!(r.contains("feature-not-implemented"), "{r}");
    // <r/> without stream management is a stream error.
    c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let r = c.until_closed().await;
    assert!(r.contains("unsupported-stanza-type"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn acks_count_stanzas_and_come_after_storage() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    enable(&mut a).await;
    // 40 messages to bob, who is offline, and a roster change.
    for i in 1..=40 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>stored {i}</body></message>"
        ))
        .await;
    }
    a.send("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='Carol'/></query></iq>")
        .await;
    assert_eq!(ack(&mut a).await, 41);
    // The acknowledgement means committed: all of it is in the store now.
    let store = &srv.core().storage();
    assert_eq!(
        store
            .offline
            .offline_count(DOMAIN, "bob")
            .await
            .expect("count"),
        40
    );
    let item = store
        .roster
        .roster_item(DOMAIN, "alice", "carol@localhost")
        .await
        .expect("roster");
    assert_eq!(item.and_then(|i| i.name).as_deref(), Some("Carol"));
    // Stanzas the server answers itself count too.
    a.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(ack(&mut a).await, 42);
    srv.stop().await;
}

#[tokio::test]
async fn unacked_messages_survive_a_lost_connection() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    enable(&mut a).await;
    a.send("<presence/>").await;
    a.until("<presence").await; // own presence: outbound stanza 1
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    for i in 1..=3 {
        b.send(&format!(
            "<message to='alice@localhost' type='chat' id='m{i}'><body>unacked {i}</body></message>"
        ))
        .await;
    }
    let got = a.until("unacked 3").await;
    assert!(got.contains("unacked 1"), "{got}");
    // The server asks for acks; the client acknowledges the presence and
    // the first message only, then its connection is lost.
    assert!(got.contains("<r xmlns='urn:xmpp:sm:3'/>"), "{got}");
    a.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    a.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.until("id='p'").await;
    drop(a);
    // The two unacknowledged messages are stored for alice, not lost.
    wait_offline(&srv, "alice", 2).await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "laptop").await;
    a.send("<presence/>").await;
    let got = a.until("unacked 3").await;
    assert!(got.contains("unacked 2"), "{got}");
    assert!(!got.contains("unacked 1"), "acknowledged: not again: {got}");
    drop(b);
    srv.stop().await;
}

#[tokio::test]
async fn bad_acks_and_a_full_queue_end_the_stream() {
    let srv = TestServer::start_with(
        "",
        "modules:\n  mod_roster: {}\n  mod_offline: {}\n  mod_stream_mgmt: {max_ack_queue: 3}\n",
    )
    .await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    enable(&mut a).await;
    a.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
    let r = a.until_closed().await;
    assert!(
        r.contains("undefined-condition") && r.contains("handled-count-too-high"),
        "{r}"
    );

    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    enable(&mut a).await;
    a.send("<presence/>").await;
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    for i in 1..=4 {
        b.send(&format!(
            "<message to='alice@localhost/a' type='chat' id='m{i}'><body>q {i}</body></message>"
        ))
        .await;
    }
    let r = a.until_closed().await;
    assert!(
        r.contains("policy-violation") && r.contains("unacknowledged"),
        "{r}"
    );
    // Nothing was acknowledged: every message waits offline for alice.
    wait_offline(&srv, "alice", 4).await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "b").await;
    a.send("<presence/>").await;
    let got = a.until("q 4").await;
    for i in 1..=3 {
        assert!(got.contains(&format!("q {i}")), "{got}");
    }
    drop(b);
    srv.stop().await;
}

/// Wait until `user` has `n` offline messages (the server stores them after
/// it notices the lost connection).
async fn wait_offline(srv: &TestServer, user: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let have = srv
            .core()
            .storage()
            .offline
            .offline_count(DOMAIN, user)
            .await
            .expect("count");
        if have == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} has {have} offline messages, want {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Enable with resumption; returns the SM-ID.
async fn enable_resumable(c: &mut RawTcp) -> String {
    c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let r = c.until("/>").await;
    assert!(
        r.contains("<enabled xmlns='urn:xmpp:sm:3' id='") && r.contains("resume='true'"),
        "{r}"
    );
    assert!(r.contains("max='"), "{r}");
    let start = r.find("id='").expect("id") + 4;
    r[start..start + r[start..].find('\'').expect("id end")].to_string()
}

/// Authenticate a new connection (no bind) as `user`.
async fn authenticated(srv: &TestServer, user: &str) -> RawTcp {
    use base64::Engine as _;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    assert!(c.until("/>").await.contains("<success"));
    c.open(DOMAIN).await;
    c
}

#[tokio::test]
async fn a_lost_session_is_resumed_with_what_it_missed() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let id = enable_resumable(&mut a).await;
    a.send("<presence/>").await;
    a.until("<presence").await; // outbound 1
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    b.send("<message to='alice@localhost/phone' type='chat' id='m1'><body>seen 1</body></message>")
        .await;
    a.until("seen 1").await; // outbound 2
    a.send("<message to='bob@localhost/b' type='chat'><body>from the phone</body></message>")
        .await;
    b.until("from the phone").await;
    // The client acknowledges its presence only, and its network goes away.
    a.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    a.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.until("id='p'").await; // outbound 3
    drop(a);
    // While detached the session stays: bob's message waits for it.
    b.send(
        "<message to='alice@localhost/phone' type='chat' id='m2'><body>while away</body></message>",
    )
    .await;
    b.send("<iq type='get' id='pb' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.until("id='pb'").await;
    assert_eq!(srv.core().sessions().count(), 2, "alice's session is kept");
    // Resume on a new connection: h counts alice's 3 inbound stanzas
    // (presence, message, ping); everything after her h=1 comes again.
    let mut a = authenticated(&srv, "alice").await;
    a.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='1'/>"
    ))
    .await;
    let r = a.until("/>").await;
    assert!(
        r.contains(&format!(
            "<resumed xmlns='urn:xmpp:sm:3' previd='{id}' h='3'/>"
        )),
        "{r}"
    );
    let again = a.until("while away").await;
    assert!(
        again.contains("seen 1"),
        "unacknowledged, sent again: {again}"
    );
    // Same session, same resource: routing to it goes on.
    b.send("<message to='alice@localhost/phone' type='chat'><body>after resume</body></message>")
        .await;
    a.until("after resume").await;
    a.send("<message to='bob@localhost/b' type='chat'><body>back</body></message>")
        .await;
    b.until("back").await;
    assert_eq!(ack(&mut a).await, 4);
    // The old SM-ID stays valid for the resumed session; it is not a
    // second session.
    assert_eq!(srv.core().sessions().count(), 2);
    srv.stop().await;
}

#[tokio::test]
async fn resumption_is_refused_when_it_must_be() {
    let srv = TestServer::start_with(
        "",
        "modules:\n  mod_roster: {}\n  mod_offline: {}\n  mod_stream_mgmt: {resume_timeout: 1}\n",
    )
    .await;
    for u in ["alice", "eve"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    // Unknown SM-ID: failed, and the client may still bind.
    let mut c = authenticated(&srv, "alice").await;
    c.send("<resume xmlns='urn:xmpp:sm:3' previd='0123' h='0'/>")
        .await;
    assert!(c.until("</failed>").await.contains("item-not-found"));
    c.bind("r").await;
    let id = enable_resumable(&mut c).await;
    // Another account cannot take it over.
    let mut e = authenticated(&srv, "eve").await;
    e.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    assert!(e.until("</failed>").await.contains("item-not-found"));
    // A clean close ends the session for good.
    c.send("</stream:stream>").await;
    c.until_closed().await;
    let mut c2 = authenticated(&srv, "alice").await;
    c2.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    assert!(c2.until("</failed>").await.contains("item-not-found"));
    c2.bind("r2").await;
    // A lost session past resume_timeout (1 s) is gone, and what it held
    // went to offline storage.
    let id = enable_resumable(&mut c2).await;
    c2.send("<presence/>").await;
    c2.until("<presence").await;
    let mut e = raw_login(srv.addr, "eve", DOMAIN, "pw", "e").await;
    e.send("<message to='alice@localhost/r2' type='chat'><body>held</body></message>")
        .await;
    c2.until("held").await;
    drop(c2);
    wait_offline(&srv, "alice", 1).await;
    let mut c3 = authenticated(&srv, "alice").await;
    c3.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    assert!(c3.until("</failed>").await.contains("item-not-found"));
    drop(e);
    srv.stop().await;
}

#[tokio::test]
async fn resuming_a_still_connected_session_takes_it_over() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut old = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let id = enable_resumable(&mut old).await;
    let full = jid::FullJid::new("alice@localhost/phone").unwrap();
    let peer_port = |srv: &TestServer| {
        srv.core()
            .sessions()
            .get(&full)
            .map(|h| (h.conn.peer.port(), h.conn.since))
            .expect("session")
    };
    let (port, since) = peer_port(&srv);
    assert_eq!(port, old.s.local_addr().unwrap().port());
    // The client believes its connection dead; the server does not yet.
    let mut new = authenticated(&srv, "alice").await;
    new.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let r = new.until("/>").await;
    assert!(r.contains("<resumed"), "{r}");
    let closed = old.until_closed().await;
    assert!(closed.contains("conflict"), "the old stream ends: {closed}");
    new.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    new.until("id='p'").await;
    assert_eq!(srv.core().sessions().count(), 1);
    // The session table shows the new connection, since the session began.
    assert_eq!(peer_port(&srv), (new.s.local_addr().unwrap().port(), since));
    srv.stop().await;
}
