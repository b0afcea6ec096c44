//! The ejabberd.yml Debian ships (tests/fixtures/ejabberd/, GPL-2.0+, see its
//! README): `palaver config check` accepts it with warnings only, and
//! `palaver serve` runs it — ports, certificate and data paths rewritten in a
//! temporary copy — and a client logs in.
mod common;
mod tlsutil;
use common::*;
use std::process::{Command, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ejabberd/debian-ejabberd.yml"
);

fn run(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("PALAVER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run palaver");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(input.as_bytes()).expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn debian_ejabberd_yml_passes_config_check_with_warnings_only() {
    let (ok, out, err) = run(&["config", "check", "--config", FIXTURE], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("configuration OK: 1 host(s)"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    // Every line on stderr is the "using" note or a warning naming a key.
    for l in err.lines() {
        assert!(
            l.starts_with("warning: config key `") || l.starts_with("palaver: using configuration"),
            "unexpected: {l}"
        );
    }
    let all = warnings.join("\n");
    for key in [
        "`log_rotate_count` (line 23",
        "`c2s_ciphers`",
        "`s2s_ciphers`",
        "`api_permissions`",
        "`shaper`",
        "`shaper_rules`",
        "ejabberd_stun",
        "mod_mqtt",
        "`modules.mod_muc.access_mam`",
        "`modules.mod_muc_admin` (line",
        "`modules.mod_vcard.search`",
        "`modules.mod_stream_mgmt.resend_on_timeout`",
        "acl `blocked` is not defined",
        "/api",
    ] {
        assert!(all.contains(key), "no warning with {key}:\n{all}");
    }
    // One line per key: no key is warned about twice.
    let mut seen = std::collections::HashSet::new();
    for w in &warnings {
        assert!(seen.insert(*w), "warned twice: {w}");
    }
}

/// The Debian file with ports 0 on 127.0.0.1, certificates by glob in `dir`
/// (Let's Encrypt layout: chain and key in separate files), data in `dir`.
fn adapted_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(FIXTURE).expect("fixture");
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if t.starts_with("port: ") {
            out.push_str(&format!("{indent}port: 0\n"));
        } else if t == "ip: \"::\"" {
            out.push_str(&format!("{indent}ip: \"127.0.0.1\"\n"));
        } else if t == "- \"/etc/ejabberd/ejabberd.pem\"" {
            out.push_str(&format!(
                "{indent}- \"{d}/letsencrypt/live/*/fullchain.pem\"\n{indent}- \"{d}/letsencrypt/live/*/privkey.pem\"\n",
                d = dir.display()
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!("data_dir: \"{}/data\"\n", dir.display()));
    let path = dir.join("ejabberd.yml");
    std::fs::write(&path, out).expect("write copy");
    path
}

#[tokio::test]
async fn debian_ejabberd_yml_serves_and_a_client_logs_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, _key) = tlsutil::write_split_cert(
        &dir.path().join("letsencrypt/live/localhost"),
        &["localhost"],
    );
    let cfg = adapted_copy(dir.path());
    let cfg_s = cfg.to_str().expect("utf-8 path");

    // The password from standard input, not the command line.
    let (ok, out, err) = run(
        &["user", "add", "alice@localhost", "--config", cfg_s],
        Some("s3cret\n"),
    );
    assert!(ok, "{out}{err}");

    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config", cfg_s])
        .env_remove("PALAVER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut c2s_tls = None;
    let mut https = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(TIMEOUT, lines.next_line()).await {
        if line.contains("listening on") {
            let a: std::net::SocketAddr = line
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.parse().ok())
                .expect("address");
            if line.contains("(C2s, direct TLS)") {
                c2s_tls = Some(a);
            } else if line.contains("(Http, direct TLS)") {
                https.push(a);
            }
        }
        if line.contains("data directory") {
            break;
        }
    }
    let c2s_tls = c2s_tls.expect("a direct-TLS c2s listener (5223 in the file)");
    assert_eq!(https.len(), 2, "both http listeners have tls: true");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // The certificate found through the certfiles glob is the one served.
    let tls_cfg = tlsutil::client_config(&chain, &[b"xmpp-client"]);
    let stream = tlsutil::connect(c2s_tls, "localhost", tls_cfg)
        .await
        .expect("TLS with the certificate from the glob");
    let mut c = Raw {
        s: stream,
        buf: String::new(),
    };
    let jid = c.login_plain("alice", "localhost", "s3cret", "deb").await;
    assert_eq!(jid, "alice@localhost/deb");
    c.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let r = c.until("</iq>").await;
    assert!(
        r.contains("type='result'") || r.contains("type=\"result\""),
        "{r}"
    );
    c.send("</stream:stream>").await;
    let _ = c.s.shutdown().await;

    // host-meta over HTTPS advertises what is served: https and wss.
    let http_cfg = tlsutil::client_config(&chain, &[b"http/1.1"]);
    let mut s = tlsutil::connect(https[0], "localhost", http_cfg)
        .await
        .expect("HTTPS");
    let resp = tlsutil::http_get(&mut s, "localhost", "/.well-known/host-meta").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("wss://localhost/ws"), "{resp}");
    assert!(resp.contains("https://localhost/bosh"), "{resp}");

    let pid = child.id().expect("pid");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("exits on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
