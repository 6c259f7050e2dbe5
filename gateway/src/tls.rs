//! TLS for the PostgreSQL listener (rustls). The quickstart generates a self-signed
//! certificate for localhost when none exists.
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::{CipherSuite, ProtocolVersion, ServerConfig};

use crate::config::TlsConfig;
use crate::error::StartupError;

/// The PostgreSQL listener's TLS: no session resumption, as PostgreSQL's own server (which
/// turns off session tickets and its session cache). libpq makes a new TLS context for every
/// connection and never resumes, so the two tickets rustls sends by default after each
/// handshake (each a random id, a session kept in a shared cache, and an encrypted record)
/// were work on every login for nothing.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, StartupError> {
    // PostgreSQL 17's direct TLS negotiation asks for this ALPN.
    let mut server = server_config(config, b"postgresql")?;
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(tokio_rustls::rustls::server::NoServerSessionStorage {});
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The same certificate for the browser sign-in listener (`sso`), speaking HTTP/1.1; browsers
/// open several connections and resume sessions, so rustls's defaults stay.
pub fn https_acceptor(config: &TlsConfig) -> Result<TlsAcceptor, StartupError> {
    server_config(config, b"http/1.1").map(|server| TlsAcceptor::from(Arc::new(server)))
}

fn server_config(config: &TlsConfig, alpn: &[u8]) -> Result<ServerConfig, StartupError> {
    if config.generate_self_signed && !config.cert.exists() && !config.key.exists() {
        generate_self_signed(&config.cert, &config.key)?;
    }
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartupError::Tls(format!("certificate {}: {e}", config.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| StartupError::Tls(format!("private key {}: {e}", config.key.display())))?;
    let mut server = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartupError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![alpn.to_vec()];
    server.ignore_client_order = true;
    Ok(server)
}

/// ring's suites, AES-128-GCM first in each TLS version, and chosen in this order whatever
/// the client's. libpq (OpenSSL) lists AES-256-GCM with SHA-384 first, and SHA-384 is the
/// one hash ring computes without the CPU's SHA extensions: it was a twentieth of the
/// gateway's CPU per login (BENCHMARKS.md, 2026-12-02, morning). AES-128-GCM is the suite
/// every TLS 1.3 peer must have (RFC 8446, 9.1) and first in Mozilla's recommended server
/// configurations; the key exchanges (X25519, P-256) are of the same 128-bit strength.
fn provider() -> CryptoProvider {
    let mut provider = tokio_rustls::rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let aes_128 = matches!(
            suite.suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        // stable: the other suites stay in ring's order
        (
            suite.version().version != ProtocolVersion::TLSv1_3,
            !aes_128,
        )
    });
    provider
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::{ClientConfig, HandshakeKind, RootCertStore};

    use super::*;

    fn self_signed(name: &str) -> TlsConfig {
        let dir = std::env::temp_dir().join(format!("lakegate-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TlsConfig {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            generate_self_signed: true,
            allow_plaintext: false,
        }
    }

    fn trusting(config: &TlsConfig) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&config.cert).expect("certificate") {
            roots.add(cert.expect("certificate")).expect("trusted");
        }
        roots
    }

    /// How each of two connections from one client (which keeps sessions to resume) went.
    async fn two_handshakes(acceptor: TlsAcceptor, config: &TlsConfig) -> Vec<HandshakeKind> {
        let client = TlsConnector::from(Arc::new(
            ClientConfig::builder()
                .with_root_certificates(trusting(config))
                .with_no_client_auth(),
        ));
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let acceptor = acceptor.clone();
            let server = tokio::spawn(async move {
                let mut tls = acceptor.accept(server_io).await.expect("server handshake");
                tls.write_all(b"R").await.expect("write");
                tls.flush().await.expect("flush");
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await.expect("read");
            });
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = client
                .connect(name, client_io)
                .await
                .expect("client handshake");
            // reading past the handshake takes in any tickets the server sent after it
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.expect("read");
            tls.write_all(b"Q").await.expect("write");
            tls.flush().await.expect("flush");
            kinds.push(tls.get_ref().1.handshake_kind().expect("handshake done"));
            server.await.expect("server");
        }
        kinds
    }

    #[tokio::test]
    async fn a_postgres_connection_is_never_resumed() {
        let pg = self_signed("pg");
        let postgres = two_handshakes(acceptor(&pg).expect("acceptor"), &pg).await;
        // the same client does resume where the server offers it (the sign-in listener)
        let sso = self_signed("https");
        let https = two_handshakes(https_acceptor(&sso).expect("acceptor"), &sso).await;
        for config in [pg, sso] {
            let _ = std::fs::remove_dir_all(config.cert.parent().expect("folder"));
        }
        assert_eq!(postgres, vec![HandshakeKind::Full, HandshakeKind::Full]);
        assert_eq!(https, vec![HandshakeKind::Full, HandshakeKind::Resumed]);
    }

    /// The suite a client offering `offered` (in its order of preference) gets.
    async fn negotiated(config: &TlsConfig, offered: &[CipherSuite]) -> Option<CipherSuite> {
        // makes the certificate the client trusts
        let acceptor = acceptor(config).expect("acceptor");
        let mut provider = tokio_rustls::rustls::crypto::ring::default_provider();
        provider.cipher_suites = offered
            .iter()
            .filter_map(|want| {
                let suites = provider.cipher_suites.iter();
                suites.copied().find(|suite| suite.suite() == *want)
            })
            .collect();
        let client = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(trusting(config))
            .with_no_client_auth();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { acceptor.accept(server_io).await.is_ok() });
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let connected = TlsConnector::from(Arc::new(client))
            .connect(name, client_io)
            .await;
        let suite = connected
            .ok()
            .and_then(|tls| tls.get_ref().1.negotiated_cipher_suite())
            .map(|suite| suite.suite());
        assert_eq!(server.await.expect("server"), suite.is_some());
        suite
    }

    #[tokio::test]
    async fn aes_128_gcm_is_chosen_over_the_clients_first_choice_and_others_still_connect() {
        use CipherSuite::*;
        let config = self_signed("suites");
        // libpq's (OpenSSL's) order
        let libpq = [
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
        ];
        let chosen = negotiated(&config, &libpq).await;
        let aes_256_only = negotiated(&config, &[TLS13_AES_256_GCM_SHA384]).await;
        let chacha_only = negotiated(&config, &[TLS13_CHACHA20_POLY1305_SHA256]).await;
        let _ = std::fs::remove_dir_all(config.cert.parent().expect("folder"));
        assert_eq!(chosen, Some(TLS13_AES_128_GCM_SHA256));
        assert_eq!(aes_256_only, Some(TLS13_AES_256_GCM_SHA384));
        assert_eq!(chacha_only, Some(TLS13_CHACHA20_POLY1305_SHA256));
    }
}
