//! Connection configuration: limits, timers, write batching, extensions.

use std::time::Duration;

use crate::deflate::DeflateConfig;

/// Settings of one WebSocket connection. Start from [`Config::default`] and change fields or use
/// the chaining setters.
///
/// ```
/// use std::time::Duration;
/// let cfg = weft_proto::Config::default()
///     .max_message_size(1 << 20)
///     .ping_interval(Some(Duration::from_secs(20)));
/// assert_eq!(cfg.max_message_size, 1 << 20);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest accepted frame payload (default 16 MiB). Larger: close 1009.
    pub max_frame_size: usize,
    /// Largest accepted message, after decompression (default 64 MiB). Larger: close 1009.
    pub max_message_size: usize,
    /// Most fragments in one message (default 16,384); a DoS guard. More: close 1009.
    pub max_fragments: usize,
    /// Send a keep-alive ping this often (default off).
    pub ping_interval: Option<Duration>,
    /// Close with 1011 if a keep-alive ping gets no pong within this time (default 20 s).
    pub ping_timeout: Duration,
    /// Close with 1001 if nothing arrives for this long (default off).
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the peer's answer to our close frame (default 5 s).
    pub close_timeout: Duration,
    /// Refuse new messages (`SendError::Backpressure`) while more than this many bytes wait to
    /// be written (default 64 MiB).
    pub max_buffered: usize,
    /// Adapters flush before accepting more once this many bytes wait (default 128 KiB).
    pub write_buffer_high_water: usize,
    /// Payloads up to this size are copied into the shared write buffer (corked); larger ones are
    /// queued as their own slice for a vectored write without a copy (default 4 KiB).
    pub cork_threshold: usize,
    /// Deliver data frames as [`Event::Fragment`](crate::Event::Fragment) as they arrive instead of
    /// reassembling messages (default false).
    pub stream_fragments: bool,
    /// permessage-deflate settings; `None` disables it (default `None`).
    pub deflate: Option<DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            max_fragments: 16_384,
            ping_interval: None,
            ping_timeout: Duration::from_secs(20),
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            max_buffered: 64 << 20,
            write_buffer_high_water: 128 << 10,
            cork_threshold: 4096,
            stream_fragments: false,
            deflate: None,
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $(
                $(#[$m])*
                #[must_use]
                pub fn $name(mut self, v: $ty) -> Self {
                    self.$name = v;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Set [`Config::max_frame_size`].
    max_frame_size: usize,
    /// Set [`Config::max_message_size`].
    max_message_size: usize,
    /// Set [`Config::max_fragments`].
    max_fragments: usize,
    /// Set [`Config::ping_interval`].
    ping_interval: Option<Duration>,
    /// Set [`Config::ping_timeout`].
    ping_timeout: Duration,
    /// Set [`Config::idle_timeout`].
    idle_timeout: Option<Duration>,
    /// Set [`Config::close_timeout`].
    close_timeout: Duration,
    /// Set [`Config::max_buffered`].
    max_buffered: usize,
    /// Set [`Config::write_buffer_high_water`].
    write_buffer_high_water: usize,
    /// Set [`Config::cork_threshold`].
    cork_threshold: usize,
    /// Set [`Config::stream_fragments`].
    stream_fragments: bool,
    /// Set [`Config::deflate`].
    deflate: Option<DeflateConfig>,
}
