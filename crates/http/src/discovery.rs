//! XEP-0156 connection discovery (`/.well-known/host-meta[.json]`) and CORS.

use crate::HttpState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use palaver_proto::writer::escape_into;

/// Endpoints advertised: (link relation, URL).
fn links(state: &HttpState, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let base = match &state.cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '\'', '"', '<', '>']))
                .unwrap_or("localhost");
            let scheme = if state.cfg.tls { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.clone()
    };
    vec![
        (
            "urn:xmpp:alt-connections:websocket",
            format!("{ws_base}{}", state.cfg.websocket_path),
        ),
        ("urn:xmpp:alt-connections:xbosh", format!("{base}/bosh")),
    ]
}

pub(crate) async fn host_meta_xml(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let mut s = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, href) in links(&state, &headers) {
        s.push_str("  <Link rel='");
        s.push_str(rel);
        s.push_str("' href='");
        escape_into(&mut s, &href);
        s.push_str("'/>\n");
    }
    s.push_str("</XRD>\n");
    (
        [(header::CONTENT_TYPE, "application/xrd+xml; charset=utf-8")],
        s,
    )
        .into_response()
}

fn json_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

pub(crate) async fn host_meta_json(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let mut s = String::from("{\"links\":[");
    for (i, (rel, href)) in links(&state, &headers).into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"rel\":\"");
        json_escape(&mut s, rel);
        s.push_str("\",\"href\":\"");
        json_escape(&mut s, &href);
        s.push_str("\"}");
    }
    s.push_str("]}");
    ([(header::CONTENT_TYPE, "application/json")], s).into_response()
}

/// CORS for the configured origins, with preflight answers.
pub(crate) async fn cors(state: HttpState, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|o| {
        let o = o.to_str().ok()?;
        let any = state.cfg.cors_origins.iter().any(|a| a == "*");
        if any {
            Some(HeaderValue::from_static("*"))
        } else if state.cfg.cors_origins.iter().any(|a| a == o) {
            HeaderValue::from_str(o).ok()
        } else {
            None
        }
    });
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    if let Some(v) = allowed {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type, Authorization"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}
