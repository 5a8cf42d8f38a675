//! # weft-proto: the sans-IO WebSocket core
//!
//! RFC 6455 WebSockets and RFC 7692 permessage-deflate as a deterministic state machine: no
//! sockets, no runtime, no clock. The same core drives weft's tokio adapter, blocking and
//! asyncio adapters, and anything else that can move bytes.
//!
//! ```
//! use std::time::Instant;
//! use weft_proto::{Config, Connection, Event, Message, Role};
//!
//! let now = Instant::now();
//! let mut client = Connection::new(Role::Client, Config::default(), now);
//! let mut server = Connection::new(Role::Server, Config::default(), now);
//!
//! // The client queues a message; its bytes go to the server.
//! client.send(Message::text("hello")).unwrap();
//! while let Some(chunk) = client.poll_transmit() {
//!     server.handle_read(&chunk, now);
//! }
//! assert_eq!(server.poll_event(), Some(Event::Message(Message::text("hello"))));
//! ```
//!
//! ## Layout
//! - [`frame`]: frame header codec; [`mask`]: SIMD masking; [`utf8`]: incremental validation;
//! - [`close`]: close codes; [`message`]: messages; [`error`]: errors and the close taxonomy;
//! - [`handshake`]: HTTP/1.1 upgrade; [`deflate`]: permessage-deflate; [`extension`]: header
//!   grammar;
//! - [`Connection`]: the state machine tying it together; [`buffer`]: the idle-buffer pool.
#![deny(unsafe_code)]

pub mod buffer;
pub mod close;
pub mod config;
mod connection;
pub mod deflate;
pub mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
#[allow(unsafe_code)]
pub mod mask;
pub mod message;
pub mod utf8;

#[doc(hidden)]
pub mod fuzzing;

pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use connection::{Connection, DataKind, EncodedMessage, Event, IdleConnection, Input, Role};
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{ConnectionError, ProtocolError, SendError, Timeout};
pub use handshake::HandshakeError;
pub use message::{Message, Utf8Bytes};

pub use bytes;
pub use http;
