//! The `http` auth backend: the operator's service decides.
//!
//! Each check is one `POST` of a JSON object to `URL/<operation>`, with
//! `Authorization: Bearer TOKEN` when `auth_opts.bearer_token` is set:
//!
//! | operation | body | answer |
//! |---|---|---|
//! | `check_password` | `{"user", "server", "password"}` | `true` / `false` |
//! | `user_exists` | `{"user", "server"}` | `true` / `false` |
//! | `set_password` | `{"user", "server", "password"}` | `true` / `false` |
//!
//! The answer is status 200 with a JSON `true`/`false` (or `{"result":
//! bool}`); 404 means no such user (false). Any other status, a timeout
//! (`auth_opts.timeout`, ms) or a connection failure is a temporary failure.
//! `http://` and `https://` (system roots) URLs.

use super::AuthOutcome;
use crate::config::HttpAuthOptions;
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
