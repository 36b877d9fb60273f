//! TLS for the cluster's connections (rustls, through ractor_cluster's own TLS streams): a
//! worker serves with a certificate and its key (`sim worker --tls-cert --tls-key`); the
//! coordinator checks that certificate against a certificate authority and the name it must
//! carry (scenario `slots.workers.tls`). The cookie still authenticates the nodes; TLS keeps
//! the adapters and the cookie challenge off the wire in clear.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::ClusterError;

/// The coordinator's side: what it checks a worker's certificate against.
#[derive(Clone)]
pub struct TlsClient {
    /// The connector, trusting only the given authority.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the workers' certificates must carry.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

fn tls_err(path: &Path, message: impl std::fmt::Display) -> ClusterError {
    ClusterError::Tls {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The provider both sides use (chosen here, not installed process-wide).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Trust the authority in `ca` and expect `server_name` on the workers' certificates.
///
/// # Errors
/// An unreadable or malformed PEM file, or a name that is not a DNS name or IP address.
pub fn client(ca: &Path, server_name: &str) -> Result<TlsClient, ClusterError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| tls_err(ca, e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(ca, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(server_name.to_string()).map_err(|e| {
        tls_err(
            ca,
            format!("slots.workers.tls.server_name `{server_name}`: {e}"),
        )
    })?;
    Ok(TlsClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// Serve TLS with the certificate chain in `cert` and the private key in `key`.
///
/// # Errors
/// An unreadable or malformed PEM file, or a key that does not match the certificate.
pub fn server(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ClusterError> {
    let chain = certificates(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(key, e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
