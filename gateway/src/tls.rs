//! TLS for the PostgreSQL listener (rustls). The quickstart generates a self-signed
//! certificate for localhost when none exists.
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::config::TlsConfig;
use crate::error::StartupError;

pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, StartupError> {
    // PostgreSQL 17's direct TLS negotiation asks for this ALPN.
    acceptor_for(config, b"postgresql")
}

/// The same certificate for the browser sign-in listener (`sso`), speaking HTTP/1.1.
pub fn https_acceptor(config: &TlsConfig) -> Result<TlsAcceptor, StartupError> {
    acceptor_for(config, b"http/1.1")
}

fn acceptor_for(config: &TlsConfig, alpn: &[u8]) -> Result<TlsAcceptor, StartupError> {
    if config.generate_self_signed && !config.cert.exists() && !config.key.exists() {
        generate_self_signed(&config.cert, &config.key)?;
    }
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartupError::Tls(format!("certificate {}: {e}", config.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| StartupError::Tls(format!("private key {}: {e}", config.key.display())))?;
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartupError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn generate_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), StartupError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| StartupError::Tls(format!("generating a self-signed certificate: {e}")))?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartupError::Tls(format!("{}: {e}", dir.display())))?;
        }
    }
    std::fs::write(cert_path, cert.cert.pem())
        .map_err(|e| StartupError::Tls(format!("{}: {e}", cert_path.display())))?;
    write_private(key_path, cert.signing_key.serialize_pem().as_bytes())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate for localhost");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StartupError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| StartupError::Tls(format!("{}: {e}", path.display())))
}
