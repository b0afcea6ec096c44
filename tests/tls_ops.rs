//! TLS operations on the real binary: certificates reloaded on `SIGHUP`
//! without dropping connected clients, TLS 1.2 as the minimum, and
//! `palaver config check` warning about certificates that will not be
//! trusted or expire soon.
mod common;
mod tlsutil;
use common::process::BIN;
use common::*;

use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write_cert(path: &std::path::Path, names: &[&str], days: i64) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (y, m, d) = civil(now + days * 86_400);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(path, format!("{}{}", cert.pem(), key.serialize_pem())).expect("write cert");
}

/// (year, month, day) of a Unix time.
fn civil(t: i64) -> (i32, u8, u8) {
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// The leaf certificate a TLS handshake with `addr` presents for `localhost`.
async fn presented(addr: std::net::SocketAddr, trust: &std::path::Path) -> Vec<u8> {
    let cfg = tlsutil::client_config(trust, &[b"xmpp-client"]);
    let s = tlsutil::connect(addr, DOMAIN, cfg)
        .await
        .expect("TLS handshake with the trusted certificate");
    let certs = s.get_ref().1.peer_certificates().expect("certificates");
    certs[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_keeps_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("localhost.pem");
    write_cert(&cert, &[DOMAIN], 90);
    let first = dir.path().join("first.pem");
    std::fs::copy(&cert, &first).expect("copy");
    let cfg = dir.path().join("palaver.yml");
    std::fs::write(
        &cfg,
        format!(
            "hosts: [{DOMAIN}]\nloglevel: info\ndata_dir: {d}\ncertfiles: [{c}]\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    tls: true\nmodules:\n  mod_ping: {{}}\n",
            d = dir.path().display(),
            c = cert.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(BIN)
        .args(["user", "add", "alice@localhost", "pw", "--config"])
        .arg(&cfg)
        .output()
        .expect("user add");
    assert!(out.status.success());
    let served = common::process::spawn_serve(&cfg).await;
    let addr = served.addr("direct TLS");
    let (mut child, mut log) = (served.child, served.log);
    let before = presented(addr, &first).await;

    // A client stays connected across the reload.
    let tls = tlsutil::client_config(&first, &[b"xmpp-client"]);
    let s = tlsutil::connect(addr, DOMAIN, tls).await.expect("connect");
    let mut alice = Raw {
        s,
        buf: String::new(),
    };
    alice.login_plain("alice", DOMAIN, "pw", "r").await;

    // Renew the certificate and send SIGHUP.
    write_cert(&cert, &[DOMAIN], 120);
    let pid = child.id().expect("pid") as i32;
    // SAFETY: kill(2) with our own child's PID and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reloaded = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = log.recv().await {
            if line.contains("certificates reloaded") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(reloaded, Ok(true), "the server logged the reload");
    // New handshakes present the new certificate (trusted by its own PEM).
    let after = presented(addr, &cert).await;
    assert!(
        !after.is_empty() && after != before,
        "the renewed certificate is served"
    );
    alice
        .send("<iq type='get' id='still'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    alice.until("id='still'").await;

    // TLS 1.1 is refused; TLS 1.2 works (the same client otherwise).
    if which("openssl") {
        let try_version = |v: &str| {
            let mut c = std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &addr.to_string(),
                    v,
                    "-cipher",
                    "DEFAULT@SECLEVEL=0",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("openssl");
            drop(c.stdin.take());
            let out = c.wait_with_output().expect("openssl output");
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
        };
        let v12 = try_version("-tls1_2");
        assert!(
            v12.contains("Protocol  : TLSv1.2") || v12.contains("TLSv1.2"),
            "{v12}"
        );
        let v11 = try_version("-tls1_1");
        assert!(
            v11.contains("Cipher is (NONE)") && v11.contains("alert"),
            "TLS 1.1 must be refused: {v11}"
        );
    } else if std::env::var_os("CI").is_some() {
        panic!("openssl is needed for the TLS version check");
    }

    // SIGTERM for a clean stop.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = tokio::time::timeout(TIMEOUT, child.wait()).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, alice.s.read_to_end(&mut rest)).await;
    let _ = alice.s.shutdown().await;
}

fn which(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn config_check_warns_about_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let soon = dir.path().join("soon.pem");
    write_cert(&soon, &[DOMAIN], 5);
    let cfg = dir.path().join("palaver.yml");
    std::fs::write(
        &cfg,
        format!(
            "hosts: [{DOMAIN}, uncovered.test]\ndata_dir: {d}\ncertfiles: [{c}]\n",
            d = dir.path().display(),
            c = soon.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .expect("config check");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("host localhost expires in 4 day(s)")
            || text.contains("host localhost expires in 5 day(s)"),
        "{text}"
    );
    assert!(
        text.contains("no certificate in `certfiles` covers host uncovered.test"),
        "{text}"
    );
    assert!(
        !dir.path().join("certs").exists(),
        "the check wrote nothing to the data directory"
    );
}
