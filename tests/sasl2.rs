//! XEP-0388 SASL2 with XEP-0386 Bind 2 (carbons and stream management
//! enabled inline), inline XEP-0198 resumption, and XEP-0484 FAST tokens
//! (issued, used in one round trip, rotated, invalid after a password
//! change; the channel-bound variants, the replay counter, invalidation
//! and server-initiated rotation). RFC 6120 SASL stays as it was (the
//! other suites).
mod common;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use palaver_proto::sasl::{ScramClient, ScramHash};

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_roster: {}\n  mod_offline: {}\n  mod_stream_mgmt: {resume_timeout: 60}\n  mod_carboncopy: {}\n  mod_auth_fast: {}\n";
const AGENT: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let p = s.find(a)? + a.len();
    let e = s[p..].find(b)?;
    Some(&s[p..p + e])
}

fn ht(token: &str, label: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("key");
    mac.update(label);
    mac.finalize().into_bytes().to_vec()
}

fn user_agent(id: &str) -> String {
    format!(
        "<user-agent id='{id}'><software>TestClient</software><device>Phone</device></user-agent>"
    )
}

/// `<authenticate/>` with PLAIN and the given inline children; the answer.
async fn plain<S>(c: &mut Raw<S>, user: &str, pw: &str, inline: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.open(DOMAIN).await;
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{}</initial-response>{inline}</authenticate>",
        b64(format!("\0{user}\0{pw}").as_bytes())
    ))
    .await;
    answer(c).await
}

/// A FAST login (`HT-SHA-256-NONE`) with `token`; the answer.
async fn fast<S>(c: &mut Raw<S>, user: &str, token: &str, agent: &str, inline: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.open(DOMAIN).await;
    let mut resp = format!("{user}\0").into_bytes();
    resp.extend(ht(token, b"Initiator"));
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>{}<fast xmlns='urn:xmpp:fast:0'/>{inline}</authenticate>",
        b64(&resp),
        user_agent(agent)
    ))
    .await;
    answer(c).await
}

/// Read up to the end of `<success/>` or `<failure/>`.
async fn answer<S>(c: &mut Raw<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let r = tokio::time::timeout(TIMEOUT, async {
        loop {
            for end in ["</success>", "</failure>"] {
                if let Some(p) = c.buf.find(end) {
                    let out = c.buf[..p + end.len()].to_string();
                    c.buf.drain(..p + end.len());
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = c.s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "closed; got {:?}", c.buf);
            c.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("no answer; got {:?}", c.buf))
}

/// A FAST login attempt fails with `invalid-mechanism` (FAST is not
/// offered on this stream).
async fn fast_is_refused(c: &mut RawTcp) {
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>{}</authenticate>",
        b64(b"alice\0xx"),
        user_agent(AGENT)
    ))
    .await;
    let r = c.until("</failure>").await;
    assert!(r.contains("invalid-mechanism"), "{r}");
}

fn token_of(success: &str) -> String {
    between(success, " token='", "'")
        .unwrap_or_else(|| panic!("no token in {success}"))
        .to_string()
}

#[tokio::test]
async fn sasl2_bind2_inline_resumption_and_fast() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    bob.send("<presence/>").await;

    // Without TLS, FAST is neither offered nor accepted (XEP-0484 §8:
    // a token login seen on the wire could be replayed).
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(
        f.contains("<authentication xmlns='urn:xmpp:sasl:2'>") && !f.contains("urn:xmpp:fast:0"),
        "{f}"
    );
    fast_is_refused(&mut c).await;
    let ok = plain(
        &mut Raw::connect(srv.addr).await,
        "alice",
        "pw",
        &format!(
            "{}<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>",
            user_agent(AGENT)
        ),
    )
    .await;
    assert!(
        ok.contains("<success xmlns='urn:xmpp:sasl:2'>") && !ok.contains("token="),
        "no token without TLS: {ok}"
    );

    // Over TLS, the features: SASL2 with Bind 2 (carbons, SM), inline SM
    // and FAST.
    let mut c = tls(&srv, false).await;
    let f = c.open(DOMAIN).await;
    let auth = between(
        &f,
        "<authentication xmlns='urn:xmpp:sasl:2'>",
        "</authentication>",
    )
    .unwrap_or_else(|| panic!("{f}"));
    assert!(
        auth.contains("<mechanism>SCRAM-SHA-256</mechanism>"),
        "{auth}"
    );
    assert!(
        auth.contains("<bind xmlns='urn:xmpp:bind:0'><inline>")
            && auth.contains("<feature var='urn:xmpp:carbons:2'/>")
            && auth.contains("<feature var='urn:xmpp:sm:3'/>")
            && auth.contains("<sm xmlns='urn:xmpp:sm:3'/>")
            && auth.contains("<mechanism>HT-SHA-256-NONE</mechanism></fast>"),
        "{auth}"
    );
    // A wrong password is a SASL2 failure; the stream goes on.
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{}</initial-response></authenticate>",
        b64(b"\0alice\0wrong")
    ))
    .await;
    let r = c.until("</failure>").await;
    assert!(
        r.contains("<failure xmlns='urn:xmpp:sasl:2'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
        "{r}"
    );

    // SCRAM over SASL2 (challenge/response), binding inline with carbons
    // and stream management, asking for a FAST token.
    let mut scram = ScramClient::new(ScramHash::Sha256, "alice", "pw", None);
    let inline = format!(
        "{}<bind xmlns='urn:xmpp:bind:0'><tag>TestClient</tag><enable xmlns='urn:xmpp:carbons:2'/><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind><request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>",
        user_agent(AGENT)
    );
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'><initial-response>{}</initial-response>{inline}</authenticate>",
        b64(&scram.client_first())
    ))
    .await;
    let ch = c.until("</challenge>").await;
    assert!(ch.contains("<challenge xmlns='urn:xmpp:sasl:2'>"), "{ch}");
    let data =
        between(&ch, "<challenge xmlns='urn:xmpp:sasl:2'>", "</challenge>").expect("challenge");
    let fin = scram
        .handle_server_first(
            &base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("b64"),
        )
        .expect("server-first");
    c.send(&format!(
        "<response xmlns='urn:xmpp:sasl:2'>{}</response>",
        b64(&fin)
    ))
    .await;
    let ok = c.until("</success>").await;
    assert!(ok.contains("<success xmlns='urn:xmpp:sasl:2'>"), "{ok}");
    assert!(
        ok.contains("<additional-data>"),
        "SCRAM's server-final: {ok}"
    );
    let jid = between(
        &ok,
        "<authorization-identifier>",
        "</authorization-identifier>",
    )
    .expect("jid")
    .to_string();
    assert!(jid.starts_with("alice@localhost/TestClient."), "{jid}");
    assert!(ok.contains("<bound xmlns='urn:xmpp:bind:0'>"), "{ok}");
    let enabled = between(&ok, "<enabled xmlns='urn:xmpp:sm:3'", "/>").expect("sm enabled inline");
    assert!(enabled.contains("resume='true'"), "{ok}");
    let previd = between(enabled, "id='", "'").expect("sm id").to_string();
    let token1 = token_of(&ok);
    assert!(ok.contains("expiry='"), "{ok}");
    // No stream restart: the session is bound and used at once.
    c.send("<presence/>").await;
    c.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    c.until("id='p1'").await;
    // Carbons were enabled inline: what another resource sends is copied.
    let mut pc = raw_login(srv.addr, "alice", DOMAIN, "pw", "pc").await;
    pc.send("<message to='bob@localhost' type='chat' id='s1'><body>from pc</body></message>")
        .await;
    bob.until("from pc</body>").await;
    let copy = c.until("</sent>").await;
    assert!(
        copy.contains("<sent xmlns='urn:xmpp:carbons:2'>") && copy.contains("from pc"),
        "{copy}"
    );

    // The phone loses its connection; a message waits in the session.
    drop(c);
    let full: jid::FullJid = jid.parse().expect("jid");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !srv.core().sessions().get(&full).is_some_and(|h| h.detached) {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    bob.send(&format!(
        "<message to='{jid}' type='chat' id='w1'><body>while away</body></message>"
    ))
    .await;
    // FAST re-login with inline resumption: one round trip, the session
    // back with what came meanwhile.
    let mut c = tls(&srv, false).await;
    let ok = fast(
        &mut c,
        "alice",
        &token1,
        AGENT,
        &format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/><request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"),
    )
    .await;
    assert!(ok.contains("<success xmlns='urn:xmpp:sasl:2'>"), "{ok}");
    let additional = between(&ok, "<additional-data>", "</additional-data>").expect("server proof");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(additional)
            .expect("b64"),
        ht(&token1, b"Responder"),
        "the server proves it knows the token"
    );
    assert!(
        ok.contains(&format!(
            "<authorization-identifier>{jid}</authorization-identifier>"
        )),
        "{ok}"
    );
    assert!(ok.contains("<resumed xmlns='urn:xmpp:sm:3'"), "{ok}");
    let token2 = token_of(&ok);
    assert_ne!(token1, token2, "a new token each time one is asked for");
    c.until("while away</body>").await;
    c.send("<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    c.until("id='p2'").await;
    drop(c);

    // FAST with a bind: the newest token works; using it retires token1.
    let mut c = tls(&srv, false).await;
    let ok = fast(
        &mut c,
        "alice",
        &token2,
        AGENT,
        "<bind xmlns='urn:xmpp:bind:0'><tag>T</tag></bind>",
    )
    .await;
    assert!(
        ok.contains("<bound xmlns='urn:xmpp:bind:0'>") && ok.contains("alice@localhost/T."),
        "{ok}"
    );
    drop(c);
    let mut c = tls(&srv, false).await;
    let r = fast(&mut c, "alice", &token1, AGENT, "").await;
    assert!(r.contains("<not-authorized"), "rotated out: {r}");
    // Another client's id, a wrong token: refused.
    let mut c = tls(&srv, false).await;
    let r = fast(&mut c, "alice", &token2, "other-client", "").await;
    assert!(r.contains("<not-authorized"), "{r}");
    let mut c = tls(&srv, false).await;
    let r = fast(&mut c, "alice", "not-a-token", AGENT, "").await;
    assert!(r.contains("<not-authorized"), "{r}");

    // The stored tokens are not the tokens.
    let rows = palaver_modules::auth_fast::store::FastSql::new(srv.core().storage().db.clone())
        .list(DOMAIN, "alice", AGENT)
        .await
        .expect("rows");
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|r| r.hash != token2 && r.id != token2 && r.hash.len() == 64)
    );
    // A password change invalidates every token.
    let creds = palaver_server::auth::derive_all("new-pw", 4096);
    srv.core()
        .storage()
        .accounts
        .set_credentials(DOMAIN, "alice", &creds)
        .await
        .expect("new password");
    let mut c = tls(&srv, false).await;
    let r = fast(&mut c, "alice", &token2, AGENT, "").await;
    assert!(
        r.contains("<credentials-expired"),
        "a token from before the change is no longer trusted: {r}"
    );
    // The new password works over SASL2 without inline bind; the client
    // then binds the RFC 6120 way.
    let mut c = tls(&srv, false).await;
    let ok = plain(&mut c, "alice", "new-pw", "").await;
    assert!(
        ok.contains("<authorization-identifier>alice@localhost</authorization-identifier>"),
        "{ok}"
    );
    let bound = c.bind("classic").await;
    assert_eq!(bound, "alice@localhost/classic");
    srv.stop().await;
}

#[tokio::test]
async fn without_fast_nothing_is_offered() {
    let srv = TestServer::start_with("", "modules:\n  mod_disco: {}\n").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(
        f.contains("<authentication xmlns='urn:xmpp:sasl:2'>"),
        "{f}"
    );
    assert!(
        !f.contains("fast") && !f.contains("carbons") && !f.contains("urn:xmpp:sm:3"),
        "{f}"
    );
    fast_is_refused(&mut c).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Channel-bound FAST over direct TLS, the replay counter, invalidation and
// server-initiated rotation.
// ---------------------------------------------------------------------------

mod tlsutil;

type RawTls = Raw<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A direct-TLS connection trusting the test server's certificate; TLS 1.2
/// only when `tls12`.
async fn tls(srv: &TestServer, tls12: bool) -> RawTls {
    let cfg = if tls12 {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(srv.cert_path()).expect("pem") {
            roots.add(c.expect("cert")).expect("root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS12])
                .expect("tls 1.2")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    } else {
        tlsutil::client_config(&srv.cert_path(), &[b"xmpp-client"])
    };
    let s = tlsutil::connect(srv.tls_addr, DOMAIN, cfg)
        .await
        .expect("tls connect");
    Raw {
        s,
        buf: String::new(),
    }
}

/// The connection's `tls-exporter` value (RFC 9266), as the client sees it.
fn exporter(c: &RawTls) -> Vec<u8> {
    c.s.get_ref()
        .1
        .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
        .expect("exporter")
}

/// `tls-server-end-point` (RFC 5929): SHA-256 of the server certificate
/// (rcgen signs with ECDSA P-256 / SHA-256).
fn end_point(srv: &TestServer) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(srv.cert_path())
        .expect("pem")
        .next()
        .expect("a certificate")
        .expect("cert");
    sha2::Sha256::digest(der.as_ref()).to_vec()
}

fn ht_cb(token: &str, label: &[u8], cb: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("key");
    mac.update(label);
    mac.update(cb);
    mac.finalize().into_bytes().to_vec()
}

/// A FAST login with mechanism `mech`, the proof made with `cb`, the
/// `<fast/>` attributes `fast_attrs`; the answer.
async fn fast_with<S>(
    c: &mut Raw<S>,
    mech: &str,
    token: &str,
    cb: &[u8],
    fast_attrs: &str,
    inline: &str,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut resp = b"alice\0".to_vec();
    resp.extend(ht_cb(token, b"Initiator", cb));
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mech}'><initial-response>{}</initial-response>{}<fast xmlns='urn:xmpp:fast:0'{fast_attrs}/>{inline}</authenticate>",
        b64(&resp),
        user_agent(AGENT)
    ))
    .await;
    let end = |b: &str| {
        ["</success>", "</failure>"]
            .iter()
            .filter_map(|e| b.find(e).map(|p| p + e.len()))
            .min()
    };
    let r = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(p) = end(&c.buf) {
                let out = c.buf[..p].to_string();
                c.buf.drain(..p);
                return out;
            }
            use tokio::io::AsyncReadExt;
            let mut chunk = [0u8; 8192];
            let n = c.s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "closed; got {:?}", c.buf);
            c.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("no answer; got {:?}", c.buf))
}

/// PLAIN over SASL2 asking for a token for `mech`; the success.
async fn token_for<S>(c: &mut Raw<S>, mech: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{}</initial-response>{}<request-token xmlns='urn:xmpp:fast:0' mechanism='{mech}'/></authenticate>",
        b64(b"\0alice\0pw"),
        user_agent(AGENT)
    ))
    .await;
    c.until("</success>").await
}

fn fast_mechs(features: &str) -> Vec<String> {
    let f = between(features, "<fast xmlns='urn:xmpp:fast:0'>", "</fast>")
        .unwrap_or_else(|| panic!("no fast: {features}"));
    f.split("<mechanism>")
        .skip(1)
        .filter_map(|m| m.split("</mechanism>").next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn fast_channel_binding_count_and_invalidation() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;

    // TLS 1.3: tls-exporter and tls-server-end-point variants beside
    // NONE; never UNIQ (rustls has no tls-unique).
    let mut c = tls(&srv, false).await;
    let f = c.open(DOMAIN).await;
    assert_eq!(
        fast_mechs(&f),
        ["HT-SHA-256-EXPR", "HT-SHA-256-ENDP", "HT-SHA-256-NONE"],
        "{f}"
    );
    let ok = token_for(&mut c, "HT-SHA-256-EXPR").await;
    let expr_token = token_of(&ok);
    let first_exporter = exporter(&c);
    drop(c);

    // The EXPR token with this connection's exporter: in, and the server
    // proves it knows the token and the channel.
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let cb = exporter(&c);
    assert_ne!(cb, first_exporter, "a new connection, a new exporter");
    let ok = fast_with(&mut c, "HT-SHA-256-EXPR", &expr_token, &cb, "", "").await;
    assert!(ok.contains("<success xmlns='urn:xmpp:sasl:2'>"), "{ok}");
    let additional = between(&ok, "<additional-data>", "</additional-data>").expect("proof");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(additional)
            .expect("b64"),
        ht_cb(&expr_token, b"Responder", &cb)
    );
    assert!(!ok.contains("<token "), "not asked, not due: {ok}");
    drop(c);

    // A wrong channel binding (another connection's exporter, as a
    // man in the middle would relay it) is refused.
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let r = fast_with(
        &mut c,
        "HT-SHA-256-EXPR",
        &expr_token,
        &first_exporter,
        "",
        "",
    )
    .await;
    assert!(r.contains("<not-authorized"), "{r}");
    // The EXPR token without channel binding (NONE) is refused too: a
    // token is bound to its mechanism.
    let r = fast_with(&mut c, "HT-SHA-256-NONE", &expr_token, &[], "", "").await;
    assert!(r.contains("<not-authorized"), "{r}");
    // UNIQ is not offered: invalid-mechanism.
    let r = fast_with(&mut c, "HT-SHA-256-UNIQ", &expr_token, &[], "", "").await;
    assert!(r.contains("<invalid-mechanism"), "{r}");
    drop(c);

    // The replay counter: it must grow; a replayed count is refused and
    // so is one that is not a positive integer.
    for (count, good) in [
        ("1", true),
        ("1", false),
        ("3", true),
        ("2", false),
        ("4", true),
    ] {
        let mut c = tls(&srv, false).await;
        c.open(DOMAIN).await;
        let cb = exporter(&c);
        let r = fast_with(
            &mut c,
            "HT-SHA-256-EXPR",
            &expr_token,
            &cb,
            &format!(" count='{count}'"),
            "",
        )
        .await;
        if good {
            assert!(r.contains("<success"), "count {count}: {r}");
        } else {
            assert!(r.contains("<not-authorized"), "count {count} replayed: {r}");
        }
    }
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let cb = exporter(&c);
    let r = fast_with(
        &mut c,
        "HT-SHA-256-EXPR",
        &expr_token,
        &cb,
        " count='-5'",
        "",
    )
    .await;
    assert!(r.contains("<malformed-request"), "{r}");

    // Invalidation: the login works, no token comes back, and the token
    // is gone afterwards.
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let cb = exporter(&c);
    let ok = fast_with(
        &mut c,
        "HT-SHA-256-EXPR",
        &expr_token,
        &cb,
        " count='5' invalidate='true'",
        "",
    )
    .await;
    assert!(ok.contains("<success") && !ok.contains("<token "), "{ok}");
    drop(c);
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let cb = exporter(&c);
    let r = fast_with(
        &mut c,
        "HT-SHA-256-EXPR",
        &expr_token,
        &cb,
        " count='6'",
        "",
    )
    .await;
    assert!(r.contains("<not-authorized"), "invalidated: {r}");

    // tls-server-end-point: a token for ENDP, used over TLS 1.2 (where
    // there is no exporter, so EXPR is not offered). (Last: using it
    // retires this client's older tokens.)
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let endp_token = token_of(&token_for(&mut c, "HT-SHA-256-ENDP").await);
    drop(c);
    let mut c = tls(&srv, true).await;
    let f = c.open(DOMAIN).await;
    assert_eq!(
        fast_mechs(&f),
        ["HT-SHA-256-ENDP", "HT-SHA-256-NONE"],
        "TLS 1.2: {f}"
    );
    let r = fast_with(&mut c, "HT-SHA-256-EXPR", &expr_token, &[0; 32], "", "").await;
    assert!(r.contains("<invalid-mechanism"), "{r}");
    let r = fast_with(&mut c, "HT-SHA-256-ENDP", &endp_token, &[7; 32], "", "").await;
    assert!(r.contains("<not-authorized"), "wrong end point: {r}");
    let ok = fast_with(
        &mut c,
        "HT-SHA-256-ENDP",
        &endp_token,
        &end_point(&srv),
        "",
        "",
    )
    .await;
    assert!(ok.contains("<success xmlns='urn:xmpp:sasl:2'>"), "{ok}");
    drop(c);
    srv.stop().await;
}

/// `token_refresh_age: 0`: every FAST login rotates the token; the used
/// one stays valid until the new one is used (§3.5).
#[tokio::test]
async fn fast_server_rotation() {
    let modules = MODULES.replace("mod_auth_fast: {}", "mod_auth_fast: {token_refresh_age: 0}");
    let srv = TestServer::start_with("", &modules).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let t1 = token_of(&token_for(&mut c, "HT-SHA-256-NONE").await);
    drop(c);
    // Using t1: a new token t2 comes unasked.
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let ok = fast_with(&mut c, "HT-SHA-256-NONE", &t1, &[], "", "").await;
    let t2 = token_of(&ok);
    assert_ne!(t1, t2);
    drop(c);
    // The client never saw t2 (say): t1 still works, and a new t3
    // replaces the unused t2.
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let ok = fast_with(&mut c, "HT-SHA-256-NONE", &t1, &[], "", "").await;
    let t3 = token_of(&ok);
    drop(c);
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let r = fast_with(&mut c, "HT-SHA-256-NONE", &t2, &[], "", "").await;
    assert!(r.contains("<not-authorized"), "unused t2 replaced: {r}");
    // Using t3 retires t1.
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let ok = fast_with(&mut c, "HT-SHA-256-NONE", &t3, &[], "", "").await;
    assert!(ok.contains("<success"), "{ok}");
    drop(c);
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let r = fast_with(&mut c, "HT-SHA-256-NONE", &t1, &[], "", "").await;
    assert!(r.contains("<not-authorized"), "t1 retired: {r}");
    // At most two tokens are kept for a client.
    let rows = palaver_modules::auth_fast::store::FastSql::new(srv.core().storage().db.clone())
        .list(DOMAIN, "alice", AGENT)
        .await
        .expect("rows");
    assert!(rows.len() <= 2, "{rows:?}");
    srv.stop().await;
}

/// ejabberd's `disable_sasl_mechanisms`: a disabled mechanism is neither
/// offered nor accepted, over RFC 6120 SASL, SASL2 and FAST.
#[tokio::test]
async fn disabled_mechanisms_are_neither_offered_nor_accepted() {
    let modules =
        format!("disable_sasl_mechanisms: [plain, SCRAM-SHA-1, ht-sha-256-none]\n{MODULES}");
    let srv = TestServer::start_with("", &modules).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = tls(&srv, false).await;
    let f = c.open(DOMAIN).await;
    assert!(
        !f.contains("<mechanism>PLAIN</mechanism>")
            && !f.contains("<mechanism>SCRAM-SHA-1</mechanism>")
            && f.contains("<mechanism>SCRAM-SHA-256</mechanism>")
            && f.contains("<mechanism>SCRAM-SHA-1-PLUS</mechanism>"),
        "{f}"
    );
    assert_eq!(fast_mechs(&f), ["HT-SHA-256-EXPR", "HT-SHA-256-ENDP"]);
    // RFC 6120 SASL.
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        b64(b"\0alice\0pw")
    ))
    .await;
    let r = c.until("</failure>").await;
    assert!(r.contains("<invalid-mechanism/>"), "{r}");
    // SASL2, and a token request for a disabled FAST mechanism.
    let mut c = tls(&srv, false).await;
    let r = plain(&mut c, "alice", "pw", "").await;
    assert!(
        r.contains("<failure xmlns='urn:xmpp:sasl:2'>") && r.contains("<invalid-mechanism"),
        "{r}"
    );
    let mut c = tls(&srv, false).await;
    c.open(DOMAIN).await;
    let ok = fast_with(&mut c, "HT-SHA-256-NONE", "whatever", b"", "", "").await;
    assert!(ok.contains("<invalid-mechanism"), "{ok}");
    srv.stop().await;
}
