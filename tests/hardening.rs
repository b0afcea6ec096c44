//! Issue 11: nothing the server accepted disappears silently, and every
//! abuse meets a limit while other users keep being served.
//!
//! Each test starts its own server and waits on socket events (bounded by
//! the harness timeouts); none sleeps to let something happen.

mod common;
use common::*;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts occurrences of fixed needles in a byte stream read in chunks
/// (a needle may straddle two chunks; none is counted twice).
struct StreamCounter {
    needles: Vec<&'static str>,
    counts: Vec<usize>,
    carry: String,
}

impl StreamCounter {
    fn new(needles: &[&'static str]) -> Self {
        StreamCounter {
            needles: needles.to_vec(),
            counts: vec![0; needles.len()],
            carry: String::new(),
        }
    }

    fn feed(&mut self, chunk: &str) {
        self.carry.push_str(chunk);
        let longest = self.needles.iter().map(|n| n.len()).max().unwrap_or(0);
        let mut keep_from = self.carry.len().saturating_sub(longest.saturating_sub(1));
        for (i, n) in self.needles.iter().enumerate() {
            let mut last_end = 0;
            for (pos, _) in self.carry.match_indices(n) {
                self.counts[i] += 1;
                last_end = pos + n.len();
            }
            keep_from = keep_from.max(last_end.min(self.carry.len()));
        }
        // Never cut inside a UTF-8 character (the test sends ASCII only).
        while !self.carry.is_char_boundary(keep_from) {
            keep_from += 1;
        }
        self.carry.drain(..keep_from);
    }
}

/// A client that sends tens of thousands of messages to its own bare JID as
/// fast as it can gets every one of them back, and no error: the server
/// stops reading it while its own queue is long instead of overrunning it
/// (issue 11, "silent loss"). Meanwhile another user is served promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_flood_is_slowed_not_dropped() {
    const N: usize = 50_000;
    let srv = TestServer::start().await;
    srv.add_user("bot", DOMAIN, "pw").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut bot = raw_login(srv.addr, "bot", DOMAIN, "pw", "r").await;
    bot.send("<presence/>").await;
    bot.until("<presence").await;
    bot.until("/>").await;
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "r").await;

    let Raw { s, buf } = bot;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let one = format!("<message to='bot@{DOMAIN}' type='chat'><body>x</body></message>");
        let mut batch = String::with_capacity(one.len() * 500);
        let mut sent = 0;
        while sent < N {
            batch.clear();
            for _ in 0..500.min(N - sent) {
                batch.push_str(&one);
                sent += 1;
            }
            wr.write_all(batch.as_bytes()).await.expect("write flood");
        }
        wr
    });
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut counter = StreamCounter::new(&["<body>x</body>", "type='error'"]);
        counter.feed(&buf);
        let mut chunk = vec![0u8; 65536];
        while counter.counts[0] + counter.counts[1] < N {
            let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut chunk))
                .await
                .expect("the flood stalled")
                .expect("read");
            assert!(n > 0, "connection closed after {:?}", counter.counts);
            counter.feed(std::str::from_utf8(&chunk[..n]).expect("utf-8"));
            progress.send_replace(counter.counts[0]);
        }
        counter.counts
    });

    // Another user is served while the flood runs.
    seen.wait_for(|n| *n >= N / 5)
        .await
        .expect("flood under way");
    let t = Instant::now();
    alice
        .send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let mut got = String::new();
    while !got.contains("id='p1'") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(60), alice.s.read(&mut chunk))
            .await
            .expect("alice's ping was not answered")
            .expect("read");
        assert!(n > 0, "alice's connection closed");
        got.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    let ping = t.elapsed();
    eprintln!("ping after {ping:?}");

    let counts = reader.await.expect("reader");
    let _wr = writer.await.expect("writer");
    assert_eq!(counts, vec![N, 0], "every message back, no error");
    eprintln!("self flood of {N}: all delivered; a ping of another user took {ping:?}");
}

/// RFC 6120 §10.1: the answer to a server-answered IQ implies that the
/// stanzas before it are handled. 300 messages to an offline contact, then
/// a ping: once the ping is answered, all 300 are in the store (on
/// PostgreSQL too, where commits lag behind the router).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answer_follows_committed_work() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN, "pw").await;
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "r").await;
    let mut burst = String::new();
    for i in 0..300 {
        burst.push_str(&format!(
            "<message to='bob@{DOMAIN}' type='chat' id='m{i}'><body>{i}</body></message>"
        ));
    }
    burst.push_str("<iq type='get' id='barrier'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.send(&burst).await;
    alice.until("id='barrier'").await;
    let stored = srv
        .core()
        .storage()
        .offline
        .offline_count(DOMAIN, "bob")
        .await
        .expect("count offline");
    assert_eq!(
        stored, 300,
        "the ping was answered before the messages were stored"
    );
}
