//! Palaver's HTTP listener: XMPP over WebSocket (RFC 7395), BOSH
//! (XEP-0124/0206) and connection discovery (XEP-0156).
//!
//! WebSocket sessions run the same c2s state machine as TCP ones
//! ([`palaver_server::c2s::C2sSession`]) and appear in the session table
//! exactly like them; only the framing differs.

mod bosh;
mod discovery;
mod tls;
mod upload;
mod ws;

use axum::Router;
use axum::routing::get;
use palaver_server::Core;
use palaver_server::config::Listener;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Shared state of one HTTP listener.
#[derive(Clone)]
pub struct HttpState {
    /// Server core.
    pub core: Arc<Core>,
    /// Listener settings (limits and timeouts apply to WebSocket sessions).
    pub cfg: Listener,
}

/// The HTTP application for a listener.
pub fn app(state: HttpState) -> Router {
    let ws_path = state.cfg.websocket_path.clone();
    // Bodies read into memory (BOSH) are bounded by the stanza limit; upload
    // bodies are streamed to disk and counted against their slot instead.
    let body_limit = state.cfg.max_stanza_size.saturating_mul(4);
    let cors = state.clone();
    Router::new()
        .route(&ws_path, get(ws::upgrade))
        .route("/bosh", axum::routing::post(bosh::handle))
        .route(
            "/upload/{owner}/{slot}/{name}",
            get(upload::get).put(upload::put),
        )
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .route("/.well-known/host-meta", get(discovery::host_meta_xml))
        .route(
            "/.well-known/host-meta.json",
            get(discovery::host_meta_json),
        )
        .layer(axum::middleware::from_fn(move |req, next| {
            let cors = cors.clone();
            async move { discovery::cors(cors, req, next).await }
        }))
        .with_state(state)
}

/// Serve every HTTP listener the server bound.
pub fn start(server: &mut palaver_server::RunningServer) {
    for (cfg, sock) in server.take_http_listeners() {
        let core = server.core.clone();
        server.spawn(serve(core, cfg, sock));
    }
}

/// Serve HTTP on `sock` until the server shuts down.
pub async fn serve(core: Arc<Core>, cfg: Listener, sock: TcpListener) {
    let mut shutdown = core.shutdown.clone();
    if let Some(up) = palaver_server::upload::Upload::get(&core) {
        // Retention: drop expired uploads hourly.
        let mut stop = core.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let up = up.clone();
                        let n = tokio::task::spawn_blocking(move || up.cleanup()).await.unwrap_or(0);
                        if n > 0 {
                            tracing::info!(removed = n, "expired uploads removed");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }
    if cfg.tls {
        let app = app(HttpState {
            core: core.clone(),
            cfg: cfg.clone(),
        });
        return tls::serve(core, cfg, app, sock).await;
    }
    let app = app(HttpState { core, cfg });
    let res = axum::serve(
        sock,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    })
    .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, "HTTP listener stopped");
    }
}
