//! End-to-end tests of the c2s listener over raw TCP sockets: stream-level
//! errors for bad input (RFC 6120 §4.9, §11), SASL (§6), resource binding
//! (§7), stanza routing and stanza errors (§8, RFC 6121 §8.5), timeouts,
//! closing and shutdown.
//!
//! Every test starts its own server. Nothing sleeps: each step waits on a
//! socket event, bounded by the harness timeout. Negative checks ("this
//! resource got nothing") send a marker stanza over the same ordered path
//! afterwards and assert that the marker is the next thing received.

mod common;
use common::*;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use palaver_proto::sasl::{
    ScramClient, ScramCredentials, ScramHash, decode_sasl_payload, encode_sasl_payload,
};
use tokio::io::AsyncReadExt;

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A server with alice and bob on `localhost` and carol on `example.test`.
async fn server() -> TestServer {
    let srv = TestServer::start().await;
    add_users(&srv).await;
    srv
}

async fn add_users(srv: &TestServer) {
    srv.add_user("alice", DOMAIN, "pw-alice").await;
    srv.add_user("bob", DOMAIN, "pw-bob").await;
    srv.add_user("carol", DOMAIN2, "pw-carol").await;
}

async fn alice(srv: &TestServer, resource: &str) -> RawTcp {
    raw_login(srv.addr, "alice", DOMAIN, "pw-alice", resource).await
}

async fn bob(srv: &TestServer, resource: &str) -> RawTcp {
    raw_login(srv.addr, "bob", DOMAIN, "pw-bob", resource).await
}

/// The stream header without the XML declaration.
fn stream_open(to: &str) -> String {
    header(to)
        .strip_prefix("<?xml version='1.0'?>")
        .expect("header starts with the XML declaration")
        .to_string()
}

/// `<cond xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>`
fn stream_cond(cond: &str) -> String {
    format!("<{cond} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
}

/// `<cond xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>`
fn stanza_cond(cond: &str) -> String {
    format!("<{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>")
}

/// Checks the tail of a stream that the server closed: exactly one
/// `<stream:error/>` whose first child is one of `conds`, followed only by
/// the closing `</stream:stream>` tag.
fn assert_stream_error(out: &str, conds: &[&str]) {
    let start = out
        .find("<stream:error>")
        .unwrap_or_else(|| panic!("no <stream:error> (expected one of {conds:?}) in {out:?}"));
    let tail = &out[start..];
    assert!(
        conds
            .iter()
            .any(|c| tail.starts_with(&format!("<stream:error>{}", stream_cond(c)))),
        "expected a stream error with one of {conds:?}, got {tail:?}"
    );
    assert_eq!(out.matches("<stream:error>").count(), 1, "{out:?}");
    let end = tail
        .find("</stream:error>")
        .unwrap_or_else(|| panic!("unterminated stream error: {tail:?}"))
        + "</stream:error>".len();
    assert_eq!(
        tail[end..].trim(),
        "</stream:stream>",
        "the stream must be closed right after the error: {out:?}"
    );
}

/// Connects, optionally opens a stream, sends `data`; expects one of the
/// stream errors `conds`, the closing tag and EOF. When the stream was not
/// opened first, the server must still send its stream header before the
/// error (RFC 6120 §4.9.1.2).
async fn expect_rejected(srv: &TestServer, open: bool, data: &[u8], conds: &[&str]) -> String {
    let mut c = Raw::connect(srv.addr).await;
    if open {
        c.open(DOMAIN).await;
    }
    c.send_bytes(data).await;
    let out = c.until_closed().await;
    assert_stream_error(&out, conds);
    if !open {
        let err = out.find("<stream:error>").unwrap_or(0);
        assert!(
            out[..err].contains("<stream:stream"),
            "no stream header before the error: {out:?}"
        );
    }
    out
}

/// Like [`expect_rejected`] on an authenticated, bound session.
async fn expect_rejected_bound(c: &mut RawTcp, data: &[u8], conds: &[&str]) {
    c.send_bytes(data).await;
    let out = c.until_closed().await;
    assert_stream_error(&out, conds);
}

/// A new client can log in and get an answer from the server.
async fn assert_still_serving(srv: &TestServer) {
    let mut c = raw_login(srv.addr, "alice", DOMAIN, "pw-alice", "fresh").await;
    ping(&mut c, "alive").await;
}

/// Pings the server and expects the result as the next stanza.
async fn ping(c: &mut RawTcp, id: &str) {
    c.send(&format!(
        "<iq type='get' id='{id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let r = next_stanza(c).await;
    assert!(
        r.starts_with("<iq") && r.contains(&format!("id='{id}'")) && r.contains("type='result'"),
        "expected the ping result {id}, got {r}"
    );
}

/// End offset of the first complete top-level element in `buf` (or of a
/// stray end tag such as `</stream:stream>`).
fn complete_element(buf: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(off) = buf[i..].find('<') {
        let start = i + off;
        let end = start + buf[start..].find('>')?;
        let tag = &buf[start..=end];
        if tag.starts_with("</") {
            if depth <= 1 {
                return Some(end + 1);
            }
            depth -= 1;
        } else if tag.starts_with("<?") || tag.starts_with("<!") {
        } else if tag.ends_with("/>") {
            if depth == 0 {
                return Some(end + 1);
            }
        } else {
            depth += 1;
        }
        i = end + 1;
    }
    None
}

/// Reads more data; `false` on EOF.
async fn read_some(c: &mut RawTcp) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(TIMEOUT, c.s.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => false,
        Ok(Ok(n)) => {
            c.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
            true
        }
        Err(_) => panic!("timed out waiting for data; buffered {:?}", c.buf),
    }
}

/// The next complete top-level element received (the stream must be
/// positioned between elements).
async fn next_stanza(c: &mut RawTcp) -> String {
    loop {
        if let Some(n) = complete_element(&c.buf) {
            let s: String = c.buf.drain(..n).collect();
            return s.trim_start().to_string();
        }
        if !read_some(c).await {
            panic!(
                "connection closed while waiting for a stanza; got {:?}",
                c.buf
            );
        }
    }
}

/// The next received stanza that is not a presence.
async fn next_non_presence(c: &mut RawTcp) -> String {
    loop {
        let s = next_stanza(c).await;
        if !s.starts_with("<presence") {
            return s;
        }
    }
}

/// Sends initial presence with `priority` and waits for its echo.
async fn available(c: &mut RawTcp, priority: i8) {
    c.send(&format!(
        "<presence><priority>{priority}</priority></presence>"
    ))
    .await;
    let p = next_stanza(c).await;
    assert!(p.starts_with("<presence"), "expected own presence, got {p}");
}

/// Character data of a simple element such as `<challenge>..</challenge>`.
fn element_text(el: &str) -> &str {
    if el.ends_with("/>") {
        return "";
    }
    let start = el.find('>').map_or(0, |p| p + 1);
    let end = el.rfind("</").unwrap_or(el.len());
    &el[start..end]
}

fn plain_token(authzid: &str, user: &str, password: &str) -> String {
    B64.encode(format!("{authzid}\0{user}\0{password}"))
}

async fn send_auth(c: &mut RawTcp, mechanism: &str, payload: &str) -> String {
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>{payload}</auth>"
    ))
    .await;
    next_stanza(c).await
}

fn assert_sasl_failure(r: &str, cond: &str) {
    assert!(
        r.starts_with(&format!("<failure xmlns='{SASL_NS}'><{cond}/>")),
        "expected SASL failure <{cond}/>, got {r}"
    );
}

/// PLAIN with the right password on an open stream succeeds.
async fn plain_ok(c: &mut RawTcp) {
    let r = send_auth(c, "PLAIN", &plain_token("", "alice", "pw-alice")).await;
    assert!(r.starts_with("<success"), "{r}");
}

/// A SCRAM exchange on an open stream; `Ok(success)` or `Err(failure)`.
async fn scram(
    c: &mut RawTcp,
    mut client: ScramClient,
    check_server: bool,
) -> Result<String, String> {
    let mech = client.mechanism().name();
    let first = client.client_first();
    let ch = send_auth(c, mech, &encode_sasl_payload(&first)).await;
    if !ch.starts_with("<challenge") {
        return Err(ch);
    }
    let server_first = decode_sasl_payload(element_text(&ch)).expect("challenge is base64");
    let fin = client
        .handle_server_first(&server_first)
        .expect("valid server-first-message");
    c.send(&format!(
        "<response xmlns='{SASL_NS}'>{}</response>",
        encode_sasl_payload(&fin)
    ))
    .await;
    let r = next_stanza(c).await;
    if !r.starts_with("<success") {
        return Err(r);
    }
    if check_server {
        let additional = decode_sasl_payload(element_text(&r)).expect("success is base64");
        client
            .verify_server_final(&additional)
            .expect("server signature verifies");
    }
    Ok(r)
}

/// Mechanisms listed in a features element.
fn mechanisms(features: &str) -> Vec<String> {
    features
        .split("<mechanism>")
        .skip(1)
        .filter_map(|s| s.split("</mechanism>").next())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// 1-6: restricted and malformed XML
// ---------------------------------------------------------------------------

#[tokio::test]
async fn xml_comment_is_restricted_xml() {
    let srv = server().await;
    expect_rejected(&srv, true, b"<!-- hello -->", &["restricted-xml"]).await;
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><!-- inside --><body>x</body></message>",
        &["restricted-xml"],
    )
    .await;
    // In the prolog, before any stream header.
    let pre = format!("<?xml version='1.0'?><!-- c -->{}", stream_open(DOMAIN));
    expect_rejected(&srv, false, pre.as_bytes(), &["restricted-xml"]).await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn processing_instruction_is_restricted_xml() {
    let srv = server().await;
    expect_rejected(&srv, true, b"<?foo bar?>", &["restricted-xml"]).await;
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><?foo bar?></message>",
        &["restricted-xml"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn doctype_before_stream_is_rejected() {
    let srv = server().await;
    let data = format!(
        "<?xml version='1.0'?><!DOCTYPE foo [<!ENTITY x 'y'>]>{}",
        stream_open(DOMAIN)
    );
    expect_rejected(
        &srv,
        false,
        data.as_bytes(),
        &["restricted-xml", "not-well-formed"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn undeclared_entity_is_not_well_formed() {
    let srv = server().await;
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><body>&foo;</body></message>",
        &["not-well-formed"],
    )
    .await;
    // A character reference to a character XML forbids.
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><body>&#0;</body></message>",
        &["not-well-formed"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn mismatched_tags_are_not_well_formed() {
    let srv = server().await;
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><body>x</message>",
        &["not-well-formed"],
    )
    .await;
    expect_rejected(&srv, true, b"</iq>", &["not-well-formed"]).await;
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost' id='a' id='b'/>",
        &["not-well-formed"],
    )
    .await;
    expect_rejected(&srv, true, b"<undeclared:prefix/>", &["not-well-formed"]).await;
    // An element in the reserved xml namespace: forwarded, it could only be
    // written as a default namespace no parser accepts (found by fuzzing).
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><xml:x/><body>x</body></message>",
        &["not-well-formed"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn invalid_utf8_is_not_well_formed() {
    let srv = server().await;
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><body>\xff\xfe</body></message>",
        &["not-well-formed"],
    )
    .await;
    // Overlong encoding of '/'.
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost'><body>\xc0\xaf</body></message>",
        &["not-well-formed"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 7-9: limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversized_stanza_is_policy_violation() {
    let srv = server().await;
    let big = "x".repeat(70_000);
    // Complete.
    expect_rejected(
        &srv,
        true,
        format!("<message to='bob@localhost'><body>{big}</body></message>").as_bytes(),
        &["policy-violation"],
    )
    .await;
    // Never terminated: must be cut off without waiting for the end.
    expect_rejected(
        &srv,
        true,
        format!("<message to='bob@localhost'><body>{big}").as_bytes(),
        &["policy-violation"],
    )
    .await;
    // Many small tokens adding up over the limit.
    let children = "<x/>".repeat(20_000);
    expect_rejected(
        &srv,
        true,
        format!("<message to='bob@localhost'>{children}").as_bytes(),
        &["policy-violation"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn stanza_below_size_limit_is_delivered() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    let mut b = bob(&srv, "b").await;
    let body = "y".repeat(60_000);
    a.send(&format!(
        "<message to='bob@localhost/b' id='big'><body>{body}</body></message>"
    ))
    .await;
    let got = b.until("</message>").await;
    assert!(
        got.contains("id='big'") && got.contains(&body),
        "len {}",
        got.len()
    );
    ping(&mut a, "after-big").await;
    srv.stop().await;
}

fn nested(depth: usize, id: &str) -> String {
    // The message is depth 1; `depth - 1` nested children.
    let inner = depth - 1;
    format!(
        "<message to='bob@localhost/b' id='{id}'>{}{}</message>",
        "<x xmlns='urn:example:deep'>".repeat(inner),
        "</x>".repeat(inner)
    )
}

#[tokio::test]
async fn nesting_deeper_than_48_is_policy_violation() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    let mut b = bob(&srv, "b").await;
    // Exactly 48 levels is allowed.
    a.send(&nested(48, "deep48")).await;
    let got = b.until("</message>").await;
    assert!(got.contains("id='deep48'"), "{got}");
    // 49 is not.
    expect_rejected_bound(
        &mut a,
        nested(49, "deep49").as_bytes(),
        &["policy-violation"],
    )
    .await;
    // Pre-auth too.
    let deep = "<a>".repeat(60);
    expect_rejected(&srv, true, deep.as_bytes(), &["policy-violation"]).await;
    // Bob was not affected.
    ping(&mut b, "bob-alive").await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

fn with_attrs(n: usize, id: &str) -> String {
    let attrs: String = (0..n).map(|i| format!(" a{i}='{i}'")).collect();
    format!(
        "<message to='bob@localhost/b' id='{id}'><x xmlns='urn:example:attrs'{attrs}/></message>"
    )
}

#[tokio::test]
async fn more_than_64_attributes_is_policy_violation() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    let mut b = bob(&srv, "b").await;
    // 64 attributes are allowed.
    a.send(&with_attrs(64, "attrs64")).await;
    let got = next_stanza(&mut b).await;
    assert!(
        got.contains("id='attrs64'") && got.contains("a63='63'"),
        "{got}"
    );
    expect_rejected_bound(
        &mut a,
        with_attrs(65, "attrs65").as_bytes(),
        &["policy-violation"],
    )
    .await;
    ping(&mut b, "bob-alive").await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 10-12: stream header
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wrong_stream_namespace_is_invalid_namespace() {
    let srv = server().await;
    let h = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://wrong.example/streams' to='localhost' version='1.0'>";
    expect_rejected(&srv, false, h.as_bytes(), &["invalid-namespace"]).await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

/// RFC 6120 §4.9.3.10 / §4.8.2: a content namespace other than `jabber:client`
/// declared as the default namespace is `<invalid-namespace/>`.
#[tokio::test]
async fn wrong_content_namespace_is_invalid_namespace() {
    let srv = server().await;
    let h = "<?xml version='1.0'?><stream:stream xmlns='urn:example:bogus' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    expect_rejected(&srv, false, h.as_bytes(), &["invalid-namespace"]).await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn unknown_host_is_host_unknown() {
    let srv = server().await;
    expect_rejected(
        &srv,
        false,
        header("unknown.example").as_bytes(),
        &["host-unknown"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn stream_header_answers_for_requested_host() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN2).await;
    assert!(
        f.contains("from='example.test'") && f.contains("version='1.0'"),
        "{f}"
    );
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(f.contains("from='localhost'") && f.contains(" id='"), "{f}");
    srv.stop().await;
}

fn header_with_version(version: Option<&str>) -> String {
    let v = version
        .map(|v| format!(" version='{v}'"))
        .unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'{v}>"
    )
}

#[tokio::test]
async fn missing_or_old_version_is_unsupported_version() {
    let srv = server().await;
    for v in [None, Some("0.9"), Some("2.0")] {
        expect_rejected(
            &srv,
            false,
            header_with_version(v).as_bytes(),
            &["unsupported-version"],
        )
        .await;
    }
    // A higher minor version is fine; the server answers with 1.0.
    let mut c = Raw::connect(srv.addr).await;
    c.send(&header_with_version(Some("1.5"))).await;
    let f = c.until("</stream:features>").await;
    assert!(f.contains("version='1.0'"), "{f}");
    assert_still_serving(&srv).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 13-14: stanzas before authentication / binding
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stanza_before_auth_is_not_authorized() {
    let srv = server().await;
    expect_rejected(
        &srv,
        true,
        b"<message to='bob@localhost' type='chat'><body>hi</body></message>",
        &["not-authorized"],
    )
    .await;
    expect_rejected(&srv, true, b"<presence/>", &["not-authorized"]).await;
    expect_rejected(
        &srv,
        true,
        b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
        &["not-authorized"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn stanza_after_auth_before_bind_is_not_authorized() {
    let srv = server().await;
    for stanza in [
        "<message to='bob@localhost' type='chat'><body>hi</body></message>",
        "<presence/>",
        "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
    ] {
        let mut c = Raw::connect(srv.addr).await;
        c.open(DOMAIN).await;
        plain_ok(&mut c).await;
        let f = c.open(DOMAIN).await;
        assert!(
            f.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'"),
            "{f}"
        );
        c.send(stanza).await;
        let out = c.until_closed().await;
        assert_stream_error(&out, &["not-authorized"]);
    }
    assert_still_serving(&srv).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 15: connection churn
// ---------------------------------------------------------------------------

#[tokio::test]
async fn many_aborted_connections_do_not_hurt() {
    // 200 unauthenticated connections from one address: above the default
    // cap, which tests/hardening.rs covers.
    let srv = TestServer::start_with("    max_unauthenticated_per_ip: 1000\n", "").await;
    add_users(&srv).await;
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut c = Raw::connect(srv.addr).await;
        match i % 4 {
            // Half: a partial header.
            0 | 1 => {
                c.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:st")
                    .await
            }
            // A quarter: a full header.
            2 => c.send(&header(DOMAIN)).await,
            // A quarter: nothing at all.
            _ => {}
        }
        conns.push((i, c));
    }
    // The full headers were all answered while everything else was open.
    for (i, c) in conns.iter_mut() {
        if *i % 4 == 2 {
            c.until("</stream:features>").await;
        }
    }
    drop(conns);
    let mut a = alice(&srv, "a").await;
    let mut b = bob(&srv, "b").await;
    a.send("<message to='bob@localhost/b' type='chat' id='after-churn'><body>still here</body></message>")
        .await;
    let got = next_stanza(&mut b).await;
    assert!(
        got.contains("id='after-churn'")
            && got.contains("still here")
            && got.contains("from='alice@localhost/a'"),
        "{got}"
    );
    b.send("<message to='alice@localhost/a' type='chat' id='reply'><body>pong</body></message>")
        .await;
    let got = next_stanza(&mut a).await;
    assert!(got.contains("id='reply'"), "{got}");
    assert_eq!(srv.core().sessions().count(), 2);
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 16: SASL
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sasl_mechanisms_without_tls() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    let mechs = mechanisms(&f);
    for m in ["SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        assert!(mechs.iter().any(|x| x == m), "{m} missing from {mechs:?}");
    }
    assert!(
        !mechs.iter().any(|m| m.ends_with("-PLUS")),
        "-PLUS offered without TLS: {mechs:?}"
    );
    assert!(!f.contains("sasl-channel-binding"), "{f}");
    // Asking for a -PLUS mechanism anyway is refused.
    let mut client = ScramClient::new(
        ScramHash::Sha256,
        "alice",
        "pw-alice",
        Some((
            palaver_proto::sasl::ChannelBindingType::TlsExporter,
            vec![0; 32],
        )),
    );
    let first = client.client_first();
    let r = send_auth(&mut c, "SCRAM-SHA-256-PLUS", &encode_sasl_payload(&first)).await;
    assert_sasl_failure(&r, "invalid-mechanism");
    srv.stop().await;
}

#[tokio::test]
async fn sasl_plain_wrong_password_then_retry() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let r = send_auth(&mut c, "PLAIN", &plain_token("", "alice", "wrong")).await;
    assert_sasl_failure(&r, "not-authorized");
    // Unknown user: the same answer.
    let r = send_auth(&mut c, "PLAIN", &plain_token("", "nobody", "wrong")).await;
    assert_sasl_failure(&r, "not-authorized");
    // RFC 6120 §6.4.5: the client may retry on the same stream.
    plain_ok(&mut c).await;
    c.open(DOMAIN).await;
    assert_eq!(c.bind("r").await, "alice@localhost/r");
    srv.stop().await;
}

#[tokio::test]
async fn sasl_unknown_mechanism_is_invalid_mechanism() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let r = send_auth(&mut c, "X-UNKNOWN", "=").await;
    assert_sasl_failure(&r, "invalid-mechanism");
    c.send(&format!("<auth xmlns='{SASL_NS}'/>")).await;
    let r = next_stanza(&mut c).await;
    assert_sasl_failure(&r, "invalid-mechanism");
    plain_ok(&mut c).await;
    srv.stop().await;
}

#[tokio::test]
async fn sasl_bad_base64_is_incorrect_encoding() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let r = send_auth(&mut c, "PLAIN", "!!!not*base64!!!").await;
    assert_sasl_failure(&r, "incorrect-encoding");
    // Also in a <response/>.
    let r = send_auth(&mut c, "PLAIN", "").await;
    assert!(r.starts_with("<challenge"), "{r}");
    c.send(&format!("<response xmlns='{SASL_NS}'>%%%</response>"))
        .await;
    let r = next_stanza(&mut c).await;
    assert_sasl_failure(&r, "incorrect-encoding");
    plain_ok(&mut c).await;
    srv.stop().await;
}

#[tokio::test]
async fn sasl_plain_authzid_of_another_user_is_invalid_authzid() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let r = send_auth(
        &mut c,
        "PLAIN",
        &plain_token("bob@localhost", "alice", "pw-alice"),
    )
    .await;
    assert_sasl_failure(&r, "invalid-authzid");
    // The user's own bare JID as authzid is fine (RFC 6120 §6.3.8).
    let r = send_auth(
        &mut c,
        "PLAIN",
        &plain_token("alice@localhost", "alice", "pw-alice"),
    )
    .await;
    assert!(r.starts_with("<success"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn sasl_plain_with_empty_initial_response() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    c.send(&format!("<auth xmlns='{SASL_NS}' mechanism='PLAIN'/>"))
        .await;
    let r = next_stanza(&mut c).await;
    assert!(r.starts_with("<challenge"), "{r}");
    c.send(&format!(
        "<response xmlns='{SASL_NS}'>{}</response>",
        plain_token("", "alice", "pw-alice")
    ))
    .await;
    let r = next_stanza(&mut c).await;
    assert!(r.starts_with("<success"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn sasl_abort_is_aborted() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let mut client = ScramClient::new(ScramHash::Sha256, "alice", "pw-alice", None);
    let first = client.client_first();
    let r = send_auth(&mut c, "SCRAM-SHA-256", &encode_sasl_payload(&first)).await;
    assert!(r.starts_with("<challenge"), "{r}");
    c.send(&format!("<abort xmlns='{SASL_NS}'/>")).await;
    let r = next_stanza(&mut c).await;
    assert_sasl_failure(&r, "aborted");
    // The exchange is over; a new one succeeds.
    plain_ok(&mut c).await;
    srv.stop().await;
}

#[tokio::test]
async fn sasl_five_failures_close_the_stream() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    for _ in 0..4 {
        let r = send_auth(&mut c, "PLAIN", &plain_token("", "alice", "wrong")).await;
        assert_sasl_failure(&r, "not-authorized");
    }
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{}</auth>",
        plain_token("", "alice", "wrong")
    ))
    .await;
    let out = c.until_closed().await;
    assert!(!out.contains("<success"), "{out}");
    assert_stream_error(&out, &["policy-violation"]);
    assert_still_serving(&srv).await;
    srv.stop().await;
}

async fn scram_login(hash: ScramHash, flag_y: bool) {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let mut client = ScramClient::new(hash, "alice", "pw-alice", None);
    if flag_y {
        client = client.with_gs2_flag_y();
    }
    scram(&mut c, client, true)
        .await
        .unwrap_or_else(|f| panic!("SCRAM-{} failed: {f}", hash.name()));
    c.open(DOMAIN).await;
    assert_eq!(c.bind("scram").await, "alice@localhost/scram");
    ping(&mut c, "scram-ping").await;
    srv.stop().await;
}

#[tokio::test]
async fn sasl_scram_sha256_login() {
    scram_login(ScramHash::Sha256, false).await;
}

#[tokio::test]
async fn sasl_scram_sha512_login() {
    scram_login(ScramHash::Sha512, false).await;
}

/// GS2 flag `y` (client supports channel binding, server offered none) is
/// valid when no -PLUS mechanism was advertised (RFC 5802 §6).
#[tokio::test]
async fn sasl_scram_with_gs2_flag_y_without_plus_offered() {
    scram_login(ScramHash::Sha256, true).await;
}

#[tokio::test]
async fn sasl_scram_wrong_password_is_not_authorized() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    for (hash, user) in [
        (ScramHash::Sha256, "alice"),
        (ScramHash::Sha512, "alice"),
        // Unknown user: a challenge all the same, then the same failure.
        (ScramHash::Sha256, "nobody"),
    ] {
        let client = ScramClient::new(hash, user, "wrong", None);
        let r = scram(&mut c, client, false).await;
        match r {
            Err(f) => assert_sasl_failure(&f, "not-authorized"),
            Ok(s) => panic!("wrong password accepted: {s}"),
        }
    }
    // And the right one still works on the same stream.
    let client = ScramClient::new(ScramHash::Sha512, "alice", "pw-alice", None);
    scram(&mut c, client, true).await.expect("login");
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 17: resource binding
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bind_returns_requested_resource_exactly() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    let jid = c
        .login_plain("alice", DOMAIN, "pw-alice", "Laptop Home 1")
        .await;
    assert_eq!(jid, "alice@localhost/Laptop Home 1");
    ping(&mut c, "p").await;
    srv.stop().await;
}

#[tokio::test]
async fn empty_bind_gets_generated_resource() {
    let srv = server().await;
    // A <bind/> without <resource/>.
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    plain_ok(&mut c).await;
    c.open(DOMAIN).await;
    c.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    let r = next_stanza(&mut c).await;
    assert!(r.contains("type='result'") && r.contains("id='b1'"), "{r}");
    let jid1 = element_text_of(&r, "jid");
    let res1 = jid1
        .strip_prefix("alice@localhost/")
        .unwrap_or_else(|| panic!("{jid1}"));
    assert!(!res1.is_empty(), "{r}");
    // An empty <resource/> element as well.
    let mut d = Raw::connect(srv.addr).await;
    d.open(DOMAIN).await;
    plain_ok(&mut d).await;
    d.open(DOMAIN).await;
    let jid2 = d.bind("").await;
    let res2 = jid2
        .strip_prefix("alice@localhost/")
        .unwrap_or_else(|| panic!("{jid2}"));
    assert!(!res2.is_empty());
    assert_ne!(res1, res2);
    ping(&mut c, "c").await;
    ping(&mut d, "d").await;
    srv.stop().await;
}

fn element_text_of(s: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = s
        .find(&open)
        .unwrap_or_else(|| panic!("no <{name}> in {s}"))
        + open.len();
    let end = s[start..].find(&close).expect("closing tag") + start;
    s[start..end].to_string()
}

#[tokio::test]
async fn bind_twice_and_bad_resource() {
    let srv = server().await;
    let mut c = alice(&srv, "a").await;
    // A second bind on the same stream (RFC 6120 §7.7.2.1: not-allowed).
    c.send("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>x</resource></bind></iq>").await;
    let r = next_stanza(&mut c).await;
    assert!(
        r.contains("type='error'")
            && r.contains("id='b2'")
            && r.contains(&stanza_cond("not-allowed")),
        "{r}"
    );
    // A resource longer than 1023 bytes cannot be bound (bad-request).
    let mut d = Raw::connect(srv.addr).await;
    d.open(DOMAIN).await;
    plain_ok(&mut d).await;
    d.open(DOMAIN).await;
    let long = "r".repeat(2000);
    d.send(&format!("<iq type='set' id='b3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{long}</resource></bind></iq>")).await;
    let r = next_stanza(&mut d).await;
    assert!(
        r.contains("type='error'")
            && r.contains("id='b3'")
            && r.contains(&stanza_cond("bad-request")),
        "{r}"
    );
    // The stream survives and can bind a valid resource.
    assert_eq!(d.bind("ok").await, "alice@localhost/ok");
    srv.stop().await;
}

#[tokio::test]
async fn resource_conflict_replaces_old_session() {
    let srv = server().await;
    let mut old = alice(&srv, "same").await;
    let mut new = alice(&srv, "same").await;
    let out = old.until_closed().await;
    assert_stream_error(&out, &["conflict"]);
    let mut b = bob(&srv, "b").await;
    b.send(
        "<message to='alice@localhost/same' type='chat' id='to-new'><body>hi new</body></message>",
    )
    .await;
    let got = next_stanza(&mut new).await;
    assert!(
        got.contains("id='to-new'") && got.contains("from='bob@localhost/b'"),
        "{got}"
    );
    ping(&mut new, "new-alive").await;
    assert_eq!(srv.core().sessions().count(), 2);
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 18: routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn message_to_nonexistent_user_is_service_unavailable() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("<message to='nobody@localhost' type='chat' id='nx1'><body>anyone?</body></message>")
        .await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.starts_with("<message")
            && r.contains("type='error'")
            && r.contains("id='nx1'")
            && r.contains("from='nobody@localhost'")
            && r.contains("to='alice@localhost/a'")
            && r.contains(&stanza_cond("service-unavailable")),
        "{r}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn iq_to_server_with_unknown_namespace_is_service_unavailable() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("<iq type='get' id='u1' to='localhost'><query xmlns='urn:example:unknown'/></iq>")
        .await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.starts_with("<iq")
            && r.contains("type='error'")
            && r.contains("id='u1'")
            && r.contains("from='localhost'")
            && r.contains(&stanza_cond("service-unavailable")),
        "{r}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn iq_result_and_error_to_server_get_no_reply() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("<iq type='result' id='r1' to='localhost'/>").await;
    a.send("<iq type='error' id='e1' to='localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>").await;
    a.send("<iq type='result' id='r2' to='localhost'><query xmlns='urn:example:unknown'/></iq>")
        .await;
    ping(&mut a, "p1").await;
    srv.stop().await;
}

/// RFC 6120 §8.2.3/§8.3.1: an IQ result or error to a full JID with no
/// session is dropped; only a request gets `service-unavailable`.
#[tokio::test]
async fn iq_result_and_error_to_absent_resource_get_no_reply() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("<iq type='result' id='r1' to='alice@localhost/gone'/>")
        .await;
    a.send("<iq type='error' id='e1' to='alice@localhost/gone'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>").await;
    a.send("<iq type='result' id='r2' to='nobody@localhost/gone'/>")
        .await;
    // A request over the same path is answered; it must be the first reply.
    a.send(
        "<iq type='get' id='g1' to='alice@localhost/gone'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.contains("id='g1'") && r.contains(&stanza_cond("service-unavailable")),
        "{r}"
    );
    ping(&mut a, "p1").await;
    srv.stop().await;
}

#[tokio::test]
async fn error_message_to_nonexistent_user_gets_no_reply() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("<message to='nobody@localhost' type='error' id='me1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>").await;
    a.send("<message to='nobody@localhost/res' type='error' id='me2'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>").await;
    // A normal message over the same path bounces; it must be the first reply.
    a.send("<message to='nobody@localhost' type='chat' id='m2'><body>x</body></message>")
        .await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.contains("id='m2'") && r.contains(&stanza_cond("service-unavailable")),
        "{r}"
    );
    ping(&mut a, "p1").await;
    srv.stop().await;
}

#[tokio::test]
async fn spoofed_from_is_rewritten() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    let mut b = bob(&srv, "b").await;
    a.send("<message from='mallory@evil.example/x' to='bob@localhost/b' type='chat' id='s1'><body>trust me</body></message>").await;
    let got = next_stanza(&mut b).await;
    assert!(
        got.contains("id='s1'")
            && got.contains("from='alice@localhost/a'")
            && !got.contains("mallory"),
        "{got}"
    );
    a.send("<message from='bob@localhost/b' to='bob@localhost/b' type='chat' id='s2'><body>me</body></message>").await;
    let got = next_stanza(&mut b).await;
    assert!(
        got.contains("id='s2'") && got.contains("from='alice@localhost/a'"),
        "{got}"
    );
    // An IQ reply carries the rewritten from as its to.
    a.send("<iq from='mallory@evil.example/x' type='get' id='s3' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.contains("id='s3'")
            && r.contains("type='result'")
            && r.contains("to='alice@localhost/a'"),
        "{r}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn message_to_other_local_host_is_delivered() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    let mut c = raw_login(srv.addr, "carol", DOMAIN2, "pw-carol", "c").await;
    a.send(
        "<message to='carol@example.test/c' type='chat' id='x1'><body>cross-host</body></message>",
    )
    .await;
    let got = next_stanza(&mut c).await;
    assert!(
        got.contains("id='x1'")
            && got.contains("from='alice@localhost/a'")
            && got.contains("cross-host"),
        "{got}"
    );
    c.send("<message to='alice@localhost/a' type='chat' id='x2'><body>back</body></message>")
        .await;
    let got = next_stanza(&mut a).await;
    assert!(
        got.contains("id='x2'") && got.contains("from='carol@example.test/c'"),
        "{got}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn message_to_unknown_remote_domain_is_remote_server_not_found() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("<message to='someone@remote.example' type='chat' id='rs1'><body>x</body></message>")
        .await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.contains("type='error'")
            && r.contains("id='rs1'")
            && r.contains(&stanza_cond("remote-server-not-found")),
        "{r}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn stanza_with_malformed_to_is_jid_malformed() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("<message to='a@b@c' type='chat' id='jm1'><body>x</body></message>")
        .await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.contains("type='error'")
            && r.contains("id='jm1'")
            && r.contains(&stanza_cond("jid-malformed")),
        "{r}"
    );
    srv.stop().await;
}

/// Alice sends a chat to bob's bare JID, then a marker to each full JID in
/// `markers`: every resource then sees either the chat or the marker first.
async fn chat_then_markers(a: &mut RawTcp, markers: &[&str]) {
    a.send("<message to='bob@localhost' type='chat' id='bare1'><body>to bare</body></message>")
        .await;
    for r in markers {
        a.send(&format!(
            "<message to='bob@localhost/{r}' type='chat' id='mark-{r}'><body>marker</body></message>"
        ))
        .await;
    }
}

#[tokio::test]
async fn bare_jid_chat_goes_to_highest_priority() {
    let srv = server().await;
    let mut b1 = bob(&srv, "b1").await;
    available(&mut b1, 5).await;
    let mut b2 = bob(&srv, "b2").await;
    available(&mut b2, 1).await;
    let mut a = alice(&srv, "a").await;
    chat_then_markers(&mut a, &["b1", "b2"]).await;
    let got = next_non_presence(&mut b1).await;
    assert!(got.contains("id='bare1'"), "{got}");
    let got = next_non_presence(&mut b1).await;
    assert!(got.contains("id='mark-b1'"), "{got}");
    let got = next_non_presence(&mut b2).await;
    assert!(
        got.contains("id='mark-b2'"),
        "priority 1 got the chat: {got}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn bare_jid_chat_goes_to_all_equal_top_priority() {
    let srv = server().await;
    let mut b1 = bob(&srv, "b1").await;
    available(&mut b1, 3).await;
    let mut b2 = bob(&srv, "b2").await;
    available(&mut b2, 3).await;
    let mut a = alice(&srv, "a").await;
    chat_then_markers(&mut a, &["b1", "b2"]).await;
    for b in [&mut b1, &mut b2] {
        let got = next_non_presence(b).await;
        assert!(got.contains("id='bare1'"), "{got}");
        let got = next_non_presence(b).await;
        assert!(got.contains("id='mark-"), "{got}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn negative_priority_gets_no_bare_jid_messages() {
    // Without offline storage, so the sender's error shows the routing decision.
    let srv = TestServer::start_with("", "modules:\n  mod_disco: {}\n  mod_ping: {}\n").await;
    add_users(&srv).await;
    let mut neg = bob(&srv, "neg").await;
    available(&mut neg, -1).await;
    let mut a = alice(&srv, "a").await;
    // Only a negative-priority resource: no available resource (RFC 6121
    // §8.5.2.1.1); without offline storage the sender gets an error.
    chat_then_markers(&mut a, &["neg"]).await;
    let got = next_non_presence(&mut neg).await;
    assert!(
        got.contains("id='mark-neg'"),
        "negative priority got: {got}"
    );
    let r = next_stanza(&mut a).await;
    assert!(
        r.contains("id='bare1'") && r.contains(&stanza_cond("service-unavailable")),
        "{r}"
    );
    // With a non-negative resource as well, that one gets it.
    let mut pos = bob(&srv, "pos").await;
    available(&mut pos, 0).await;
    chat_then_markers(&mut a, &["neg", "pos"]).await;
    let got = next_non_presence(&mut pos).await;
    assert!(got.contains("id='bare1'"), "{got}");
    let got = next_non_presence(&mut neg).await;
    assert!(
        got.contains("id='mark-neg'"),
        "negative priority got: {got}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn full_jid_to_offline_resource_goes_to_bare_jid() {
    let srv = server().await;
    let mut b1 = bob(&srv, "b1").await;
    available(&mut b1, 0).await;
    let mut a = alice(&srv, "a").await;
    a.send("<message to='bob@localhost/gone' type='chat' id='fj1'><body>one</body></message>")
        .await;
    let got = next_non_presence(&mut b1).await;
    assert!(
        got.contains("id='fj1'") && got.contains("from='alice@localhost/a'"),
        "{got}"
    );
    a.send("<message to='bob@localhost/gone' id='fj2'><body>two</body></message>")
        .await;
    let got = next_non_presence(&mut b1).await;
    assert!(got.contains("id='fj2'"), "{got}");
    // An IQ to an unavailable full JID is service-unavailable (RFC 6121 §8.5.3.2.2).
    a.send("<iq to='bob@localhost/gone' type='get' id='fi1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = next_stanza(&mut a).await;
    assert!(
        r.contains("id='fi1'")
            && r.contains("type='error'")
            && r.contains(&stanza_cond("service-unavailable")),
        "{r}"
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 19-21: timeouts, closing, shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unauthenticated_connection_times_out() {
    let srv = TestServer::start_with("    auth_timeout: 1\n", "").await;
    add_users(&srv).await;
    let mut opened = Raw::connect(srv.addr).await;
    opened.open(DOMAIN).await;
    let mut silent = Raw::connect(srv.addr).await;
    let out = opened.until_closed().await;
    assert_stream_error(&out, &["connection-timeout"]);
    let out = silent.until_closed().await;
    assert_stream_error(&out, &["connection-timeout"]);
    assert!(out.contains("<stream:stream"), "{out}");
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn client_close_is_answered_and_closed() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    a.send("</stream:stream>").await;
    let out = a.until_closed().await;
    assert_eq!(out.trim(), "</stream:stream>");
    // Before authentication too.
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    c.send("</stream:stream>").await;
    let out = c.until_closed().await;
    assert_eq!(out.trim(), "</stream:stream>");
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn fragmented_and_pipelined_input() {
    let srv = server().await;
    let mut b = bob(&srv, "b").await;
    let mut a = alice(&srv, "a").await;
    let msg = "<message to='bob@localhost/b' type='chat' id='frag'><body>split &amp; joined</body></message>";
    for chunk in msg.as_bytes().chunks(5) {
        a.send_bytes(chunk).await;
    }
    let got = next_stanza(&mut b).await;
    assert!(
        got.contains("id='frag'") && got.contains("split &amp; joined"),
        "{got}"
    );
    let burst: String = (0..3)
        .map(|i| format!("<message to='bob@localhost/b' type='chat' id='burst{i}'><body>{i}</body></message> "))
        .collect();
    a.send(&burst).await;
    for i in 0..3 {
        let got = next_stanza(&mut b).await;
        assert!(got.contains(&format!("id='burst{i}'")), "{got}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_sends_system_shutdown() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    let mut pre = Raw::connect(srv.addr).await;
    pre.open(DOMAIN).await;
    let stop = tokio::spawn(srv.stop());
    let out = a.until_closed().await;
    assert_stream_error(&out, &["system-shutdown"]);
    let out = pre.until_closed().await;
    assert_stream_error(&out, &["system-shutdown"]);
    tokio::time::timeout(TIMEOUT, stop)
        .await
        .expect("shutdown finishes")
        .expect("shutdown task");
}

// ---------------------------------------------------------------------------
// Further edge cases
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sasl_scram_authzid_of_another_user_is_invalid_authzid() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let client = ScramClient::new(ScramHash::Sha256, "alice", "pw-alice", None)
        .with_authzid("bob@localhost");
    match scram(&mut c, client, false).await {
        Err(f) => assert_sasl_failure(&f, "invalid-authzid"),
        Ok(s) => panic!("authorized as another user: {s}"),
    }
    let client = ScramClient::new(ScramHash::Sha256, "alice", "pw-alice", None)
        .with_authzid("alice@localhost");
    scram(&mut c, client, true).await.expect("own authzid");
    srv.stop().await;
}

/// The stream header is not a stanza, but it must not be a way around the
/// size limit either: an endless header is cut off like an endless stanza.
#[tokio::test]
async fn oversized_stream_header_is_policy_violation() {
    let srv = server().await;
    let attrs: String = (0..10_000).map(|i| format!(" a{i}='v'")).collect();
    let h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'{attrs}"
    );
    assert!(h.len() > 65_536);
    expect_rejected(&srv, false, h.as_bytes(), &["policy-violation"]).await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

/// RFC 6120 §5.3.1: TLS is negotiated before SASL; after authentication
/// STARTTLS is not offered and must not be accepted (§5.4.2.2: failure and close).
#[tokio::test]
async fn starttls_after_auth_is_refused() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(f.contains("<starttls"), "{f}");
    plain_ok(&mut c).await;
    let f = c.open(DOMAIN).await;
    assert!(!f.contains("<starttls"), "{f}");
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    let out = c.until_closed().await;
    assert!(!out.contains("<proceed"), "{out}");
    assert!(
        out.starts_with("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            || out.contains("<stream:error>"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("</stream:stream>"), "{out}");
    assert_still_serving(&srv).await;
    srv.stop().await;
}

/// RFC 6121 §4.5.2 (and RFC 6120 §7.7.2.2): when a session ends for any
/// reason, including being replaced after a resource conflict, the server
/// sends unavailable presence on its behalf to the user's other available
/// resources.
#[tokio::test]
async fn replaced_session_broadcasts_unavailable() {
    let srv = server().await;
    let mut other = alice(&srv, "other").await;
    available(&mut other, 0).await;
    let mut old = alice(&srv, "x").await;
    available(&mut old, 0).await;
    let p = next_stanza(&mut other).await;
    assert!(
        p.starts_with("<presence")
            && p.contains("from='alice@localhost/x'")
            && !p.contains("unavailable"),
        "{p}"
    );
    let _new = alice(&srv, "x").await;
    let out = old.until_closed().await;
    assert_stream_error(&out, &["conflict"]);
    // Anything the old session caused is queued before this marker.
    let mut b = bob(&srv, "b").await;
    b.send("<message to='alice@localhost/other' type='chat' id='mark'><body>m</body></message>")
        .await;
    let mut seen = Vec::new();
    loop {
        let s = next_stanza(&mut other).await;
        if s.contains("id='mark'") {
            break;
        }
        seen.push(s);
    }
    assert!(
        seen.iter().any(|s| s.starts_with("<presence")
            && s.contains("type='unavailable'")
            && s.contains("from='alice@localhost/x'")),
        "no unavailable presence for the replaced session; got {seen:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn unsupported_top_level_element_is_unsupported_stanza_type() {
    let srv = server().await;
    let mut a = alice(&srv, "a").await;
    expect_rejected_bound(
        &mut a,
        b"<foo xmlns='urn:example:foo'/>",
        &["unsupported-stanza-type"],
    )
    .await;
    let mut a = alice(&srv, "a").await;
    expect_rejected_bound(&mut a, b"<foo/>", &["unsupported-stanza-type"]).await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn garbage_before_header_is_not_well_formed() {
    let srv = server().await;
    let data = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n{}",
        header(DOMAIN)
    );
    expect_rejected(&srv, false, data.as_bytes(), &["not-well-formed"]).await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

/// Character data cannot start an XML document; a client speaking another
/// protocol (here HTTP, which never sends '<') must be told at once, not
/// left waiting until the authentication timeout.
#[tokio::test]
async fn http_request_gets_not_well_formed_at_once() {
    let srv = server().await;
    expect_rejected(
        &srv,
        false,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        &["not-well-formed"],
    )
    .await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

/// RFC 6120 §11.6 and §4.9.3.22: a stream declared in an encoding other
/// than UTF-8 is refused with `<unsupported-encoding/>`.
#[tokio::test]
async fn non_utf8_encoding_declaration_is_unsupported_encoding() {
    let srv = server().await;
    let data = format!(
        "<?xml version='1.0' encoding='ISO-8859-1'?>{}",
        stream_open(DOMAIN)
    );
    expect_rejected(&srv, false, data.as_bytes(), &["unsupported-encoding"]).await;
    // Declaring UTF-8 explicitly is fine.
    let mut c = Raw::connect(srv.addr).await;
    c.send(&format!(
        "<?xml version='1.0' encoding='UTF-8'?>{}",
        stream_open(DOMAIN)
    ))
    .await;
    c.until("</stream:features>").await;
    assert_still_serving(&srv).await;
    srv.stop().await;
}

/// Auth, stream restart and bind pipelined in one write; whitespace
/// keepalives between stanzas are harmless.
#[tokio::test]
async fn pipelined_login_and_keepalives() {
    let srv = server().await;
    let mut c = Raw::connect(srv.addr).await;
    c.send(&format!(
        "{}<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{}</auth>{}<iq type='set' id='pb'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>pipe</resource></bind></iq>",
        header(DOMAIN),
        plain_token("", "alice", "pw-alice"),
        stream_open(DOMAIN)
    ))
    .await;
    let r = c.until("</iq>").await;
    assert!(r.contains("<success"), "{r}");
    assert!(r.contains("<jid>alice@localhost/pipe</jid>"), "{r}");
    c.send(" \n \t ").await;
    ping(&mut c, "after-ws").await;
    c.send("\n").await;
    ping(&mut c, "after-nl").await;
    srv.stop().await;
}

/// An account imported with SCRAM-SHA-1 credentials only (ejabberd's
/// default): SCRAM-SHA-256 cannot work yet, PLAIN does and derives the
/// missing credentials, after which every SCRAM variant works.
#[tokio::test]
async fn sha1_only_account_gains_all_credentials_at_plain_login() {
    let srv = TestServer::start().await;
    let sha1 = ScramCredentials::generate(ScramHash::Sha1, "pw-old", 4096);
    srv.core()
        .storage()
        .accounts
        .create_account(DOMAIN, "olduser", &[sha1])
        .await
        .expect("create");
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let r = scram(
        &mut c,
        ScramClient::new(ScramHash::Sha256, "olduser", "pw-old", None),
        true,
    )
    .await;
    assert!(r.is_err(), "no SHA-256 credentials yet: {r:?}");
    drop(c);
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let r = send_auth(&mut c, "PLAIN", &plain_token("", "olduser", "pw-old")).await;
    assert!(r.starts_with("<success"), "{r}");
    drop(c);
    for hash in [ScramHash::Sha256, ScramHash::Sha512, ScramHash::Sha1] {
        let mut c = Raw::connect(srv.addr).await;
        c.open(DOMAIN).await;
        scram(
            &mut c,
            ScramClient::new(hash, "olduser", "pw-old", None),
            true,
        )
        .await
        .unwrap_or_else(|f| panic!("SCRAM-{} after upgrade: {f}", hash.name()));
    }
    // A wrong password derives nothing.
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let r = send_auth(&mut c, "PLAIN", &plain_token("", "olduser", "wrong")).await;
    assert_sasl_failure(&r, "not-authorized");
    srv.stop().await;
}

/// Authenticate as `user` and try to bind `resource`; the bind reply.
async fn try_bind(
    srv: &TestServer,
    user: &str,
    password: &str,
    resource: &str,
) -> (RawTcp, String) {
    use base64::Engine;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    assert!(c.until("/>").await.contains("<success"));
    c.open(DOMAIN).await;
    c.send(&format!("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
    let r = c.until("</iq>").await;
    (c, r)
}

/// ejabberd's `max_user_sessions` shaper rule: a bind beyond the limit gets
/// `resource-constraint` (RFC 6120 §7.6.2.1), replacing a resource does not
/// count, and logins of one account in parallel cannot overshoot it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_user_sessions_is_enforced_atomically() {
    let srv = TestServer::start_with("", "shaper_rules:\n  max_user_sessions: 2\n").await;
    add_users(&srv).await;
    let _a1 = alice(&srv, "r1").await;
    let _a2 = alice(&srv, "r2").await;
    let (_a3, r) = try_bind(&srv, "alice", "pw-alice", "r3").await;
    assert!(
        r.contains("type='error'") && r.contains(&stanza_cond("resource-constraint")),
        "{r}"
    );
    // The same resource again replaces the old session: allowed.
    let (_a1b, r) = try_bind(&srv, "alice", "pw-alice", "r1").await;
    assert!(r.contains("<jid>alice@localhost/r1</jid>"), "{r}");

    // Six logins of bob at once: exactly two get a resource.
    let names: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    let results =
        futures::future::join_all(names.iter().map(|n| try_bind(&srv, "bob", "pw-bob", n))).await;
    let bound = results.iter().filter(|(_, r)| r.contains("<jid>")).count();
    let refused = results
        .iter()
        .filter(|(_, r)| r.contains(&stanza_cond("resource-constraint")))
        .count();
    assert_eq!(
        (bound, refused),
        (2, 4),
        "{:?}",
        results.iter().map(|(_, r)| r).collect::<Vec<_>>()
    );
    srv.stop().await;
}

/// `mod_fail2ban`: after `c2s_max_auth_failures` wrong passwords from one
/// address, a new stream from it is refused with `policy-violation` (even
/// with the right password); other addresses are served.
#[tokio::test]
async fn failed_logins_ban_the_address() {
    use base64::Engine;
    let srv = TestServer::start_with(
        "",
        "modules:\n  mod_ping: {}\n  mod_fail2ban: {c2s_max_auth_failures: 3, c2s_auth_ban_lifetime: 60}\n",
    )
    .await;
    add_users(&srv).await;
    let wrong = base64::engine::general_purpose::STANDARD.encode("\0alice\0nope");
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    for _ in 0..3 {
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{wrong}</auth>"
        ))
        .await;
        assert!(c.until("</failure>").await.contains("not-authorized"));
    }
    // A new stream from the same address: refused before authentication.
    let mut c2 = Raw::connect(srv.addr).await;
    c2.send(&header(DOMAIN)).await;
    let r = c2.until_closed().await;
    assert!(
        r.contains("policy-violation") && r.contains("failed authentications"),
        "{r}"
    );
    // Another address is served.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let s = sock.connect(srv.addr).await.expect("connect");
    let mut other = Raw {
        s,
        buf: String::new(),
    };
    let jid = other
        .login_plain("alice", DOMAIN, "pw-alice", "elsewhere")
        .await;
    assert_eq!(jid, "alice@localhost/elsewhere");
    srv.stop().await;
}
