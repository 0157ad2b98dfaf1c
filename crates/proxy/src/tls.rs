//! TLS for listeners: a rustls server config (aws-lc-rs, TLS 1.2 and 1.3) from PEM files, with
//! ALPN offering h2 then http/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a TLS connection tells plugins (`connection.*` properties).
#[derive(Clone, Debug)]
pub struct TlsInfo {
    pub version: &'static str,
    pub server_name: Option<String>,
}

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn server_config(certificate: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("certificate {}: {e}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate {}: no CERTIFICATE block in the file",
            certificate.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The negotiated version and SNI name of an accepted connection.
pub fn info(connection: &rustls::ServerConnection) -> TlsInfo {
    TlsInfo {
        version: match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "",
        },
        server_name: connection.server_name().map(str::to_string),
    }
}
