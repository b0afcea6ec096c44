//! An XML stream over TCP or TLS: frames in (through the proto framer, with
//! its limits), text out, STARTTLS in either role.

use minidom::Element;
use palaver_proto::error::StreamError;
use palaver_proto::framer::{Frame, Framer, Limits};
use palaver_proto::ns;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The byte stream under an XML stream.
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, we are the server.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, we are the client.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Taken (during a TLS handshake that failed).
    Gone,
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Server($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Io::Client($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Io::Gone => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    /// The socket failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bad XML or broke a limit.
    #[error("stream error: {0}")]
    Xml(StreamError),
    /// The peer closed its stream.
    #[error("stream closed by peer")]
    Closed,
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The peer broke the protocol (described).
    #[error("{0}")]
    Protocol(String),
}

/// An XML stream: the framer and the socket.
pub struct XmlStream {
    /// The socket.
    pub io: Io,
    framer: Framer,
    buf: Vec<u8>,
    start: usize,
    out: String,
}

impl XmlStream {
    /// A stream over `io` with the framer's limits.
    pub fn new(io: Io, limits: Limits) -> XmlStream {
        XmlStream {
            io,
            framer: Framer::new(limits),
            buf: Vec::new(),
            start: 0,
            out: String::new(),
        }
    }

    /// Expect a new stream header (after TLS or SASL).
    pub fn restart(&mut self) {
        self.framer.reset();
        self.buf.clear();
        self.start = 0;
    }

    /// Whether the socket is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Server(_) | Io::Client(_))
    }

    /// The next frame.
    pub async fn next(&mut self) -> Result<Frame, StreamEnd> {
        loop {
            if self.start < self.buf.len() {
                let mut data = &self.buf[self.start..];
                let before = data.len();
                let r = self.framer.next_frame(&mut data);
                self.start += before - data.len();
                match r {
                    Ok(Some(Frame::Close)) => return Err(StreamEnd::Closed),
                    Ok(Some(f)) => return Ok(f),
                    Ok(None) => {}
                    Err(e) => return Err(StreamEnd::Xml(e)),
                }
            }
            self.buf.clear();
            self.start = 0;
            self.buf.reserve(8192);
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(StreamEnd::Closed);
            }
        }
    }

    /// The next frame within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Frame, StreamEnd> {
        match tokio::time::timeout(limit, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(StreamEnd::Timeout),
        }
    }

    /// The next element within `limit` (a header is a protocol error).
    pub async fn element_within(&mut self, limit: Duration) -> Result<Element, StreamEnd> {
        match self.next_within(limit).await? {
            Frame::Element(el) => Ok(el),
            _ => Err(StreamEnd::Protocol("unexpected stream header".into())),
        }
    }

    /// Write raw text.
    pub async fn send_raw(&mut self, text: &str) -> io::Result<()> {
        self.io.write_all(text.as_bytes()).await?;
        self.io.flush().await
    }

    /// Write an element whose namespace is the stream's default when it is
    /// `jabber:client` (stanzas are kept in `jabber:client` inside the server
    /// and inherit the stream's `jabber:server` / component namespace).
    pub async fn send(&mut self, el: &Element) -> io::Result<()> {
        self.send_with(|out| palaver_proto::writer::write_element(out, el, ns::CLIENT))
            .await
    }

    /// Write a stanza (see [`XmlStream::send`]); a stanza shared by a
    /// fan-out is serialized once for all its recipients.
    pub async fn send_stanza(&mut self, st: &palaver_proto::stanza::Stanza) -> io::Result<()> {
        self.send_with(|out| st.write_xml(out, ns::CLIENT)).await
    }

    /// Write what `write` puts in the reused output buffer.
    async fn send_with(&mut self, write: impl FnOnce(&mut String)) -> io::Result<()> {
        self.out.clear();
        write(&mut self.out);
        self.io.write_all(self.out.as_bytes()).await?;
        if self.out.capacity() > 65_536 {
            self.out = String::new();
        }
        self.io.flush().await
    }

    /// Send a stream error and close the stream.
    pub async fn fail(&mut self, err: &StreamError) {
        let _ = self
            .send_raw(&format!("{}</stream:stream>", err.to_xml()))
            .await;
        let _ = self.io.shutdown().await;
    }

    /// Close our stream.
    pub async fn close(&mut self) {
        let _ = self.send_raw("</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }

    /// STARTTLS as the server.
    pub async fn accept_tls(&mut self, cfg: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err(io::Error::other("TLS already negotiated"));
        };
        let tls = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await?;
        self.io = Io::Server(Box::new(tls));
        self.restart();
        Ok(())
    }

    /// STARTTLS as the client, for `domain`.
    pub async fn connect_tls(
        &mut self,
        cfg: Arc<rustls::ClientConfig>,
        domain: &str,
    ) -> io::Result<()> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err(io::Error::other("TLS already negotiated"));
        };
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        self.io = Io::Client(Box::new(tls));
        self.restart();
        Ok(())
    }

    /// The certificate chain the peer presented, if any.
    pub fn peer_certs(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        let certs = match &self.io {
            Io::Server(s) => s.get_ref().1.peer_certificates(),
            Io::Client(s) => s.get_ref().1.peer_certificates(),
            _ => None,
        }?;
        Some(certs.iter().map(|c| c.clone().into_owned()).collect())
    }
}

/// Parse an element received in `stream_ns` (`jabber:server`,
/// `jabber:component:accept`) into the server's `jabber:client` form.
pub fn to_client_ns(el: &Element, stream_ns: &str) -> Option<Element> {
    if !el.has_ns(stream_ns) {
        return None;
    }
    let mut text = String::with_capacity(256);
    palaver_proto::writer::write_element(&mut text, el, stream_ns);
    let name_end = 1 + el.name().len();
    text.insert_str(name_end, " xmlns='jabber:client'");
    text.parse::<Element>().ok()
}

/// Escape a value for an attribute written by hand.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    palaver_proto::writer::escape_into(&mut out, s);
    out
}
