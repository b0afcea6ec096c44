//! A client connection's byte stream: plain TCP or TLS over it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Plain or TLS transport.
pub enum Transport {
    /// Unencrypted TCP.
    Plain(TcpStream),
    /// TLS over TCP (STARTTLS or direct TLS).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Read at least one byte into `buf`, reserving `chunk` bytes only once
    /// data is ready, so an idle connection holds no read buffer.
    pub async fn read_chunk(&mut self, buf: &mut Vec<u8>, chunk: usize) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => loop {
                tcp.readable().await?;
                buf.reserve(chunk);
                match tcp.try_read_buf(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Transport::Tls(s) => {
                use tokio::io::AsyncReadExt;
                buf.reserve(chunk);
                s.read_buf(buf).await
            }
        }
    }

    /// Write everything, giving up after `limit` if the peer stops reading.
    /// The common case (the socket takes it all at once) arms no timer.
    pub async fn write_all_bounded(
        &mut self,
        mut data: &[u8],
        limit: std::time::Duration,
    ) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if let Transport::Plain(tcp) = self {
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

    /// Whether the transport is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
