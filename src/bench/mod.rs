//! The benchmarks behind `bench/*.sh`, built only with the `bench` feature and run as
//! `bench <name> [args]` (`cargo run --release --features bench --bin bench -- transform`).
//! They live in the crate because they time its internals (the transform, the windows, the
//! generator), which are not part of the public API.

mod generator;
mod identity;
mod kafka;
mod measure;
mod producer;
mod transform;
mod window;

/// The benchmark's arguments: the program's, less the program (so `args().nth(1)` is the
/// first one after the benchmark's name).
fn args() -> impl Iterator<Item = String> {
    std::env::args().skip(1)
}

/// Runs the benchmark `args` names; the usage, and exit code 2, for an unknown one.
pub fn main() {
    let benches: [(&str, fn()); 6] = [
        ("generator", generator::main),
        ("identity", identity::main),
        ("kafka", kafka::main),
        ("producer", producer::main),
        ("transform", transform::main),
        ("window", window::main),
    ];
    let name = args().next().unwrap_or_default();
    match benches.iter().find(|(n, _)| *n == name) {
        Some((_, bench)) => bench(),
        None => {
            let names: Vec<&str> = benches.iter().map(|(n, _)| *n).collect();
            eprintln!("usage: bench <{}> [args]", names.join("|"));
            std::process::exit(2);
        }
    }
}
