//! End-to-end tests with real client libraries: tokio-xmpp (STARTTLS and
//! plain TCP), and a hand-rolled client over rustls (direct TLS per XEP-0368
//! and STARTTLS) that runs every SASL mechanism, including the channel-binding
//! `-PLUS` variants, with `palaver_proto::sasl::ScramClient`.
//!
//! tokio-xmpp notes (version 6):
//! * `Client` reconnects forever on any failure (authentication errors and
//!   stream errors included) and never reports `Event::Disconnected`, so tests
//!   that need to observe a failure or the end of a stream drive tokio-xmpp's
//!   lower layers instead: a `ServerConnector`, `client_login` (its SASL
//!   negotiation) and its `XmppStream`.
//! * It picks the first of SCRAM-SHA-256, SCRAM-SHA-1, PLAIN offered by the
//!   server, as the `-PLUS` variant with `tls-exporter` when the TLS session
//!   is TLS 1.3. It has no SCRAM-SHA-512 and no `tls-server-end-point`; the raw
//!   client covers those.
//! * Its TLS connectors load their trust roots through rustls-native-certs,
//!   with no way to inject a `ClientConfig`, so the test certificates are
//!   trusted via `SSL_CERT_FILE` (see [`init`] and [`trust`]).

mod common;
use common::*;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use palaver_proto::sasl::{ChannelBindingType, ScramClient, ScramHash};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_xmpp::connect::{
    DnsConfig, ServerConnector, StartTlsServerConnector, TcpServerConnector,
};
use tokio_xmpp::error::AuthError;
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, InitiatingStream, ReadError, StreamHeader, Timeouts, XmlStream,
    XmppStreamElement,
};
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};
use xmpp_parsers::bind::{BindQuery, BindResponse};
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoInfoResult, DiscoItemsQuery, DiscoItemsResult};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ping::Ping;
use xmpp_parsers::presence::{self, Presence};
use xmpp_parsers::sasl::DefinedCondition as SaslCondition;
use xmpp_parsers::sasl_cb::Type as CbType;
use xmpp_parsers::stanza_error::DefinedCondition as StanzaCondition;
use xmpp_parsers::stream_error::DefinedCondition as StreamCondition;
use xmpp_parsers::stream_features::StreamFeatures;
use xmpp_parsers::time::{TimeQuery, TimeResult};
use xmpp_parsers::version::{VersionQuery, VersionResult};

const PASSWORD: &str = "correct horse";

// ---------------------------------------------------------------------------
// Test certificate trust for tokio-xmpp (process-global)
// ---------------------------------------------------------------------------

/// The PEM bundle `SSL_CERT_FILE` points at: the certificates of every
/// server started by this test binary.
fn trust_file() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("palaver-clients-trust-{}.pem", std::process::id()))
    })
}

/// Must be the first thing every test in this file does: points
/// `SSL_CERT_FILE` at [`trust_file`] exactly once.
fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let path = trust_file();
        let dir = path.parent().expect("parent");
        std::fs::create_dir_all(dir).expect("create tmp dir");
        prune_stale_trust_files(dir);
        std::fs::write(path, "").expect("create trust file");
        // SAFETY: `set_var` is only unsound when another thread reads the
        // environment concurrently without going through `std::env` (whose
        // accessors share a lock with `set_var`). This runs once, inside a
        // `Once`, and every test of this binary calls `init()` before doing
        // anything else, so the other test threads are either blocked on this
        // `Once` or still inside libtest / tokio runtime construction, which
        // read the environment only through `std::env`. No server, sqlite or
        // TLS code has run yet in this process at this point.
        unsafe { std::env::set_var("SSL_CERT_FILE", path) };
    });
}

/// Removes the bundles of earlier runs whose process is gone (Linux only:
/// liveness is checked in `/proc`).
fn prune_stale_trust_files(dir: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("palaver-clients-trust-"))
            .and_then(|n| n.split('.').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Adds `srv`'s self-signed certificates (one per host) to the bundle
/// tokio-xmpp trusts.
fn trust(srv: &TestServer) {
    static CERTS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = CERTS.lock().unwrap_or_else(PoisonError::into_inner);
    for host in [DOMAIN, DOMAIN2] {
        let path = srv.dir.path().join("certs").join(format!("{host}.pem"));
        let pem = std::fs::read_to_string(&path).expect("read server certificate");
        let start = pem.find(BEGIN).expect("certificate in PEM");
        let end = pem[start..].find(END).expect("certificate end") + start + END.len();
        certs.push(format!("{}\n", &pem[start..end]));
    }
    // Replace the file atomically: TLS connections of other tests read it
    // concurrently.
    let tmp = trust_file().with_extension(format!("pem.{}", certs.len()));
    std::fs::write(&tmp, certs.concat()).expect("write trust bundle");
    std::fs::rename(&tmp, trust_file()).expect("replace trust bundle");
}

async fn server() -> TestServer {
    server_with("").await
}

async fn server_with(modules: &str) -> TestServer {
    init();
    let srv = TestServer::start_with("", modules).await;
    trust(&srv);
    for (user, host) in [("alice", DOMAIN), ("bob", DOMAIN), ("carol", DOMAIN2)] {
        srv.add_user(user, host, PASSWORD).await;
    }
    srv
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn jid(s: &str) -> Jid {
    Jid::new(s).expect("valid JID")
}

fn bare(s: &str) -> BareJid {
    BareJid::new(s).expect("valid bare JID")
}

fn full(s: &str) -> FullJid {
    FullJid::new(s).expect("valid full JID")
}

// ---------------------------------------------------------------------------
// tokio-xmpp `Client` helpers
// ---------------------------------------------------------------------------

fn starttls_client(srv: &TestServer, who: &str) -> Client {
    Client::new_starttls(
        jid(who),
        PASSWORD,
        DnsConfig::addr(&srv.addr.to_string()),
        Timeouts::tight(),
    )
}

fn tcp_client(srv: &TestServer, who: &str) -> Client {
    Client::new_plaintext(
        jid(who),
        PASSWORD,
        DnsConfig::addr(&srv.addr.to_string()),
        Timeouts::tight(),
    )
}

/// Waits for the client to come online; returns the bound JID.
async fn online(c: &mut Client) -> FullJid {
    within("client online", async {
        loop {
            match c.next().await {
                Some(Event::Online {
                    bound_jid, resumed, ..
                }) => {
                    assert!(!resumed);
                    return bound_jid.try_into_full().expect("bound JID is full");
                }
                Some(Event::Stanza(_)) => {}
                Some(Event::Disconnected(e)) => panic!("disconnected before online: {e}"),
                None => panic!("client stream ended before online"),
            }
        }
    })
    .await
}

/// Waits for a stanza `pick` accepts; other stanzas are dropped. A reconnect
/// (a second `Online`) fails the test: it means the server ended the stream.
async fn wait_for<T>(c: &mut Client, what: &str, mut pick: impl FnMut(Stanza) -> Option<T>) -> T {
    within(what, async {
        loop {
            match c.next().await {
                Some(Event::Stanza(s)) => {
                    if let Some(v) = pick(s) {
                        return v;
                    }
                }
                Some(Event::Online { bound_jid, .. }) => {
                    panic!("unexpected reconnect as {bound_jid} while waiting for {what}")
                }
                Some(Event::Disconnected(e)) => {
                    panic!("disconnected while waiting for {what}: {e}")
                }
                None => panic!("client stream ended while waiting for {what}"),
            }
        }
    })
    .await
}

fn body_of(m: &Message) -> Option<String> {
    m.get_best_body(vec![]).map(|(_, b)| b.clone())
}

async fn message(c: &mut Client, what: &str) -> Message {
    wait_for(c, what, |s| match s {
        Stanza::Message(m) => Some(m),
        _ => None,
    })
    .await
}

async fn send_chat(c: &mut Client, to: Jid, body: &str) {
    let m = Message::chat(Some(to)).with_body(Lang::default(), body.to_string());
    c.send_stanza(m.into()).await.expect("send message");
}

/// Sends initial presence and waits for the server's copy of it (RFC 6121
/// §4.2.2), which proves the server has processed it.
async fn go_available(c: &mut Client, me: &FullJid, priority: i8) {
    c.send_stanza(Presence::available().with_priority(priority).into())
        .await
        .expect("send presence");
    let me = Jid::from(me.clone());
    wait_for(c, "own presence", |s| match s {
        Stanza::Presence(p) if p.from.as_ref() == Some(&me) => Some(()),
        _ => None,
    })
    .await;
}

async fn iq_get(c: &mut Client, to: &str, payload: Element) -> IqResponse {
    let token = c.send_iq(Some(jid(to)), IqRequest::Get(payload)).await;
    within("IQ response", token).await.expect("IQ sent")
}

fn iq_result(r: IqResponse) -> Option<Element> {
    match r {
        IqResponse::Result(p) => p,
        IqResponse::Error(e) => panic!("IQ error: {e:?}"),
    }
}

async fn end(c: Client) {
    within("client close", c.send_end()).await.expect("close");
}

// ---------------------------------------------------------------------------
// tokio-xmpp lower layers: connector + SASL + raw XmppStream
// ---------------------------------------------------------------------------

type LowStream<S> = XmlStream<S, FallibleStreamElement>;

/// `T::default()` for the third parameter type of `f`. tokio-xmpp re-exports
/// neither the `sasl` crate nor its `Credentials`, so this is how the tests
/// get hold of that type without an extra dev-dependency on `sasl`.
fn default_third_arg<A, B, C: Default, R>(_f: fn(A, B, C) -> R) -> C {
    C::default()
}

struct Authenticated<S> {
    /// Features offered before authentication.
    features: StreamFeatures,
    /// `Debug` of the channel binding the connector reported.
    channel_binding: String,
    stream: InitiatingStream<S>,
}

/// Connects with `connector` and authenticates with tokio-xmpp's SASL code.
/// With `mechanism`, the server's offer is narrowed to that one mechanism
/// (after checking the server offers it), which makes tokio-xmpp use it.
async fn sasl_login<C: ServerConnector>(
    connector: C,
    user: &BareJid,
    password: &str,
    mechanism: Option<&str>,
) -> Result<Authenticated<C::Stream>, tokio_xmpp::Error> {
    let target = Jid::from(user.clone());
    let (pending, cb) = connector
        .connect(&target, xmpp_parsers::ns::JABBER_CLIENT, Timeouts::tight())
        .await?;
    let (features, stream) = pending.recv_features::<FallibleStreamElement>().await?;
    let offered = match mechanism {
        Some(m) => {
            assert!(
                features.sasl_mechanisms.contains(m),
                "{m} not offered: {:?}",
                features.sasl_mechanisms
            );
            BTreeSet::from([m.to_string()])
        }
        None => features.sasl_mechanisms.clone(),
    };
    let channel_binding = format!("{cb:?}");
    let creds = default_third_arg(tokio_xmpp::client_login::<C::Stream>)
        .with_username(user.node().expect("user JID").as_str())
        .with_password(password)
        .with_channel_binding(cb);
    let stream = tokio_xmpp::client_login(stream, offered, creds).await?;
    Ok(Authenticated {
        features,
        channel_binding,
        stream,
    })
}

/// Restarts the stream after SASL success and returns the new features.
async fn restart<S: AsyncBufRead + AsyncWrite + Unpin>(
    stream: InitiatingStream<S>,
    domain: &str,
) -> (StreamFeatures, LowStream<S>) {
    let pending = stream
        .send_header(StreamHeader {
            to: Some(Cow::Borrowed(domain)),
            from: None,
            id: None,
        })
        .await
        .expect("stream restart");
    pending
        .recv_features::<FallibleStreamElement>()
        .await
        .expect("features after SASL")
}

/// Next stream element (soft timeouts skipped); `None` once the stream is
/// over (footer, EOF or I/O error).
async fn next_low<S: AsyncBufRead + Unpin>(
    stream: &mut LowStream<S>,
) -> Option<Result<XmppStreamElement, String>> {
    within("stream element", async {
        loop {
            match stream.next().await {
                None => return None,
                Some(Ok(FallibleStreamElement::Ok(el))) => return Some(Ok(el)),
                Some(Ok(FallibleStreamElement::Err(e))) => return Some(Err(e.to_string())),
                Some(Err(ReadError::SoftTimeout)) => {}
                Some(Err(ReadError::ParseError(e))) => return Some(Err(e.to_string())),
                Some(Err(ReadError::StreamFooterReceived | ReadError::HardError(_))) => {
                    return None;
                }
            }
        }
    })
    .await
}

async fn send_low<S: AsyncWrite + Unpin>(stream: &mut LowStream<S>, iq: Iq) {
    let el = XmppStreamElement::Stanza(Stanza::Iq(iq));
    within("send", stream.send(&el)).await.expect("send");
}

/// Next IQ with this id.
async fn iq_low<S: AsyncBufRead + Unpin>(stream: &mut LowStream<S>, id: &str) -> Iq {
    loop {
        match next_low(stream).await {
            Some(Ok(XmppStreamElement::Stanza(Stanza::Iq(iq)))) => {
                let got = match &iq {
                    Iq::Get { id, .. }
                    | Iq::Set { id, .. }
                    | Iq::Result { id, .. }
                    | Iq::Error { id, .. } => id.clone(),
                };
                if got == id {
                    return iq;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("bad element: {e}"),
            None => panic!("stream ended while waiting for IQ {id}"),
        }
    }
}

/// Binds `resource` on a stream tokio-xmpp authenticated; returns the JID.
async fn bind_low<S: AsyncBufRead + AsyncWrite + Unpin>(
    stream: &mut LowStream<S>,
    resource: &str,
) -> FullJid {
    let iq = Iq::Set {
        from: None,
        to: None,
        id: "bind-1".into(),
        payload: BindQuery::new(Some(resource.to_string())).into(),
    };
    send_low(stream, iq).await;
    match iq_low(stream, "bind-1").await {
        Iq::Result {
            payload: Some(p), ..
        } => BindResponse::try_from(p).expect("bind response").jid,
        other => panic!("bind failed: {other:?}"),
    }
}

/// Ping the server over a low-level stream.
async fn ping_low<S: AsyncBufRead + AsyncWrite + Unpin>(stream: &mut LowStream<S>) {
    let iq = Iq::Get {
        from: None,
        to: Some(jid(DOMAIN)),
        id: "ping-1".into(),
        payload: Ping.into(),
    };
    send_low(stream, iq).await;
    let r = iq_low(stream, "ping-1").await;
    assert!(matches!(r, Iq::Result { .. }), "ping: {r:?}");
}

fn starttls_connector(srv: &TestServer) -> StartTlsServerConnector {
    StartTlsServerConnector::from(DnsConfig::addr(&srv.addr.to_string()))
}

fn tcp_connector(srv: &TestServer) -> TcpServerConnector {
    TcpServerConnector::from(DnsConfig::addr(&srv.addr.to_string()))
}

/// Authenticates with one mechanism through tokio-xmpp, binds and pings.
async fn login_with<C: ServerConnector>(connector: C, mechanism: &str, cb_prefix: &str) {
    let user = bare("alice@localhost");
    let auth = within(
        mechanism,
        sasl_login(connector, &user, PASSWORD, Some(mechanism)),
    )
    .await
    .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
    assert!(
        auth.channel_binding.starts_with(cb_prefix),
        "{mechanism}: channel binding {}",
        auth.channel_binding
    );
    let (features, mut stream) = restart(auth.stream, DOMAIN).await;
    assert!(features.can_bind(), "{mechanism}: no bind: {features:?}");
    assert!(features.sasl_mechanisms.is_empty());
    let resource = mechanism.to_ascii_lowercase();
    let bound = bind_low(&mut stream, &resource).await;
    assert_eq!(bound, full(&format!("alice@localhost/{resource}")));
    ping_low(&mut stream).await;
}

// ---------------------------------------------------------------------------
// 1. Login
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tokio_xmpp_login_starttls() {
    let srv = server().await;

    // What the server offers after STARTTLS decides tokio-xmpp's default:
    // SCRAM-SHA-256-PLUS with tls-exporter (TLS 1.3).
    let auth = within(
        "default login",
        sasl_login(
            starttls_connector(&srv),
            &bare("alice@localhost"),
            PASSWORD,
            None,
        ),
    )
    .await
    .expect("default mechanism login");
    assert!(
        auth.channel_binding.starts_with("TlsExporter("),
        "{}",
        auth.channel_binding
    );
    for m in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "PLAIN",
    ] {
        assert!(
            auth.features.sasl_mechanisms.contains(m),
            "{m}: {:?}",
            auth.features
        );
    }
    drop(auth);

    let mut c = starttls_client(&srv, "alice@localhost/phone");
    let me = online(&mut c).await;
    assert_eq!(me, full("alice@localhost/phone"));
    assert_eq!(c.bound_jid(), Some(&me));
    let features = c.get_stream_features().expect("features");
    assert!(features.sasl_mechanisms.is_empty());
    assert!(iq_result(iq_get(&mut c, DOMAIN, Ping.into()).await).is_none());
    end(c).await;

    // A bare JID lets the server pick the resource; second host too.
    let mut c = starttls_client(&srv, "carol@example.test");
    let me = online(&mut c).await;
    assert_eq!(me.to_bare(), bare("carol@example.test"));
    assert!(!me.resource().as_str().is_empty());
    end(c).await;
    srv.stop().await;
}

#[tokio::test]
async fn tokio_xmpp_login_plain_tcp() {
    let srv = server().await;
    // Without TLS there is nothing to bind to: no -PLUS, so tokio-xmpp's
    // default is SCRAM-SHA-256.
    let auth = within(
        "default login",
        sasl_login(tcp_connector(&srv), &bare("bob@localhost"), PASSWORD, None),
    )
    .await
    .expect("default mechanism login");
    assert_eq!(auth.channel_binding, "None");
    assert!(auth.features.sasl_mechanisms.contains("SCRAM-SHA-256"));
    assert!(
        auth.features
            .sasl_mechanisms
            .iter()
            .all(|m| !m.ends_with("-PLUS")),
        "{:?}",
        auth.features.sasl_mechanisms
    );
    assert!(auth.features.sasl_cb.is_none());
    drop(auth);

    let mut c = tcp_client(&srv, "bob@localhost/desk");
    let me = online(&mut c).await;
    assert_eq!(me, full("bob@localhost/desk"));
    assert!(iq_result(iq_get(&mut c, DOMAIN, Ping.into()).await).is_none());
    end(c).await;

    let mut c = tcp_client(&srv, "carol@example.test/x");
    assert_eq!(online(&mut c).await, full("carol@example.test/x"));
    end(c).await;
    srv.stop().await;
}

/// Every mechanism tokio-xmpp implements, each forced once.
#[tokio::test]
async fn tokio_xmpp_each_mechanism() {
    let srv = server().await;
    for m in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "PLAIN"] {
        login_with(starttls_connector(&srv), m, "TlsExporter(").await;
    }
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        login_with(tcp_connector(&srv), m, "None").await;
    }
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Wrong password
// ---------------------------------------------------------------------------

fn assert_not_authorized<T>(r: Result<T, tokio_xmpp::Error>, what: &str) {
    match r {
        Err(tokio_xmpp::Error::Auth(AuthError::Fail(SaslCondition::NotAuthorized))) => {}
        Err(e) => panic!("{what}: expected not-authorized, got {e:?}"),
        Ok(_) => panic!("{what}: authentication succeeded"),
    }
}

#[tokio::test]
async fn tokio_xmpp_wrong_password() {
    let srv = server().await;
    let alice = bare("alice@localhost");
    let nobody = bare("nobody@localhost");
    for m in [None, Some("SCRAM-SHA-1-PLUS"), Some("PLAIN")] {
        let what = format!("STARTTLS {m:?}");
        let r = within(
            &what,
            sasl_login(starttls_connector(&srv), &alice, "wrong", m),
        )
        .await;
        assert_not_authorized(r, &what);
    }
    for m in [None, Some("SCRAM-SHA-1"), Some("PLAIN")] {
        let what = format!("TCP {m:?}");
        let r = within(&what, sasl_login(tcp_connector(&srv), &alice, "wrong", m)).await;
        assert_not_authorized(r, &what);
        let what = format!("TCP unknown user {m:?}");
        let r = within(&what, sasl_login(tcp_connector(&srv), &nobody, PASSWORD, m)).await;
        assert_not_authorized(r, &what);
    }
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Messages and directed presence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tokio_xmpp_messages_and_directed_presence() {
    let srv = server().await;
    let mut alice = starttls_client(&srv, "alice@localhost/a");
    let mut bob = tcp_client(&srv, "bob@localhost/b");
    let a = online(&mut alice).await;
    let b = online(&mut bob).await;
    go_available(&mut bob, &b, 0).await;

    send_chat(&mut alice, b.clone().into(), "hello bob").await;
    let m = message(&mut bob, "message for bob").await;
    assert_eq!(m.from, Some(a.clone().into()));
    assert_eq!(m.type_, MessageType::Chat);
    assert_eq!(body_of(&m).as_deref(), Some("hello bob"));

    send_chat(&mut bob, a.clone().into(), "hello alice").await;
    let m = message(&mut alice, "message for alice").await;
    assert_eq!(m.from, Some(b.clone().into()));
    assert_eq!(body_of(&m).as_deref(), Some("hello alice"));

    // Directed presence to bob's bare JID reaches bob with alice's full JID.
    let p = Presence::available().with_to(b.to_bare());
    alice.send_stanza(p.into()).await.expect("send presence");
    let from_alice = Jid::from(a.clone());
    let p = wait_for(&mut bob, "directed presence", |s| match s {
        Stanza::Presence(p) if p.from.as_ref() == Some(&from_alice) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(p.type_, presence::Type::None);
    assert_eq!(p.to.map(|t| t.to_bare()), Some(b.to_bare()));

    end(alice).await;
    end(bob).await;
    srv.stop().await;
}

/// The client interop matrix row for tokio-xmpp (the other rows are in
/// tests/interop.rs): log in on its defaults with TLS (STARTTLS, TLS 1.3, so
/// SCRAM-SHA-256-PLUS with tls-exporter), get the roster, send a message to
/// another user and receive one.
#[tokio::test]
async fn tokio_xmpp_interop_matrix() {
    let srv = server().await;
    let mut alice = starttls_client(&srv, "alice@localhost/matrix");
    let mut bob = tcp_client(&srv, "bob@localhost/b");
    let a = online(&mut alice).await;
    let b = online(&mut bob).await;
    go_available(&mut bob, &b, 0).await;

    let item: Element =
        "<query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'/></query>"
            .parse()
            .expect("roster item");
    let token = alice.send_iq(None, IqRequest::Set(item)).await;
    let set = within("roster set", token).await.expect("IQ sent");
    assert!(iq_result(set).is_none());
    let roster = iq_result(
        iq_get(
            &mut alice,
            "alice@localhost",
            Element::builder("query", "jabber:iq:roster").build(),
        )
        .await,
    )
    .expect("roster result");
    let items: Vec<_> = roster.children().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(items, ["bob@localhost"], "{roster:?}");

    send_chat(&mut alice, b.to_bare().into(), "tokio-xmpp to bob").await;
    let m = message(&mut bob, "message for bob").await;
    assert_eq!(m.from, Some(a.clone().into()));
    assert_eq!(body_of(&m).as_deref(), Some("tokio-xmpp to bob"));
    send_chat(&mut bob, a.clone().into(), "bob to tokio-xmpp").await;
    let m = message(&mut alice, "message for alice").await;
    assert_eq!(m.from, Some(b.clone().into()));
    assert_eq!(body_of(&m).as_deref(), Some("bob to tokio-xmpp"));

    end(alice).await;
    end(bob).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Server queries (disco, ping, version, time)
// ---------------------------------------------------------------------------

async fn disco_info(c: &mut Client) -> DiscoInfoResult {
    let q = DiscoInfoQuery { node: None };
    let r = iq_result(iq_get(c, DOMAIN, q.into()).await).expect("disco#info payload");
    DiscoInfoResult::try_from(r).expect("disco#info result")
}

#[tokio::test]
async fn tokio_xmpp_server_queries() {
    let srv = server().await;
    let mut c = starttls_client(&srv, "alice@localhost/q");
    online(&mut c).await;

    let info = disco_info(&mut c).await;
    assert!(
        info.identities
            .iter()
            .any(|i| i.category == "server" && i.type_ == "im"),
        "{:?}",
        info.identities
    );
    for f in [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
    ] {
        assert!(
            info.features.contains(f),
            "{f} missing: {:?}",
            info.features
        );
    }

    let q = DiscoItemsQuery {
        node: None,
        rsm: None,
    };
    let items = iq_result(iq_get(&mut c, DOMAIN, q.into()).await).expect("disco#items payload");
    DiscoItemsResult::try_from(items).expect("disco#items result");

    assert!(iq_result(iq_get(&mut c, DOMAIN, Ping.into()).await).is_none());

    let v = iq_result(iq_get(&mut c, DOMAIN, VersionQuery.into()).await).expect("version payload");
    let v = VersionResult::try_from(v).expect("version result");
    assert_eq!(v.name, "Palaver");
    assert!(!v.version.is_empty());

    let t = iq_result(iq_get(&mut c, DOMAIN, TimeQuery.into()).await).expect("time payload");
    let t = TimeResult::try_from(t).expect("time result (utc and tzo)");
    assert_eq!(t.tz_offset.local_minus_utc(), 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        (t.utc.timestamp() - now).abs() < 120,
        "server time {}",
        t.utc
    );

    end(c).await;
    srv.stop().await;
}

#[tokio::test]
async fn tokio_xmpp_disabled_modules() {
    let srv = server_with("modules:\n  mod_disco: {}\n  mod_ping: {}\n").await;
    let mut c = tcp_client(&srv, "alice@localhost/q");
    online(&mut c).await;

    let info = disco_info(&mut c).await;
    assert!(
        info.features.contains("urn:xmpp:ping"),
        "{:?}",
        info.features
    );
    assert!(
        info.features
            .contains("http://jabber.org/protocol/disco#info")
    );
    for f in ["jabber:iq:version", "urn:xmpp:time"] {
        assert!(
            !info.features.contains(f),
            "{f} listed: {:?}",
            info.features
        );
    }
    assert!(iq_result(iq_get(&mut c, DOMAIN, Ping.into()).await).is_none());

    for (what, q) in [
        ("version", Element::from(VersionQuery)),
        ("time", Element::from(TimeQuery)),
    ] {
        match iq_get(&mut c, DOMAIN, q).await {
            IqResponse::Error(e) => {
                assert_eq!(
                    e.defined_condition,
                    StanzaCondition::ServiceUnavailable,
                    "{what}"
                )
            }
            IqResponse::Result(r) => panic!("{what} answered without its module: {r:?}"),
        }
    }
    end(c).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Bare-JID routing by priority
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tokio_xmpp_bare_jid_message_goes_to_highest_priority() {
    let srv = server().await;
    let mut high = starttls_client(&srv, "bob@localhost/high");
    let high_jid = online(&mut high).await;
    go_available(&mut high, &high_jid, 5).await;
    let mut low = tcp_client(&srv, "bob@localhost/low");
    let low_jid = online(&mut low).await;
    go_available(&mut low, &low_jid, 1).await;

    let mut alice = tcp_client(&srv, "alice@localhost/a");
    online(&mut alice).await;
    send_chat(&mut alice, bare("bob@localhost").into(), "to the bare JID").await;
    // Routed after the first message by the same session, so it reaches
    // `low` after the first one would have.
    send_chat(&mut alice, low_jid.clone().into(), "marker").await;

    let m = message(&mut high, "bare-JID message at priority 5").await;
    assert_eq!(body_of(&m).as_deref(), Some("to the bare JID"));
    let m = message(&mut low, "marker at priority 1").await;
    assert_eq!(
        body_of(&m).as_deref(),
        Some("marker"),
        "the priority-1 resource got the bare-JID message"
    );

    end(alice).await;
    end(high).await;
    end(low).await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Raw client over rustls: direct TLS and STARTTLS, every mechanism
// ---------------------------------------------------------------------------

type TlsRaw = Raw<TlsStream<TcpStream>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// XEP-0368 direct TLS, ALPN `xmpp-client`.
    Direct,
    /// STARTTLS on the plain listener.
    StartTls,
}

fn client_config(
    srv: &TestServer,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: bool,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(srv.cert_path()).expect("cert file") {
        roots.add(cert.expect("certificate")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Arc::new(cfg)
}

/// Parses the `<stream:features/>` at the end of `text`.
fn parse_features(text: &str) -> StreamFeatures {
    let start = text.find("<stream:features").expect("features");
    let xml = text[start..].replacen(
        "<stream:features",
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'",
        1,
    );
    let el: Element = xml.parse().unwrap_or_else(|e| panic!("{e}: {xml}"));
    StreamFeatures::try_from(el).expect("stream features")
}

/// Length of the first complete top-level element in `buf`, if any (good
/// enough for the server's SASL/STARTTLS replies and stanzas).
fn complete_element(buf: &str) -> Option<usize> {
    let start = buf.find('<')?;
    let rest = &buf[start..];
    let open_end = rest.find('>')?;
    if rest[..open_end].ends_with('/') {
        return Some(start + open_end + 1);
    }
    let name_len = rest[1..].find(|c: char| c.is_whitespace() || c == '>' || c == '/')?;
    let end_tag = format!("</{}>", &rest[1..1 + name_len]);
    let pos = rest.find(&end_tag)?;
    Some(start + pos + end_tag.len())
}

async fn next_element<S: AsyncRead + AsyncWrite + Unpin>(raw: &mut Raw<S>) -> String {
    within("element", async {
        loop {
            if let Some(end) = complete_element(&raw.buf) {
                let el = raw.buf[..end].trim().to_string();
                raw.buf.drain(..end);
                return el;
            }
            let mut chunk = [0u8; 8192];
            let n = raw.s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "connection closed; got {:?}", raw.buf);
            raw.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await
}

/// A TLS connection with the stream opened; returns it with its features.
async fn tls_connect(
    srv: &TestServer,
    mode: Mode,
    version: &'static rustls::SupportedProtocolVersion,
) -> (TlsRaw, StreamFeatures) {
    let name = ServerName::try_from(DOMAIN).expect("server name");
    let tcp = match mode {
        Mode::Direct => TcpStream::connect(srv.tls_addr).await.expect("connect"),
        Mode::StartTls => {
            let mut raw = Raw::connect(srv.addr).await;
            let features = parse_features(&raw.open(DOMAIN).await);
            assert!(features.can_starttls(), "{features:?}");
            raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await;
            let proceed: Element = next_element(&mut raw).await.parse().expect("proceed");
            assert!(
                proceed.is("proceed", "urn:ietf:params:xml:ns:xmpp-tls"),
                "{proceed:?}"
            );
            assert!(raw.buf.is_empty(), "data after <proceed/>: {:?}", raw.buf);
            raw.s
        }
    };
    let connector =
        tokio_rustls::TlsConnector::from(client_config(srv, version, mode == Mode::Direct));
    let tls = within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake");
    if mode == Mode::Direct {
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-client"[..]));
    }
    let mut raw = Raw {
        s: tls,
        buf: String::new(),
    };
    let features = parse_features(&raw.open(DOMAIN).await);
    assert!(
        !features.can_starttls(),
        "STARTTLS offered again: {features:?}"
    );
    (raw, features)
}

fn channel_binding(raw: &TlsRaw, ty: ChannelBindingType) -> Vec<u8> {
    let conn = raw.s.get_ref().1;
    match ty {
        ChannelBindingType::TlsExporter => conn
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .expect("exporter")
            .to_vec(),
        ChannelBindingType::TlsServerEndPoint => {
            let cert = &conn.peer_certificates().expect("server certificate")[0];
            // The generated certificate is signed with ECDSA-SHA256, so
            // RFC 5929 §4.1 hashes it with SHA-256.
            let sha256 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
                .tls13()
                .expect("TLS 1.3 suite")
                .common
                .hash_provider;
            assert_eq!(
                sha256.algorithm(),
                rustls::crypto::hash::HashAlgorithm::SHA256
            );
            sha256.hash(cert.as_ref()).as_ref().to_vec()
        }
    }
}

enum SaslReply {
    Challenge(Vec<u8>),
    Success(Vec<u8>),
    Failure(SaslCondition),
}

async fn sasl_reply<S: AsyncRead + AsyncWrite + Unpin>(raw: &mut Raw<S>) -> SaslReply {
    let text = next_element(raw).await;
    let el: Element = text.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
    match el.name() {
        "challenge" => SaslReply::Challenge(
            xmpp_parsers::sasl::Challenge::try_from(el)
                .expect("challenge")
                .data,
        ),
        "success" => SaslReply::Success(
            xmpp_parsers::sasl::Success::try_from(el)
                .expect("success")
                .data,
        ),
        "failure" => SaslReply::Failure(
            xmpp_parsers::sasl::Failure::try_from(el)
                .expect("failure")
                .defined_condition,
        ),
        _ => panic!("unexpected SASL reply: {text}"),
    }
}

/// Runs a SCRAM exchange; on success checks the server signature.
async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    raw: &mut Raw<S>,
    mut client: ScramClient,
) -> Result<(), SaslCondition> {
    let first = client.client_first();
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
        client.mechanism().name(),
        B64.encode(first)
    ))
    .await;
    let server_first = match sasl_reply(raw).await {
        SaslReply::Challenge(c) => c,
        SaslReply::Failure(f) => return Err(f),
        SaslReply::Success(_) => panic!("success before the proof"),
    };
    let client_final = client
        .handle_server_first(&server_first)
        .expect("valid server-first-message");
    raw.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(client_final)
    ))
    .await;
    match sasl_reply(raw).await {
        SaslReply::Success(server_final) => {
            client
                .verify_server_final(&server_final)
                .expect("server signature verifies");
            Ok(())
        }
        SaslReply::Failure(f) => Err(f),
        SaslReply::Challenge(_) => panic!("unexpected second challenge"),
    }
}

async fn plain<S: AsyncRead + AsyncWrite + Unpin>(
    raw: &mut Raw<S>,
    password: &str,
) -> Result<(), SaslCondition> {
    let token = B64.encode(format!("\0alice\0{password}"));
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    match sasl_reply(raw).await {
        SaslReply::Success(_) => Ok(()),
        SaslReply::Failure(f) => Err(f),
        SaslReply::Challenge(_) => panic!("challenge for PLAIN with an initial response"),
    }
}

/// After SASL success: restart, bind, ping.
async fn finish_session<S: AsyncRead + AsyncWrite + Unpin>(raw: &mut Raw<S>, resource: &str) {
    let features = parse_features(&raw.open(DOMAIN).await);
    assert!(features.can_bind(), "{features:?}");
    let bound = raw.bind(resource).await;
    assert_eq!(bound, format!("alice@localhost/{resource}"));
    raw.send("<iq type='get' id='ping-1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let reply = next_element(raw).await;
    assert!(
        reply.contains("ping-1")
            && (reply.contains("type='result'") || reply.contains("type=\"result\"")),
        "{reply}"
    );
}

fn assert_tls_features(features: &StreamFeatures, exporter: bool) {
    for m in [
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "SCRAM-SHA-512",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-512-PLUS",
        "PLAIN",
    ] {
        assert!(features.sasl_mechanisms.contains(m), "{m}: {features:?}");
    }
    let cb = features.sasl_cb.as_ref().expect("<sasl-channel-binding/>");
    assert!(cb.types.contains(&CbType::TlsServerEndPoint), "{cb:?}");
    assert_eq!(cb.types.contains(&CbType::TlsExporter), exporter, "{cb:?}");
}

async fn all_mechanisms_over_tls(mode: Mode) {
    let srv = server().await;
    let tls13 = &rustls::version::TLS13;

    let (_, features) = tls_connect(&srv, mode, tls13).await;
    assert_tls_features(&features, true);

    let bindings = [
        None,
        Some(ChannelBindingType::TlsExporter),
        Some(ChannelBindingType::TlsServerEndPoint),
    ];
    for hash in ScramHash::ALL {
        for ty in bindings {
            let what = format!("{mode:?} SCRAM-{hash} {ty:?}");
            let (mut raw, _) = tls_connect(&srv, mode, tls13).await;
            let cb = ty.map(|t| (t, channel_binding(&raw, t)));
            let client = ScramClient::new(hash, "alice", PASSWORD, cb);
            scram(&mut raw, client)
                .await
                .unwrap_or_else(|f| panic!("{what}: {f:?}"));
            finish_session(&mut raw, &format!("{hash}-{ty:?}")).await;
        }
    }

    let (mut raw, _) = tls_connect(&srv, mode, tls13).await;
    plain(&mut raw, PASSWORD).await.expect("PLAIN over TLS");
    finish_session(&mut raw, "plain").await;

    // Failures, on one connection (fewer than the server's attempt limit).
    let (mut raw, _) = tls_connect(&srv, mode, tls13).await;
    for ty in ChannelBindingType::ALL {
        let mut wrong = channel_binding(&raw, ty);
        wrong[0] ^= 0xff;
        let client = ScramClient::new(ScramHash::Sha256, "alice", PASSWORD, Some((ty, wrong)));
        assert_eq!(
            scram(&mut raw, client).await,
            Err(SaslCondition::NotAuthorized),
            "{mode:?} wrong {ty:?} value"
        );
    }
    // `y`: "I could bind but you did not offer it" although -PLUS was
    // offered: refused (RFC 5802 downgrade detection), as negotiation.
    let client = ScramClient::new(ScramHash::Sha256, "alice", PASSWORD, None).with_gs2_flag_y();
    assert_eq!(
        scram(&mut raw, client).await,
        Err(SaslCondition::InvalidMechanism),
        "{mode:?} downgrade flag y"
    );
    let cb = channel_binding(&raw, ChannelBindingType::TlsExporter);
    let client = ScramClient::new(
        ScramHash::Sha512,
        "alice",
        "wrong",
        Some((ChannelBindingType::TlsExporter, cb)),
    );
    assert_eq!(
        scram(&mut raw, client).await,
        Err(SaslCondition::NotAuthorized),
        "{mode:?} wrong password"
    );
    // The connection is still usable after failures.
    plain(&mut raw, PASSWORD)
        .await
        .expect("PLAIN after failures");
    finish_session(&mut raw, "after-failures").await;
    srv.stop().await;
}

#[tokio::test]
async fn raw_direct_tls_all_mechanisms() {
    all_mechanisms_over_tls(Mode::Direct).await;
}

#[tokio::test]
async fn raw_starttls_all_mechanisms() {
    all_mechanisms_over_tls(Mode::StartTls).await;
}

/// TLS 1.2 has no `tls-exporter` here (RFC 9266 needs TLS 1.3 or EMS, and the
/// server offers it for TLS 1.3 only); `tls-server-end-point` still works.
#[tokio::test]
async fn raw_tls12_offers_server_end_point_only() {
    let srv = server().await;
    let tls12 = &rustls::version::TLS12;
    for mode in [Mode::Direct, Mode::StartTls] {
        let (mut raw, features) = tls_connect(&srv, mode, tls12).await;
        assert_eq!(
            raw.s.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_tls_features(&features, false);
        let client = ScramClient::new(
            ScramHash::Sha256,
            "alice",
            PASSWORD,
            Some((ChannelBindingType::TlsExporter, vec![0; 32])),
        );
        assert_eq!(
            scram(&mut raw, client).await,
            Err(SaslCondition::InvalidMechanism),
            "{mode:?} tls-exporter on TLS 1.2"
        );
        let cb = channel_binding(&raw, ChannelBindingType::TlsServerEndPoint);
        let client = ScramClient::new(
            ScramHash::Sha512,
            "alice",
            PASSWORD,
            Some((ChannelBindingType::TlsServerEndPoint, cb)),
        );
        scram(&mut raw, client)
            .await
            .unwrap_or_else(|f| panic!("{mode:?} tls-server-end-point on TLS 1.2: {f:?}"));
        finish_session(&mut raw, "tls12").await;
    }
    srv.stop().await;
}

/// What Debian's slixmpp 1.8.3 sends on a TLS 1.3 connection: every -PLUS
/// mechanism with `p=tls-unique` (undefined for TLS 1.3), then every plain
/// SCRAM with the `y` flag. Each is refused as negotiation
/// (`<invalid-mechanism/>`), none counts against the limit of password
/// failures: after these six and four wrong passwords the same stream still
/// logs in (slixmpp's next choice is PLAIN), and a fifth wrong password
/// would end it.
#[tokio::test]
async fn raw_negotiation_refusals_do_not_count_as_failures() {
    let srv = server().await;
    let tls13 = &rustls::version::TLS13;
    let (mut raw, features) = tls_connect(&srv, Mode::StartTls, tls13).await;
    assert_tls_features(&features, true);
    for hash in ScramHash::ALL {
        raw.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-{}-PLUS'>{}</auth>",
            hash.name(),
            B64.encode("p=tls-unique,,n=alice,r=0123456789012345")
        ))
        .await;
        match sasl_reply(&mut raw).await {
            SaslReply::Failure(f) => assert_eq!(f, SaslCondition::InvalidMechanism, "{hash}"),
            _ => panic!("SCRAM-{hash}-PLUS with tls-unique was not refused"),
        }
    }
    for hash in ScramHash::ALL {
        let client = ScramClient::new(hash, "alice", PASSWORD, None).with_gs2_flag_y();
        assert_eq!(
            scram(&mut raw, client).await,
            Err(SaslCondition::InvalidMechanism),
            "SCRAM-{hash} with y"
        );
    }
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>")
        .await;
    match sasl_reply(&mut raw).await {
        SaslReply::Failure(f) => assert_eq!(f, SaslCondition::InvalidMechanism),
        _ => panic!("DIGEST-MD5 was not refused"),
    }
    for _ in 0..4 {
        assert_eq!(
            plain(&mut raw, "wrong").await,
            Err(SaslCondition::NotAuthorized)
        );
    }
    plain(&mut raw, PASSWORD)
        .await
        .expect("PLAIN after negotiation refusals and four wrong passwords");
    finish_session(&mut raw, "slixmpp-like").await;
    srv.stop().await;
}

/// Without TLS: no -PLUS, no `<sasl-channel-binding/>`, and `-PLUS` or a
/// `p=` flag is refused.
#[tokio::test]
async fn raw_plain_tcp_offers_no_channel_binding() {
    let srv = server().await;
    let mut raw = Raw::connect(srv.addr).await;
    let features = parse_features(&raw.open(DOMAIN).await);
    assert!(features.can_starttls());
    assert!(features.sasl_cb.is_none(), "{features:?}");
    for m in ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        assert!(features.sasl_mechanisms.contains(m), "{m}: {features:?}");
    }
    assert!(
        features
            .sasl_mechanisms
            .iter()
            .all(|m| !m.ends_with("-PLUS")),
        "{features:?}"
    );
    let client = ScramClient::new(
        ScramHash::Sha256,
        "alice",
        PASSWORD,
        Some((ChannelBindingType::TlsServerEndPoint, vec![0; 32])),
    );
    assert!(scram(&mut raw, client).await.is_err(), "-PLUS without TLS");
    // `y` is fine when the server really offers no channel binding.
    let client = ScramClient::new(ScramHash::Sha1, "alice", PASSWORD, None).with_gs2_flag_y();
    scram(&mut raw, client)
        .await
        .expect("SCRAM with flag y over plain TCP");
    finish_session(&mut raw, "tcp").await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 7. Resource conflict
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tokio_xmpp_resource_conflict_replaces_old_session() {
    let srv = server().await;
    let user = bare("alice@localhost");

    // The first session is driven through tokio-xmpp's lower layers, since
    // `Client` would silently reconnect (and take the resource back).
    let auth = within(
        "first login",
        sasl_login(starttls_connector(&srv), &user, PASSWORD, None),
    )
    .await
    .expect("first login");
    let (_, mut first) = restart(auth.stream, DOMAIN).await;
    assert_eq!(
        bind_low(&mut first, "dup").await,
        full("alice@localhost/dup")
    );
    ping_low(&mut first).await;

    let mut second = starttls_client(&srv, "alice@localhost/dup");
    assert_eq!(online(&mut second).await, full("alice@localhost/dup"));

    // The first stream gets a <conflict/> stream error, then ends.
    let mut conflict = false;
    while let Some(el) = next_low(&mut first).await {
        match el {
            Ok(XmppStreamElement::StreamError(e)) => {
                assert_eq!(e.0.condition, StreamCondition::Conflict, "{e:?}");
                conflict = true;
            }
            Ok(XmppStreamElement::Stanza(s)) => assert!(!conflict, "stanza after the error: {s:?}"),
            other => panic!("unexpected element on the replaced stream: {other:?}"),
        }
    }
    assert!(
        conflict,
        "replaced stream ended without a conflict stream error"
    );

    // The new session works: server IQs and messages to the full JID.
    assert!(iq_result(iq_get(&mut second, DOMAIN, Ping.into()).await).is_none());
    let mut bob = tcp_client(&srv, "bob@localhost/b");
    let b = online(&mut bob).await;
    send_chat(&mut bob, full("alice@localhost/dup").into(), "still there?").await;
    let m = message(&mut second, "message to the new session").await;
    assert_eq!(m.from, Some(b.into()));
    assert_eq!(body_of(&m).as_deref(), Some("still there?"));

    end(bob).await;
    end(second).await;
    srv.stop().await;
}
