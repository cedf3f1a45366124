//! Helpers for callbox's integration tests: spawn the real binary on ephemeral ports and
//! talk to it with real sockets. Nothing here mocks the server.

pub mod redis;
pub mod tls;
pub mod turn_client;
pub mod ws;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use turn_client::TurnClient;

/// A running `callbox serve`, killed when dropped.
#[derive(Debug)]
pub struct CallboxProcess {
    child: Child,
    /// The UDP listeners it reported.
    pub udp: Vec<SocketAddr>,
    /// Its turn role's HTTP listener.
    pub http: Option<SocketAddr>,
    /// Its signal role's HTTP/WebSocket listener.
    pub signal: Option<SocketAddr>,
    /// Its admin role's listener.
    pub admin: Option<SocketAddr>,
    /// Its TURN/TLS listeners (`turn.tls_listen`).
    pub turn_tls: Vec<SocketAddr>,
    /// Its one TLS port's listeners (`tls.listen`).
    pub tls: Vec<SocketAddr>,
    /// Its HTTPS listener (`signal.tls_listen`).
    pub signal_tls: Option<SocketAddr>,
    /// Its plain port-80 listeners (`tls.http_listen`: HTTP-01 and redirects).
    pub port80: Vec<SocketAddr>,
    pub state_dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl CallboxProcess {
    /// Starts `binary serve` with `config` (TOML) and a fresh state directory. Unless the
    /// config says otherwise, listeners are on 127.0.0.1 with ephemeral ports.
    pub fn start(binary: &str, config: &str) -> CallboxProcess {
        Self::start_with(binary, config, &[], &[])
    }

    /// Like [`CallboxProcess::start`], with extra arguments and environment variables.
    pub fn start_with(binary: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> CallboxProcess {
        Self::start_in(binary, config, args, env, tempfile::tempdir().expect("temp dir"))
    }

    /// Like [`CallboxProcess::start_with`], on an existing state directory (a restart).
    pub fn start_in(
        binary: &str,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        state_dir: tempfile::TempDir,
    ) -> CallboxProcess {
        Self::spawn(&[], binary, config, args, env, state_dir)
    }

    /// Like [`CallboxProcess::start`], started with a soft open-files limit of
    /// `soft_nofile` (as from a login shell or a plain unit), through util-linux's
    /// `prlimit`, which execs the binary (the pid is callbox's).
    pub fn start_with_soft_nofile(binary: &str, config: &str, soft_nofile: u64) -> CallboxProcess {
        let limit = format!("--nofile={soft_nofile}:");
        Self::spawn(
            &["prlimit", &limit, "--"],
            binary,
            config,
            &[],
            &[],
            tempfile::tempdir().expect("temp dir"),
        )
    }

    /// Like [`CallboxProcess::start`], run through `wrapper` (a command that ends by
    /// exec-ing its arguments, such as `unshare -m -- sh -c '...; exec "$@"' sh`), so the
    /// pid is callbox's.
    pub fn start_wrapped(wrapper: &[&str], binary: &str, config: &str) -> CallboxProcess {
        Self::spawn(
            wrapper,
            binary,
            config,
            &[],
            &[],
            tempfile::tempdir().expect("temp dir"),
        )
    }

    fn spawn(
        prefix: &[&str],
        binary: &str,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        state_dir: tempfile::TempDir,
    ) -> CallboxProcess {
        let config_path = state_dir.path().join("test.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut cmd = match prefix.split_first() {
            Some((wrapper, wrapper_args)) => {
                let mut c = Command::new(wrapper);
                c.args(wrapper_args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--state-dir")
            .arg(state_dir.path())
            .args(args)
            .env("CALLBOX_LOG", "info")
            .env("CALLBOX_SIGNAL__LISTEN", "\"127.0.0.1:0\"")
            .env("CALLBOX_ADMIN__LISTEN", "\"127.0.0.1:0\"")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn callbox");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let log = Arc::clone(&log);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    {
                        let mut l = log.lock().unwrap();
                        l.push_str(&line);
                        l.push('\n');
                    }
                    // Logged first: once `start` returns, `output()` has the ready line.
                    if line.contains("callbox ready") {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let ready = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "callbox did not become ready; its output:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let field = |name: &str| -> Option<String> {
            let start = ready.find(&format!(" {name}="))? + name.len() + 2;
            Some(ready[start..].split_whitespace().next()?.to_string())
        };
        let addrs = |name: &str| -> Vec<SocketAddr> {
            field(name)
                .map(|v| v.split(',').filter_map(|a| a.parse().ok()).collect())
                .unwrap_or_default()
        };
        let udp = addrs("udp");
        let turn_tls = addrs("turn_tls");
        let tls = addrs("tls");
        let port80 = addrs("port80");
        let signal_tls = field("signal_tls").and_then(|v| v.parse().ok());
        let http = field("http").and_then(|v| v.parse().ok());
        let signal = field("signal").and_then(|v| v.parse().ok());
        let admin = field("admin").and_then(|v| v.parse().ok());
        CallboxProcess {
            child,
            udp,
            http,
            signal,
            admin,
            turn_tls,
            tls,
            signal_tls,
            port80,
            state_dir,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`HUP`, `TERM`, ...) to the process with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The generated shared secret in the state directory.
    pub fn secret(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("turn-secret"))
            .expect("turn-secret")
            .trim()
            .to_string()
    }

    /// The admin token the process wrote to its state directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("admin-token"))
            .expect("admin-token")
            .trim()
            .to_string()
    }

    /// A request to the admin API with the process's token; `body` is sent as JSON.
    pub fn admin(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> HttpResponse {
        let token = format!("Bearer {}", self.admin_token());
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let mut headers = vec![("Authorization", token.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http_request(
            self.admin.expect("admin listener"),
            method,
            path,
            &headers,
            text.as_bytes(),
        )
    }

    /// A TURN client over UDP with a REST credential for `user` minted from the process's
    /// secret (10 minutes).
    pub fn turn_client(&self, user: &str) -> TurnClient {
        let secret = callbox_core::Secret::new(self.secret());
        let now = callbox_core::time::unix_now();
        let (u, p) = callbox_core::credentials::mint(&secret, user, now, 600);
        TurnClient::new(self.udp_v4(), &u, &p, "callbox")
    }

    pub fn udp_v4(&self) -> SocketAddr {
        *self.udp.iter().find(|a| a.is_ipv4()).expect("an IPv4 listener")
    }

    /// GET `path` on the turn role's HTTP listener: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http.expect("http listener"), path)
    }

    /// The turn role's `/metrics` once `ready` holds for it (workers publish their counters
    /// after the loop turn that sent a reply), or after 2 s, whatever it says then.
    pub fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (_, body) = self.http_get("/metrics");
            if ready(&body) || Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Kills the process with SIGKILL (no chance to clean up) and hands back its state
    /// directory, for crash tests.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.state_dir, dir)
    }

    /// Sends SIGTERM and waits for exit (up to 10 s); returns the exit status code and
    /// the state directory, for a restart on it.
    pub fn terminate_keeping_state(mut self) -> (Option<i32>, tempfile::TempDir) {
        let code = self.stop_with_sigterm();
        let dir = tempfile::tempdir().expect("temp dir");
        (code, std::mem::replace(&mut self.state_dir, dir))
    }

    /// Sends SIGTERM and waits for exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        self.stop_with_sigterm()
    }

    fn stop_with_sigterm(&mut self) -> Option<i32> {
        // SAFETY: kill(2) with a pid we spawned.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for CallboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http_request(addr, "GET", path, &[], b"");
    (r.status, r.body)
}

/// A GET of `path` from the local address `from` (another loopback address is another
/// client for per-address limits): (status, whole response text, head included); status
/// 0 when the server closed without answering.
pub fn http_get_from(from: std::net::IpAddr, addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .expect("socket");
    sock.bind(&SocketAddr::new(from, 0).into())
        .expect("bind the source address");
    if sock.connect(&addr.into()).is_err() {
        return (0, String::new());
    }
    let mut c: std::net::TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    if c.write_all(req.as_bytes()).is_err() || (c.read_to_string(&mut text).is_err() && text.is_empty()) {
        return (0, text);
    }
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// An HTTP/1.1 response as tests see it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in order (repeated headers appear repeatedly).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 request with `Connection: close` (callbox-admin's client).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let r = callbox_admin::client::request(addr, method, path, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    HttpResponse {
        status: r.status,
        headers: r.headers,
        body: String::from_utf8_lossy(&r.body).into_owned(),
    }
}

/// The "Total lost packets N" that `turnutils_uclient` prints at the end of a run.
pub fn uclient_lost_packets(output: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        l.split("Total lost packets ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The value of an unlabelled or labelled sample in Prometheus text.
pub fn metric(text: &str, name_with_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_with_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every sample of a metric family (`name`, any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The path of a coturn client tool. Panics (never skips) when it is missing, with the
/// package to install.
pub fn coturn_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's `coturn` package (apt-get install coturn); .ci/run does this");
}

/// Starts coturn's `turnutils_peer` (a UDP echo) on a free 127.0.0.1 port pair and waits
/// until it listens: (port, the process, killed when dropped).
pub fn turnutils_peer() -> (u16, Background) {
    let port = free_udp_port_pair();
    let peer = Background::spawn(Command::new(coturn_tool("turnutils_peer")).args([
        "-L",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]));
    std::thread::sleep(Duration::from_millis(300));
    (port, peer)
}

/// Runs `turnutils_uclient` against `server` with a username and password, relaying to
/// `turnutils_peer` on 127.0.0.1:`peer_port`: (exit code, output).
pub fn uclient_with_password(
    server: SocketAddr,
    user: &str,
    password: &str,
    peer_port: u16,
) -> (Option<i32>, String) {
    let mut cmd = Command::new(coturn_tool("turnutils_uclient"));
    cmd.args(["-c", "-p", &server.port().to_string(), "-u", user, "-w", password])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
        .args(["-m", "2", "-n", "50", "-l", "120", "-z", "5"])
        .arg(server.ip().to_string());
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

/// A UDP port free on 127.0.0.1 (and the one after it, which turnutils_peer also binds).
pub fn free_udp_port_pair() -> u16 {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65535 && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Runs a command with a time limit; returns (exit code or None if killed, stdout+stderr).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = t_out.join().unwrap_or_default();
    text.push_str(&t_err.join().unwrap_or_default());
    (code, text)
}

/// A background process killed when dropped (turnutils_peer and the like).
#[derive(Debug)]
pub struct Background(pub Child);

impl Background {
    pub fn spawn(cmd: &mut Command) -> Background {
        Background(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
