//! One user cannot read or change another's data, nor act as the admin:
//! roster, vCard (write), private storage, block list, offline messages,
//! last activity, sessions, uploaded files, announcements and account
//! changes. Every attempt gets the error its RFC/XEP names and the answer
//! carries none of the victim's data.
mod common;
#[path = "common/xclient.rs"]
mod xclient;
use common::*;
use minidom::Element;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xclient::*;

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_offline: {}\n  mod_vcard: {}\n  mod_private: {}\n  mod_blocking: {}\n  mod_last: {}\n  mod_announce: {}\n  mod_register: {}\n  mod_http_upload:\n    max_size: 1000\n    quota: 1500\n    secret: isolation-secret\nacl:\n  admin:\n    user: ['admin@localhost']\naccess_rules:\n  register:\n    allow: [all]\n";

/// Words only bob's data contains (alice's requests never name them): none
/// may appear in an answer to alice.
const SECRETS: &[&str] = &[
    "carol@localhost",
    "BobSecretName",
    "BobPrivateNote",
    "mallory@localhost",
    "BobOffline",
];

fn assert_no_leak(e: &Element, what: &str) {
    let s = xml(e);
    for w in SECRETS {
        assert!(!s.contains(w), "{what}: leaks {w}: {s}");
    }
}

/// The answer is an error with one of `conditions`, from bob's bare JID,
/// and leaks nothing.
fn assert_refused(e: &Element, conditions: &[&str], what: &str) {
    let c = condition(e);
    assert!(
        c.as_deref().is_some_and(|c| conditions.contains(&c)),
        "{what}: expected one of {conditions:?}, got {}",
        xml(e)
    );
    assert_no_leak(e, what);
}

async fn server() -> TestServer {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "carol", "dave", "mallory", "admin"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    srv
}

/// Bob's data: a contact, a vCard, a private note, a block, and (after he
/// leaves) an offline message from carol.
async fn bob_data(srv: &TestServer) {
    let mut b = Client::login(srv, "bob", DOMAIN, "b").await;
    for q in [
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='Carol'/></query></iq>",
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='dave@localhost'/></query></iq>",
        "<iq type='set'><vCard xmlns='vcard-temp'><FN>BobSecretName</FN></vCard></iq>",
        "<iq type='set'><query xmlns='jabber:iq:private'><note xmlns='urn:example:notes'>BobPrivateNote</note></query></iq>",
        "<iq type='set'><block xmlns='urn:xmpp:blocking'><item jid='mallory@localhost'/></block></iq>",
    ] {
        let r = b.iq(q).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    }
    b.send("</stream:stream>").await;
    let _ = b.raw.until_closed().await;
    let mut c = Client::login(srv, "carol", DOMAIN, "c").await;
    c.send("<message to='bob@localhost' type='chat' id='off1'><body>BobOffline</body></message>")
        .await;
    c.drain().await;
    for _ in 0..50 {
        if srv
            .core()
            .storage()
            .offline
            .offline_count(DOMAIN, "bob")
            .await
            .expect("count")
            == 1
        {
            return;
        }
        c.drain().await;
    }
    panic!("carol's message to bob was never stored offline");
}

#[tokio::test]
async fn account_data_of_another_user() {
    let srv = server().await;
    bob_data(&srv).await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    a.send("<presence/>").await;
    a.drain().await;

    // Roster (RFC 6121 §2.1.5, §2.3.3): get and set on bob's behalf.
    let r = a
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_refused(&r, &["forbidden", "service-unavailable"], "roster get");
    let r = a
        .iq("<iq type='set' to='bob@localhost'><query xmlns='jabber:iq:roster'><item jid='alice@localhost'/></query></iq>")
        .await;
    assert_refused(&r, &["forbidden", "service-unavailable"], "roster set");
    let r = a
        .iq("<iq type='set' to='bob@localhost'><query xmlns='jabber:iq:roster'><item jid='dave@localhost' subscription='remove'/></query></iq>")
        .await;
    assert_refused(&r, &["forbidden", "service-unavailable"], "roster remove");

    // vCard: anyone may read (XEP-0054), only bob may write.
    let r = a
        .iq("<iq type='set' to='bob@localhost'><vCard xmlns='vcard-temp'><FN>Hacked</FN></vCard></iq>")
        .await;
    assert_refused(&r, &["forbidden"], "vCard set");

    // Private XML storage (XEP-0049): neither read nor write.
    let r = a
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:private'><note xmlns='urn:example:notes'/></query></iq>")
        .await;
    assert_refused(&r, &["forbidden"], "private get");
    let r = a
        .iq("<iq type='set' to='bob@localhost'><query xmlns='jabber:iq:private'><note xmlns='urn:example:notes'>overwritten</note></query></iq>")
        .await;
    assert_refused(&r, &["forbidden"], "private set");

    // Block list (XEP-0191): neither read nor change.
    let r = a
        .iq("<iq type='get' to='bob@localhost'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    assert_refused(&r, &["forbidden"], "blocklist get");
    let r = a
        .iq("<iq type='set' to='bob@localhost'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    assert_refused(&r, &["forbidden"], "unblock all");
    let r = a
        .iq("<iq type='set' to='bob@localhost'><block xmlns='urn:xmpp:blocking'><item jid='dave@localhost'/></block></iq>")
        .await;
    assert_refused(&r, &["forbidden"], "block");

    // Last activity of a non-contact (XEP-0012 §4): forbidden.
    let r = a
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert_refused(&r, &["forbidden"], "last activity");

    // Offline messages: no way to list or fetch them (XEP-0013 is not
    // served), and nothing of bob's reaches alice's session.
    let r = a
        .iq("<iq type='get' to='bob@localhost'><offline xmlns='http://jabber.org/protocol/offline'><fetch/></offline></iq>")
        .await;
    assert_refused(&r, &["forbidden", "service-unavailable"], "offline fetch");
    let r = a
        .iq("<iq type='get' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/offline'/></iq>")
        .await;
    assert_no_leak(&r, "offline disco items");
    // (An error is fine: `<item-not-found/>` lists nothing.)
    assert!(
        !xml(&r).contains("<item ") && !xml(&r).contains("<item/>"),
        "offline disco items: {}",
        xml(&r)
    );

    // Account changes (XEP-0077): not bob's password, not his account.
    let r = a
        .iq("<iq type='set' to='bob@localhost'><query xmlns='jabber:iq:register'><username>bob</username><password>stolen</password></query></iq>")
        .await;
    assert_refused(&r, &["forbidden", "not-allowed"], "password change");
    let r = a
        .iq("<iq type='set' to='bob@localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    assert_refused(&r, &["forbidden", "not-allowed"], "account removal");
    // Changing "username" in one's own request changes one's own password
    // only (XEP-0077 §3.3): a different username is refused.
    let r = a
        .iq("<iq type='set'><query xmlns='jabber:iq:register'><username>bob</username><password>stolen</password></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", xml(&r));

    // Nothing of bob's arrived in alice's session meanwhile.
    for e in a.drain().await {
        assert_no_leak(&e, "alice's session");
    }

    // Bob's data is all still there and unchanged.
    let mut b = Client::login(&srv, "bob", DOMAIN, "b2").await;
    let r = b
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let s = xml(&r);
    assert!(
        s.contains("carol@localhost")
            && s.contains("dave@localhost")
            && !s.contains("alice@localhost"),
        "{s}"
    );
    let r = b
        .iq("<iq type='get'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    assert!(xml(&r).contains("BobSecretName") && !xml(&r).contains("Hacked"));
    let r = b
        .iq("<iq type='get'><query xmlns='jabber:iq:private'><note xmlns='urn:example:notes'/></query></iq>")
        .await;
    assert!(
        xml(&r).contains("BobPrivateNote") && !xml(&r).contains("overwritten"),
        "{}",
        xml(&r)
    );
    let r = b
        .iq("<iq type='get'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    let s = xml(&r);
    assert!(
        s.contains("mallory@localhost") && !s.contains("dave@localhost"),
        "{s}"
    );
    b.send("<presence/>").await;
    b.expect("the offline message", |e| {
        e.name() == "message" && xml(e).contains("BobOffline")
    })
    .await;
    // bob's password is unchanged.
    let mut b3 = Raw::connect(srv.addr).await;
    b3.login_plain("bob", DOMAIN, "pw", "b3").await;
    srv.stop().await;
}

/// Sessions: the server stamps `from`, hides resources from non-contacts and
/// keeps stanzas for one session away from the others.
#[tokio::test]
async fn sessions_of_another_user() {
    let srv = server().await;
    let mut b = Client::login(&srv, "bob", DOMAIN, "b").await;
    b.send("<presence><status>BobStatus</status></presence>")
        .await;
    b.drain().await;
    let mut c = Client::login(&srv, "carol", DOMAIN, "c").await;
    c.send("<presence/>").await;
    c.drain().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    a.send("<presence/>").await;
    a.drain().await;
    // A forged `from` is replaced with the sender's full JID (RFC 6120 §8.1.2.1).
    a.send("<message from='bob@localhost/b' to='carol@localhost/c' type='chat'><body>forged</body></message>")
        .await;
    let m = c.expect("the message", |e| xml(e).contains("forged")).await;
    assert_eq!(m.attr("from"), Some("alice@localhost/a"), "{}", xml(&m));
    // Bob's resources are not listed to a non-contact (XEP-0030).
    let r = a
        .iq("<iq type='get' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    assert!(!xml(&r).contains("bob@localhost/b"), "{}", xml(&r));
    // A probe from a non-contact reveals no presence (RFC 6121 §4.3.2).
    a.send("<presence to='bob@localhost' type='probe'/>").await;
    for e in a.drain().await {
        assert!(
            !(e.name() == "presence" && e.attr("type").is_none()),
            "presence leaked: {}",
            xml(&e)
        );
        assert!(!xml(&e).contains("BobStatus"), "{}", xml(&e));
    }
    // Binding bob's resource from alice's account gives alice a session of
    // her own; bob's session is untouched.
    let mut a2 = Client::login(&srv, "alice", DOMAIN, "b").await;
    assert_eq!(a2.jid, "alice@localhost/b");
    c.send("<message to='bob@localhost/b' type='chat'><body>for bob only</body></message>")
        .await;
    b.expect("carol's message", |e| xml(e).contains("for bob only"))
        .await;
    for e in a2.drain().await {
        assert!(!xml(&e).contains("for bob only"), "{}", xml(&e));
    }
    srv.stop().await;
}

/// Announcements are for the `admin` ACL only: a user gets `forbidden`, and
/// nothing is sent or stored.
#[tokio::test]
async fn admin_actions_refuse_users() {
    let srv = server().await;
    let mut c = Client::login(&srv, "carol", DOMAIN, "c").await;
    c.send("<presence/>").await;
    c.drain().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    a.send("<presence/>").await;
    a.drain().await;
    for (i, what) in ["online", "all", "motd", "motd/update", "motd/delete"]
        .iter()
        .enumerate()
    {
        a.send(&format!(
            "<message to='localhost/announce/{what}' id='ann{i}'><body>UserAnnounce</body></message>"
        ))
        .await;
        let id = format!("ann{i}");
        let e = a.expect(what, |e| e.attr("id") == Some(id.as_str())).await;
        let cond = condition(&e);
        // `all` is not an announce resource Palaver has: item-not-found
        // (for an admin as well); the others are refused.
        let want = if *what == "all" {
            "item-not-found"
        } else {
            "forbidden"
        };
        assert!(
            cond.as_deref() == Some("forbidden") || cond.as_deref() == Some(want),
            "announce/{what}: {}",
            xml(&e)
        );
    }
    let stored = palaver_modules::announce::store::KvSql::new(srv.core().storage().db.clone())
        .host_get(DOMAIN, "motd")
        .await
        .expect("motd");
    assert!(stored.is_none(), "{stored:?}");
    for e in c.drain().await {
        assert!(!xml(&e).contains("UserAnnounce"), "{}", xml(&e));
    }
    // A later login gets no MOTD either.
    let mut m = Client::login(&srv, "mallory", DOMAIN, "m").await;
    m.send("<presence/>").await;
    for e in m.drain().await {
        assert!(!xml(&e).contains("UserAnnounce"), "{}", xml(&e));
    }
    srv.stop().await;
}

async fn http(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status")
}

fn url_path(url: &str) -> String {
    let rest = url.split_once("://").expect("absolute").1;
    rest[rest.find('/').expect("path")..].replace("&amp;", "&")
}

/// (PUT path, GET path) of a slot.
async fn slot(c: &mut Client, name: &str, size: usize) -> (String, String) {
    let r = c
        .iq(&format!("<iq type='get' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='{name}' size='{size}' content-type='text/plain'/></iq>"))
        .await;
    let s = r
        .get_child("slot", "urn:xmpp:http:upload:0")
        .unwrap_or_else(|| panic!("slot: {}", xml(&r)));
    let url = |w: &str| {
        s.get_child(w, "urn:xmpp:http:upload:0")
            .and_then(|e| e.attr("url"))
            .map(url_path)
            .unwrap_or_else(|| panic!("{w} url"))
    };
    (url("put"), url("get"))
}

/// Uploaded files: only the exact GET URL reads a file; one user's PUT URL
/// cannot be bent to another's slot; quotas are per user.
#[tokio::test]
async fn uploaded_files_of_another_user() {
    let srv = server().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    let mut b = Client::login(&srv, "bob", DOMAIN, "b").await;
    let ct = "Content-Type: text/plain\r\n";
    let data = b"BobFileContent-0123456789";
    let (bput, bget) = slot(&mut b, "secret.txt", data.len()).await;
    assert_eq!(http(srv.http_addr, "PUT", &bput, ct, data).await, 201);
    // alice's own slot, same size: its signature does not open bob's.
    let (aput, aget) = slot(&mut a, "mine.txt", data.len()).await;
    let sig = |p: &str| p.split_once('?').map(|x| x.1.to_string()).expect("query");
    let path = |p: &str| p.split_once('?').map(|x| x.0.to_string()).expect("path");
    // PUT to bob's (used) slot with alice's signature, and to bob's
    // directory with alice's slot and name: refused.
    let forged = format!("{}?{}", path(&bput), sig(&aput));
    assert_eq!(
        http(
            srv.http_addr,
            "PUT",
            &forged,
            ct,
            b"x".repeat(data.len()).as_slice()
        )
        .await,
        403
    );
    let bob_owner = path(&bput).split('/').nth(2).expect("owner").to_string();
    let alice_owner = path(&aput).split('/').nth(2).expect("owner").to_string();
    assert_ne!(bob_owner, alice_owner, "slots are per user");
    let into_bob = aput.replacen(&alice_owner, &bob_owner, 1);
    assert_eq!(http(srv.http_addr, "PUT", &into_bob, ct, data).await, 403);
    // Bob's URL used again: the slot is taken.
    assert_eq!(http(srv.http_addr, "PUT", &bput, ct, data).await, 409);
    // GET needs the exact URL: alice's signature, no signature, a listing
    // of bob's directory or slot: all refused, no content.
    for p in [
        format!("{}?{}", path(&bget), sig(&aget)),
        path(&bget),
        format!("/upload/{bob_owner}/"),
        format!("/upload/{bob_owner}"),
        path(&bget)
            .rsplit_once('/')
            .map(|x| x.0.to_string())
            .expect("slot dir"),
    ] {
        let st = http(srv.http_addr, "GET", &p, "", b"").await;
        assert!(st == 403 || st == 404, "GET {p}: {st}");
    }
    assert_eq!(http(srv.http_addr, "GET", &bget, "", b"").await, 200);
    // Quotas are per user: bob's usage does not count against alice.
    let (p, _) = slot(&mut a, "big.bin", 1000).await;
    assert_eq!(http(srv.http_addr, "PUT", &p, ct, &[b'a'; 1000]).await, 201);
    srv.stop().await;
}
