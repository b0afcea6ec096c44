//! vCard with avatar hash (XEP-0054/0153), private storage (XEP-0049), last activity (XEP-0012).
mod common;
use common::*;
use palaver_storage::{RosterItem, Subscription};

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_vcard: {max_size: 2000}\n  mod_private: {}\n  mod_last: {}\n";

async fn iq(c: &mut RawTcp, id: &str, body: &str) -> String {
    c.send(&body.replacen("<iq ", &format!("<iq id='{id}' "), 1))
        .await;
    c.until(&format!("id='{id}'")).await;
    let rest = c.until(">").await;
    if rest.ends_with("/>") {
        rest
    } else {
        format!("{rest}{}", c.until("</iq>").await)
    }
}

#[tokio::test]
async fn vcard_avatar_private_last() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "eve"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    // Empty vCard at first; set one with a photo.
    let r = iq(
        &mut a,
        "v1",
        "<iq type='get'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        r.contains("type='result'") && r.contains("vcard-temp"),
        "{r}"
    );
    // "hello" base64 → SHA-1 aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d
    let r = iq(&mut a, "v2", "<iq type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVs\nbG8=</BINVAL></PHOTO></vCard></iq>").await;
    assert!(r.contains("type='result'"), "{r}");
    a.send("<presence/>").await;
    let p = a.until("</presence>").await;
    assert!(p.contains("<x xmlns='vcard-temp:x:update'><photo>aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d</photo></x>"), "{p}");
    let big = "x".repeat(3000);
    let r = iq(
        &mut a,
        "v3",
        &format!("<iq type='set'><vCard xmlns='vcard-temp'><FN>{big}</FN></vCard></iq>"),
    )
    .await;
    assert!(r.contains("not-acceptable"), "{r}");

    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    let r = iq(
        &mut b,
        "v4",
        "<iq type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(r.contains("<FN>Alice</FN>"), "{r}");
    let r = iq(&mut b, "v5", "<iq type='set' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>").await;
    assert!(r.contains("forbidden"), "{r}");

    // Private storage.
    let r = iq(&mut a, "p1", "<iq type='set'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><color>blue</color></prefs></query></iq>").await;
    assert!(r.contains("type='result'"), "{r}");
    let r = iq(&mut a, "p2", "<iq type='get'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>").await;
    assert!(r.contains("<color>blue</color>"), "{r}");
    let r = iq(
        &mut a,
        "p3",
        "<iq type='set'><query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query></iq>",
    )
    .await;
    assert!(r.contains("not-acceptable"), "{r}");
    let r = iq(&mut b, "p4", "<iq type='get' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>").await;
    assert!(r.contains("forbidden"), "{r}");

    // Last activity: server uptime; alice online → 0 for a subscribed contact.
    let r = iq(
        &mut b,
        "l1",
        "<iq type='get' to='localhost'><query xmlns='jabber:iq:last'/></iq>",
    )
    .await;
    assert!(r.contains("seconds='"), "{r}");
    srv.core()
        .storage()
        .roster
        .put_roster_item(
            DOMAIN,
            "alice",
            &RosterItem {
                subscription: Subscription::From,
                ..RosterItem::new("bob@localhost")
            },
        )
        .await
        .expect("roster");
    let r = iq(
        &mut b,
        "l2",
        "<iq type='get' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>",
    )
    .await;
    assert!(r.contains("seconds='0'"), "{r}");
    a.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    a.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.until("id='sync'").await;
    let mut found = String::new();
    for i in 0..50 {
        found = iq(
            &mut b,
            &format!("l3{i}"),
            "<iq type='get' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>",
        )
        .await;
        if found.contains("gone fishing") {
            break;
        }
    }
    assert!(
        found.contains("gone fishing") && found.contains("seconds='"),
        "{found}"
    );
    let mut e = raw_login(srv.addr, "eve", DOMAIN, "pw", "e").await;
    let r = iq(
        &mut e,
        "l4",
        "<iq type='get' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>",
    )
    .await;
    assert!(r.contains("forbidden"), "{r}");

    // Account removal leaves nothing behind.
    srv.core()
        .remove_user(DOMAIN, "alice")
        .await
        .expect("remove");
    let s = &srv.core().storage();
    assert!(
        s.xml
            .get_xml(DOMAIN, "alice", "vcard")
            .await
            .expect("q")
            .is_none()
    );
    assert!(
        s.xml
            .get_xml(DOMAIN, "alice", "private:urn:example:prefs:prefs")
            .await
            .expect("q")
            .is_none()
    );
    let last = palaver_modules::last::store::LastSql::new(s.db.clone());
    assert!(last.last(DOMAIN, "alice").await.expect("q").is_none());
    assert_eq!(s.roster.roster_count(DOMAIN, "alice").await.expect("q"), 0);
    srv.stop().await;
}
