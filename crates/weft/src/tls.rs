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

/// The client side of a TLS handshake with `host` over `io` (checked against `host`'s name).
pub async fn wrap<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    host: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<S>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Error::new(Kind::Tls(format!("invalid server name {host:?}: {e}"))))?;
    tokio_rustls::TlsConnector::from(cfg).connect(name, io).await.map_err(|e| Error::new(Kind::Tls(e.to_string())))
}

/// The server side of a TLS handshake (re-exported from tokio-rustls).
pub use tokio_rustls::TlsAcceptor;
/// A server-side TLS stream (re-exported from tokio-rustls).
pub use tokio_rustls::server::TlsStream as ServerTlsStream;

/// A server certificate chain and key loaded from PEM files, that can be loaded again while the
/// server runs (`weft serve` and `weft echo` do it on SIGHUP): new handshakes get the new
/// certificate, established connections keep theirs. A reload that fails keeps the old one.
///
/// ```no_run
/// # fn run() -> weft::Result<()> {
/// let cert = weft::tls::ReloadableCert::load("cert.pem".as_ref(), "key.pem".as_ref())?;
/// let acceptor = weft::tls::TlsAcceptor::from(weft::tls::server_config(cert.clone()));
/// // ... later, on SIGHUP:
/// cert.reload()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    /// The certificate and key files it loads from (HTTP/3's TLS, which is BoringSSL inside
    /// quiche, reads the same files).
    pub fn paths(&self) -> (&std::path::Path, &std::path::Path) {
        (&self.cert_path, &self.key_path)
    }

    /// Load the certificate chain (PEM, end-entity first) and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1). Errors say which file is wrong and why, including a key that does not
    /// belong to the certificate.
    pub fn load(cert_path: &std::path::Path, key_path: &std::path::Path) -> Result<Arc<Self>> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: std::sync::RwLock::new(Arc::new(key)),
        }))
    }

    /// Read both files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<()> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn load_certified_key(cert_path: &std::path::Path, key_path: &std::path::Path) -> Result<rustls::sign::CertifiedKey> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let tls_err = |m: String| Error::new(Kind::Tls(m));
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| tls_err(format!("reading {}: {e}", p.display())));
    let certs = CertificateDer::pem_slice_iter(&read(cert_path)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("{}: bad PEM certificate: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificate in it", cert_path.display())));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?)
        .map_err(|e| tls_err(format!("{}: no usable private key: {e}", key_path.display())))?;
    let provider = crypto_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls_err(format!("{}: unsupported private key: {e}", key_path.display())))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(tls_err(format!(
            "{} does not belong to the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        ))),
    }
}

/// A server configuration (TLS 1.2 and 1.3, ALPN `http/1.1`) whose certificate comes from
/// `cert` at each handshake.
pub fn server_config(cert: Arc<ReloadableCert>) -> Arc<rustls::ServerConfig> {
    server_config_alpn(cert, &[b"http/1.1"])
}

/// [`server_config`] offering these ALPN protocols, most preferred first: `[b"h2",
/// b"http/1.1"]` for a server that also speaks HTTP/2 ([`crate::h2`]); check
/// `alpn_protocol()` on the accepted stream to see which one the client chose.
pub fn server_config_alpn(cert: Arc<ReloadableCert>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}
