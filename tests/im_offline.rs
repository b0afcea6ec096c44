//! XEP-0160 offline messages with XEP-0203 delay.
mod common;
use common::*;

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_offline: {max_user_offline_messages: 3}\n";

#[tokio::test]
async fn offline_storage_order_limit_and_cleanup() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    for i in 1..=3 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>offline {i}</body></message>"
        ))
        .await;
    }
    // A chat state alone is not stored and not bounced.
    a.send("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    // Past the limit of 3: service-unavailable.
    a.send("<message to='bob@localhost' type='chat' id='m4'><body>offline 4</body></message>")
        .await;
    let e = a.until("</message>").await;
    assert!(
        e.contains("id='m4'") && e.contains("type='error'") && e.contains("service-unavailable"),
        "{e}"
    );
    // Wait until the three stored messages are committed (no sleeps: ping round trip after the bounce).
    assert_eq!(
        srv.core()
            .storage()
            .offline
            .offline_count(DOMAIN, "bob")
            .await
            .expect("count"),
        3
    );

    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    b.send("<presence/>").await;
    let got = b.until("offline 3").await;
    let p1 = got.find("offline 1").expect("first");
    let p2 = got.find("offline 2").expect("second");
    assert!(p1 < p2, "in order: {got}");
    assert!(
        got.contains("<delay xmlns='urn:xmpp:delay' from='localhost' stamp='"),
        "{got}"
    );
    assert!(got.contains("from='alice@localhost/a'"), "{got}");
    assert!(!got.contains("composing"), "{got}");
    // Delivered messages are gone from the store; a second login gets nothing.
    b.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.until("id='p'").await;
    assert_eq!(
        srv.core()
            .storage()
            .offline
            .offline_count(DOMAIN, "bob")
            .await
            .expect("count"),
        0
    );

    // Headline messages are not stored.
    drop(b);
    a.send("<message to='carol@localhost' type='chat' id='x'><body>nobody</body></message>")
        .await;
    let e = a.until("</message>").await;
    assert!(e.contains("service-unavailable"), "unknown user: {e}");
    srv.stop().await;
}

/// A backlog longer than a session's queue: the login's ping is answered
/// and a live message is delivered while the backlog is still being
/// handed over (a bulk delivery leaves room in the queue, and a reply that
/// finds the queue full waits instead of being dropped).
#[tokio::test]
async fn a_long_backlog_leaves_room_for_replies_and_live_messages() {
    const N: usize = 3000;
    let srv = TestServer::start_with(
        "",
        "modules:\n  mod_ping: {}\n  mod_roster: {}\n  mod_stream_mgmt: {}\n  mod_offline: {max_user_offline_messages: 100000}\n",
    )
    .await;
    for u in ["alice", "bob", "carol"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    a.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    a.until("<enabled").await;
    let body = "x".repeat(2000);
    let mut batch = String::new();
    for i in 1..=N {
        batch.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>{i} {body}</body></message>"
        ));
    }
    // Acknowledged (XEP-0198) once stored: the offline store holds the
    // sender's ticket.
    batch.push_str("<r xmlns='urn:xmpp:sm:3'/>");
    a.send(&batch).await;
    a.until_within(&format!("h='{N}'"), TIMEOUT * 3).await;
    let offline = &srv.core().storage().offline;
    assert_eq!(
        offline.offline_count(DOMAIN, "bob").await.expect("count"),
        N
    );

    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    // The initial presence starts the backlog; the ping comes right after,
    // while bob is not reading yet (the queue fills up).
    b.send("<presence/><iq type='get' id='done'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let mut c = raw_login(srv.addr, "carol", DOMAIN, "pw", "c").await;
    c.send("<message to='bob@localhost/b' type='chat' id='live'><body>live</body></message>")
        .await;
    c.send("<iq type='get' id='cp'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = c.until("id='cp'").await;
    assert!(!got.contains("type='error'"), "carol's message bounced");
    // Everything up to the last stored message, then a second ping.
    let mut got = b.until_within(&format!("id='m{N}'"), TIMEOUT * 3).await;
    b.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    got += &b.until_within("id='sync'", TIMEOUT * 3).await;
    assert!(
        got.contains("id='m1'"),
        "the backlog starts with the first message"
    );
    assert!(
        got.contains("id='done'"),
        "the login's ping was not answered"
    );
    assert!(
        got.contains("id='live'"),
        "the live message was not delivered"
    );
    srv.stop().await;
}
