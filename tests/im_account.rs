//! In-band registration (XEP-0077), blocking (XEP-0191), announcements.
mod common;
use common::*;

const OPEN: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_offline: {}\n  mod_blocking: {}\n  mod_announce: {}\n  mod_register: {registration_timeout: 3600}\nacl:\n  admin:\n    user: ['admin@localhost']\naccess_rules:\n  register:\n    allow: [all]\n";

#[tokio::test]
async fn registration_closed_by_default() {
    let srv = TestServer::start().await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(!f.contains("iq-register"), "{f}");
    c.send("<iq type='get' id='g'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    let form = c.until("</iq>").await;
    assert!(form.contains("<username/>"), "{form}");
    c.send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>mallory</username><password>x</password></query></iq>").await;
    let r = c.until("</iq>").await;
    assert!(r.contains("not-allowed"), "{r}");
    assert!(
        !srv.core()
            .storage
            .accounts
            .account_exists(DOMAIN, "mallory")
            .await
            .expect("q")
    );
    srv.stop().await;
}

#[tokio::test]
async fn register_change_password_cancel() {
    let srv = TestServer::start_with("", OPEN).await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(
        f.contains("<register xmlns='http://jabber.org/features/iq-register'/>"),
        "{f}"
    );
    c.send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>newbie</username><password>pw1</password></query></iq>").await;
    let r = c.until("id='r1'").await;
    let r = format!("{r}{}", c.until(">").await);
    assert!(r.contains("type='result'"), "{r}");
    // Rate limit from the same address.
    c.send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>second</username><password>pw</password></query></iq>").await;
    let r = c.until("</iq>").await;
    assert!(r.contains("resource-constraint"), "{r}");
    let mut n = raw_login(srv.addr, "newbie", DOMAIN, "pw1", "r").await;
    // Change password.
    n.send("<iq type='set' id='cp'><query xmlns='jabber:iq:register'><username>newbie</username><password>pw2</password></query></iq>").await;
    let r = n.until("id='cp'").await;
    let r = format!("{r}{}", n.until(">").await);
    assert!(r.contains("type='result'"), "{r}");
    let mut old = Raw::connect(srv.addr).await;
    old.open(DOMAIN).await;
    old.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AG5ld2JpZQBwdzE=</auth>",
    )
    .await;
    assert!(old.until("</failure>").await.contains("not-authorized"));
    let _new = raw_login(srv.addr, "newbie", DOMAIN, "pw2", "x").await;
    // Cancel: result, session closed, account and data gone.
    srv.core()
        .storage
        .blocks
        .block(DOMAIN, "newbie", &["x@localhost".into()])
        .await
        .expect("block");
    srv.core()
        .storage
        .kv
        .user_flag_set(DOMAIN, "newbie", "motd")
        .await
        .expect("flag");
    n.send("<iq type='set' id='bye'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    let r = n.until_closed().await;
    assert!(r.contains("id='bye'") && r.contains("type='result'"), "{r}");
    let s = &srv.core().storage;
    assert!(
        !s.accounts
            .account_exists(DOMAIN, "newbie")
            .await
            .expect("q")
    );
    assert!(
        s.blocks
            .blocklist(DOMAIN, "newbie")
            .await
            .expect("q")
            .is_empty()
    );
    assert!(
        s.kv.user_flag_set(DOMAIN, "newbie", "motd")
            .await
            .expect("q"),
        "flags were removed"
    );
    // Registering an existing name: conflict.
    srv.add_user("taken", DOMAIN, "pw").await;
    let srv2 = srv;
    let mut c = Raw::connect(srv2.addr).await;
    c.open(DOMAIN).await;
    c.send("<iq type='set' id='r3'><query xmlns='jabber:iq:register'><username>taken</username><password>pw</password></query></iq>").await;
    let r = c.until("</iq>").await;
    assert!(
        r.contains("conflict") || r.contains("resource-constraint"),
        "{r}"
    );
    srv2.stop().await;
}

#[tokio::test]
async fn blocking_command() {
    let srv = TestServer::start_with("", OPEN).await;
    for u in ["alice", "bob"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    let mut a2 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a2").await;
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    a.send("<presence/>").await;
    a2.send("<presence/>").await;
    b.send("<presence/>").await;
    b.until("<presence").await;
    // alice sends bob directed presence, then blocks him: bob sees her go offline.
    a.send("<presence to='bob@localhost'/>").await;
    b.until("from='alice@localhost/a'").await;
    a.send("<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>").await;
    a.until("id='blk'").await;
    let push = a2.until("</iq>").await;
    assert!(
        push.contains("<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/>"),
        "{push}"
    );
    let off = b.until("type='unavailable'").await;
    assert!(off.contains("alice@localhost"), "{off}");
    a.send("<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    assert!(
        a.until("</iq>")
            .await
            .contains("<item jid='bob@localhost'/>")
    );
    // bob → alice: not delivered, bob gets service-unavailable.
    b.send("<message to='alice@localhost/a' type='chat' id='bm'><body>let me in</body></message>")
        .await;
    let e = b.until("</message>").await;
    assert!(
        e.contains("id='bm'") && e.contains("service-unavailable"),
        "{e}"
    );
    // alice → bob: refused with <blocked/>.
    a.send("<message to='bob@localhost' type='chat' id='am'><body>hi</body></message>")
        .await;
    let e = a.until("id='am'").await;
    let e = format!("{e}{}", a.until("</message>").await);
    assert!(
        e.contains("not-acceptable") && e.contains("<blocked xmlns='urn:xmpp:blocking:errors'/>"),
        "{e}"
    );
    // Unblock all → messages flow again.
    a.send("<iq type='set' id='ub'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    a.until("id='ub'").await;
    b.send("<message to='alice@localhost/a' type='chat'><body>again</body></message>")
        .await;
    assert!(a.until("again").await.contains("from='bob@localhost/b'"));
    a.send("<iq type='set' id='bad'><block xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    assert!(a.until("</iq>").await.contains("bad-request"));
    srv.stop().await;
}

#[tokio::test]
async fn announcements_and_motd() {
    let srv = TestServer::start_with("", OPEN).await;
    for u in ["admin", "bob", "carol", "dave"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut adm = raw_login(srv.addr, "admin", DOMAIN, "pw", "r").await;
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "r").await;
    let mut c = raw_login(srv.addr, "carol", DOMAIN, "pw", "r").await;
    adm.send("<message to='localhost/announce/online'><body>maintenance at noon</body></message>")
        .await;
    assert!(
        b.until("maintenance at noon")
            .await
            .contains("from='localhost'")
    );
    assert!(
        c.until("maintenance at noon")
            .await
            .contains("from='localhost'")
    );
    // Non-admins may not.
    b.send("<message to='localhost/announce/online' id='x'><body>spam</body></message>")
        .await;
    assert!(b.until("forbidden").await.contains("id='x'"));
    // MOTD: delivered once to a user logging in later.
    adm.send("<message to='localhost/announce/motd/update'><body>welcome!</body></message>")
        .await;
    adm.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    adm.until("id='p'").await;
    let mut got = String::new();
    for _ in 0..50 {
        if srv
            .core()
            .storage
            .kv
            .host_get(DOMAIN, "motd")
            .await
            .expect("q")
            .is_some()
        {
            break;
        }
        adm.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        adm.until("id='p'").await;
    }
    let mut d = raw_login(srv.addr, "dave", DOMAIN, "pw", "r").await;
    d.send("<presence/>").await;
    got.push_str(&d.until("welcome!").await);
    assert!(got.contains("from='localhost'"), "{got}");
    drop(d);
    let mut d2 = raw_login(srv.addr, "dave", DOMAIN, "pw", "r2").await;
    d2.send("<presence/>").await;
    d2.send("<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = d2.until("id='p2'").await;
    assert!(!r.contains("welcome!"), "motd only once: {r}");
    // Delete: nobody new gets it.
    adm.send("<message to='localhost/announce/motd/delete'><body>x</body></message>")
        .await;
    for _ in 0..50 {
        if srv
            .core()
            .storage
            .kv
            .host_get(DOMAIN, "motd")
            .await
            .expect("q")
            .is_none()
        {
            break;
        }
        adm.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        adm.until("id='p'").await;
    }
    assert!(
        srv.core()
            .storage
            .kv
            .host_get(DOMAIN, "motd")
            .await
            .expect("q")
            .is_none()
    );
    srv.stop().await;
}
