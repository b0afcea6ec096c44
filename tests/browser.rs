//! Issue 4: a real browser. Converse.js (npm `converse.js`, pinned in
//! browser/package-lock.json) in headless Debian Chromium, driven through
//! playwright-core by browser/drive.mjs, logs in over WebSocket and (in a
//! second test) over BOSH, and chats both ways with a user on TCP.
//!
//! The page (browser/page) and Converse's dist/ are served by a small static
//! HTTP server inside the test on its own port: a different origin from the
//! XMPP HTTP listener, so the browser's CORS checks are exercised for BOSH.
//!
//! Needs /usr/bin/chromium and browser/node_modules (`bash browser/setup.sh`).
//! Without them the tests print a notice and pass, unless `CI` is set, where
//! they fail.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::time::{Instant, timeout_at};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Budget for the node driver (it has its own, slightly shorter, timeout).
const DRIVER_BUDGET: Duration = Duration::from_secs(55);
const DRIVER_TIMEOUT_MS: u64 = 50_000;

#[derive(Clone, Copy, Debug)]
enum Transport {
    WebSocket,
    Bosh,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Bosh => "bosh",
        }
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// None when everything the test needs is installed, else what is missing.
fn missing_prerequisites() -> Option<String> {
    let dir = browser_dir();
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM.to_string());
    }
    for p in [
        "node_modules/converse.js/dist/converse.min.js",
        "node_modules/playwright-core/package.json",
    ] {
        if !dir.join(p).exists() {
            missing.push(format!("browser/{p}"));
        }
    }
    if std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        missing.push("node".to_string());
    }
    if missing.is_empty() {
        None
    } else {
        Some(missing.join(", "))
    }
}

/// True when the test should run; false (after a notice) when it should be
/// skipped; panics under CI when something is missing.
fn prerequisites_present(test: &str) -> bool {
    match missing_prerequisites() {
        None => true,
        Some(what) => {
            let msg = format!(
                "browser test {test}: missing {what}; run `bash browser/setup.sh` to install Chromium and the npm packages"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg} (CI is set, so this is a failure)");
            }
            eprintln!("NOTICE: skipping {msg}");
            false
        }
    }
}

// ---------------------------------------------------------------- static HTTP

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        _ => "application/octet-stream",
    }
}

/// Maps a request path to a file: `/dist/...` from Converse's dist, the rest
/// from browser/page. None for anything outside those trees.
fn resolve(url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next().unwrap_or("");
    let (root, rest) = match path.strip_prefix("/dist/") {
        Some(rest) => (
            browser_dir().join("node_modules/converse.js/dist"),
            rest.to_string(),
        ),
        None => {
            let rest = path.trim_start_matches('/');
            let rest = if rest.is_empty() { "index.html" } else { rest };
            (browser_dir().join("page"), rest.to_string())
        }
    };
    let mut out = root;
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains('\\') || seg.contains('%') {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

async fn serve_one(mut s: tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let file = if method == "GET" || method == "HEAD" {
        resolve(target)
    } else {
        None
    };
    let body = match file {
        Some(f) => tokio::fs::read(&f)
            .await
            .ok()
            .map(|b| (b, content_type(&f))),
        None => None,
    };
    let (status, ctype, bytes) = match body {
        Some((b, t)) => ("200 OK", t, b),
        None => {
            eprintln!("[static] 404 for {method} {target}");
            ("404 Not Found", "text/plain", b"not found".to_vec())
        }
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    if s.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    if method != "HEAD" {
        let _ = s.write_all(&bytes).await;
    }
    let _ = s.shutdown().await;
}

/// Serves browser/page and Converse's dist on 127.0.0.1 until the test ends.
async fn start_static_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind static server");
    let addr = listener.local_addr().expect("static server addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_one(s));
        }
    });
    (addr, task)
}

// ---------------------------------------------------------------- helpers

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    let tag_end = stanza.find('>')?;
    let tag = &stanza[..tag_end];
    for q in ['\'', '"'] {
        let key = format!(" {name}={q}");
        if let Some(start) = tag.find(&key) {
            let start = start + key.len();
            let end = tag[start..].find(q)? + start;
            return Some(xml_unescape(&tag[start..end]));
        }
    }
    None
}

/// Text of the first `<body>` in `stanza`.
fn body_text(stanza: &str) -> Option<String> {
    let open = stanza.find("<body")?;
    let after = stanza[open..].find('>')? + open + 1;
    if stanza[open..after].ends_with("/>") {
        return Some(String::new());
    }
    let close = stanza[after..].find("</body>")? + after;
    Some(xml_unescape(&stanza[after..close]))
}

/// Reads from the raw TCP client until a `<message>` whose body is `text`
/// arrives; returns that stanza. Other stanzas are skipped.
async fn wait_for_message(c: &mut RawTcp, text: &str) -> Result<String, String> {
    loop {
        while let Some(start) = c.buf.find("<message") {
            let Some(end) = c.buf[start..].find("</message>") else {
                break;
            };
            let end = start + end + "</message>".len();
            let stanza = c.buf[start..end].to_string();
            c.buf.drain(..end);
            if body_text(&stanza).as_deref() == Some(text) {
                return Ok(stanza);
            }
        }
        let mut chunk = [0u8; 8192];
        match c.s.read(&mut chunk).await {
            Ok(0) => return Err(format!("TCP connection closed; buffer {:?}", c.buf)),
            Err(e) => return Err(format!("TCP read: {e}")),
            Ok(n) => c.buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
}

// ---------------------------------------------------------------- the test

/// Issue 13: Converse.js joins this room (made by Bob on TCP) instead of a
/// one-to-one chat.
const ROOM: &str = "lobby@conference.localhost";

async fn converse_chat(transport: Transport) {
    converse(transport, false).await
}

async fn converse(transport: Transport, in_room: bool) {
    let test = if in_room {
        format!("converse_joins_a_room_over_{}", transport.name())
    } else {
        format!("converse_over_{}", transport.name())
    };
    if !prerequisites_present(&test) {
        return;
    }
    let started = Instant::now();
    let srv = if in_room {
        TestServer::start_with("", "modules:\n  mod_disco: {}\n  mod_muc: {}\n").await
    } else {
        TestServer::start().await
    };
    srv.add_user("alice", DOMAIN, "alice-browser-pw").await;
    srv.add_user("bob", DOMAIN, "bob-tcp-pw").await;

    // Bob on TCP, available, and his presence processed before the browser comes.
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "bob-tcp-pw", "tcp").await;
    bob.send("<presence/><iq type='get' id='bob-ping'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    bob.until("id='bob-ping'").await;
    if in_room {
        // Bob makes an instant room and waits in it.
        bob.send(&format!(
            "<presence to='{ROOM}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
        bob.until("</subject></message>").await;
        bob.send(&format!("<iq type='set' id='bob-cfg' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>")).await;
        bob.until("id='bob-cfg'").await;
    }

    let (static_addr, static_task) = start_static_server().await;
    let http = srv.http_addr;
    let (param, service) = match transport {
        Transport::WebSocket => ("websocket_url", format!("ws://{http}/ws")),
        Transport::Bosh => ("bosh_service_url", format!("http://{http}/bosh")),
    };
    let alice = format!("alice@{DOMAIN}");
    let bob_jid = format!("bob@{DOMAIN}");
    let url = format!(
        "http://{static_addr}/index.html?{param}={}&jid={}&password={}&auto_login=true&{}={}&loglevel={}",
        percent_encode(&service),
        percent_encode(&alice),
        percent_encode("alice-browser-pw"),
        if in_room { "room" } else { "contact" },
        percent_encode(if in_room { ROOM } else { &bob_jid }),
        std::env::var("PALAVER_BROWSER_LOGLEVEL").unwrap_or_else(|_| "info".into()),
    );
    let from_browser = format!(
        "Hi Bob, Alice typing in Chromium over {} & <friends>",
        transport.name()
    );
    let from_tcp = format!(
        "Hello Alice, Bob on TCP answers over {} ✓ <&>",
        transport.name()
    );

    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir())
        .arg("drive.mjs")
        .args(["--url", &url])
        .args(if in_room {
            ["--room", ROOM]
        } else {
            ["--contact", &bob_jid]
        })
        .args(["--send", &from_browser])
        .args(["--expect", &from_tcp])
        .args(["--timeout-ms", &DRIVER_TIMEOUT_MS.to_string()])
        .arg("--watch-stdin")
        // Closing our end (also when this test panics) tells the driver to
        // close Chromium and remove its profile directory.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(shot) = std::env::var("PALAVER_BROWSER_SCREENSHOT_DIR") {
        cmd.args(["--screenshot", &format!("{shot}/{test}.png")]);
    }
    let mut child = cmd.spawn().expect("spawn node browser/drive.mjs");
    let stdout = child.stdout.take().expect("driver stdout");
    let stderr = child.stderr.take().expect("driver stderr");
    let stdin = child.stdin.take().expect("driver stdin");

    // Driver lines go to a channel (and the test's output); browser console to stderr.
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let out_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            eprintln!("[driver] {l}");
            if line_tx.send(l).is_err() {
                break;
            }
        }
    });
    let tag = transport.name();
    let err_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            eprintln!("[{tag}] {l}");
        }
    });
    let deadline = Instant::now() + DRIVER_BUDGET;
    let mut seen: Vec<String> = Vec::new();

    // 1. The message typed in the browser reaches Bob on TCP.
    let stanza = loop {
        tokio::select! {
            r = timeout_at(deadline, wait_for_message(&mut bob, &from_browser)) => {
                match r {
                    Ok(Ok(s)) => break s,
                    Ok(Err(e)) => panic!("{test}: Bob never got the browser's message: {e}; driver said {seen:?}"),
                    Err(_) => panic!("{test}: timed out waiting for the browser's message at Bob; driver said {seen:?}"),
                }
            }
            l = line_rx.recv() => match l {
                Some(l) if l.starts_with("FAIL") => panic!("{test}: driver failed before sending: {l}; driver said {seen:?}"),
                Some(l) => seen.push(l),
                None => panic!("{test}: driver exited before Bob got the message; driver said {seen:?}"),
            },
        }
    };
    let from = attr(&stanza, "from").expect("from on the browser's message");
    let (bare, resource) = from.split_once('/').expect("full JID from the browser");
    assert!(!resource.is_empty(), "{stanza}");
    if in_room {
        // The room relays it from Alice's nickname, to every occupant.
        assert_eq!(bare, ROOM, "{stanza}");
        assert_eq!(
            attr(&stanza, "type").as_deref(),
            Some("groupchat"),
            "{stanza}"
        );
        assert!(stanza.contains("urn:xmpp:occupant-id:0"), "{stanza}");
    } else {
        assert_eq!(bare, alice, "{stanza}");
        assert_eq!(attr(&stanza, "type").as_deref(), Some("chat"), "{stanza}");
    }

    // 2. Bob answers; the driver waits for it to show in the chat view.
    let (kind, to) = if in_room {
        ("groupchat", ROOM.to_string())
    } else {
        ("chat", from.clone())
    };
    bob.send(&format!(
        "<message type='{kind}' to='{}' id='bob-reply'><body>{}</body></message>",
        xml_escape(&to),
        xml_escape(&from_tcp)
    ))
    .await;

    let status = match timeout_at(deadline, child.wait()).await {
        Ok(s) => s.expect("wait for driver"),
        Err(_) => {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            panic!("{test}: driver did not finish in {DRIVER_BUDGET:?}; driver said {seen:?}");
        }
    };
    drop(stdin);
    let _ = out_task.await;
    let _ = err_task.await;
    while let Ok(l) = line_rx.try_recv() {
        seen.push(l);
    }
    assert!(
        status.success(),
        "{test}: driver exited with {status}; driver said {seen:?}"
    );
    let connected = if in_room {
        format!("CONNECTED {alice}/")
    } else {
        format!("CONNECTED {from}")
    };
    assert!(
        seen.iter()
            .any(|l| l == &connected || (in_room && l.starts_with(&connected))),
        "{test}: driver's CONNECTED line names another JID than {from}: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == &format!("SENT {from_browser}")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == &format!("RECEIVED {from_tcp}")),
        "{test}: the chat view never showed Bob's message: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("OK"), "{seen:?}");
    if let Transport::Bosh = transport {
        // The page's origin is not the BOSH service's: the browser sent the
        // page's Origin and the server allowed it.
        let page_origin = format!("http://{static_addr}");
        let cors = seen
            .iter()
            .find_map(|l| l.strip_prefix("CORS "))
            .unwrap_or_else(|| panic!("{test}: no CORS line from the driver: {seen:?}"));
        assert!(
            cors == format!("origin={page_origin} allow-origin={page_origin}")
                || cors == format!("origin={page_origin} allow-origin=*"),
            "{test}: unexpected CORS exchange {cors:?}"
        );
    }

    static_task.abort();
    srv.stop().await;
    eprintln!("{test}: passed in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_websocket() {
    converse_chat(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_bosh() {
    converse_chat(Transport::Bosh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_joins_a_room_over_websocket() {
    converse(Transport::WebSocket, true).await;
}
