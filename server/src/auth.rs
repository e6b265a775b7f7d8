//! The tokens files of `[auth]`: read at the start (a bad file stops it), re-read when they
//! change (a bad new file is refused with a log line and a metric; the old tokens stay).

use std::path::Path;
use std::sync::Arc;

use meshlens_collector::listen::auth::{parse_tenant, IngestTokens};
use meshlens_collector::metrics::{LoadResult, Thread, TokensFile};
use meshlens_collector::Metrics;
use meshlens_policy::credentials::TokenFile;
use meshlens_web::auth::{Role, SessionMetrics, WebAuth, WebAuthSettings, WebTokens};
use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;
use crate::servers::Set;

pub(crate) struct Credentials {
    pub web: Option<Arc<WebTokens>>,
    pub ingest: Option<Arc<IngestTokens>>,
    metrics: Metrics,
}

impl Credentials {
    pub fn load(config: &AuthConfig, metrics: &Metrics) -> anyhow::Result<Self> {
        fn load<V: Clone>(
            path: &Path,
            parse: meshlens_policy::credentials::ParseField<V>,
            name: TokensFile,
            metrics: &Metrics,
        ) -> anyhow::Result<Option<Arc<TokenFile<V>>>> {
            let (counted, name) = (name, name.as_str());
            if path.as_os_str().is_empty() {
                return Ok(None);
            }
            let file = TokenFile::load(path, parse)
                .map_err(|e| anyhow::anyhow!("auth: {name}_tokens_file: {e}"))?;
            metrics
                .auth_reloads
                .at((counted, LoadResult::Success))
                .inc();
            tracing::info!(file = %path.display(), tokens = file.len(), "{name} tokens loaded");
            Ok(Some(file))
        }
        Ok(Credentials {
            web: load(
                &config.web_tokens_file,
                Role::parse,
                TokensFile::Web,
                metrics,
            )?,
            ingest: load(
                &config.ingest_tokens_file,
                parse_tenant,
                TokensFile::Ingest,
                metrics,
            )?,
            metrics: metrics.clone(),
        })
    }

    /// The web's auth, from the config; `loopback_only` when its listener is bound to loopback.
    pub fn web_auth(
        &self,
        config: &AuthConfig,
        tls: bool,
        loopback_only: bool,
    ) -> anyhow::Result<Arc<WebAuth>> {
        let header = match config.proxy_user_header.trim() {
            "" => None,
            h => Some(
                h.parse::<axum::http::HeaderName>()
                    .map_err(|e| anyhow::anyhow!("auth: proxy_user_header {h:?}: {e}"))?,
            ),
        };
        if header.is_some() && config.proxy_cidrs.is_empty() {
            anyhow::bail!(
                "auth: proxy_user_header needs proxy_cidrs (the reverse proxy's addresses): \
                 the header is trusted from nowhere else"
            );
        }
        if config.session_ttl < std::time::Duration::from_secs(60) || config.max_sessions == 0 {
            anyhow::bail!("auth: session_ttl must be at least 1m and max_sessions at least 1");
        }
        if let Some(why) = exposure_warning(
            loopback_only,
            self.web.is_some() || header.is_some(),
            &config.allowed_hosts,
        ) {
            tracing::warn!("{why}");
        }
        Ok(WebAuth::new(WebAuthSettings {
            tokens: self.web.clone(),
            proxy_user_header: header,
            proxy_cidrs: config.proxy_cidrs.clone(),
            proxy_admin_users: config.proxy_admin_users.clone(),
            secure_cookie: tls,
            allowed_hosts: config.allowed_hosts.clone(),
            loopback_only,
            session_ttl: config.session_ttl,
            max_sessions: config.max_sessions,
            metrics: Some(SessionMetrics {
                sessions: self.metrics.web_sessions.clone(),
                logins: self.metrics.web_logins.family().clone(),
            }),
        }))
    }

    /// Polls the files every `period`.
    pub fn spawn_reloads(
        &self,
        set: &mut Set,
        period: std::time::Duration,
        cancel: &CancellationToken,
    ) {
        fn reload<V: Clone>(file: &TokenFile<V>, counted: TokensFile, metrics: &Metrics) {
            let name = counted.as_str();
            match file.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    metrics
                        .auth_reloads
                        .at((counted, LoadResult::Success))
                        .inc();
                    tracing::info!(tokens = file.len(), "{name} tokens reloaded");
                }
                Err(e) => {
                    metrics
                        .auth_reloads
                        .at((counted, LoadResult::Failure))
                        .inc();
                    tracing::error!(error = %e, "{name} tokens file refused; the previous tokens stay");
                }
            }
        }
        if self.web.is_none() && self.ingest.is_none() {
            return;
        }
        let (web, ingest, metrics) = (self.web.clone(), self.ingest.clone(), self.metrics.clone());
        crate::tasks::spawn_every(
            set,
            crate::tasks::Task::new(Thread::TokensReload, &metrics),
            period.max(std::time::Duration::from_millis(100)),
            cancel.clone(),
            move || {
                if let Some(f) = &web {
                    reload(f, TokensFile::Web, &metrics);
                }
                if let Some(f) = &ingest {
                    reload(f, TokensFile::Ingest, &metrics);
                }
            },
        );
    }
}

/// Why a web listener is open to DNS rebinding, if it is: bound beyond loopback, with no
/// credential asked and no `allowed_hosts`, any page a browser on the network opens can point
/// its own name at meshlens and read it (the Host check passes every name then).
fn exposure_warning(
    loopback_only: bool,
    credentials: bool,
    allowed_hosts: &[String],
) -> Option<&'static str> {
    (!loopback_only && !credentials && allowed_hosts.is_empty()).then_some(
        "the web listener is bound beyond loopback with no credentials and no [auth] \
         allowed_hosts: any web page a browser on the network opens can read meshlens through \
         DNS rebinding; set allowed_hosts to the names meshlens is reached by, or \
         web_tokens_file (docs/security.md)",
    )
}

#[cfg(test)]
mod exposure_tests {
    use super::exposure_warning;

    #[test]
    fn an_open_web_beyond_loopback_is_warned_about() {
        let hosts = ["meshlens.example.com".to_string()];
        assert!(exposure_warning(false, false, &[]).is_some());
        assert!(
            exposure_warning(true, false, &[]).is_none(),
            "loopback: names checked"
        );
        assert!(
            exposure_warning(false, true, &[]).is_none(),
            "a credential is asked"
        );
        assert!(
            exposure_warning(false, false, &hosts).is_none(),
            "names checked"
        );
    }
}
