use super::*;
use crate::quota::MemoryStore;

const POLICY: &str = r#"
rules:
  - name: no-admin
    action: DENY
    destinations: [work]
    operation: {paths: ["/admin*"]}
  - name: no-bots
    action: DENY
    headers: {user-agent: ["*bot"]}
  - name: blocked-net
    action: DENY
    source: {ip_blocks: [10.9.0.0/16]}
  - name: ingress-to-work
    action: ALLOW
    destinations: [work]
    source: {services: [ingress]}
    operation: {methods: [GET, POST]}
    add_headers: {x-policy: ingress-to-work}
  - name: mesh-to-meet
    action: ALLOW
    destinations: [meet]
    source: {namespaces: [shop]}
  - name: watch-deletes
    action: AUDIT
    operation: {methods: [DELETE]}
quotas:
  - name: per-user
    destinations: [work]
    key: [source.service, destination.service, "header:x-user"]
    requests_per_unit: 2
    unit: minute
"#;

fn call(src: Option<&str>, dst: &str, method: &str, path: &str) -> CheckAttributes {
    CheckAttributes {
        source_service: src.map(str::to_string),
        destination: Some(dst.to_string()),
        host: "work.local".into(),
        method: method.into(),
        path: path.into(),
        ..Default::default()
    }
}

fn outcome(v: &Verdict) -> String {
    match v {
        Verdict::Allow { rule, .. } => format!("allow {}", rule.as_deref().unwrap_or("-")),
        Verdict::Deny { rule, .. } => format!("deny {}", rule.as_deref().unwrap_or("-")),
        Verdict::RateLimited { quota, .. } => format!("429 {quota}"),
        Verdict::Unavailable { reason } => format!("503 {reason}"),
    }
}

#[test]
fn deny_rules_first_then_allow_rules_then_deny_by_default_where_allow_rules_guard() {
    let p = AuthzPolicy::parse(POLICY).unwrap();
    let mut bot = call(Some("ingress"), "work", "GET", "/x");
    bot.headers.push(("user-agent".into(), "crawlbot".into()));
    let mut from_blocked = call(Some("ingress"), "work", "GET", "/x");
    from_blocked.source_ip = Some("10.9.3.4".parse().unwrap());
    let mut from_other = call(Some("ingress"), "work", "GET", "/x");
    from_other.source_ip = Some("10.8.3.4".parse().unwrap());
    let mut shop = call(Some("anyone"), "meet", "GET", "/");
    shop.source_namespace = Some("shop".into());
    let cases = [
        (
            call(Some("ingress"), "work", "GET", "/api/orders"),
            "allow ingress-to-work",
        ),
        (
            call(Some("ingress"), "work", "GET", "/admin/users"),
            "deny no-admin",
        ),
        (call(Some("ingress"), "work", "DELETE", "/api"), "deny -"),
        (call(Some("other"), "work", "GET", "/api"), "deny -"),
        (call(None, "work", "GET", "/api"), "deny -"),
        (call(Some("other"), "unguarded", "GET", "/admin"), "allow -"),
        (bot, "deny no-bots"),
        (from_blocked, "deny blocked-net"),
        (from_other, "allow ingress-to-work"),
        (shop, "allow mesh-to-meet"),
        (call(Some("anyone"), "meet", "GET", "/"), "deny -"),
    ];
    for (attrs, want) in cases {
        assert_eq!(outcome(&p.evaluate(&attrs).0), want, "{attrs:?}");
    }
    let (_, audited) = p.evaluate(&call(Some("x"), "elsewhere", "DELETE", "/"));
    assert_eq!(audited, vec![Arc::<str>::from("watch-deletes")]);
    let (allowed, _) = p.evaluate(&call(Some("ingress"), "work", "POST", "/"));
    assert_eq!(
        allowed,
        Verdict::Allow {
            rule: Some("ingress-to-work".into()),
            headers: vec![("x-policy".into(), "ingress-to-work".into())],
        }
    );
}

#[tokio::test]
async fn quotas_count_per_key_and_refuse_with_429_when_spent() {
    let p = AuthzPolicy::parse(POLICY).unwrap();
    let store = QuotaBackend::Memory(MemoryStore::new(100));
    let user = |u: &str| {
        let mut a = call(Some("ingress"), "work", "GET", "/api");
        a.headers.push(("x-user".into(), u.into()));
        a
    };
    let mut got = Vec::new();
    for u in ["ann", "ann", "ann", "bob"] {
        got.push(outcome(&p.check(&user(u), &store).await.unwrap().verdict));
    }
    assert_eq!(
        got,
        [
            "allow ingress-to-work",
            "allow ingress-to-work",
            "429 per-user",
            "allow ingress-to-work"
        ]
    );
    // No x-user header: the quota's key is incomplete, so it does not apply.
    let plain = call(Some("ingress"), "work", "GET", "/api");
    for _ in 0..5 {
        let d = p.check(&plain, &store).await.unwrap();
        assert!(matches!(d.verdict, Verdict::Allow { .. }) && d.quotas.is_empty());
    }
}

#[test]
fn bad_policies_are_refused_with_the_reason() {
    let bad = [
        (
            "rules: [{name: a, action: MAYBE}]",
            "invalid action 'MAYBE'",
        ),
        (
            "rules: [{name: a, action: DENY, source: {ip_blocks: [10.0.0/8]}}]",
            "invalid ip_block '10.0.0/8'",
        ),
        (
            "rules: [{name: a, action: ALLOW}, {name: a, action: DENY}]",
            "duplicate name 'a'",
        ),
        (
            "rules: [{name: a, action: DENY, add_headers: {x: y}}]",
            "add_headers is for ALLOW rules only",
        ),
        (
            "quotas: [{name: q, key: [cookie], requests_per_unit: 1, unit: second}]",
            "invalid key part 'cookie'",
        ),
        (
            "quotas: [{name: q, key: [source.ip], requests_per_unit: 1, unit: fortnight}]",
            "invalid rate limit unit 'fortnight'",
        ),
        (
            "rules:\n  - name: a\n    action: DENY\n    colour: red\n",
            "unknown field `colour`",
        ),
    ];
    for (yaml, want) in bad {
        let e = AuthzPolicy::parse(yaml).expect_err(yaml);
        assert!(e.contains(want), "{yaml}: {e}");
    }
    let e =
        AuthzPolicy::parse("rules:\n  - name: a\n    action: DENY\n    colour: red\n").unwrap_err();
    assert!(e.contains("line 4"), "{e}");
    // Errors found after parsing name the node, its line and its column too.
    let located = [
        (
            "rules:\n  - name: a\n    action: ALLOW\n  - name: b\n    action: DENY\n    add_headers: {x: y}\n",
            "rules[1].add_headers: rule 'b': add_headers is for ALLOW rules only at line 6 column 18",
        ),
        (
            "rules:\n  - name: a\n    action: ALLOW\n  - name: a\n    action: DENY\n",
            "rules[1]: duplicate name 'a' at line 4 column 5",
        ),
        (
            "rules:\n  - name: a\n    action: PERMIT\n",
            "rules[0].action: rule 'a': invalid action 'PERMIT' (ALLOW, DENY or AUDIT) at line 3 column 13",
        ),
        (
            "rules:\n  - name: a\n    action: DENY\n    source:\n      ip_blocks: [10.0.0/8]\n",
            "rules[0]: rule 'a': invalid ip_block '10.0.0/8' at line 2 column 5",
        ),
        (
            "quotas:\n  - name: q\n    key: [source.ip, cookie]\n    requests_per_unit: 1\n    unit: second\n",
            "quotas[0].key[1]: quota 'q': invalid key part 'cookie'",
        ),
        (
            "quotas:\n  - name: q\n    key: [source.ip]\n    requests_per_unit: 1\n    unit: fortnight\n",
            "quotas[0].unit: quota 'q': invalid rate limit unit 'fortnight' at line 5 column 11",
        ),
        (
            "quotas:\n  - name: q\n    key: [source.ip]\n    requests_per_unit: 1\n    unit: second\n    algorithm: leaky\n",
            "quotas[0].algorithm: quota 'q': invalid algorithm 'leaky' (fixed_window or gcra) at line 6 column 16",
        ),
    ];
    for (yaml, want) in located {
        let e = AuthzPolicy::parse(yaml).expect_err(yaml);
        assert!(e.starts_with(want), "{yaml}\ngot:  {e}\nwant: {want}");
    }
    let e = AuthzPolicy::parse(
        "quotas:\n  - name: q\n    key: [source.ip, cookie]\n    requests_per_unit: 1\n    unit: second\n",
    )
    .unwrap_err();
    assert!(e.ends_with("at line 3 column 22"), "{e}");
}

#[test]
fn a_quota_counts_with_the_algorithm_its_rule_names() {
    let p = AuthzPolicy::parse(
        "quotas:\n  - {name: even, key: [source.ip], requests_per_unit: 5, unit: minute, algorithm: gcra}\n  - {name: plain, key: [source.ip], requests_per_unit: 5, unit: minute}\n  - {name: named, key: [source.ip], requests_per_unit: 5, unit: minute, algorithm: fixed_window}\n",
    )
    .unwrap();
    let got: Vec<(&str, Algorithm)> = p
        .quota_rules()
        .iter()
        .map(|q| (&*q.name, q.rate.algorithm))
        .collect();
    assert_eq!(
        got,
        [
            ("even", Algorithm::Gcra),
            ("plain", Algorithm::FixedWindow),
            ("named", Algorithm::FixedWindow)
        ]
    );
}

#[test]
fn spiffe_namespaces() {
    assert_eq!(
        spiffe_namespace("spiffe://cluster.local/ns/shop/sa/work"),
        Some("shop")
    );
    assert_eq!(spiffe_namespace("spiffe://cluster.local/sa/work"), None);
    assert_eq!(spiffe_namespace("work"), None);
}

#[test]
fn rules_and_quotas_describe_what_they_match() {
    let p = AuthzPolicy::parse(POLICY).unwrap();
    let rules: Vec<(String, &str, String)> = p
        .rule_summaries()
        .into_iter()
        .map(|r| (r.name.to_string(), r.action, r.matches))
        .collect();
    let want = [
        ("no-admin", "DENY", "destination=work path=/admin*"),
        ("no-bots", "DENY", "header:user-agent=*bot"),
        ("blocked-net", "DENY", "source.ip=10.9.0.0/16"),
        (
            "ingress-to-work",
            "ALLOW",
            "destination=work source.service=ingress method=GET,POST",
        ),
        (
            "mesh-to-meet",
            "ALLOW",
            "destination=meet source.namespace=shop",
        ),
        ("watch-deletes", "AUDIT", "method=DELETE"),
    ];
    assert_eq!(rules.len(), want.len());
    for ((name, action, matches), (wn, wa, wm)) in rules.iter().zip(want) {
        assert_eq!((name.as_str(), *action, matches.as_str()), (wn, wa, wm));
    }
    let (applies, key) = p.quota_rules()[0].describe();
    assert_eq!(applies, "destination=work");
    assert_eq!(key, "source.service + destination.service + header:x-user");
}

/// Each attribute a rule can name, with each pattern form: exact, `prefix*`, `*suffix`, `*`.
#[test]
fn every_attribute_and_pattern_form_matches() {
    let p = AuthzPolicy::parse(
        r#"
rules:
  - {name: by-principal, action: DENY, source: {principals: ["spiffe://cluster.local/ns/bad/*"]}}
  - {name: by-host, action: DENY, operation: {hosts: ["*.internal"]}}
  - {name: exact-path, action: DENY, operation: {paths: [/metrics]}}
  - {name: by-suffix, action: DENY, operation: {paths: ["*.php"]}}
  - {name: by-header, action: DENY, headers: {x-env: [staging, "dev*"]}}
  - {name: by-ip, action: DENY, source: {ip_blocks: [192.0.2.7, "2001:db8::/32"]}}
  - {name: any-path, action: ALLOW, destinations: [api], operation: {paths: ["*"]}, source: {namespaces: [front]}}
"#,
    )
    .unwrap();
    let base = || {
        let mut a = call(Some("web"), "api", "GET", "/v1/items");
        a.host = "api.example.com".into();
        a.source_namespace = Some("front".into());
        a
    };
    let with = |f: &dyn Fn(&mut CheckAttributes)| {
        let mut a = base();
        f(&mut a);
        outcome(&p.evaluate(&a).0)
    };
    type Change<'a> = &'a dyn Fn(&mut CheckAttributes);
    let cases: [(&str, Change, &str); 14] = [
        ("nothing special", &|_| {}, "allow any-path"),
        (
            "principal under the prefix",
            &|a| a.source_principal = Some("spiffe://cluster.local/ns/bad/sa/x".into()),
            "deny by-principal",
        ),
        (
            "principal elsewhere",
            &|a| a.source_principal = Some("spiffe://cluster.local/ns/good/sa/x".into()),
            "allow any-path",
        ),
        (
            "host by suffix",
            &|a| a.host = "db.internal".into(),
            "deny by-host",
        ),
        (
            "host that ends otherwise",
            &|a| a.host = "internal.example".into(),
            "allow any-path",
        ),
        (
            "exact path",
            &|a| a.path = "/metrics".into(),
            "deny exact-path",
        ),
        (
            "longer than the exact path",
            &|a| a.path = "/metrics/x".into(),
            "allow any-path",
        ),
        (
            "path by suffix",
            &|a| a.path = "/x/index.php".into(),
            "deny by-suffix",
        ),
        (
            "header exact",
            &|a| a.headers.push(("x-env".into(), "staging".into())),
            "deny by-header",
        ),
        (
            "header by prefix",
            &|a| a.headers.push(("x-env".into(), "dev-7".into())),
            "deny by-header",
        ),
        (
            "header otherwise",
            &|a| a.headers.push(("x-env".into(), "prod".into())),
            "allow any-path",
        ),
        (
            "one address",
            &|a| a.source_ip = Some("192.0.2.7".parse().unwrap()),
            "deny by-ip",
        ),
        (
            "IPv6 block",
            &|a| a.source_ip = Some("2001:db8::1".parse().unwrap()),
            "deny by-ip",
        ),
        (
            "namespace the ALLOW rule does not name",
            &|a| a.source_namespace = Some("back".into()),
            "deny -",
        ),
    ];
    for (what, f, want) in cases {
        assert_eq!(with(f), want, "{what}");
    }
}

/// Values that read alike when joined (`a_b`+`c`, `a`+`b_c`) are different quota keys.
#[tokio::test]
async fn quota_keys_keep_their_parts_apart() {
    let p = AuthzPolicy::parse(
        "quotas:\n  - {name: pair, key: ['header:x-a', 'header:x-b'], requests_per_unit: 1, unit: hour}\n",
    )
    .unwrap();
    let store = QuotaBackend::Memory(MemoryStore::new(100));
    let req = |a: &str, b: &str| {
        let mut r = call(Some("web"), "api", "GET", "/");
        r.headers.push(("x-a".into(), a.into()));
        r.headers.push(("x-b".into(), b.into()));
        r
    };
    let mut got = Vec::new();
    for (a, b) in [("a_b", "c"), ("a", "b_c"), ("a:1:b", "c"), ("a_b", "c")] {
        got.push(outcome(&p.check(&req(a, b), &store).await.unwrap().verdict));
    }
    assert_eq!(got, ["allow -", "allow -", "allow -", "429 pair"]);
}
