//! A real `redis-server` on loopback for the cluster tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Background;

/// `redis-server`, panicking (never skipping) when it is missing.
fn redis_server() -> PathBuf {
    let p = Path::new("/usr/bin/redis-server");
    assert!(
        p.exists(),
        "redis-server not found: install Debian's `redis-server` package; .ci/run does this"
    );
    p.to_path_buf()
}

/// A redis-server on 127.0.0.1:`port` without persistence (a restart starts empty, as a
/// Redis that lost its data).
#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    process: Option<Background>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            port,
            process: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.run();
        r
    }

    /// Starts it (again), on the same port.
    pub fn run(&mut self) {
        let child = Background::spawn(
            Command::new(redis_server())
                .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(child);
    }

    /// Kills it (its data is gone).
    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The pid of the running server (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }
}
