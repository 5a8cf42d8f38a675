//! TLS for `wss://` with rustls, on the `ring` provider chosen here, so applications never meet
//! rustls' "no process-level CryptoProvider" panic.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Kind, Result};

/// The crypto provider weft uses for TLS.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the webpki (Mozilla) roots plus `extra_roots`.
pub fn client_config(extra_roots: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for der in extra_roots {
        roots.add(der.clone()).map_err(|e| Error::new(Kind::Tls(format!("bad root certificate: {e}"))))?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(Kind::Tls(e.to_string())))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Parse PEM text into certificates (for `ClientBuilder::add_root_certificate_pem`).
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::new(Kind::Tls(format!("bad PEM: {e}"))))
}

pub(crate) async fn wrap<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    host: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<S>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Error::new(Kind::Tls(format!("invalid server name {host:?}: {e}"))))?;
    tokio_rustls::TlsConnector::from(cfg).connect(name, io).await.map_err(|e| Error::new(Kind::Tls(e.to_string())))
}
