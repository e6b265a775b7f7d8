//! Secrets out of text that is printed: a password in a database or Redis URL.

/// The URL with its password (user info and a `password=` query parameter) replaced by `****`;
/// text that is not a URL is not shown at all, since it may be a keyword string with one in it.
pub fn url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_string();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    // The user info ends at the last '@' before the query: a password may hold '/' or '@'.
    let mut out = format!("{scheme}://");
    match before_query.rfind('@') {
        Some(at) => {
            let user_info = &before_query[..at];
            match user_info.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:****")),
                None => out.push_str(user_info),
            }
            out.push_str(&before_query[at..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::url_password;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://meshlens:s3cret@db:5432/meshlens?sslmode=require",
                "postgres://meshlens:****@db:5432/meshlens?sslmode=require",
            ),
            ("postgres://u:p/ss@db/x", "postgres://u:****@db/x"),
            ("postgres://u:p@ss@db/x", "postgres://u:****@db/x"),
            (
                "postgres://u@db/x?password=secret&sslmode=verify-full",
                "postgres://u@db/x?password=****&sslmode=verify-full",
            ),
            (
                "postgres://meshlens@db/meshlens",
                "postgres://meshlens@db/meshlens",
            ),
            ("sqlite://data/x.db", "sqlite://data/x.db"),
            ("rediss://:pw@redis:6380/0", "rediss://:****@redis:6380/0"),
            ("host=db password=x", "(not a URL)"),
        ] {
            assert_eq!(url_password(url), shown, "{url}");
        }
    }
}
