//! meshlens' own connections over TLS: the store to a PostgreSQL of the test's own with
//! `ssl = on` and client certificates required, refused without TLS, without the CA or
//! without a client certificate.

use std::path::Path;

use meshlens_tests::certs::Ca;
use meshlens_tests::servers::OwnPostgres;
use meshlens_tests::{test_config, trace_hex, trace_request, TestEnv};

fn url(port: u16, dir: &Path, params: &str) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    format!(
        "postgres://postgres@localhost:{port}/postgres?{}",
        params
            .replace("{ca}", &p("ca.crt"))
            .replace("{cert}", &p("client.crt"))
            .replace("{key}", &p("client.key"))
    )
}

#[tokio::test]
async fn the_store_speaks_tls_to_postgresql_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meshlens test CA");
    ca.write(dir.path(), "ca");
    ca.client("spiffe://cluster.local/ns/observability/sa/meshlens")
        .write(dir.path(), "client");
    let pg = OwnPostgres::start(&ca, &ca.server(1), true);
    let full = "sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}";

    let env =
        TestEnv::start_with(|c| c.storage.database_url = url(pg.port, dir.path(), full)).await;
    env.grpc()
        .await
        .export(trace_request("over-tls", 1, 3))
        .await
        .expect("an export committed over TLS");
    let (status, body) = env.get_json(&format!("/api/traces/{}", trace_hex(1))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), 3);
    // The server says every connection of the store is TLS.
    let ours = sqlx::PgPool::connect(&url(pg.port, dir.path(), full))
        .await
        .unwrap();
    let (others, all_tls): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE datname = 'postgres' AND backend_type = 'client backend' \
         AND pid <> pg_backend_pid()",
    )
    .fetch_one(&ours)
    .await
    .unwrap();
    assert!(others >= 1, "the store's connections");
    assert_eq!(all_tls, Some(true));
    ours.close().await;
    env.stop().await;

    // Refused: no TLS (the server rejects it), a CA that is not the server's, no client
    // certificate.
    for (params, why) in [
        ("sslmode=disable", "no TLS"),
        (
            "sslmode=verify-full",
            "the system's CAs do not know the server",
        ),
        (
            "sslmode=verify-full&sslrootcert={ca}",
            "no client certificate",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let mut c = test_config(d.path());
        c.storage.database_url = url(pg.port, dir.path(), params);
        let started = meshlens::start(&c).await;
        assert!(started.is_err(), "{why}: started anyway");
        let e = started.err().unwrap().to_string();
        assert!(!e.contains("BEGIN PRIVATE KEY"), "{e}");
    }
}
