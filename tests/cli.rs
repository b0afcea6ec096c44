//! The `palaver` binary: serve, user management while serving, config check.
mod common;
use common::*;
use std::process::{Command, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("palaver.yml");
    std::fs::write(&path, config_text(dir, "", "")).expect("write config");
    path
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().expect("run palaver");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn serve_and_manage_users_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config", cfg_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let mut saw_data = false;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(TIMEOUT, lines.next_line()).await {
        if addr.is_none() && line.contains("listening on") && line.contains("C2s)") {
            let a = line.split_whitespace().nth(2).expect("address");
            addr = Some(a.parse::<std::net::SocketAddr>().expect("socket address"));
        }
        if line.contains("data directory") {
            saw_data = true;
            break;
        }
    }
    let addr = addr.expect("serve printed its c2s address");
    assert!(saw_data, "serve prints its data directory");

    let (ok, out) = run(&[
        "user",
        "add",
        "alice@localhost",
        "s3cret",
        "--config",
        cfg_s,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["user", "add", "alice@localhost", "again", "--config", cfg_s]);
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = run(&["user", "add", "bob@unknown.example", "x", "--config", cfg_s]);
    assert!(!ok && out.contains("not served"), "{out}");
    let (ok, out) = run(&["user", "list", "--config", cfg_s]);
    assert!(ok && out.contains("alice@localhost"), "{out}");

    // The running server sees the new account at once.
    let mut c = raw_login(addr, "alice", DOMAIN, "s3cret", "r").await;
    c.send("</stream:stream>").await;
    c.until_closed().await;

    let (ok, out) = run(&[
        "user",
        "passwd",
        "alice@localhost",
        "n3w",
        "--config",
        cfg_s,
    ]);
    assert!(ok, "{out}");
    let mut c = raw_login(addr, "alice", DOMAIN, "n3w", "r").await;
    c.send("</stream:stream>").await;
    c.until_closed().await;

    let (ok, out) = run(&["user", "del", "alice@localhost", "--config", cfg_s]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["user", "del", "alice@localhost", "--config", cfg_s]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (_, out) = run(&["user", "list", "localhost", "--config", cfg_s]);
    assert!(!out.contains("alice@"), "{out}");

    // SIGTERM: graceful shutdown.
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

#[test]
fn config_check_reports_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let (ok, out) = run(&["config", "check", "--config", cfg.to_str().expect("path")]);
    assert!(ok, "{out}");
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "hosts: [localhost]\nlisten:\n  - port: 5222\n    module: c2s\n    startls: true\n",
    )
    .expect("write");
    let (ok, out) = run(&["config", "check", "--config", bad.to_str().expect("path")]);
    assert!(!ok, "{out}");
    assert!(out.contains("startls") && out.contains('5'), "{out}");
    std::fs::write(&bad, "hosts: [localhost]\nmodules:\n  mod_nope: {}\n").expect("write");
    let (ok, out) = run(&["config", "check", "--config", bad.to_str().expect("path")]);
    assert!(
        !ok && out.contains("mod_nope") && out.contains("line 3"),
        "{out}"
    );
    std::fs::write(
        &bad,
        "hosts: [localhost]\nmodules:\n  mod_version: {show_os: maybe}\n",
    )
    .expect("write");
    let (ok, out) = run(&["config", "check", "--config", bad.to_str().expect("path")]);
    assert!(!ok && out.contains("mod_version"), "{out}");
    let (ok, out) = run(&["config", "check", "--config", "palaver.example.yml"]);
    assert!(ok, "{out}");
}

fn run_in(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (bool, String) {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("PALAVER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run palaver");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn finds_its_config_and_reads_passwords_from_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // No config anywhere: account and check commands say so and create nothing.
    let (ok, out) = run_in(d, &["user", "list"], &[], "");
    assert!(!ok && out.contains("no configuration file found"), "{out}");
    assert!(!d.join("palaver-data").exists(), "nothing created");
    let (ok, out) = run_in(d, &["config", "check"], &[], "");
    assert!(
        !ok && out.contains("no configuration file found to check"),
        "{out}"
    );
    // ./palaver-data from `palaver serve` on the defaults: the defaults are used.
    std::fs::create_dir(d.join("palaver-data")).expect("mkdir");
    let (ok, out) = run_in(d, &["user", "list"], &[], "");
    assert!(ok && out.contains("embedded defaults"), "{out}");

    // ./palaver.yml is found, and said so.
    let data = d.join("data");
    std::fs::write(d.join("palaver.yml"), config_text(&data, "", "")).expect("write");
    let (ok, out) = run_in(d, &["config", "check"], &[], "");
    assert!(
        ok && out.contains("using configuration palaver.yml (found in the current directory)"),
        "{out}"
    );
    // $PALAVER_CONFIG wins over ./palaver.yml.
    let other = d.join("other.yml");
    std::fs::write(&other, config_text(&data, "", "")).expect("write");
    let other_s = other.to_str().expect("path");
    let (ok, out) = run_in(d, &["user", "list"], &[("PALAVER_CONFIG", other_s)], "");
    assert!(
        ok && out.contains(&format!("using configuration {other_s} ($PALAVER_CONFIG)")),
        "{out}"
    );
    let (ok, out) = run_in(
        d,
        &["user", "list"],
        &[("PALAVER_CONFIG", "/nonexistent.yml")],
        "",
    );
    assert!(!ok && out.contains("PALAVER_CONFIG"), "{out}");

    // No password argument and stdin is not a terminal: one line of stdin.
    let (ok, out) = run_in(d, &["user", "add", "carol@localhost"], &[], "pa ss\n");
    assert!(ok && out.contains("created carol@localhost"), "{out}");
    let (ok, out) = run_in(d, &["user", "passwd", "carol@localhost"], &[], "");
    assert!(!ok && out.contains("must not be empty"), "{out}");
    let (ok, out) = run_in(d, &["user", "passwd", "carol@localhost"], &[], "n3w\r\n");
    assert!(ok && out.contains("password changed"), "{out}");
    let (ok, out) = run_in(d, &["user", "list"], &[], "");
    assert!(ok && out.contains("carol@localhost"), "{out}");
}
