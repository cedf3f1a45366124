//! `cargo xtask torture [--short] [--bin PATH] [SCENARIO...]`: callbox under attack and
//! under faults, against the release binary, each scenario printing one line of figures
//! and failing (exit 1) when an invariant breaks. See docs/security.md.
//!
//! Everything runs in a network namespace with only loopback: when this process sees any
//! other interface it re-executes itself under `unshare -n` (root, or user namespaces), so
//! no flood, nftables rule or unreachable route can touch the host's network.
//!
//! Scenarios (all by default, in this order): `flood`, `send-fail`, `ports`, `restart`,
//! `store`, `clock`, `soak`. `--short` runs each for a few seconds (the README's test
//! command does); without it each runs its documented length (`soak`: one hour, or
//! `--soak-seconds N`).

mod clock;
mod flood;
mod live;
mod relay_faults;
mod restart;
mod soak;
mod store_faults;
mod watch;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// What every scenario gets.
pub struct Ctx {
    /// The callbox binary under test (release).
    pub bin: String,
    pub short: bool,
    pub soak: Duration,
}

impl Ctx {
    /// `short` in a short run, else `long`.
    pub fn pick<T>(&self, short: T, long: T) -> T {
        if self.short { short } else { long }
    }
}

/// One scenario's line: `name: k=v k=v ... ok` or `... FAILED: why; why`.
#[derive(Debug, Default)]
pub struct Figures {
    fields: Vec<(String, String)>,
    failures: Vec<String>,
}

impl Figures {
    pub fn put(&mut self, key: &str, value: impl std::fmt::Display) {
        self.fields.push((key.to_string(), value.to_string()));
    }

    /// Records `what` as a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn line(&self, name: &str, took: Duration) -> String {
        let mut s = format!("torture {name}:");
        for (k, v) in &self.fields {
            let _ = write!(s, " {k}={v}");
        }
        let _ = write!(s, " took={:.1}s", took.as_secs_f64());
        if self.failures.is_empty() {
            s.push_str(" ok");
        } else {
            let _ = write!(s, " FAILED: {}", self.failures.join("; "));
        }
        s
    }
}

type Scenario = fn(&Ctx) -> Figures;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("flood", flood::run),
    ("send-fail", relay_faults::send_fail),
    ("ports", relay_faults::ports_exhausted),
    ("restart", restart::run),
    ("store", store_faults::run),
    ("clock", clock::run),
    ("soak", soak::run),
];

const USAGE: &str = "usage: cargo xtask torture [--short] [--bin PATH] [--soak-seconds N] [SCENARIO...]\n\
scenarios: flood send-fail ports restart store clock soak (default: all)";

pub fn main(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) == Some(store_faults::HOLD_LOCK) {
        return store_faults::hold_lock_main(&args[1..]);
    }
    let mut short = false;
    let mut bin: Option<String> = None;
    let mut soak_seconds: Option<u64> = None;
    let mut wanted: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--short" => short = true,
            "--bin" => bin = Some(it.next().ok_or(USAGE)?.clone()),
            "--soak-seconds" => soak_seconds = Some(it.next().and_then(|v| v.parse().ok()).ok_or(USAGE)?),
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if SCENARIOS.iter().any(|(n, _)| *n == s) => wanted.push(s.to_string()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if !only_loopback() {
        if std::env::var_os(ISOLATED).is_some() {
            return Err("still not isolated after unshare -n".into());
        }
        return reexec_isolated(args);
    }
    bring_up_loopback()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = match bin {
        Some(b) => b,
        None => build_release(&root)?,
    };
    crate::sys::raise_nofile().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let ctx = Ctx {
        bin,
        short,
        soak: Duration::from_secs(soak_seconds.unwrap_or(if short { 180 } else { 3600 })),
    };
    let mut failed = Vec::new();
    for (name, scenario) in SCENARIOS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        eprintln!("== torture {name}");
        let t0 = Instant::now();
        let figures = scenario(&ctx);
        println!("{}", figures.line(name, t0.elapsed()));
        if !figures.ok() {
            failed.push(*name);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

/// Set in the re-executed process, so that it never re-executes again.
const ISOLATED: &str = "CALLBOX_TORTURE_ISOLATED";

/// True when the only network interface is `lo`. /proc/self/net follows the current
/// network namespace (/sys/class/net follows the one sysfs was mounted in).
fn only_loopback() -> bool {
    let Ok(dev) = std::fs::read_to_string("/proc/self/net/dev") else {
        return false;
    };
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .all(|name| name.trim() == "lo")
}

fn bring_up_loopback() -> Result<(), String> {
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip (iproute2): {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err("ip link set lo up failed".into())
    }
}

/// Runs this same command again in a new network namespace (only `lo`).
fn reexec_isolated(args: &[String]) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // SAFETY: getuid(2) has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let flags = if root { "-n" } else { "-rn" };
    let st = Command::new("unshare")
        .arg(flags)
        .arg("--")
        .arg(me)
        .arg("torture")
        .args(args)
        .env(ISOLATED, "1")
        .status()
        .map_err(|e| format!("unshare (util-linux): {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err("the isolated run failed".into())
    }
}

fn build_release(root: &std::path::Path) -> Result<String, String> {
    eprintln!("building callbox (release)...");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "callbox",
            "--bin",
            "callbox",
        ])
        .current_dir(root)
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("cargo build --release -p callbox failed".into());
    }
    Ok(root.join("target/release/callbox").to_string_lossy().into_owned())
}

/// The appliance's config for the scenarios: every role on 127.0.0.1, relay ports in
/// `ports`, peers on 127.0.0.1 allowed (coturn's echo peer), plus `extra` TOML.
pub fn appliance_config(ports: (u16, u16), extra: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\n\
         relay_port_min = {}\nrelay_port_max = {}\nallow_peers = [\"127.0.0.1/32\"]\n{extra}\n",
        ports.0, ports.1
    )
}

/// Waits until `done` or `within` passed; true if done.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
