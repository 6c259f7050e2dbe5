//! A binary-format client for `bench/run.py`'s streaming step (issue 6, item 2): runs one query
//! through the extended protocol, results in binary format, and counts the rows without
//! decoding their values, so the measurement is the server's, not psql's (which formats every
//! value and keeps the whole result in memory).
//!
//! usage: stream-rows CERT_PEM CONNECTION_STRING QUERY
//! prints: `<rows> <seconds>`
//!
//! Every benchmark peer presents the harness's one self-signed certificate (`CERT_PEM`): the
//! client accepts that certificate and no other, as the e2e tests' client does.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, pin_mut};
use tokio_postgres::types::ToSql;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

/// Accepts exactly the harness's certificate, with real signature checks.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::General("not the benchmark's certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server's error as its message says it (tokio-postgres's own text is "db error").
fn said(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

async fn stream(cert: &str, url: &str, query: &str) -> Result<(u64, f64), String> {
    let cert = CertificateDer::from_pem_file(cert).map_err(|e| format!("{cert}: {e}"))?;
    let provider = Arc::new(ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        .with_no_client_auth();
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map_err(|e| format!("connect: {}", said(e)))?;
    tokio::spawn(connection);
    let start = Instant::now();
    let rows = client
        .query_raw(query, std::iter::empty::<&dyn ToSql>())
        .await
        .map_err(|e| format!("query: {}", said(e)))?;
    pin_mut!(rows);
    let mut count = 0u64;
    while let Some(row) = rows.next().await {
        row.map_err(|e| format!("row {count}: {}", said(e)))?;
        count += 1;
    }
    Ok((count, start.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, url, query] = args.as_slice() else {
        eprintln!("usage: stream-rows CERT_PEM CONNECTION_STRING QUERY");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(stream(cert, url, query)) {
        Ok((rows, seconds)) => {
            println!("{rows} {seconds:.3}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stream-rows: {e}");
            ExitCode::FAILURE
        }
    }
}
