//! `/metrics` (parsed with a Prometheus text-format parser) and `/health`.
mod common;
#[path = "common/transports.rs"]
mod transports;
use common::*;

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .reduce(|a, b| a + b)
}

/// Observations of a histogram (its `+Inf` bucket), summed over the
/// series matching `labels`; `None` when there is no such series.
fn hist_count(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).reduce(f64::max),
            _ => None,
        })
        .reduce(|a, b| a + b)
}

async fn scrape(srv: &TestServer) -> prometheus_parse::Scrape {
    let (status, head, body) = http_request(srv.http_addr, "GET", "/metrics", "", b"").await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"), "{head}");
    let text = String::from_utf8(body).expect("utf-8");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}): {text}"))
}

#[tokio::test]
async fn metrics_and_health() {
    let srv = TestServer::start().await;
    srv.add_user("alice", DOMAIN, "alicepw").await;
    srv.add_user("bob", DOMAIN, "bobpw").await;
    let before = scrape(&srv).await;
    let failures_before =
        value(&before, "palaver_auth_total", &[("result", "failure")]).unwrap_or(0.0);
    let routed_before = value(
        &before,
        "palaver_stanzas_routed_total",
        &[("kind", "message")],
    )
    .unwrap_or(0.0);

    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "alicepw", "r").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "bobpw", "r").await;
    // A wrong password.
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    c.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>",
    )
    .await;
    assert!(c.until("</failure>").await.contains("not-authorized"));
    alice
        .send("<message to='bob@localhost/r' type='chat'><body>hi</body></message>")
        .await;
    bob.until("</message>").await;

    let s = scrape(&srv).await;
    assert_eq!(
        value(&s, "palaver_sessions", &[("host", DOMAIN)]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "palaver_sessions", &[("host", DOMAIN2)]),
        Some(0.0)
    );
    assert!(
        value(
            &s,
            "palaver_auth_total",
            &[("method", "internal"), ("result", "success")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        value(&s, "palaver_auth_total", &[("result", "failure")]).unwrap_or(0.0)
            >= failures_before + 1.0
    );
    assert!(
        value(&s, "palaver_stanzas_routed_total", &[("kind", "message")]).unwrap_or(0.0)
            >= routed_before + 1.0
    );
    assert!(
        value(
            &s,
            "palaver_stanzas_delivered_total",
            &[("kind", "message")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        value(
            &s,
            "palaver_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(value(&s, "palaver_uptime_seconds", &[]).is_some());

    let (status, _, body) = http_request(srv.http_addr, "GET", "/health", "", b"").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["storage"], "ok");
    assert_eq!(v["sessions"], 2);
    // The health probe's latency is a histogram.
    let s = scrape(&srv).await;
    assert!(
        s.samples
            .iter()
            .any(|x| matches!(x.value, prometheus_parse::Value::Histogram(_))
                && x.metric == "palaver_health_storage_seconds"),
        "the probe's latency histogram"
    );
    // The stats command agrees.
    let req = palaver_admin::Request {
        command: "stats".into(),
        args: Default::default(),
    };
    let v = palaver_admin::execute(srv.core(), true, &req)
        .await
        .unwrap();
    assert_eq!(v["onlineusers"], 2);
    assert_eq!(v["sessions_by_host"][DOMAIN], 2);
    srv.stop().await;
}

/// Sessions by transport, session queues, store latency.
#[tokio::test]
async fn sessions_queues_and_store_latency() {
    let srv = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let before = scrape(&srv).await;
    let creds_before = hist_count(
        &before,
        "palaver_store_seconds",
        &[("store", "accounts"), ("op", "credentials")],
    )
    .unwrap_or(0.0);
    let roster_before = hist_count(
        &before,
        "palaver_store_seconds",
        &[("store", "roster"), ("op", "roster")],
    )
    .unwrap_or(0.0);
    let mut tcp = raw_login(srv.addr, "alice", DOMAIN, "pw", "tcp").await;
    tcp.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    tcp.until("id='r1'").await;
    let _ws = transports::ws_login(&srv, "bob", "pw", "web").await;
    let _bosh = transports::bosh_login(&srv, "carol", "pw", "bosh").await;
    let s = scrape(&srv).await;
    for t in ["tcp", "websocket", "bosh"] {
        assert_eq!(
            value(
                &s,
                "palaver_sessions",
                &[("host", DOMAIN), ("transport", t)]
            ),
            Some(1.0),
            "{t}"
        );
    }
    assert_eq!(
        value(
            &s,
            "palaver_sessions",
            &[("host", DOMAIN2), ("transport", "tcp")]
        ),
        Some(0.0)
    );
    // Every login read credentials from the store: a latency histogram per
    // store operation.
    let creds = hist_count(
        &s,
        "palaver_store_seconds",
        &[("store", "accounts"), ("op", "credentials")],
    )
    .expect("store latency histogram");
    assert!(creds >= creds_before + 3.0, "{creds} after {creds_before}");
    let roster = hist_count(
        &s,
        "palaver_store_seconds",
        &[("store", "roster"), ("op", "roster")],
    )
    .unwrap_or(0.0);
    assert!(roster > roster_before, "the roster store is timed too");
    assert_eq!(
        value(&s, "palaver_session_queued_stanzas", &[("host", DOMAIN)]),
        Some(0.0)
    );

    // A client that stops reading: stanzas for it wait in its queue once
    // the socket buffers are full.
    let sleeper = raw_login(srv.addr, "alice", DOMAIN, "pw", "sleeper").await;
    let body = "z".repeat(32 * 1024);
    let mut queued = 0.0;
    for round in 0..200 {
        for _ in 0..20 {
            let req = palaver_admin::Request {
                command: "send_message".into(),
                args: serde_json::json!({"type": "chat", "from": "bob@localhost", "to": "alice@localhost/sleeper", "subject": "", "body": body})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            };
            palaver_admin::execute(srv.core(), true, &req)
                .await
                .expect("send_message");
        }
        let s = scrape(&srv).await;
        queued = value(&s, "palaver_session_queued_stanzas", &[("host", DOMAIN)]).unwrap_or(0.0);
        if queued > 0.0 {
            assert!(
                value(&s, "palaver_session_queue_longest", &[("host", DOMAIN)]).unwrap_or(0.0)
                    >= 1.0
            );
            break;
        }
        assert!(round < 199, "the queue never grew");
    }
    assert!(queued > 0.0);
    // The client goes away: its session and queue with it.
    drop(sleeper);
    let mut drained = false;
    for _ in 0..300 {
        let s = scrape(&srv).await;
        if value(&s, "palaver_session_queued_stanzas", &[("host", DOMAIN)]) == Some(0.0) {
            drained = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(drained, "the queue gauge goes back to 0");
    srv.stop().await;
}

/// A free port on 127.0.0.1 (both federating instances must know each
/// other's port before they start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn s2s_node(
    domain: &str,
    port: u16,
    peer: &str,
    peer_port: u16,
) -> (palaver_server::RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "hosts: [{domain}]\nloglevel: warning\ndata_dir: {d}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    allow_plain_without_tls: true\n  - port: {port}\n    ip: 127.0.0.1\n    module: ejabberd_s2s_in\ns2s_hosts:\n  {peer}: '127.0.0.1:{peer_port}'\n",
        d = dir.path().display()
    );
    let config = palaver_server::config::Config::parse(&text).expect("config");
    let mut server = palaver_server::Server::start(config, &palaver_admin::registry())
        .await
        .expect("server starts");
    palaver_s2s::start(&mut server).await.expect("s2s starts");
    let creds = palaver_server::auth::derive_all("pw", 4096);
    server
        .core
        .storage()
        .accounts
        .create_account(domain, "u", &creds)
        .await
        .expect("user");
    (server, dir)
}

/// s2s connections in and out.
#[tokio::test]
async fn s2s_connections() {
    let srv = TestServer::start().await;
    let before = scrape(&srv).await;
    let dir = |d: &str| value(&before, "palaver_s2s_connections", &[("direction", d)]);
    let (in0, out0) = (dir("in").unwrap_or(0.0), dir("out").unwrap_or(0.0));
    let (pa, pb) = (free_port(), free_port());
    let (a, _da) = s2s_node("a.test", pa, "b.test", pb).await;
    let (b, _db) = s2s_node("b.test", pb, "a.test", pa).await;
    let mut ua = raw_login(a.c2s_addr().expect("c2s"), "u", "a.test", "pw", "r").await;
    let mut ub = raw_login(b.c2s_addr().expect("c2s"), "u", "b.test", "pw", "r").await;
    ua.send("<message to='u@b.test/r' type='chat'><body>over s2s</body></message>")
        .await;
    assert!(ub.until("</message>").await.contains("over s2s"));
    let s = scrape(&srv).await;
    let now = |d: &str| value(&s, "palaver_s2s_connections", &[("direction", d)]).unwrap_or(0.0);
    assert!(now("out") >= out0 + 1.0, "out: {} after {out0}", now("out"));
    assert!(now("in") >= in0 + 1.0, "in: {} after {in0}", now("in"));
    a.shutdown().await;
    b.shutdown().await;
    // Closed with the servers.
    let mut back = false;
    for _ in 0..200 {
        let s = scrape(&srv).await;
        let now =
            |d: &str| value(&s, "palaver_s2s_connections", &[("direction", d)]).unwrap_or(0.0);
        if now("out") <= out0 && now("in") <= in0 {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(back, "the gauges go back down");
    srv.stop().await;
}
