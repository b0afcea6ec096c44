//! Issue 10: the client interop matrix. Real client software, on its own
//! defaults, against a real server: log in with TLS, get the roster, send a
//! message to another user and receive one. One test per client:
//!
//! | test                   | client                                   | transport         |
//! |------------------------|------------------------------------------|-------------------|
//! | `slixmpp_starttls`     | Debian `python3-slixmpp` (1.8.3)         | TCP + STARTTLS    |
//! | `xmppjs_tcp_starttls`  | npm `@xmpp/client` 0.14.0 (xmpp.js)      | TCP + STARTTLS    |
//! | `xmppjs_websocket`     | npm `@xmpp/client` 0.14.0 (xmpp.js)      | WebSocket (`ws:`) |
//! | `mcabber_starttls`     | Debian `mcabber` (headless, in tmux)     | TCP + STARTTLS    |
//! | `sendxmpp_starttls`    | Debian `sendxmpp` (send only)            | TCP + STARTTLS    |
//!
//! tokio-xmpp's row is `tokio_xmpp_interop_matrix` in tests/clients.rs, and
//! Converse.js's is tests/browser.rs.
//!
//! The other side of every chat is Bob on a raw TCP connection. Each client
//! trusts the server's generated certificate explicitly (certificate
//! verification stays on). The scripts are under clients/; `bash
//! clients/setup.sh` installs the Debian packages and the pinned npm packages.
//! When a client is missing the test prints a notice and passes, unless `CI`
//! is set: then it fails.
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout_at};

/// Budget for one client run, login to goodbye.
const BUDGET: Duration = Duration::from_secs(45);
/// No spaces: sendxmpp's rc file splits on them.
const ALICE_PW: &str = "alice-interop-pw";
const BOB_PW: &str = "bob-raw-pw";
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// True when the test should run; false (after a notice) when something is
/// missing; panics under CI when something is missing.
fn prerequisites(test: &str, missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "interop test {test}: missing {}; run `bash clients/setup.sh`",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so this is a failure)");
    }
    eprintln!("NOTICE: skipping {msg}");
    false
}

/// Whether `program args…` runs and exits 0.
fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn missing_programs(programs: &[(&str, &[&str])]) -> Vec<String> {
    programs
        .iter()
        .filter(|(p, args)| !runs(p, args))
        .map(|(p, _)| (*p).to_string())
        .collect()
}

fn missing_files(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !f.exists())
        .map(|f| f.display().to_string())
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// Value of attribute `name` in the start tag at the beginning of `stanza`.
fn attr(stanza: &str, name: &str) -> Option<String> {
    let tag = &stanza[..stanza.find('>')?];
    ['\'', '"'].into_iter().find_map(|q| {
        let key = format!(" {name}={q}");
        let start = tag.find(&key)? + key.len();
        let end = tag[start..].find(q)? + start;
        Some(xml_unescape(&tag[start..end]))
    })
}

/// Text of the first `<body>` in `stanza`.
fn body_text(stanza: &str) -> Option<String> {
    let open = stanza.find("<body")?;
    let after = stanza[open..].find('>')? + open + 1;
    let close = stanza[after..].find("</body>")? + after;
    Some(xml_unescape(&stanza[after..close]))
}

// ---------------------------------------------------------------- the server side

/// The server with Alice (the client under test, Bob already in her roster)
/// and Bob (raw TCP, available); returns the server and Bob.
async fn setup() -> (TestServer, RawTcp) {
    setup_with("").await
}

/// [`setup`] with extra listeners (YAML list items) before the others.
async fn setup_with(extra_listen: &str) -> (TestServer, RawTcp) {
    let srv = TestServer::start_with(extra_listen, "").await;
    srv.add_user("alice", DOMAIN, ALICE_PW).await;
    srv.add_user("bob", DOMAIN, BOB_PW).await;

    // Bob in Alice's roster, so the client's roster get has something to show.
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, ALICE_PW, "setup").await;
    alice
        .send("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'/></query></iq>")
        .await;
    alice.until("id='r1'").await;
    alice.send("</stream:stream>").await;
    alice.until_closed().await;

    let mut bob = raw_login(srv.addr, "bob", DOMAIN, BOB_PW, "raw").await;
    bob.send("<presence/><iq type='get' id='bob-ping'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    bob.until("id='bob-ping'").await;
    (srv, bob)
}

/// Reads Bob's stream until a `<message>` whose body is `text`; returns it.
async fn message_at_bob(bob: &mut RawTcp, text: &str) -> Result<String, String> {
    loop {
        while let Some(start) = bob.buf.find("<message") {
            let Some(end) = bob.buf[start..].find("</message>") else {
                break;
            };
            let end = start + end + "</message>".len();
            let stanza = bob.buf[start..end].to_string();
            bob.buf.drain(..end);
            if body_text(&stanza).as_deref() == Some(text) {
                return Ok(stanza);
            }
        }
        let mut chunk = [0u8; 8192];
        match bob.s.read(&mut chunk).await {
            Ok(0) => return Err(format!("Bob's stream closed; buffer {:?}", bob.buf)),
            Err(e) => return Err(format!("Bob's read: {e}")),
            Ok(n) => bob.buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
}

/// Waits for Alice's message at Bob; checks it and returns Alice's full JID.
async fn alice_to_bob(bob: &mut RawTcp, text: &str, deadline: Instant, what: &str) -> String {
    let stanza = match timeout_at(deadline, message_at_bob(bob, text)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("{what}: Bob never got Alice's message: {e}"),
        Err(_) => panic!("{what}: timed out waiting for Alice's message at Bob"),
    };
    let from = attr(&stanza, "from").unwrap_or_else(|| panic!("{what}: no from: {stanza}"));
    let (bare, resource) = from
        .split_once('/')
        .unwrap_or_else(|| panic!("{what}: from is not a full JID: {stanza}"));
    assert_eq!(bare, "alice@localhost", "{what}: {stanza}");
    assert!(!resource.is_empty(), "{what}: {stanza}");
    from
}

async fn bob_to(bob: &mut RawTcp, to: &str, text: &str) {
    bob.send(&format!(
        "<message type='chat' to='{}' id='bob-reply'><body>{}</body></message>",
        xml_escape(to),
        xml_escape(text)
    ))
    .await;
}

// ---------------------------------------------------------------- drivers

/// A client driver (clients/*/drive.*) that prints one JSON object per line
/// on stdout, `{"event": …}`: online, roster, sent, message, done, error.
struct Driver {
    name: String,
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Driver {
    fn spawn(name: &str, mut cmd: Command) -> Driver {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start the driver: {e}"));
        let stdout = child.stdout.take().expect("driver stdout");
        let stderr = child.stderr.take().expect("driver stderr");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let tag = name.to_string();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                eprintln!("[{tag}] {l}");
                let v = serde_json::from_str(&l).unwrap_or(Value::String(l));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let tag = name.to_string();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                eprintln!("[{tag} stderr] {l}");
            }
        });
        Driver {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next event named `event`; panics on an error event, on the
    /// driver's exit and at the deadline.
    async fn event(&mut self, event: &str, deadline: Instant) -> Value {
        loop {
            let v = match timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => v,
                Ok(None) => panic!(
                    "{}: driver exited while waiting for {event:?}; it said {:?}",
                    self.name, self.seen
                ),
                Err(_) => panic!(
                    "{}: timed out waiting for {event:?}; it said {:?}",
                    self.name, self.seen
                ),
            };
            self.seen.push(v.clone());
            match v.get("event").and_then(Value::as_str) {
                Some(e) if e == event => return v,
                Some("error") => {
                    panic!("{}: driver failed: {v}; it said {:?}", self.name, self.seen)
                }
                _ => {}
            }
        }
    }

    /// Waits for the driver to exit successfully.
    async fn exit_ok(mut self, deadline: Instant) {
        match timeout_at(deadline, self.child.wait()).await {
            Ok(Ok(status)) => assert!(
                status.success(),
                "{}: driver exited with {status}; it said {:?}",
                self.name,
                self.seen
            ),
            Ok(Err(e)) => panic!("{}: waiting for the driver: {e}", self.name),
            Err(_) => panic!(
                "{}: driver did not exit; it said {:?}",
                self.name, self.seen
            ),
        }
    }
}

/// The common script: the driver logs in, gets the roster (Bob is in it),
/// sends to Bob; Bob answers to the full JID it came from; the driver
/// receives it and exits 0. Returns the driver's "online" event.
async fn chat(test: &str, mut cmd: Command, bob: &mut RawTcp) -> Value {
    let deadline = Instant::now() + BUDGET;
    let to_bob = format!("Hi Bob, {test} here & <ok>");
    let to_alice = format!("Hello {test}, Bob answers ✓ <&>");
    cmd.env("XMPP_PEER", "bob@localhost")
        .env("XMPP_SEND", &to_bob)
        .env("XMPP_EXPECT", &to_alice);
    let mut driver = Driver::spawn(test, cmd);

    let online = driver.event("online", deadline).await;
    let jid = online["jid"].as_str().unwrap_or_default().to_string();
    assert!(jid.starts_with("alice@localhost/"), "{test}: {online}");
    let roster = driver.event("roster", deadline).await;
    let items: Vec<&str> = roster["items"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(items, ["bob@localhost"], "{test}: {roster}");

    let from = alice_to_bob(bob, &to_bob, deadline, test).await;
    assert_eq!(from, jid, "{test}: the message came from another resource");
    bob_to(bob, &from, &to_alice).await;
    driver.event("done", deadline).await;
    driver.exit_ok(deadline).await;
    online
}

// ---------------------------------------------------------------- slixmpp

/// Debian's slixmpp 1.8.3 on defaults: STARTTLS (TLS 1.3), then its SASL
/// order. It knows only the `tls-unique` binding (undefined for TLS 1.3), so
/// the server refuses its -PLUS attempts and its `y` flag as negotiation,
/// without counting them as failures, and it logs in with its next
/// mechanism, PLAIN, over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_starttls() {
    let test = "slixmpp_starttls";
    let script = clients_dir().join("slixmpp/drive.py");
    let mut missing = missing_programs(&[(DEBIAN_PYTHON, &["-c", "import slixmpp"])]);
    if !missing.is_empty() {
        missing = vec!["python3-slixmpp (Debian's /usr/bin/python3)".into()];
    }
    missing.extend(missing_files(std::slice::from_ref(&script)));
    if !prerequisites(test, missing) {
        return;
    }
    let (srv, mut bob) = setup().await;
    let mut cmd = Command::new(DEBIAN_PYTHON);
    cmd.arg(&script)
        .env("XMPP_JID", "alice@localhost/slixmpp")
        .env("XMPP_PASSWORD", ALICE_PW)
        .env("XMPP_HOST", srv.addr.ip().to_string())
        .env("XMPP_PORT", srv.addr.port().to_string())
        .env("XMPP_CA", srv.cert_path())
        .env("XMPP_TIMEOUT", (BUDGET.as_secs() - 5).to_string());
    let online = chat(test, cmd, &mut bob).await;
    assert_eq!(online["tls"], "TLSv1.3", "{online}");
    assert_eq!(online["mechanism"], "PLAIN", "{online}");
    // Six refusals, none counted as a failed login (five would end the
    // stream): tls-unique with every -PLUS, then `y` with every SCRAM.
    assert_eq!(
        online["refused"],
        serde_json::json!([
            "SCRAM-SHA-512-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-512",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1"
        ]),
        "{online}"
    );
    srv.stop().await;
}

// ---------------------------------------------------------------- xmpp.js

fn xmppjs_missing() -> Vec<String> {
    let dir = clients_dir().join("xmppjs");
    let mut missing = missing_programs(&[("node", &["--version"])]);
    missing.extend(missing_files(&[
        dir.join("drive.mjs"),
        dir.join("node_modules/@xmpp/client/package.json"),
    ]));
    missing
}

/// Node.js's major version (0 when unknown).
fn node_major() -> u32 {
    std::process::Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn xmppjs_command(srv: &TestServer, service: String) -> Command {
    let dir = clients_dir().join("xmppjs");
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir);
    if node_major() < 22 {
        // Node 20 and 21 have a global WebSocket only with this flag.
        cmd.arg("--experimental-websocket");
    }
    cmd.arg("drive.mjs")
        .env("NODE_EXTRA_CA_CERTS", srv.cert_path())
        .env("XMPP_SERVICE", service)
        .env("XMPP_DOMAIN", DOMAIN)
        .env("XMPP_USER", "alice")
        .env("XMPP_PASSWORD", ALICE_PW)
        .env("XMPP_RESOURCE", "xmppjs")
        .env("XMPP_TIMEOUT_MS", (BUDGET.as_millis() - 5000).to_string());
    cmd
}

/// xmpp.js over TCP: STARTTLS with the server's certificate trusted through
/// NODE_EXTRA_CA_CERTS; xmpp.js's only SCRAM is SCRAM-SHA-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmppjs_tcp_starttls() {
    let test = "xmppjs_tcp_starttls";
    if !prerequisites(test, xmppjs_missing()) {
        return;
    }
    let (srv, mut bob) = setup().await;
    let cmd = xmppjs_command(&srv, format!("xmpp://{}", srv.addr));
    let online = chat(test, cmd, &mut bob).await;
    assert_eq!(online["secure"], true, "{online}");
    assert_eq!(online["mechanism"], "SCRAM-SHA-1", "{online}");
    srv.stop().await;
}

/// xmpp.js over WebSocket (`ws:` on the test's plain HTTP listener; `wss:`
/// needs the HTTPS listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmppjs_websocket() {
    let test = "xmppjs_websocket";
    if !prerequisites(test, xmppjs_missing()) {
        return;
    }
    let (srv, mut bob) = setup().await;
    let cmd = xmppjs_command(&srv, format!("ws://{}/ws", srv.http_addr));
    let online = chat(test, cmd, &mut bob).await;
    assert_eq!(online["mechanism"], "SCRAM-SHA-1", "{online}");
    srv.stop().await;
}

/// xmpp.js over WebSocket on an HTTPS listener (`wss:`), the server's
/// certificate trusted through NODE_EXTRA_CA_CERTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmppjs_websocket_tls() {
    let test = "xmppjs_websocket_tls";
    if !prerequisites(test, xmppjs_missing()) {
        return;
    }
    let https = "  - port: 0\n    ip: 127.0.0.1\n    module: http\n    tls: true\n";
    let (srv, mut bob) = setup_with(https).await;
    let running = srv.server.as_ref().expect("running");
    let addr = running
        .listeners
        .iter()
        .find(|(m, tls, _)| *m == palaver_server::config::ListenModule::Http && *tls)
        .map(|(_, _, a)| *a)
        .expect("the HTTPS listener");
    let cmd = xmppjs_command(&srv, format!("wss://{DOMAIN}:{}/ws", addr.port()));
    let online = chat(test, cmd, &mut bob).await;
    assert_eq!(online["mechanism"], "SCRAM-SHA-1", "{online}");
    srv.stop().await;
}

// ---------------------------------------------------------------- command line

/// sendxmpp (Debian) sends one message as Alice over STARTTLS, verifying the
/// server certificate against the generated one (`-t -a`, not `-n`).
/// sendxmpp cannot receive; mcabber's test covers receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendxmpp_starttls() {
    let test = "sendxmpp_starttls";
    if !prerequisites(
        test,
        missing_programs(&[("sh", &["-c", "command -v sendxmpp"])]),
    ) {
        return;
    }
    let (srv, mut bob) = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rc = dir.path().join("sendxmpprc");
    write_private(&rc, &format!("alice@{DOMAIN} {ALICE_PW}\n"));
    let body = "sendxmpp says hi & <bye>";
    let deadline = Instant::now() + BUDGET;
    let mut child = Command::new("sendxmpp")
        .arg("-f")
        .arg(&rc)
        // The stream's `to` is the host part; "localhost" is IPv4 here.
        .args(["-j", &format!("{DOMAIN}:{}", srv.addr.port())])
        .args(["-t", "-a"])
        .arg(srv.cert_path())
        .args(["-r", "sendxmpp", "bob@localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start sendxmpp");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).await.expect("write body");
    }
    let out = match timeout_at(deadline, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{test}: sendxmpp: {e}"),
        Err(_) => panic!("{test}: sendxmpp did not finish"),
    };
    assert!(
        out.status.success(),
        "{test}: sendxmpp exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let from = alice_to_bob(&mut bob, body, deadline, test).await;
    assert!(from.starts_with("alice@localhost/sendxmpp"), "{from}");
    srv.stop().await;
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A tmux server of its own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// mcabber (Debian; loudmouth + GnuTLS), headless in a detached tmux pane:
/// STARTTLS with the generated certificate as `ssl_ca`; its
/// `hook-post-connect` (run once connected *and the roster received*) sends
/// to Bob; its `events_command` reports incoming messages through a FIFO
/// this test reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcabber_starttls() {
    let test = "mcabber_starttls";
    if !prerequisites(
        test,
        missing_programs(&[
            ("sh", &["-c", "command -v mcabber"]),
            ("tmux", &["-V"]),
            ("sh", &["-c", "command -v mkfifo"]),
        ]),
    ) {
        return;
    }
    let (srv, mut bob) = setup().await;
    let deadline = Instant::now() + BUDGET;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let to_bob = "mcabber says hi";
    let to_alice = "Bob answers mcabber & <co>";

    // Events from mcabber's events_command, one line each.
    let fifo = d.join("events.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    // Opened read-write so that it never reports end-of-file between two
    // invocations of the event script.
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)
        .expect("open the event FIFO");
    let mut events = BufReader::new(receiver).lines();

    let script = d.join("event.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# mcabber events_command: EVENT ARG JID [FILE]\n\
             line=\"$1 $2 $3\"\n\
             if [ -n \"$4\" ]; then line=\"$line $(tr '\\n' ' ' < \"$4\")\"; rm -f \"$4\"; fi\n\
             printf '%s\\n' \"$line\" > '{}'\n",
            fifo.display()
        ),
    )
    .expect("write event script");
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let rc = d.join("mcabberrc");
    write_private(
        &rc,
        &format!(
            "set jid = alice@{DOMAIN}\n\
             set password = \"{ALICE_PW}\"\n\
             set server = {ip}\n\
             set port = {port}\n\
             set resource = mcabber\n\
             set tls = 1\n\
             set ssl_ca = {ca}\n\
             set events_command = {script}\n\
             set event_log_files = 1\n\
             set event_log_dir = {d}\n\
             set hook-post-connect = say_to bob@localhost {to_bob}\n\
             set tracelog_level = 2\n\
             set tracelog_file = {d}/trace.log\n",
            ip = srv.addr.ip(),
            port = srv.addr.port(),
            ca = srv.cert_path().display(),
            script = script.display(),
            d = d.display(),
        ),
    );

    let tmux = Tmux {
        socket: format!("palaver-mcabber-{}", std::process::id()),
    };
    let status = std::process::Command::new("tmux")
        .args([
            "-L",
            &tmux.socket,
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
        ])
        .arg(format!(
            "env HOME='{}' mcabber -f '{}'",
            d.display(),
            rc.display()
        ))
        .status()
        .expect("tmux");
    assert!(status.success(), "{test}: tmux new-session failed");

    let trace = || std::fs::read_to_string(d.join("trace.log")).unwrap_or_default();
    let from = match timeout_at(deadline, message_at_bob(&mut bob, to_bob)).await {
        Ok(Ok(stanza)) => attr(&stanza, "from").unwrap_or_default(),
        Ok(Err(e)) => panic!("{test}: {e}; mcabber's trace:\n{}", trace()),
        Err(_) => panic!(
            "{test}: timed out waiting for mcabber's message; trace:\n{}",
            trace()
        ),
    };
    assert!(from.starts_with("alice@localhost/mcabber"), "{from}");
    bob_to(&mut bob, &from, to_alice).await;
    let want = "MSG IN bob@localhost";
    let mut seen = Vec::new();
    loop {
        match timeout_at(deadline, events.next_line()).await {
            Ok(Ok(Some(line))) => {
                eprintln!("[mcabber event] {line}");
                if line.starts_with(want) {
                    assert!(line.contains(to_alice), "{test}: {line}");
                    break;
                }
                seen.push(line);
            }
            Ok(Ok(None)) | Ok(Err(_)) => panic!("{test}: event FIFO closed: {seen:?}"),
            Err(_) => panic!(
                "{test}: mcabber never reported Bob's message: {seen:?}; trace:\n{}",
                trace()
            ),
        }
    }
    let log = trace();
    assert!(
        log.contains("SASL authentication successful"),
        "{test}: {log}"
    );
    drop(tmux);
    srv.stop().await;
}
