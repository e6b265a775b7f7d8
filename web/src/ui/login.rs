//! The token login for people without a reverse proxy in front: a form, a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS), and a logout.

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::{nav, render, Nav};
use crate::auth::{safe_next, same_origin};
use crate::WebState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Nav,
    next: String,
    message: String,
}

pub(crate) fn login_page(next: &str, message: &str) -> Response {
    let mut r = render(&LoginPage {
        nav: nav("", crate::auth::SignedIn::default()),
        next: safe_next(next).to_string(),
        message: message.to_string(),
    });
    r.headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    r
}

#[derive(Deserialize, Default)]
pub(crate) struct NextQuery {
    #[serde(default)]
    next: String,
}

pub(crate) async fn form(axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Response {
    login_page(&q.next, "")
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn login(
    State(st): State<WebState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers, &uri) {
        return (StatusCode::FORBIDDEN, "cross-site login refused\n").into_response();
    }
    if st.auth.tokens().is_none() {
        return (
            StatusCode::NOT_FOUND,
            "no web tokens file is configured: there is nothing to log in with\n",
        )
            .into_response();
    }
    match st.auth.login(f.token.trim()) {
        Some(session) => {
            let mut r = Redirect::to(safe_next(&f.next)).into_response();
            *r.status_mut() = StatusCode::SEE_OTHER;
            r.headers_mut()
                .insert(header::SET_COOKIE, st.auth.set_cookie(Some(&session)));
            r
        }
        None => {
            tracing::info!("web login refused: the token is not valid");
            let mut r = login_page(&f.next, "That token is not accepted.");
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    }
}

pub(crate) async fn logout(
    State(st): State<WebState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers, &uri) {
        return (StatusCode::FORBIDDEN, "cross-site logout refused\n").into_response();
    }
    st.auth.logout(&headers);
    let mut r = Redirect::to("/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::SET_COOKIE, st.auth.set_cookie(None));
    r
}
