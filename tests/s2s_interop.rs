//! Federation with real servers: Debian's ejabberd and Prosody, each on its
//! own loopback address and domain, federating with Palaver by dialback
//! (plain TCP: none of them has a certificate the others trust). A Palaver
//! user and a user of each complete a presence subscription both ways and
//! exchange messages both ways; then both remote users join a room on
//! Palaver's MUC service (conference.pal.test) and exchange groupchat
//! messages with the local occupant, and the Palaver user joins a room on
//! ejabberd's (conference.ej.test) and on Prosody's (conference.pr.test)
//! MUC service and does the same there. The servers' configurations are
//! interop/s2s/ejabberd.yml and interop/s2s/prosody.cfg.lua.
//!
//! Needs the packages `ejabberd`, `prosody` and `lua-unbound`
//! (`bash interop/s2s-setup.sh`). Without them the test prints a notice and
//! passes, unless `CI` is set, where it fails. It binds port 5269 on
//! 127.0.0.2 (ejabberd), 127.0.0.3 (Prosody) and 127.0.0.4 (Palaver), and
//! 5222 on the first two.

mod common;

use common::{Raw, RawTcp};
use palaver_server::Server;
use palaver_server::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(60);
const PAL: &str = "127.0.0.4";
const EJ: &str = "127.0.0.2";
const PR: &str = "127.0.0.3";
const EJABBERDCTL: &str = "/usr/sbin/ejabberdctl";
const PROSODY: &str = "/usr/bin/prosody";
const PROSODYCTL: &str = "/usr/bin/prosodyctl";

fn have_servers() -> bool {
    let ok = [EJABBERDCTL, PROSODY, PROSODYCTL]
        .iter()
        .all(|p| Path::new(p).exists());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "ejabberd/prosody missing: run interop/s2s-setup.sh"
        );
        eprintln!("s2s_interop: ejabberd or prosody not installed (interop/s2s-setup.sh): skipped");
    }
    ok
}

/// World-writable (the servers drop to their own users).
fn open_dir(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).expect("mkdir");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

fn write(p: PathBuf, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(&p, text).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
}

/// A small DNS server on 127.0.0.1 (UDP) for ejabberd, whose resolver
/// asks DNS for SRV records: SRV `_xmpp-server._tcp` and A records of the
/// test's domains, NXDOMAIN for the rest.
async fn dns_server(names: Vec<(String, [u8; 4])>) -> (u16, tokio::task::JoinHandle<()>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let port = sock.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if std::env::var_os("S2S_INTEROP_DNS_LOG").is_some() {
                eprintln!("dns query {:?}", String::from_utf8_lossy(&buf[12..n]));
            }
            if let Some(reply) = dns_answer(&buf[..n], &names) {
                let _ = sock.send_to(&reply, from).await;
            }
        }
    });
    (port, task)
}

fn dns_answer(q: &[u8], names: &[(String, [u8; 4])]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    // A for each domain; SRV _xmpp-server._tcp.DOMAIN → DOMAIN:5269.
    let srv_of = name.strip_prefix("_xmpp-server._tcp.");
    let domain = srv_of.unwrap_or(&name);
    let known = names.iter().find(|(n, _)| n == domain);
    let mut answer = Vec::new();
    match (known, srv_of, qtype) {
        (Some((_, ip)), None, 1) => {
            answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            answer.extend_from_slice(ip);
        }
        (Some((_, ip)), Some(_), 33) => {
            // The target is the address itself: ejabberd resolves SRV targets
            // with getaddrinfo (the system's resolver, not this server), which
            // takes a dotted address as it is.
            let dotted = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
            let mut target = Vec::new();
            for l in dotted.split('.') {
                target.push(l.len() as u8);
                target.extend_from_slice(l.as_bytes());
            }
            target.push(0);
            answer.extend_from_slice(&[0xc0, 0x0c, 0, 33, 0, 1, 0, 0, 0, 60]);
            answer.extend_from_slice(&((6 + target.len()) as u16).to_be_bytes());
            answer.extend_from_slice(&[0, 0, 0, 0]);
            answer.extend_from_slice(&5269u16.to_be_bytes());
            answer.extend_from_slice(&target);
        }
        _ => {}
    }
    let exists = known.is_some() || names.iter().any(|(n, _)| name.ends_with(&format!(".{n}")));
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[0x81, if exists { 0x80 } else { 0x83 }]);
    r.extend_from_slice(&[0, 1, 0, u8::from(!answer.is_empty()), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..question_end)?);
    r.extend_from_slice(&answer);
    Some(r)
}

/// An ejabberd node with its own config, spool, logs and node name; stopped on drop.
struct Ejabberd {
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Ejabberd {
    fn ctl(&self) -> std::process::Command {
        let mut c = std::process::Command::new(EJABBERDCTL);
        let d = self.dir.display().to_string();
        c.args(["--node", "palaver-interop@localhost", "--config-dir", &d])
            .args(["--logs", &d, "--spool", &d]);
        c
    }

    async fn start(dir: PathBuf, dns_port: u16) -> Ejabberd {
        open_dir(&dir);
        write(
            dir.join("ejabberd.yml"),
            &include_str!("../interop/s2s/ejabberd.yml").replace("@IP@", EJ),
        );
        // Erlang's resolver (ejabberd's s2s lookups are DNS only): the test's server.
        write(
            dir.join("inetrc"),
            &format!(
                "{{resolv_conf, \"\"}}.\n{{lookup,[\"file\",\"dns\"]}}.\n{{host,{{127,0,0,1}},[\"localhost\"]}}.\n{{nameserver,{{127,0,0,1}},{dns_port}}}.\n"
            ),
        );
        write(
            dir.join("ejabberdctl.cfg"),
            &format!(
                "ERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\nEJABBERD_PID_PATH={d}/ejabberd.pid\nEJABBERD_CONFIG_PATH={d}/ejabberd.yml\n",
                d = dir.display()
            ),
        );
        let mut e = Ejabberd { dir, child: None };
        let mut fg = tokio::process::Command::from(e.ctl());
        fg.arg("foreground")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        e.child = Some(fg.spawn().expect("ejabberd starts"));
        let started = tokio::task::spawn_blocking({
            let mut c = e.ctl();
            move || c.arg("started").status()
        })
        .await
        .expect("join");
        assert!(started.is_ok_and(|s| s.success()), "ejabberd did not start");
        let st = e
            .ctl()
            .args(["register", "eve", "ej.test", "pw"])
            .stdout(Stdio::null())
            .status()
            .expect("register");
        assert!(st.success(), "ejabberdctl register failed");
        e
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let _ = self
            .ctl()
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.ctl().arg("stopped").status();
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
    }
}

/// A Prosody with its own config and data; killed on drop.
struct Prosody {
    child: tokio::process::Child,
}

impl Prosody {
    async fn start(dir: PathBuf) -> Prosody {
        open_dir(&dir);
        open_dir(&dir.join("data"));
        write(
            dir.join("hosts"),
            &format!("{PAL} pal.test\n{PAL} conference.pal.test\n"),
        );
        let cfg = dir.join("prosody.cfg.lua");
        write(
            cfg.clone(),
            &include_str!("../interop/s2s/prosody.cfg.lua")
                .replace("@DIR@", &dir.display().to_string())
                .replace("@IP@", PR),
        );
        let st = std::process::Command::new(PROSODYCTL)
            .arg("--config")
            .arg(&cfg)
            .args(["register", "eve", "pr.test", "pw"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("prosodyctl");
        assert!(st.success(), "prosodyctl register failed");
        let child = tokio::process::Command::new(PROSODY)
            .arg("--config")
            .arg(&cfg)
            .arg("-F")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prosody starts");
        let addr: SocketAddr = format!("{PR}:5222").parse().expect("addr");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "prosody did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prosody { child }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Read until every needle has been seen (any order); returns all read.
async fn until_all(c: &mut RawTcp, needles: &[&str]) -> String {
    let r = tokio::time::timeout(WAIT, async {
        loop {
            if needles.iter().all(|n| c.buf.contains(n)) {
                return std::mem::take(&mut c.buf);
            }
            let mut chunk = [0u8; 8192];
            let n = c.s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "closed waiting for {needles:?}: {}", c.buf);
            c.buf
                .push_str(&String::from_utf8_lossy(&chunk[..n]).replace('"', "'"));
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {needles:?}; got {:?}", c.buf))
}

async fn online(addr: SocketAddr, user: &str, host: &str) -> RawTcp {
    let mut c = Raw::connect(addr).await;
    c.login_plain(user, host, "pw", "r").await;
    c.send("<iq type='get' id='roster0'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    until_all(&mut c, &["roster0"]).await;
    c.send("<presence/>").await;
    c
}

/// alice@pal.test and eve@`domain` subscribe to each other and chat.
async fn converse(alice: &mut RawTcp, eve: &mut RawTcp, domain: &str) {
    let eve_jid = format!("eve@{domain}");
    alice
        .send(&format!("<presence to='{eve_jid}' type='subscribe'/>"))
        .await;
    until_all(eve, &["type='subscribe'", "alice@pal.test"]).await;
    eve.send("<presence to='alice@pal.test' type='subscribed'/>")
        .await;
    until_all(
        alice,
        &[
            "subscription='to'",
            &format!("<presence from='{eve_jid}/r'"),
        ],
    )
    .await;
    eve.send("<presence to='alice@pal.test' type='subscribe'/>")
        .await;
    until_all(alice, &["type='subscribe'", &format!("from='{eve_jid}'")]).await;
    alice
        .send(&format!("<presence to='{eve_jid}' type='subscribed'/>"))
        .await;
    until_all(eve, &["subscription='both'", "alice@pal.test/r"]).await;
    alice
        .send(&format!(
            "<message to='{eve_jid}' type='chat' id='m1'><body>hello {domain} from palaver</body></message>"
        ))
        .await;
    let m = until_all(eve, &[&format!("hello {domain} from palaver</body>")]).await;
    assert!(m.contains("alice@pal.test/r"), "{m}");
    eve.send(
        "<message to='alice@pal.test' type='chat' id='m2'><body>hello palaver</body></message>",
    )
    .await;
    let m = until_all(alice, &["hello palaver</body>"]).await;
    assert!(m.contains(&format!("from='{eve_jid}/r'")), "{m}");
}

/// Join `room` as `nick`; returns what came up to the subject (the last
/// thing a joiner gets, XEP-0045 §7.2.15).
async fn join_room(c: &mut RawTcp, room: &str, nick: &str) -> String {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    let got = until_all(c, &["<subject"]).await;
    assert!(!got.contains("type='error'"), "{got}");
    got
}

/// `owner` makes `room` an instant room (§10.1.2).
async fn instant_room(owner: &mut RawTcp, room: &str, nick: &str) {
    join_room(owner, room, nick).await;
    owner
        .send(&format!("<iq type='set' id='inst' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"))
        .await;
    let r = until_all(owner, &["id='inst'"]).await;
    let iq = &r[r.rfind("<iq").unwrap_or(0)..];
    assert!(iq.contains("type='result'"), "{r}");
}

/// `guest` (of another server than the room's) joins `room`, where
/// `owner` is; a groupchat message each way.
async fn guest_in_room(
    owner: &mut RawTcp,
    guest: &mut RawTcp,
    room: &str,
    o_nick: &str,
    g_nick: &str,
) {
    join_room(guest, room, g_nick).await;
    until_all(owner, &[&format!("from='{room}/{g_nick}'")]).await;
    owner
        .send(&format!(
            "<message to='{room}' type='groupchat' id='w-{g_nick}'><body>welcome {g_nick}</body></message>"
        ))
        .await;
    let m = until_all(guest, &[&format!("welcome {g_nick}</body>")]).await;
    assert!(m.contains(&format!("from='{room}/{o_nick}'")), "{m}");
    guest
        .send(&format!(
            "<message to='{room}' type='groupchat' id='h-{g_nick}'><body>hello from {g_nick}</body></message>"
        ))
        .await;
    let m = until_all(owner, &[&format!("hello from {g_nick}</body>")]).await;
    assert!(m.contains(&format!("from='{room}/{g_nick}'")), "{m}");
}

/// The servers' logs stay when the test fails (their path is printed).
struct KeepOnPanic(Option<tempfile::TempDir>);

impl KeepOnPanic {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("dir").path()
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            let _ = d.keep();
        }
    }
}

fn keep(_d: KeepOnPanic) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_and_prosody_federate_with_palaver() {
    if !have_servers() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("palaver_s2s=debug")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    open_dir(dir.path());
    let dir = KeepOnPanic(Some(dir));
    eprintln!("s2s_interop: logs under {}", dir.path().display());
    let text = format!(
        "hosts: [pal.test]\nloglevel: info\ndata_dir: {d}/palaver\nlisten:\n  - port: 0\n    ip: {PAL}\n    module: c2s\n    allow_plain_without_tls: true\n  - port: 5269\n    ip: {PAL}\n    module: ejabberd_s2s_in\ns2s_hosts:\n  ej.test: '{EJ}:5269'\n  conference.ej.test: '{EJ}:5269'\n  pr.test: '{PR}:5269'\n  conference.pr.test: '{PR}:5269'\n",
        d = dir.path().display()
    );
    let config = Config::parse(&text).expect("config");
    let mut server = Server::start(config, &palaver_modules::registry())
        .await
        .expect("palaver starts");
    let fed = palaver_s2s::start(&mut server)
        .await
        .expect("s2s starts")
        .s2s;
    let creds = palaver_server::auth::derive_all("pw", 4096);
    server
        .core
        .storage()
        .accounts
        .create_account("pal.test", "alice", &creds)
        .await
        .expect("user");
    let c2s = server.c2s_addr().expect("c2s");
    let (dns_port, dns) = dns_server(vec![
        ("pal.test".into(), [127, 0, 0, 4]),
        ("conference.pal.test".into(), [127, 0, 0, 4]),
        ("ej.test".into(), [127, 0, 0, 2]),
        ("pr.test".into(), [127, 0, 0, 3]),
    ])
    .await;
    let ejabberd = Ejabberd::start(dir.path().join("ejabberd"), dns_port).await;
    let prosody = Prosody::start(dir.path().join("prosody")).await;

    let mut alice = online(c2s, "alice", "pal.test").await;
    let mut eve_ej = online(
        format!("{EJ}:5222").parse().expect("addr"),
        "eve",
        "ej.test",
    )
    .await;
    converse(&mut alice, &mut eve_ej, "ej.test").await;
    let mut eve_pr = online(
        format!("{PR}:5222").parse().expect("addr"),
        "eve",
        "pr.test",
    )
    .await;
    converse(&mut alice, &mut eve_pr, "pr.test").await;

    // A room on Palaver with a user of each server in it.
    let lobby = "lobby@conference.pal.test";
    instant_room(&mut alice, lobby, "Alice").await;
    guest_in_room(&mut alice, &mut eve_ej, lobby, "Alice", "EveEj").await;
    guest_in_room(&mut alice, &mut eve_pr, lobby, "Alice", "EvePr").await;
    // The ejabberd user got the Prosody user's message through the room.
    let m = until_all(&mut eve_ej, &["hello from EvePr</body>"]).await;
    assert!(m.contains(&format!("from='{lobby}/EvePr'")), "{m}");
    // The room's stanzas went over the streams pal.test had opened: both
    // servers accepted conference.pal.test multiplexed on them (XEP-0220).
    for remote in ["ej.test", "pr.test"] {
        let host = fed.out.stream_of("pal.test", remote);
        assert!(host.is_some(), "no stream to {remote}");
        assert_eq!(
            fed.out.stream_of("conference.pal.test", remote),
            host,
            "conference.pal.test has a stream of its own to {remote}"
        );
    }

    // The Palaver user in a room on each of the others.
    for (eve, room) in [
        (&mut eve_ej, "den@conference.ej.test"),
        (&mut eve_pr, "den@conference.pr.test"),
    ] {
        instant_room(eve, room, "Eve").await;
        guest_in_room(eve, &mut alice, room, "Eve", "Alice").await;
    }

    drop(prosody);
    drop(ejabberd);
    server.shutdown().await;
    dns.abort();
    keep(dir);
}
