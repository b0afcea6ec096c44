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
            let users = svc.users.lock().unwrap().clone();
            let answer = if head.starts_with("POST /auth/check_password ") {
                svc.checks.fetch_add(1, Ordering::SeqCst);
                users.get(&user).map(String::as_str) == req["password"].as_str()
            } else if head.starts_with("POST /auth/user_exists ") {
                users.contains_key(&user)
            } else {
                false
            };
            let body = if answer { "true" } else { "false" };
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
            "host_config:\n  {DOMAIN2}:\n    auth_method: http\n    auth_opts:\n      url: http://{svc_addr}/auth\n      bearer_token: svc-token\n      timeout: 2000\n    auth_cache_life_time: 300\n"
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
    assert!(
        run(
            "register",
            serde_json::json!({"user": "x", "host": DOMAIN2, "password": "p"})
        )
        .await
        .is_err()
    );
    task.abort();
    srv.stop().await;
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
