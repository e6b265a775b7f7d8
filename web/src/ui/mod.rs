//! The web UI: HTML pages rendered with askama from the same snapshots and state the JSON API
//! serves, a stylesheet embedded in the binary (nothing is fetched from elsewhere), and strict
//! security headers. Everything shown comes from the data plane and is untrusted: askama
//! escapes every value, and the Content-Security-Policy allows no inline script or style.

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use meshlens_topology::graph::{NodeKind, Window};

use crate::api::graph::{node, StatsDto};
use crate::api::policy::policy_dto;
use crate::auth::{Role, SignedIn};
use crate::{WebError, WebState};

/// The policy every response carries: only this origin's scripts, styles and connections; no
/// framing, no plugins, no base or form targets elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/topology") }))
        .route("/topology", get(topology))
        .route("/services", get(services))
        .route("/traces", get(traces::search))
        .route("/service/{name}", get(service::page))
        .route("/service", get(service::page_by_query))
        .route("/trace/{trace_id}", get(trace))
        .route("/policy", get(policy))
        .route("/login", get(login::form).post(login::login))
        .route("/logout", axum::routing::post(login::logout))
        .route("/static/{file}", get(asset))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/static/favicon.svg") }),
        )
}

/// Adds the security headers to every response of the web listener.
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Files embedded in the binary, by name.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    ),
    (
        "topology.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/topology.js"),
    ),
    (
        "trace.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/trace.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../static/favicon.svg"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "public, max-age=300"),
            ],
            *body,
        )
            .into_response(),
        None => page_error(StatusCode::NOT_FOUND, format!("no such file: {file}")),
    }
}

mod login;
mod service;
mod traces;

pub(crate) use login::login_page;

pub(crate) struct NavItem {
    href: &'static str,
    label: &'static str,
    current: bool,
}

/// The header of every page: the links, and who is signed in (with a "Sign out" button for a
/// login session).
pub(crate) struct Nav {
    items: Vec<NavItem>,
    /// `viewer` or `admin`; empty when the web needs no credentials.
    role: &'static str,
    session: bool,
}

pub(crate) fn nav(current: &str, who: SignedIn) -> Nav {
    let items = [
        ("/topology", "Topology"),
        ("/traces", "Traces"),
        ("/services", "Services"),
        ("/policy", "Policy"),
    ]
    .into_iter()
    .map(|(href, label)| NavItem {
        href,
        label,
        current: href == current,
    })
    .collect();
    Nav {
        items,
        role: who.role.map_or("", Role::as_str),
        session: who.session,
    }
}

pub(crate) fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed\n").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    status: String,
    message: String,
}

fn page_error(status: StatusCode, message: String) -> Response {
    let mut r = render(&ErrorPage {
        nav: nav("", SignedIn::default()),
        status: status.to_string(),
        message,
    });
    *r.status_mut() = status;
    r
}

impl WebError {
    /// This error as an HTML page (the JSON API answers the JSON envelope instead).
    pub(crate) fn page(self) -> Response {
        let (status, message) = self.status_and_message();
        page_error(status, message)
    }
}

// ---------------------------------------------------------------------------------------------
// Topology: a shell; static/topology.js draws the graph from /api/graph.

#[derive(Template)]
#[template(path = "topology.html")]
struct TopologyPage {
    nav: Nav,
    windows: Vec<WindowLink>,
}

async fn topology(who: SignedIn) -> Response {
    render(&TopologyPage {
        nav: nav("/topology", who),
        windows: window_links(Window::M5),
    })
}

pub(crate) fn window_links(current: Window) -> Vec<WindowLink> {
    Window::ALL
        .iter()
        .map(|w| WindowLink {
            name: w.as_str(),
            current: *w == current,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// One trace: a shell; static/trace.js draws the timeline from /api/traces/{id}.

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage {
    nav: Nav,
    trace_id: String,
    short_id: String,
}

async fn trace(who: SignedIn, Path(trace_id): Path<String>) -> Response {
    let Some(id) = crate::api::parse_trace_id(&trace_id) else {
        return WebError::BadRequest(format!("malformed trace id {trace_id:?}")).page();
    };
    let trace_id = id.to_hex();
    render(&TracePage {
        nav: nav("/traces", who),
        short_id: trace_id.chars().take(7).collect(),
        trace_id,
    })
}

// ---------------------------------------------------------------------------------------------
// Services

pub(crate) struct WindowLink {
    name: &'static str,
    current: bool,
}

/// One row of the RED table, formatted for people.
struct RedRow {
    name: String,
    /// The service's page, this window.
    href: String,
    namespace: String,
    health: &'static str,
    red: Red,
    outbound: u64,
    versions: Vec<VersionRow>,
}

/// One version of a service: its share of the service's calls, health and RED.
pub(crate) struct VersionRow {
    version: String,
    share: String,
    health: &'static str,
    red: Red,
}

/// A node's versions as rows.
pub(crate) fn version_rows(
    n: &meshlens_topology::graph::NodeSnapshot,
    window: Window,
) -> Vec<VersionRow> {
    n.versions
        .iter()
        .map(|v| VersionRow {
            version: v.version.to_string(),
            share: format!("{:.0}%", v.share * 100.0),
            health: v.health.as_str(),
            red: red_of(&v.inbound, window),
        })
        .collect()
}

/// The URL of `name`'s service page with `query` (`k=v&…`, encoded). Its name is a path
/// segment, every byte but the unreserved ones percent-encoded (`../api/policy` stays a name),
/// except `.` and `..`, which browsers resolve as a segment however encoded: those go in the
/// query (`/service?name=..`).
pub(crate) fn service_href(name: &str, query: &str) -> String {
    let sep = if query.is_empty() { "" } else { "&" };
    if name == "." || name == ".." {
        return format!("/service?name={}{sep}{query}", name);
    }
    let mut out = String::from("/service/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[derive(Template)]
#[template(path = "services.html")]
struct ServicesPage {
    nav: Nav,
    windows: Vec<WindowLink>,
    window: &'static str,
    generated_at: String,
    rows: Vec<RedRow>,
}

pub(crate) struct Red {
    rps: String,
    errors: String,
    p50: String,
    p95: String,
    p99: String,
}

/// RED of a graph summary over `window`, formatted.
pub(crate) fn red_of(s: &meshlens_topology::graph::Summary, window: Window) -> Red {
    red(&crate::api::graph::stats_dto(s, window))
}

fn red(s: &StatsDto) -> Red {
    let ms = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
    let l = s.latency_ms.as_ref();
    Red {
        rps: format!("{:.2}", s.rps),
        errors: percent(s.error_ratio),
        p50: ms(l.map(|l| l.p50)),
        p95: ms(l.map(|l| l.p95)),
        p99: ms(l.map(|l| l.p99)),
    }
}

fn percent(ratio: f64) -> String {
    if ratio == 0.0 {
        "0%".into()
    } else if ratio < 0.001 {
        "<0.1%".into()
    } else {
        format!("{:.1}%", ratio * 100.0)
    }
}

pub(crate) fn window_param(raw: Option<&str>) -> Result<Window, WebError> {
    let raw = raw.unwrap_or("");
    let value = form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "window")
        .map(|(_, v)| v.into_owned());
    match value.as_deref() {
        None | Some("") => Ok(Window::M5),
        Some(w) => Window::parse(w).ok_or_else(|| {
            WebError::BadRequest(format!("window: expected 1m, 5m, 15m or 1h, got {w:?}"))
        }),
    }
}

async fn services(State(st): State<WebState>, who: SignedIn, RawQuery(q): RawQuery) -> Response {
    let window = match window_param(q.as_deref()) {
        Ok(w) => w,
        Err(e) => return e.page(),
    };
    let graph = match st.graph.get(window).await {
        Ok(g) => g,
        Err(e) => return e.page(),
    };
    let mut rows: Vec<RedRow> = graph
        .snapshot
        .nodes
        .iter()
        .filter(|n| n.key.kind == NodeKind::Service)
        .map(|snap| {
            let n = node(snap, window);
            let mut query = format!("window={}", window.as_str());
            if let Some(ns) = n.namespace.as_deref().filter(|ns| !ns.is_empty()) {
                query.push_str("&namespace=");
                query.extend(form_urlencoded::byte_serialize(ns.as_bytes()));
            }
            RedRow {
                href: service_href(&n.name, &query),
                name: n.name,
                namespace: n.namespace.unwrap_or_default(),
                health: n.health,
                red: red(&n.stats),
                outbound: n.outbound_requests,
                versions: version_rows(snap, window),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    render(&ServicesPage {
        nav: nav("/services", who),
        windows: window_links(window),
        window: window.as_str(),
        generated_at: humantime::format_rfc3339_seconds(graph.built_at).to_string(),
        rows,
    })
}

// ---------------------------------------------------------------------------------------------
// Policy

struct DenialRow {
    at: String,
    api: &'static str,
    source: String,
    destination: String,
    path: String,
    status: u16,
    by: String,
}

struct QuotaRow {
    name: String,
    requests_per_unit: u32,
    unit: &'static str,
    algorithm: &'static str,
    applies_to: String,
    key: String,
    within: u64,
    near: u64,
    over: u64,
}

struct RuleRow {
    name: String,
    action: &'static str,
    matches: String,
}

struct LimitRow {
    domain: String,
    key: String,
    name: Option<String>,
    requests_per_unit: u32,
    unit: &'static str,
    algorithm: &'static str,
    unlimited: bool,
    shadow_mode: bool,
    within: u64,
    near: u64,
    over: u64,
}

struct ConfigError {
    file: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    nav: Nav,
    loaded_at: String,
    last_error: Option<ConfigError>,
    backend: &'static str,
    failure_mode: &'static str,
    shadow_mode: bool,
    rule_list: Vec<RuleRow>,
    limits: Vec<LimitRow>,
    policy_files: Vec<String>,
    ratelimit_files: Vec<String>,
    domains: Vec<String>,
    quotas: Vec<QuotaRow>,
    denials: Vec<DenialRow>,
}

async fn policy(
    State(st): State<WebState>,
    role: Option<axum::Extension<crate::auth::Role>>,
    who: SignedIn,
) -> Response {
    let p = policy_dto(&st, 100, crate::auth::is_admin(role));
    let time = |unix_ms: u64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    render(&PolicyPage {
        nav: nav("/policy", who),
        loaded_at: time(p.loaded_at * 1000),
        last_error: p.last_error.map(|e| ConfigError {
            file: e.file,
            reason: e.reason,
        }),
        backend: p.backend,
        failure_mode: p.failure_mode,
        shadow_mode: p.shadow_mode,
        rule_list: p
            .rule_list
            .into_iter()
            .map(|r| RuleRow {
                name: r.name,
                action: r.action,
                matches: r.matches,
            })
            .collect(),
        limits: p
            .limits
            .into_iter()
            .map(|l| LimitRow {
                domain: l.domain,
                key: l.key,
                name: l.name,
                requests_per_unit: l.requests_per_unit,
                unit: l.unit,
                algorithm: l.algorithm,
                unlimited: l.unlimited,
                shadow_mode: l.shadow_mode,
                within: l.usage.within,
                near: l.usage.near,
                over: l.usage.over,
            })
            .collect(),
        policy_files: p.policy_files,
        ratelimit_files: p.ratelimit_files,
        domains: p.domains,
        quotas: p
            .quotas
            .into_iter()
            .map(|q| QuotaRow {
                name: q.name,
                requests_per_unit: q.requests_per_unit,
                unit: q.unit,
                algorithm: q.algorithm,
                applies_to: q.applies_to,
                key: q.key,
                within: q.usage.within,
                near: q.usage.near,
                over: q.usage.over,
            })
            .collect(),
        denials: p
            .denials
            .into_iter()
            .map(|d| DenialRow {
                at: time(d.at),
                api: d.api,
                source: d.source.unwrap_or_default(),
                destination: d.destination.unwrap_or_default(),
                path: d.path,
                status: d.status,
                by: d.by,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests;
