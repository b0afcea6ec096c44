//! The `palaver` binary: serve, user management and `palaver ctl` through
//! the running server's control socket (and offline), config check.
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

/// Run the binary; stdout then stderr, without the line that says which
/// configuration file was used.
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().expect("run palaver");
    let stderr: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("palaver: using configuration"))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    (out.status.success(), text)
}

#[tokio::test]
async fn serve_and_manage_users_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let cfg_s = cfg.to_str().expect("utf-8 path");
    // A socket file left by a killed server: offline tools and a new server
    // see nobody answers on it.
    let sock = dir.path().join("palaver.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind stale socket"));
    assert!(sock.exists());
    let (ok, out) = run(&["user", "add", "zed@localhost", "z", "--config", cfg_s]);
    assert!(ok, "offline with a stale socket: {out}");
    let served = common::process::spawn_serve(cfg.as_ref()).await;
    let addr = served.c2s();
    assert!(served.printed_data_dir, "serve prints its data directory");
    let mut child = served.child;
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(&sock).expect("control socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    // A second server on the same data directory refuses to start.
    let (ok, out) = run(&["serve", "--config", cfg_s]);
    assert!(
        !ok && out.contains("another palaver server is running"),
        "{out}"
    );
    let (ok, out) = run(&["ctl", "status", "--config", cfg_s]);
    assert!(ok && out.contains("is running"), "{out}");
    let (ok, out) = run(&["ctl", "stats", "--config", cfg_s]);
    assert!(
        ok && out.contains("onlineusers 0") && out.contains("registeredusers 1"),
        "{out}"
    );
    let (ok, out) = run(&["ctl", "stats", "registeredusers", "--config", cfg_s]);
    assert!(ok && out.trim() == "1", "{out}");
    // REST API tokens: created through the running server, shown once.
    let (ok, out) = run(&[
        "ctl", "token", "create", "--scope", "accounts", "--scope", "status", "--config", cfg_s,
    ]);
    let token = out
        .lines()
        .find(|l| l.starts_with("pvt_"))
        .unwrap_or_else(|| panic!("token printed: {out}"))
        .to_string();
    assert!(ok);
    let stored = std::fs::read_to_string(dir.path().join("api_tokens.json")).expect("tokens");
    assert!(!stored.contains(&token) && stored.contains("accounts"));
    let (ok, out) = run(&["ctl", "token", "list", "--config", cfg_s]);
    assert!(
        ok && out.contains("\"status\"") && !out.contains(&token),
        "{out}"
    );
    let (ok, out) = run(&["ctl", "token", "bogus", "--config", cfg_s]);
    assert!(!ok && out.contains("usage"), "{out}");

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

    // Deleting a connected user ends its session in the running server.
    let mut c = raw_login(addr, "alice", DOMAIN, "n3w", "desk").await;
    let (ok, out) = run(&["ctl", "connected_users", "--config", cfg_s]);
    assert!(ok && out.trim() == "alice@localhost/desk", "{out}");
    let (ok, out) = run(&["ctl", "user_resources", "alice", "localhost", "-c", cfg_s]);
    assert!(ok && out.trim() == "desk", "{out}");
    let (ok, out) = run(&["user", "del", "alice@localhost", "--config", cfg_s]);
    assert!(ok && out.contains("deleted alice@localhost"), "{out}");
    let closed = c.until_closed().await;
    assert!(closed.contains("</stream:stream>"), "{closed}");
    let (ok, out) = run(&["ctl", "connected_users", "--config", cfg_s]);
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, out) = run(&[
        "ctl",
        "check_account",
        "alice",
        "localhost",
        "--config",
        cfg_s,
    ]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, out) = run(&["user", "del", "alice@localhost", "--config", cfg_s]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (_, out) = run(&["user", "list", "localhost", "--config", cfg_s]);
    assert!(!out.contains("alice@"), "{out}");

    // XEP-0227 export and import run in the running server.
    let (ok, out) = run(&["user", "add", "erin@localhost", "e-pw", "--config", cfg_s]);
    assert!(ok, "{out}");
    let export = dir.path().join("out.xml");
    let (ok, out) = run(&[
        "db",
        "export",
        "localhost",
        export.to_str().expect("path"),
        "--config",
        cfg_s,
    ]);
    assert!(
        ok && out.contains("exported 2 account(s) of localhost"),
        "{out}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&export)
            .expect("export")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let (ok, out) = run(&["db", "export", "localhost", "-", "--config", cfg_s]);
    assert!(ok && out.contains("<user name='erin'"), "{out}");
    let file = dir.path().join("in.xml");
    std::fs::write(
        &file,
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='frank' password='f-pw'><vCard xmlns='vcard-temp'><FN>Frank</FN></vCard></user></host></server-data>",
    )
    .expect("write");
    let (ok, out) = run(&[
        "db",
        "import",
        file.to_str().expect("path"),
        "--config",
        cfg_s,
    ]);
    assert!(
        ok && out.contains("imported 1 account(s)") && out.contains("1 vCard(s)"),
        "{out}"
    );
    let mut c = raw_login(addr, "frank", DOMAIN, "f-pw", "r").await;
    c.send("</stream:stream>").await;
    c.until_closed().await;
    let (ok, out) = run(&[
        "db",
        "import",
        file.to_str().expect("path"),
        "--config",
        cfg_s,
    ]);
    assert!(
        !ok && out.contains("already exist: frank@localhost"),
        "{out}"
    );

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
    assert!(!sock.exists(), "the control socket is removed at shutdown");
}

#[test]
fn ctl_offline_and_argument_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--config", cfg_s];
        all.extend_from_slice(args);
        run(&all)
    };
    // Help lists the commands and their arguments.
    let (ok, out) = run(&["ctl", "--help"]);
    assert!(
        ok && out.contains("connected_users") && out.contains("kick_user"),
        "{out}"
    );
    let (ok, out) = ctl(&["help", "register"]);
    assert!(
        ok && out.contains("register USER HOST PASSWORD") && out.contains("password"),
        "{out}"
    );
    let (ok, out) = ctl(&["import_piefxis", "--help"]);
    assert!(ok && out.contains("[--force]"), "{out}");

    // Commands that need a running server say so.
    for cmd in ["connected_users", "status"] {
        let (ok, out) = ctl(&[cmd]);
        assert!(!ok && out.contains("server is not running"), "{out}");
    }
    let (ok, out) = ctl(&["kick_user", "alice", "localhost"]);
    assert!(!ok && out.contains("server is not running"), "{out}");

    // Offline, the others run here.
    let (ok, out) = ctl(&["register", "Bob", "localhost", "pw"]);
    assert!(ok && out.contains("created bob@localhost"), "{out}");
    let (ok, out) = ctl(&["check_account", "--user", "bob", "--host=localhost"]);
    assert!(ok && out.contains("bob@localhost exists"), "{out}");
    let (ok, out) = ctl(&["registered_users", "localhost"]);
    assert!(ok && out.trim() == "bob", "{out}");
    let (ok, out) = ctl(&["change_password", "bob", "localhost", "pw2"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["user", "list", "--config", cfg_s]);
    assert!(ok && out.contains("bob@localhost"), "{out}");
    let (ok, out) = ctl(&["unregister", "bob", "localhost"]);
    assert!(ok && out.contains("deleted bob@localhost"), "{out}");
    let (ok, out) = ctl(&["registered_vhosts"]);
    assert!(
        ok && out.contains("localhost") && out.contains("example.test"),
        "{out}"
    );

    // Argument errors name the argument.
    let bad = |args: &[&str], needles: &[&str]| {
        let (ok, out) = ctl(args);
        assert!(!ok, "{args:?}: {out}");
        for n in needles {
            assert!(out.contains(n), "{args:?}: {n:?} in {out}");
        }
    };
    bad(&["nope"], &["unknown command `nope`"]);
    bad(&["help", "nope"], &["unknown command `nope`"]);
    bad(
        &["register", "bob"],
        &["missing argument `host`", "register USER HOST PASSWORD"],
    );
    bad(
        &["register", "bob", "localhost", "pw", "extra"],
        &["extra argument `extra`"],
    );
    bad(
        &["register", "a@b", "localhost", "pw"],
        &["argument `user`", "`a@b` is not a valid JID localpart"],
    );
    bad(
        &["register", "bob", "localhost", ""],
        &["argument `password`", "must not be empty"],
    );
    bad(
        &["registered_users", "nothere.example"],
        &["argument `host`", "not served"],
    );
    bad(
        &["registered_users", "--bogus=1"],
        &["unknown argument `--bogus`"],
    );
    bad(
        &["registered_users", "--host"],
        &["`--host`", "needs a value"],
    );
    bad(
        &["import_piefxis", "x.xml", "--force=maybe"],
        &["argument `force`", "not true or false"],
    );
    bad(
        &["check_account", "nobody", "localhost"],
        &["nobody@localhost does not exist"],
    );
    bad(&["connected_users", "extra"], &["extra argument `extra`"]);
}

/// The control channel protocol, spoken directly.
#[tokio::test]
async fn control_socket_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", "");
    let config = palaver_server::config::Config::parse(&text).expect("config");
    let mut server = palaver_server::Server::start(config, &palaver_admin::registry())
        .await
        .expect("server starts");
    let path = palaver_admin::control::start(&mut server).expect("control socket");
    let call = |raw: &'static str| {
        let path = path.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::UnixStream::connect(&path)
                .await
                .expect("connect");
            s.write_all(raw.as_bytes()).await.expect("write");
            s.shutdown().await.expect("shutdown");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            serde_json::from_str::<serde_json::Value>(&out).expect("JSON response")
        }
    };
    let r = call(r#"{"command": "register", "args": {"user": "carol", "host": "localhost", "password": "pw"}}"#).await;
    assert_eq!(r, serde_json::json!({"ok": "created carol@localhost"}));
    let r = call(r#"{"command": "registered_users", "args": {"host": "localhost"}}"#).await;
    assert_eq!(r, serde_json::json!({"ok": ["carol"]}));
    let r = call(r#"{"command": "connected_users_number"}"#).await;
    assert_eq!(r, serde_json::json!({"ok": 0}));
    let r = call(r#"{"command": "register", "args": {"user": "carol", "host": "localhost", "password": "pw"}}"#).await;
    assert_eq!(r["error"]["code"], "conflict", "{r}");
    let r = call(r#"{"command": "register", "args": {"user": "carol", "host": "localhost", "password": 5, "x": 1}}"#).await;
    assert_eq!(r["error"]["code"], "bad_argument", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown argument `x`")),
        "{r}"
    );
    let r = call(r#"{"command": "kick_user", "args": {"user": "carol", "host": 7}}"#).await;
    assert_eq!(r["error"]["code"], "bad_argument", "{r}");
    let r = call(r#"{"command": "nope"}"#).await;
    assert_eq!(r["error"]["code"], "unknown_command", "{r}");
    let r = call("not json").await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    server.shutdown().await;
    assert!(!path.exists(), "removed at shutdown");
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

#[tokio::test]
async fn log_file_reopened_by_command_and_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let log = dir.path().join("palaver.log");
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config", cfg_s, "--log-file"])
        .arg(&log)
        .env("PALAVER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(TIMEOUT, lines.next_line()).await {
        if line.contains("data directory") {
            break;
        }
    }
    let first = std::fs::read_to_string(&log).expect("log file");
    assert!(first.contains("control socket listening"), "{first}");
    assert!(!first.contains("\u{1b}["), "no colour codes in the file");
    // Rotated away: the command reopens the path.
    std::fs::rename(&log, dir.path().join("palaver.log.1")).expect("rotate");
    let (ok, out) = run(&["ctl", "reopen_log", "--config", cfg_s]);
    assert!(ok && out.contains("reopened"), "{out}");
    let (ok, _) = run(&["ctl", "status", "--config", cfg_s]);
    assert!(ok);
    assert!(log.exists(), "a new file after reopen_log");
    // And SIGUSR1.
    std::fs::rename(&log, dir.path().join("palaver.log.2")).expect("rotate");
    let pid = child.id().expect("pid");
    let _ = Command::new("kill")
        .arg("-USR1")
        .arg(pid.to_string())
        .status();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !log.exists() && std::time::Instant::now() < deadline {
        let (ok, _) = run(&["ctl", "status", "--config", cfg_s]);
        assert!(ok);
    }
    assert!(log.exists(), "a new file after SIGUSR1");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = tokio::time::timeout(TIMEOUT, child.wait()).await;
}

/// The Docker image's entrypoint and both of its configs (SQLite, and
/// PostgreSQL when `PALAVER_DB_URL` is set) give a configuration that
/// `palaver config check` accepts, with the domain from `XMPP_DOMAIN`.
/// (The image itself is built by `docker build`, not here.)
#[test]
fn docker_entrypoint_configs_check() {
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (config, db) in [
        ("deploy/docker/palaver.yml", None),
        (
            "deploy/docker/palaver-pgsql.yml",
            Some("postgres://u@db/palaver"),
        ),
    ] {
        let mut cmd = Command::new("sh");
        cmd.args(["deploy/docker/entrypoint.sh", "config", "check"])
            .env("PATH", &path)
            .env("XMPP_DOMAIN", "chat.example.org")
            .env("PALAVER_CONFIG", config)
            .env_remove("PALAVER_DB_URL");
        if let Some(url) = db {
            cmd.env("PALAVER_DB_URL", url);
        }
        let out = cmd.output().expect("run the entrypoint");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{config}: {text}");
        assert!(
            text.contains("configuration OK: 1 host(s), 3 listener(s)")
                && text.contains("chat.example.org"),
            "{config}: {text}"
        );
    }
}
