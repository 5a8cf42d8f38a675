//! `MaybeTlsStream`: the transport `connect` returns (plain TCP or rustls).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A plain or TLS-wrapped transport.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream<S> {
    /// Unencrypted (`ws://`).
    Plain(S),
    /// TLS via rustls (`wss://`).
    #[cfg(feature = "tls")]
    Rustls(Box<tokio_rustls::client::TlsStream<S>>),
    /// One stream of an HTTP/2 connection ([`ClientBuilder::http2`](crate::ClientBuilder::http2)).
    #[cfg(feature = "http2")]
    H2(Box<crate::h2::H2Stream>),
    /// One stream of an HTTP/3 connection ([`ClientBuilder::http3`](crate::ClientBuilder::http3)).
    #[cfg(feature = "http3")]
    H3(Box<crate::h3::H3Stream>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            MaybeTlsStream::Rustls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            #[cfg(feature = "http2")]
            MaybeTlsStream::H2($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            #[cfg(feature = "http3")]
            MaybeTlsStream::H3($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::Rustls(s) => s.is_write_vectored(),
            #[cfg(feature = "http2")]
            Self::H2(_) => false,
            #[cfg(feature = "http3")]
            Self::H3(_) => false,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
