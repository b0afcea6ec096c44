//! XEP-0313 Message Archive Management with XEP-0359 stanza ids: both sides
//! of a conversation archived, paging over a few thousand messages in both
//! directions with no gap or duplicate, the extended filters, preferences,
//! spoofed ids, account removal, and an acknowledged archive surviving
//! `kill -9`.
mod common;
use common::process::{BIN, add_user, serve, write_config};
use common::*;

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_roster: {}\n  mod_offline: {}\n  mod_stream_mgmt: {}\n  mod_carboncopy: {}\n  mod_mam: {}\n";

/// Enable stream management without resumption.
async fn enable_sm(c: &mut RawTcp) {
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    c.until("<enabled").await;
    c.until("/>").await;
}

/// Ask for an acknowledgement and wait until it covers `n` stanzas.
async fn acked(c: &mut RawTcp, n: u32) {
    c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let needle = format!("<a xmlns='urn:xmpp:sm:3' h='{n}'/>");
    c.until(&needle).await;
}

/// One archived message as a query returns it.
#[derive(Debug, Clone, PartialEq)]
struct Hit {
    id: String,
    body: String,
    from: String,
}

/// The result of a query: the messages, and the `<fin/>` element's text.
struct Page {
    hits: Vec<Hit>,
    fin: String,
    /// Everything received for the query.
    raw: String,
}

impl Page {
    fn complete(&self) -> bool {
        self.fin.contains("complete='true'")
    }
    fn tag(&self, name: &str) -> Option<String> {
        let open = format!("<{name}");
        let s = self.fin.find(&open)?;
        let rest = &self.fin[s..];
        let gt = rest.find('>')?;
        let end = rest.find(&format!("</{name}>"))?;
        Some(rest[gt + 1..end].to_string())
    }
    fn count(&self) -> Option<usize> {
        self.tag("count").and_then(|c| c.parse().ok())
    }
    fn bodies(&self) -> Vec<String> {
        self.hits.iter().map(|h| h.body.clone()).collect()
    }
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let p = s.find(a)? + a.len();
    let e = s[p..].find(b)?;
    Some(&s[p..p + e])
}

/// Run a MAM query (`fields`: the form's fields; `rsm`: the `<set/>`
/// content) and collect the results.
async fn query(c: &mut RawTcp, qid: &str, fields: &str, rsm: &str, extra: &str) -> Page {
    let form = if fields.is_empty() {
        String::new()
    } else {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>"
        )
    };
    let set = if rsm.is_empty() {
        String::new()
    } else {
        format!("<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>")
    };
    c.send(&format!(
        "<iq type='set' id='q-{qid}'><query xmlns='urn:xmpp:mam:2' queryid='q-{qid}'>{form}{set}{extra}</query></iq>"
    ))
    .await;
    let text = c.until(&format!("' id='q-{qid}'")).await;
    let rest = c.until("</iq>").await;
    let mut hits = Vec::new();
    for part in text.split("<result ").skip(1) {
        assert!(part.contains(&format!("queryid='q-{qid}'")), "{part}");
        let id = between(part, " id='", "'").expect("result id").to_string();
        let body = between(part, "<body>", "</body>").unwrap_or("").to_string();
        let inner = part.split("<message").nth(1).unwrap_or("");
        let from = between(inner, "from='", "'").unwrap_or("").to_string();
        hits.push(Hit { id, body, from });
    }
    Page {
        hits,
        raw: text + &rest,
        fin: rest,
    }
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

/// `n` messages from `from` to `to_jid`, in batches the recipient reads.
async fn converse(from: &mut RawTcp, to: &mut RawTcp, to_jid: &str, prefix: &str, n: usize) {
    let mut i = 0;
    while i < n {
        let mut batch = String::new();
        let end = (i + 100).min(n);
        for k in i..end {
            batch.push_str(&format!(
                "<message to='{to_jid}' type='chat' id='{prefix}{k}'><body>{prefix}{k}</body><origin-id xmlns='urn:xmpp:sid:0' id='o-{prefix}{k}'/></message>"
            ));
        }
        from.send(&batch).await;
        to.until(&format!(">{prefix}{}</body>", end - 1)).await;
        i = end;
    }
}

#[tokio::test]
async fn paging_a_few_thousand_messages_both_ways_without_gaps() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "carol"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "pc").await;
    let mut carol = raw_login(srv.addr, "carol", DOMAIN, "pw", "c").await;
    enable_sm(&mut bob).await;
    enable_sm(&mut carol).await;
    alice.send("<presence/>").await;
    // Advertised on the account and the server.
    alice
        .send("<iq type='get' id='di'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = alice.until("</iq>").await;
    assert!(
        info.contains("urn:xmpp:mam:2") && info.contains("urn:xmpp:mam:2#extended"),
        "{info}"
    );

    const N: usize = 2500;
    converse(&mut bob, &mut alice, "alice@localhost", "b", 1200).await;
    converse(&mut carol, &mut alice, "alice@localhost", "c", 100).await;
    // Then more from bob (numbered on).
    let mut i = 1200;
    while i < N {
        let end = (i + 100).min(N);
        let mut batch = String::new();
        for k in i..end {
            batch.push_str(&format!(
                "<message to='alice@localhost' type='chat' id='b{k}'><body>b{k}</body></message>"
            ));
        }
        bob.send(&batch).await;
        alice.until(&format!(">b{}</body>", end - 1)).await;
        i = end;
    }
    // <a/> means archived on both sides.
    acked(&mut bob, N as u32).await;
    acked(&mut carol, 100).await;

    // The received message carries the archive's stanza-id.
    bob.send("<message to='alice@localhost' type='chat' id='last'><body>last</body></message>")
        .await;
    alice.until(">last</body>").await;
    let got = alice.until("</message>").await;
    let sid = between(&got, "<stanza-id xmlns='urn:xmpp:sid:0' ", "/>").expect("stanza-id");
    assert!(sid.contains("by='alice@localhost'"), "{got}");
    acked(&mut bob, N as u32 + 1).await;
    let total = N + 100 + 1;

    // Forward, pages of 250 (the maximum) after the previous page's last.
    let mut forward: Vec<Hit> = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let rsm = if after.is_empty() {
            "<max>250</max>".to_string()
        } else {
            format!("<max>250</max><after>{after}</after>")
        };
        let p = query(&mut alice, &format!("f{pages}"), "", &rsm, "").await;
        assert_eq!(p.count(), Some(total), "{}", p.fin);
        let Some(last) = p.hits.last() else {
            break;
        };
        assert_eq!(p.tag("last").as_deref(), Some(last.id.as_str()));
        after = last.id.clone();
        forward.extend(p.hits.iter().cloned());
        pages += 1;
        if p.complete() {
            break;
        }
        assert_eq!(p.hits.len(), 250);
    }
    assert_eq!(forward.len(), total, "every message once");
    let mut ids: Vec<&str> = forward.iter().map(|h| h.id.as_str()).collect();
    let in_order = ids.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no duplicate");
    assert_eq!(in_order, ids, "ids increase with time");
    // bob's messages, in the order sent, none missing.
    let bobs: Vec<String> = forward
        .iter()
        .filter(|h| h.from.starts_with("bob@localhost"))
        .map(|h| h.body.clone())
        .collect();
    let mut expected: Vec<String> = (0..N).map(|k| format!("b{k}")).collect();
    expected.push("last".into());
    assert_eq!(bobs, expected);
    assert_eq!(
        forward.last().map(|h| h.id.as_str()),
        Some(between(sid, "id='", "'").expect("id"))
    );

    // Backward from the end with <before/>, pages of 100.
    let mut backward: Vec<Hit> = Vec::new();
    let mut before = String::new();
    let mut n = 0;
    loop {
        let rsm = format!("<max>100</max><before>{before}</before>");
        let p = query(&mut alice, &format!("b{n}"), "", &rsm, "").await;
        n += 1;
        let mut hits = p.hits.clone();
        let Some(first) = hits.first() else { break };
        assert_eq!(p.tag("first").map(|f| f.contains(&first.id)), Some(true));
        before = first.id.clone();
        hits.reverse();
        backward.extend(hits);
        if p.complete() {
            break;
        }
    }
    backward.reverse();
    assert_eq!(backward, forward, "the same messages backwards");

    // `with`: only carol's, in order; the last page first with flip-page.
    let p = query(
        &mut alice,
        "w1",
        &field("with", "carol@localhost"),
        "<max>1000</max>",
        "",
    )
    .await;
    assert_eq!(p.count(), Some(100));
    assert_eq!(
        p.bodies(),
        (0..100).map(|k| format!("c{k}")).collect::<Vec<_>>()
    );
    assert!(p.complete());
    let p = query(
        &mut alice,
        "w2",
        &field("with", "carol@localhost"),
        "<max>10</max><before/>",
        "<flip-page/>",
    )
    .await;
    assert_eq!(
        p.bodies(),
        (90..100).rev().map(|k| format!("c{k}")).collect::<Vec<_>>()
    );
    // A full JID matches that resource only.
    let p = query(
        &mut alice,
        "w3",
        &field("with", "carol@localhost/other"),
        "",
        "",
    )
    .await;
    assert_eq!(p.count(), Some(0));
    assert!(p.hits.is_empty() && p.complete());

    // after-id / before-id (exclusive) and ids.
    let (a, b) = (&forward[10].id, &forward[15].id);
    let fields = field("after-id", a) + &field("before-id", b);
    let p = query(&mut alice, "x1", &fields, "", "").await;
    assert_eq!(p.hits, forward[11..15].to_vec());
    let ids_field = format!(
        "<field var='ids'><value>{}</value><value>{}</value></field>",
        forward[3].id, forward[700].id
    );
    let p = query(&mut alice, "x2", &ids_field, "", "").await;
    assert_eq!(p.hits, vec![forward[3].clone(), forward[700].clone()]);
    // An unknown id: item-not-found.
    let p = query(
        &mut alice,
        "x3",
        &field("after-id", "0000000000000001deadbeef"),
        "",
        "",
    )
    .await;
    assert!(p.fin.contains("item-not-found"), "{}", p.fin);
    let p = query(&mut alice, "x4", "", "<after>nope</after>", "").await;
    assert!(p.fin.contains("item-not-found"), "{}", p.fin);
    // Dates: nothing before 2001, everything since.
    let p = query(
        &mut alice,
        "t1",
        &field("end", "2001-01-01T00:00:00Z"),
        "",
        "",
    )
    .await;
    assert_eq!(p.count(), Some(0));
    let p = query(
        &mut alice,
        "t2",
        &field("start", "2001-01-01T00:00:00Z"),
        "<max>0</max>",
        "",
    )
    .await;
    assert_eq!(p.count(), Some(total));
    let p = query(&mut alice, "t3", &field("start", "yesterday"), "", "").await;
    assert!(p.fin.contains("bad-request"), "{}", p.fin);

    // The sent side: bob's archive has what he sent to alice.
    let p = query(
        &mut bob,
        "s1",
        &field("with", "alice@localhost"),
        "<max>5</max>",
        "",
    )
    .await;
    assert_eq!(p.count(), Some(N + 1));
    assert_eq!(p.bodies(), vec!["b0", "b1", "b2", "b3", "b4"]);
    assert!(
        p.hits.iter().all(|h| h.from == "bob@localhost/pc"),
        "{:?}",
        p.hits
    );

    // Metadata: first and last.
    alice
        .send("<iq type='get' id='md'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    let md = alice.until("</iq>").await;
    assert!(
        md.contains(&format!("<start id='{}'", forward[0].id))
            && md.contains(&format!("<end id='{}'", forward[total - 1].id)),
        "{md}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn stanza_ids_preferences_and_account_removal() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "carol"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "pc").await;
    enable_sm(&mut bob).await;
    alice.send("<presence/>").await;

    // A stanza-id claiming to be by alice's archive is removed; ours is added.
    bob.send("<message to='alice@localhost' type='chat' id='s1'><body>spoof</body><stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='fake'/><stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example' id='keep'/></message>").await;
    let got = alice.until("</message>").await;
    assert!(!got.contains("'fake'"), "{got}");
    assert_eq!(got.matches("by='alice@localhost'").count(), 1, "{got}");
    assert!(got.contains("id='keep'"), "{got}");
    // Nothing is archived for an account that does not exist.
    bob.send("<message to='nobody@localhost' type='chat' id='nb'><body>void</body></message>")
        .await;
    assert!(
        bob.until("</message>")
            .await
            .contains("service-unavailable")
    );
    let store = palaver_modules::mam::store::MamSql::new(srv.core().storage().db.clone());
    assert_eq!(
        store
            .count(DOMAIN, "nobody", &Default::default())
            .await
            .expect("count"),
        0
    );
    // Messages without body are not archived and get no id.
    bob.send("<message to='alice@localhost' type='chat' id='cs'><active xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    let got = alice.until("</message>").await;
    assert!(!got.contains("stanza-id"), "{got}");
    // Offline: stored with its stanza-id.
    let mut c = raw_login(srv.addr, "carol", DOMAIN, "pw", "c").await;
    c.send("<message to='bob@localhost' type='chat' id='o1'><body>to offline</body></message>")
        .await;
    c.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    c.until("id='sync'").await;

    // Preferences: never for carol, get returns it.
    alice
        .send("<iq type='get' id='p0'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    assert!(alice.until("</iq>").await.contains("default='always'"));
    alice.send("<iq type='set' id='p1'><prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never><jid>carol@localhost</jid></never></prefs></iq>").await;
    let r = alice.until("</iq>").await;
    assert!(
        r.contains("type='result'") && r.contains("<jid>carol@localhost</jid>"),
        "{r}"
    );
    c.send("<message to='alice@localhost' type='chat' id='n1'><body>not archived</body></message>")
        .await;
    let got = alice.until("not archived</body>").await + &alice.until("</message>").await;
    assert!(!got.contains("stanza-id"), "{got}");
    c.send("<iq type='get' id='sync2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    c.until("id='sync2'").await;
    let p = query(&mut alice, "q1", "", "", "").await;
    assert_eq!(p.bodies(), vec!["spoof"], "{}", p.fin);
    // Bad preferences.
    alice
        .send("<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='sometimes'/></iq>")
        .await;
    assert!(alice.until("</iq>").await.contains("bad-request"));
    // Another account's archive is not ours to read.
    alice
        .send("<iq type='set' id='q2' to='bob@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    assert!(alice.until("</iq>").await.contains("forbidden"));
    // The form.
    alice
        .send("<iq type='get' id='f'><query xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    let f = alice.until("</iq>").await;
    for v in ["with", "start", "end", "before-id", "after-id", "ids"] {
        assert!(f.contains(&format!("var='{v}'")), "{f}");
    }
    // Bob comes online: the offline message has its stanza-id, and the
    // archive has it.
    bob.send("<presence/>").await;
    let got = bob.until("to offline</body>").await + &bob.until("</message>").await;
    let id = between(&got, "by='bob@localhost' id='", "'")
        .or_else(|| between(&got, "id='", "' by='bob@localhost'"))
        .expect("stanza-id on the offline message")
        .to_string();
    let p = query(
        &mut bob,
        "q3",
        &format!("<field var='ids'><value>{id}</value></field>"),
        "",
        "",
    )
    .await;
    assert_eq!(p.bodies(), vec!["to offline"]);

    // Removing the account removes its archive and preferences.
    let core = srv.core().clone();
    let cx = core.cx_of(DOMAIN).expect("host");
    let db = core.storage().db.clone();
    let store = palaver_modules::mam::store::MamSql::new(db);
    // (Bob's side of their conversation stays: on SQLite it may share its
    // row with alice's.)
    let bobs = store
        .count(DOMAIN, "bob", &Default::default())
        .await
        .expect("count");
    assert!(bobs > 0);
    cx.remove_user(DOMAIN, "alice").await.expect("removed");
    assert_eq!(
        store
            .count(DOMAIN, "alice", &Default::default())
            .await
            .expect("count"),
        0
    );
    assert!(store.prefs(DOMAIN, "alice").await.expect("prefs").is_none());
    assert_eq!(
        store
            .count(DOMAIN, "bob", &Default::default())
            .await
            .expect("count"),
        bobs
    );
    srv.stop().await;
}

#[tokio::test]
async fn without_the_module_nothing_is_advertised_or_stamped() {
    let srv = TestServer::start_with("", "modules:\n  mod_disco: {}\n").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "pc").await;
    alice.send("<presence/>").await;
    alice
        .send("<iq type='get' id='di'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    assert!(!alice.until("</iq>").await.contains("mam"));
    bob.send("<message to='alice@localhost' type='chat' id='s1'><body>hi</body></message>")
        .await;
    assert!(!alice.until("</message>").await.contains("stanza-id"));
    alice
        .send("<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    assert!(alice.until("</iq>").await.contains("service-unavailable"));
    srv.stop().await;
}

// ---------------------------------------------------------------- kill -9

#[tokio::test]
async fn an_acknowledged_archive_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _pg) = write_config(dir.path(), MODULES, "mam kill -9").await;
    add_user(&cfg, "alice@localhost");
    add_user(&cfg, "bob@localhost");
    let (mut child, addr) = serve(&cfg).await;
    let mut alice = raw_login(addr, "alice", DOMAIN, "pw", "a").await;
    let mut bob = raw_login(addr, "bob", DOMAIN, "pw", "b").await;
    alice.send("<presence/>").await;
    enable_sm(&mut alice).await;
    const N: usize = 300;
    let mut batch = String::new();
    for k in 0..N {
        batch.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='k{k}'><body>k{k}</body></message>"
        ));
    }
    // bob is online without presence: the messages go offline and into
    // both archives.
    alice.send(&batch).await;
    acked(&mut alice, N as u32).await;
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");
    drop(bob);

    let (_child, addr) = serve(&cfg).await;
    let mut alice = raw_login(addr, "alice", DOMAIN, "pw", "a2").await;
    let p = query(&mut alice, "k", "", "<max>250</max><before/>", "").await;
    assert_eq!(p.count(), Some(N));
    let p2 = query(&mut alice, "k2", "", "<max>100</max>", "").await;
    assert_eq!(
        p2.bodies(),
        (0..100).map(|k| format!("k{k}")).collect::<Vec<_>>()
    );
    bob = raw_login(addr, "bob", DOMAIN, "pw", "b2").await;
    let p = query(
        &mut bob,
        "k3",
        &field("with", "alice@localhost"),
        "<max>0</max>",
        "",
    )
    .await;
    assert_eq!(p.count(), Some(N));
}

fn run(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run palaver");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn the_archive_goes_through_xep_0227_export_and_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", MODULES);
    let cfg = dir.path().join("palaver.yml");
    std::fs::write(&cfg, &text).expect("config");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let src = TestServer::start_with_config_text(dir, &text).await;
    src.add_user("alice", DOMAIN, "pw").await;
    src.add_user("bob", DOMAIN, "pw").await;
    let mut alice = raw_login(src.addr, "alice", DOMAIN, "pw", "a").await;
    let mut bob = raw_login(src.addr, "bob", DOMAIN, "pw", "b").await;
    enable_sm(&mut bob).await;
    alice.send("<presence/>").await;
    for k in 0..5 {
        bob.send(&format!(
            "<message to='alice@localhost' type='chat' id='m{k}'><body>m{k}</body></message>"
        ))
        .await;
    }
    acked(&mut bob, 5).await;
    let before = query(&mut alice, "e1", "", "", "").await;
    assert_eq!(before.bodies(), vec!["m0", "m1", "m2", "m3", "m4"]);

    let out = tempfile::tempdir().expect("tempdir");
    let file = out.path().join("export.xml");
    let (ok, msg) = run(&[
        "db",
        "export",
        DOMAIN,
        &path(&file),
        "--config",
        &path(&cfg),
    ]);
    assert!(ok, "{msg}");
    src.stop().await;
    let xml = std::fs::read_to_string(&file).expect("read");
    assert!(
        xml.contains("<archive xmlns='urn:xmpp:pie:0#mam'>"),
        "{xml}"
    );
    assert_eq!(
        xml.matches("<result xmlns='urn:xmpp:mam:2'").count(),
        10,
        "both archives"
    );
    // A stanza-id in the file claiming to be alice's archive is not trusted.
    let xml = xml.replacen(
        "<body>m0</body>",
        "<body>m0</body><stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='spoof'/>",
        2,
    );
    std::fs::write(&file, xml).expect("write");

    let dir2 = tempfile::tempdir().expect("tempdir");
    let text2 = config_text(dir2.path(), "", MODULES);
    let cfg2 = dir2.path().join("palaver.yml");
    std::fs::write(&cfg2, &text2).expect("config");
    let (ok, msg) = run(&["db", "import", &path(&file), "--config", &path(&cfg2)]);
    assert!(ok && msg.contains("imported"), "{msg}");
    let dst = TestServer::start_with_config_text(dir2, &text2).await;
    let mut alice = raw_login(dst.addr, "alice", DOMAIN, "pw", "a").await;
    let after = query(&mut alice, "e2", "", "", "").await;
    assert_eq!(after.bodies(), before.bodies());
    assert_eq!(
        after
            .hits
            .iter()
            .map(|h| h.from.clone())
            .collect::<Vec<_>>(),
        before
            .hits
            .iter()
            .map(|h| h.from.clone())
            .collect::<Vec<_>>()
    );
    assert!(after.raw.contains("<body>m0</body>"), "{}", after.raw);
    assert!(!after.raw.contains("spoof"), "{}", after.raw);
    let mut bob = raw_login(dst.addr, "bob", DOMAIN, "pw", "b").await;
    let sent = query(&mut bob, "e4", &field("with", "alice@localhost"), "", "").await;
    assert_eq!(sent.bodies(), before.bodies());
    dst.stop().await;
}

/// The archive keeps a conversation's order: the id of a sent message is
/// taken when it is sent, so a quick reply (archived at once on receipt)
/// never lands before the message it answers, though the sent side is
/// written later, in the background.
#[tokio::test]
async fn a_quick_reply_follows_the_message_it_answers() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "pc").await;
    enable_sm(&mut alice).await;
    enable_sm(&mut bob).await;
    const N: usize = 40;
    let mut expected = Vec::new();
    for i in 0..N {
        alice
            .send(&format!(
                "<message to='bob@localhost/pc' type='chat' id='m{i}'><body>m{i}</body></message>"
            ))
            .await;
        bob.until(&format!(">m{i}</body>")).await;
        bob.send(&format!(
            "<message to='alice@localhost/phone' type='chat' id='r{i}'><body>r{i}</body></message>"
        ))
        .await;
        alice.until(&format!(">r{i}</body>")).await;
        expected.push(format!("m{i}"));
        expected.push(format!("r{i}"));
    }
    // <a/> means archived: every message each of them sent is in alice's
    // archive (the sent side with alice's ticket, the received side with
    // bob's).
    acked(&mut alice, N as u32).await;
    acked(&mut bob, N as u32).await;
    let p = query(
        &mut alice,
        "order",
        &field("with", "bob@localhost"),
        "<max>250</max>",
        "",
    )
    .await;
    assert_eq!(p.bodies(), expected, "{}", p.raw);
}
