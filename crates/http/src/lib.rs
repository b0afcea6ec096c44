//! Palaver's HTTP listener: XMPP over WebSocket (RFC 7395), BOSH
//! (XEP-0124/0206), connection discovery (XEP-0156), and the routes
//! modules register (file upload…).
//!
//! WebSocket and BOSH sessions run the same c2s state machine and connection
//! loop as TCP ones ([`palaver_server::c2s::run`]) and appear in the session
//! table exactly like them; only their transports differ.

pub mod admin;
pub mod api;
mod bosh;
mod discovery;
pub mod metrics;
mod tls;
mod ws;

/// Entry points of the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::bosh::parse_body;
    pub use crate::ws::parse_message;
}

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
    // Routes the modules registered (e.g. mod_http_upload's PUT/GET): what
    // the listener's own routes do not take, as the hosts are now (a
    // configuration reload enables and disables modules).
    let modules = Arc::new(ModuleRoutes {
        core: state.core.clone(),
        built: std::sync::Mutex::new(None),
    });
    let own: Router = Router::new()
        .route(&ws_path, get(ws::upgrade))
        .route("/bosh", axum::routing::post(bosh::handle))
        .route("/api/openapi.json", get(api::openapi_json))
        .route("/metrics", get(metrics::metrics))
        .route("/health", get(metrics::health))
        .route("/admin", get(admin::index))
        .route("/admin/login", axum::routing::post(admin::login))
        .route("/admin/logout", axum::routing::post(admin::logout))
        .route("/admin/users/add", axum::routing::post(admin::add_user))
        .route(
            "/admin/users/remove",
            axum::routing::post(admin::remove_user),
        )
        .route("/admin/kick", axum::routing::post(admin::kick))
        .route("/api/{command}", axum::routing::post(api::call))
        .route("/.well-known/host-meta", get(discovery::host_meta_xml))
        .route(
            "/.well-known/host-meta.json",
            get(discovery::host_meta_json),
        )
        .with_state(state);
    own.fallback(move |req: axum::extract::Request| {
        let mut router = modules.router();
        async move {
            match tower_service::Service::call(&mut router, req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        }
    })
    .layer(axum::extract::DefaultBodyLimit::max(body_limit))
    .layer(axum::middleware::from_fn(move |req, next| {
        let cors = cors.clone();
        async move { discovery::cors(cors, req, next).await }
    }))
}

/// The modules' HTTP routes, built again when a reload changed the hosts.
struct ModuleRoutes {
    core: Arc<Core>,
    built: std::sync::Mutex<Option<(u64, Router)>>,
}

impl ModuleRoutes {
    fn router(&self) -> Router {
        let generation = self.core.generation();
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, r)) = &*built
            && *g == generation
        {
            return r.clone();
        }
        let mut r = Router::new();
        for (path, route) in self.core.http_routes() {
            r = r.route(&path, route);
        }
        *built = Some((generation, r.clone()));
        r
    }
}

/// Serve every HTTP listener the server bound.
pub fn start(server: &mut palaver_server::RunningServer) {
    metrics::install();
    for (cfg, sock) in server.take_http_listeners() {
        let core = server.core.clone();
        server.spawn(serve(core, cfg, sock));
    }
}

/// Serve HTTP on `sock` until the server shuts down.
pub async fn serve(core: Arc<Core>, cfg: Listener, sock: TcpListener) {
    let mut shutdown = core.shutdown_signal();
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
