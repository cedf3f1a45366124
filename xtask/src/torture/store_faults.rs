//! The store under faults. The state directory is a 16 MiB ext4 file system on a loop
//! device, mounted with `errors=remount-ro` in the process's own mount namespace. Its file
//! system gets full, its database is locked by another process, and finally the kernel
//! forces the file system read-only (`trigger_fs_error`, as on an I/O error). Meanwhile
//! the relay keeps relaying and admin writes answer 503 `store-unavailable`. After a full
//! disk or a lock, the allocation history written meanwhile lands once the store takes
//! writes again: it was kept and retried (`general.history_backlog_rows`), so nothing is
//! lost. A file system the kernel forced read-only stays so until it is checked and
//! mounted again; until then the rows wait in memory, and none is counted lost.

use std::io::{BufRead, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{CallboxProcess, TurnClient};

use super::{Ctx, Figures, appliance_config, wait_until};
use test_support::metric_sum as sum;

/// Mounts a 16 MiB ext4 image (no journal, no reserved blocks, `errors=remount-ro`) over
/// the state directory (the argument after `--state-dir`) in a private mount namespace,
/// keeping the files already there, then execs callbox. The image file is unlinked once
/// mounted; the loop device is released when the namespace ends.
const WRAP: &str = r#"for a; do [ "$prev" = --state-dir ] && d=$a; prev=$a; done
t=$(mktemp -d) && img=$(mktemp) && cp -a "$d/." "$t/" &&
truncate -s 16M "$img" && mkfs.ext4 -q -F -m 0 -O ^has_journal "$img" &&
mount -o loop,errors=remount-ro "$img" "$d" && rm -f "$img" && cp -a "$t/." "$d/" && rm -rf "$t" && exec "$@""#;

/// The argument that makes `torture` hold a database's write lock (see [`hold_lock`]).
pub const HOLD_LOCK: &str = "--hold-lock";

struct Store<'a> {
    server: &'a CallboxProcess,
    /// The state directory as seen through the process's mount namespace.
    dir: PathBuf,
    peer: UdpSocket,
    live: TurnClient,
    users: u32,
}

impl Store<'_> {
    /// Allocations made and ended: each leaves a history row.
    fn churn(&mut self, n: u32) -> bool {
        (0..n).all(|_| {
            self.users += 1;
            let mut c = self.server.turn_client(&format!("store{}", self.users));
            c.allocate().code.is_none() && c.refresh(0).code.is_none()
        })
    }

    fn relays(&self) -> bool {
        self.live.send_channel_data(0x4000, b"live");
        let mut buf = [0u8; 64];
        self.peer.recv(&mut buf).is_ok()
    }

    fn admin_write(&self, name: &str) -> (u16, String) {
        let r = self.server.admin(
            "POST",
            "/admin/v1/bans",
            Some(&json!({"network": format!("198.51.100.{}", name.len()), "reason": name, "expires_in_seconds": 60})),
        );
        let code = r.json()["error"]["code"].as_str().unwrap_or("").to_string();
        (r.status, code)
    }

    /// Ended allocations of the `store` users in the history.
    fn history_rows(&self) -> usize {
        let r = self
            .server
            .admin("GET", "/admin/v1/history/allocations?limit=1000", None);
        r.json()["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i.to_string().contains("store") && i["ended_at"].is_number())
                    .count()
            })
            .unwrap_or(0)
    }
}

fn fill(dir: &Path) -> u64 {
    let Ok(mut file) = std::fs::File::create(dir.join("fill")) else {
        return 0;
    };
    let chunk = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    while file.write_all(&chunk).is_ok() {
        n += chunk.len() as u64;
    }
    // Then small pieces until not a byte fits.
    while file.write_all(&chunk[..512]).is_ok() {
        n += 512;
    }
    let _ = file.sync_all();
    n
}

type Fault<'a> = (
    &'static str,
    Box<dyn Fn(&Store<'_>) -> Result<(), String> + 'a>,
    Box<dyn Fn(&Store<'_>) + 'a>,
);

pub fn run(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    let wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        WRAP,
        "sh",
    ];
    let server = CallboxProcess::start_wrapped(&wrapper, &ctx.bin, &appliance_config((25400, 25499), ""));
    let pid = server.pid();
    let state = server.state_dir.path().to_path_buf();
    let dir = PathBuf::from(format!("/proc/{pid}/root{}", state.display()));
    // The secret and the admin token were written on the mounted file system: copy them
    // to where the test helpers read them (the directory under the mount, outside).
    for file in ["turn-secret", "admin-token"] {
        if let Err(e) = std::fs::copy(dir.join(file), state.join(file)) {
            f.check(false, || format!("reading {file} through /proc/{pid}/root: {e}"));
            return f;
        }
    }
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut live = server.turn_client("live");
    live.allocate();
    live.create_permission(&[peer.local_addr().unwrap()]);
    live.channel_bind(0x4000, peer.local_addr().unwrap());
    let mut s = Store {
        server: &server,
        dir,
        peer,
        live,
        users: 0,
    };
    let per_fault = ctx.pick(20, 200);
    f.check(s.relays(), || "no relay at the start".into());
    f.check(s.churn(per_fault), || "allocations failed at the start".into());
    let mut expected = per_fault as usize;
    f.check(
        wait_until(Duration::from_secs(5), || s.history_rows() == expected),
        || format!("history has {} of {expected} rows at the start", s.history_rows()),
    );

    let db = state.join("callbox.db");
    // Long enough for the admin write's busy timeout (2 s) and most of the churn.
    let lock_hold = ctx.pick(Duration::from_millis(3000), Duration::from_millis(6000));
    let faults: Vec<Fault<'_>> = vec![
        (
            "disk_full",
            Box::new(|s: &Store<'_>| {
                (fill(&s.dir) > 0)
                    .then_some(())
                    .ok_or_else(|| "could not fill the file system".to_string())
            }),
            Box::new(|s: &Store<'_>| {
                let _ = std::fs::remove_file(s.dir.join("fill"));
            }),
        ),
        (
            "locked",
            Box::new(|_: &Store<'_>| hold_lock(pid, &db, lock_hold)),
            // The holder lets go by itself.
            Box::new(|_: &Store<'_>| std::thread::sleep(Duration::from_millis(1000))),
        ),
    ];
    for (name, start, end) in &faults {
        if let Err(e) = start(&s) {
            f.check(false, || format!("{name}: {e}"));
            continue;
        }
        let t0 = Instant::now();
        // The admin write first: it must meet the fault (the churn can outlast a lock).
        let (status, code) = s.admin_write(name);
        let churned = s.churn(per_fault);
        let relays = s.relays();
        // Let a few retries fail.
        std::thread::sleep(Duration::from_millis(1200));
        end(&s);
        expected += per_fault as usize;
        let caught_up = wait_until(Duration::from_secs(10), || s.history_rows() == expected);
        let (after_status, _) = s.admin_write(&format!("{name}-after"));
        f.put(
            name,
            format!(
                "admin{status}/{code}/relay{}/history{}/{}ms",
                if relays { "ok" } else { "LOST" },
                if caught_up { "complete" } else { "INCOMPLETE" },
                t0.elapsed().as_millis()
            ),
        );
        f.check(churned, || {
            format!("{name}: allocations failed while the store did")
        });
        f.check(status == 503 && code == "store-unavailable", || {
            format!("{name}: an admin write answered {status} {code}")
        });
        f.check(relays, || format!("{name}: the live allocation stopped relaying"));
        f.check(caught_up, || {
            format!(
                "{name}: history has {} of {expected} rows after the recovery",
                s.history_rows()
            )
        });
        f.check(after_status == 201, || {
            format!("{name}: admin writes still fail after the recovery ({after_status})")
        });
    }

    // The kernel forces the file system read-only, as on an I/O error.
    match force_read_only(pid, &state) {
        Ok(()) => {
            let churned = s.churn(per_fault);
            let (status, code) = s.admin_write("read-only");
            let relays = s.relays();
            std::thread::sleep(Duration::from_millis(1200));
            let healthz = server.http_get("/healthz").0;
            f.put(
                "read_only",
                format!(
                    "admin{status}/{code}/relay{}/healthz{healthz}",
                    if relays { "ok" } else { "LOST" }
                ),
            );
            f.check(churned && relays, || "read_only: the relay stopped".into());
            f.check(status == 503 && code == "store-unavailable", || {
                format!("read_only: an admin write answered {status} {code}")
            });
        }
        Err(e) => f.check(false, || format!("read_only: {e}")),
    }
    let metrics = server.http_get("/metrics").1;
    let lost = sum(&metrics, "callbox_store_history_lost_total");
    f.put("store_errors", sum(&metrics, "callbox_store_errors_total"));
    f.put("history_lost", lost);
    f.check(lost == 0.0, || format!("{lost} history rows lost"));
    f.check(!server.output().contains("panicked"), || {
        "callbox panicked".into()
    });
    f
}

/// Makes ext4 report an error on the file system mounted at `dir` in `pid`'s mount
/// namespace: with `errors=remount-ro` the kernel turns it read-only at once.
fn force_read_only(pid: u32, dir: &Path) -> Result<(), String> {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "--",
            "findmnt",
            "-n",
            "-o",
            "SOURCE",
        ])
        .arg(dir)
        .output()
        .map_err(|e| format!("nsenter (util-linux): {e}"))?;
    let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let device = source.rsplit('/').next().unwrap_or("");
    if !device.starts_with("loop") {
        return Err(format!("the state directory is on `{source}`, not a loop device"));
    }
    std::fs::write(format!("/sys/fs/ext4/{device}/trigger_fs_error"), "1")
        .map_err(|e| format!("trigger_fs_error on {device}: {e}"))
}

/// Starts this program inside `pid`'s mount namespace to hold `db`'s write lock for
/// `hold` (SQLite resolves /proc/PID/root to `/`, so the lock must be taken from inside);
/// returns once the lock is held.
fn hold_lock(pid: u32, db: &Path, hold: Duration) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .arg(me)
        .args(["torture", HOLD_LOCK])
        .arg(db)
        .arg(hold.as_millis().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nsenter (util-linux): {e}"))?;
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let _ = out.read_line(&mut line);
    // The holder exits by itself after `hold`.
    std::thread::spawn(move || child.wait());
    (line.trim() == "locked")
        .then_some(())
        .ok_or_else(|| format!("the lock holder said `{}`", line.trim()))
}

/// `torture --hold-lock DB MILLIS`: takes DB's write lock, says `locked`, holds it.
pub fn hold_lock_main(args: &[String]) -> Result<(), String> {
    let (Some(db), Some(ms)) = (args.first(), args.get(1).and_then(|m| m.parse::<u64>().ok())) else {
        return Err("usage: torture --hold-lock DB MILLIS".into());
    };
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(|e| e.to_string())?;
    println!("locked");
    std::thread::sleep(Duration::from_millis(ms));
    conn.execute_batch("COMMIT").map_err(|e| e.to_string())
}
