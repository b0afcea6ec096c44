//! The `http` auth backend: the operator's service decides.
//!
//! Each question is one `POST` of a JSON object to `URL/<operation>`, with
//! `Authorization: Bearer TOKEN` when `auth_opts.bearer_token` is set:
//!
//! | operation | body | answer |
//! |---|---|---|
//! | `check_password` | `{"user", "server", "password"}` | `true` / `false` |
//! | `user_exists` | `{"user", "server"}` | `true` / `false` |
//! | `set_password` | `{"user", "server", "password"}` | `true` / `false` (404: no such user) |
//! | `register` | `{"user", "server", "password"}` | `true` created / `false` refused; 409: exists |
//! | `remove_user` | `{"user", "server"}` | `true` removed / `false` refused; 404: no such user |
//! | `scram_credentials` | `{"user", "server", "mechanism"}` | `{"salt", "iterations", "stored_key", "server_key"}`; 404: none |
//!
//! The answer is status 200 with a JSON `true`/`false` (or `{"result":
//! bool}`); 404 means no such user. Any other status, a timeout
//! (`auth_opts.timeout`, ms) or a connection failure is a temporary failure.
//! `http://` and `https://` (system roots) URLs.
//!
//! `scram_credentials` is asked only when `auth_opts.scram` lists hashes:
//! then those SCRAM mechanisms are offered for the host, and the service
//! gives the stored credentials of the account for `mechanism`
//! (`SCRAM-SHA-1`, `SCRAM-SHA-256`, `SCRAM-SHA-512`): `salt`, `stored_key`
//! and `server_key` in base64, `iterations` a number (RFC 5802 §3). The
//! server never learns the password then. Without `scram`, only PLAIN is
//! offered (the password goes to `check_password`).

use super::AuthOutcome;
use crate::config::HttpAuthOptions;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read.
const MAX_RESPONSE: u64 = 64 * 1024;

/// One host's HTTP service.
pub struct HttpAuth {
    opts: HttpAuthOptions,
    tls: bool,
    authority: String,
    host: String,
    port: u16,
    path: String,
    connector: Option<tokio_rustls::TlsConnector>,
}

impl HttpAuth {
    /// The backend for `opts` (the URL is checked here).
    pub fn new(opts: HttpAuthOptions) -> Result<HttpAuth, String> {
        let (tls, rest) = if let Some(r) = opts.url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = opts.url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{}` is not an http(s) URL", opts.url));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in `{}`", opts.url))?,
            ),
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("no host in `{}`", opts.url));
        }
        let connector = if tls {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        } else {
            None
        };
        Ok(HttpAuth {
            authority: authority.to_string(),
            host,
            port,
            path: path.to_string(),
            tls,
            connector,
            opts,
        })
    }

    /// Status and JSON answer of one question; `Err` when the service
    /// could not be asked (down, timed out).
    async fn ask_raw(&self, op: &str, body: &Value) -> Result<(u16, Value), AuthOutcome> {
        match tokio::time::timeout(self.opts.timeout, self.post(op, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::warn!(op, error = %e, "HTTP auth service unreachable");
                Err(AuthOutcome::Temporary)
            }
            Err(_) => {
                tracing::warn!(op, "HTTP auth service timed out");
                Err(AuthOutcome::Temporary)
            }
        }
    }

    /// A change (`register`, `remove_user`): `true`/`false`, 404 and 409.
    async fn ask_change(&self, op: &str, body: &Value) -> Result<Change, AuthOutcome> {
        match self.ask_raw(op, body).await? {
            (200, v) => match boolean(&v) {
                Some(true) => Ok(Change::Done),
                Some(false) => Ok(Change::Refused),
                None => {
                    tracing::warn!(op, "HTTP auth service: answer is not true/false");
                    Err(AuthOutcome::Temporary)
                }
            },
            (404, _) => Ok(Change::NotFound),
            (409, _) => Ok(Change::Exists),
            (status, _) => {
                tracing::warn!(op, status, "HTTP auth service failed");
                Err(AuthOutcome::Temporary)
            }
        }
    }

    async fn ask(&self, op: &str, body: &Value) -> Result<bool, AuthOutcome> {
        match tokio::time::timeout(self.opts.timeout, self.post(op, body)).await {
            Ok(Ok((200, v))) => match v {
                Value::Bool(b) => Ok(b),
                Value::Object(o) => match o.get("result") {
                    Some(Value::Bool(b)) => Ok(*b),
                    _ => {
                        tracing::warn!(op, "HTTP auth service: answer is not true/false");
                        Err(AuthOutcome::Temporary)
                    }
                },
                _ => {
                    tracing::warn!(op, "HTTP auth service: answer is not true/false");
                    Err(AuthOutcome::Temporary)
                }
            },
            Ok(Ok((404, _))) => Ok(false),
            Ok(Ok((status, _))) => {
                tracing::warn!(op, status, "HTTP auth service failed");
                Err(AuthOutcome::Temporary)
            }
            Ok(Err(e)) => {
                tracing::warn!(op, error = %e, "HTTP auth service unreachable");
                Err(AuthOutcome::Temporary)
            }
            Err(_) => {
                tracing::warn!(op, "HTTP auth service timed out");
                Err(AuthOutcome::Temporary)
            }
        }
    }

    async fn post(&self, op: &str, body: &Value) -> std::io::Result<(u16, Value)> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        if let (true, Some(c)) = (self.tls, &self.connector) {
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let s = c.connect(name, tcp).await?;
            self.exchange(s, op, body).await
        } else {
            self.exchange(tcp, op, body).await
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        op: &str,
        body: &Value,
    ) -> std::io::Result<(u16, Value)> {
        let body = serde_json::to_vec(body).map_err(std::io::Error::other)?;
        let auth = match &self.opts.bearer_token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        let head = format!(
            "POST {}/{op} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority,
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await?;
        s.flush().await?;
        let mut buf = Vec::new();
        (&mut s).take(MAX_RESPONSE).read_to_end(&mut buf).await?;
        parse_response(&buf)
    }

    /// `check_password`.
    pub async fn check_password(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        match self
            .ask(
                "check_password",
                &json!({"user": user, "server": host, "password": password}),
            )
            .await
        {
            Ok(true) => AuthOutcome::Ok,
            Ok(false) => AuthOutcome::Denied,
            Err(e) => e,
        }
    }

    /// `user_exists`.
    pub async fn user_exists(&self, host: &str, user: &str) -> Result<bool, AuthOutcome> {
        self.ask("user_exists", &json!({"user": user, "server": host}))
            .await
    }

    /// Whether SCRAM with `hash` is offered (`auth_opts.scram`).
    pub fn offers_scram(&self, hash: ScramHash) -> bool {
        self.opts.scram.contains(&hash)
    }

    /// `register`.
    pub async fn register(
        &self,
        host: &str,
        user: &str,
        password: &str,
    ) -> Result<Change, AuthOutcome> {
        self.ask_change(
            "register",
            &json!({"user": user, "server": host, "password": password}),
        )
        .await
    }

    /// `remove_user`.
    pub async fn remove_user(&self, host: &str, user: &str) -> Result<Change, AuthOutcome> {
        self.ask_change("remove_user", &json!({"user": user, "server": host}))
            .await
    }

    /// `scram_credentials`: the account's stored credentials for `hash`;
    /// `None` when the service has none (no such user).
    pub async fn scram_credentials(
        &self,
        host: &str,
        user: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, AuthOutcome> {
        let mechanism = format!("SCRAM-{}", hash.name());
        let body = json!({"user": user, "server": host, "mechanism": mechanism});
        match self.ask_raw("scram_credentials", &body).await? {
            (200, v) => match scram_of(hash, &v) {
                Ok(c) => Ok(Some(c)),
                Err(why) => {
                    tracing::warn!(%mechanism, "HTTP auth service: unusable SCRAM credentials: {why}");
                    Err(AuthOutcome::Temporary)
                }
            },
            (404, _) => Ok(None),
            (status, _) => {
                tracing::warn!(op = "scram_credentials", status, "HTTP auth service failed");
                Err(AuthOutcome::Temporary)
            }
        }
    }

    /// `set_password`.
    pub async fn set_password(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        match self
            .ask(
                "set_password",
                &json!({"user": user, "server": host, "password": password}),
            )
            .await
        {
            Ok(true) => AuthOutcome::Ok,
            Ok(false) => AuthOutcome::Denied,
            Err(e) => e,
        }
    }
}

/// What the service did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Done.
    Done,
    /// It said no (`false`).
    Refused,
    /// No such user (404).
    NotFound,
    /// The user exists already (409).
    Exists,
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Object(o) => o.get("result").and_then(Value::as_bool),
        _ => None,
    }
}

/// SCRAM credentials from the service's JSON (base64 fields).
fn scram_of(hash: ScramHash, v: &Value) -> Result<ScramCredentials, String> {
    use base64::Engine;
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let text = v
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no `{name}`"))?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| format!("`{name}` is not base64"))
    };
    let salt = field("salt")?;
    let (stored_key, server_key) = (field("stored_key")?, field("server_key")?);
    let iterations = v
        .get("iterations")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or("`iterations` is not a positive number")?;
    if salt.is_empty() {
        return Err("empty `salt`".into());
    }
    if stored_key.len() != hash.output_len() || server_key.len() != hash.output_len() {
        return Err(format!(
            "`stored_key` and `server_key` must be {} bytes for SCRAM-{}",
            hash.output_len(),
            hash.name()
        ));
    }
    Ok(ScramCredentials {
        hash,
        salt,
        iterations,
        stored_key,
        server_key,
    })
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

/// Status and JSON body of an HTTP/1.1 response (Content-Length, chunked,
/// or until close). A body that is not JSON is `Null`.
fn parse_response(buf: &[u8]) -> std::io::Result<(u16, Value)> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete HTTP response"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut chunked = false;
    let mut len = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                len = v.parse::<usize>().ok();
            }
        }
    }
    let mut body = &buf[end + 4..];
    let owned;
    if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size = std::str::from_utf8(&rest[..eol])
                .ok()
                .and_then(|s| {
                    usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok()
                })
                .ok_or_else(|| bad("bad chunk size"))?;
            if size == 0 {
                break;
            }
            let data = rest
                .get(eol + 2..eol + 2 + size)
                .ok_or_else(|| bad("truncated chunk"))?;
            out.extend_from_slice(data);
            rest = rest.get(eol + 4 + size..).unwrap_or(&[]);
        }
        owned = out;
        body = &owned;
    } else if let Some(n) = len {
        body = body.get(..n).ok_or_else(|| bad("truncated body"))?;
    }
    let text = String::from_utf8_lossy(body);
    let v = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    Ok((status, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let (s, v) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ntrue").unwrap();
        assert_eq!((s, v), (200, Value::Bool(true)));
        let (s, v) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"result\":false}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(s, 200);
        assert_eq!(v, json!({"result": false}));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\ntrue").is_err());
        assert!(parse_response(b"garbage").is_err());
        let (s, _) = parse_response(b"HTTP/1.1 503 Busy\r\n\r\n").unwrap();
        assert_eq!(s, 503);
    }

    #[test]
    fn urls() {
        let h = HttpAuth::new(HttpAuthOptions {
            url: "http://127.0.0.1:8080/auth".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.path.as_str()),
            ("127.0.0.1", 8080, "/auth")
        );
        let h = HttpAuth::new(HttpAuthOptions {
            url: "http://auth.example".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((h.port, h.path.as_str()), (80, ""));
        assert!(
            HttpAuth::new(HttpAuthOptions {
                url: "ftp://x".into(),
                ..Default::default()
            })
            .is_err()
        );
    }
}
