//! XEP-0352 Client State Indication: what waits while a client is inactive,
//! the order it comes in, the bound, resumption, and idle time (XEP-0012).
mod common;
use common::*;

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_last: {}\n  mod_stream_mgmt: {}\n  mod_carboncopy: {}\n  mod_client_state: {max_queue: 5}\n";

fn presence(to: &str, status: &str) -> String {
    format!("<presence to='{to}'><status>{status}</status></presence>")
}

/// Nothing but the expected arrives for a moment (absence cannot be awaited).
async fn quiet(c: &mut RawTcp) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(std::time::Duration::from_millis(300), c.s.read(&mut chunk)).await {
        Err(_) => {}
        Ok(Ok(n)) => {
            let got = String::from_utf8_lossy(&chunk[..n]).to_string();
            assert!(
                !got.contains("<presence") && !got.contains("<message"),
                "held stanzas were written: {got}"
            );
            c.buf.push_str(&got);
        }
        Ok(Err(e)) => panic!("read: {e}"),
    }
}

/// bob's stanzas are in alice's session once bob's ping is answered
/// (routing to a local session is done in the sender's task).
async fn sync(c: &mut RawTcp, id: &str) {
    c.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    c.until(&format!("id='{id}'")).await;
}

#[tokio::test]
async fn inactive_clients_get_held_stanzas_in_order() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "carol"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut alice = Raw::connect(srv.addr).await;
    let f = alice.open(DOMAIN).await;
    assert!(!f.contains("urn:xmpp:csi:0"), "not before auth: {f}");
    alice
        .send(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
        )
        .await;
    alice.until("/>").await;
    let f = alice.open(DOMAIN).await;
    assert!(f.contains("<csi xmlns='urn:xmpp:csi:0'/>"), "{f}");
    alice.bind("phone").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    let mut carol = raw_login(srv.addr, "carol", DOMAIN, "pw", "c").await;
    const A: &str = "alice@localhost/phone";

    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    bob.send(&presence(A, "one")).await;
    bob.send(&presence(A, "two")).await;
    carol.send(&presence(A, "carol-here")).await;
    bob.send(&format!("<message to='{A}' type='chat' id='cs1'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")).await;
    bob.send(&format!(
        "<message to='{A}' id='rc1'><received xmlns='urn:xmpp:receipts' id='x1'/></message>"
    ))
    .await;
    sync(&mut bob, "s1").await;
    sync(&mut carol, "s2").await;
    quiet(&mut alice).await;
    // A message with a body: everything held comes first, in order, with
    // only bob's latest presence.
    bob.send(&format!(
        "<message to='{A}' type='chat' id='m1'><body>hello</body></message>"
    ))
    .await;
    let got = alice.until("hello</body></message>").await;
    assert!(!got.contains("<status>one</status>"), "{got}");
    let pos = |s: &str| {
        got.find(s)
            .unwrap_or_else(|| panic!("{s} missing in {got}"))
    };
    // The surviving stanzas keep the order they were routed in: bob's
    // latest presence came after carol's.
    assert!(
        pos("<status>carol-here</status>") < pos("<status>two</status>"),
        "{got}"
    );
    assert!(pos("<status>two</status>") < pos("<composing"), "{got}");
    assert!(
        pos("<composing") < pos("<received xmlns='urn:xmpp:receipts'"),
        "{got}"
    );

    // An IQ flushes too; <active/> writes everything at once.
    bob.send(&format!("<message to='{A}' type='chat' id='cs2'><paused xmlns='http://jabber.org/protocol/chatstates'/></message>")).await;
    bob.send(&format!(
        "<iq type='get' to='{A}' id='v1'><query xmlns='jabber:iq:version'/></iq>"
    ))
    .await;
    let got = alice.until("id='v1'").await;
    assert!(got.contains("<paused"), "{got}");
    alice.until("</iq>").await;
    bob.send(&presence(A, "three")).await;
    sync(&mut bob, "s3").await;
    quiet(&mut alice).await;
    alice.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    alice.until("<status>three</status>").await;
    // Active: written at once.
    bob.send(&presence(A, "four")).await;
    alice.until("<status>four</status>").await;

    // The bound (5): the sixth held stanza writes them all.
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    for k in 0..5 {
        bob.send(&format!(
            "<message to='{A}' id='r{k}'><received xmlns='urn:xmpp:receipts' id='y{k}'/></message>"
        ))
        .await;
    }
    sync(&mut bob, "s4").await;
    quiet(&mut alice).await;
    bob.send(&format!(
        "<message to='{A}' id='r5'><received xmlns='urn:xmpp:receipts' id='y5'/></message>"
    ))
    .await;
    let got = alice.until("id='y5'").await;
    for k in 0..5 {
        assert!(got.contains(&format!("id='y{k}'")), "{got}");
    }

    // Idle time: alice has been inactive a while; a second, active resource
    // makes the account not idle.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    alice.send("<presence/>").await;
    alice
        .send("<iq type='get' id='l1' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    alice.until("id='l1'").await;
    let r = alice.until("</iq>").await;
    let secs: u64 = between(&r, "seconds='", "'")
        .and_then(|s| s.parse().ok())
        .expect("seconds");
    assert!(secs >= 1, "{r}");
    let mut pc = raw_login(srv.addr, "alice", DOMAIN, "pw", "pc").await;
    pc.send("<presence/>").await;
    pc.send("<iq type='get' id='l2' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    pc.until("id='l2'").await;
    let r = pc.until("</iq>").await;
    assert!(r.contains("seconds='0'"), "{r}");
    srv.stop().await;
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let p = s.find(a)? + a.len();
    let e = s[p..].find(b)?;
    Some(&s[p..p + e])
}

#[tokio::test]
async fn held_stanzas_survive_detach_and_resume() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    alice
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let r = alice.until("/>").await;
    let id = between(&r, "id='", "'").expect("sm id").to_string();
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    bob.send(&presence("alice@localhost/phone", "while-inactive"))
        .await;
    sync(&mut bob, "s1").await;
    quiet(&mut alice).await;
    drop(alice);
    let mut again = Raw::connect(srv.addr).await;
    again.open(DOMAIN).await;
    again
        .send(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
        )
        .await;
    again.until("/>").await;
    again.open(DOMAIN).await;
    again
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
        ))
        .await;
    let got = again.until("<status>while-inactive</status>").await;
    assert!(got.contains("<resumed"), "{got}");
    srv.stop().await;
}

#[tokio::test]
async fn without_the_module_csi_is_refused() {
    let srv = TestServer::start_with("", "modules:\n  mod_disco: {}\n").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut alice = Raw::connect(srv.addr).await;
    alice.open(DOMAIN).await;
    alice
        .send(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
        )
        .await;
    alice.until("/>").await;
    let f = alice.open(DOMAIN).await;
    assert!(!f.contains("csi"), "{f}");
    alice.bind("phone").await;
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    let r = alice.until_closed().await;
    assert!(r.contains("unsupported-stanza-type"), "{r}");
    srv.stop().await;
}
