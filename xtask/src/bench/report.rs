//! The results: the markdown report (what BENCHMARKS.md quotes) and its JSON twin, written to
//! `bench-results/turn-<date>[-quick][-N].{md,json}`, never over an earlier run's.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use callbox_core::time::{UnixSecs, date};
use serde_json::{Value, json};

use super::measurement::{DISTURBED, Run, Step, rate_label};
use super::options::Opts;
use super::targets::{CALLBOX_RELAY_PORTS, COTURN_PORT, Target, coturn_args};

pub fn cmd_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout })
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

pub fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn machine(o: &Opts) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let coturn_version = cmd_output(&o.turnserver.display().to_string(), &["--version"]);
    let git = cmd_output(
        "git",
        &[
            "-C",
            &o.root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !cmd_output(
        "git",
        &[
            "-C",
            &o.root.display().to_string(),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "crates",
            "Cargo.toml",
            "Cargo.lock",
        ],
    )
    .is_empty();
    vec![
        (
            "nproc",
            std::thread::available_parallelism().map_or("?".into(), |n| n.to_string()),
        ),
        ("CPU", model),
        ("kernel", read_trim("/proc/sys/kernel/osrelease")),
        ("memory", mem),
        (
            "UDP buffers (rmem_default/max, wmem_default/max)",
            format!(
                "{}/{}, {}/{}",
                read_trim("/proc/sys/net/core/rmem_default"),
                read_trim("/proc/sys/net/core/rmem_max"),
                read_trim("/proc/sys/net/core/wmem_default"),
                read_trim("/proc/sys/net/core/wmem_max")
            ),
        ),
        (
            "coturn",
            format!("{} ({})", coturn_version, o.turnserver.display()),
        ),
        ("rustc", cmd_output("rustc", &["-V"])),
        (
            "callbox commit",
            format!(
                "{git}{}",
                if dirty {
                    " (with uncommitted changes under crates/ or Cargo.*)"
                } else {
                    ""
                }
            ),
        ),
    ]
}

pub fn f(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "–".into()
    }
}

pub fn kpps(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}k", v / 1000.0)
    } else {
        "–".into()
    }
}

pub fn report(o: &Opts, run: &Run, cmdline: &str, started: u64, secs: f64) -> String {
    let mut md = String::new();
    let mut notes_extra: Vec<String> = Vec::new();
    let _ = writeln!(
        md,
        "# TURN relay benchmark, {}{}\n",
        date(started),
        if o.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "Command: `{cmdline}` (took {secs:.0} s). Loopback only (127.0.0.1).\n"
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in machine(o) {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "\n## Setup\n\n- Load: {} client sockets, each Allocate + ChannelBind to one peer socket, send \
         ChannelData; the peer echoes each datagram to the relayed address it came from, so a packet \
         goes client → relay → peer → relay → client. \"Relayed\" = datagrams seen at the peer + back \
         at the clients (each one the server relayed). Loss = 1 − back/sent.\n\
         - All servers run at once (idle when not under load) and each step goes round them in turn, \
         so drift on the machine hits all alike; Binding/allocation/memory tests then run one server \
         at a time.\n\
         - Offered rates are client → relay packets/s, paced every ~100 µs; `max` is unpaced but \
         closed-loop (at most {} packets in flight). Steps last {:.1} s plus a drain of ≤ 1 s.\n\
         - CPU: utime+stime of the server process (all threads) from /proc/PID/stat over the step; \
         \"s/Mpkt\" = server CPU seconds per million relayed packets (= µs per packet). \
         The generator (2 threads: pacer; epoll receiver that also echoes as the peer) runs on the same \
         {} cores and its CPU is shown too. \"ksoftirqd cores\" = the kernel's softirq threads (packet \
         work deferred under load, charged to no process; not in \"server s/Mpkt\"). \"other cores\" = \
         machine-wide busy time (/proc/stat, includes hypervisor steal) minus all of the above: other \
         processes and noise; a step with more than {DISTURBED} is retried (up to twice) after waiting for \
         quiet, and marked ⚠ if still disturbed. Softirq work done inline (loopback delivery) is \
         charged to the process that sent the packet, so each side pays for delivering what it sends.\n\
         - callbox: `callbox serve --roles turn` with turn.workers={}, relay ports {}-{}, quotas 100000.\n\
         - coturn: `turnserver {} --static-auth-secret=… --listening-port={COTURN_PORT} --userdb=… --pidfile=…` \
         (relay threads = callbox's workers; quotas and bandwidth unlimited).\n\
         - forwarder: `cargo xtask udp-forwarder --workers {} --mode per-client`: per worker one \
         SO_REUSEPORT socket on the listen port, recvmmsg/sendmmsg 32 at a time, and one socket per \
         client toward the peer (TURN gives every allocation its own relayed address); channel → \
         client table; no auth, no permissions, no timers. The practical limit of a TURN-shaped relay.\n\
         - forwarder-shared: the same with `--mode shared`: one socket per worker toward the peer for \
         every client, so each received batch leaves in one sendmmsg. No TURN server can do this \
         (the peer would see one address for all clients); it is the floor.\n",
        o.clients,
        o.window,
        o.step.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.workers,
        CALLBOX_RELAY_PORTS.0,
        CALLBOX_RELAY_PORTS.1,
        coturn_args(o.workers).join(" "),
        o.workers,
    );
    let _ = writeln!(md, "## Relay throughput and cost\n");
    let _ = writeln!(
        md,
        "| payload | offered | server | sent/s | relayed/s | back/s | loss % | server cores | server s/Mpkt | generator cores | ksoftirqd cores | other cores |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &size in &o.sizes {
        for &rate in &o.rates {
            for s in run.steps.iter().filter(|s| s.size == size && s.offered == rate) {
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} |",
                    size,
                    s.rate_label(),
                    s.target.name(),
                    kpps(s.pps(s.c.sent)),
                    kpps(s.pps(s.relayed())),
                    kpps(s.pps(s.c.client_rx)),
                    f(s.loss_rt(), 2),
                    f(s.cores(s.cpu.server), 2),
                    f(s.cpu_per_mpkt(), 2),
                    f(s.cores(s.cpu.generator), 2),
                    f(s.cores(s.cpu.ksoftirqd), 2),
                    f(s.other_cores(), 2),
                    if s.disturbed() { " ⚠" } else { "" },
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\n## Ratios\n\nThroughput = packets back at the clients per second (higher is better); \
         CPU = server s/Mpkt (lower is better).\n"
    );
    let _ = writeln!(
        md,
        "| payload | offered | throughput callbox/coturn | throughput callbox/forwarder | CPU callbox/coturn | CPU callbox/forwarder | CPU callbox/forwarder-shared |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let find = |t: Target, size: usize, rate: Option<u64>| {
        run.steps
            .iter()
            .find(|s| s.target == t && s.size == size && s.offered == rate)
    };
    for &size in &o.sizes {
        for &rate in &o.rates {
            let Some(ours) = find(Target::Callbox, size, rate) else {
                continue;
            };
            let ratio = |other: Option<&Step>, cpu: bool| {
                other.map_or("–".into(), |x| {
                    if cpu {
                        f(ours.cpu_per_mpkt() / x.cpu_per_mpkt(), 2)
                    } else {
                        f(ours.c.client_rx as f64 / x.c.client_rx as f64, 2)
                    }
                })
            };
            let (c, w, ws) = (
                find(Target::Coturn, size, rate),
                find(Target::Forwarder, size, rate),
                find(Target::ForwarderShared, size, rate),
            );
            let _ = writeln!(
                md,
                "| {size} B | {} | {} | {} | {} | {} | {} |",
                rate_label(rate),
                ratio(c, false),
                ratio(w, false),
                ratio(c, true),
                ratio(w, true),
                ratio(ws, true)
            );
        }
    }
    let _ = writeln!(md, "\n## STUN Binding, allocations, memory\n");
    let levels: Vec<String> = o.allocs.iter().map(|n| n.to_string()).collect();
    let _ = write!(
        md,
        "| server | Binding answers/s | server cores (Binding) | RSS idle |"
    );
    for l in &levels {
        let _ = write!(md, " allocs/s to {l} | RSS at {l} |");
    }
    let _ = write!(
        md,
        " server µs per allocation | RSS KiB per allocation |\n|---|---|---|---|"
    );
    for _ in &levels {
        let _ = write!(md, "---|---|");
    }
    let _ = writeln!(md, "---|---|");
    for c in &run.control {
        let (bind_rate, bind_cores) = c.binding.map_or((f64::NAN, f64::NAN), |(b, cpu)| {
            let secs = b.elapsed.as_secs_f64();
            (b.answered as f64 / secs, cpu / secs)
        });
        let mib = |k: Option<u64>| k.map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let _ = write!(
            md,
            "| {} | {} | {} | {} |",
            c.target,
            kpps(bind_rate),
            f(bind_cores, 2),
            mib(c.rss_base)
        );
        for (_, rate, rss, _, fail) in &c.allocs {
            let fail = if fail.is_empty() {
                String::new()
            } else {
                format!(" ({fail})")
            };
            let _ = write!(md, " {}{} | {} |", f(*rate, 0), fail, mib(*rss));
        }
        let per = match (c.rss_base, c.allocs.last()) {
            (Some(b), Some((n, _, Some(r), _, _))) if *n > 0 => f((*r as f64 - b as f64) / *n as f64, 1),
            _ => "–".into(),
        };
        // Server CPU per allocation over all levels (each level's CPU / its new allocations).
        let (mut cpu, mut made, mut prev) = (0.0, 0usize, 0usize);
        for (n, _, _, c, _) in &c.allocs {
            cpu += c;
            made += n - prev;
            prev = *n;
        }
        let us = if made > 0 {
            f(cpu / made as f64 * 1e6, 0)
        } else {
            "–".into()
        };
        let _ = writeln!(md, " {us} | {per} |");
    }
    let _ = writeln!(
        md,
        "\nBinding: 4 sockets, closed loop with ≤ 32 requests outstanding each, {:.1} s. Allocations: \
         fresh client sockets, each Allocate → 401 → Allocate with credentials, ≤ 64 in flight; the \
         allocations are kept, so the second level adds to the first; allocs/s can be bound by the \
         one-thread generator (compare server µs per allocation = server CPU / allocations made). \
         RSS = VmRSS of the server process 0.5 s after each level; kernel socket memory (one relay \
         socket per allocation on both servers) is not in it.",
        o.binding_secs
    );
    for s in &run.steps {
        if let Some(n) = s.server_counted {
            let seen = s.relayed();
            if n > seen + seen / 100 {
                notes_extra.push(format!(
                    "{} B {}: callbox's /metrics counted {n} datagrams relayed, the generator saw {seen}: \
                     {} that the relay sent were dropped at the generator's sockets (generator short of CPU).",
                    s.size,
                    s.rate_label(),
                    n - seen
                ));
            }
        }
    }
    let notes: Vec<&String> = run.notes.iter().chain(notes_extra.iter()).collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {}", n.replace('\n', "\n  "));
        }
    }
    md
}

/// Renders the report and writes it with its JSON twin; returns the markdown and both paths.
pub fn write(
    o: &Opts,
    run: &Run,
    cmdline: &str,
    started: UnixSecs,
    secs: f64,
) -> Result<(String, PathBuf, PathBuf), String> {
    let md = report(o, run, cmdline, started, secs);
    let dir = o.root.join("bench-results");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // A rerun on the same day gets -2, -3, ...: results are never overwritten.
    let base = format!("turn-{}{}", date(started), if o.quick { "-quick" } else { "" });
    let mut stem = base.clone();
    let mut n = 1;
    while dir.join(format!("{stem}.md")).exists() {
        n += 1;
        stem = format!("{base}-{n}");
    }
    let md_path = dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    let js = json!({
        "command": cmdline, "started_unix": started, "seconds": secs,
        "machine": machine(o).into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect::<serde_json::Map<_, _>>(),
        "options": {"clients": o.clients, "workers": o.workers, "window": o.window, "step_secs": o.step.as_secs_f64(),
                    "coturn_args": coturn_args(o.workers)},
        "steps": run.steps.iter().map(Step::json).collect::<Vec<_>>(),
        "control": run.control.iter().map(|c| json!({
            "target": c.target,
            "binding_answered": c.binding.map(|b| b.0.answered), "binding_sent": c.binding.map(|b| b.0.sent),
            "binding_secs": c.binding.map(|b| b.0.elapsed.as_secs_f64()), "binding_server_cpu_secs": c.binding.map(|b| b.1),
            "rss_idle_kib": c.rss_base,
            "allocation_levels": c.allocs.iter().map(|(n, rate, rss, cpu, fail)| json!({
                "allocations": n, "per_second": rate, "rss_kib": rss, "server_cpu_secs": cpu, "failures": fail})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "notes": run.notes,
    });
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&js).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    Ok((md, md_path, json_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measurement::{Control, Cpu};
    use crate::bench::options::parse;
    use crate::load::StepCounts;
    use crate::turnc;
    use std::time::Duration;

    #[test]
    fn renders_every_section_of_a_run() {
        let o = parse(&["--quick".to_string(), "--allocs".into(), "10,20".into()]).unwrap();
        let mut run = Run::default();
        for (i, t) in [
            Target::Callbox,
            Target::Coturn,
            Target::Forwarder,
            Target::ForwarderShared,
        ]
        .into_iter()
        .enumerate()
        {
            for &size in &o.sizes {
                for &offered in &o.rates {
                    run.steps.push(Step {
                        target: t,
                        size,
                        offered,
                        c: StepCounts {
                            sent: 1000 + i as u64,
                            peer_rx: 990,
                            client_rx: 980 - i as u64,
                            send_secs: 1.2,
                            total_secs: 1.5,
                        },
                        cpu: Cpu {
                            server: 0.3 + i as f64 / 10.0,
                            generator: 0.4,
                            ksoftirqd: 0.05,
                            machine: (1.1, 0.2),
                        },
                        retries: 0,
                        server_counted: (t == Target::Callbox).then_some(5000),
                    });
                }
            }
        }
        run.control.push(Control {
            target: "callbox",
            binding: Some((
                turnc::BindingResult {
                    sent: 100,
                    answered: 90,
                    elapsed: Duration::from_secs(1),
                },
                0.2,
            )),
            rss_base: Some(1000),
            allocs: vec![
                (10, 100.0, Some(1100), 0.1, String::new()),
                (20, 90.0, Some(1300), 0.2, "x".into()),
            ],
        });
        run.notes.push("a note\nsecond line".into());
        let md = report(&o, &run, "cargo xtask bench-turn --quick", 1_795_303_266, 12.0);
        assert!(
            md.starts_with("# TURN relay benchmark, 2026-11-21 (quick)\n"),
            "{md}"
        );
        for part in [
            "## Machine",
            "## Relay throughput and cost",
            "| 200 B | 20k | callbox | 0.8k | 1.6k | 0.8k | 2.00 |",
            "## Ratios",
            "## STUN Binding, allocations, memory",
            "| callbox | 0.1k | 0.20 | 1.0 MiB | 100 | 1.1 MiB | 90 (x) | 1.3 MiB | 15000 | 15.0 |",
            "## Notes",
            "- a note\n  second line",
            "callbox's /metrics counted 5000 datagrams relayed",
        ] {
            assert!(md.contains(part), "{part} missing from\n{md}");
        }
    }
}
