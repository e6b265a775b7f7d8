//! Server TLS for the listeners: a rustls configuration read from PEM files, re-read when they
//! change (cert-manager and Istio rotate them in place), and the identity a client certificate
//! names.
//!
//! A bad new pair (unreadable, not PEM, a key that is not the certificate's, a CA file without a
//! certificate…) is
//! refused with a log line and `meshlens_tls_reloads_total{result="failure"}`; the previous
//! configuration keeps serving. Connections already open keep the configuration they began with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::metrics::{LoadResult, Named};
use crate::Metrics;

/// What one listener's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's own first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// Set: clients must present a certificate signed by one of these PEM CAs (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Lowest protocol version offered.
    pub min_version: TlsVersion,
    /// With `client_ca`: the client identities (URI SANs, such as SPIFFE ids) that may call; an
    /// entry ending in `*` matches by prefix. Empty: any certificate from the CA.
    pub allowed_identities: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl std::str::FromStr for TlsVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            other => Err(format!(
                "TLS min_version '{other}': use \"1.2\" or \"1.3\" (older versions are not offered)"
            )),
        }
    }
}

/// Which HTTP versions a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    H2,
    /// HTTP/2 and HTTP/1.1.
    Http,
}

/// A listener's TLS configuration, swapped whole when its files change.
pub struct TlsSource {
    listener: &'static str,
    settings: TlsSettings,
    alpn: Alpn,
    current: ArcSwap<ServerConfig>,
    /// The files' sizes and times when `current` was read.
    seen: std::sync::Mutex<Vec<Stamp>>,
    metrics: Metrics,
}

type Stamp = Option<(u64, SystemTime)>;

impl TlsSource {
    /// Reads the files; an error here stops the start (nothing to fall back on yet).
    pub fn load(
        listener: &'static str,
        settings: TlsSettings,
        alpn: Alpn,
        metrics: Metrics,
    ) -> Result<Arc<Self>, String> {
        let seen = stamps(&settings);
        let (config, not_after) = build(&settings, alpn).map_err(|e| format!("{listener}: {e}"))?;
        metrics
            .tls_reloads
            .start(|result| (Named(listener), result));
        metrics
            .tls_reloads
            .at((Named(listener), LoadResult::Success))
            .inc();
        metrics
            .tls_cert_not_after
            .at(Named(listener))
            .set(not_after);
        Ok(Arc::new(TlsSource {
            listener,
            settings,
            alpn,
            current: ArcSwap::from_pointee(config),
            seen: std::sync::Mutex::new(seen),
            metrics,
        }))
    }

    /// The configuration new connections are served with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    pub fn requires_client_cert(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// Whether a client with this verified identity may call (see
    /// [`TlsSettings::allowed_identities`]).
    pub fn allows(&self, identity: Option<&ClientIdentity>) -> bool {
        let allowed = &self.settings.allowed_identities;
        if allowed.is_empty() {
            return true;
        }
        let Some(id) = identity else {
            return false;
        };
        id.uris.iter().any(|uri| {
            allowed.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => uri.starts_with(prefix),
                None => uri == a,
            })
        })
    }

    /// Re-reads the files if any changed since the last read; returns whether a new
    /// configuration was taken.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.settings);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return false;
        }
        // Remembered either way: a bad pair is reported once, not every poll, and read again
        // when the files change next.
        *seen = now;
        match build(&self.settings, self.alpn) {
            Ok((config, not_after)) => {
                self.current.store(Arc::new(config));
                self.metrics
                    .tls_reloads
                    .at((Named(self.listener), LoadResult::Success))
                    .inc();
                self.metrics
                    .tls_cert_not_after
                    .at(Named(self.listener))
                    .set(not_after);
                tracing::info!(listener = self.listener, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                self.metrics
                    .tls_reloads
                    .at((Named(self.listener), LoadResult::Failure))
                    .inc();
                tracing::error!(
                    listener = self.listener,
                    error = %e,
                    "TLS files changed but were refused; the previous certificate stays"
                );
                false
            }
        }
    }
}

fn stamps(s: &TlsSettings) -> Vec<Stamp> {
    let mut paths = vec![s.cert.as_path(), s.key.as_path()];
    paths.extend(s.client_ca.as_deref());
    paths
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.len(), m.modified().ok()?))
        })
        .collect()
}

/// ring's provider: pure Rust and assembly, no C toolchain or CMake for aws-lc. It offers no
/// post-quantum key exchange (rustls deprecates it for that reason); docs/security.md says so.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server configuration and returns it with the certificate's end of validity (Unix
/// seconds).
fn build(s: &TlsSettings, alpn: Alpn) -> Result<(ServerConfig, i64), String> {
    let certs = read_certs(&s.cert)?;
    let key = PrivateKeyDer::from_pem_file(&s.key)
        .map_err(|e| format!("reading the key {}: {e}", s.key.display()))?;
    let not_after = not_after(&certs[0])
        .map_err(|e| format!("reading the certificate {}: {e}", s.cert.display()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match &s.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "the key {} does not serve the certificate {}: {e}",
            s.key.display(),
            s.cert.display()
        )
    })?;
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec()],
        Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok((config, not_after))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Who a verified client certificate says the caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// URI SANs, in order (`spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway`…).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
}

impl ClientIdentity {
    /// Reads the names of a client's end-entity certificate (already verified by rustls).
    pub fn from_cert(cert: &[u8]) -> Option<ClientIdentity> {
        use x509_parser::extensions::GeneralName;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
        let mut id = ClientIdentity {
            common_name: parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            ..ClientIdentity::default()
        };
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uris.push((*u).to_string()),
                    GeneralName::DNSName(d) => id.dns.push((*d).to_string()),
                    _ => {}
                }
            }
        }
        Some(id)
    }

    /// The SPIFFE id (Istio's workload identity), if the certificate carries one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with("spiffe://"))
    }

    /// One name for logs and authorization: the SPIFFE id, else the first URI, DNS name or CN.
    pub fn name(&self) -> Option<&str> {
        self.spiffe_id()
            .or(self.uris.first().map(String::as_str))
            .or(self.dns.first().map(String::as_str))
            .or(self.common_name.as_deref())
    }
}
