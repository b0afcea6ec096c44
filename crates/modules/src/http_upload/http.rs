//! XEP-0363 uploads and downloads (HTTP PUT/GET) for the slots
//! `mod_http_upload` hands out: a route the module registers on every HTTP
//! listener.

use super::store::{Upload, sanitize_filename};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;

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
    State(up): State<Arc<Upload>>,
    Path((owner, slot, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
    // Checked before a byte of the body is read; the body itself is
    // streamed to disk and counted, never held in memory.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n != size) {
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
    if tokio::fs::try_exists(&file).await.unwrap_or(false) {
        return plain(StatusCode::CONFLICT, "this slot was already used");
    }
    if tokio::fs::create_dir_all(&dir).await.is_err() {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the file",
        );
    }
    // A temporary name of this request's own: concurrent PUTs to one slot
    // never write into each other's file.
    let tmp = dir.join(format!(".partial-{:016x}", rand::random::<u64>()));
    let outcome = receive(body, &tmp, size).await;
    let res = match outcome {
        Ok(()) => {
            let meta = dir.join(".meta");
            let (tmp2, file2) = (tmp.clone(), file.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                std::fs::write(&meta, ct.as_bytes())?;
                // hard_link fails when the name exists: the first PUT wins.
                match std::fs::hard_link(&tmp2, &file2) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|_| Received::Io)
            .and_then(|r| r.map_err(|_| Received::Io))
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&tmp).await;
    match res {
        Ok(true) => plain(StatusCode::CREATED, "created"),
        Ok(false) => plain(StatusCode::CONFLICT, "this slot was already used"),
        Err(Received::WrongSize) => plain(
            StatusCode::BAD_REQUEST,
            "body size differs from the requested slot",
        ),
        Err(Received::Aborted) => plain(StatusCode::BAD_REQUEST, "upload aborted"),
        Err(Received::Io) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the file",
        ),
    }
}

/// Why a PUT body was not stored.
enum Received {
    /// More or fewer bytes than the slot allows.
    WrongSize,
    /// The client went away or sent a broken body.
    Aborted,
    /// The disk failed.
    Io,
}

/// Stream `body` into `tmp`, accepting exactly `size` bytes.
async fn receive(body: Body, tmp: &std::path::Path, size: u64) -> Result<(), Received> {
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::File::create(tmp)
        .await
        .map_err(|_| Received::Io)?;
    let mut stream = body.into_data_stream();
    let mut got: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Received::Aborted)?;
        got += chunk.len() as u64;
        if got > size {
            return Err(Received::WrongSize);
        }
        out.write_all(&chunk).await.map_err(|_| Received::Io)?;
    }
    if got != size {
        return Err(Received::WrongSize);
    }
    out.sync_all().await.map_err(|_| Received::Io)?;
    Ok(())
}

pub(crate) async fn get(
    State(up): State<Arc<Upload>>,
    Path((owner, slot, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
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
    // Streamed from disk, never read into memory whole.
    let file = match tokio::fs::File::open(dir.join(&name)).await {
        Ok(f) => f,
        Err(_) => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let ct = tokio::fs::read_to_string(dir.join(".meta"))
        .await
        .unwrap_or_else(|_| "application/octet-stream".into());
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
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
