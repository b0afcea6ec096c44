//! XEP-0363 uploads and downloads for the slots `mod_http_upload` hands out.

use crate::HttpState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use palaver_server::upload::{Upload, sanitize_filename};
use std::collections::HashMap;

fn plain(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Validate the path parts; returns the URL path that was signed.
fn checked_path(owner: &str, slot: &str, name: &str) -> Option<String> {
    if !is_hex(owner, 24) || !is_hex(slot, 32) || sanitize_filename(name) != name {
        return None;
    }
    Some(format!("/upload/{owner}/{slot}/{name}"))
}

pub(crate) async fn put(
    State(state): State<HttpState>,
    Path((owner, slot, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(up) = Upload::get(&state.core) else {
        return plain(StatusCode::NOT_FOUND, "uploads are not enabled");
    };
    let Some(path) = checked_path(&owner, &slot, &name) else {
        return plain(StatusCode::BAD_REQUEST, "invalid upload path");
    };
    let (Some(e), Some(n), Some(ct), Some(sig)) = (q.get("e"), q.get("n"), q.get("ct"), q.get("s"))
    else {
        return plain(StatusCode::FORBIDDEN, "missing signature");
    };
    let ct = ct.clone();
    let (Ok(expiry), Ok(size)) = (e.parse::<u64>(), n.parse::<u64>()) else {
        return plain(StatusCode::FORBIDDEN, "bad signature parameters");
    };
    if !Upload::verify(&up.put_signature(&path, size, &ct, expiry), sig) {
        return plain(StatusCode::FORBIDDEN, "bad signature");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    if now > expiry {
        return plain(StatusCode::FORBIDDEN, "upload slot expired");
    }
    if body.len() as u64 != size {
        return plain(
            StatusCode::BAD_REQUEST,
            "body size differs from the requested slot",
        );
    }
    let given_ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Some(g) = given_ct
        && g != ct
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "content type differs from the requested slot",
        );
    }
    let dir = up.dir.join(&owner).join(&slot);
    let file = dir.join(&name);
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        std::fs::create_dir_all(&dir)?;
        if file.exists() {
            return Ok(false);
        }
        let tmp = dir.join(".partial");
        std::fs::write(&tmp, &body)?;
        std::fs::write(dir.join(".meta"), ct.as_bytes())?;
        std::fs::rename(&tmp, &file)?;
        Ok(true)
    })
    .await;
    match res {
        Ok(Ok(true)) => plain(StatusCode::CREATED, "created"),
        Ok(Ok(false)) => plain(StatusCode::CONFLICT, "this slot was already used"),
        _ => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the file",
        ),
    }
}

pub(crate) async fn get(
    State(state): State<HttpState>,
    Path((owner, slot, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(up) = Upload::get(&state.core) else {
        return plain(StatusCode::NOT_FOUND, "uploads are not enabled");
    };
    let Some(path) = checked_path(&owner, &slot, &name) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !q
        .get("s")
        .is_some_and(|s| Upload::verify(&up.get_signature(&path), s))
    {
        return plain(StatusCode::FORBIDDEN, "bad signature");
    }
    let dir = up.dir.join(&owner).join(&slot);
    let data = match tokio::fs::read(dir.join(&name)).await {
        Ok(d) => d,
        Err(_) => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let ct = tokio::fs::read_to_string(dir.join(".meta"))
        .await
        .unwrap_or_else(|_| "application/octet-stream".into());
    let mut resp = (StatusCode::OK, data).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    let inline = ct.starts_with("image/") || ct.starts_with("video/") || ct.starts_with("audio/");
    if !inline && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}
