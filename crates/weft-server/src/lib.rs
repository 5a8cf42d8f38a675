//! The weft real-time engine: topics pub/sub over WebSockets.
//!
//! JWT auth during the upgrade, per-topic ordering with offsets and epochs, bounded history and
//! recovery after reconnect, snapshots on subscribe, presence, bounded per-connection queues with slow-consumer
//! policies, rate limits, and an HTTP API (publish, stats, health, Prometheus metrics,
//! dashboard and chat pages) on the same port. The wire protocol is `docs/PROTOCOL.md`.
//!
//! `weft serve` runs it; this crate embeds it in any tokio application:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = weft_server::Engine::new(weft_server::EngineConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! engine.serve(listener).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod broker;
mod config;
pub mod dead;
mod engine;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
mod history;
mod http;
pub mod metrics;
mod outbox;
mod ratelimit;
pub mod secure;
mod session;
pub mod snapshot;
pub mod topic;
pub mod wire;

pub use auth::JwtAuth;
pub use broker::{Broker, MemoryBroker};
pub use config::EngineConfig;
pub use engine::{Engine, EventLoops, Inbound, PublishError};
pub use http::WS_PATH;
pub use outbox::SlowConsumerPolicy;
pub use session::{CLOSE_SECURE_FAILED, CLOSE_TOKEN_EXPIRED};
pub use wire::Position;
