//! `weft._weft`: the native half of the Python package `weft`.
//!
//! Both clients frame with the sans-IO [`weft_proto::Connection`]; neither starts a runtime.
//! - [`sync_ws::WebSocket`] owns a blocking `std::net::TcpStream` (rustls on top for `wss://`)
//!   and releases the GIL around every call that can block.
//! - [`aio::AsyncProtocol`] is an asyncio protocol: the event loop owns the socket and calls
//!   `data_received`; Rust parses frames and resolves the waiting future directly.
//!
//! The Python modules in `python/weft/` wrap these with the public API.

mod aio;
mod common;
mod secure;
mod server;
mod sync_ws;
mod tls;

use pyo3::prelude::*;

#[pymodule]
fn _weft(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<sync_ws::WebSocket>()?;
    m.add_class::<aio::AsyncProtocol>()?;
    m.add_class::<server::Server>()?;
    m.add_class::<secure::SecureHandshake>()?;
    m.add_class::<secure::SecureChannel>()?;
    m.add_function(wrap_pyfunction!(sync_ws::connect, m)?)?;
    m.add_function(wrap_pyfunction!(common::parse_url, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
