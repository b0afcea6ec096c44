//! Edge cases of mod_offline (XEP-0160/0203/0334), mod_vcard (XEP-0054/0153),
//! mod_private (XEP-0049) and mod_last (XEP-0012), with raw clients.
//! The main paths are in `im_offline.rs` and `im_profile.rs`.
mod common;
use base64::Engine;
use common::*;
use palaver_storage::{RosterItem, Subscription};
use sha1::Digest;

/// Send an IQ with id `id` and return the reply, up to its end.
async fn iq(c: &mut RawTcp, id: &str, body: &str) -> String {
    c.send(&body.replacen("<iq ", &format!("<iq id='{id}' "), 1))
        .await;
    let head = c.until(&format!("id='{id}'")).await;
    let start = head.rfind("<iq").map(|p| head[p..].to_string());
    let rest = c.until(">").await;
    let reply = format!("{}{rest}", start.unwrap_or_default());
    if rest.ends_with("/>") {
        reply
    } else {
        format!("{reply}{}", c.until("</iq>").await)
    }
}

/// Wait until `user` has `n` stored messages, pacing with pings on `c`
/// (delivery deletes them from a task of its own).
async fn offline_count_becomes(srv: &TestServer, c: &mut RawTcp, user: &str, n: usize) {
    for i in 0..1000 {
        let count = srv
            .core()
            .storage()
            .offline
            .offline_count(DOMAIN, user)
            .await
            .expect("count");
        if count == n {
            return;
        }
        sync(c, &format!("oc{i}")).await;
    }
    panic!("{user} never had {n} offline messages");
}

/// A ping round trip: everything the server sent before it is in the returned text.
async fn sync(c: &mut RawTcp, id: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    c.until(&format!("id='{id}'")).await
}

fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// More stored messages than a session's queue holds (256) are all delivered,
/// in order, without stalling the session.
#[tokio::test]
async fn offline_backlog_larger_than_session_queue() {
    const N: usize = 400;
    let modules =
        format!("modules:\n  mod_ping: {{}}\n  mod_offline: {{max_user_offline_messages: {N}}}\n");
    let srv = TestServer::start_with("", &modules).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    let mut batch = String::new();
    for i in 1..=N + 1 {
        batch.push_str(&format!(
            "<message to='bob@localhost' id='m{i}'><body>n{i}.</body></message>"
        ));
    }
    a.send(&batch).await;
    // Messages for one recipient are handled in order: the bounce of the one
    // past the limit means all the others are stored.
    let e = a.until("</message>").await;
    assert!(
        e.contains(&format!("id='m{}'", N + 1)) && e.contains("service-unavailable"),
        "{e}"
    );
    let s = &srv.core().storage();
    assert_eq!(
        s.offline.offline_count(DOMAIN, "bob").await.expect("count"),
        N
    );

    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    b.send("<presence/>").await;
    let mut got = b.until(&format!("n{N}.</body>")).await;
    got.push_str(&b.until("</message>").await);
    let mut last = 0;
    for i in 1..=N {
        let p = got
            .find(&format!(">n{i}.<"))
            .unwrap_or_else(|| panic!("message {i} missing"));
        assert!(p > last, "message {i} out of order");
        last = p;
    }
    assert_eq!(got.matches("<delay xmlns='urn:xmpp:delay'").count(), N);
    // The session still works, and the store is emptied once all are queued
    // (the tail of a long backlog is sent by a task of its own).
    sync(&mut b, "p").await;
    offline_count_becomes(&srv, &mut b, "bob", 0).await;
    srv.stop().await;
}

/// XEP-0334 hints, message types, full-JID addressing, delivery to the
/// session that sent initial presence only, and cleanup on account removal.
#[tokio::test]
async fn offline_hints_types_and_target_session() {
    let modules = "modules:\n  mod_ping: {}\n  mod_disco: {}\n  mod_offline: {max_user_offline_messages: 4}\n";
    let srv = TestServer::start_with("", modules).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    let r = iq(
        &mut a,
        "d",
        "<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(r.contains("var='msgoffline'"), "{r}");
    // Not stored, not bounced: no-store hint, no-permanent-store hint,
    // a chat state alone, a headline.
    a.send("<message to='bob@localhost' type='chat' id='x1'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>").await;
    a.send("<message to='bob@localhost' type='chat' id='x2'><body>secret2</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>").await;
    a.send("<message to='bob@localhost' type='chat' id='x3'><active xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    a.send("<message to='bob@localhost' type='headline' id='x4'><body>news</body></message>")
        .await;
    // Stored: a store hint without a body, type normal, no type, and a full
    // JID without a session (RFC 6121 §8.5.3.2.1: treated as the bare JID).
    a.send("<message to='bob@localhost' type='chat' id='s1'><receipt xmlns='urn:example:r'/><store xmlns='urn:xmpp:hints'/></message>").await;
    a.send("<message to='bob@localhost' type='normal' id='s2'><body>two</body></message>")
        .await;
    a.send("<message to='bob@localhost' id='s3'><body>three</body></message>")
        .await;
    a.send("<message to='bob@localhost/gone' type='chat' id='s4'><body>four</body></message>")
        .await;
    a.send("<message to='bob@localhost' type='chat' id='s5'><body>five</body></message>")
        .await;
    // The first thing alice gets back is the bounce past the limit of 4.
    let e = a.until("</message>").await;
    assert!(
        e.contains("id='s5'") && e.contains("type='error'") && e.contains("service-unavailable"),
        "{e}"
    );
    let s = &srv.core().storage();
    assert_eq!(
        s.offline.offline_count(DOMAIN, "bob").await.expect("count"),
        4
    );

    // b1 never sends presence; b2 does and gets everything, b1 nothing.
    let mut b1 = raw_login(srv.addr, "bob", DOMAIN, "pw", "b1").await;
    let mut b2 = raw_login(srv.addr, "bob", DOMAIN, "pw", "b2").await;
    b2.send("<presence/>").await;
    let mut got = b2.until(">four</body>").await;
    got.push_str(&b2.until("</message>").await);
    let order: Vec<usize> = ["id='s1'", "id='s2'", "id='s3'", "id='s4'"]
        .iter()
        .map(|id| {
            got.find(id)
                .unwrap_or_else(|| panic!("{id} missing: {got}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{got}");
    assert!(got.contains("<receipt xmlns='urn:example:r'/>"), "{got}");
    for absent in ["secret", "active", "news"] {
        assert!(!got.contains(absent), "{absent} must not be stored: {got}");
    }
    let rest = sync(&mut b2, "p2").await;
    assert!(!rest.contains("<message"), "delivered once: {rest}");
    let other = sync(&mut b1, "p1").await;
    assert!(
        !other.contains("<message"),
        "only the session with presence: {other}"
    );
    assert_eq!(
        s.offline.offline_count(DOMAIN, "bob").await.expect("count"),
        0
    );

    // Stored again while bob is away, then the account is removed.
    drop(b1);
    drop(b2);
    let mut c = raw_login(srv.addr, "alice", DOMAIN, "pw", "c").await;
    for i in 1..=5 {
        // Until bob's sessions are gone, some may be delivered live; the
        // limit bounce tells when four are stored.
        c.send(&format!(
            "<message to='bob@localhost' type='chat' id='r{i}'><body>again {i}</body></message>"
        ))
        .await;
    }
    let mut n = 6;
    while s.offline.offline_count(DOMAIN, "bob").await.expect("count") < 4 {
        c.send(&format!(
            "<message to='bob@localhost' type='chat' id='r{n}'><body>again {n}</body></message>"
        ))
        .await;
        sync(&mut c, &format!("q{n}")).await;
        n += 1;
        assert!(n < 500, "bob's sessions never ended");
    }
    srv.core().remove_user(DOMAIN, "bob").await.expect("remove");
    assert_eq!(
        s.offline.offline_count(DOMAIN, "bob").await.expect("count"),
        0
    );
    srv.stop().await;
}

/// vCard: host vCard, unknown users, avatar hash loaded from storage at bind,
/// hash matches SHA-1 of the decoded photo, client-supplied hash kept,
/// photo removal stops the hash.
#[tokio::test]
async fn vcard_edge_cases_and_avatar_hash() {
    let modules = "modules:\n  mod_ping: {}\n  mod_disco: {}\n  mod_vcard: {}\n";
    let srv = TestServer::start_with("", modules).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let photo: Vec<u8> = (0u8..=200).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&photo);
    let wrapped = format!("{}\n {}", &b64[..40], &b64[40..]);
    let hash = sha1_hex(&photo);
    // A vCard already stored before the session binds: the hash is loaded.
    srv.core()
        .storage()
        .xml
        .set_xml(
            DOMAIN,
            "alice",
            "vcard",
            &format!("<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>{wrapped}</BINVAL></PHOTO></vCard>"),
        )
        .await
        .expect("store");
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    a.send("<presence/>").await;
    let p = a.until("</presence>").await;
    assert!(
        p.contains(&format!(
            "<x xmlns='vcard-temp:x:update'><photo>{hash}</photo></x>"
        )),
        "{p}"
    );
    // A client that computes the hash itself is left alone (one <x/>).
    a.send("<presence><x xmlns='vcard-temp:x:update'><photo>0123</photo></x></presence>")
        .await;
    let p = a.until("</presence>").await;
    assert_eq!(p.matches("vcard-temp:x:update").count(), 1, "{p}");
    assert!(p.contains("<photo>0123</photo>"), "{p}");

    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    let r = iq(
        &mut b,
        "d",
        "<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(r.contains("var='vcard-temp'"), "{r}");
    // The host's own vCard: empty.
    let r = iq(
        &mut b,
        "h",
        "<iq type='get' to='localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        r.contains("type='result'") && r.contains("<vCard xmlns='vcard-temp'/>"),
        "{r}"
    );
    // Bob has none: empty vCard. Nobody: service-unavailable.
    let r = iq(
        &mut b,
        "v1",
        "<iq type='get'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        r.contains("type='result'") && r.contains("<vCard xmlns='vcard-temp'/>"),
        "{r}"
    );
    let r = iq(
        &mut b,
        "v2",
        "<iq type='get' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(r.contains("service-unavailable"), "{r}");
    // Alice's vCard is readable by bob, with the photo.
    let r = iq(
        &mut b,
        "v3",
        "<iq type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(r.contains("<BINVAL>") && r.contains("image/png"), "{r}");

    // Replacing the vCard without a photo: no hash any more.
    let r = iq(
        &mut a,
        "v4",
        "<iq type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>",
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    a.send("<presence><show>away</show></presence>").await;
    let p = a.until("</presence>").await;
    assert!(!p.contains("vcard-temp:x:update"), "{p}");
    // A vCard set addressed to the own bare JID works too; a second resource
    // of the same account sees the new hash in its presence.
    let r = iq(&mut a, "v5", "<iq type='set' to='alice@localhost'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>aGVsbG8=</BINVAL></PHOTO></vCard></iq>").await;
    assert!(r.contains("type='result'"), "{r}");
    let mut a2 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a2").await;
    a2.send("<presence/>").await;
    // (a1's presence, without a photo, may come first.)
    let p = a2.until("</photo>").await;
    assert!(
        p.ends_with(&format!("{}</photo>", sha1_hex(b"hello"))),
        "{p}"
    );
    // Once every session is gone the cached hash is forgotten: a vCard
    // changed behind the server's back is read again at the next bind.
    drop(a);
    drop(a2);
    let mut n = 0;
    let alice = jid::BareJid::new("alice@localhost").expect("jid");
    while srv.core().sessions().has_sessions(&alice) {
        sync(&mut b, &format!("w{n}")).await;
        n += 1;
        assert!(n < 1000, "alice's sessions never ended");
    }
    // (session-closed hooks run right after unbinding: one more round trip)
    sync(&mut b, "w").await;
    srv.core()
        .storage()
        .xml
        .set_xml(
            DOMAIN,
            "alice",
            "vcard",
            "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>",
        )
        .await
        .expect("store");
    let mut a3 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a3").await;
    a3.send("<presence/>").await;
    a3.until("<presence").await;
    let p = a3.until(">").await;
    assert!(p.ends_with("/>"), "no <x/> child: {p}");
    srv.stop().await;
}

/// Private storage: empty answers, replacement, several namespaces, bad requests, size.
#[tokio::test]
async fn private_storage_edge_cases() {
    let modules = "modules:\n  mod_ping: {}\n  mod_disco: {}\n  mod_private: {max_size: 200}\n";
    let srv = TestServer::start_with("", modules).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "a").await;
    let r = iq(
        &mut a,
        "d",
        "<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(r.contains("var='jabber:iq:private'"), "{r}");
    // Nothing stored: the empty requested element comes back.
    let r = iq(&mut a, "g0", "<iq type='get'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>").await;
    assert!(
        r.contains("type='result'") && r.contains("<storage xmlns='storage:bookmarks'/>"),
        "{r}"
    );
    let set = |v: &str| {
        format!(
            "<iq type='set'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference jid='{v}@muc.localhost'/></storage></query></iq>"
        )
    };
    assert!(
        iq(&mut a, "s1", &set("one"))
            .await
            .contains("type='result'")
    );
    assert!(
        iq(&mut a, "s2", &set("two"))
            .await
            .contains("type='result'")
    );
    let r = iq(&mut a, "s3", "<iq type='set'><query xmlns='jabber:iq:private'><storage xmlns='storage:rosternotes'><note jid='x@y'>hi</note></storage></query></iq>").await;
    assert!(r.contains("type='result'"), "{r}");
    let r = iq(&mut a, "g1", "<iq type='get'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>").await;
    assert!(
        r.contains("two@muc.localhost") && !r.contains("one@") && !r.contains("note"),
        "{r}"
    );
    // Bad requests.
    let r = iq(
        &mut a,
        "b1",
        "<iq type='get'><query xmlns='jabber:iq:private'/></iq>",
    )
    .await;
    assert!(
        r.contains("type='error'") && r.contains("bad-request"),
        "{r}"
    );
    let r = iq(&mut a, "b2", "<iq type='get'><query xmlns='jabber:iq:private'><a xmlns='urn:a'/><b xmlns='urn:b'/></query></iq>").await;
    assert!(
        r.contains("type='error'") && r.contains("bad-request"),
        "{r}"
    );
    for forbidden_ns in ["jabber:server", "jabber:iq:private"] {
        let r = iq(
            &mut a,
            "b3",
            &format!("<iq type='get'><query xmlns='jabber:iq:private'><x xmlns='{forbidden_ns}'/></query></iq>"),
        )
        .await;
        assert!(r.contains("not-acceptable"), "{forbidden_ns}: {r}");
    }
    let big = "z".repeat(300);
    let r = iq(
        &mut a,
        "b4",
        &format!("<iq type='set'><query xmlns='jabber:iq:private'><big xmlns='urn:big'>{big}</big></query></iq>"),
    )
    .await;
    assert!(r.contains("not-acceptable"), "{r}");
    srv.core()
        .remove_user(DOMAIN, "alice")
        .await
        .expect("remove");
    let x = &srv.core().storage().xml;
    for key in [
        "private:storage:bookmarks:storage",
        "private:storage:rosternotes:storage",
    ] {
        assert!(x.get_xml(DOMAIN, "alice", key).await.expect("q").is_none());
    }
    srv.stop().await;
}

/// Last activity: only the last available session records a logout, unknown
/// users, never-seen users, subscription directions, disconnect without
/// presence, account removal.
#[tokio::test]
async fn last_activity_edge_cases() {
    let modules = "modules:\n  mod_ping: {}\n  mod_disco: {}\n  mod_last: {}\n  mod_vcard: {}\n  mod_private: {}\n  mod_offline: {}\n";
    let srv = TestServer::start_with("", modules).await;
    for u in ["alice", "bob", "carol", "dave"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let roster = &srv.core().storage().roster;
    // alice's and carol's contact bob receives their presence; dave only sends to alice.
    for (owner, contact, sub) in [
        ("alice", "bob@localhost", Subscription::Both),
        ("alice", "dave@localhost", Subscription::To),
        ("carol", "bob@localhost", Subscription::From),
    ] {
        roster
            .put_roster_item(
                DOMAIN,
                owner,
                &RosterItem {
                    subscription: sub,
                    ..RosterItem::new(contact)
                },
            )
            .await
            .expect("roster");
    }
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    let r = iq(
        &mut b,
        "d",
        "<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(r.contains("var='jabber:iq:last'"), "{r}");
    let r = iq(
        &mut b,
        "u",
        "<iq type='get' to='localhost'><query xmlns='jabber:iq:last'/></iq>",
    )
    .await;
    let secs: u64 = r
        .split("seconds='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("uptime: {r}"));
    assert!(secs < 600, "{r}");
    let last_q =
        |to: &str| format!("<iq type='get' to='{to}'><query xmlns='jabber:iq:last'/></iq>");
    // Unknown user; known but never logged out; forbidden without From.
    let r = iq(&mut b, "l1", &last_q("nobody@localhost")).await;
    assert!(r.contains("service-unavailable"), "{r}");
    let r = iq(&mut b, "l2", &last_q("carol@localhost")).await;
    assert!(r.contains("item-not-found"), "{r}");

    // Two available sessions: only the last one going away records.
    let mut a1 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a1").await;
    let mut a2 = raw_login(srv.addr, "alice", DOMAIN, "pw", "a2").await;
    a1.send("<presence/>").await;
    a2.send("<presence/>").await;
    sync(&mut a1, "s1").await;
    sync(&mut a2, "s2").await;
    let r = iq(&mut b, "l3", &last_q("alice@localhost")).await;
    assert!(r.contains("seconds='0'"), "online: {r}");
    a1.send("<presence type='unavailable'><status>first</status></presence>")
        .await;
    sync(&mut a1, "s3").await;
    let last = palaver_modules::last::store::LastSql::new(srv.core().storage().db.clone());
    assert!(
        last.last(DOMAIN, "alice").await.expect("q").is_none(),
        "another session is still available"
    );
    a2.send("<presence type='unavailable'><status>second</status></presence>")
        .await;
    sync(&mut a2, "s4").await;
    let (_, status) = last
        .last(DOMAIN, "alice")
        .await
        .expect("q")
        .expect("recorded");
    assert_eq!(status, "second");
    let r = iq(&mut b, "l4", &last_q("alice@localhost")).await;
    assert!(
        r.contains("seconds='") && r.contains(">second</query>"),
        "{r}"
    );
    // The user may ask about herself; dave (subscription To on alice's side) may not.
    let r = iq(&mut a1, "l5", &last_q("alice@localhost")).await;
    assert!(r.contains(">second</query>"), "{r}");
    let mut d = raw_login(srv.addr, "dave", DOMAIN, "pw", "d").await;
    let r = iq(&mut d, "l6", &last_q("alice@localhost")).await;
    assert!(r.contains("forbidden"), "{r}");

    // Carol disconnects without unavailable presence: recorded without status.
    let mut c = raw_login(srv.addr, "carol", DOMAIN, "pw", "c").await;
    c.send("<presence/>").await;
    sync(&mut c, "s5").await;
    c.send("</stream:stream>").await;
    c.until_closed().await;
    // The logout is recorded by a task after the session ends: pace with pings.
    let mut n = 0;
    while last.last(DOMAIN, "carol").await.expect("q").is_none() {
        sync(&mut b, &format!("w{n}")).await;
        n += 1;
        assert!(n < 1000, "carol's logout never recorded");
    }
    let r = iq(&mut b, "l7", &last_q("carol@localhost")).await;
    assert!(
        r.contains("type='result'") && r.contains("seconds='"),
        "{r}"
    );

    // Account removal leaves no rows behind in any of the four modules.
    let r = iq(
        &mut a1,
        "v",
        "<iq type='set'><vCard xmlns='vcard-temp'><FN>A</FN></vCard></iq>",
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    let r = iq(
        &mut a1,
        "p",
        "<iq type='set'><query xmlns='jabber:iq:private'><n xmlns='urn:n'/></query></iq>",
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    drop(a1);
    drop(a2);
    srv.core()
        .remove_user(DOMAIN, "alice")
        .await
        .expect("remove");
    let s = &srv.core().storage();
    let last = palaver_modules::last::store::LastSql::new(s.db.clone());
    assert!(last.last(DOMAIN, "alice").await.expect("q").is_none());
    assert!(
        s.xml
            .get_xml(DOMAIN, "alice", "vcard")
            .await
            .expect("q")
            .is_none()
    );
    assert!(
        s.xml
            .get_xml(DOMAIN, "alice", "private:urn:n:n")
            .await
            .expect("q")
            .is_none()
    );
    assert_eq!(
        s.offline.offline_count(DOMAIN, "alice").await.expect("q"),
        0
    );
    let r = iq(&mut b, "l8", &last_q("alice@localhost")).await;
    assert!(r.contains("service-unavailable"), "{r}");
    srv.stop().await;
}
