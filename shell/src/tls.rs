//! `wss://`: TLS (rustls, ring) under the websocket, on both daemons.
//!
//! ```text
//! compute: TlsTcpConnector ── TCP ─► TLS handshake (verify the server name) ─► websocket
//! project: TlsListener ◄── TCP accept; TLS handshake on the connection's task ◄── websocket
//! ```
//!
//! The agents stay generic over the stream: these are one more
//! [`Connector`] and [`Listener`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::compute_agent::Connector;
use crate::project_server::Listener;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    Pem { path: String, why: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: shown.clone(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// The project server's TLS side from a PEM certificate chain and key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        why: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The compute agent's TLS side: trusts the certificates in `ca` (PEM), or
/// the public web roots without one.
pub fn connector(ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in certificates(ca)? {
                roots.add(cert)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Production `wss://`: TCP to `address`, then TLS verifying `host`.
pub struct TlsTcpConnector {
    pub address: String,
    pub host: ServerName<'static>,
    pub tls: TlsConnector,
}

impl TlsTcpConnector {
    pub fn new(address: String, host: &str, tls: TlsConnector) -> Result<Self, TlsError> {
        let host = ServerName::try_from(host.to_string())
            .map_err(|_| TlsError::ServerName(host.to_string()))?;
        Ok(TlsTcpConnector { address, host, tls })
    }
}

impl Connector for TlsTcpConnector {
    type Stream = client::TlsStream<TcpStream>;
    async fn connect(&mut self) -> std::io::Result<Self::Stream> {
        let tcp = TcpStream::connect(self.address.as_str()).await?;
        self.tls.connect(self.host.clone(), tcp).await
    }
}

/// Accepts TCP connections; their TLS handshake is the server's to await
/// on each connection's own task (within its handshake timeout), so a peer
/// that stalls it holds up nobody else.
pub struct TlsListener {
    pub tcp: TcpListener,
    pub tls: TlsAcceptor,
}

impl Listener for TlsListener {
    type Stream = server::TlsStream<TcpStream>;
    type Handshake = tokio_rustls::Accept<TcpStream>;
    async fn accept(&mut self) -> std::io::Result<(Self::Handshake, SocketAddr)> {
        let (tcp, peer) = self.tcp.accept().await?;
        Ok((self.tls.accept(tcp), peer))
    }
}
