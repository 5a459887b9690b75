//! The TLS side of the main listener: rustls from PEM files, ALPN h2 then http/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert: cannot read certificates from {file}: {reason}")]
    Cert { file: String, reason: String },
    #[error("server.tls.key: cannot read a private key from {file}: {reason}")]
    Key { file: String, reason: String },
    #[error("server.tls: the certificate and key do not make a usable TLS configuration: {0}")]
    Config(String),
}

/// A server configuration that asks `certs` for the certificate at every handshake, so a
/// reload can replace it without a new listener.
pub fn server_config(certs: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificate chain and key of `tls`, checked to belong together.
pub fn certified_key(tls: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(&tls.cert)?;
    let key_error = |reason: String| TlsError::Key {
        file: tls.key.display().to_string(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| key_error(e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(certified))
}

fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::Cert {
        file: file.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}
