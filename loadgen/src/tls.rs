//! TLS for the load generators, so a benchmark can set TLS beside plaintext in one run: a client
//! configuration trusting a CA, with a client certificate for mTLS if given.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Speak TLS, trusting this CA (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mTLS, with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
}

impl TlsArgs {
    pub fn enabled(&self) -> bool {
        self.tls_ca.is_some()
    }

    pub fn scheme(&self) -> &'static str {
        if self.enabled() {
            "https"
        } else {
            "http"
        }
    }

    pub fn server_name(&self) -> anyhow::Result<ServerName<'static>> {
        Ok(ServerName::try_from(self.tls_server_name.clone())?)
    }

    /// The client configuration offering `alpn`, or `None` without `--tls-ca`.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_file(key)?,
            )?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(Arc::new(config)))
    }

    /// The PEM files, read, for clients that take them as bytes (tonic, reqwest).
    pub fn pems(&self) -> anyhow::Result<Option<Pems>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((std::fs::read(c)?, std::fs::read(k)?)),
            _ => None,
        };
        Ok(Some(Pems {
            ca: std::fs::read(ca)?,
            identity,
        }))
    }
}

/// A CA, and a client certificate with its key, as PEM bytes.
pub struct Pems {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}
