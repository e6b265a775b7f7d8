//! Who may use the web listener, and as what.
//!
//! A caller is known by a bearer token (`Authorization: Bearer TOKEN`, as Prometheus and API
//! clients send), by the session cookie the login page sets, or by the user header of a reverse
//! proxy (oauth2-proxy and the like) trusted only from `proxy_cidrs`. `viewer` reads everything;
//! `admin` also sees config file paths and raw denial details, and may reload the policy.
//! `/healthz`, `/readyz`, the login page and the stylesheet stay open. Without a credential: 401
//! (the login page for a browser's page, JSON for the API). With no tokens file and no proxy
//! header configured, everyone is admin, as before there was authentication.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meshlens_policy::credentials::{self, Digest, TokenFile};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    /// A web tokens file's second field.
    pub fn parse(field: Option<&str>) -> Result<Role, String> {
        match field {
            Some("viewer") => Ok(Role::Viewer),
            Some("admin") => Ok(Role::Admin),
            Some(_) => Err("the role is not viewer or admin".into()),
            None => Err("a role is needed after the token (viewer or admin)".into()),
        }
    }
}

pub type WebTokens = TokenFile<Role>;

/// Who is asking, as the guard found it: their role, and whether it came from a login session
/// (which the pages' "Sign out" button ends). Empty when the web needs no credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SignedIn {
    pub role: Option<Role>,
    pub session: bool,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SignedIn {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<SignedIn>()
            .copied()
            .unwrap_or_default())
    }
}

/// The session cookie's name over plaintext; over TLS it is `__Host-meshlens_session`, which
/// browsers accept only from this host, over HTTPS, for the whole site (a sibling domain cannot
/// plant one).
pub const COOKIE: &str = "meshlens_session";
const SECURE_COOKIE: &str = "__Host-meshlens_session";
/// How long a login lasts, by default (`[auth] session_ttl`).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept, by default (`[auth] max_sessions`); past it, the oldest is forgotten.
pub const MAX_SESSIONS: usize = 10_000;

/// Where the web's sign-ins are counted (`meshlens_web_sessions`, `meshlens_web_logins_total`).
#[derive(Clone)]
pub struct SessionMetrics {
    pub sessions: prometheus::IntGauge,
    /// By result: `success`, `refused`.
    pub logins: prometheus::IntCounterVec,
}

pub struct WebAuthSettings {
    pub tokens: Option<Arc<WebTokens>>,
    /// A reverse proxy's user header (`X-Forwarded-User`), trusted only from `proxy_cidrs`.
    pub proxy_user_header: Option<HeaderName>,
    pub proxy_cidrs: Vec<ipnet::IpNet>,
    /// Users the proxy names who are admins; the others are viewers.
    pub proxy_admin_users: Vec<String>,
    /// The web listener speaks TLS: the cookie is `Secure`.
    pub secure_cookie: bool,
    /// Host names the web answers to (besides IP literals and `localhost`); `*`: any.
    pub allowed_hosts: Vec<String>,
    /// The web listener is bound to a loopback address: with no `allowed_hosts`, only IP
    /// literals and `localhost` are answered (a DNS rebinding page names another host).
    pub loopback_only: bool,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Most sessions kept; past it, the one closest to expiry is forgotten.
    pub max_sessions: usize,
    pub metrics: Option<SessionMetrics>,
}

impl Default for WebAuthSettings {
    fn default() -> Self {
        WebAuthSettings {
            tokens: None,
            proxy_user_header: None,
            proxy_cidrs: Vec::new(),
            proxy_admin_users: Vec::new(),
            secure_cookie: false,
            allowed_hosts: Vec::new(),
            loopback_only: false,
            session_ttl: SESSION_TTL,
            max_sessions: MAX_SESSIONS,
            metrics: None,
        }
    }
}

pub struct WebAuth {
    settings: WebAuthSettings,
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    token: Digest,
    expires: Instant,
}

impl WebAuth {
    pub fn new(settings: WebAuthSettings) -> Arc<Self> {
        Arc::new(WebAuth {
            settings,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// No authentication: everyone is admin.
    pub fn open() -> Arc<Self> {
        Self::new(WebAuthSettings::default())
    }

    pub fn enabled(&self) -> bool {
        self.settings.tokens.is_some() || self.settings.proxy_user_header.is_some()
    }

    pub fn tokens(&self) -> Option<&Arc<WebTokens>> {
        self.settings.tokens.as_ref()
    }

    /// Whether a request naming `host` (`Host`, or HTTP/2's `:authority`) is answered. A page
    /// that rebinds its own DNS name to meshlens' address still sends its own name; IP literals
    /// and `localhost` cannot be rebound.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return true;
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => {
                return v6
                    .split(']')
                    .next()
                    .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
            }
            None => host.rsplit_once(':').map_or(host, |(h, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            }),
        };
        // A fully qualified name may end in a dot.
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || name.to_ascii_lowercase().ends_with(".localhost")
        {
            return true;
        }
        let allowed = &self.settings.allowed_hosts;
        if allowed.is_empty() {
            return !self.settings.loopback_only;
        }
        allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
    }

    /// The caller's role, or `None` if no credential it brings is valid.
    pub fn role(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<Role> {
        if !self.enabled() {
            return Some(Role::Admin);
        }
        if let Some(tokens) = &self.settings.tokens {
            if let Some(token) = bearer(headers) {
                return tokens.check(token).map(|(_, role)| role);
            }
            if let Some(id) = cookie(headers, self.cookie_name()) {
                if let Some(role) = self.session_role(tokens, id) {
                    return Some(role);
                }
            }
        }
        let header = self.settings.proxy_user_header.as_ref()?;
        let user = headers.get(header)?.to_str().ok()?.trim();
        let peer = peer?.ip();
        if user.is_empty() || !self.settings.proxy_cidrs.iter().any(|n| n.contains(&peer)) {
            return None;
        }
        Some(
            if self.settings.proxy_admin_users.iter().any(|a| a == user) {
                Role::Admin
            } else {
                Role::Viewer
            },
        )
    }

    /// A session's role now: its token must still be in the file (removing a token ends its
    /// sessions) and the session not expired.
    fn session_role(&self, tokens: &WebTokens, id: &str) -> Option<Role> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(id)?;
        let role = (session.expires > Instant::now())
            .then(|| tokens.check_digest(&session.token))
            .flatten();
        if role.is_none() {
            sessions.remove(id);
            self.count_sessions(sessions.len());
        }
        role
    }

    fn count_sessions(&self, n: usize) {
        if let Some(m) = &self.settings.metrics {
            m.sessions.set(n as i64);
        }
    }

    fn count_login(&self, result: &str) {
        if let Some(m) = &self.settings.metrics {
            m.logins.with_label_values(&[result]).inc();
        }
    }

    /// Starts a session for `token`; returns its id, or `None` if the token is not valid.
    pub fn login(&self, token: &str) -> Option<String> {
        let Some((digest, _)) = self.settings.tokens.as_ref()?.check(token) else {
            self.count_login("refused");
            return None;
        };
        let id = credentials::random_id();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= self.settings.max_sessions.max(1) {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            } else {
                break;
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                token: digest,
                expires: now + self.settings.session_ttl,
            },
        );
        self.count_sessions(sessions.len());
        self.count_login("success");
        Some(id)
    }

    /// The session cookie's name: `__Host-` prefixed over TLS.
    pub fn cookie_name(&self) -> &'static str {
        if self.settings.secure_cookie {
            SECURE_COOKIE
        } else {
            COOKIE
        }
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, self.cookie_name()) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(id);
            self.count_sessions(sessions.len());
        }
    }

    /// The `Set-Cookie` value for a session (`None`: one that ends it).
    pub fn set_cookie(&self, session: Option<&str>) -> HeaderValue {
        let secure = if self.settings.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        let name = self.cookie_name();
        let value = match session {
            Some(id) => format!(
                "{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                self.settings.session_ttl.as_secs()
            ),
            None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
        };
        HeaderValue::from_str(&value).expect("a session id is hex")
    }
}

/// Whether the request's caller is an admin (the guard put its role in the extensions).
pub fn is_admin(role: Option<axum::Extension<Role>>) -> bool {
    matches!(role, Some(axum::Extension(Role::Admin)))
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Paths anyone may reach: probes, the login page and what it needs to render.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/login" | "/logout" | "/favicon.ico"
    ) || path.starts_with("/static/")
}

/// The middleware in front of every web route: puts the caller's [`Role`] in the request's
/// extensions, or answers 401.
pub async fn guard(State(auth): State<Arc<WebAuth>>, mut req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if !auth.host_allowed(host) {
        let host = host
            .unwrap_or_default()
            .chars()
            .take(100)
            .collect::<String>();
        return (
            StatusCode::FORBIDDEN,
            format!("host {host:?} is not one this meshlens answers to: add it to [auth] allowed_hosts\n"),
        )
            .into_response();
    }
    let path = req.uri().path();
    if is_public(path) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match auth.role(req.headers(), peer) {
        Some(role) => {
            if auth.enabled() {
                let session = bearer(req.headers()).is_none()
                    && cookie(req.headers(), auth.cookie_name()).is_some();
                req.extensions_mut().insert(SignedIn {
                    role: Some(role),
                    session,
                });
            }
            req.extensions_mut().insert(role);
            next.run(req).await
        }
        None => unauthorized(&req),
    }
}

/// 401: JSON for the API, text for `/metrics`, the login page for anything else.
fn unauthorized(req: &Request) -> Response {
    let path = req.uri().path();
    let mut resp = if path.starts_with("/api/") {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({
                "error": "a bearer token or a login is required",
            })),
        )
            .into_response()
    } else if path == "/metrics" {
        (
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (authorization: Bearer TOKEN)\n",
        )
            .into_response()
    } else {
        let next = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut r = crate::ui::login_page(&next, "");
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"meshlens\""),
    );
    resp
}

/// Where a login may send the browser next: a path on this site, nothing else.
pub fn safe_next(next: &str) -> &str {
    // Browsers drop tabs and newlines from URLs: "/\t/evil" would become "//evil".
    if next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        next
    } else {
        "/"
    }
}

/// Whether a browser's write comes from this site: an `Origin` (sent with every cross-site POST)
/// whose host is not the host asked for (`Host`, or HTTP/2's `:authority` in the URI) is refused.
pub fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &std::path::Path, text: &str) -> Arc<WebTokens> {
        let path = dir.join("web-tokens");
        std::fs::write(&path, text).unwrap();
        TokenFile::load(&path, Role::parse).unwrap()
    }

    fn with(k: HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(k, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn roles_come_from_tokens_sessions_and_trusted_proxies() {
        let dir = tempfile::tempdir().unwrap();
        let auth = WebAuth::new(WebAuthSettings {
            tokens: Some(tokens(
                dir.path(),
                "viewer-token-000000000 viewer\nadmin-token-0000000000 admin\n",
            )),
            proxy_user_header: Some(HeaderName::from_static("x-forwarded-user")),
            proxy_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            proxy_admin_users: vec!["alice".into()],
            secure_cookie: true,
            ..Default::default()
        });
        let bearer = |t: &str| with(header::AUTHORIZATION, &format!("Bearer {t}"));
        assert_eq!(
            auth.role(&bearer("viewer-token-000000000"), None),
            Some(Role::Viewer)
        );
        assert_eq!(
            auth.role(&bearer("admin-token-0000000000"), None),
            Some(Role::Admin)
        );
        assert_eq!(auth.role(&bearer("nope-nope-nope-nope"), None), None);
        assert_eq!(auth.role(&HeaderMap::new(), None), None);

        let id = auth.login("admin-token-0000000000").unwrap();
        assert!(auth.login("wrong").is_none());
        assert_eq!(auth.cookie_name(), "__Host-meshlens_session");
        let cookies = with(
            header::COOKIE,
            &format!("a=b; __Host-meshlens_session={id}"),
        );
        let plain_name = with(header::COOKIE, &format!("{COOKIE}={id}"));
        assert_eq!(
            auth.role(&plain_name, None),
            None,
            "over TLS only the __Host- cookie"
        );
        assert_eq!(auth.role(&cookies, None), Some(Role::Admin));
        let set = auth.set_cookie(Some(&id));
        let set = set.to_str().unwrap();
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(flag), "{set}");
        }
        auth.logout(&cookies);
        assert_eq!(auth.role(&cookies, None), None, "logged out");

        let user = |u: &str| with(HeaderName::from_static("x-forwarded-user"), u);
        let proxy = Some("10.1.2.3:5000".parse().unwrap());
        let stranger = Some("192.168.1.1:5000".parse().unwrap());
        assert_eq!(auth.role(&user("alice"), proxy), Some(Role::Admin));
        assert_eq!(auth.role(&user("bob"), proxy), Some(Role::Viewer));
        assert_eq!(auth.role(&user("alice"), stranger), None, "untrusted peer");
        assert_eq!(auth.role(&user("alice"), None), None);
    }

    #[test]
    fn only_named_hosts_are_answered_when_it_matters() {
        let loopback = WebAuth::new(WebAuthSettings {
            loopback_only: true,
            ..Default::default()
        });
        for ok in [
            None,
            Some("127.0.0.1:20001"),
            Some("localhost:20001"),
            Some("[::1]:20001"),
            Some("10.1.2.3"),
            Some("app.localhost"),
        ] {
            assert!(loopback.host_allowed(ok), "{ok:?}");
        }
        // A rebinding page sends its own name.
        assert!(!loopback.host_allowed(Some("evil.example:20001")));
        assert!(!loopback.host_allowed(Some("[evil]:20001")));
        let exposed = WebAuth::new(WebAuthSettings::default());
        assert!(exposed.host_allowed(Some("meshlens.observability.svc:20001")));
        let named = WebAuth::new(WebAuthSettings {
            allowed_hosts: vec!["meshlens.example.com".into()],
            ..Default::default()
        });
        assert!(named.host_allowed(Some("MESHLENS.example.com:443")));
        assert!(named.host_allowed(Some("meshlens.example.com.:443")));
        assert!(loopback.host_allowed(Some("localhost.:20001")));
        assert!(!named.host_allowed(Some("meshlens.example.com.evil.example")));
        assert!(named.host_allowed(Some("192.168.0.7:20001")));
    }

    #[test]
    fn a_removed_token_ends_its_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let file = tokens(dir.path(), "viewer-token-000000000 viewer\n");
        let auth = WebAuth::new(WebAuthSettings {
            tokens: Some(file.clone()),
            ..Default::default()
        });
        let id = auth.login("viewer-token-000000000").unwrap();
        let cookies = with(header::COOKIE, &format!("{COOKIE}={id}"));
        assert_eq!(auth.role(&cookies, None), Some(Role::Viewer));
        std::fs::write(file.path(), "other-token-0000000000 admin\n").unwrap();
        file.reload_if_changed().unwrap();
        assert_eq!(auth.role(&cookies, None), None);
    }

    #[test]
    fn sessions_are_capped_expire_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let file = tokens(dir.path(), "viewer-token-000000000 viewer\n");
        let metrics = SessionMetrics {
            sessions: prometheus::IntGauge::new("s", "s").unwrap(),
            logins: prometheus::IntCounterVec::new(prometheus::Opts::new("l", "l"), &["result"])
                .unwrap(),
        };
        let auth = WebAuth::new(WebAuthSettings {
            tokens: Some(file),
            max_sessions: 2,
            session_ttl: Duration::from_millis(300),
            metrics: Some(metrics.clone()),
            ..Default::default()
        });
        let cookie = |id: &str| with(header::COOKIE, &format!("{COOKIE}={id}"));
        let first = auth.login("viewer-token-000000000").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let second = auth.login("viewer-token-000000000").unwrap();
        let third = auth.login("viewer-token-000000000").unwrap();
        assert!(auth.login("viewer-token-00000000X").is_none());
        assert_eq!(metrics.sessions.get(), 2, "the cap holds");
        assert_eq!(auth.role(&cookie(&first), None), None, "the oldest went");
        assert_eq!(auth.role(&cookie(&second), None), Some(Role::Viewer));
        assert_eq!(metrics.logins.with_label_values(&["success"]).get(), 3);
        assert_eq!(metrics.logins.with_label_values(&["refused"]).get(), 1);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(auth.role(&cookie(&third), None), None, "expired");
        assert_eq!(metrics.sessions.get(), 1);
    }

    #[test]
    fn without_settings_everyone_is_admin_and_redirects_stay_here() {
        assert_eq!(
            WebAuth::open().role(&HeaderMap::new(), None),
            Some(Role::Admin)
        );
        assert_eq!(safe_next("/traces?service=a"), "/traces?service=a");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
        let mut h = with(header::ORIGIN, "https://evil.example");
        h.insert(header::HOST, HeaderValue::from_static("meshlens:20001"));
        let uri = axum::http::Uri::from_static("/login");
        assert!(!same_origin(&h, &uri));
        let mut h = with(header::ORIGIN, "https://meshlens:20001");
        h.insert(header::HOST, HeaderValue::from_static("meshlens:20001"));
        assert!(same_origin(&h, &uri));
        assert!(
            same_origin(&HeaderMap::new(), &uri),
            "no Origin: not a browser's cross-site write"
        );
        // HTTP/2 names the host in the URI, not in a header.
        let h2 = with(header::ORIGIN, "https://127.0.0.1:20001");
        let uri = axum::http::Uri::from_static("https://127.0.0.1:20001/login");
        assert!(same_origin(&h2, &uri));
    }
}
