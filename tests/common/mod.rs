//! Test harness: a real server on 127.0.0.1 with ephemeral ports, and a raw
//! XML client for edge cases.
#![allow(dead_code)]

pub mod process;

use base64::Engine;
use palaver_server::config::Config;
use palaver_server::{RunningServer, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "localhost";
pub const DOMAIN2: &str = "example.test";
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The fresh PostgreSQL database of this server, when the suite runs on
    /// PostgreSQL (dropped after the server).
    pub pg: Option<palaver_storage::postgres::testdb::TestDb>,
}

/// Which backend the end-to-end suite runs on: `PALAVER_TEST_BACKEND=pgsql`
/// puts every [`TestServer`] on a fresh PostgreSQL database (from
/// `PALAVER_TEST_PG_URL`); anything else (or unset) on SQLite.
pub fn backend_is_pg() -> bool {
    matches!(
        std::env::var("PALAVER_TEST_BACKEND").as_deref(),
        Ok("pgsql" | "postgres" | "postgresql")
    )
}

/// Config keys selecting the PostgreSQL database at `url`.
pub fn pg_keys(url: &str) -> String {
    format!("default_db: sql\nsql_type: pgsql\nsql_url: \"{url}\"\nsql_pool_size: 4\n")
}

/// A fresh database for one server when the suite runs on PostgreSQL.
pub async fn suite_db() -> Option<palaver_storage::postgres::testdb::TestDb> {
    if !backend_is_pg() {
        return None;
    }
    match palaver_storage::postgres::testdb::TestDb::create("e2e suite").await {
        Some(db) => Some(db),
        None => panic!("PALAVER_TEST_BACKEND=pgsql needs PALAVER_TEST_PG_URL"),
    }
}

/// Config text with both hosts, STARTTLS and direct TLS listeners on port 0.
pub fn config_text(dir: &std::path::Path, extra_listen: &str, modules: &str) -> String {
    format!(
        "hosts: [{DOMAIN}, {DOMAIN2}]\nloglevel: warning\ndata_dir: {d}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    allow_plain_without_tls: true\n    max_stanza_size: 65536\n{extra_listen}  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    tls: true\n  - port: 0\n    ip: 127.0.0.1\n    module: http\n{modules}",
        d = dir.display()
    )
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("", "").await
    }

    /// Start with extra listener options (indented under the first listener) and a modules block.
    pub async fn start_with(extra_listen: &str, modules: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = config_text(dir.path(), extra_listen, modules);
        let pg = suite_db().await;
        if let Some(db) = &pg {
            text.push_str(&pg_keys(&db.url));
        }
        let mut srv = Self::start_with_config_text(dir, &text).await;
        srv.pg = pg;
        srv
    }

    pub fn core(&self) -> &Arc<palaver_server::Core> {
        &self.server.as_ref().expect("running").core
    }

    pub async fn add_user(&self, user: &str, host: &str, password: &str) {
        let creds = palaver_server::auth::derive_all(password, 4096);
        self.core()
            .storage()
            .accounts
            .create_account(host, user, &creds)
            .await
            .expect("create user");
    }

    /// PEM of the generated certificate for `localhost` (to trust in clients).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("certs").join(format!("{DOMAIN}.pem"))
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A raw XML client over any byte stream.
pub struct Raw<S> {
    pub s: S,
    pub buf: String,
}

pub type RawTcp = Raw<TcpStream>;

impl Raw<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> RawTcp {
        let s = TcpStream::connect(addr).await.expect("connect");
        Raw {
            s,
            buf: String::new(),
        }
    }
}

pub fn header(to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub async fn send(&mut self, data: &str) {
        self.s.write_all(data.as_bytes()).await.expect("write");
    }

    pub async fn send_bytes(&mut self, data: &[u8]) {
        let _ = self.s.write_all(data).await;
    }

    /// Read until `needle` appears in the received text; returns everything up to and
    /// including it, keeping the rest buffered.
    pub async fn until(&mut self, needle: &str) -> String {
        self.until_within(needle, TIMEOUT).await
    }

    /// [`Raw::until`] with its own bound (long backlogs on a loaded machine).
    pub async fn until_within(&mut self, needle: &str, limit: Duration) -> String {
        let r = tokio::time::timeout(limit, async {
            loop {
                if let Some(pos) = self.buf.find(needle) {
                    let end = pos + needle.len();
                    let out = self.buf[..end].to_string();
                    self.buf.drain(..end);
                    return out;
                }
                let mut chunk = [0u8; 8192];
                let n = self.s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    panic!(
                        "connection closed while waiting for {needle:?}; got {:?}",
                        self.buf
                    );
                }
                self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
        .await;
        match r {
            Ok(s) => s,
            Err(_) => panic!("timed out waiting for {needle:?}; got {:?}", self.buf),
        }
    }

    /// Read everything until the peer closes; returns it.
    pub async fn until_closed(&mut self) -> String {
        let r = tokio::time::timeout(TIMEOUT, async {
            loop {
                let mut chunk = [0u8; 8192];
                match self.s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                    Ok(n) => self.buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
                }
            }
        })
        .await;
        match r {
            Ok(s) => s,
            Err(_) => panic!("connection not closed; got {:?}", self.buf),
        }
    }

    pub async fn open(&mut self, to: &str) -> String {
        self.send(&header(to)).await;
        self.until("</stream:features>").await
    }

    /// PLAIN login, bind `resource`; returns the bound JID.
    pub async fn login_plain(
        &mut self,
        user: &str,
        host: &str,
        password: &str,
        resource: &str,
    ) -> String {
        self.open(host).await;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ))
        .await;
        let r = self.until("/>").await;
        assert!(r.contains("<success"), "auth failed: {r}");
        self.open(host).await;
        self.bind(resource).await
    }

    pub async fn bind(&mut self, resource: &str) -> String {
        self.send(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
        let r = self.until("</iq>").await;
        let start = r.find("<jid>").expect("jid in bind result") + 5;
        let end = r.find("</jid>").expect("jid end");
        r[start..end].to_string()
    }
}

pub async fn raw_login(
    addr: SocketAddr,
    user: &str,
    host: &str,
    password: &str,
    resource: &str,
) -> RawTcp {
    let mut c = Raw::connect(addr).await;
    c.login_plain(user, host, password, resource).await;
    c
}

impl TestServer {
    /// Start from a full config text whose `data_dir` is `dir`.
    pub async fn start_with_config_text(dir: tempfile::TempDir, text: &str) -> TestServer {
        let config = Config::parse(text).expect("config");
        let mut server = Server::start(config, &palaver_admin::registry())
            .await
            .expect("server starts");
        palaver_http::start(&mut server);
        let http_addr = server.http_addr().expect("http");
        let addr = server.c2s_addr().expect("c2s");
        let tls_addr = server.c2s_tls_addr().expect("tls");
        TestServer {
            server: Some(server),
            dir,
            addr,
            tls_addr,
            http_addr,
            pg: None,
        }
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, head, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}
