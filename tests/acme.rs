//! Automatic certificates end to end against Debian's `pebble` (an ACME test CA) and
//! `pebble-challtestsrv` (its DNS, answering 127.0.0.1 for every name), on loopback:
//! a certificate ordered while the directory is down fails cleanly (logged, counted,
//! plain listeners serving) and is obtained once it is up; HTTP-01 on the port-80
//! listener and TLS-ALPN-01 on the one TLS port; every TLS listener presents the issued
//! chain; short-lived certificates are renewed without a restart; a restart reuses the
//! stored certificate and account. Run inside a namespace that has only `lo` (see
//! scripts/test.sh).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::tls::{TestCa, client_config_with_root, connect, https_get, leaf_der, presented_leaf};
use test_support::{Background, CallboxProcess, http_get, http_request, metric};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");
/// The name ordered; pebble-challtestsrv resolves every name to 127.0.0.1.
const NAME: &str = "callbox.test";

/// The path of a pebble tool. Panics (never skips) when it is missing.
fn pebble_tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{name} not found: install Debian's `pebble` package (apt-get install pebble); .ci/run does this"
    );
    p
}

/// A port free now for pebble and its DNS server, which bind it later: outside the kernel's
/// ephemeral range (where callbox's own `:0` listeners land, and once took pebble's port
/// between this check and pebble's start) and below the relay range of the tests.
fn free_port() -> u16 {
    loop {
        let port = 12_000 + rand::random::<u16>() % 8_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The CA of pebble's own HTTPS certificate, made before pebble runs: callbox's
/// `tls.acme_ca_file` names it from the start.
struct HttpsCa {
    ca: TestCa,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpsCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca.cert_pem()).unwrap();
        Self { ca, file, _dir: dir }
    }
}

/// A pebble CA on 127.0.0.1:`port` and its DNS server, validating challenges at
/// 127.0.0.1 on `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01), issuing certificates
/// valid for `validity_s` seconds. Stopped when dropped.
struct Pebble {
    management: SocketAddr,
    log: PathBuf,
    _dns: Background,
    _pebble: Background,
    _dir: tempfile::TempDir,
}

impl Pebble {
    fn start(https: &HttpsCa, port: u16, http_port: u16, tls_port: u16, validity_s: u64) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = https.ca.write_server_files(dir.path(), &["127.0.0.1"]);
        let (dns_port, management) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_s,
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let dns = Background::spawn(Command::new(pebble_tool("pebble-challtestsrv")).args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ]));
        let log = dir.path().join("pebble.log");
        let out = std::fs::File::create(&log).unwrap();
        let pebble = Background(
            Command::new(pebble_tool("pebble"))
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                // No waits before validating, no spurious badNonce, and a fresh validation
                // for every order (renewals prove the challenge again).
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("spawn pebble"),
        );
        wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), "pebble");
        Pebble {
            management: format!("127.0.0.1:{management}").parse().unwrap(),
            log,
            _dns: dns,
            _pebble: pebble,
            _dir: dir,
        }
    }

    /// The root pebble issues under (from its management API).
    fn root_pem(&self, https: &HttpsCa) -> String {
        wait_listening(self.management, "pebble's management API");
        let tls = connect(
            self.management,
            "127.0.0.1",
            https.ca.client_config(&[b"http/1.1"]),
        )
        .unwrap();
        let (status, body) = https_get(tls, "127.0.0.1", "/roots/0");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn config(directory: &str, ca_file: &Path, extra: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\n\
         relay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\n\
         [tls]\nlisten = [\"127.0.0.1:0\"]\nacme_domains = [\"{NAME}\"]\nacme_email = \"ops@callbox.test\"\n\
         acme_directory = \"{directory}\"\nacme_ca_file = \"{}\"\n\
         acme_retry_min_ms = 300\nacme_retry_max_ms = 1000\nacme_order_timeout_ms = 20000\nreload_interval_ms = 200\n{extra}\n",
        ca_file.display()
    )
}

fn metrics(server: &CallboxProcess) -> String {
    server.http_get("/metrics").1
}

fn orders(server: &CallboxProcess, result: &str) -> f64 {
    metric(
        &metrics(server),
        &format!("callbox_acme_orders_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

fn wait_for(
    what: &str,
    timeout: Duration,
    server: &CallboxProcess,
    pebble: Option<&Pebble>,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            panic!(
                "{what} within {timeout:?}; callbox said:\n{}\npebble said:\n{}",
                server.output(),
                pebble.map(Pebble::log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The leaf a TLS listener presents to a client that trusts only `root`, for SNI `NAME`.
fn leaf_from(addr: SocketAddr, root: &str) -> Vec<u8> {
    let tls = connect(addr, NAME, client_config_with_root(root, &[]))
        .expect("a handshake with the issued certificate");
    presented_leaf(&tls)
}

fn stored_leaf(server: &CallboxProcess) -> Vec<u8> {
    leaf_der(&std::fs::read_to_string(server.state_dir.path().join("acme/cert.pem")).unwrap())
}

/// Waits for `server`'s first certificate from `pebble`: (pebble's root, the leaf).
fn first_certificate(server: &CallboxProcess, pebble: &Pebble, https: &HttpsCa) -> (String, Vec<u8>) {
    wait_for(
        "a certificate",
        Duration::from_secs(30),
        server,
        Some(pebble),
        || orders(server, "issued") >= 1.0,
    );
    (pebble.root_pem(https), stored_leaf(server))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn http01_while_the_directory_is_down_then_issued_served_and_renewed() {
    let https = HttpsCa::new();
    let port = free_port();
    let directory = format!("https://127.0.0.1:{port}/dir");
    let server = CallboxProcess::start(
        BIN,
        &config(
            &directory,
            &https.file,
            "http_listen = [\"127.0.0.1:0\"]\nacme_renew_remaining_percent = 50",
        ),
    );
    let port80 = server.port80[0];
    let tls_port = server.tls[0];

    // The directory is down: a clear log line, a counted failure, retries; the plain
    // listeners serve, and TLS handshakes fail (there is no certificate yet).
    wait_for(
        "two failed orders",
        Duration::from_secs(15),
        &server,
        None,
        || orders(&server, "failed") >= 2.0,
    );
    let out = server.output();
    assert!(
        out.contains("ACME certificate not obtained") && out.contains(&directory),
        "{out}"
    );
    assert_eq!(http_get(server.signal.unwrap(), "/healthz").0, 200);
    let r = http_request(port80, "GET", "/call?room=a", &[], b"");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://127.0.0.1:{}/call?room=a", tls_port.port()).as_str())
    );
    assert_eq!(
        http_request(
            port80,
            "GET",
            "/.well-known/acme-challenge/nothing-pending",
            &[],
            b""
        )
        .status,
        404
    );
    assert!(
        connect(tls_port, NAME, client_config_with_root(https.ca.cert_pem(), &[])).is_err(),
        "no certificate yet"
    );

    // The CA comes up: the next retry gets a certificate, validated over HTTP-01.
    let pebble = Pebble::start(&https, port, port80.port(), tls_port.port(), 20);
    let (root, first) = first_certificate(&server, &pebble, &https);
    for addr in [tls_port, server.turn_tls[0]] {
        assert_eq!(
            leaf_from(addr, &root),
            first,
            "{addr} presents the issued certificate"
        );
    }
    let tls = connect(tls_port, NAME, client_config_with_root(&root, &[b"http/1.1"])).unwrap();
    assert_eq!(https_get(tls, NAME, "/healthz").0, 200);
    let acme = server.state_dir.path().join("acme");
    for f in ["cert.pem", "key.pem", "account.json"] {
        assert_eq!(mode(&acme.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&acme), 0o700);
    let text = metrics(&server);
    let expiry = metric(&text, "callbox_tls_certificate_expiry_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 25.0,
        "a 20-second certificate: {expiry} vs {now}"
    );
    assert_eq!(metric(&text, "callbox_acme_consecutive_failures"), Some(0.0));

    // Renewed at half its life, without a restart, validated again.
    wait_for(
        "a renewal",
        Duration::from_secs(30),
        &server,
        Some(&pebble),
        || orders(&server, "issued") >= 2.0,
    );
    let second = stored_leaf(&server);
    assert_ne!(first, second);
    assert_eq!(leaf_from(tls_port, &root), second);
    assert_eq!(
        server.output().matches("ACME account created").count(),
        1,
        "one account"
    );
}

#[test]
fn tls_alpn01_on_the_one_port_and_a_restart_reuses_certificate_and_account() {
    let https = HttpsCa::new();
    let port = free_port();
    let directory = format!("https://127.0.0.1:{port}/dir");
    let config = config(
        &directory,
        &https.file,
        "http_listen = []\nacme_challenge = \"tls-alpn-01\"",
    );
    let server = CallboxProcess::start(BIN, &config);
    assert!(server.port80.is_empty());
    let tls_port = server.tls[0];
    // No HTTP-01 responder anywhere: only TLS-ALPN-01 on the one TLS port can succeed.
    let pebble = Pebble::start(&https, port, free_port(), tls_port.port(), 3600);
    let (root, issued) = first_certificate(&server, &pebble, &https);
    assert_eq!(leaf_from(tls_port, &root), issued);
    // The one port still routes everything else after the validation connections.
    let tls = connect(tls_port, NAME, client_config_with_root(&root, &[b"http/1.1"])).unwrap();
    assert_eq!(https_get(tls, NAME, "/healthz").0, 200);

    // Restarted on the same state: the stored certificate is in force at once, no new
    // order and no new account.
    let (_, state) = server.terminate_keeping_state();
    let server = CallboxProcess::start_in(BIN, &config, &[], &[], state);
    assert_eq!(leaf_from(server.tls[0], &root), issued);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(orders(&server, "issued"), 0.0);
    assert_eq!(orders(&server, "failed"), 0.0);
    let out = server.output();
    assert!(!out.contains("ACME account created"), "{out}");
}
