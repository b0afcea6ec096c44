//! `tls: true` on an http listener serves HTTPS (certificate by SNI, like
//! c2s): host-meta over TLS advertises https/wss, plain HTTP gets nothing,
//! and a WebSocket client logs in over wss.
mod common;
mod tlsutil;
use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use palaver_proto::sasl::{ScramClient, ScramHash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn https_server() -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "hosts: [{DOMAIN}, {DOMAIN2}]\nloglevel: warning\ndata_dir: {d}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    tls: true\n  - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_http\n    tls: true\n    request_handlers:\n      /xmpp-websocket: ejabberd_http_ws\n      /bosh: mod_bosh\n",
        d = dir.path().display()
    );
    TestServer::start_with_config_text(dir, &text).await
}

#[tokio::test]
async fn host_meta_over_https_advertises_what_is_served() {
    let srv = https_server().await;
    let port = srv.http_addr.port();
    let cfg = tlsutil::client_config(&srv.cert_path(), &[b"http/1.1"]);
    let mut s = tlsutil::connect(srv.http_addr, DOMAIN, cfg.clone())
        .await
        .expect("TLS handshake with the host's certificate");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let host = format!("{DOMAIN}:{port}");
    let resp = tlsutil::http_get(&mut s, &host, "/.well-known/host-meta").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(&format!("wss://{host}/xmpp-websocket")),
        "{resp}"
    );
    assert!(resp.contains(&format!("https://{host}/bosh")), "{resp}");
    assert!(
        !resp.contains("href='ws://") && !resp.contains("href='http://"),
        "{resp}"
    );
    let mut s = tlsutil::connect(srv.http_addr, DOMAIN, cfg)
        .await
        .expect("TLS");
    let resp = tlsutil::http_get(&mut s, &host, "/.well-known/host-meta.json").await;
    assert!(resp.contains("\"href\":\"wss://"), "{resp}");

    // The second host gets its own certificate by SNI.
    let path2 = srv.dir.path().join("certs").join(format!("{DOMAIN2}.pem"));
    let cfg2 = tlsutil::client_config(&path2, &[b"http/1.1"]);
    tlsutil::connect(srv.http_addr, DOMAIN2, cfg2)
        .await
        .expect("SNI picks the second host's certificate");

    // Plain HTTP on the TLS port is not served.
    let mut tcp = tokio::net::TcpStream::connect(srv.http_addr)
        .await
        .expect("tcp");
    tcp.write_all(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plain HTTP answered on an HTTPS listener"
    );
    srv.stop().await;
}

async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("message in time");
        match m {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_login_over_wss() {
    let srv = https_server().await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let cfg = tlsutil::client_config(&srv.cert_path(), &[b"http/1.1"]);
    let tls = tlsutil::connect(srv.http_addr, DOMAIN, cfg)
        .await
        .expect("TLS");
    let mut req = format!("wss://{DOMAIN}:{}/xmpp-websocket", srv.http_addr.port())
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "xmpp".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("WebSocket over TLS");
    let send = |s: String| Message::Text(s.into());
    ws.send(send(format!(
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{DOMAIN}' version='1.0'/>"
    )))
    .await
    .expect("open");
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("<open"), "{open}");
    let feats = next_text(&mut ws).await;
    assert!(feats.contains("SCRAM-SHA-256"), "{feats}");
    // Over wss the session is encrypted: PLAIN and channel binding are offered.
    assert!(feats.contains(">PLAIN<"), "{feats}");
    assert!(feats.contains("-PLUS"), "{feats}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut client = ScramClient::new(ScramHash::Sha256, "alice", "pw", None);
    ws.send(send(format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64.encode(client.client_first())
    )))
    .await
    .expect("auth");
    let ch = next_text(&mut ws).await;
    let data = ch
        .split('>')
        .nth(1)
        .and_then(|x| x.split('<').next())
        .expect("challenge");
    let fin = client
        .handle_server_first(&b64.decode(data).expect("b64"))
        .expect("server-first");
    ws.send(send(format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        b64.encode(fin)
    )))
    .await
    .expect("response");
    let r = next_text(&mut ws).await;
    assert!(r.contains("<success"), "{r}");
    ws.send(send(format!(
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{DOMAIN}' version='1.0'/>"
    )))
    .await
    .expect("reopen");
    next_text(&mut ws).await;
    next_text(&mut ws).await;
    ws.send(send("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>wss</resource></bind></iq>".into()))
        .await
        .expect("bind");
    let r = next_text(&mut ws).await;
    assert!(r.contains("<jid>alice@localhost/wss</jid>"), "{r}");
    let _ = ws.close(None).await;
    srv.stop().await;
}

#[tokio::test]
async fn bosh_over_https_is_encrypted_without_channel_binding() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = https_server().await;
    let cfg = tlsutil::client_config(&srv.cert_path(), &[b"http/1.1"]);
    let mut s = tlsutil::connect(srv.http_addr, DOMAIN, cfg)
        .await
        .expect("TLS");
    let body = format!(
        "<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' \
         rid='1000' to='{DOMAIN}' ver='1.6' wait='5' hold='1' xmpp:version='1.0'/>"
    );
    let req = format!(
        "POST /bosh HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf)).await;
    let resp = String::from_utf8_lossy(&buf);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Encrypted: PLAIN is offered. One BOSH session spans several TLS
    // connections, so there is no channel to bind: no -PLUS mechanism.
    assert!(resp.contains("<mechanism>PLAIN</mechanism>"), "{resp}");
    assert!(!resp.contains("-PLUS"), "{resp}");
    srv.stop().await;
}
