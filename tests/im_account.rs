//! In-band registration (XEP-0077), blocking (XEP-0191), announcements.
mod common;
use common::*;
use palaver_storage::im::{RosterItem, Subscription};

const OPEN: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_offline: {}\n  mod_blocking: {}\n  mod_announce: {}\n  mod_register: {registration_timeout: 3600}\nacl:\n  admin:\n    user: ['admin@localhost']\naccess_rules:\n  register:\n    allow: [all]\n";

/// Open registration without a rate limit and with a minimum password length.
const OPEN_NO_LIMIT: &str = "modules:\n  mod_ping: {}\n  mod_register: {registration_timeout: 0, password_min_length: 4}\naccess_rules:\n  register:\n    allow: [all]\n";

fn register(id: &str, user: &str, password: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>{user}</username><password>{password}</password></query></iq>"
    )
}

/// Read a whole IQ answer with the given id (result or error).
async fn iq_answer(c: &mut RawTcp, id: &str) -> String {
    let head = c.until(&format!("id='{id}'")).await;
    let rest = c.until(">").await;
    let mut out = format!("{head}{rest}");
    if !out.ends_with("/>") {
        out.push_str(&c.until("</iq>").await);
    }
    out
}

/// A ping round trip: everything the session had queued before it is read.
async fn ping(c: &mut RawTcp, id: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    c.until(&format!("id='{id}'")).await
}

/// The stored MOTD of `DOMAIN`.
async fn stored_motd(srv: &TestServer) -> Option<String> {
    palaver_modules::announce::store::KvSql::new(srv.core().storage().db.clone())
        .host_get(DOMAIN, "motd")
        .await
        .expect("read the motd")
}

/// Wait until the stored MOTD satisfies `pred`, one ping round trip of the
/// admin's session at a time (the announce is handled after the stanza that
/// carried it); fails with `what` when it never does.
async fn await_motd(
    srv: &TestServer,
    adm: &mut RawTcp,
    what: &str,
    pred: impl Fn(Option<&str>) -> bool,
) {
    for i in 0..50 {
        if pred(stored_motd(srv).await.as_deref()) {
            return;
        }
        ping(adm, &format!("motd{i}")).await;
    }
    panic!(
        "after 50 round trips the MOTD is still not {what}: {:?}",
        stored_motd(srv).await
    );
}

#[tokio::test]
async fn registration_closed_by_default() {
    // Default modules include mod_register, but no `register` access rule exists.
    let srv = TestServer::start().await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(!f.contains("iq-register"), "{f}");
    c.send("<iq type='get' id='g'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    let form = c.until("</iq>").await;
    assert!(form.contains("<username/>"), "{form}");
    c.send(&register("r1", "mallory", "secret")).await;
    let r = c.until("</iq>").await;
    assert!(r.contains("<not-allowed"), "{r}");
    assert!(
        !srv.core()
            .storage()
            .accounts
            .account_exists(DOMAIN, "mallory")
            .await
            .expect("q")
    );
    srv.stop().await;
}

#[tokio::test]
async fn registration_validation_and_conflict() {
    let srv = TestServer::start_with("", OPEN_NO_LIMIT).await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(
        f.contains("<register xmlns='http://jabber.org/features/iq-register'/>"),
        "{f}"
    );
    c.send(&register("bad", "bad user", "secret")).await;
    let r = iq_answer(&mut c, "bad").await;
    assert!(r.contains("jid-malformed"), "{r}");
    c.send(&register("short", "carol", "abc")).await;
    let r = iq_answer(&mut c, "short").await;
    assert!(r.contains("not-acceptable"), "{r}");
    c.send(&register("empty", "carol", "")).await;
    let r = iq_answer(&mut c, "empty").await;
    assert!(r.contains("not-acceptable"), "{r}");
    c.send("<iq type='set' id='nouser'><query xmlns='jabber:iq:register'><password>secret</password></query></iq>").await;
    let r = iq_answer(&mut c, "nouser").await;
    assert!(r.contains("bad-request"), "{r}");
    // The username is stored in canonical form.
    c.send(&register("ok", "Carol", "secret")).await;
    let r = iq_answer(&mut c, "ok").await;
    assert!(r.contains("type='result'"), "{r}");
    assert!(
        srv.core()
            .storage()
            .accounts
            .account_exists(DOMAIN, "carol")
            .await
            .expect("q")
    );
    c.send(&register("again", "carol", "other")).await;
    let r = iq_answer(&mut c, "again").await;
    assert!(r.contains("<conflict"), "{r}");
    // The new account works, with the first password.
    let mut n = raw_login(srv.addr, "carol", DOMAIN, "secret", "r").await;
    // Only one's own password can be changed.
    n.send(&register("other", "dave", "whatever")).await;
    let r = iq_answer(&mut n, "other").await;
    assert!(r.contains("not-allowed"), "{r}");
    n.send("<iq type='get' id='info'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    let r = iq_answer(&mut n, "info").await;
    assert!(
        r.contains("<registered/>") && r.contains("<username>carol</username>"),
        "{r}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn register_change_password_cancel() {
    let srv = TestServer::start_with("", OPEN).await;
    srv.add_user("taken", DOMAIN, "pw").await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(
        f.contains("<register xmlns='http://jabber.org/features/iq-register'/>"),
        "{f}"
    );
    // A refused attempt does not count against the rate limit.
    c.send(&register("r0", "taken", "pw")).await;
    let r = iq_answer(&mut c, "r0").await;
    assert!(r.contains("<conflict"), "{r}");
    c.send(&register("r1", "newbie", "pw1")).await;
    let r = iq_answer(&mut c, "r1").await;
    assert!(r.contains("type='result'"), "{r}");
    // Rate limit from the same address.
    c.send(&register("r2", "second", "pw")).await;
    let r = iq_answer(&mut c, "r2").await;
    assert!(
        r.contains("resource-constraint") && r.contains("type='wait'"),
        "{r}"
    );
    assert!(
        !srv.core()
            .storage()
            .accounts
            .account_exists(DOMAIN, "second")
            .await
            .expect("q")
    );
    let mut n = raw_login(srv.addr, "newbie", DOMAIN, "pw1", "r").await;
    // Change password.
    n.send(&register("cp", "newbie", "pw2")).await;
    let r = iq_answer(&mut n, "cp").await;
    assert!(r.contains("type='result'"), "{r}");
    let mut old = Raw::connect(srv.addr).await;
    old.open(DOMAIN).await;
    old.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AG5ld2JpZQBwdzE=</auth>",
    )
    .await;
    assert!(old.until("</failure>").await.contains("not-authorized"));
    let mut other = raw_login(srv.addr, "newbie", DOMAIN, "pw2", "x").await;
    // Cancel: result, sessions closed, account and data gone.
    palaver_modules::blocking::store::BlocksSql::new(srv.core().storage().db.clone())
        .block(DOMAIN, "newbie", &["x@localhost".into()])
        .await
        .expect("block");
    palaver_modules::announce::store::KvSql::new(srv.core().storage().db.clone())
        .user_flag_set(DOMAIN, "newbie", "motd")
        .await
        .expect("flag");
    n.send("<iq type='set' id='bye'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    let r = n.until_closed().await;
    assert!(r.contains("id='bye'") && r.contains("type='result'"), "{r}");
    let r = other.until_closed().await;
    assert!(r.contains("</stream:stream>"), "{r}");
    let s = &srv.core().storage();
    assert!(
        !s.accounts
            .account_exists(DOMAIN, "newbie")
            .await
            .expect("q")
    );
    assert!(
        palaver_modules::blocking::store::BlocksSql::new(s.db.clone())
            .blocklist(DOMAIN, "newbie")
            .await
            .expect("q")
            .is_empty()
    );
    assert!(
        palaver_modules::announce::store::KvSql::new(s.db.clone())
            .user_flag_set(DOMAIN, "newbie", "motd")
            .await
            .expect("q"),
        "flags were removed"
    );
    // The old password no longer logs in either.
    let mut gone = Raw::connect(srv.addr).await;
    gone.open(DOMAIN).await;
    gone.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AG5ld2JpZQBwdzI=</auth>",
    )
    .await;
    assert!(gone.until("</failure>").await.contains("not-authorized"));
    srv.stop().await;
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
    let r = iq_answer(&mut a, "blk").await;
    assert!(r.contains("type='result'"), "{r}");
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
    b.send("<iq to='alice@localhost/a' type='get' id='bq'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let e = iq_answer(&mut b, "bq").await;
    assert!(e.contains("service-unavailable"), "{e}");
    // alice → bob: refused with <blocked/>.
    a.send("<message to='bob@localhost' type='chat' id='am'><body>hi</body></message>")
        .await;
    let e = a.until("id='am'").await;
    let e = format!("{e}{}", a.until("</message>").await);
    assert!(
        e.contains("not-acceptable") && e.contains("<blocked xmlns='urn:xmpp:blocking:errors'/>"),
        "{e}"
    );
    a.send("<iq to='bob@localhost/b' type='get' id='aq'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let e = iq_answer(&mut a, "aq").await;
    assert!(
        e.contains("not-acceptable") && e.contains("urn:xmpp:blocking:errors"),
        "{e}"
    );
    // Bad requests.
    a.send("<iq type='set' id='bad'><block xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    assert!(iq_answer(&mut a, "bad").await.contains("bad-request"));
    a.send(
        "<iq type='set' id='mal'><block xmlns='urn:xmpp:blocking'><item jid='a@b@c'/></block></iq>",
    )
    .await;
    assert!(iq_answer(&mut a, "mal").await.contains("jid-malformed"));
    // Unblock all → messages flow again; the other resource hears of it.
    a.send("<iq type='set' id='ub'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    a.until("id='ub'").await;
    let push = a2.until("<unblock").await;
    assert!(push.contains("type='set'"), "{push}");
    b.send("<message to='alice@localhost/a' type='chat'><body>again</body></message>")
        .await;
    assert!(a.until("again").await.contains("from='bob@localhost/b'"));
    a.send("<iq type='get' id='bl2'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    let r = iq_answer(&mut a, "bl2").await;
    assert!(!r.contains("<item"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn blocking_presence_and_offline() {
    let srv = TestServer::start_with("", OPEN).await;
    for u in ["alice", "bob", "carol", "mallory"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    // alice and bob are mutual contacts.
    let roster = &srv.core().storage().roster;
    for (u, c) in [("alice", "bob@localhost"), ("bob", "alice@localhost")] {
        let mut it = RosterItem::new(c);
        it.subscription = Subscription::Both;
        roster
            .put_roster_item(DOMAIN, u, &it)
            .await
            .expect("roster");
    }
    palaver_modules::blocking::store::BlocksSql::new(srv.core().storage().db.clone())
        .block(
            DOMAIN,
            "alice",
            &["bob@localhost".into(), "mallory@localhost".into()],
        )
        .await
        .expect("block");
    // alice is offline: bob's message is refused, not stored.
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    b.send("<message to='alice@localhost' type='chat' id='off'><body>x</body></message>")
        .await;
    let e = b.until("</message>").await;
    assert!(
        e.contains("id='off'") && e.contains("service-unavailable"),
        "{e}"
    );
    assert_eq!(
        srv.core()
            .storage()
            .offline
            .offline_count(DOMAIN, "alice")
            .await
            .expect("q"),
        0
    );
    b.send("<presence/>").await;
    // alice comes online: bob, blocked, does not see her presence; after
    // unblocking he gets it exactly once.
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    a.send("<presence><status>secret</status></presence>").await;
    a.until("secret").await;
    // A blocked subscription request is dropped; carol's is kept.
    let mut m = raw_login(srv.addr, "mallory", DOMAIN, "pw", "m").await;
    m.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    ping(&mut m, "p1").await;
    let mut c = raw_login(srv.addr, "carol", DOMAIN, "pw", "c").await;
    c.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    let sub = a.until("type='subscribe'").await;
    assert!(sub.contains("from='carol@localhost'"), "{sub}");
    let pending = roster.pending_in(DOMAIN, "alice").await.expect("q");
    assert!(
        pending.iter().all(|(j, _)| j != "mallory@localhost"),
        "{pending:?}"
    );
    a.send("<iq type='set' id='ub'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock></iq>").await;
    a.until("id='ub'").await;
    a.send("<message to='bob@localhost' type='chat'><body>marker</body></message>")
        .await;
    let got = b.until("marker").await;
    assert_eq!(got.matches("secret").count(), 1, "{got}");
    srv.stop().await;
}

#[tokio::test]
async fn announcements_and_motd() {
    let srv = TestServer::start_with("", OPEN).await;
    for u in ["admin", "bob", "carol", "dave", "erin", "frank"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut adm = raw_login(srv.addr, "admin", DOMAIN, "pw", "r").await;
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "r").await;
    let mut c = raw_login(srv.addr, "carol", DOMAIN, "pw", "r").await;
    adm.send("<message to='localhost/announce/online'><subject>ops</subject><body>maintenance at noon</body></message>")
        .await;
    for s in [&mut b, &mut c] {
        let m = s.until("maintenance at noon").await;
        assert!(
            m.contains("from='localhost'") && m.contains("<subject>ops</subject>"),
            "{m}"
        );
    }
    // Non-admins may not.
    b.send("<message to='localhost/announce/online' id='x'><body>spam</body></message>")
        .await;
    assert!(b.until("forbidden").await.contains("id='x'"));
    // Unknown announce resources; other resources keep the default handling.
    adm.send("<message to='localhost/announce/nope' id='n'><body>x</body></message>")
        .await;
    assert!(adm.until("item-not-found").await.contains("id='n'"));
    adm.send("<message to='localhost/elsewhere' id='e'><body>x</body></message>")
        .await;
    assert!(adm.until("service-unavailable").await.contains("id='e'"));
    // MOTD: sent to those online now (once), and to others at their next login.
    adm.send("<message to='localhost/announce/motd'><body>welcome!</body></message>")
        .await;
    b.until("welcome!").await;
    let mut got = String::new();
    await_motd(&srv, &mut adm, "set", |m| {
        m.is_some_and(|m| m.contains("welcome!"))
    })
    .await;
    drop(b);
    let mut b2 = raw_login(srv.addr, "bob", DOMAIN, "pw", "r2").await;
    b2.send("<presence/>").await;
    let r = ping(&mut b2, "pb").await;
    assert!(!r.contains("welcome!"), "bob already had it: {r}");
    let mut d = raw_login(srv.addr, "dave", DOMAIN, "pw", "r").await;
    d.send("<presence/>").await;
    got.push_str(&d.until("welcome!").await);
    assert!(got.contains("from='localhost'"), "{got}");
    drop(d);
    let mut d2 = raw_login(srv.addr, "dave", DOMAIN, "pw", "r2").await;
    d2.send("<presence/>").await;
    let r = ping(&mut d2, "p2").await;
    assert!(!r.contains("welcome!"), "motd only once: {r}");
    // Update without sending: nobody online gets it, the next login does.
    adm.send("<message to='localhost/announce/motd/update'><body>v2!</body></message>")
        .await;
    await_motd(&srv, &mut adm, "updated", |m| {
        m.is_some_and(|m| m.contains("v2!"))
    })
    .await;
    // dave, online, is not sent the update; the update replaces the MOTD
    // for everyone (as ejabberd's does), so dave's next session gets it, as
    // does frank's first, once each.
    let r = ping(&mut d2, "p3").await;
    assert!(!r.contains("v2!"), "{r}");
    let mut d3 = raw_login(srv.addr, "dave", DOMAIN, "pw", "r3").await;
    d3.send("<presence/>").await;
    let m = d3.until("v2!").await;
    assert!(
        m.contains("from='localhost'") && !m.contains("welcome!"),
        "{m}"
    );
    let mut f = raw_login(srv.addr, "frank", DOMAIN, "pw", "r").await;
    f.send("<presence/>").await;
    let m = f.until("v2!").await;
    assert!(
        m.contains("from='localhost'") && !m.contains("welcome!"),
        "{m}"
    );
    drop(f);
    let mut f2 = raw_login(srv.addr, "frank", DOMAIN, "pw", "r2").await;
    f2.send("<presence/>").await;
    let r = ping(&mut f2, "pf").await;
    assert!(!r.contains("v2!"), "the updated motd only once: {r}");
    // Delete: nobody new gets it.
    adm.send("<message to='localhost/announce/motd/delete'/>")
        .await;
    await_motd(&srv, &mut adm, "deleted", |m| m.is_none()).await;
    let mut e = raw_login(srv.addr, "erin", DOMAIN, "pw", "r").await;
    e.send("<presence/>").await;
    let r = ping(&mut e, "pe").await;
    assert!(!r.contains("welcome!") && !r.contains("v2!"), "{r}");
    let r = ping(&mut d2, "p4").await;
    assert!(!r.contains("v2!"), "{r}");
    let r = ping(&mut d3, "p5").await;
    assert!(!r.contains("v2!"), "sent once: {r}");
    srv.stop().await;
}
