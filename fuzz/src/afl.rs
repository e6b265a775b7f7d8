//! The AFL++ entry point: `meshlens-fuzz-afl TARGET`, fed by afl-fuzz (scripts/fuzz.sh).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = meshlens_fuzz::target(&name) else {
        let names: Vec<&str> = meshlens_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: meshlens-fuzz-afl TARGET, one of {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
