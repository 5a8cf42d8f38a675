//! HTTP/3 in the `weft` binary. With feature `http3` (quiche and BoringSSL, whose build needs
//! cmake, a C++ compiler and libclang), `weft serve` and `weft echo` with a certificate also
//! listen on QUIC and the clients take `--http3`; without it the binary builds with Cargo
//! alone, TLS servers speak HTTP/1.1 and HTTP/2, and `--http3` says how to get it.

use std::net::SocketAddr;

#[cfg(feature = "http3")]
use anyhow::Context;
use weft::ClientBuilder;
use weft::http::HeaderValue;

/// What `--http3` says in a binary built without it.
#[cfg(not(feature = "http3"))]
const MISSING: &str = "this weft was built without HTTP/3: build it with `--features http3` \
                       (quiche's BoringSSL needs cmake, a C++ compiler and libclang)";

/// The HTTP/3 server (uninhabited without the feature).
#[cfg(feature = "http3")]
pub(crate) type Server = weft::h3::H3Server;
/// The HTTP/3 server (uninhabited without the feature).
#[cfg(not(feature = "http3"))]
pub(crate) enum Server {}

/// Changes an HTTP/3 server's certificate (uninhabited without the feature).
#[cfg(feature = "http3")]
pub(crate) type Reloader = weft::h3::H3TlsReloader;
/// Changes an HTTP/3 server's certificate (uninhabited without the feature).
#[cfg(not(feature = "http3"))]
pub(crate) enum Reloader {}

/// `b` connecting over HTTP/3, or the reason this binary cannot.
pub(crate) fn client(b: ClientBuilder) -> anyhow::Result<ClientBuilder> {
    #[cfg(feature = "http3")]
    return Ok(b.http3(weft::h3::Http3Config::default()));
    #[cfg(not(feature = "http3"))]
    {
        let _ = b;
        anyhow::bail!(MISSING)
    }
}

/// HTTP/3 on UDP at `addr` (the TCP listener's address: the same port number) with the TLS
/// certificate's files, and the `Alt-Svc` value that advertises it; `None` in a binary built
/// without HTTP/3 (which says so in the log). `reuseport` shares the port between worker
/// processes.
pub(crate) async fn server(
    cert: &weft::tls::ReloadableCert,
    addr: SocketAddr,
    acceptor: &weft::Acceptor,
    reuseport: bool,
) -> anyhow::Result<Option<(Server, HeaderValue)>> {
    #[cfg(feature = "http3")]
    {
        let (c, k) = cert.paths();
        let tls = weft::h3::H3Tls::from_pem_files(c, k)?;
        let socket =
            if reuseport { crate::workers::reuseport_udp(addr) } else { tokio::net::UdpSocket::bind(addr).await };
        let socket = socket.with_context(|| format!("binding UDP {addr} for HTTP/3"))?;
        let server = weft::h3::H3Server::from_socket(socket, tls, acceptor)?;
        let alt_svc = HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", addr.port()))?;
        Ok(Some((server, alt_svc)))
    }
    #[cfg(not(feature = "http3"))]
    {
        let _ = (cert, addr, acceptor, reuseport);
        tracing::info!("no HTTP/3: {MISSING}");
        Ok(None)
    }
}

/// The server's certificate reloader.
pub(crate) fn reloader(server: &Server) -> Reloader {
    #[cfg(feature = "http3")]
    return server.tls_reloader();
    #[cfg(not(feature = "http3"))]
    match *server {}
}

/// Load the certificate's files again into the HTTP/3 server.
pub(crate) fn reload(reloader: &Reloader, cert: &weft::tls::ReloadableCert) -> weft::Result<()> {
    #[cfg(feature = "http3")]
    {
        let (c, k) = cert.paths();
        weft::h3::H3Tls::from_pem_files(c, k).and_then(|t| reloader.reload(&t))
    }
    #[cfg(not(feature = "http3"))]
    {
        let _ = cert;
        match *reloader {}
    }
}
