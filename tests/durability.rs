//! No lost data: `kill -9` of a server under load loses nothing it had
//! acknowledged (XEP-0198 `<a/>`): offline messages and roster changes are
//! committed before the acknowledgement. Runs on SQLite and on PostgreSQL.
mod common;
use common::*;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");
/// Stanzas per batch: 9 messages and one roster change.
const BATCH: u64 = 10;
/// Stanzas acknowledged before the kill.
const KILL_AFTER: u64 = 300;

const MODULES: &str = "modules:\n  mod_ping: {}\n  mod_roster: {max_roster_size: 100000}\n  mod_offline: {max_user_offline_messages: 100000}\n  mod_stream_mgmt: {}\n";

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("palaver.yml");
    std::fs::write(&path, config_text(dir, "", MODULES) + extra).expect("write config");
    path
}

/// Start `palaver serve`; returns the child and its c2s address.
async fn serve(cfg: &std::path::Path) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(TIMEOUT, lines.next_line()).await {
        if addr.is_none() && line.contains("listening on") && line.contains("C2s)") {
            let a = line.split_whitespace().nth(2).expect("address");
            addr = Some(a.parse().expect("socket address"));
        }
        if line.contains("data directory") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr.expect("serve printed its c2s address"))
}

fn add_user(cfg: &std::path::Path, jid: &str) {
    let out = std::process::Command::new(BIN)
        .args(["user", "add", jid, "pw", "--config"])
        .arg(cfg)
        .output()
        .expect("run palaver user add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stanza `n` (1-based) of the load: a roster change every `BATCH`th, else a message.
fn stanza(n: u64) -> String {
    if n.is_multiple_of(BATCH) {
        format!(
            "<iq type='set' id='r{n}'><query xmlns='jabber:iq:roster'><item jid='c{n}@localhost'/></query></iq>"
        )
    } else {
        format!("<message to='bob@localhost' type='chat' id='m{n}'><body>load {n}</body></message>")
    }
}

async fn kill_9_loses_nothing_acknowledged(extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), extra);
    add_user(&cfg, "alice@localhost");
    add_user(&cfg, "bob@localhost");
    let (mut child, addr) = serve(&cfg).await;

    let mut a = raw_login(addr, "alice", DOMAIN, "pw", "load").await;
    a.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    a.until("<enabled").await;
    a.until("/>").await;
    let Raw { s, buf } = a;
    assert!(buf.is_empty() || !buf.contains("<a "), "{buf}");
    let (mut rd, mut wr) = tokio::io::split(s);

    // Reader: the highest h the server acknowledged.
    let acked = Arc::new(AtomicU64::new(0));
    let acked_r = acked.clone();
    let progress = Arc::new(tokio::sync::Notify::new());
    let progress_r = progress.clone();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        let mut chunk = vec![0u8; 16384];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
            while let Some(p) = text.find("<a xmlns='urn:xmpp:sm:3' h='") {
                let rest = &text[p + 28..];
                let Some(end) = rest.find('\'') else { break };
                if let Ok(h) = rest[..end].parse::<u64>() {
                    acked_r.fetch_max(h, Ordering::SeqCst);
                }
                text.drain(..p + 28 + end);
            }
            // What is left can only be the start of an `<a/>` (short).
            if text.len() > 128 {
                let mut cut = text.len() - 64;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text.drain(..cut);
            }
            progress_r.notify_one();
        }
    });
    // Writer: batches with an ack request each, without waiting for acks.
    let sent = Arc::new(AtomicU64::new(0));
    let sent_w = sent.clone();
    let writer = tokio::spawn(async move {
        let mut n = 0;
        for _ in 0..2000 {
            let mut batch = String::new();
            for _ in 0..BATCH {
                n += 1;
                batch.push_str(&stanza(n));
            }
            batch.push_str("<r xmlns='urn:xmpp:sm:3'/>");
            if wr.write_all(batch.as_bytes()).await.is_err() {
                break;
            }
            sent_w.store(n, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    });
    // Kill as soon as enough is acknowledged, with more still in flight.
    let deadline = tokio::time::Instant::now() + TIMEOUT * 3;
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        let woke = tokio::time::timeout_at(deadline, progress.notified()).await;
        assert!(
            woke.is_ok(),
            "only {} acknowledged",
            acked.load(Ordering::SeqCst)
        );
    }
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");
    let _ = writer.await;
    let _ = reader.await;
    let acked = acked.load(Ordering::SeqCst);
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent > acked,
        "killed under load: sent {sent}, acked {acked}"
    );

    // Restart on the same data: everything acknowledged is there.
    let (_child, addr) = serve(&cfg).await;
    let mut b = raw_login(addr, "bob", DOMAIN, "pw", "b").await;
    b.send("<presence/>").await;
    let last_acked_msg = (1..=acked)
        .rev()
        .find(|n| !n.is_multiple_of(BATCH))
        .expect("a message");
    let got = b.until(&format!("id='m{last_acked_msg}'")).await;
    b.send("<iq type='get' id='done'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = got + &b.until("id='done'").await;
    let ids: Vec<u64> = got
        .match_indices(" id='m")
        .filter_map(|(p, _)| {
            let rest = &got[p + 6..];
            rest[..rest.find('\'')?].parse().ok()
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, each once");
    for n in (1..=acked).filter(|n| !n.is_multiple_of(BATCH)) {
        assert!(
            ids.binary_search(&n).is_ok(),
            "acknowledged message {n} lost (acked {acked}, sent {sent})"
        );
    }
    let mut a = raw_login(addr, "alice", DOMAIN, "pw", "check").await;
    a.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    a.until("id='roster'").await;
    let roster = a.until("</iq>").await;
    for n in (1..=acked).filter(|n| n.is_multiple_of(BATCH)) {
        assert!(
            roster.contains(&format!("'c{n}@localhost'")),
            "acknowledged roster item {n} lost (acked {acked})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_sqlite() {
    kill_9_loses_nothing_acknowledged("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_postgres() {
    let Some(db) =
        palaver_storage::postgres::testdb::TestDb::create("kill_9_under_load_postgres").await
    else {
        return;
    };
    kill_9_loses_nothing_acknowledged(&pg_keys(&db.url)).await;
}
