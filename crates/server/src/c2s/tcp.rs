//! The TCP transport of c2s connections: the byte stream (plain TCP, or TLS
//! over it, direct or after STARTTLS), the framer that cuts it into inputs,
//! and the session's output written as one XML stream.

use super::C2sListener;
use super::connection::{Input, Transport};
use super::output::Output;
use palaver_proto::framer::{Frame, Framer, Limits};
use palaver_proto::sasl::ChannelBindings;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

const READ_CHUNK: usize = 4096;
/// Longest wait for a client to take what we write.
const WRITE_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for the closing handshake of the socket.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A c2s connection over TCP.
pub(crate) struct TcpTransport {
    socket: Socket,
    framer: Framer,
    /// The last chunk read, while frames are taken from it (empty between
    /// reads: idle connections keep no read buffer).
    buf: Vec<u8>,
    /// How much of `buf` the framer consumed.
    pos: usize,
    ctx: Arc<C2sListener>,
    /// The traffic shaper, if any: reading waits while it is in debt.
    bucket: Option<Box<crate::limits::TokenBucket>>,
}

impl TcpTransport {
    pub(crate) fn new(ctx: Arc<C2sListener>, socket: Socket) -> Self {
        let limits = Limits {
            max_stanza_bytes: ctx.cfg.max_stanza_size,
            max_depth: ctx.cfg.max_xml_depth,
            max_attributes: ctx.cfg.max_xml_attributes,
        };
        TcpTransport {
            socket,
            framer: Framer::new(limits),
            buf: Vec::new(),
            pos: 0,
            ctx,
            bucket: None,
        }
    }
}

impl Transport for TcpTransport {
    async fn recv(&mut self) -> Input {
        if let Some(input) = self.next_buffered() {
            return input;
        }
        if let Some(b) = &mut self.bucket {
            // Shaping: read more slowly, never drop (TCP slows the sender).
            let wait = b.wait();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        match self.socket.read_chunk(&mut self.buf, READ_CHUNK).await {
            Ok(0) | Err(_) => Input::Lost,
            Ok(n) => {
                if let Some(b) = &mut self.bucket {
                    b.take(n);
                }
                self.pos = 0;
                self.next_buffered().unwrap_or(Input::Alive)
            }
        }
    }

    fn next_buffered(&mut self) -> Option<Input> {
        if self.buf.is_empty() {
            return None;
        }
        let mut data = self.buf.get(self.pos..).unwrap_or_default();
        let res = self.framer.next_frame(&mut data);
        self.pos = self.buf.len() - data.len();
        match res {
            Ok(None) => {
                // All consumed (the framer keeps a partial element itself).
                self.buf = Vec::new();
                self.pos = 0;
                None
            }
            Ok(Some(Frame::Open(h))) => Some(Input::Open(h)),
            Ok(Some(Frame::Element(el))) => Some(Input::Element(el)),
            Ok(Some(Frame::Close)) => Some(Input::Close),
            Err(e) => Some(Input::Error(e)),
        }
    }

    fn restart(&mut self) {
        self.framer.reset();
    }

    fn set_shaper(&mut self, shaper: Option<crate::config::Shaper>) {
        self.bucket = shaper.map(|s| Box::new(crate::limits::TokenBucket::new(&s)));
    }

    async fn send(&mut self, out: &mut Output) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let res = self
            .socket
            .write_all_bounded(out.text().as_bytes(), WRITE_LIMIT)
            .await;
        out.clear();
        res
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_LIMIT, self.socket.shutdown()).await;
    }

    async fn start_tls(&mut self, deadline: Instant) -> Option<ChannelBindings> {
        // Whatever the client sent after <starttls/> is not part of the new stream.
        self.buf = Vec::new();
        self.pos = 0;
        let tcp = match std::mem::replace(&mut self.socket, Socket::Closed) {
            Socket::Plain(tcp) => tcp,
            other => {
                self.socket = other;
                return None;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.ctx.starttls.clone());
        match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(s)) => {
                let cb = self.ctx.certs.channel_bindings(s.get_ref().1);
                self.socket = Socket::Tls(Box::new(s));
                self.framer.reset();
                Some(cb)
            }
            _ => None,
        }
    }
}

/// Plain or TLS byte stream.
pub(crate) enum Socket {
    /// Unencrypted TCP.
    Plain(TcpStream),
    /// TLS over TCP (STARTTLS or direct TLS).
    Tls(Box<TlsStream<TcpStream>>),
    /// Gone (a failed STARTTLS took the TCP stream).
    Closed,
}

impl Socket {
    /// Read at least one byte into `buf`, reserving `chunk` bytes only once
    /// data is ready, so an idle connection holds no read buffer.
    pub async fn read_chunk(&mut self, buf: &mut Vec<u8>, chunk: usize) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => loop {
                tcp.readable().await?;
                buf.reserve(chunk);
                match tcp.try_read_buf(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Socket::Tls(s) => {
                use tokio::io::AsyncReadExt;
                buf.reserve(chunk);
                s.read_buf(buf).await
            }
            Socket::Closed => Ok(0),
        }
    }

    /// Write everything, giving up after `limit` if the peer stops reading.
    /// The common case (the socket takes it all at once) arms no timer.
    pub async fn write_all_bounded(&mut self, mut data: &[u8], limit: Duration) -> io::Result<()> {
        if let Socket::Plain(tcp) = self {
            while !data.is_empty() {
                match tcp.try_write(data) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if data.is_empty() {
                return Ok(());
            }
        }
        match tokio::time::timeout(limit, self.write_all(data)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Socket::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Socket::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Socket::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Socket::Closed => Poll::Ready(Ok(())),
        }
    }
}
