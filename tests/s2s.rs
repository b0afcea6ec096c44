//! Federation between two Palaver instances on loopback (distinct domains,
//! `s2s_hosts` overrides), and an external component (XEP-0114).

mod common;
mod tlsutil;

use common::{Raw, RawTcp, raw_login};
use palaver_server::Server;
use palaver_server::config::Config;
use sha1::Digest;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Node {
    server: Option<palaver_server::RunningServer>,
    c2s: SocketAddr,
    s2s: SocketAddr,
    s2s_tls: Option<SocketAddr>,
    components: Vec<SocketAddr>,
    fed: std::sync::Arc<palaver_s2s::S2s>,
    _dir: tempfile::TempDir,
    /// The node's own PostgreSQL database (`PALAVER_TEST_BACKEND=pgsql`).
    _pg: Option<palaver_storage::postgres::testdb::TestDb>,
}

impl Node {
    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
    async fn add_user(&self, user: &str, host: &str) {
        let creds = palaver_server::auth::derive_all("pw", 4096);
        self.server
            .as_ref()
            .expect("running")
            .core
            .storage()
            .accounts
            .create_account(host, user, &creds)
            .await
            .expect("create user");
    }
}

/// A free port on 127.0.0.1 (bound and released: both instances must know
/// each other's port before they start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn node(domain: &str, s2s_port: u16, extra: &str, extra_listen: &str) -> Node {
    node_dns(domain, s2s_port, extra, extra_listen, None).await
}

/// DNS for the tests: SRV records by name, every host at 127.0.0.1.
struct FakeDns(Vec<(String, palaver_s2s::resolve::Srv)>);

#[async_trait::async_trait]
impl palaver_s2s::resolve::Dns for FakeDns {
    async fn srv(&self, name: &str) -> std::io::Result<Vec<palaver_s2s::resolve::Srv>> {
        Ok(self
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .collect())
    }
    async fn ips(&self, _host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        Ok(vec![std::net::IpAddr::from([127, 0, 0, 1])])
    }
}

async fn node_dns(
    domain: &str,
    s2s_port: u16,
    extra: &str,
    extra_listen: &str,
    dns: Option<FakeDns>,
) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "hosts: [{domain}]\nloglevel: warning\ndata_dir: {d}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    allow_plain_without_tls: true\n  - port: {s2s_port}\n    ip: 127.0.0.1\n    module: ejabberd_s2s_in\n{extra_listen}{extra}",
        d = dir.path().display()
    );
    let pg = common::suite_db().await;
    let text = match &pg {
        Some(db) => format!("{text}{}", common::pg_keys(&db.url)),
        None => text,
    };
    let config = Config::parse(&text).expect("config");
    let mut server = Server::start(config, &palaver_modules::registry())
        .await
        .expect("server starts");
    let started = match dns {
        Some(d) => palaver_s2s::start_with(&mut server, std::sync::Arc::new(d)).await,
        None => palaver_s2s::start(&mut server).await,
    }
    .expect("s2s starts");
    Node {
        c2s: server.c2s_addr().expect("c2s"),
        s2s: started.s2s_addrs[0].1,
        s2s_tls: started
            .s2s_addrs
            .iter()
            .find(|(tls, _)| *tls)
            .map(|(_, a)| *a),
        components: started.component_addrs.clone(),
        fed: started.s2s.clone(),
        server: Some(server),
        _dir: dir,
        _pg: pg,
    }
}

/// Two instances a.test and b.test, each knowing the other's address (and
/// its MUC service's, `conference.HOST`).
async fn pair(extra_a: &str, extra_b: &str) -> (Node, Node) {
    let (pa, pb) = (free_port(), free_port());
    let a = node(
        "a.test",
        pa,
        &format!(
            "outgoing_s2s_timeout: 5\ns2s_hosts:\n  b.test: '127.0.0.1:{pb}'\n  conference.b.test: '127.0.0.1:{pb}'\n{extra_a}"
        ),
        "",
    )
    .await;
    let b = node(
        "b.test",
        pb,
        &format!(
            "outgoing_s2s_timeout: 5\ns2s_hosts:\n  a.test: '127.0.0.1:{pa}'\n  conference.a.test: '127.0.0.1:{pa}'\n{extra_b}"
        ),
        "",
    )
    .await;
    a.add_user("alice", "a.test").await;
    b.add_user("bob", "b.test").await;
    (a, b)
}

async fn online(addr: SocketAddr, user: &str, host: &str) -> RawTcp {
    let mut c = raw_login(addr, user, host, "pw", "r").await;
    // Roster pushes go to resources that asked for the roster (RFC 6121 §2.1.6).
    c.send("<iq type='get' id='roster0'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    c.until("id='roster0'").await;
    c.send("<presence/>").await;
    c.until("<presence").await;
    c.until(">").await;
    c
}

/// Read until every needle has been seen; returns (and drops) all read.
async fn until_all(c: &mut RawTcp, needles: &[&str]) -> String {
    let r = tokio::time::timeout(common::TIMEOUT, async {
        loop {
            if needles.iter().all(|n| c.buf.contains(n)) {
                return std::mem::take(&mut c.buf);
            }
            let mut chunk = [0u8; 8192];
            let n = c.s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "closed waiting for {needles:?}: {}", c.buf);
            c.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {needles:?}; got {:?}", c.buf))
}

/// Subscription handshake both ways and messages both ways.
async fn converse(a: &Node, b: &Node) {
    let mut alice = online(a.c2s, "alice", "a.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    alice
        .send("<presence to='bob@b.test' type='subscribe' id='s1'/>")
        .await;
    let got = bob.until("type='subscribe'").await;
    assert!(got.contains("from='alice@a.test'"), "{got}");
    bob.send("<presence to='alice@a.test' type='subscribed'/>")
        .await;
    // Alice's roster shows bob with a subscription "to", and bob's
    // available presence arrives.
    // (In whichever order the contact's server sends its presence and the approval.)
    let got = until_all(
        &mut alice,
        &["subscription='to'", "<presence from='bob@b.test/r'"],
    )
    .await;
    assert!(!got.contains("type='error'"), "{got}");
    // And the other way round.
    bob.send("<presence to='alice@a.test' type='subscribe'/>")
        .await;
    alice.until("type='subscribe'").await;
    alice
        .send("<presence to='bob@b.test' type='subscribed'/>")
        .await;
    until_all(
        &mut bob,
        &["subscription='both'", "<presence from='alice@a.test/r'"],
    )
    .await;
    alice
        .send("<message to='bob@b.test' type='chat' id='m1'><body>hello from a</body></message>")
        .await;
    let m = bob.until("hello from a</body>").await;
    assert!(m.contains("from='alice@a.test/r'"), "{m}");
    bob.send(
        "<message to='alice@a.test/r' type='chat' id='m2'><body>hello from b</body></message>",
    )
    .await;
    let m = alice.until("hello from b</body>").await;
    assert!(m.contains("from='bob@b.test/r'"), "{m}");
    // IQs across: alice reads bob's vCard, b.test's disco#info and
    // software version.
    bob.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Bob of B</FN></vCard></iq>")
        .await;
    bob.until("id='v1'").await;
    alice
        .send("<iq to='bob@b.test' type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    let v = alice.until("</iq>").await;
    assert!(v.contains("id='v2'") && v.contains("Bob of B</FN>"), "{v}");
    alice
        .send("<iq to='b.test' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let d = alice.until("</iq>").await;
    assert!(
        d.contains("id='d1'") && d.contains("type='result'") && d.contains("urn:xmpp:ping"),
        "{d}"
    );
    alice
        .send("<iq to='b.test' type='get' id='ver1'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    let v = alice.until("</iq>").await;
    assert!(v.contains("id='ver1'") && v.contains("<name>"), "{v}");
    // An IQ across: bob pings a.test itself.
    bob.send("<iq to='a.test' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = bob.until("id='p1'").await;
    let tail = bob.until("/>").await;
    assert!(format!("{r}{tail}").contains("type='result'"), "{r}{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_over_tls_with_self_signed_certificates() {
    let (a, b) = pair("", "").await;
    converse(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

/// An idle outgoing stream closes after `s2s_timeout`; the next stanza
/// opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_close_and_reopen() {
    let (a, b) = pair("s2s_timeout: 1\n", "").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    alice
        .send("<message to='bob@b.test/r' id='i1'><body>first</body></message>")
        .await;
    bob.until("first</body>").await;
    assert_eq!(
        a.fed.out.connected(),
        [("a.test".to_string(), "b.test".to_string())]
    );
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    while !a.fed.out.connected().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle stream not closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    alice
        .send("<message to='bob@b.test/r' id='i2'><body>second</body></message>")
        .await;
    bob.until("second</body>").await;
    a.stop().await;
    b.stop().await;
}

/// DNS: a.test finds b.test by its `_xmpps-server._tcp` SRV record and
/// connects with direct TLS (XEP-0368); b.test finds a.test (for dialback)
/// by `_xmpp-server._tcp`. Then the usual conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_and_direct_tls_outgoing() {
    use palaver_s2s::resolve::Srv;
    let (pa, pb, pb_tls) = (free_port(), free_port(), free_port());
    let srv = |port: u16, target: &str| Srv {
        priority: 0,
        weight: 0,
        port,
        target: target.into(),
    };
    let dns_a = FakeDns(vec![(
        "_xmpps-server._tcp.b.test.".into(),
        srv(pb_tls, "xmpp.b.test"),
    )]);
    let dns_b = FakeDns(vec![(
        "_xmpp-server._tcp.a.test.".into(),
        srv(pa, "xmpp.a.test"),
    )]);
    let a = node_dns("a.test", pa, "", "", Some(dns_a)).await;
    let b = node_dns(
        "b.test",
        pb,
        "",
        &format!(
            "  - port: {pb_tls}\n    ip: 127.0.0.1\n    module: ejabberd_s2s_in\n    tls: true\n"
        ),
        Some(dns_b),
    )
    .await;
    a.add_user("alice", "a.test").await;
    b.add_user("bob", "b.test").await;
    converse(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

/// A stanza over the s2s listener's `max_stanza_size` ends the stream with
/// policy-violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stanza_is_refused() {
    let b = node("b.test", free_port(), "", "").await;
    let mut raw = Raw::connect(b.s2s).await;
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='x.test' to='b.test' version='1.0'>").await;
    raw.until("</stream:features>").await;
    let big = "x".repeat(300_000);
    raw.send_bytes(
        format!("<message from='a@x.test' to='bob@b.test'><body>{big}</body></message>").as_bytes(),
    )
    .await;
    let r = raw.until_closed().await;
    assert!(r.contains("<policy-violation"), "{r}");
    b.stop().await;
}

/// XEP-0368: an s2s listener with `tls: true` speaks TLS from the first
/// byte with ALPN `xmpp-server`, and offers no STARTTLS inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_listener() {
    let b = node(
        "b.test",
        free_port(),
        "",
        "  - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_s2s_in\n    tls: true\n",
    )
    .await;
    let pem = b._dir.path().join("certs").join("b.test.pem");
    let cfg = tlsutil::client_config(&pem, &[b"xmpp-server"]);
    let tls = tlsutil::connect(b.s2s_tls.expect("direct TLS listener"), "b.test", cfg)
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-server"[..]));
    let mut raw = Raw {
        s: tls,
        buf: String::new(),
    };
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='x.test' to='b.test' version='1.0'>").await;
    let f = raw.until("</stream:features>").await;
    assert!(!f.contains("starttls"), "{f}");
    assert!(f.contains("urn:xmpp:features:dialback"), "{f}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_only_without_tls() {
    let (a, b) = pair("s2s_use_starttls: false\n", "s2s_use_starttls: false\n").await;
    converse(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

/// A CA made here; certificates for a.test and b.test signed by it; each
/// side trusts it (`s2s_cafile`), TLS is required and dialback refused: the
/// streams can only authenticate with SASL EXTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_external_with_a_test_ca() {
    let pki = test_pki(&["a.test", "b.test"]);
    let opts = |d: &str| {
        format!(
            "s2s_use_starttls: required\ns2s_dialback: false\ns2s_cafile: {p}/ca.pem\ncertfiles:\n  - {p}/{d}.pem\n",
            p = pki.path().display()
        )
    };
    // `palaver config check`: a host with a certificate from a trusted CA
    // passes; one with only a generated self-signed certificate is warned.
    let check = |extra: &str| {
        let text = format!(
            "hosts: [a.test]\ndata_dir: {d}/data\nlisten:\n  - port: 5269\n    module: ejabberd_s2s_in\n{extra}",
            d = pki.path().display()
        );
        palaver_s2s::check_certificates(&Config::parse(&text).expect("config"))
    };
    assert_eq!(check(&opts("a.test")), Vec::<String>::new());
    let w = check("");
    assert!(w.len() == 1 && w[0].contains("`a.test`"), "{w:?}");
    let (a, b) = pair(&opts("a.test"), &opts("b.test")).await;
    converse(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

/// Self-signed certificates with dialback disabled cannot authenticate:
/// the stanza is bounced, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trusted_certificate_and_no_dialback_bounces() {
    let (a, b) = pair("s2s_dialback: false\n", "s2s_dialback: false\n").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    alice
        .send("<message to='bob@b.test' id='x1'><body>hi</body></message>")
        .await;
    let e = alice.until("</message>").await;
    assert!(
        e.contains("type='error'") && e.contains("remote-server-not-found"),
        "{e}"
    );
    a.stop().await;
    b.stop().await;
}

/// A remote that accepts connections and never answers: the stanza comes
/// back as remote-server-timeout; a domain whose address refuses
/// connections: remote-server-not-found. An error is never bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_remotes_bounce() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let closed = free_port();
    let a = node(
        "a.test",
        free_port(),
        &format!(
            "outgoing_s2s_timeout: 1\ns2s_queue_limit: 1\ns2s_hosts:\n  silent.test: '{silent_addr}'\n  slow.test: '{silent_addr}'\n  closed.test: '127.0.0.1:{closed}'\n"
        ),
        "",
    )
    .await;
    a.add_user("alice", "a.test").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    alice
        .send("<message to='x@silent.test' id='t1'><body>anyone?</body></message>")
        .await;
    let e = alice.until("</message>").await;
    assert!(
        e.contains("id='t1'") && e.contains("remote-server-timeout"),
        "{e}"
    );
    alice
        .send("<message to='x@closed.test' id='t2'><body>anyone?</body></message>")
        .await;
    let e = alice.until("</message>").await;
    assert!(
        e.contains("id='t2'") && e.contains("remote-server-not-found"),
        "{e}"
    );
    // During the back-off the same error comes at once.
    alice
        .send("<message to='y@closed.test' id='t3'><body>again</body></message>")
        .await;
    let e = alice.until("</message>").await;
    assert!(
        e.contains("id='t3'") && e.contains("remote-server-not-found"),
        "{e}"
    );
    // An error stanza is never answered with an error: the next thing alice
    // gets is the ping result.
    alice
        .send("<message to='x@closed.test' type='error' id='t4'><error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    alice
        .send("<iq to='a.test' type='get' id='p9'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = alice.until("id='p9'").await;
    assert!(!next.contains("t4"), "{next}");
    holder.abort();
    a.stop().await;
}

/// b.test refuses a.test by `s2s_access`: a.test's user gets the bounce,
/// and a stream claiming to be from a.test is closed with policy-violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_listed_domain_is_refused() {
    let (a, b) = pair(
        "",
        "acl:\n  blocked:\n    server: a.test\naccess_rules:\n  s2s:\n    deny: blocked\n    allow: all\ns2s_access: s2s\n",
    )
    .await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    alice
        .send("<message to='bob@b.test' id='d1'><body>let me in</body></message>")
        .await;
    let e = alice.until("</message>").await;
    assert!(
        e.contains("id='d1'") && e.contains("remote-server-not-found"),
        "{e}"
    );
    let mut raw = Raw::connect(b.s2s).await;
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>").await;
    let r = raw.until_closed().await;
    assert!(r.contains("<policy-violation"), "{r}");
    a.stop().await;
    b.stop().await;
}

/// A peer that authenticated as raw.test by dialback (the test answers
/// b.test's verification as raw.test's authoritative server) may send from
/// raw.test; a stanza from another domain closes the stream with invalid-from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_from_is_refused() {
    let auth = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let auth_addr = auth.local_addr().expect("addr");
    let verifier = tokio::spawn(async move {
        let (s, _) = auth.accept().await.expect("accept");
        let mut v = Raw {
            s,
            buf: String::new(),
        };
        v.until("<stream:stream").await;
        v.until(">").await;
        v.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='raw.test' id='v1' version='1.0'><stream:features/>").await;
        v.until("<db:verify").await;
        let rest = v.until("</db:verify>").await;
        assert!(
            rest.contains("from='b.test'") && rest.contains("to='raw.test'"),
            "{rest}"
        );
        let id_start = rest.find("id='").expect("id") + 4;
        let id = &rest[id_start..id_start + rest[id_start..].find('\'').expect("quote")];
        v.send(&format!(
            "<db:verify from='raw.test' to='b.test' id='{id}' type='valid'/>"
        ))
        .await;
        let _ = v.s.read(&mut [0u8; 64]).await;
    });
    let b = node(
        "b.test",
        free_port(),
        &format!("s2s_hosts:\n  raw.test: '{auth_addr}'\n"),
        "",
    )
    .await;
    b.add_user("bob", "b.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    let mut raw = Raw::connect(b.s2s).await;
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='raw.test' to='b.test' version='1.0'>").await;
    let f = raw.until("</stream:features>").await;
    assert!(f.contains("urn:xmpp:features:dialback"), "{f}");
    raw.send("<db:result from='raw.test' to='b.test'>0123abcd</db:result>")
        .await;
    let r = raw.until("/>").await;
    assert!(r.contains("type='valid'"), "{r}");
    raw.send(
        "<message from='eve@raw.test/x' to='bob@b.test' type='chat'><body>legit</body></message>",
    )
    .await;
    let m = bob.until("legit</body>").await;
    assert!(m.contains("from='eve@raw.test/x'"), "{m}");
    raw.send(
        "<message from='mallory@a.test' to='bob@b.test' type='chat'><body>spoof</body></message>",
    )
    .await;
    let r = raw.until_closed().await;
    assert!(r.contains("<invalid-from"), "{r}");
    // Nothing of the spoofed message reached bob.
    bob.send("<iq to='b.test' type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = bob.until("id='p2'").await;
    assert!(!next.contains("spoof"), "{next}");
    verifier.await.expect("verifier");
    b.stop().await;
}

/// Several domain pairs on one incoming stream (XEP-0220 §2.5): raw.test
/// authenticates to b.test, then to c.test (served by the same instance) on
/// the same stream; a wrong key gets a `forbidden` dialback error for that
/// pair only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_domain_pairs_on_one_stream() {
    let auth = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let auth_addr = auth.local_addr().expect("addr");
    // raw.test's authoritative server: valid only for the key "k-good".
    let verifier = tokio::spawn(async move {
        for _ in 0..3 {
            let (s, _) = auth.accept().await.expect("accept");
            tokio::spawn(async move {
                let mut v = Raw {
                    s,
                    buf: String::new(),
                };
                v.until("<stream:stream").await;
                v.until(">").await;
                v.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='raw.test' id='v1' version='1.0'><stream:features/>").await;
                v.until("<db:verify").await;
                let rest = v.until("</db:verify>").await;
                let attr = |name: &str| {
                    let start = rest.find(&format!("{name}='")).expect("attr") + name.len() + 2;
                    rest[start..start + rest[start..].find('\'').expect("quote")].to_string()
                };
                let t = if rest.contains(">k-good<") {
                    "valid"
                } else {
                    "invalid"
                };
                v.send(&format!(
                    "<db:verify from='raw.test' to='{}' id='{}' type='{t}'/>",
                    attr("from"),
                    attr("id")
                ))
                .await;
                let _ = v.s.read(&mut [0u8; 64]).await;
            });
        }
    });
    let b = node(
        "b.test, c.test",
        free_port(),
        &format!("s2s_hosts:\n  raw.test: '{auth_addr}'\n"),
        "",
    )
    .await;
    b.add_user("carol", "c.test").await;
    let mut carol = online(b.c2s, "carol", "c.test").await;
    let mut raw = Raw::connect(b.s2s).await;
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='raw.test' to='b.test' version='1.0'>").await;
    raw.until("</stream:features>").await;
    raw.send("<db:result from='raw.test' to='b.test'>k-good</db:result>")
        .await;
    let r = raw.until("/>").await;
    assert!(
        r.contains("to='raw.test'") && r.contains("type='valid'") && r.contains("from='b.test'"),
        "{r}"
    );
    // A bogus key for a further pair: a <forbidden/> dialback error, which
    // keeps the pair already validated (XEP-0220 §2.2.1).
    raw.send("<db:result from='raw.test' to='c.test'>k-bad</db:result>")
        .await;
    let r = raw.until("</db:result>").await;
    assert!(
        r.contains("from='c.test'") && r.contains("type='error'") && r.contains("<forbidden"),
        "{r}"
    );
    raw.send("<db:result from='raw.test' to='c.test'>k-good</db:result>")
        .await;
    let r = raw.until("/>").await;
    assert!(
        r.contains("from='c.test'") && r.contains("type='valid'"),
        "{r}"
    );
    raw.send(
        "<message from='eve@raw.test/x' to='carol@c.test' type='chat'><body>to c</body></message>",
    )
    .await;
    let m = carol.until("to c</body>").await;
    assert!(m.contains("from='eve@raw.test/x'"), "{m}");
    // A pair to a domain not served here is refused in dialback.
    raw.send("<db:result from='raw.test' to='elsewhere.test'>k-good</db:result>")
        .await;
    let r = raw.until("</db:result>").await;
    assert!(
        r.contains("type='error'") && r.contains("item-not-found"),
        "{r}"
    );
    verifier.await.expect("verifier");
    b.stop().await;
}

/// A component connects with the handshake, is listed in the host's
/// disco#items, receives a message for its subdomain and answers; a wrong
/// secret and a second component for the same domain are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_component() {
    let a = node(
        "a.test",
        free_port(),
        "",
        "  - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_service\n    hosts:\n      bot.a.test:\n        password: s3cret\n",
    )
    .await;
    a.add_user("alice", "a.test").await;
    let caddr = a.components[0];
    let open = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='bot.a.test'>";
    async fn handshake(addr: SocketAddr, open: &str, secret: &str) -> RawTcp {
        let mut c = Raw::connect(addr).await;
        c.send(open).await;
        let h = c.until("id='").await;
        assert!(h.contains("from='bot.a.test'"), "{h}");
        let id = c.until("'").await;
        let id = id.trim_end_matches('\'').to_string();
        c.until(">").await;
        let digest = hex_sha1(&format!("{id}{secret}"));
        c.send(&format!("<handshake>{digest}</handshake>")).await;
        c
    }
    let mut bad = handshake(caddr, open, "wrong").await;
    let r = bad.until_closed().await;
    assert!(r.contains("<not-authorized"), "{r}");
    let mut comp = handshake(caddr, open, "s3cret").await;
    comp.until("<handshake/>").await;
    let mut second = handshake(caddr, open, "s3cret").await;
    let r = second.until_closed().await;
    assert!(r.contains("<conflict"), "{r}");

    let mut alice = online(a.c2s, "alice", "a.test").await;
    alice
        .send("<iq to='a.test' type='get' id='di'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    let items = alice.until("</iq>").await;
    assert!(items.contains("jid='bot.a.test'"), "{items}");
    alice
        .send("<message to='echo@bot.a.test' type='chat' id='c1'><body>ping bot</body></message>")
        .await;
    let m = comp.until("ping bot</body>").await;
    assert!(m.contains("from='alice@a.test/r'"), "{m}");
    comp.send("<message from='echo@bot.a.test' to='alice@a.test/r' type='chat'><body>pong</body></message>")
        .await;
    let m = alice.until("pong</body>").await;
    assert!(m.contains("from='echo@bot.a.test'"), "{m}");
    alice.until("</message>").await;
    // A stanza from outside its domain closes its stream; the domain is free again.
    comp.send("<message from='x@a.test' to='alice@a.test/r'><body>forged</body></message>")
        .await;
    let r = comp.until_closed().await;
    assert!(r.contains("<invalid-from"), "{r}");
    alice
        .send("<message to='echo@bot.a.test' id='c2'><body>gone?</body></message>")
        .await;
    let e = alice.until("</message>").await;
    assert!(
        e.contains("id='c2'") && e.contains("type='error'") && e.contains("service-unavailable"),
        "{e}"
    );
    let _ = comp.s.shutdown().await;
    a.stop().await;
}

fn hex_sha1(s: &str) -> String {
    sha1::Sha1::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `palaver config check` warns about a host without a certificate other
/// servers can verify when federation is configured, and not without it.
#[test]
fn config_check_warns_about_s2s_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |listen: &str| {
        let path = dir.path().join("palaver.yml");
        std::fs::write(
            &path,
            format!(
                "hosts: [a.test]\ndata_dir: {d}/data\nlisten:\n  - port: 5222\n    module: c2s\n{listen}",
                d = dir.path().display()
            ),
        )
        .expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_palaver"))
            .args(["config", "check", "--config"])
            .arg(&path)
            .env_remove("PALAVER_CONFIG")
            .output()
            .expect("run palaver");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run("  - port: 5269\n    module: ejabberd_s2s_in\n");
    assert!(
        err.contains("warning: config key `hosts` (`a.test`): no certificate"),
        "{err}"
    );
    // Without an s2s listener there is no federation warning (the c2s one
    // about a generated self-signed certificate stays).
    let err = run("");
    assert!(!err.contains("config key `hosts` (`a.test`)"), "{err}");
    assert!(
        err.contains("config key `certfiles`: no certificate in `certfiles` covers host a.test"),
        "{err}"
    );
}

/// An authoritative server for `domain` that finds every dialback key
/// valid (the tests' peers are raw sockets claiming `domain`).
async fn lenient_authority(domain: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let auth = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = auth.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = auth.accept().await {
            tokio::spawn(async move {
                let mut v = Raw {
                    s,
                    buf: String::new(),
                };
                v.until("<stream:stream").await;
                v.until(">").await;
                v.send(&format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{domain}' id='v1' version='1.0'><stream:features/>")).await;
                v.until("<db:verify").await;
                let rest = v.until("</db:verify>").await;
                let attr = |name: &str| {
                    let start = rest.find(&format!("{name}='")).expect("attr") + name.len() + 2;
                    rest[start..start + rest[start..].find('\'').expect("quote")].to_string()
                };
                v.send(&format!(
                    "<db:verify from='{domain}' to='{}' id='{}' type='valid'/>",
                    attr("from"),
                    attr("id")
                ))
                .await;
                let _ = v.s.read(&mut [0u8; 64]).await;
            });
        }
    });
    (addr, task)
}

/// A raw stream to `node` from `from`, validated by dialback for the pair
/// (`from`, `to`).
async fn raw_authed(node: &Node, from: &str, to: &str) -> RawTcp {
    let mut raw = Raw::connect(node.s2s).await;
    raw.send(&format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>")).await;
    raw.until("</stream:features>").await;
    raw.send(&format!(
        "<db:result from='{from}' to='{to}'>any-key</db:result>"
    ))
    .await;
    let r = raw.until("/>").await;
    assert!(
        r.contains("type='valid'") && r.contains(&format!("from='{to}'")),
        "{r}"
    );
    raw
}

/// Every stanza on an incoming stream must belong to a validated domain
/// pair: x.test validated for b.test may write to b.test, not to c.test
/// (served by the same instance, never validated on that stream):
/// `invalid-from`; to a domain not served here: `host-unknown`; without a
/// `to`, or with a `from` that is no JID: `improper-addressing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_must_belong_to_a_validated_domain_pair() {
    let (auth_addr, authority) = lenient_authority("x.test").await;
    let b = node(
        "b.test, c.test",
        free_port(),
        &format!("s2s_hosts:\n  x.test: '{auth_addr}'\n"),
        "",
    )
    .await;
    b.add_user("bob", "b.test").await;
    b.add_user("carol", "c.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    let mut carol = online(b.c2s, "carol", "c.test").await;

    let mut raw = raw_authed(&b, "x.test", "b.test").await;
    raw.send(
        "<message from='eve@x.test/r' to='bob@b.test' type='chat'><body>pair ok</body></message>",
    )
    .await;
    let m = bob.until("pair ok</body>").await;
    assert!(m.contains("from='eve@x.test/r'"), "{m}");
    raw.send("<message from='eve@x.test/r' to='carol@c.test' type='chat'><body>unvalidated pair</body></message>")
        .await;
    let r = raw.until_closed().await;
    assert!(r.contains("<invalid-from"), "{r}");

    let mut raw = raw_authed(&b, "x.test", "b.test").await;
    raw.send(
        "<message from='eve@x.test/r' to='someone@elsewhere.test'><body>relay?</body></message>",
    )
    .await;
    let r = raw.until_closed().await;
    assert!(r.contains("<host-unknown"), "{r}");

    let mut raw = raw_authed(&b, "x.test", "b.test").await;
    raw.send("<message from='eve@x.test/r'><body>no to</body></message>")
        .await;
    let r = raw.until_closed().await;
    assert!(r.contains("<improper-addressing"), "{r}");

    let mut raw = raw_authed(&b, "x.test", "b.test").await;
    raw.send("<message from='@x.test' to='bob@b.test'><body>no jid</body></message>")
        .await;
    let r = raw.until_closed().await;
    assert!(r.contains("<improper-addressing"), "{r}");

    // Nothing refused reached anyone.
    carol
        .send("<iq to='c.test' type='get' id='p3'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = carol.until("id='p3'").await;
    assert!(!next.contains("unvalidated pair"), "{next}");
    bob.send("<iq to='b.test' type='get' id='p4'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = bob.until("id='p4'").await;
    assert!(
        !next.contains("no to") && !next.contains("no jid"),
        "{next}"
    );
    authority.abort();
    b.stop().await;
}

/// One instance serves a.test and c.test; both write to b.test: the
/// stream a.test opened carries c.test too (XEP-0220 §2.5.1 sender
/// multiplexing, c.test validated by its own `<db:result/>` on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_share_one_outgoing_stream() {
    let (pa, pb) = (free_port(), free_port());
    let a = node(
        "a.test, c.test",
        pa,
        &format!("s2s_hosts:\n  b.test: '127.0.0.1:{pb}'\n"),
        "",
    )
    .await;
    let b = node(
        "b.test",
        pb,
        &format!("s2s_hosts:\n  a.test: '127.0.0.1:{pa}'\n  c.test: '127.0.0.1:{pa}'\n"),
        "",
    )
    .await;
    a.add_user("alice", "a.test").await;
    a.add_user("carol", "c.test").await;
    b.add_user("bob", "b.test").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    let mut carol = online(a.c2s, "carol", "c.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    alice
        .send("<message to='bob@b.test' type='chat' id='x1'><body>from a</body></message>")
        .await;
    let m = bob.until("from a</body>").await;
    assert!(m.contains("from='alice@a.test/r'"), "{m}");
    carol
        .send("<message to='bob@b.test' type='chat' id='x2'><body>from c</body></message>")
        .await;
    let m = bob.until("from c</body>").await;
    assert!(m.contains("from='carol@c.test/r'"), "{m}");
    assert_eq!(
        a.fed.out.connected(),
        [
            ("a.test".to_string(), "b.test".to_string()),
            ("c.test".to_string(), "b.test".to_string())
        ]
    );
    assert_eq!(a.fed.out.streams(), 1);
    assert_eq!(
        b.fed
            .incoming_count
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // And back to each.
    bob.send("<message to='carol@c.test/r' type='chat'><body>to c</body></message>")
        .await;
    carol.until("to c</body>").await;
    bob.send("<message to='alice@a.test/r' type='chat'><body>to a</body></message>")
        .await;
    alice.until("to a</body>").await;
    a.stop().await;
    b.stop().await;
}

/// A peer that answers a multiplexed `<db:result/>` with a dialback error:
/// that sender domain gets a stream of its own, its stanza is not lost,
/// and the first stream goes on for its domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_multiplexing_falls_back_to_a_stream_of_its_own() {
    let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer_addr = peer.local_addr().expect("addr");
    let a = node(
        "a.test, c.test",
        free_port(),
        &format!("s2s_hosts:\n  r.test: '{peer_addr}'\n"),
        "",
    )
    .await;
    a.add_user("alice", "a.test").await;
    a.add_user("carol", "c.test").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    let mut carol = online(a.c2s, "carol", "c.test").await;
    async fn accept(peer: &TcpListener, id: &str) -> (RawTcp, String) {
        let (s, _) = tokio::time::timeout(common::TIMEOUT, peer.accept())
            .await
            .expect("a connection in time")
            .expect("accept");
        let mut p = Raw {
            s,
            buf: String::new(),
        };
        p.until("<stream:stream").await;
        let h = p.until(">").await;
        p.send(&format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='r.test' id='{id}' version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>")).await;
        (p, h)
    }
    alice
        .send("<message to='x@r.test' id='f1'><body>one</body></message>")
        .await;
    let (mut p1, h) = accept(&peer, "s1").await;
    assert!(h.contains("from='a.test'"), "{h}");
    let r = p1.until("</db:result>").await;
    assert!(r.contains("from='a.test'"), "{r}");
    p1.send("<db:result from='r.test' to='a.test' type='valid'/>")
        .await;
    p1.until("one</body>").await;
    carol
        .send("<message to='x@r.test' id='f2'><body>two</body></message>")
        .await;
    let r = p1.until("</db:result>").await;
    assert!(
        r.contains("from='c.test'") && r.contains("to='r.test'"),
        "{r}"
    );
    p1.send("<db:result from='r.test' to='c.test' type='error'><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>")
        .await;
    let (mut p2, h) = accept(&peer, "s2").await;
    assert!(h.contains("from='c.test'"), "{h}");
    let r = p2.until("</db:result>").await;
    assert!(r.contains("from='c.test'"), "{r}");
    p2.send("<db:result from='r.test' to='c.test' type='valid'/>")
        .await;
    let m = p2.until("two</body>").await;
    assert!(m.contains("from='carol@c.test/r'"), "{m}");
    assert_eq!(a.fed.out.streams(), 2);
    alice
        .send("<message to='x@r.test' id='f3'><body>three</body></message>")
        .await;
    p1.until("three</body>").await;
    // Neither sender got an error.
    alice
        .send("<iq to='a.test' type='get' id='p5'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = alice.until("id='p5'").await;
    assert!(!next.contains("type='error'"), "{next}");
    carol
        .send("<iq to='c.test' type='get' id='p6'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = carol.until("id='p6'").await;
    assert!(!next.contains("type='error'"), "{next}");
    a.stop().await;
}

/// alice@a.test and bob@b.test in each other's rosters (subscribed both ways).
async fn befriend_across(a: &Node, b: &Node) {
    use palaver_storage::im::{RosterItem, Subscription};
    for (node, host, user, contact) in [
        (a, "a.test", "alice", "bob@b.test"),
        (b, "b.test", "bob", "alice@a.test"),
    ] {
        let mut it = RosterItem::new(contact);
        it.subscription = Subscription::Both;
        node.server
            .as_ref()
            .expect("running")
            .core
            .storage()
            .roster
            .put_roster_item(host, user, &it)
            .await
            .expect("roster item");
    }
}

const AVATAR: &str = "urn:xmpp:avatar:metadata";

fn avatar_publish(id: &str, item: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{AVATAR}'><item id='{item}'><metadata xmlns='{AVATAR}'><info bytes='12' id='{item}' height='64' width='64' type='image/png'/></metadata></item></publish></pubsub></iq>"
    )
}

/// XEP-0115 verification string of a client with these features.
fn caps_ver(name: &str, features: &[&str]) -> String {
    use base64::Engine;
    let mut f: Vec<&str> = features.to_vec();
    f.sort();
    let mut s = format!("client/pc//{name}<");
    for x in f {
        s.push_str(x);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// The value of attribute `name` in `s` (single quotes).
fn attr_of(s: &str, name: &str) -> String {
    let start = s.find(&format!(" {name}='")).expect("attribute") + name.len() + 3;
    s[start..start + s[start..].find('\'').expect("quote")].to_string()
}

/// XEP-0163 across federation: bob@b.test, alice's contact on another
/// server (one without PEP of its own), comes online with XEP-0115 caps
/// listing `AVATAR+notify`. a.test learns them from the presence it
/// receives for alice, asks bob's client itself (disco#info from a.test,
/// over s2s), then sends him alice's last avatar (XEP-0163 §4.3.4) and her
/// next publish. A contact's client without `+notify` gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_notifications_reach_remote_contacts_by_their_caps() {
    let (a, b) = pair(
        "",
        "modules:\n  mod_disco: {}\n  mod_roster: {}\n  mod_ping: {}\n",
    )
    .await;
    befriend_across(&a, &b).await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    alice.send(&avatar_publish("pub1", "first")).await;
    let r = alice.until("id='pub1'").await;
    let tail = alice.until(">").await;
    assert!(!format!("{r}{tail}").contains("type='error'"), "{r}{tail}");

    let name = "Remote client";
    let feats = [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/caps",
        "urn:xmpp:avatar:metadata+notify",
    ];
    let ver = caps_ver(name, &feats);
    let node_uri = "https://palaver.test/client";
    let mut bob = raw_login(b.c2s, "bob", "b.test", "pw", "r").await;
    bob.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{node_uri}' ver='{ver}'/></presence>"
    ))
    .await;
    // a.test asks bob's client what the verification string stands for.
    bob.until("<iq").await;
    let q = bob.until("</iq>").await;
    assert!(
        q.contains("from='a.test'")
            && q.contains("http://jabber.org/protocol/disco#info")
            && q.contains(&format!("node='{node_uri}#{ver}'")),
        "{q}"
    );
    let mut reply = format!(
        "<iq type='result' id='{}' to='a.test'><query xmlns='http://jabber.org/protocol/disco#info' node='{node_uri}#{ver}'><identity category='client' type='pc' name='{name}'/>",
        attr_of(&q, "id")
    );
    for f in feats {
        reply.push_str(&format!("<feature var='{f}'/>"));
    }
    reply.push_str("</query></iq>");
    bob.send(&reply).await;
    // The last item, then the next publish.
    let m = bob.until("</message>").await;
    assert!(
        m.contains("from='alice@a.test'")
            && m.contains("http://jabber.org/protocol/pubsub#event")
            && m.contains("id='first'"),
        "{m}"
    );
    alice.send(&avatar_publish("pub2", "second")).await;
    let m = bob.until("</message>").await;
    assert!(
        m.contains("from='alice@a.test'") && m.contains("id='second'"),
        "{m}"
    );
    // bob's second client, without +notify, gets no notification: after
    // a third publish, only its own ping answer comes.
    let mut bob2 = raw_login(b.c2s, "bob", "b.test", "pw", "r2").await;
    let ver2 = caps_ver("Plain client", &feats[..2]);
    bob2.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{node_uri}' ver='{ver2}'/></presence>"
    ))
    .await;
    bob2.until("<iq").await;
    let q = bob2.until("</iq>").await;
    assert!(q.contains("from='a.test'"), "{q}");
    bob2.send(&format!(
        "<iq type='result' id='{}' to='a.test'><query xmlns='http://jabber.org/protocol/disco#info' node='{node_uri}#{ver2}'><identity category='client' type='pc' name='Plain client'/><feature var='{}'/><feature var='{}'/></query></iq>",
        attr_of(&q, "id"),
        feats[0],
        feats[1]
    ))
    .await;
    alice.send(&avatar_publish("pub3", "third")).await;
    let m = bob.until("</message>").await;
    assert!(m.contains("id='third'"), "{m}");
    bob2.send("<iq to='a.test' type='get' id='p7'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = bob2.until("id='p7'").await;
    assert!(!next.contains("pubsub#event"), "{next}");
    a.stop().await;
    b.stop().await;
}

/// XEP-0280 across federation: a message from bob@b.test to one of
/// alice's resources is carbon-copied to her other carbons-enabled one,
/// and her reply to bob is copied as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_of_remote_conversations() {
    let (a, b) = pair("", "").await;
    befriend_across(&a, &b).await;
    let mut r1 = raw_login(a.c2s, "alice", "a.test", "pw", "r1").await;
    let mut r2 = raw_login(a.c2s, "alice", "a.test", "pw", "r2").await;
    for c in [&mut r1, &mut r2] {
        c.send("<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await;
        let r = c.until("id='cb'").await;
        let tail = c.until(">").await;
        assert!(format!("{r}{tail}").contains("type='result'"), "{r}{tail}");
        c.send("<presence/>").await;
    }
    let mut bob = online(b.c2s, "bob", "b.test").await;
    bob.send(
        "<message to='alice@a.test/r1' type='chat' id='c1'><body>to r1 from afar</body></message>",
    )
    .await;
    let m = r1.until("to r1 from afar</body>").await;
    assert!(m.contains("from='bob@b.test/r'"), "{m}");
    let c = r2.until("to r1 from afar</body>").await;
    assert!(
        c.contains("<received xmlns='urn:xmpp:carbons:2'") && c.contains("from='bob@b.test/r'"),
        "{c}"
    );
    r1.send("<message to='bob@b.test/r' type='chat' id='c2'><body>reply from r1</body></message>")
        .await;
    bob.until("reply from r1</body>").await;
    let c = r2.until("reply from r1</body>").await;
    assert!(c.contains("<sent xmlns='urn:xmpp:carbons:2'"), "{c}");
    a.stop().await;
    b.stop().await;
}

/// XEP-0313 across federation: alice's conversation with bob@b.test is
/// archived on a.test (both directions) and her query returns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_of_remote_conversations() {
    let (a, b) = pair(
        "modules:\n  mod_disco: {}\n  mod_roster: {}\n  mod_ping: {}\n  mod_stream_mgmt: {}\n  mod_mam: {}\n",
        "",
    )
    .await;
    befriend_across(&a, &b).await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    // With XEP-0198, alice's <a/> counts her message once it is archived.
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    alice.until("<enabled").await;
    alice
        .send("<message to='bob@b.test' type='chat' id='a1'><body>archived out</body></message><r xmlns='urn:xmpp:sm:3'/>")
        .await;
    alice.until("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    bob.until("archived out</body>").await;
    bob.send("<message to='alice@a.test' type='chat' id='b1'><body>archived in</body></message>")
        .await;
    alice.until("archived in</body>").await;
    // The received message is archived beside its delivery (no event
    // tells when): ask until it is there.
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    let mut n = 0;
    let all = loop {
        n += 1;
        alice
            .send(&format!("<iq type='set' id='q{n}'><query xmlns='urn:xmpp:mam:2' queryid='f1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field><field var='with'><value>bob@b.test</value></field></x></query></iq>"))
            .await;
        let mut all = alice.until(&format!("id='q{n}'")).await;
        all.push_str(&alice.until("</iq>").await);
        if all.contains("archived in</body>") || tokio::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Both directions. Their order is not checked: mod_mam gives a sent
    // message its archive id when its user_sent hook runs, after routing,
    // so a quick answer can get the earlier id.
    assert!(all.contains("archived out</body>"), "{all}");
    assert!(all.contains("archived in</body>"), "{all}");
    assert!(
        all.contains("queryid='f1'") && all.contains("from='bob@b.test/r'"),
        "{all}"
    );
    a.stop().await;
    b.stop().await;
}

/// Join and read up to the subject (the last thing a joiner gets).
async fn join_room(c: &mut RawTcp, room: &str, nick: &str) -> String {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    let mut got = c.until("<subject").await;
    got.push_str(&c.until("</message>").await);
    assert!(!got.contains("type='error'"), "{got}");
    got
}

/// A room of `owner` (instant, §10.1.2).
async fn instant_room(c: &mut RawTcp, room: &str, nick: &str) {
    join_room(c, room, nick).await;
    c.send(&format!("<iq type='set' id='inst' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>")).await;
    let r = c.until("id='inst'").await;
    let tail = c.until(">").await;
    assert!(format!("{r}{tail}").contains("type='result'"), "{r}{tail}");
}

/// XEP-0045 across federation: bob@b.test joins a room on
/// conference.a.test and alice joins one on conference.b.test; groupchat
/// messages go both ways in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_across_servers() {
    let (a, b) = pair("", "").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    room_exchange(
        &mut alice,
        &mut bob,
        "lobby@conference.a.test",
        "Alice",
        "Bob",
    )
    .await;
    room_exchange(
        &mut bob,
        &mut alice,
        "den@conference.b.test",
        "Bob",
        "Alice",
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// `owner` makes `room`; `guest` (of the other server) joins; a groupchat
/// message each way.
async fn room_exchange(
    owner: &mut RawTcp,
    guest: &mut RawTcp,
    room: &str,
    o_nick: &str,
    g_nick: &str,
) {
    instant_room(owner, room, o_nick).await;
    let j = join_room(guest, room, g_nick).await;
    assert!(j.contains(&format!("from='{room}/{o_nick}'")), "{j}");
    owner.until(&format!("from='{room}/{g_nick}'")).await;
    owner
        .send(&format!(
            "<message to='{room}' type='groupchat' id='g1'><body>welcome {g_nick}</body></message>"
        ))
        .await;
    let m = guest.until(&format!("welcome {g_nick}</body>")).await;
    assert!(
        m.contains(&format!("from='{room}/{o_nick}'")) && m.contains("type='groupchat'"),
        "{m}"
    );
    guest
        .send(&format!(
            "<message to='{room}' type='groupchat' id='g2'><body>thanks {o_nick}</body></message>"
        ))
        .await;
    let m = owner.until(&format!("thanks {o_nick}</body>")).await;
    assert!(m.contains(&format!("from='{room}/{g_nick}'")), "{m}");
    // The guest's own message comes back to it from the room (§7.4).
    guest.until(&format!("thanks {o_nick}</body>")).await;
}

/// A CA made here (`ca.pem`) and, for each name, `NAME.pem` with a
/// certificate it signed for the name and the key.
fn test_pki(names: &[&str]) -> tempfile::TempDir {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let pki = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Palaver test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    std::fs::write(pki.path().join("ca.pem"), ca_cert.pem()).expect("write");
    for d in names {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![d.to_string()]).expect("params");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).expect("sign");
        std::fs::write(
            pki.path().join(format!("{d}.pem")),
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .expect("write");
    }
    pki
}

/// Streams authenticated by SASL EXTERNAL carry one sender domain (RFC
/// 6120 §6.4.6): with certificates from a trusted CA for a.test and c.test
/// (served by one instance) and dialback off, each has its own stream to
/// b.test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_streams_are_not_multiplexed() {
    let pki = test_pki(&["a.test", "b.test", "c.test"]);
    let p = pki.path().display();
    let (pa, pb) = (free_port(), free_port());
    let a = node(
        "a.test, c.test",
        pa,
        &format!("s2s_use_starttls: required\ns2s_dialback: false\ns2s_cafile: {p}/ca.pem\ncertfiles:\n  - {p}/a.test.pem\n  - {p}/c.test.pem\ns2s_hosts:\n  b.test: '127.0.0.1:{pb}'\n"),
        "",
    )
    .await;
    let b = node(
        "b.test",
        pb,
        &format!("s2s_use_starttls: required\ns2s_dialback: false\ns2s_cafile: {p}/ca.pem\ncertfiles:\n  - {p}/b.test.pem\ns2s_hosts:\n  a.test: '127.0.0.1:{pa}'\n  c.test: '127.0.0.1:{pa}'\n"),
        "",
    )
    .await;
    a.add_user("alice", "a.test").await;
    a.add_user("carol", "c.test").await;
    b.add_user("bob", "b.test").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    let mut carol = online(a.c2s, "carol", "c.test").await;
    let mut bob = online(b.c2s, "bob", "b.test").await;
    alice
        .send("<message to='bob@b.test' type='chat'><body>over the stream of a</body></message>")
        .await;
    bob.until("over the stream of a</body>").await;
    carol
        .send("<message to='bob@b.test' type='chat'><body>over the stream of c</body></message>")
        .await;
    let m = bob.until("over the stream of c</body>").await;
    assert!(m.contains("from='carol@c.test/r'"), "{m}");
    assert_eq!(a.fed.out.streams(), 2);
    bob.send("<message to='carol@c.test/r' type='chat'><body>back to c</body></message>")
        .await;
    carol.until("back to c</body>").await;
    a.stop().await;
    b.stop().await;
}

/// XEP-0220 §2.1.1: a peer that answers our dialback key `invalid` gets
/// the queued stanzas bounced with `internal-server-error`; one that
/// answers a dialback error, with `remote-server-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_refusals_bounce_with_their_conditions() {
    let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer_addr = peer.local_addr().expect("addr");
    let a = node(
        "a.test",
        free_port(),
        &format!("s2s_hosts:\n  r.test: '{peer_addr}'\n  q.test: '{peer_addr}'\n"),
        "",
    )
    .await;
    a.add_user("alice", "a.test").await;
    let mut alice = online(a.c2s, "alice", "a.test").await;
    for (domain, answer, cond) in [
        ("r.test", "type='invalid'/>", "internal-server-error"),
        (
            "q.test",
            "type='error'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
            "remote-server-timeout",
        ),
    ] {
        alice
            .send(&format!(
                "<message to='x@{domain}' id='z-{domain}'><body>hi</body></message>"
            ))
            .await;
        let (s, _) = tokio::time::timeout(common::TIMEOUT, peer.accept())
            .await
            .expect("a connection in time")
            .expect("accept");
        let mut p = Raw {
            s,
            buf: String::new(),
        };
        p.until("<stream:stream").await;
        p.until(">").await;
        p.send(&format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{domain}' id='s1' version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>")).await;
        p.until("</db:result>").await;
        p.send(&format!("<db:result from='{domain}' to='a.test' {answer}"))
            .await;
        let e = alice.until("</message>").await;
        assert!(
            e.contains(&format!("id='z-{domain}'"))
                && e.contains("type='error'")
                && e.contains(cond),
            "{e}"
        );
    }
    a.stop().await;
}
