//! `/metrics` (parsed with a Prometheus text-format parser) and `/health`.
mod common;
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
