//! callbox project automation. `cargo xtask <command>` (alias in .cargo/config.toml).
//!
//! - `bench-turn [--quick] [...]`: the TURN relay benchmark, callbox vs coturn vs a bare UDP
//!   forwarder, loopback only; writes `bench-results/turn-<date>.{md,json}`. See BENCHMARKS.md.
//! - `udp-forwarder --listen ADDR --peer ADDR [--workers N] [--mode per-client|shared]`: the
//!   bare forwarder the benchmark starts as a separate process (so its CPU is measured
//!   like a server's).
//! - `torture [--short] [--bin PATH] [SCENARIO...]`: floods and faults against the release
//!   binary, one line of figures per scenario; see docs/security.md.

mod bench;
mod forwarder;
mod load;
mod sys;
mod torture;
mod turnc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench-turn") => bench::main(&args[1..]),
        Some("udp-forwarder") => forwarder::main(&args[1..]),
        Some("torture") => torture::main(&args[1..]),
        _ => Err("usage: cargo xtask bench-turn [--quick] [--help] | torture [--short] [--help] | udp-forwarder --listen ADDR --peer ADDR [--workers N] [--mode per-client|shared]".into()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}
