//! The client's half of the engine's secure channel (`weft_server::secure`) for
//! `weft.engine_client`: the same Rust code the server runs, so both ends agree byte for byte.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use weft_server::secure::{Channel, ClientHandshake, Mode};

fn value_error(e: weft_server::secure::SecureError) -> PyErr {
    PyValueError::new_err(e.0)
}

/// An ephemeral P-256 key pair for one `secure` request.
#[pyclass(module = "weft._weft")]
pub struct SecureHandshake {
    inner: Option<ClientHandshake>,
}

#[pymethods]
impl SecureHandshake {
    #[new]
    fn new(mode: &str) -> PyResult<Self> {
        let mode: Mode = mode.parse().map_err(value_error)?;
        Ok(Self { inner: Some(ClientHandshake::new(mode).map_err(value_error)?) })
    }

    /// The public key to send (65 bytes).
    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let hs = self.inner.as_ref().ok_or_else(|| PyValueError::new_err("handshake already finished"))?;
        Ok(PyBytes::new(py, hs.public_key()))
    }

    /// Finish with the server's answer; with `pinned`, its signature must verify.
    #[pyo3(signature = (server_key, session, signature=None, pinned=None))]
    fn finish(
        &mut self,
        server_key: &[u8],
        session: &str,
        signature: Option<&[u8]>,
        pinned: Option<&[u8]>,
    ) -> PyResult<SecureChannel> {
        let hs = self.inner.take().ok_or_else(|| PyValueError::new_err("handshake already finished"))?;
        let inner = hs.finish(server_key, session, signature, pinned).map_err(value_error)?;
        Ok(SecureChannel { inner })
    }
}

/// An established channel: seals what the client sends, opens what it receives.
#[pyclass(module = "weft._weft")]
pub struct SecureChannel {
    inner: Channel,
}

#[pymethods]
impl SecureChannel {
    /// The frame that carries `message`.
    fn seal<'py>(&mut self, py: Python<'py>, message: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.seal(message))
    }

    /// The message `frame` carries; `ValueError` when it is out of sequence or fails
    /// authentication (the channel is then not to be used again).
    fn open<'py>(&mut self, py: Python<'py>, frame: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let m = self.inner.open(frame).map_err(value_error)?;
        Ok(PyBytes::new(py, &m))
    }

    /// `"encrypt"` or `"sign"`.
    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.mode().name()
    }
}
