//! `meshlens policy validate FILE…` as a user runs it: the binary, its output and exit code.

use std::path::Path;
use std::process::{Command, Output};

fn validate(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["policy", "validate"])
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_checks_every_file_alone_and_all_together() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
    let (rl, policy) = (examples.join("ratelimit"), examples.join("policy.yaml"));
    let out = validate(&[&rl, &policy]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert_eq!(said.lines().count(), 2, "{said}");
    assert!(said.contains("rate limit domain(s) in 1 file(s)"), "{said}");
    assert!(said.contains("rule(s)"), "{said}");

    // A file named twice, or also inside a named directory, is one file.
    let edge = rl.join("edge.yaml");
    let out = validate(&[&rl, &edge, &edge, &policy, &policy]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Each file is valid alone; together they hold one domain twice.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, "domain: edge\n").unwrap();
    std::fs::write(&b, "domain: edge\ndescriptors: []\n").unwrap();
    let out = validate(&[&a, &b]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "meshlens: {}: duplicate domain 'edge' in config file",
            b.display()
        )
    );

    // The same rule name in two policy files.
    let (p1, p2) = (dir.path().join("p1.yml"), dir.path().join("p2.yml"));
    std::fs::write(&p1, "rules:\n  - {name: x, action: DENY}\n").unwrap();
    std::fs::write(&p2, "quotas: []\nrules:\n  - {name: x, action: AUDIT}\n").unwrap();
    let out = validate(&[&p1, &p2]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}: rules[0]: duplicate name 'x'", p2.display()))
            && err.contains("at line 3 column 5"),
        "{err}"
    );

    // A missing file is named, with no output for the ones before it.
    let out = validate(&[&policy, &dir.path().join("missing.yaml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("missing.yaml"));
}
