//! Entry points for the fuzz targets (`fuzz/`): the web API's query strings, parsed as the
//! handlers parse them. Not an API: nothing else calls these.

/// One query string, given to every parser of one.
pub fn query_parsers(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let _ = crate::api::traces::parse_search(&raw, 1_800_000_000_000_000);
    let _ = crate::api::graph::parse_query(&raw);
    let _ = crate::api::graph::parse_end(&raw);
    let _ = crate::api::dependencies::parse_params(&raw, 1_800_000_000_000);
    let _ = crate::api::traces::parse_go_duration(&raw);
}
