use std::path::PathBuf;

use super::*;
use crate::limit::Algorithm;
use crate::quota::MemoryStore;

fn limits(yaml: &[&str]) -> RateLimits {
    let files = yaml
        .iter()
        .enumerate()
        .map(|(i, y)| {
            let file = DomainFile::parse(y).unwrap_or_else(|e| panic!("{e}"));
            (PathBuf::from(format!("{i}.yaml")), file)
        })
        .collect();
    RateLimits::compile(files).unwrap()
}

fn desc(entries: &[(&str, &str)]) -> RequestDescriptor {
    RequestDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn parse_err(yaml: &str) -> String {
    DomainFile::parse(yaml).expect_err("refused")
}

#[test]
fn config_errors_name_the_problem_and_its_line() {
    let e = parse_err("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n");
    assert!(e.contains("invalid rate limit unit 'fortnight'"), "{e}");
    assert!(e.contains("line"), "{e}");
    let e = parse_err("domain: d\ndescriptors:\n  - key: a\n    colour: red\n");
    assert_eq!(
        e,
        "descriptors[0].colour: config error, unknown key 'colour' at line 4 column 13"
    );
    let e = parse_err(
        "domain: d\ndescriptors:\n  - key: x\n  - key: a\n    value: b\n  - key: a\n    value: b\n",
    );
    assert_eq!(
        e,
        "descriptors[2]: duplicate descriptor composite key 'd.a_b' at line 6 column 5"
    );
    let e = parse_err(
        "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: ''\n        value: v\n",
    );
    assert_eq!(
        e,
        "descriptors[0].descriptors[0]: descriptor has empty key at line 5 column 9"
    );
    let e = parse_err("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unlimited: true\n      unit: second\n");
    assert!(
        e.contains("should not specify rate limit unit when unlimited"),
        "{e}"
    );
    assert_eq!(
        parse_err("descriptors: []\ndomain: ''\n"),
        "domain: config file cannot have empty domain at line 2 column 9"
    );
    let dup = RateLimits::compile(vec![
        (
            PathBuf::from("a.yaml"),
            DomainFile::parse("domain: x\n").unwrap(),
        ),
        (
            PathBuf::from("b.yaml"),
            DomainFile::parse("domain: x\n").unwrap(),
        ),
    ])
    .unwrap_err();
    assert_eq!(
        dup.to_string(),
        "b.yaml: duplicate domain 'x' in config file"
    );
}

/// Upstream checks every key of a file against one set, whatever its level, and its YAML
/// decoder ignores a known key out of its place; meshlens accepts and refuses the same files.
#[test]
fn keys_are_checked_as_upstream_checks_them() {
    let ok = DomainFile::parse(
        "domain: d\ndescriptors:\n  - key: a\n    name: ignored\n    domain: ignored\n    rate_limit:\n      unit: second\n      requests_per_unit: 5\n      shadow_mode: true\n      detailed_metric: true\n      replaces: [{name: b, unit: x}]\n    value: 123\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let d = &ok.descriptors.0[0];
    assert!(
        !d.shadow_mode,
        "shadow_mode inside rate_limit has no effect"
    );
    assert_eq!(
        d.value.as_deref(),
        Some("123"),
        "a number is read as its text"
    );
    assert_eq!(d.rate_limit.as_ref().unwrap().replaces, ["b"]);
    // An unknown key is refused wherever it is, even under a key that is out of place.
    let e = parse_err("domain: d\nrate_limit:\n  colour: red\n");
    assert!(e.contains("unknown key 'colour'"), "{e}");
    let e = parse_err("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, burst: 3}\n");
    assert!(
        e.contains("unknown key 'burst'") && e.contains("line 4"),
        "{e}"
    );
    let e = parse_err("domain: d\nreplaces: [x]\n");
    assert_eq!(
        e,
        "replaces[0]: config error, yaml file contains list of type other than map at line 2 column 12"
    );
    // Upstream's leaf types are strings, integers, booleans and null: a float is refused.
    let e = parse_err("domain: d\ndescriptors:\n  - key: a\n    value: 1.5\n");
    assert!(
        e.starts_with("descriptors[0].value: error checking config")
            && e.ends_with("line 4 column 12"),
        "{e}"
    );
    let e = parse_err("domain: d\n7: x\n");
    assert!(e.contains("key is not of type string: 7"), "{e}");
    // Merge keys are applied, as upstream's YAML decoder applies them; what they bring in is
    // checked like the rest.
    let merged = DomainFile::parse(
        "domain: m\ndescriptors:\n  - key: a\n    rate_limit: &base {unit: minute, requests_per_unit: 5}\n  - key: b\n    rate_limit:\n      <<: *base\n      requests_per_unit: 7\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let b = merged.descriptors.0[1].rate_limit.as_ref().unwrap();
    assert_eq!((b.requests_per_unit, b.unit), (7, Some(Unit::Minute)));
    let e = parse_err(
        "domain: m\ndescriptors:\n  - key: a\n    rate_limit: &base {unit: minute, burst: 5}\n  - key: b\n    rate_limit: {<<: *base}\n",
    );
    assert!(e.contains("unknown key 'burst'"), "{e}");
    let e = parse_err("domain: m\nx: &d {key: a}\ndescriptors:\n  - <<: *d\n  - <<: *d\n");
    assert!(e.contains("unknown key 'x'"), "{e}");
    // A nested duplicate is named by its whole path, as upstream names it.
    let e = parse_err(
        "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n      - key: b\n",
    );
    assert!(
        e.contains("duplicate descriptor composite key 'd.a.b'"),
        "{e}"
    );
}

#[tokio::test]
async fn replaced_limits_are_not_charged_and_shadow_limits_allow() {
    let rl = limits(&[r#"
domain: d
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 1, name: small}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 100, replaces: [{name: small}]}
  - key: s
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: u
    rate_limit: {unlimited: true, name: free}
  - key: v
    rate_limit: {unit: minute, requests_per_unit: 5, replaces: [{name: free}]}
"#]);
    let store = QuotaBackend::Memory(MemoryStore::new(100));
    let req = RateLimitRequest {
        domain: "d".into(),
        descriptors: vec![
            desc(&[("a", "1")]),
            desc(&[("b", "1")]),
            desc(&[("s", "1")]),
        ],
        hits_addend: 1,
    };
    for _ in 0..3 {
        let d = rl.decide(&req, &store).await.unwrap();
        assert!(!d.over_limit);
        assert!(d.statuses[0].limit.is_none(), "replaced");
    }
    let d = rl.decide(&req, &store).await.unwrap();
    assert!(d.statuses[2].shadow_over_limit && !d.statuses[2].over_limit);
    assert_eq!(d.statuses[1].remaining, 96);
    // An unlimited limit that another replaces still answers unlimited, as upstream does.
    let req = RateLimitRequest {
        domain: "d".into(),
        descriptors: vec![desc(&[("u", "1")]), desc(&[("v", "1")])],
        hits_addend: 1,
    };
    let d = rl.decide(&req, &store).await.unwrap();
    assert_eq!(d.statuses[0].remaining, u32::MAX);
    assert!(d.statuses[0].limit.as_ref().is_some_and(|l| l.unlimited));
    assert_eq!(d.statuses[1].remaining, 4);
}

/// envoyproxy/ratelimit's README example 3: a default per address, and one address blocked.
const EXAMPLE_3: &str = r#"
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
"#;

/// Example 5: unlimited beside a limit.
const EXAMPLE_5: &str = r#"
domain: internal
descriptors:
  - key: ldap
    rate_limit: {unlimited: true}
  - key: azure
    rate_limit: {unit: minute, requests_per_unit: 100}
"#;

/// A domain, a descriptor's entries, and the limit it gets.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<String>);

/// What a descriptor gets: `None` (no limit), `Some("unlimited")` or `Some("N/unit")`.
fn found(rl: &RateLimits, domain: &str, entries: &[(&str, &str)]) -> Option<String> {
    rl.find(domain, &desc(entries)).map(|l| {
        if l.unlimited {
            "unlimited".to_string()
        } else {
            format!("{}/{}", l.rate.requests_per_unit, l.rate.unit)
        }
    })
}

/// envoyproxy/ratelimit's README examples 1 to 9 and its basic config test, each request with
/// the limit its documentation says it gets.
#[test]
fn the_documented_examples_get_the_documented_limits() {
    let rl = limits(&[
        r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit: {unit: second, requests_per_unit: 500}
  - key: database
    value: default
    rate_limit: {unit: second, requests_per_unit: 500}
"#,
        r#"
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
"#,
        EXAMPLE_3,
        r#"
domain: example4a
descriptors:
  - key: key
    value: value
    rate_limit: {requests_per_unit: 300, unit: second}
"#,
        r#"
domain: example4b
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit: {requests_per_unit: 300, unit: second}
"#,
        EXAMPLE_5,
        r#"
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit: {requests_per_unit: 10, unit: second}
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit: {requests_per_unit: 20, unit: second}
"#,
        r#"
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: key1
    value: value1
    rate_limit: {unit: minute, requests_per_unit: 20}
"#,
        r#"
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit: {unit: minute, requests_per_unit: 20}
"#,
        r#"
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
      - key: subkey1
        value: subvalue1
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: key2
    value: value2
    rate_limit: {unit: minute, requests_per_unit: 30}
  - key: key2
    value: value3
  - key: key3
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: key4
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: key5
    value: value5
    rate_limit: {unit: day, requests_per_unit: 15}
    descriptors:
      - key: subkey5
        value: subvalue5
        rate_limit: {unit: day, requests_per_unit: 25}
  - key: key6
    rate_limit: {unlimited: true}
"#,
        r#"
domain: wildcard
descriptors:
  - key: wild
    value: foo*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: noWild
    value: foo
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: midWild
    value: bar*b
    rate_limit: {unit: minute, requests_per_unit: 20}
"#,
        // How upstream's GetLimit reads wildcards: the first final key ending in `*`, in config
        // order, that prefixes the request's `key_value`, before the key alone; at each level.
        r#"
domain: order
descriptors:
  - key: k
    value: "ab*"
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    value: "a*"
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: k
    value: "*"
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: k
    rate_limit: {unit: second, requests_per_unit: 4}
  - key: j
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: j
    value: "x*"
    descriptors:
      - key: m
        value: "n*"
        rate_limit: {unit: second, requests_per_unit: 6}
  - key: "tenant*"
    rate_limit: {unit: second, requests_per_unit: 7}
  - key: p
    value: "q_*"
    rate_limit: {unit: second, requests_per_unit: 8}
"#,
    ]);
    let s = |x: &str| Some(x.to_string());
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("mongo_cps", &[("database", "users")], s("500/second")),
        ("mongo_cps", &[("database", "default")], s("500/second")),
        ("mongo_cps", &[("database", "other")], None),
        ("mongo_cps", &[("database", "users"), ("x", "y")], None),
        ("messaging", &[("message_type", "marketing"), ("to_number", "2061111111")], s("5/day")),
        ("messaging", &[("to_number", "2061111111")], s("100/day")),
        ("messaging", &[("message_type", "marketing")], None),
        ("messaging", &[("message_type", "transactional"), ("to_number", "2061111111")], None),
        ("edge_proxy_per_ip", &[("remote_address", "50.0.0.1")], s("10/second")),
        ("edge_proxy_per_ip", &[("remote_address", "50.0.0.5")], s("0/second")),
        ("example4a", &[("key", "value"), ("subkey", "subvalue")], None),
        ("example4a", &[("key", "value")], s("300/second")),
        ("example4b", &[("key", "value"), ("subkey", "subvalue")], s("300/second")),
        ("example4b", &[("key", "value")], None),
        ("internal", &[("ldap", "anything")], s("unlimited")),
        ("internal", &[("azure", "anything")], s("100/minute")),
        ("internal", &[("other", "x")], None),
        ("example6", &[("service", "auth-service"), ("user", "user-a")], s("10/second")),
        ("example6", &[("service", "auth-service"), ("user", "user-b")], s("20/second")),
        ("example6", &[("service", "any"), ("user", "user-c")], None),
        ("example8", &[("key1", "unspecified_value")], s("10/minute")),
        ("example8", &[("key1", "value1")], s("20/minute")),
        ("example9", &[("key1", "value1")], s("20/minute")),
        ("example9", &[("key1", "value")], s("20/minute")),
        ("example9", &[("key1", "other")], None),
        ("test-domain", &[("key1", "something")], None),
        ("test-domain", &[("key1", "value1")], None),
        ("test-domain", &[("key1", "value1"), ("subkey1", "something")], s("5/second")),
        ("test-domain", &[("key1", "value1"), ("subkey1", "subvalue1")], s("10/second")),
        ("test-domain", &[("key2", "something")], s("20/minute")),
        ("test-domain", &[("key2", "value2")], s("30/minute")),
        ("test-domain", &[("key2", "value3")], None),
        ("test-domain", &[("key2", "value2"), ("subkey", "subvalue")], None),
        ("test-domain", &[("key3", "foo")], s("1/hour")),
        ("test-domain", &[("key4", "foo")], s("1/day")),
        ("test-domain", &[("key5", "value5")], s("15/day")),
        ("test-domain", &[("key5", "value5"), ("subkey5", "subvalue5")], s("25/day")),
        ("test-domain", &[("key5", "value5"), ("subkey5", "subvalue")], None),
        ("test-domain", &[("key6", "foo")], s("unlimited")),
        ("test-domain", &[], None),
        ("foo_domain", &[("key1", "value1")], None),
        ("wildcard", &[("wild", "foo1")], s("20/minute")),
        ("wildcard", &[("wild", "bar")], None),
        ("wildcard", &[("noWild", "foo1")], None),
        ("wildcard", &[("midWild", "barab")], None),
        // The first matching wildcard in config order wins, then `*`, then the key alone.
        ("order", &[("k", "abc")], s("1/second")),
        ("order", &[("k", "axe")], s("2/second")),
        ("order", &[("k", "zzz")], s("3/second")),
        ("order", &[("k", "")], s("3/second")),
        // A wildcard beats the key alone, and the walk does not come back for it.
        ("order", &[("j", "xy"), ("m", "nn")], s("6/second")),
        ("order", &[("j", "xy"), ("m", "o")], None),
        ("order", &[("j", "xy")], None),
        ("order", &[("j", "y")], s("5/second")),
        // A key-only final key ending in `*` is a wildcard on the whole `key_value`.
        ("order", &[("tenant-7", "x")], s("7/second")),
        ("order", &[("tenant", "")], s("7/second")),
        // A wildcard is a prefix of `key_value`, whatever the key: `p_q_*` takes key `p_q`.
        ("order", &[("p", "q_r")], s("8/second")),
        ("order", &[("p_q", "anything")], s("8/second")),
    ];
    for (domain, entries, want) in cases {
        assert_eq!(&found(&rl, domain, entries), want, "{domain} {entries:?}");
    }
    // Stats names: the config path, or the request's values with detailed_metric.
    let l = rl.find(
        "messaging",
        &desc(&[("message_type", "marketing"), ("to_number", "1")]),
    );
    assert_eq!(
        l.unwrap().stats_key,
        "messaging.message_type_marketing.to_number"
    );
    let entries = desc(&[("key1", "unspecified_value")]).entries;
    let l = rl
        .find("example8", &desc(&[("key1", "unspecified_value")]))
        .unwrap();
    assert_eq!(
        l.metric_key("example8", &entries),
        "example8.key1_unspecified_value"
    );
    let l = rl.find("example9", &desc(&[("key1", "value7")])).unwrap();
    assert_eq!(l.stats_key, "example9.key1_value*");
    // A request's own limit wins where the domain is known, and nowhere else.
    let mut o = desc(&[("key1", "value1"), ("subkey1", "something")]);
    o.limit_override = Some((10, Unit::Day));
    let l = rl.find("test-domain", &o).unwrap();
    assert_eq!((l.rate.requests_per_unit, l.rate.unit), (10, Unit::Day));
    assert!(rl.find("foo_domain", &o).is_none());
}

#[tokio::test]
async fn decisions_follow_the_documented_examples() {
    let rl = limits(&[
        EXAMPLE_3,
        EXAMPLE_5,
        r#"
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces: [{name: specific_limit}]
          requests_per_unit: 10
          unit: second
"#,
    ]);
    let store = QuotaBackend::Memory(MemoryStore::new(1000));
    let req = |domain: &str, descs: Vec<RequestDescriptor>| RateLimitRequest {
        domain: domain.into(),
        descriptors: descs,
        hits_addend: 0,
    };
    // Example 3: the blocked address is always over; the others get 10 each per second.
    let blocked = rl
        .decide(
            &req(
                "edge_proxy_per_ip",
                vec![desc(&[("remote_address", "50.0.0.5")])],
            ),
            &store,
        )
        .await
        .unwrap();
    assert!(blocked.over_limit);
    // Example 5: unlimited is OK with the most remaining and no limit to report.
    let ldap = rl
        .decide(&req("internal", vec![desc(&[("ldap", "x")])]), &store)
        .await
        .unwrap();
    assert!(!ldap.over_limit);
    assert_eq!(ldap.statuses[0].remaining, u32::MAX);
    // Example 7: both descriptors in one request: the named limit is replaced.
    let both = req(
        "example7",
        vec![
            desc(&[("key_1", "value_1"), ("user", "bkthomps")]),
            desc(&[("key_2", "value_2"), ("user", "bkthomps")]),
        ],
    );
    let d = rl.decide(&both, &store).await.unwrap();
    assert!(d.statuses[0].limit.is_none());
    assert_eq!(
        d.statuses[1].limit.as_ref().unwrap().rate.requests_per_unit,
        10
    );
    assert_eq!(
        d.statuses[1].remaining, 9,
        "the request's hits_addend 0 counts as 1"
    );
    // A descriptor's explicit hits_addend 0 only looks.
    let mut look = desc(&[("key_2", "value_2"), ("user", "bkthomps")]);
    look.hits_addend = Some(0);
    let d = rl
        .decide(&req("example7", vec![look]), &store)
        .await
        .unwrap();
    assert_eq!(d.statuses[0].remaining, 9);
}

/// A wildcard counts each value apart unless `share_threshold` says they share one quota; an
/// exact sibling keeps its own.
#[tokio::test]
async fn share_threshold_makes_a_wildcard_one_quota() {
    let rl = limits(&[r#"
domain: files
descriptors:
  - key: file
    value: test1
    rate_limit: {unit: minute, requests_per_unit: 50}
  - key: file
    value: "test*"
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: path
    value: "/api/*"
    rate_limit: {unit: minute, requests_per_unit: 2}
"#]);
    let store = QuotaBackend::Memory(MemoryStore::new(100));
    let over = |k: &str, v: &str| {
        let req = RateLimitRequest {
            domain: "files".into(),
            descriptors: vec![desc(&[(k, v)])],
            hits_addend: 1,
        };
        let (rl, store) = (&rl, &store);
        async move { rl.decide(&req, store).await.unwrap().over_limit }
    };
    assert!(!over("file", "test2").await);
    assert!(!over("file", "test3").await);
    assert!(
        over("file", "test4").await,
        "test2, test3 and test4 share 2 a minute"
    );
    assert!(!over("file", "test1").await, "the exact value has its own");
    for v in ["/api/a", "/api/b", "/api/c"] {
        assert!(
            !over("path", v).await,
            "without share_threshold, a quota per value"
        );
    }
    let e = DomainFile::parse(
        "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
    )
    .unwrap_err();
    assert_eq!(e, "descriptors[0]: share_threshold can only be used with wildcard values (ending with '*'), but found key 'k_v' at line 3 column 5");
}

#[test]
fn every_limit_is_listed_by_domain_and_config_path() {
    let rl = limits(&[
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 30}\n  - key: user\n    value: scraper\n    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: gcra}\n  - key: src\n    descriptors:\n      - key: dst\n        value: db*\n        rate_limit: {unit: second, requests_per_unit: 100}\n",
        "domain: api\ndescriptors:\n  - key: path\n    value: /health\n    rate_limit: {unlimited: true}\n",
    ]);
    let listed: Vec<(String, String, u32, bool, Algorithm)> = rl
        .limits()
        .into_iter()
        .map(|(d, l)| {
            (
                d,
                l.stats_key.clone(),
                l.rate.requests_per_unit,
                l.unlimited,
                l.rate.algorithm,
            )
        })
        .collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed[0].0, "api");
    assert!(listed[0].3, "unlimited");
    let keys: Vec<&str> = listed.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(
        keys,
        [
            "api.path_/health",
            "edge.src.dst_db*",
            "edge.user",
            "edge.user_scraper"
        ]
    );
    // Only the limit that names GCRA counts with it; fixed windows are the default.
    let gcra: Vec<&str> = listed
        .iter()
        .filter(|l| l.4 == Algorithm::Gcra)
        .map(|l| l.1.as_str())
        .collect();
    assert_eq!(gcra, ["edge.user_scraper"]);
    let e = DomainFile::parse(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, algorithm: sliding}\n",
    )
    .unwrap_err();
    assert_eq!(
        e,
        "descriptors[0]: invalid rate limit algorithm 'sliding' (fixed_window or gcra) at line 3 column 5"
    );
}

/// An independent reading of envoyproxy/ratelimit's `GetLimit` on the parsed config: linear
/// scans in config order, final keys compared as strings.
fn upstream_get_limit(file: &DomainFile, entries: &[(String, String)]) -> Option<String> {
    let mut level = &file.descriptors.0;
    let mut found = None;
    for (i, (k, v)) in entries.iter().enumerate() {
        let kv = format!("{k}_{v}");
        let next = level
            .iter()
            .find(|d| d.final_key() == kv)
            .or_else(|| {
                level.iter().find(|d| {
                    let fk = d.final_key();
                    fk.ends_with('*') && kv.starts_with(&fk[..fk.len() - 1])
                })
            })
            .or_else(|| level.iter().find(|d| d.final_key() == *k));
        let Some(next) = next else { break };
        if i + 1 == entries.len() {
            found = next
                .rate_limit
                .as_ref()
                .map(|r| r.requests_per_unit.to_string());
        }
        if next.descriptors.0.is_empty() {
            break;
        }
        level = &next.descriptors.0;
    }
    found
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
    /// Random configs (keys and values chosen to collide: `a_b` against `a`+`b`, wildcards
    /// against exact values) and random requests find what upstream's algorithm finds.
    #[test]
    fn matching_agrees_with_upstreams_algorithm(
        tree in proptest::collection::vec(
            (0usize..5, 0usize..7, proptest::collection::vec((0usize..5, 0usize..7), 0..4)),
            1..8,
        ),
        requests in proptest::collection::vec(
            proptest::collection::vec((0usize..5, 0usize..6), 1..4), 1..20,
        ),
    ) {
        const KEYS: [&str; 5] = ["a", "b", "a_b", "a*", "c"];
        const VALUES: [&str; 7] = ["", "x", "b", "b_x", "*", "x*", "b*"];
        const REQ_VALUES: [&str; 6] = ["", "x", "b", "b_x", "xy", "x*"];
        // Build YAML, numbering each limit so the answer names the node; siblings keep
        // distinct final keys, as the loader requires.
        let mut yaml = String::from("domain: p\ndescriptors:\n");
        let mut n = 0;
        let mut seen = std::collections::HashSet::new();
        for (k, v, children) in &tree {
            let fk = if VALUES[*v].is_empty() { KEYS[*k].to_string() } else { format!("{}_{}", KEYS[*k], VALUES[*v]) };
            if !seen.insert(fk) { continue; }
            n += 1;
            yaml.push_str(&format!("  - key: \"{}\"\n    value: \"{}\"\n    rate_limit: {{unit: second, requests_per_unit: {n}}}\n", KEYS[*k], VALUES[*v]));
            let mut inner = std::collections::HashSet::new();
            let mut first = true;
            for (ck, cv) in children {
                let fk = if VALUES[*cv].is_empty() { KEYS[*ck].to_string() } else { format!("{}_{}", KEYS[*ck], VALUES[*cv]) };
                if !inner.insert(fk) { continue; }
                if first { yaml.push_str("    descriptors:\n"); first = false; }
                n += 1;
                yaml.push_str(&format!("      - key: \"{}\"\n        value: \"{}\"\n        rate_limit: {{unit: second, requests_per_unit: {n}}}\n", KEYS[*ck], VALUES[*cv]));
            }
        }
        let file = DomainFile::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let rl = RateLimits::compile(vec![(PathBuf::from("p.yaml"), file.clone())]).unwrap();
        for r in &requests {
            let entries: Vec<(String, String)> = r.iter().map(|(k, v)| (KEYS[*k].to_string(), REQ_VALUES[*v].to_string())).collect();
            let d = RequestDescriptor { entries: entries.clone(), ..Default::default() };
            let ours = rl.find("p", &d).map(|l| l.rate.requests_per_unit.to_string());
            proptest::prop_assert_eq!(ours, upstream_get_limit(&file, &entries), "{:?}\n{}", entries, yaml);
        }
    }
}
