//! rustls client configuration for the blocking client: the system's roots (rustls-native-certs)
//! or the certificates of a given CA file.

use std::sync::Arc;

use pyo3::prelude::*;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::common::exception;

pub(crate) fn tls_error(msg: String) -> PyErr {
    Python::attach(|py| PyErr::from_type(exception(py, "InvalidHandshake"), msg))
}

/// `ca_certs`: DER certificates to trust (taken from a Python `ssl.SSLContext`); they win over
/// `ca_file`, which wins over the system's roots.
pub(crate) fn client_config(
    ca_file: Option<&str>,
    ca_certs: Option<&[Vec<u8>]>,
) -> PyResult<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match (ca_certs, ca_file) {
        (Some(ders), _) => {
            for der in ders {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| tls_error(format!("CA certificate from the SSL context: {e}")))?;
            }
        }
        (None, Some(path)) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| tls_error(format!("CA file {path}: {e}")))? {
                let cert = cert.map_err(|e| tls_error(format!("CA file {path}: {e}")))?;
                roots.add(cert).map_err(|e| tls_error(format!("CA file {path}: {e}")))?;
            }
        }
        (None, None) => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(tls_error(format!("no system root certificates found: {:?}", found.errors)));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
