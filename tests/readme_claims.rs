//! README claims shown end to end: idle and authentication timeouts, the
//! legacy `<session/>` IQ, upload retention, `certfiles` certificates chosen
//! by SNI, and `<system-shutdown/>` on a real SIGTERM to the binary.
mod common;
mod tlsutil;
use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

fn assert_stream_error(out: &str, condition: &str) {
    assert!(
        out.contains("<stream:error>")
            && out.contains(&format!(
                "<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'"
            ))
            && out.contains("</stream:stream>"),
        "expected <{condition}/> and the stream's end: {out}"
    );
}

/// `idle_timeout`: a bound session that says nothing is closed with
/// `<connection-timeout/>` after the configured time; one that keeps
/// talking is kept. `auth_timeout`: a connection that never authenticates
/// is closed the same way.
#[tokio::test]
async fn idle_and_auth_timeouts_close_silent_connections() {
    let srv = TestServer::start_with(
        "    idle_timeout: 1\n    auth_timeout: 1\n",
        "modules:\n  mod_ping: {}\n",
    )
    .await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut talker = raw_login(srv.addr, "bob", DOMAIN, "pw", "t").await;
    let unauth_since = Instant::now();
    let mut unauth = Raw::connect(srv.addr).await;
    unauth.open(DOMAIN).await;
    let mut silent = raw_login(srv.addr, "alice", DOMAIN, "pw", "s").await;
    // The server reads this ping after `since`: its idle time starts later.
    let since = Instant::now();
    silent
        .send("<iq type='get' id='last'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    silent.until("id='last'").await;
    let silent_task = tokio::spawn(async move {
        let out = silent.until_closed().await;
        (out, since.elapsed())
    });
    let unauth_task = tokio::spawn(async move {
        let out = unauth.until_closed().await;
        (out, unauth_since.elapsed())
    });
    // bob pings every 400 ms for 2.4 s: more than twice the idle time.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        talker
            .send(&format!(
                "<iq type='get' id='k{i}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        let r = talker.until(&format!("id='k{i}'")).await;
        assert!(!r.contains("stream:error"), "talker closed: {r}");
    }
    let (out, took) = silent_task.await.expect("join");
    assert_stream_error(&out, "connection-timeout");
    assert!(
        took >= Duration::from_millis(1000),
        "closed before idle_timeout: {took:?}"
    );
    let (out, took) = unauth_task.await.expect("join");
    assert_stream_error(&out, "connection-timeout");
    assert!(
        took >= Duration::from_millis(1000),
        "closed before auth_timeout: {took:?}"
    );
    srv.stop().await;
}

/// RFC 3921 session establishment: advertised as optional after
/// authentication, answered with a result, and the session goes on.
#[tokio::test]
async fn legacy_session_iq_is_answered() {
    let srv = TestServer::start_with("", "modules:\n  mod_ping: {}\n").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode("\0alice\0pw");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    assert!(c.until("/>").await.contains("<success"));
    let features = c.open(DOMAIN).await;
    assert!(
        features
            .contains("<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"),
        "{features}"
    );
    let jid = c.bind("legacy").await;
    assert_eq!(jid, "alice@localhost/legacy");
    c.send("<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    let r = c.until("id='sess1'").await;
    let r = format!("{r}{}", c.until("/>").await);
    assert!(r.contains("type='result'"), "{r}");
    assert!(!r.contains("error"), "{r}");
    c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = c.until("id='p1'").await;
    let r = format!("{r}{}", c.until("/>").await);
    assert!(r.contains("type='result'"), "{r}");
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

fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let start = s.find(a).expect(a) + a.len();
    let end = s[start..].find(b).expect(b) + start;
    &s[start..end]
}

/// Upload a file; its (slot directory, GET path).
async fn upload(srv: &TestServer, c: &mut RawTcp, id: &str, data: &[u8]) -> (String, String) {
    c.send(&format!("<iq type='get' id='{id}' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='{id}.txt' size='{}' content-type='text/plain'/></iq>", data.len())).await;
    c.until(&format!("id='{id}'")).await;
    let slot = c.until("</iq>").await;
    let put = url_path(between(&slot, "<put url='", "'"));
    let get = url_path(between(&slot, "<get url='", "'"));
    let st = http(
        srv.http_addr,
        "PUT",
        &put,
        "Content-Type: text/plain\r\n",
        data,
    )
    .await;
    assert_eq!(st, 201, "{put}");
    assert_eq!(http(srv.http_addr, "GET", &get, "", b"").await, 200);
    // /upload/OWNER/SLOT/NAME?s=…
    let dir: Vec<&str> = get.split('?').next().expect("path").split('/').collect();
    (format!("{}/{}", dir[2], dir[3]), get)
}

/// `retention_days`: a file older than the retention is deleted (GET 404s)
/// when the server next checks, which it does at start and hourly; a newer
/// one stays. Time is driven by the file's age, not by waiting.
#[tokio::test]
async fn upload_retention_deletes_old_files() {
    const MODULES: &str = "modules:\n  mod_ping: {}\n  mod_disco: {}\n  mod_http_upload:\n    max_size: 1000\n    secret: retention-secret\n    retention_days: 2\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", MODULES);
    let srv = TestServer::start_with_config_text(dir, &text).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = raw_login(srv.addr, "alice", DOMAIN, "pw", "r").await;
    let (old_dir, old_get) = upload(&srv, &mut c, "old", b"old file").await;
    let (new_dir, new_get) = upload(&srv, &mut c, "new", b"new file").await;
    drop(c);
    let TestServer { server, dir, .. } = srv;
    if let Some(s) = server {
        s.shutdown().await;
    }
    // Three days old: past the two days of retention. One day old: kept.
    let root = dir.path().join("upload");
    let age = |slot: &str, days: u64| {
        let when = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
        std::fs::File::open(root.join(slot))
            .and_then(|f| f.set_modified(when))
            .expect("set the slot's age");
    };
    age(&old_dir, 3);
    age(&new_dir, 1);
    let srv = TestServer::start_with_config_text(dir, &text).await;
    // The check at start runs in the background: wait for its effect.
    let mut status = 0;
    for _ in 0..100 {
        status = http(srv.http_addr, "GET", &old_get, "", b"").await;
        if status == 404 && !root.join(&old_dir).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 404, "the expired file is still served");
    assert!(!root.join(&old_dir).exists(), "the expired file is deleted");
    assert_eq!(http(srv.http_addr, "GET", &new_get, "", b"").await, 200);
    srv.stop().await;
}

/// `certfiles`: each host's own certificate (chain and key in separate
/// files) is served by SNI on direct TLS and after STARTTLS.
#[tokio::test]
async fn certfiles_certificates_are_chosen_by_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain1, key1) = tlsutil::write_split_cert(&dir.path().join("le/one"), &[DOMAIN]);
    let (chain2, key2) = tlsutil::write_split_cert(&dir.path().join("le/two"), &[DOMAIN2]);
    let mut text = config_text(dir.path(), "", "modules:\n  mod_ping: {}\n");
    text.push_str(&format!(
        "certfiles:\n  - {}\n  - {}\n  - {}\n  - {}\n",
        chain1.display(),
        key1.display(),
        chain2.display(),
        key2.display()
    ));
    let srv = TestServer::start_with_config_text(dir, &text).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("zed", DOMAIN2, "pw").await;
    let only1 = tlsutil::client_config(&chain1, &[b"xmpp-client"]);
    let only2 = tlsutil::client_config(&chain2, &[b"xmpp-client"]);
    // Each name gets its own file's certificate, and only that one.
    let s = tlsutil::connect(srv.tls_addr, DOMAIN, only1.clone())
        .await
        .expect("localhost's certificate from certfiles");
    let mut c = Raw {
        s,
        buf: String::new(),
    };
    assert_eq!(
        c.login_plain("alice", DOMAIN, "pw", "tls").await,
        "alice@localhost/tls"
    );
    let s = tlsutil::connect(srv.tls_addr, DOMAIN2, only2.clone())
        .await
        .expect("example.test's certificate from certfiles");
    let mut c = Raw {
        s,
        buf: String::new(),
    };
    assert_eq!(
        c.login_plain("zed", DOMAIN2, "pw", "tls").await,
        "zed@example.test/tls"
    );
    assert!(
        tlsutil::connect(srv.tls_addr, DOMAIN2, only1.clone())
            .await
            .is_err(),
        "example.test is not served localhost's certificate"
    );
    assert!(
        tlsutil::connect(srv.tls_addr, DOMAIN, only2.clone())
            .await
            .is_err(),
        "localhost is not served example.test's certificate"
    );
    // STARTTLS picks by SNI too.
    for (host, cfg, other) in [(DOMAIN2, &only2, &only1), (DOMAIN, &only1, &only2)] {
        for (cfg, ok) in [(cfg, true), (other, false)] {
            let mut tcp = tokio::net::TcpStream::connect(srv.addr)
                .await
                .expect("connect");
            tcp.write_all(header(host).as_bytes()).await.expect("write");
            let mut raw = Raw {
                s: tcp,
                buf: String::new(),
            };
            raw.until("</stream:features>").await;
            raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await;
            raw.until("<proceed").await;
            raw.until("/>").await;
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("name");
            let r = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, raw.s)
                .await;
            assert_eq!(r.is_ok(), ok, "STARTTLS to {host}: {r:?}");
        }
    }
    srv.stop().await;
}

/// SIGTERM to the real binary: a connected client gets
/// `<system-shutdown/>` and the stream's end, and the process exits 0.
#[tokio::test]
async fn sigterm_sends_system_shutdown_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("palaver.yml");
    std::fs::write(&cfg, config_text(dir.path(), "", "")).expect("write config");
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let out = Command::new(BIN)
        .args(["user", "add", "alice@localhost", "pw", "--config", cfg_s])
        .output()
        .expect("run palaver");
    assert!(out.status.success(), "{out:?}");
    let served = common::process::spawn_serve(cfg.as_ref()).await;
    let addr = served.c2s();
    let mut child = served.child;
    let mut c = raw_login(addr, "alice", DOMAIN, "pw", "r").await;
    c.send("<presence/>").await;
    c.until("<presence").await;
    let pid = child.id().expect("pid");
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = c.until_closed().await;
    assert_stream_error(&out, "system-shutdown");
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "clean exit: {status:?}");
}
