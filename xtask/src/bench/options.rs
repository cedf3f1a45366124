//! The bench-turn command line: what to run, how long and how hard, and where the binaries are.

use std::path::PathBuf;
use std::time::Duration;

use super::targets::Target;

#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub targets: Vec<Target>,
    pub sizes: Vec<usize>,
    pub rates: Vec<Option<u64>>,
    pub step: Duration,
    pub clients: usize,
    pub workers: usize,
    pub window: u64,
    pub binding_secs: f64,
    pub allocs: Vec<usize>,
    pub callbox: PathBuf,
    pub turnserver: PathBuf,
    pub build: bool,
    pub wait_quiet: Duration,
    pub refresh: Duration,
    pub root: PathBuf,
}

pub fn usage() -> String {
    "usage: cargo xtask bench-turn [--quick] [--only callbox,coturn,forwarder,forwarder-shared] [--sizes 200,1000]\n\
     \x20      [--rates 20000,50000,max] [--step SECS] [--clients N] [--workers N] [--window N]\n\
     \x20      [--binding-secs SECS] [--allocs 1000,10000] [--callbox PATH] [--turnserver PATH] [--no-build]\n\
     \x20      [--wait-quiet SECS (default 120: wait for other processes to leave the CPUs)]\n\
     \x20      [--refresh SECS (default 60: Refresh + ChannelBind again before a step)]"
        .to_string()
}

pub fn parse(args: &[String]) -> Result<Opts, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        targets: vec![
            Target::Callbox,
            Target::Coturn,
            Target::Forwarder,
            Target::ForwarderShared,
        ],
        sizes: vec![200, 1000],
        rates: if quick {
            vec![Some(20_000), Some(100_000), None]
        } else {
            vec![Some(20_000), Some(50_000), Some(100_000), Some(200_000), None]
        },
        step: Duration::from_secs_f64(if quick { 1.2 } else { 5.0 }),
        clients: 16,
        workers: 2,
        window: 1024,
        binding_secs: if quick { 0.5 } else { 3.0 },
        allocs: vec![1000, 10000],
        callbox: root.join("target/release/callbox"),
        turnserver: PathBuf::from("/usr/bin/turnserver"),
        build: true,
        wait_quiet: Duration::from_secs(120),
        refresh: Duration::from_secs(60),
        root,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or(format!("{a} needs a value\n{}", usage()))
        };
        let list = |v: String| -> Vec<String> { v.split(',').map(|s| s.trim().to_string()).collect() };
        let num = |s: &str| s.parse::<f64>().map_err(|e| format!("{a}: {s}: {e}"));
        match a.as_str() {
            "--quick" => {}
            "--no-build" => o.build = false,
            "--refresh" => o.refresh = Duration::from_secs_f64(num(&val()?)?.clamp(0.0, 200.0)),
            "--wait-quiet" => o.wait_quiet = Duration::from_secs_f64(num(&val()?)?.clamp(0.0, 600.0)),
            "--only" => {
                o.targets = list(val()?)
                    .iter()
                    .map(|t| match t.as_str() {
                        "callbox" | "ours" => Ok(Target::Callbox),
                        "coturn" => Ok(Target::Coturn),
                        "forwarder" | "udp" => Ok(Target::Forwarder),
                        "forwarder-shared" | "floor" => Ok(Target::ForwarderShared),
                        other => Err(format!("--only: unknown target {other}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--sizes" => {
                o.sizes = list(val()?)
                    .iter()
                    .map(|s| num(s).map(|v| v as usize))
                    .collect::<Result<_, _>>()?
            }
            "--rates" => {
                o.rates = list(val()?)
                    .iter()
                    .map(|s| {
                        if s == "max" {
                            Ok(None)
                        } else {
                            num(s).map(|v| Some(v as u64))
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
            "--allocs" => {
                o.allocs = list(val()?)
                    .iter()
                    .map(|s| num(s).map(|v| v as usize))
                    .collect::<Result<_, _>>()?
            }
            "--step" => o.step = Duration::from_secs_f64(num(&val()?)?.clamp(0.2, 10.0)),
            "--binding-secs" => o.binding_secs = num(&val()?)?.clamp(0.2, 10.0),
            "--clients" => o.clients = num(&val()?)?.clamp(1.0, 1024.0) as usize,
            "--workers" => o.workers = num(&val()?)?.clamp(1.0, 64.0) as usize,
            "--window" => o.window = num(&val()?)?.clamp(1.0, 100_000.0) as u64,
            "--callbox" => o.callbox = PathBuf::from(val()?),
            "--turnserver" => o.turnserver = PathBuf::from(val()?),
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if o.sizes.iter().any(|&s| !(1..=1400).contains(&s)) {
        return Err("--sizes: payloads must be 1-1400 bytes".into());
    }
    if o.allocs.len() > 3 || o.allocs.iter().any(|&n| n > 15_000) {
        return Err("--allocs: at most 3 levels, at most 15000".into());
    }
    o.allocs.sort_unstable();
    Ok(o)
}
