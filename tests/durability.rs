//! No lost data: `kill -9` of a server under load loses nothing it had
//! acknowledged (XEP-0198 `<a/>`): offline messages and roster changes are
//! committed before the acknowledgement. Runs on SQLite and on PostgreSQL.
mod common;
use common::process::{add_user, serve};
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A pseudo-random number from the clock (no extra dependency): where in
/// the load each kill lands.
fn jitter(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    nanos.wrapping_mul(6_364_136_223_846_793_005) % max.max(1)
}

/// In-band registrations (XEP-0077) one after another until the server goes;
/// the accounts whose registration was answered with a result.
async fn register_until_killed(addr: std::net::SocketAddr, round: u32) -> Vec<String> {
    let mut done = Vec::new();
    for i in 0.. {
        let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
            break;
        };
        let mut c = Raw {
            s,
            buf: String::new(),
        };
        let user = format!("reg{round}x{i}");
        let open = tokio::time::timeout(TIMEOUT, async {
            c.s.write_all(header(DOMAIN).as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = c.s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(&buf).contains("</stream:features>") {
                    break;
                }
            }
            let iq = format!(
                "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{user}</username><password>pw</password></query></iq>"
            );
            c.s.write_all(iq.as_bytes()).await.ok()?;
            let mut answer = String::new();
            while !answer.contains("id='reg'") || !answer.contains("</iq>") && !answer.contains("/>") {
                let n = c.s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                answer.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
            Some(answer)
        })
        .await;
        match open {
            Ok(Some(a)) if a.contains("type='result'") => done.push(user),
            Ok(Some(a)) => panic!("registration of {user} refused: {a}"),
            // The server was killed mid-registration: not acknowledged.
            _ => break,
        }
    }
    done
}

/// `kill -9` at random moments under mixed load (messages to an offline
/// user and roster changes with stream management, in-band registrations
/// beside them), four times on the same data: after each restart the store
/// opens and nothing acknowledged is missing.
async fn random_kills_lose_nothing(extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("{extra}access_rules:\n  register:\n    allow: [all]\n");
    let cfg = write_config(dir.path(), &extra);
    // mod_register for the registrations (no per-address delay).
    let text = std::fs::read_to_string(&cfg).expect("read config").replace(
        "modules:\n",
        "modules:\n  mod_register: {registration_timeout: 0}\n",
    );
    std::fs::write(&cfg, text).expect("write config");
    add_user(&cfg, "alice@localhost");
    add_user(&cfg, "bob@localhost");
    let mut acked_roster: Vec<u64> = Vec::new();
    let mut registered: Vec<String> = Vec::new();
    for round in 0..4u32 {
        let (mut child, addr) = serve(&cfg).await;
        // What the previous kill left: every acknowledged message of that
        // round reaches bob now (checked below), the rest of the state too.
        let mut a = raw_login(addr, "alice", DOMAIN, "pw", &format!("load{round}")).await;
        a.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        a.until("<enabled").await;
        a.until("/>").await;
        let Raw { s, .. } = a;
        let (mut rd, mut wr) = tokio::io::split(s);
        let acked = Arc::new(AtomicU64::new(0));
        let acked_r = acked.clone();
        let first_ack = Arc::new(tokio::sync::Notify::new());
        let first_ack_r = first_ack.clone();
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
                        first_ack_r.notify_one();
                    }
                    text.drain(..p + 28 + end);
                }
                if text.len() > 128 {
                    let mut cut = text.len() - 64;
                    while !text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    text.drain(..cut);
                }
            }
        });
        // Stanza numbers of this round: base + 1 ..
        let base = u64::from(round) * 1_000_000;
        let writer = tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..2000 {
                let mut batch = String::new();
                for _ in 0..BATCH {
                    n += 1;
                    batch.push_str(&stanza(base + n));
                }
                batch.push_str("<r xmlns='urn:xmpp:sm:3'/>");
                if wr.write_all(batch.as_bytes()).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let registrar = tokio::spawn(register_until_killed(addr, round));
        // Kill somewhere within a second after the first acknowledgement.
        let _ = tokio::time::timeout(TIMEOUT * 3, first_ack.notified()).await;
        tokio::time::sleep(std::time::Duration::from_millis(jitter(1000))).await;
        child.start_kill().expect("kill -9");
        child.wait().await.expect("reaped");
        let _ = writer.await;
        let _ = reader.await;
        registered.extend(registrar.await.expect("registrar"));
        let acked = acked.load(Ordering::SeqCst);
        acked_roster.extend(
            (1..=acked)
                .filter(|n| n.is_multiple_of(BATCH))
                .map(|n| base + n),
        );

        // Restart on the same data and check everything acknowledged so far.
        let (_child, addr) = serve(&cfg).await;
        let mut b = raw_login(addr, "bob", DOMAIN, "pw", &format!("b{round}")).await;
        b.send("<presence/>").await;
        let mut got = String::new();
        // The backlog may be long and the machine busy: a generous bound.
        let long = TIMEOUT * 6;
        if let Some(last) = (1..=acked).rev().find(|n| !n.is_multiple_of(BATCH)) {
            got = b
                .until_within(&format!("id='m{}'", base + last), long)
                .await;
        }
        // Asked only now: an answer may overtake the offline messages, and
        // the wait above would have read past it.
        b.send("<iq type='get' id='done'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        got += &b.until_within("id='done'", long).await;
        for n in (1..=acked).filter(|n| !n.is_multiple_of(BATCH)) {
            assert!(
                got.contains(&format!(" id='m{}'", base + n)),
                "round {round}: acknowledged message {n} lost (acked {acked})"
            );
        }
        let mut a = raw_login(addr, "alice", DOMAIN, "pw", &format!("check{round}")).await;
        a.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            .await;
        a.until("id='roster'").await;
        let roster = a.until("</iq>").await;
        for n in &acked_roster {
            assert!(
                roster.contains(&format!("'c{n}@localhost'")),
                "round {round}: acknowledged roster item {n} lost"
            );
        }
        for user in &registered {
            raw_login(addr, user, DOMAIN, "pw", "r").await;
        }
        eprintln!(
            "round {round}: {acked} stanzas acknowledged, {} accounts registered so far; all there",
            registered.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_sqlite() {
    random_kills_lose_nothing("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_postgres() {
    let Some(db) = palaver_storage::postgres::testdb::TestDb::create("random_kills_postgres").await
    else {
        return;
    };
    random_kills_lose_nothing(&pg_keys(&db.url)).await;
}
