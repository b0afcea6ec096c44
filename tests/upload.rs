//! XEP-0363 HTTP File Upload: slot → PUT → GET, errors, traversal.
mod common;
use common::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_http_upload:\n    max_size: 1000\n    quota: 1500\n    secret: test-secret\n";

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
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
    (status, head, out[split + 4..].to_vec())
}

/// A PUT with a chunked body (no Content-Length); returns the status.
async fn chunked_put(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pdf\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    for part in body.chunks(256) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await
            .expect("write");
        s.write_all(part).await.expect("write");
        s.write_all(b"\r\n").await.expect("write");
    }
    s.write_all(b"0\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status")
}

fn url_path(url: &str) -> String {
    let rest = url.split_once("://").expect("absolute").1;
    rest[rest.find('/').expect("path")..].replace("&amp;", "&")
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let start = s.find(a).expect(a) + a.len();
    let end = s[start..].find(b).expect(b) + start;
    &s[start..end]
}

async fn request_slot(c: &mut RawTcp, id: &str, name: &str, size: usize, ct: &str) -> String {
    c.send(&format!("<iq type='get' id='{id}' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='{name}' size='{size}' content-type='{ct}'/></iq>")).await;
    c.until(&format!("id='{id}'")).await;
    c.until("</iq>").await
}

#[tokio::test]
async fn upload_round_trip_and_errors() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = raw_login(srv.addr, "alice", DOMAIN, "pw", "r").await;
    // Discovery: the service is listed and advertises its limit.
    c.send("<iq type='get' id='i1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(c.until("</iq>").await.contains("jid='upload.localhost'"));
    c.send("<iq type='get' id='i2' to='upload.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let info = c.until("</iq>").await;
    assert!(
        info.contains("urn:xmpp:http:upload:0") && info.contains("<value>1000</value>"),
        "{info}"
    );

    let data: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
    let slot = request_slot(
        &mut c,
        "s1",
        "../../etc/report 1.pdf",
        data.len(),
        "application/pdf",
    )
    .await;
    assert!(slot.contains("<slot"), "{slot}");
    let put = url_path(between(&slot, "<put url='", "'"));
    let get = url_path(between(&slot, "<get url='", "'"));
    assert!(!put.contains("..") && put.contains("report_1.pdf"), "{put}");
    // A wrong content type or size is refused; the right one is stored.
    let (st, _, _) = http(
        srv.http_addr,
        "PUT",
        &put,
        "Content-Type: text/html\r\n",
        &data,
    )
    .await;
    assert_eq!(st, 400);
    let (st, _, _) = http(
        srv.http_addr,
        "PUT",
        &put,
        "Content-Type: application/pdf\r\n",
        &data[..10],
    )
    .await;
    assert_eq!(st, 400);
    let (st, _, _) = http(
        srv.http_addr,
        "PUT",
        &put.replace("s=", "s=0"),
        "Content-Type: application/pdf\r\n",
        &data,
    )
    .await;
    assert_eq!(st, 403);
    // Without a Content-Length (chunked), the streamed body is counted:
    // too long or too short is refused and leaves nothing behind.
    let mut longer = data.clone();
    longer.extend_from_slice(b"extra");
    assert_eq!(chunked_put(srv.http_addr, &put, &longer).await, 400);
    assert_eq!(chunked_put(srv.http_addr, &put, &data[..300]).await, 400);
    let (st, _, _) = http(
        srv.http_addr,
        "PUT",
        &put,
        "Content-Type: application/pdf\r\n",
        &data,
    )
    .await;
    assert_eq!(st, 201);
    let (st, _, _) = http(
        srv.http_addr,
        "PUT",
        &put,
        "Content-Type: application/pdf\r\n",
        &data,
    )
    .await;
    assert_eq!(st, 409, "a slot is used once");
    let (st, head, body) = http(srv.http_addr, "GET", &get, "", b"").await;
    assert_eq!(st, 200);
    assert_eq!(body, data);
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/pdf"), "{head}");
    assert!(lower.contains("content-length: 700"), "{head}");
    assert!(lower.contains("content-disposition: attachment"), "{head}");
    // Unsigned or traversal GETs fail.
    let unsigned = get.split('?').next().expect("path").to_string();
    assert_eq!(http(srv.http_addr, "GET", &unsigned, "", b"").await.0, 403);
    assert_eq!(
        http(
            srv.http_addr,
            "GET",
            "/upload/..%2F..%2Fetc/passwd/x",
            "",
            b""
        )
        .await
        .0,
        404
    );
    assert_ne!(
        http(srv.http_addr, "GET", "/upload/../../../etc/passwd", "", b"")
            .await
            .0,
        200
    );

    // Too large: not-acceptable with the maximum.
    let e = request_slot(&mut c, "s2", "big.bin", 5000, "application/octet-stream").await;
    assert!(
        e.contains("not-acceptable")
            && e.contains("<file-too-large")
            && e.contains("<max-file-size>1000</max-file-size>"),
        "{e}"
    );
    // Quota (1500): 700 used, 900 more is refused.
    let e = request_slot(&mut c, "s3", "more.bin", 900, "application/octet-stream").await;
    assert!(e.contains("not-allowed") && e.contains("quota"), "{e}");
    // Images are shown inline.
    let slot = request_slot(&mut c, "s4", "pic.png", 3, "image/png").await;
    let put = url_path(between(&slot, "<put url='", "'"));
    let get = url_path(between(&slot, "<get url='", "'"));
    assert_eq!(
        http(
            srv.http_addr,
            "PUT",
            &put,
            "Content-Type: image/png\r\n",
            b"png"
        )
        .await
        .0,
        201
    );
    let (_, head, _) = http(srv.http_addr, "GET", &get, "", b"").await;
    assert!(
        !head.to_ascii_lowercase().contains("content-disposition"),
        "{head}"
    );
    // Bad requests.
    let e = request_slot(&mut c, "s5", "x", 0, "text/plain").await;
    assert!(e.contains("bad-request"), "{e}");
    let e = request_slot(&mut c, "s6", "x", 5, "nonsense").await;
    assert!(e.contains("bad-request"), "{e}");
    srv.stop().await;
}

/// A file larger than any in-memory body limit goes through (streamed).
#[tokio::test]
async fn large_upload_is_streamed() {
    let srv = TestServer::start_with(
        "",
        "modules:\n  mod_disco: {}\n  mod_http_upload:\n    max_size: 4000000\n    secret: test-secret\n",
    )
    .await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = raw_login(srv.addr, "alice", DOMAIN, "pw", "r").await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let slot = request_slot(
        &mut c,
        "big",
        "big.bin",
        data.len(),
        "application/octet-stream",
    )
    .await;
    let put = url_path(between(&slot, "<put url='", "'"));
    let get = url_path(between(&slot, "<get url='", "'"));
    let (st, _, _) = http(
        srv.http_addr,
        "PUT",
        &put,
        "Content-Type: application/octet-stream\r\n",
        &data,
    )
    .await;
    assert_eq!(st, 201);
    let (st, head, body) = http(srv.http_addr, "GET", &get, "", b"").await;
    assert_eq!(st, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 3000000"),
        "{head}"
    );
    assert!(body == data, "same bytes back");
    srv.stop().await;
}
