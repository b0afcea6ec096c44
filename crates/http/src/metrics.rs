//! `/metrics` (Prometheus text format, through the `metrics` facade and
//! `metrics-exporter-prometheus`) and `/health` for load balancers.
//!
//! Series: `palaver_sessions{host, transport}` (bound sessions; transport
//! `tcp`, `websocket` or `bosh`), `palaver_session_queued_stanzas{host}`
//! (stanzas waiting in the sessions' queues) and
//! `palaver_session_queue_longest{host}` (the longest queue),
//! `palaver_s2s_connections{direction}` (`in`, `out`),
//! `palaver_store_seconds{store, op}` (histogram of each call of the
//! server's stores and of the module stores that use `palaver_storage::timed`) and
//! `palaver_store_errors_total{store, op}`, `palaver_uptime_seconds`,
//! `palaver_build_info{version}`, `palaver_stanzas_routed_total{kind}`,
//! `palaver_stanzas_delivered_total{kind}`, `palaver_auth_total{method,
//! result}`, `palaver_auth_backend_seconds{method}` (histogram),
//! `palaver_api_calls_total{command, status}`,
//! `palaver_health_storage_seconds` (histogram of the health probe's query).

use crate::HttpState;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process's Prometheus recorder (once; later calls return the
/// same handle). `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<HttpState>) -> Response {
    let Some(handle) = install() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n",
        )
            .into_response();
    };
    let core = &state.core;
    use palaver_server::sessions::Transport;
    for h in &core.config().hosts {
        let (mut by_transport, mut queued, mut longest) = ([0usize; 3], 0usize, 0usize);
        for full in core.sessions().online(h) {
            let Some(s) = core.sessions().get(&full) else {
                continue;
            };
            by_transport[match s.conn.transport {
                Transport::Tcp => 0,
                Transport::WebSocket => 1,
                Transport::Bosh => 2,
            }] += 1;
            let q = s.queued();
            queued += q;
            longest = longest.max(q);
        }
        for (i, t) in [Transport::Tcp, Transport::WebSocket, Transport::Bosh]
            .into_iter()
            .enumerate()
        {
            metrics::gauge!("palaver_sessions", "host" => h.clone(), "transport" => t.as_str())
                .set(by_transport[i] as f64);
        }
        metrics::gauge!("palaver_session_queued_stanzas", "host" => h.clone()).set(queued as f64);
        metrics::gauge!("palaver_session_queue_longest", "host" => h.clone()).set(longest as f64);
    }
    if let Some(m) = core.config().hosts.first().and_then(|h| core.cx_of(h)) {
        metrics::gauge!("palaver_uptime_seconds").set(m.started().elapsed().as_secs_f64());
    }
    metrics::gauge!("palaver_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let mut r = handle.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /health`: 200 `{"status":"ok",…}` when the database answers within
/// 2 s, else 503 `{"status":"unavailable",…}`.
pub async fn health(State(state): State<HttpState>) -> Response {
    let core = &state.core;
    let started = Instant::now();
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        core.storage()
            .accounts
            .account_exists("health.invalid", "probe"),
    )
    .await;
    metrics::histogram!("palaver_health_storage_seconds").record(started.elapsed().as_secs_f64());
    let (status, db) = match probe {
        Ok(Ok(_)) => (StatusCode::OK, "ok".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("error: {e}")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout".to_string()),
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ok" } else { "unavailable" },
        "storage": db,
        "sessions": core.sessions().count(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
