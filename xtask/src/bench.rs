//! `cargo xtask bench-turn [--quick]`: callbox's relay vs coturn vs a bare UDP forwarder,
//! on the same load from the same generator, loopback only. See BENCHMARKS.md.
//!
//! This file runs the sequence; [`options`] parses the command line, [`targets`] starts and
//! stops what is measured, [`measurement`] drives the load and counts, [`report`] writes the
//! results.

mod measurement;
mod options;
mod report;
pub(crate) mod targets;

use std::process::Command;
use std::time::Instant;

use callbox_core::Secret;
use callbox_core::credentials::mint;
use callbox_core::time::unix_now;

use crate::sys;
use crate::turnc::Cred;
use measurement::Run;
use targets::{SECRET, Target};

pub fn main(args: &[String]) -> Result<(), String> {
    let o = options::parse(args)?;
    let cmdline = format!("cargo xtask bench-turn {}", args.join(" "))
        .trim()
        .to_string();
    let nofile = sys::raise_nofile().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let need = o.allocs.iter().max().copied().unwrap_or(0) + o.clients + 64;
    if (nofile as usize) < need + 32 {
        return Err(format!(
            "RLIMIT_NOFILE hard limit {nofile} is below the {need} descriptors the run needs"
        ));
    }
    if o.build && o.targets.contains(&Target::Callbox) {
        eprintln!("building callbox (release)...");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "callbox"])
            .current_dir(&o.root)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("cargo build --release -p callbox failed".into());
        }
    }
    let started = unix_now();
    let t0 = Instant::now();
    let (username, password) = mint(&Secret::new(SECRET), "bench", started, 3600);
    let cred = Cred { username, password };
    let tmp = o.root.join("bench-results/tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut run = Run::default();
    let load = measurement::wait_quiet(o.wait_quiet);
    if load >= 0.15 {
        run.notes.push(format!(
            "At the start other processes were using {load:.2} cores (waited {:.0} s for quiet).",
            o.wait_quiet.as_secs_f64()
        ));
    }
    // Every target is up at once and the steps go round them, so that whatever drifts on
    // the machine during the run hits all of them alike.
    let mut lives = Vec::new();
    for &t in &o.targets {
        match measurement::start_target(&o, t, &cred, &tmp) {
            Ok(l) => lives.push(l),
            Err(e) => {
                eprintln!("!! {e}");
                run.notes.push(format!("{} did not start: {e}", t.name()));
            }
        }
    }
    for &size in &o.sizes {
        for &offered in &o.rates {
            let mut i = 0;
            while i < lives.len() {
                match measurement::relay_step(&o, &mut lives[i], &cred, size, offered) {
                    Ok(step) => {
                        run.steps.push(step);
                        i += 1;
                    }
                    Err(e) => {
                        eprintln!("!! {e}");
                        run.notes.push(format!("{} stopped: {e}", lives[i].target.name()));
                        lives.remove(i);
                    }
                }
            }
        }
    }
    // Control plane, one server at a time; the forwarders have none.
    lives.retain(|l| l.target.is_turn());
    for mut live in lives {
        // The relay clients stay open until the server goes: closing their sockets would
        // leave their allocations behind, and a new socket on a reused port would get
        // 437 Allocation Mismatch.
        let name = live.target.name();
        match measurement::control_plane(&o, &mut live.server, &cred) {
            Ok(c) => run.control.push(c),
            Err(e) => {
                eprintln!("!! {e}");
                run.notes.push(format!("{name}: {e}"));
            }
        }
        if !live.server.alive() {
            run.notes.push(format!(
                "{name} exited before the end:\n{}",
                live.server.log_tail()
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (md, md_path, json_path) = report::write(&o, &run, &cmdline, started, secs)?;
    println!("{md}");
    eprintln!(
        "wrote {} and {} in {secs:.0} s",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}
