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
    assert!(!f.contains("urn:xmpp:sm:3"), "not before auth: {f}");
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
    let store = &srv.core().storage;
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
            .storage
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
