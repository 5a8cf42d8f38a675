//! # weft: WebSockets for tokio
//!
//! RFC 6455 and permessage-deflate (RFC 7692), client and server, with TLS, split halves,
//! write batching, backpressure, keep-alive and a close taxonomy you can act on. Built on the
//! sans-IO core [`weft_proto`], which does all protocol work; this crate moves its bytes.
//!
//! Transports: HTTP/1.1 upgrades; HTTP/2 extended CONNECT ([`h2`], feature `http2`, on by
//! default); HTTP/3 over QUIC (`h3`, feature `http3`, off by default because it builds BoringSSL
//! from source: cmake, a C++ compiler and libclang). Other features: `deflate` and `tls`
//! (rustls), on by default.
//!
//! ```
//! use weft::{Acceptor, ClientBuilder, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> weft::Result<()> {
//! // An echo server on a free port.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     let (tcp, _) = listener.accept().await.unwrap();
//!     let mut ws = Acceptor::new().accept(tcp).await.unwrap();
//!     while let Some(Ok(msg)) = ws.recv().await {
//!         if msg.is_data() {
//!             ws.send(msg).await.unwrap();
//!         }
//!     }
//! });
//!
//! let mut ws = ClientBuilder::new(format!("ws://{addr}/")).connect().await?;
//! ws.send("hello").await?;
//! assert_eq!(ws.recv().await.unwrap()?, Message::text("hello"));
//! ws.close(None).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## The model
//! - A [`WebSocket`] is a [`Stream`](futures_core::Stream) of [`Message`]s and a
//!   [`Sink`](futures_sink::Sink) of them, with `recv`/`send`/`feed`/`flush`/`close` methods.
//! - Reading drives the connection: automatic pongs, keep-alive pings, timeouts and the close
//!   handshake happen while some task awaits `recv` (or polls the read half after
//!   [`split`](WebSocket::split)). `recv` is cancel safe.
//! - `send` queues and flushes; `feed` only queues, so a batch of `feed`s followed by one
//!   `flush` goes out in one vectored write.
//! - Incoming payloads are zero-copy slices of the read buffer; an idle connection gives its
//!   buffers back to a per-thread pool and holds none.
//! - How a connection ended is a [`ConnectionError`]: peer closed, we closed, protocol violation
//!   (with the close code we sent), timeout, or reset.
// Unsafe code lives only in the io_uring backend (`event_loop::uring`), which lends memory to
// the kernel; its tests run the same suite as the safe epoll backend.
#![deny(unsafe_code)]

mod client;
mod error;
pub mod event_loop;
#[cfg(feature = "http2")]
pub mod h2;
#[cfg(feature = "http3")]
pub mod h3;
mod server;
mod split;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
mod websocket;

pub use client::{ClientBuilder, ClientStream, connect};
pub use error::{Error, Result};
pub use server::{Acceptor, PendingUpgrade, Rejection, accept};
pub use split::{ReadHalf, ReuniteError, WriteHalf};
pub use stream::MaybeTlsStream;
pub use websocket::WebSocket;

pub use bytes::Bytes;
pub use http;
pub use weft_proto::{
    self as proto, CloseCode, CloseFrame, Config, ConnectionError, DataKind, DeflateConfig, DeflateParams,
    EncodedMessage, Event, Message, ProtocolError, Role, Timeout, Utf8Bytes,
};

/// The README's examples, compiled and run as doc tests (with every transport: scripts/test.sh
/// builds `weft` with `http3`).
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "http3"))]
pub struct ReadmeDoctests;
