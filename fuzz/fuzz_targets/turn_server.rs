//! One `Server` shard driven by a sequence of packets split from the input, with the
//! driver's part (binding relays, delivering queued replies) played by the harness.
//!
//! Input: one config byte, then records of `ctrl, aux, len (u16 BE), body[len]`.
//!
//! `ctrl`: bits 0-2 pick the client address; bit 3 makes the record a peer packet instead
//! of a client packet; bit 4 makes the harness sign the client request with a real
//! credential (see `Harness::signed_request`); bits 5-7 advance the clock first (see
//! `ADVANCE`).
//!
//! `aux`: bit 0 fails the relay binds (and reservation takes) this record causes; bit 1
//! defers them until after the next record's packet (which so meets them pending); bit 2
//! fails the binds deferred by the previous record; bits 4-5 run an operator action
//! first (1 kick the allocation bits 6-7 pick, 2 kick the static user, 3 swap the
//! credentials).
//!
//! The config byte: bit 0 a bandwidth limit, bit 1 no SOFTWARE, bit 2 no IPv6 relay,
//! bit 3 no IPv4 relay, bits 4-5 the quotas, bits 6-7 the shard number.
//!
//! Invariants checked after every record:
//! - an unsigned client packet or a peer packet never makes the shard's state grow
//!   (nothing is stored before MESSAGE-INTEGRITY passes; forging it is out of reach);
//! - the state stays within what the source addresses can hold with valid credentials;
//! - the shared quota counts exactly the live allocations and pending binds (no leak);
//! - every reply and queued message parses as STUN with the request's transaction id;
//!   relayed payloads go only to peers the policy allows, from live allocations.
//!
//! `CALLBOX_FUZZ_TRACE=1` prints every step (for reading a crash or checking a seed):
//! `fuzz/target/x86_64-unknown-linux-gnu/release/turn_server INPUT` with it set.

#![no_main]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbox_core::credentials::{SecretSet, long_term_key, rest_password};
use callbox_core::policy::PeerPolicy;
use callbox_core::secret::Secret;
use libfuzzer_sys::fuzz_target;
use turn_proto::nonce::NonceMaker;
use turn_proto::server::{
    AllocId, ClientAction, Command, Credentials, Event, PEER_HEADROOM, PEER_TAILROOM, PeerAction, Quotas,
    RESERVATION_LIFETIME, RelayBindError, RelayIp, Server, ServerConfig,
};
use turn_proto::stun::{Class, Message, MessageBuilder, attr, parse_channel_data, split_type};

const CLIENTS: [&str; 8] = [
    "192.0.2.1:4000",
    "192.0.2.1:4001",
    "192.0.2.2:4000",
    "[2001:db8::1]:4000",
    "[2001:db8::2]:5000",
    "[::ffff:192.0.2.1]:4000",
    "198.51.100.1:1",
    "203.0.113.1:3478",
];

/// Peers: allowed, denied by configuration, default-denied, the server's own address,
/// port 0, IPv4-mapped and IPv6.
const PEERS: [&str; 16] = [
    "198.51.100.2:5000",
    "198.51.100.3:5000",
    "198.51.100.200:5000",
    "10.0.0.1:5000",
    "[2001:db8::99]:6000",
    "[2001:db8::98]:6000",
    "[::ffff:198.51.100.2]:5000",
    "[::ffff:10.0.0.1]:5000",
    "203.0.113.1:50000",
    "203.0.113.1:4000",
    "198.51.100.2:0",
    "127.0.0.1:5000",
    "[::1]:5000",
    "[fe80::1]:5000",
    "8.8.8.8:53",
    "198.51.100.2:5001",
];

const REALM: &str = "callbox";
const NONCE_KEY: [u8; 32] = [0x5A; 32];
const STATIC_USER: &str = "fuzz";
const STATIC_PASSWORD: &str = "fuzzpw";
const SECRET: &str = "fuzz-secret";
const T0_UNIX: u64 = 1_800_000_000;
const ADVANCE: [u64; 8] = [0, 0, 1, 5, 61, 301, 601, 3601];

/// The largest peer payload the driver hands the server (its receive buffers are 2048
/// bytes with the head- and tailroom reserved).
const MAX_PEER_PAYLOAD: usize = 2048 - PEER_HEADROOM - PEER_TAILROOM;

/// What one client 5-tuple can make a shard hold with valid credentials: its index entry,
/// an allocation or a pending bind, and up to 128 permissions and 128 channels
/// (MAX_PERMISSIONS and MAX_CHANNELS in server/allocation.rs).
const PER_CLIENT: usize = 1 + 1 + 128 + 128;
const STATE_BOUND: usize = CLIENTS.len() * PER_CLIENT;

fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CALLBOX_FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

struct Harness {
    server: Server,
    quotas: Arc<Quotas>,
    policy: Arc<PeerPolicy>,
    nonces: NonceMaker,
    clients: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    t0: Instant,
    now: Instant,
    reply: Vec<u8>,
    relay_port: u16,
    /// Ports reserved by EVEN-PORT's R bit, by token, as the driver keeps them.
    /// Reserved ports by token, with the user whose quota unit each holds.
    reservations: HashMap<[u8; 8], (SocketAddr, Instant, String)>,
    /// Every token handed out, so a signed request can name one.
    tokens: Vec<[u8; 8]>,
    /// Live allocations (from events) and their clients.
    live: HashMap<AllocId, SocketAddr>,
    /// BindRelay and TakeReservation commands held back to the next record.
    deferred: Vec<Command>,
    /// Transaction ids of requests sent per client, to match queued replies.
    sent_tids: HashMap<SocketAddr, Vec<[u8; 12]>>,
}

fn credentials() -> Credentials {
    let mut static_users = HashMap::new();
    static_users.insert(
        STATIC_USER.to_string(),
        long_term_key(STATIC_USER, REALM, STATIC_PASSWORD),
    );
    Credentials {
        secrets: SecretSet::new(vec![Secret::new(SECRET), Secret::new("old-secret")]),
        static_users,
        // One client of CLIENTS is banned: its Allocates get 403 before authentication.
        banned: vec!["203.0.113.0/24".parse().unwrap()],
    }
}

impl Harness {
    fn new(config_byte: u8) -> Self {
        let relay_v4 = RelayIp {
            bind: "0.0.0.0".parse().unwrap(),
            advertise: "203.0.113.1".parse().unwrap(),
        };
        let relay_v6 = RelayIp {
            bind: "::".parse().unwrap(),
            advertise: "2001:db8:ffff::1".parse().unwrap(),
        };
        let cfg = ServerConfig {
            realm: REALM.into(),
            software: (config_byte & 0x02 == 0).then(|| "callbox fuzz".into()),
            relay_v4: (config_byte & 0x08 == 0).then_some(relay_v4),
            relay_v6: (config_byte & 0x04 == 0).then_some(relay_v6),
            max_allocation_age: Duration::from_secs(7200),
            bandwidth_limit: if config_byte & 0x01 != 0 { 1000 } else { 0 },
            shard: u16::from(config_byte >> 6),
            ..ServerConfig::default()
        };
        let quotas = Arc::new(match (config_byte >> 4) & 3 {
            0 => Quotas::new(100, 10),
            1 => Quotas::new(3, 2),
            2 => Quotas::new(1, 1),
            _ => Quotas::new(0, 0),
        });
        let policy = Arc::new(PeerPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap()],
            vec!["198.51.100.128/25".parse().unwrap()],
            vec!["203.0.113.1".parse().unwrap()],
            vec![(3478, 3478), (49152, 65535)],
        ));
        let t0 = Instant::now();
        let server = Server::new(
            cfg,
            NONCE_KEY,
            Arc::new(credentials()),
            Arc::clone(&policy),
            Arc::clone(&quotas),
            t0,
        );
        Self {
            server,
            quotas,
            policy,
            nonces: NonceMaker::new(NONCE_KEY),
            clients: CLIENTS.iter().map(|s| s.parse().unwrap()).collect(),
            peers: PEERS.iter().map(|s| s.parse().unwrap()).collect(),
            t0,
            now: t0,
            reply: Vec::new(),
            relay_port: 49152,
            reservations: HashMap::new(),
            tokens: Vec::new(),
            live: HashMap::new(),
            deferred: Vec::new(),
            sent_tids: HashMap::new(),
        }
    }

    fn elapsed(&self) -> u64 {
        self.now.duration_since(self.t0).as_secs()
    }

    fn unix_now(&self) -> u64 {
        T0_UNIX + self.elapsed()
    }

    /// Answers BindRelay and TakeReservation like the driver, checks queued messages, tracks events.
    fn run_commands(&mut self, fail: bool, defer: bool) {
        while let Some(cmd) = self.server.next_command() {
            trace!("  command {cmd:?}");
            match cmd {
                cmd @ (Command::BindRelay { .. } | Command::TakeReservation { .. }) => {
                    if defer {
                        self.deferred.push(cmd);
                    } else {
                        self.bind(cmd, fail);
                    }
                }
                Command::CloseRelay { .. } => {}
                Command::SendToClient { to, bytes, .. } => {
                    assert!(self.clients.contains(&to), "queued reply to {to}");
                    let m = Message::parse(&bytes).expect("a queued reply parses");
                    assert!(matches!(m.class(), Class::Success | Class::Error));
                    let tids = self.sent_tids.get(&to).expect("a reply to a client that sent");
                    assert!(
                        tids.contains(&m.transaction_id()),
                        "queued reply to a request never sent"
                    );
                }
            }
        }
        while let Some(ev) = self.server.next_event() {
            trace!("  event {ev:?}");
            match ev {
                Event::Created {
                    id, client, relay, ..
                } => {
                    assert!(self.clients.contains(&client));
                    let advertised = ["203.0.113.1", "2001:db8:ffff::1"];
                    assert!(
                        advertised.contains(&relay.ip().to_string().as_str()),
                        "relay {relay}"
                    );
                    assert!(self.live.insert(id, client).is_none(), "id {id:?} reused");
                }
                Event::Refreshed { id, .. } => assert!(self.live.contains_key(&id)),
                Event::Closed { id, .. } => assert!(self.live.remove(&id).is_some(), "{id:?} closed twice"),
            }
        }
    }

    /// The driver's part of BindRelay and TakeReservation: binds always succeed on the
    /// next even port unless `fail`; a reserved port is kept under a fresh token.
    fn bind(&mut self, cmd: Command, fail: bool) {
        // Like the driver's timer: expired reservations give their quota unit back.
        let (now, quotas) = (self.now, &self.quotas);
        self.reservations.retain(|_, (_, at, user)| {
            let keep = now.saturating_duration_since(*at) < RESERVATION_LIFETIME;
            if !keep {
                quotas.release(user);
            }
            keep
        });
        match cmd {
            Command::BindRelay {
                id, ip, reserve_for, ..
            } => {
                assert!(ip.is_unspecified(), "binds on the configured address");
                if fail {
                    // Either answer: port exhaustion (508) or another failure (500).
                    let kind = if id.0 % 2 == 0 {
                        io::ErrorKind::AddrInUse
                    } else {
                        io::ErrorKind::PermissionDenied
                    };
                    self.server
                        .relay_bound(id, Err(RelayBindError::Io(kind.into())), self.now);
                    return;
                }
                self.relay_port = self
                    .relay_port
                    .checked_add(2)
                    .filter(|p| *p < 65534)
                    .unwrap_or(49152);
                let local = SocketAddr::new(ip, self.relay_port);
                if let Some(user) = reserve_for {
                    let token = (self.tokens.len() as u64 + 1).to_be_bytes();
                    self.tokens.push(token);
                    self.reservations.insert(
                        token,
                        (SocketAddr::new(ip, self.relay_port + 1), self.now, user),
                    );
                    self.server
                        .relay_bound_reserved(id, Ok(local), Some(token), self.now);
                } else {
                    self.server.relay_bound(id, Ok(local), self.now);
                }
            }
            Command::TakeReservation { id, token } => {
                let taken = self.reservations.remove(&token).map(|(addr, _, user)| {
                    self.quotas.release(&user);
                    addr
                });
                let result = if fail {
                    Err(RelayBindError::Io(io::ErrorKind::AddrInUse.into()))
                } else {
                    taken.ok_or(RelayBindError::NoReservation)
                };
                self.server.relay_bound(id, result, self.now);
            }
            other => unreachable!("{other:?}"),
        }
    }

    fn check_invariants(&self) {
        let size = self.server.state_size();
        assert!(size <= STATE_BOUND, "state_size {size} > {STATE_BOUND}");
        assert!(self.server.allocation_count() <= CLIENTS.len());
        assert_eq!(self.server.allocation_count(), self.live.len());
        assert_eq!(
            self.quotas.total() as usize,
            self.live.len()
                + self.reservations.len()
                + self
                    .deferred
                    .iter()
                    .map(|c| match c {
                        Command::BindRelay {
                            reserve_for: Some(_),
                            ..
                        } => 2,
                        _ => 1,
                    })
                    .sum::<usize>(),
            "quota count leaked"
        );
    }

    fn client_packet(&mut self, from: SocketAddr, packet: &[u8], fail: bool, defer: bool) {
        if let Ok(m) = Message::parse(packet) {
            if m.class() == Class::Request {
                self.sent_tids.entry(from).or_default().push(m.transaction_id());
            }
        }
        let unix = self.unix_now();
        let action = self
            .server
            .handle_client_packet(from, packet, self.now, unix, &mut self.reply);
        trace!("client {from} sent {} bytes: {action:?}", packet.len());
        if matches!(action, ClientAction::Reply) {
            trace!(
                "  reply {:?}",
                Message::parse(&self.reply).map(|m| (m.method(), m.class(), m.get(attr::ERROR_CODE)))
            );
        }
        match action {
            ClientAction::None => {}
            ClientAction::Reply => {
                let req = Message::parse(packet).expect("only STUN requests get replies");
                let m = Message::parse(&self.reply).expect("a reply parses");
                assert_eq!(m.transaction_id(), req.transaction_id());
                assert_eq!(m.method(), req.method());
                assert!(matches!(m.class(), Class::Success | Class::Error));
                assert_eq!(m.has_fingerprint(), req.has_fingerprint());
            }
            ClientAction::Relay { id, peer, payload } => {
                assert_eq!(
                    self.live.get(&id),
                    Some(&from),
                    "relay from another client's allocation"
                );
                assert!(self.policy.check(peer).is_ok(), "relay to denied peer {peer}");
                let range = packet.as_ptr_range();
                assert!(range.start <= payload.as_ptr() && payload.as_ptr_range().end <= range.end);
            }
        }
        self.run_commands(fail, defer);
    }

    fn peer_packet(&mut self, body: &[u8]) {
        let Some((&sel, payload)) = body.split_first() else {
            return;
        };
        let payload = &payload[..payload.len().min(MAX_PEER_PAYLOAD)];
        let from = self.peers[usize::from(sel & 0x0F)];
        let mut ids: Vec<AllocId> = self.live.keys().copied().collect();
        ids.sort();
        let id = match ids.get(usize::from(sel >> 4)) {
            Some(id) => *id,
            None => AllocId(0xDEAD),
        };
        let mut buf = vec![0xCC; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let action =
            self.server
                .handle_peer_packet(id, from, &mut buf, PEER_HEADROOM, payload.len(), self.now);
        trace!("peer {from} sent {} bytes to {id:?}: {action:?}", payload.len());
        match action {
            PeerAction::Drop => {}
            PeerAction::ToClient { client, start, end, .. } => {
                assert_eq!(self.live.get(&id), Some(&client));
                assert!(start <= end && end <= buf.len());
                let out = &buf[start..end];
                if let Some((_, data)) = parse_channel_data(out) {
                    assert_eq!(data, payload);
                } else {
                    let m = Message::parse(out).expect("a Data indication parses");
                    assert_eq!(m.get(attr::DATA), Some(payload));
                    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap(), Some(from));
                }
            }
        }
        self.run_commands(false, false);
    }

    /// Builds a request from `body` with USERNAME, REALM, a NONCE the server issued for
    /// `from`, and MESSAGE-INTEGRITY made with the user's key, so the fuzzer reaches
    /// the authenticated paths. Body: `type (u16 BE), tid byte, flags, attributes` with
    /// attributes as `type (u16 BE), len (u8), value`. An XOR-PEER-ADDRESS of one byte is
    /// replaced by the encoding of that peer of `PEERS`, and a RESERVATION-TOKEN of one byte
    /// by that token of those the harness handed out. Flags: bit 0 FINGERPRINT, bit 1
    /// REST user (else the static user), bit 2 nonce from the future (stale), bit 3 no
    /// MESSAGE-INTEGRITY, bit 4 wrong realm, bit 5 expired REST username, bit 6 wrong key,
    /// bit 7 a second REST user id.
    fn signed_request(&self, from: SocketAddr, body: &[u8]) -> Option<Vec<u8>> {
        if body.len() < 4 {
            return None;
        }
        let ty = u16::from_be_bytes([body[0], body[1]]) & 0x3FFF;
        let (method, class) = split_type(ty);
        let tid = [body[2]; 12];
        let flags = body[3];
        let username = if flags & 0x02 != 0 {
            let expiry = if flags & 0x20 != 0 {
                T0_UNIX - 1
            } else {
                T0_UNIX + 86_400
            };
            let user = if flags & 0x80 != 0 { "bob" } else { "alice" };
            format!("{expiry}:{user}")
        } else {
            STATIC_USER.to_string()
        };
        let password = if flags & 0x02 != 0 {
            rest_password(&Secret::new(SECRET), &username)
        } else {
            STATIC_PASSWORD.to_string()
        };
        let key = if flags & 0x40 != 0 {
            long_term_key(&username, REALM, "wrong")
        } else {
            long_term_key(&username, REALM, &password)
        };
        let issued = if flags & 0x04 != 0 {
            self.elapsed() + 10
        } else {
            self.elapsed()
        };
        let nonce = self.nonces.issue(&from, issued);
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, method, class, &tid);
        b.add(attr::USERNAME, username.as_bytes())
            .add(
                attr::REALM,
                if flags & 0x10 != 0 {
                    b"other"
                } else {
                    REALM.as_bytes()
                },
            )
            .add(attr::NONCE, &nonce);
        let mut rest = &body[4..];
        while rest.len() >= 3 {
            let t = u16::from_be_bytes([rest[0], rest[1]]);
            let len = usize::from(rest[2]).min(rest.len() - 3);
            let value = &rest[3..3 + len];
            rest = &rest[3 + len..];
            if t == attr::XOR_PEER_ADDRESS && value.len() == 1 {
                b.add_xor_address(t, &self.peers[usize::from(value[0] & 0x0F)]);
            } else if t == attr::RESERVATION_TOKEN && value.len() == 1 && !self.tokens.is_empty() {
                b.add(t, &self.tokens[usize::from(value[0]) % self.tokens.len()]);
            } else {
                b.add(t, value);
            }
        }
        if flags & 0x08 == 0 {
            b.add_integrity(&key);
        }
        if flags & 0x01 != 0 {
            b.add_fingerprint();
        }
        b.finish();
        Some(out)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config_byte, mut rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(config_byte);
    while rest.len() >= 4 {
        let (ctrl, aux) = (rest[0], rest[1]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let body = &rest[4..4 + len];
        rest = &rest[4 + len..];

        // Binds the previous record deferred are answered after this record's packet, so
        // the packet meets them pending.
        let held = h.deferred.len();
        let advance = ADVANCE[usize::from(ctrl >> 5)];
        if advance > 0 {
            h.now += Duration::from_secs(advance);
            h.server.handle_timeout(h.now);
            h.run_commands(false, false);
        }
        match (aux >> 4) & 3 {
            1 => {
                let mut ids: Vec<AllocId> = h.live.keys().copied().collect();
                ids.sort();
                if let Some(&id) = ids.get(usize::from(aux >> 6) % ids.len().max(1)) {
                    assert!(h.server.kick(id));
                }
            }
            2 => {
                let _ = h.server.kick_user(STATIC_USER);
            }
            3 => h.server.set_credentials(Arc::new(credentials())),
            _ => {}
        }
        h.run_commands(false, false);
        h.check_invariants();
        let before = h.server.state_size();
        trace!(
            "record ctrl={ctrl:#04x} aux={aux:#04x} len={len} t=+{}s state={before}",
            h.elapsed()
        );

        let from = h.clients[usize::from(ctrl & 0x07)];
        let (fail, defer) = (aux & 0x01 != 0, aux & 0x02 != 0);
        let grows_allowed = if ctrl & 0x08 != 0 {
            h.peer_packet(body);
            false
        } else if ctrl & 0x10 != 0 {
            if let Some(packet) = h.signed_request(from, body) {
                h.client_packet(from, &packet, fail, defer);
            }
            true
        } else {
            h.client_packet(from, body, fail, defer);
            false
        };
        h.check_invariants();
        let after = h.server.state_size();
        if !grows_allowed {
            assert!(
                after <= before,
                "unauthenticated input grew the state: {before} -> {after}"
            );
        }
        let held: Vec<Command> = h.deferred.drain(..held).collect();
        for cmd in held {
            h.bind(cmd, aux & 0x04 != 0);
        }
        h.run_commands(false, false);
        h.check_invariants();
    }
    h.server.shutdown();
    h.run_commands(false, false);
    for cmd in std::mem::take(&mut h.deferred) {
        h.bind(cmd, false);
    }
    h.run_commands(false, false);
    h.server.shutdown();
    h.run_commands(false, false);
    // The driver's reservations end with it, and give their quota units back.
    for (_, (_, _, user)) in h.reservations.drain() {
        h.quotas.release(&user);
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quotas.total(), 0, "quota leaked after shutdown");
    assert_eq!(h.server.state_size(), 0);
});
