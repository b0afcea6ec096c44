//! Auth backends per host (`auth_method`): http (a small service started
//! here), external (an extauth script), jwt, anonymous. A backend that is
//! down gives `temporary-auth-failure` and recovers by itself.
mod common;
use base64::Engine;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Open a stream to `host` and try SASL PLAIN; the SASL answer.
async fn plain(addr: SocketAddr, host: &str, user: &str, password: &str) -> String {
    let mut c = Raw::connect(addr).await;
    c.open(host).await;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    let r = c.until("/>").await;
    if r.contains("<failure") {
        let rest = c.until("</failure>").await;
        return r + &rest;
    }
    r
}

async fn features(addr: SocketAddr, host: &str) -> String {
    let mut c = Raw::connect(addr).await;
    c.open(host).await
}

/// The operator's user service: `check_password` / `user_exists` with a
/// bearer token; counts the questions.
#[derive(Default)]
struct Service {
    users: Mutex<HashMap<String, String>>,
    /// Every question asked: `OPERATION USER`.
    ops: Mutex<Vec<String>>,
    checks: AtomicUsize,
    bad_token: AtomicUsize,
}

async fn serve_auth(listener: TcpListener, svc: Arc<Service>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (head, buf[end + 4..end + 4 + len].to_vec());
                }
            };
            if !head.contains("Authorization: Bearer svc-token") {
                svc.bad_token.fetch_add(1, Ordering::SeqCst);
            }
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let user = req["user"].as_str().unwrap().to_string();
            assert_eq!(req["server"], DOMAIN2);
            let op = head
                .strip_prefix("POST /auth/")
                .and_then(|r| r.split(' ').next())
                .unwrap_or("")
                .to_string();
            svc.ops.lock().unwrap().push(format!("{op} {user}"));
            let pw = req["password"].as_str().map(str::to_string);
            let yes = |b: bool| (200, if b { "true" } else { "false" }.to_string());
            let (status, body) = {
                let mut users = svc.users.lock().unwrap();
                match op.as_str() {
                    "check_password" => {
                        svc.checks.fetch_add(1, Ordering::SeqCst);
                        yes(users.get(&user).map(String::as_str) == pw.as_deref())
                    }
                    "user_exists" => yes(users.contains_key(&user)),
                    "set_password" => match (users.get_mut(&user), pw) {
                        (Some(p), Some(new)) => {
                            *p = new;
                            yes(true)
                        }
                        _ => (404, "false".into()),
                    },
                    "register" => match pw {
                        _ if users.contains_key(&user) => (409, "\"exists\"".into()),
                        Some(_) if user == "refused" => yes(false),
                        Some(p) => {
                            users.insert(user.clone(), p);
                            yes(true)
                        }
                        None => (400, "null".into()),
                    },
                    "remove_user" => match users.remove(&user) {
                        Some(_) => yes(true),
                        None => (404, "false".into()),
                    },
                    "scram_credentials" => {
                        let hash = req["mechanism"]
                            .as_str()
                            .and_then(|m| m.strip_prefix("SCRAM-"))
                            .and_then(palaver_proto::sasl::ScramHash::from_name)
                            .expect("mechanism");
                        match users.get(&user) {
                            Some(p) => {
                                let c =
                                    palaver_proto::sasl::ScramCredentials::generate(hash, p, 4096);
                                let b = base64::engine::general_purpose::STANDARD;
                                (
                                    200,
                                    serde_json::json!({
                                        "salt": b.encode(&c.salt),
                                        "iterations": c.iterations,
                                        "stored_key": b.encode(&c.stored_key),
                                        "server_key": b.encode(&c.server_key),
                                    })
                                    .to_string(),
                                )
                            }
                            None => (404, "null".into()),
                        }
                    }
                    _ => (404, "null".into()),
                }
            };
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        });
    }
}

#[tokio::test]
async fn http_backend() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc_addr = listener.local_addr().unwrap();
    let svc = Arc::new(Service::default());
    svc.users
        .lock()
        .unwrap()
        .insert("alice".into(), "right".into());
    svc.users
        .lock()
        .unwrap()
        .insert("bob".into(), "bobpw".into());
    let task = tokio::spawn(serve_auth(listener, svc.clone()));
    let srv = TestServer::start_with(
        "",
        &format!(
            "host_config:\n  {DOMAIN2}:\n    auth_method: http\n    auth_opts:\n      url: http://{svc_addr}/auth\n      bearer_token: svc-token\n      timeout: 2000\n    auth_cache_life_time: 300\naccess_rules:\n  register:\n    allow: all\n"
        ),
    )
    .await;
    // PLAIN only on the http host; SCRAM stays on the internal one.
    let f = features(srv.addr, DOMAIN2).await;
    assert!(f.contains("PLAIN") && !f.contains("SCRAM"), "{f}");
    assert!(features(srv.addr, DOMAIN).await.contains("SCRAM-SHA-256"));

    assert!(
        plain(srv.addr, DOMAIN2, "alice", "right")
            .await
            .contains("<success")
    );
    assert_eq!(svc.checks.load(Ordering::SeqCst), 1);
    assert_eq!(svc.bad_token.load(Ordering::SeqCst), 0, "bearer token sent");
    // The account is known locally now (delivery, rosters).
    assert!(
        srv.core()
            .storage()
            .accounts
            .account_exists(DOMAIN2, "alice")
            .await
            .unwrap()
    );
    // Cache: a second login does not ask the service.
    assert!(
        plain(srv.addr, DOMAIN2, "alice", "right")
            .await
            .contains("<success")
    );
    assert_eq!(svc.checks.load(Ordering::SeqCst), 1, "cache honoured");
    // Wrong password: asked, refused.
    let r = plain(srv.addr, DOMAIN2, "alice", "wrong").await;
    assert!(r.contains("not-authorized"), "{r}");
    assert_eq!(svc.checks.load(Ordering::SeqCst), 2);
    // A full session works (bind, ping).
    let mut c = raw_login(srv.addr, "alice", DOMAIN2, "right", "r").await;
    c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(c.until("/>").await.contains("type='result'"));

    // The service goes down.
    task.abort();
    let _ = task.await;
    let r = plain(srv.addr, DOMAIN2, "bob", "bobpw").await;
    assert!(r.contains("temporary-auth-failure"), "{r}");
    // A cached password still works while it is down.
    assert!(
        plain(srv.addr, DOMAIN2, "alice", "right")
            .await
            .contains("<success")
    );
    // The internal host is not affected.
    srv.add_user("carol", DOMAIN, "carolpw").await;
    assert!(
        plain(srv.addr, DOMAIN, "carol", "carolpw")
            .await
            .contains("<success")
    );

    // Back up on the same address: logins work again.
    let listener = TcpListener::bind(svc_addr).await.expect("rebind");
    let task = tokio::spawn(serve_auth(listener, svc.clone()));
    assert!(
        plain(srv.addr, DOMAIN2, "bob", "bobpw")
            .await
            .contains("<success")
    );

    // Commands ask the backend too.
    let core = srv.core().clone();
    let run = |cmd: &str, args: serde_json::Value| {
        let core = core.clone();
        let req = palaver_admin::Request {
            command: cmd.to_string(),
            args: args.as_object().unwrap().clone(),
        };
        async move { palaver_admin::execute(&core, true, &req).await }
    };
    assert!(
        run(
            "check_account",
            serde_json::json!({"user": "bob", "host": DOMAIN2})
        )
        .await
        .is_ok()
    );
    assert!(
        run(
            "check_account",
            serde_json::json!({"user": "nobody", "host": DOMAIN2})
        )
        .await
        .is_err()
    );
    assert_eq!(
        run(
            "check_password",
            serde_json::json!({"user": "bob", "host": DOMAIN2, "password": "bobpw"})
        )
        .await
        .unwrap(),
        serde_json::json!(0)
    );
    // Accounts are created, re-keyed and removed in the service.
    assert_eq!(
        run(
            "register",
            serde_json::json!({"user": "dave", "host": DOMAIN2, "password": "d1"})
        )
        .await,
        Ok(serde_json::json!("created dave@example.test"))
    );
    assert_eq!(
        svc.users.lock().unwrap().get("dave").map(String::as_str),
        Some("d1")
    );
    assert!(
        srv.core()
            .storage()
            .accounts
            .account_exists(DOMAIN2, "dave")
            .await
            .unwrap(),
        "a local row for delivery"
    );
    let e = run(
        "register",
        serde_json::json!({"user": "dave", "host": DOMAIN2, "password": "x"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, palaver_admin::ErrorCode::Conflict, "{e}");
    let e = run(
        "register",
        serde_json::json!({"user": "refused", "host": DOMAIN2, "password": "x"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, palaver_admin::ErrorCode::Forbidden, "{e}");
    assert!(
        run(
            "change_password",
            serde_json::json!({"user": "dave", "host": DOMAIN2, "newpass": "d2"})
        )
        .await
        .is_ok()
    );
    assert_eq!(
        svc.users.lock().unwrap().get("dave").map(String::as_str),
        Some("d2")
    );
    assert!(
        plain(srv.addr, DOMAIN2, "dave", "d2")
            .await
            .contains("<success")
    );
    let e = run(
        "change_password",
        serde_json::json!({"user": "nobody", "host": DOMAIN2, "newpass": "x"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, palaver_admin::ErrorCode::Forbidden, "{e}");
    assert!(
        run(
            "unregister",
            serde_json::json!({"user": "dave", "host": DOMAIN2})
        )
        .await
        .is_ok()
    );
    assert!(!svc.users.lock().unwrap().contains_key("dave"));
    assert!(
        !srv.core()
            .storage()
            .accounts
            .account_exists(DOMAIN2, "dave")
            .await
            .unwrap(),
        "the local data goes too"
    );
    let e = run(
        "unregister",
        serde_json::json!({"user": "dave", "host": DOMAIN2}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, palaver_admin::ErrorCode::NotFound, "{e}");
    // In-band registration (XEP-0077) on the host creates the account in
    // the service too.
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN2).await;
    c.send("<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>erin</username><password>e1</password></query></iq>")
        .await;
    let r = c.until("id='reg1'").await;
    assert!(r.contains("type='result'"), "{r}");
    assert_eq!(
        svc.users.lock().unwrap().get("erin").map(String::as_str),
        Some("e1")
    );
    assert!(
        plain(srv.addr, DOMAIN2, "erin", "e1")
            .await
            .contains("<success")
    );
    // The service down: a temporary failure, nothing changed.
    task.abort();
    let _ = task.await;
    let e = run(
        "register",
        serde_json::json!({"user": "frank", "host": DOMAIN2, "password": "f"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, palaver_admin::ErrorCode::Storage, "{e}");
    assert!(e.message.contains("try again later"), "{e}");
    let e = run(
        "unregister",
        serde_json::json!({"user": "erin", "host": DOMAIN2}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, palaver_admin::ErrorCode::Storage, "{e}");
    srv.stop().await;
}

/// SCRAM for an `http` host whose service gives stored credentials
/// (`auth_opts.scram`): only the configured mechanisms are offered, the
/// server never sees the password, a service that is down is a temporary
/// failure.
#[tokio::test]
async fn http_backend_scram_credentials() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc_addr = listener.local_addr().unwrap();
    let svc = Arc::new(Service::default());
    svc.users
        .lock()
        .unwrap()
        .insert("alice".into(), "s3cret".into());
    let task = tokio::spawn(serve_auth(listener, svc.clone()));
    let srv = TestServer::start_with(
        "",
        &format!(
            "host_config:\n  {DOMAIN2}:\n    auth_method: http\n    auth_opts:\n      url: http://{svc_addr}/auth\n      bearer_token: svc-token\n      scram: [sha256, sha1]\n    auth_cache_life_time: 0\n"
        ),
    )
    .await;
    let f = features(srv.addr, DOMAIN2).await;
    assert!(
        f.contains("<mechanism>SCRAM-SHA-256</mechanism>")
            && f.contains("<mechanism>SCRAM-SHA-1</mechanism>")
            && !f.contains("SCRAM-SHA-512")
            && f.contains("PLAIN"),
        "{f}"
    );
    assert!(
        scram(
            srv.addr,
            DOMAIN2,
            "alice",
            "s3cret",
            palaver_proto::sasl::ScramHash::Sha256
        )
        .await
        .contains("<success")
    );
    assert!(
        scram(
            srv.addr,
            DOMAIN2,
            "alice",
            "s3cret",
            palaver_proto::sasl::ScramHash::Sha1
        )
        .await
        .contains("<success")
    );
    let ops = svc.ops.lock().unwrap().clone();
    assert!(
        ops.contains(&"scram_credentials alice".to_string()),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|o| o.starts_with("check_password")),
        "the password never went to the service: {ops:?}"
    );
    let r = scram(
        srv.addr,
        DOMAIN2,
        "alice",
        "wrong",
        palaver_proto::sasl::ScramHash::Sha256,
    )
    .await;
    assert!(r.contains("not-authorized"), "{r}");
    let r = scram(
        srv.addr,
        DOMAIN2,
        "nobody",
        "x",
        palaver_proto::sasl::ScramHash::Sha256,
    )
    .await;
    assert!(r.contains("not-authorized"), "{r}");
    assert!(
        srv.core()
            .storage()
            .accounts
            .account_exists(DOMAIN2, "alice")
            .await
            .unwrap()
    );
    task.abort();
    let _ = task.await;
    let r = scram(
        srv.addr,
        DOMAIN2,
        "alice",
        "s3cret",
        palaver_proto::sasl::ScramHash::Sha256,
    )
    .await;
    assert!(r.contains("temporary-auth-failure"), "{r}");
    // Back: works again.
    let listener = TcpListener::bind(svc_addr).await.expect("rebind");
    let task = tokio::spawn(serve_auth(listener, svc.clone()));
    assert!(
        scram(
            srv.addr,
            DOMAIN2,
            "alice",
            "s3cret",
            palaver_proto::sasl::ScramHash::Sha256
        )
        .await
        .contains("<success")
    );
    task.abort();
    srv.stop().await;
}

/// A SCRAM exchange; the server's last answer (success or failure).
async fn scram(
    addr: SocketAddr,
    host: &str,
    user: &str,
    password: &str,
    hash: palaver_proto::sasl::ScramHash,
) -> String {
    let b = base64::engine::general_purpose::STANDARD;
    let mut c = Raw::connect(addr).await;
    c.open(host).await;
    let mut client = palaver_proto::sasl::ScramClient::new(hash, user, password, None);
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-{}'>{}</auth>",
        hash.name(),
        b.encode(client.client_first())
    ))
    .await;
    let r = c.until("</").await;
    if r.contains("<failure") {
        return r + &c.until(">").await;
    }
    let data = r
        .split("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")
        .nth(1)
        .and_then(|x| x.split('<').next())
        .unwrap_or_else(|| panic!("challenge: {r}"));
    let fin = match client.handle_server_first(&b.decode(data).expect("b64")) {
        Ok(f) => f,
        Err(e) => return format!("client refused: {e:?}"),
    };
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        b.encode(fin)
    ))
    .await;
    // The outcome: `<success …/>`, `<success …>…</success>` or `<failure>…</failure>`.
    let mut acc = String::new();
    loop {
        acc.push_str(&c.until(">").await);
        let done = acc.contains("</success>")
            || acc.contains("</failure>")
            || (acc.contains("<success") && acc.ends_with("/>"));
        if done {
            return acc;
        }
    }
}

const EXTAUTH: &str = r#"#!/usr/bin/perl
use strict;
$| = 1;
binmode STDIN;
binmode STDOUT;
while (1) {
    my $n = read(STDIN, my $h, 2);
    exit 0 unless $n && $n == 2;
    my $len = unpack('n', $h);
    read(STDIN, my $msg, $len);
    my ($op, $user, $server, $pw) = split(/:/, $msg, 4);
    exit 1 if $user eq 'crash';
    my $r = 0;
    if ($op eq 'auth') { $r = ($user eq 'alice' && $server eq 'example.test' && $pw eq 'ext:pw') ? 1 : 0; }
    elsif ($op eq 'isuser') { $r = ($user eq 'alice') ? 1 : 0; }
    print pack('nn', 2, $r);
}
"#;

#[tokio::test]
async fn external_backend() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("extauth.pl");
    std::fs::write(&script, EXTAUTH).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let srv = TestServer::start_with(
        "",
        &format!(
            "host_config:\n  {DOMAIN2}:\n    auth_method: [external]\n    extauth_program: \"{}\"\n    extauth_pool_size: 2\n    auth_cache_life_time: 0\n",
            script.display()
        ),
    )
    .await;
    // The password may contain the separator.
    assert!(
        plain(srv.addr, DOMAIN2, "alice", "ext:pw")
            .await
            .contains("<success")
    );
    let r = plain(srv.addr, DOMAIN2, "alice", "nope").await;
    assert!(r.contains("not-authorized"), "{r}");
    // A program that dies: a temporary failure, then a fresh copy answers.
    let r = plain(srv.addr, DOMAIN2, "crash", "x").await;
    assert!(r.contains("temporary-auth-failure"), "{r}");
    for _ in 0..3 {
        assert!(
            plain(srv.addr, DOMAIN2, "alice", "ext:pw")
                .await
                .contains("<success")
        );
    }
    srv.stop().await;

    // A program that cannot start: temporary failure, the server keeps serving.
    let srv = TestServer::start_with(
        "",
        &format!("host_config:\n  {DOMAIN2}:\n    auth_method: external\n    extauth_program: /nonexistent/extauth\n"),
    )
    .await;
    let r = plain(srv.addr, DOMAIN2, "alice", "ext:pw").await;
    assert!(r.contains("temporary-auth-failure"), "{r}");
    srv.add_user("carol", DOMAIN, "carolpw").await;
    assert!(
        plain(srv.addr, DOMAIN, "carol", "carolpw")
            .await
            .contains("<success")
    );
    srv.stop().await;
}

fn sign(key: &[u8], claims: &serde_json::Value) -> String {
    use hmac::Mac;
    let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let h = e(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = e(claims.to_string().as_bytes());
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", e(&m.finalize().into_bytes()))
}

#[tokio::test]
async fn jwt_backend() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.jwk");
    let secret = b"a shared secret of the operator";
    std::fs::write(
        &key,
        serde_json::json!({"kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)})
            .to_string(),
    )
    .unwrap();
    let srv = TestServer::start_with(
        "",
        &format!(
            "host_config:\n  {DOMAIN2}:\n    auth_method: jwt\n    jwt_key: \"{}\"\n    jwt_jid_field: sub\n",
            key.display()
        ),
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tok = sign(
        secret,
        &serde_json::json!({"sub": "alice@example.test", "exp": now + 600}),
    );
    let mut c = raw_login(srv.addr, "alice", DOMAIN2, &tok, "jwt").await;
    c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(c.until("/>").await.contains("type='result'"));
    // Another user's token, an expired one, a wrong key.
    let r = plain(srv.addr, DOMAIN2, "bob", &tok).await;
    assert!(r.contains("not-authorized"), "{r}");
    let old = sign(
        secret,
        &serde_json::json!({"sub": "alice@example.test", "exp": now - 10}),
    );
    assert!(
        plain(srv.addr, DOMAIN2, "alice", &old)
            .await
            .contains("not-authorized")
    );
    let forged = sign(
        b"wrong key",
        &serde_json::json!({"sub": "alice@example.test"}),
    );
    assert!(
        plain(srv.addr, DOMAIN2, "alice", &forged)
            .await
            .contains("not-authorized")
    );
    srv.stop().await;
}

/// RS256 with the public key in a PEM file (`jwt_key`), the token signed
/// by the operator's private key (tests/fixtures/jwt, see its README).
#[tokio::test]
async fn jwt_backend_rsa_pem() {
    use rustls::pki_types::pem::PemObject;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
    let srv = TestServer::start_with(
        "",
        &format!(
            "host_config:\n  {DOMAIN2}:\n    auth_method: jwt\n    jwt_key: \"{fixtures}/rsa-public.pem\"\n"
        ),
    )
    .await;
    let pem = std::fs::read(format!("{fixtures}/rsa-private.pem")).unwrap();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let rs256 = |claims: serde_json::Value| {
        let signed = format!(
            "{}.{}",
            e(br#"{"alg":"RS256","typ":"JWT"}"#),
            e(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{signed}.{}", e(&sig))
    };
    let tok = rs256(serde_json::json!({"jid": "alice@example.test"}));
    let mut c = raw_login(srv.addr, "alice", DOMAIN2, &tok, "rsa").await;
    c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(c.until("/>").await.contains("type='result'"));
    assert!(
        plain(srv.addr, DOMAIN2, "bob", &tok)
            .await
            .contains("not-authorized")
    );
    // The public key as an HMAC secret (algorithm confusion) is refused.
    let public = std::fs::read(format!("{fixtures}/rsa-public.pem")).unwrap();
    let confused = sign(&public, &serde_json::json!({"jid": "alice@example.test"}));
    assert!(
        plain(srv.addr, DOMAIN2, "alice", &confused)
            .await
            .contains("not-authorized")
    );
    srv.stop().await;
}

#[tokio::test]
async fn anonymous_login() {
    let srv = TestServer::start_with(
        "",
        &format!("host_config:\n  {DOMAIN2}:\n    auth_method: anonymous\n    anonymous_protocol: sasl_anon\n"),
    )
    .await;
    let f = features(srv.addr, DOMAIN2).await;
    assert!(f.contains("<mechanism>ANONYMOUS</mechanism>"), "{f}");
    assert!(!f.contains("PLAIN") && !f.contains("SCRAM"), "{f}");
    // Not offered on the internal host.
    assert!(!features(srv.addr, DOMAIN).await.contains("ANONYMOUS"));
    let mut jids = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::connect(srv.addr).await;
        c.open(DOMAIN2).await;
        c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'>=</auth>")
            .await;
        assert!(c.until("/>").await.contains("<success"));
        c.open(DOMAIN2).await;
        let jid = c.bind("anon").await;
        assert!(jid.ends_with("@example.test/anon"), "{jid}");
        c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        assert!(c.until("/>").await.contains("type='result'"));
        jids.push(jid);
    }
    assert_ne!(jids[0], jids[1], "each anonymous login is a new user");
    // PLAIN is refused on an anonymous-only host; ANONYMOUS on the internal one.
    let r = plain(srv.addr, DOMAIN2, "alice", "x").await;
    assert!(r.contains("invalid-mechanism"), "{r}");
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        .await;
    assert!(c.until("</failure>").await.contains("invalid-mechanism"));
    srv.stop().await;
}

#[test]
fn bad_auth_config_is_refused() {
    for (text, want) in [
        ("auth_method: http\n", "auth_opts"),
        ("auth_method: [external]\n", "extauth_program"),
        ("auth_method: jwt\njwt_key: /nonexistent.jwk\n", "jwt_key"),
        ("auth_method: ldap\n", "not supported"),
        ("auth_method: [http, external]\n", "one method"),
        ("auth_opts: {url: ftp://x}\n", "http"),
        (
            "auth_method: http\nauth_opts: {url: http://x, scram: [md5]}\n",
            "sha1, sha256 or sha512",
        ),
        ("auth_method: jwt\njwt_key: /dev/null\n", "jwt_key"),
    ] {
        let cfg = format!("hosts: [a.test]\n{text}");
        let err = match palaver_server::Config::parse(&cfg) {
            Err(e) => e.to_string(),
            Ok(c) => {
                let rt = tokio::runtime::Runtime::new().unwrap();
                match rt.block_on(palaver_server::Server::tool_core(
                    c,
                    &palaver_modules::registry(),
                )) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("{text} accepted"),
                }
            }
        };
        assert!(err.contains(want), "{text}: {err}");
    }
}
