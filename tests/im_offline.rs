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
