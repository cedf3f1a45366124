//! Sans-IO tests on simulated time: a scripted client against one server shard.

use super::*;
use std::io;
use std::net::IpAddr;

use crate::stun::{MessageBuilder, attr};
use callbox_core::credentials::{LongTermKey, SecretSet, long_term_key, mint, rest_password};
use callbox_core::{Cidr, Secret};

const UDP: u8 = 17;

const REALM: &str = "callbox";
const T0_UNIX: u64 = 1_800_000_000;

struct Harness {
    server: Server,
    t0: Instant,
    now: Instant,
    reply: Vec<u8>,
    relay_port: u16,
    /// The user whose quota the one reservation the harness keeps ([7; 8]) holds.
    reserved_for: Option<String>,
}

fn secrets() -> SecretSet {
    SecretSet::new(vec![Secret::new("s3cret")]).unwrap()
}

fn policy_allowing_loopback() -> PeerPolicy {
    PeerPolicy::new(
        vec!["127.0.0.0/8".parse::<Cidr>().unwrap()],
        vec![],
        vec![],
        vec![(3478, 3478)],
    )
}

impl Harness {
    fn new(cfg: ServerConfig, policy: PeerPolicy, quotas: Quotas) -> Self {
        let now = Instant::now();
        let mut users = HashMap::new();
        users.insert("bob".to_string(), long_term_key("bob", REALM, "bobpw"));
        let creds = Credentials {
            secrets: Some(secrets()),
            static_users: users,
            banned: Vec::new(),
        };
        Self {
            server: Server::new(
                cfg,
                [9; 32],
                Arc::new(creds),
                Arc::new(policy),
                Arc::new(quotas),
                now,
            ),
            t0: now,
            now,
            reply: Vec::new(),
            relay_port: 50000,
            reserved_for: None,
        }
    }

    fn default() -> Self {
        let cfg = ServerConfig {
            relay_v4: Some(RelayIp {
                bind: "127.0.0.1".parse().unwrap(),
                advertise: "203.0.113.9".parse().unwrap(),
            }),
            ..ServerConfig::default()
        };
        Self::new(cfg, policy_allowing_loopback(), Quotas::new(100, 3))
    }

    fn unix(&self) -> u64 {
        T0_UNIX + self.now.duration_since(self.t0).as_secs()
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.server.handle_timeout(self.now);
    }

    /// Sends a packet, runs the driver's part (binding relays), returns the reply if any.
    fn send(&mut self, from: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
        self.send_over(from, Transport::Udp, packet)
    }

    /// [`Harness::send`] over a given transport.
    fn send_over(&mut self, from: SocketAddr, transport: Transport, packet: &[u8]) -> Option<Vec<u8>> {
        let unix = self.unix();
        let action =
            self.server
                .handle_client_message(from, transport, packet, self.now, unix, &mut self.reply);
        let mut out = match action {
            ClientAction::Reply => Some(self.reply.clone()),
            _ => None,
        };
        while let Some(cmd) = self.server.next_command() {
            match cmd {
                Command::BindRelay {
                    id, ip, reserve_for, ..
                } => {
                    self.relay_port += 2;
                    let local = SocketAddr::new(ip, self.relay_port);
                    let token = reserve_for.is_some().then_some([7u8; 8]);
                    // Like the driver: the reservation holds its quota unit until taken.
                    if let Some(user) = reserve_for {
                        self.reserved_for = Some(user);
                    }
                    self.server.relay_bound_reserved(id, Ok(local), token, self.now);
                }
                Command::TakeReservation { id, token } => {
                    // The harness's only reservation is [7; 8] on the port after the last bind.
                    let reserved = token == [7u8; 8] && self.reserved_for.is_some();
                    if let Some(user) = self.reserved_for.take().filter(|_| reserved) {
                        self.server.quotas.release(&user);
                    }
                    let bound = reserved
                        .then(|| SocketAddr::new("127.0.0.1".parse().unwrap(), self.relay_port + 1))
                        .ok_or(RelayBindError::NoReservation);
                    self.server.relay_bound(id, bound, self.now);
                }
                Command::SendToClient {
                    to,
                    transport: t,
                    bytes,
                } => {
                    assert_eq!((to, t), (from, transport));
                    out = Some(bytes);
                }
                Command::CloseRelay { .. } => {}
            }
        }
        out
    }
}

struct Client {
    addr: SocketAddr,
    transport: Transport,
    username: String,
    key: LongTermKey,
    nonce: Option<String>,
    tid: u8,
}

impl Client {
    fn rest(addr: &str, user: &str, expiry_from_now: i64) -> Self {
        let expiry = (T0_UNIX as i64 + expiry_from_now) as u64;
        let username = format!("{expiry}:{user}");
        let password = rest_password(secrets().signing(), &username);
        Self {
            addr: addr.parse().unwrap(),
            transport: Transport::Udp,
            key: long_term_key(&username, REALM, &password),
            username,
            nonce: None,
            tid: 0,
        }
    }

    fn request(&mut self, m: u16, attrs: impl Fn(&mut MessageBuilder<'_>), auth: bool) -> Vec<u8> {
        self.tid = self.tid.wrapping_add(1);
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, m, Class::Request, &[self.tid; 12]);
        attrs(&mut b);
        if auth {
            b.add(attr::USERNAME, self.username.as_bytes())
                .add(attr::REALM, REALM.as_bytes())
                .add(attr::NONCE, self.nonce.as_deref().unwrap_or("none").as_bytes())
                .add_integrity(&self.key);
        }
        b.add_fingerprint();
        b.finish();
        buf
    }

    /// Sends an authenticated request, doing the 401/438 round trip when needed.
    fn call(
        &mut self,
        h: &mut Harness,
        m: u16,
        attrs: impl Fn(&mut MessageBuilder<'_>) + Copy,
    ) -> (Class, Option<u16>, Vec<u8>) {
        for _ in 0..2 {
            let req = self.request(m, attrs, self.nonce.is_some());
            let resp = h.send_over(self.addr, self.transport, &req).expect("a reply");
            let msg = Message::parse(&resp).unwrap();
            let code = error_code(&msg);
            if matches!(code, Some(401) | Some(438))
                && msg.nonce().unwrap().is_some()
                && (self.nonce.is_none() || code == Some(438))
            {
                self.nonce = Some(msg.nonce().unwrap().unwrap().to_string());
                continue;
            }
            return (msg.class(), code, resp);
        }
        panic!("no answer after the nonce round trip");
    }

    fn allocate(&mut self, h: &mut Harness) -> (Class, Option<u16>, Vec<u8>) {
        self.call(h, method::ALLOCATE, |b| {
            b.add_u32(attr::REQUESTED_TRANSPORT, (UDP as u32) << 24);
        })
    }

    fn permission(&mut self, h: &mut Harness, peer: &str) -> Option<u16> {
        let peer: SocketAddr = peer.parse().unwrap();
        self.call(h, method::CREATE_PERMISSION, move |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, &peer);
        })
        .1
    }

    fn bind(&mut self, h: &mut Harness, ch: u16, peer: &str) -> Option<u16> {
        let peer: SocketAddr = peer.parse().unwrap();
        self.call(h, method::CHANNEL_BIND, move |b| {
            b.add_u32(attr::CHANNEL_NUMBER, u32::from(ch) << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, &peer);
        })
        .1
    }

    fn refresh(&mut self, h: &mut Harness, lifetime: u32) -> (Option<u16>, Option<u32>) {
        let (_, code, resp) = self.call(h, method::REFRESH, move |b| {
            b.add_u32(attr::LIFETIME, lifetime);
        });
        let msg = Message::parse(&resp).unwrap();
        (code, msg.u32_attr(attr::LIFETIME).unwrap())
    }
}

fn error_code(msg: &Message<'_>) -> Option<u16> {
    msg.get(attr::ERROR_CODE)
        .map(|v| u16::from(v[2]) * 100 + u16::from(v[3]))
}

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ch.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn peer_packet(h: &mut Harness, id: AllocId, from: &str, payload: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
    match h.server.handle_peer_packet(
        id,
        from.parse().unwrap(),
        &mut buf,
        PEER_HEADROOM,
        payload.len(),
        h.now,
    ) {
        PeerAction::ToClient {
            client, start, end, ..
        } => Some((client, buf[start..end].to_vec())),
        PeerAction::Drop => None,
    }
}

fn only_alloc(h: &mut Harness) -> AllocId {
    let mut id = None;
    while let Some(e) = h.server.next_event() {
        if let Event::Created { id: i, .. } = e {
            id = Some(i);
        }
    }
    id.expect("an allocation was created")
}

#[test]
fn binding_answers_mapped_address() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.7:4444", "alice", 3600);
    let req = c.request(method::BINDING, |_| {}, false);
    let resp = h.send(c.addr, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(), Some(c.addr));
    assert!(m.has_fingerprint());
}

#[test]
fn full_relay_flow_channel_and_indications() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.7:4444", "alice", 3600);
    let (class, code, resp) = c.allocate(&mut h);
    assert_eq!((class, code), (Class::Success, None));
    let m = Message::parse(&resp).unwrap();
    assert!(m.verify_integrity(&c.key));
    let relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relay.ip().to_string(), "203.0.113.9", "advertised address");
    assert_eq!(m.u32_attr(attr::LIFETIME).unwrap(), Some(600));
    let id = only_alloc(&mut h);

    // Without a permission nothing flows either way.
    assert!(peer_packet(&mut h, id, "127.0.0.1:7000", b"x").is_none());
    assert_eq!(c.permission(&mut h, "127.0.0.1:7000"), None);
    // Send indication to the peer.
    let mut send = Vec::new();
    let mut b = MessageBuilder::new(&mut send, method::SEND, Class::Indication, &[1; 12]);
    b.add_xor_address(attr::XOR_PEER_ADDRESS, &"127.0.0.1:7000".parse().unwrap())
        .add(attr::DATA, b"hi peer");
    b.finish();
    let unix = h.unix();
    match h
        .server
        .handle_client_packet(c.addr, &send, h.now, unix, &mut h.reply)
    {
        ClientAction::Relay {
            id: rid,
            peer,
            payload,
        } => {
            assert_eq!(
                (rid, peer.to_string().as_str(), payload),
                (id, "127.0.0.1:7000", &b"hi peer"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    // Data indication back.
    let (to, bytes) = peer_packet(&mut h, id, "127.0.0.1:7000", b"hello").unwrap();
    assert_eq!(to, c.addr);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!((m.method(), m.class()), (method::DATA, Class::Indication));
    assert_eq!(m.get(attr::DATA), Some(&b"hello"[..]));

    // Channel: ChannelData both ways.
    assert_eq!(c.bind(&mut h, 0x4001, "127.0.0.1:7001"), None);
    let cd = channel_data(0x4001, b"via channel");
    match h
        .server
        .handle_client_packet(c.addr, &cd, h.now, unix, &mut h.reply)
    {
        ClientAction::Relay { payload, peer, .. } => {
            assert_eq!(payload, b"via channel");
            assert_eq!(peer.port(), 7001);
        }
        other => panic!("{other:?}"),
    }
    let (_, bytes) = peer_packet(&mut h, id, "127.0.0.1:7001", b"back").unwrap();
    assert_eq!(bytes, channel_data(0x4001, b"back"));
    // Unbound channel number: dropped.
    let cd = channel_data(0x4002, b"x");
    assert_eq!(
        h.server
            .handle_client_packet(c.addr, &cd, h.now, unix, &mut h.reply),
        ClientAction::None
    );
    // Rebinding the channel to another peer, or the peer to another channel: 400.
    assert_eq!(c.bind(&mut h, 0x4001, "127.0.0.1:7002"), Some(400));
    assert_eq!(c.bind(&mut h, 0x4003, "127.0.0.1:7001"), Some(400));
    assert_eq!(c.bind(&mut h, 0x3FFF, "127.0.0.1:7009"), Some(400));
    let t = h.server.stats().traffic;
    assert_eq!((t.packets_to_peer, t.packets_to_client), (2, 2));
}

#[test]
fn default_policy_refuses_with_403_and_checks_each_send() {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
        }),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg, PeerPolicy::secure_default(), Quotas::new(10, 10));
    let mut c = Client::rest("192.0.2.7:4444", "alice", 3600);
    assert_eq!(c.allocate(&mut h).1, None);
    for peer in [
        "127.0.0.1:7000",
        "169.254.169.254:80",
        "10.0.0.1:5000",
        "192.168.1.1:1",
    ] {
        assert_eq!(c.permission(&mut h, peer), Some(403), "{peer}");
        assert_eq!(c.bind(&mut h, 0x4000, peer), Some(403), "{peer}");
    }
    // Several peers at once: all or nothing.
    let (_, code, _) = c.call(&mut h, method::CREATE_PERMISSION, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, &"198.51.100.1:1".parse().unwrap())
            .add_xor_address(attr::XOR_PEER_ADDRESS, &"10.0.0.1:1".parse().unwrap());
    });
    assert_eq!(code, Some(403));
    let (_, code, _) = c.call(&mut h, method::CREATE_PERMISSION, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, &"198.51.100.1:1".parse().unwrap())
            .add_xor_address(attr::XOR_PEER_ADDRESS, &"198.51.100.2:1".parse().unwrap());
    });
    assert_eq!(code, None);
    assert_eq!(c.bind(&mut h, 0x4000, "198.51.100.1:1"), None);
    let id = only_alloc(&mut h);
    let unix = h.unix();
    let cd = channel_data(0x4000, b"x");
    assert!(matches!(
        h.server
            .handle_client_packet(c.addr, &cd, h.now, unix, &mut h.reply),
        ClientAction::Relay { .. }
    ));
    // The policy changes (a new deny range): the next send is refused.
    h.server.set_policy(Arc::new(PeerPolicy::new(
        vec![],
        vec!["198.51.100.0/24".parse().unwrap()],
        vec![],
        vec![],
    )));
    assert_eq!(
        h.server
            .handle_client_packet(c.addr, &cd, h.now, unix, &mut h.reply),
        ClientAction::None
    );
    assert!(h.server.stats().denied_peers > 0);
    assert_eq!(h.server.allocations(h.now).next().map(|a| a.id), Some(id));
}

#[test]
fn a_policy_change_blocks_an_existing_permissions_traffic() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.7:4444", "alice", 3600);
    assert_eq!(c.allocate(&mut h).1, None);
    assert_eq!(c.permission(&mut h, "127.0.0.2:7000"), None);
    let relayed = |a: &ClientAction<'_>| matches!(a, ClientAction::Relay { .. });
    assert!(relayed(&send_indication(&mut h, c.addr, "127.0.0.2:7000")));
    // Another port of the permitted address is judged for itself.
    assert!(relayed(&send_indication(&mut h, c.addr, "127.0.0.2:7001")));
    assert_eq!(
        send_indication(&mut h, c.addr, "127.0.0.2:3478"),
        ClientAction::None,
        "a refused port of a permitted address"
    );

    // The permission stays; its traffic is refused from the next packet on, every packet.
    let denied = h.server.stats().denied_peers;
    h.server.set_policy(Arc::new(PeerPolicy::new(
        vec![],
        vec!["127.0.0.2/32".parse().unwrap()],
        vec![],
        vec![],
    )));
    for _ in 0..3 {
        assert_eq!(
            send_indication(&mut h, c.addr, "127.0.0.2:7000"),
            ClientAction::None
        );
    }
    assert_eq!(h.server.stats().denied_peers, denied + 3);
    let info = h.server.allocations(h.now).next().unwrap();
    assert_eq!(info.permissions, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);

    // And a policy that allows it again reopens it without a new CreatePermission.
    h.server.set_policy(Arc::new(policy_allowing_loopback()));
    assert!(relayed(&send_indication(&mut h, c.addr, "127.0.0.2:7000")));
}

#[test]
fn auth_failures() {
    let mut h = Harness::default();
    // Expired REST credential: 401 on Allocate.
    let mut c = Client::rest("192.0.2.1:1000", "alice", -10);
    assert_eq!(c.allocate(&mut h).1, Some(401));
    // Forged password.
    let mut c = Client::rest("192.0.2.1:1001", "alice", 3600);
    c.key = long_term_key(&c.username, REALM, "forged");
    assert_eq!(c.allocate(&mut h).1, Some(401));
    // Unknown static user, and a good one.
    let mut c = Client::rest("192.0.2.1:1002", "x", 3600);
    c.username = "mallory".into();
    c.key = long_term_key("mallory", REALM, "pw");
    assert_eq!(c.allocate(&mut h).1, Some(401));
    let mut c = Client::rest("192.0.2.1:1003", "x", 3600);
    c.username = "bob".into();
    c.key = long_term_key("bob", REALM, "bobpw");
    assert_eq!(c.allocate(&mut h).1, None);
    // Another username on the same 5-tuple: 441.
    let mut other = Client::rest("192.0.2.1:1003", "carol", 3600);
    other.nonce = c.nonce.clone();
    assert_eq!(other.refresh(&mut h, 600).0, Some(441));
    // A nonce for another client is not valid: 438, then a fresh one works.
    let mut d = Client::rest("192.0.2.1:1004", "dave", 3600);
    d.nonce = c.nonce.clone();
    let req = d.request(
        method::ALLOCATE,
        |b| {
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        },
        true,
    );
    let resp = h.send(d.addr, &req).unwrap();
    assert_eq!(error_code(&Message::parse(&resp).unwrap()), Some(438));
    // Missing USERNAME with MESSAGE-INTEGRITY: 400.
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::ALLOCATE, Class::Request, &[1; 12]);
    b.add_integrity(b"k");
    b.finish();
    let resp = h.send("192.0.2.1:1005".parse().unwrap(), &buf).unwrap();
    assert_eq!(error_code(&Message::parse(&resp).unwrap()), Some(400));
    let s = h.server.stats();
    assert!(s.auth_failures[AuthFailure::Expired as usize] >= 1);
    assert!(s.auth_failures[AuthFailure::BadIntegrity as usize] >= 1);
    assert!(s.auth_failures[AuthFailure::UnknownUser as usize] >= 1);
    assert!(s.auth_failures[AuthFailure::WrongCredentials as usize] >= 1);
}

#[test]
fn nonce_goes_stale() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.1:1000", "alice", 100_000);
    assert_eq!(c.allocate(&mut h).1, None);
    let old_nonce = c.nonce.clone();
    h.advance(599);
    assert_eq!(c.refresh(&mut h, 600).0, None);
    h.advance(2);
    // The call helper takes the 438 and retries with the fresh nonce.
    assert_eq!(c.refresh(&mut h, 600).0, None);
    assert_ne!(c.nonce, old_nonce);
    assert!(h.server.stats().auth_failures[AuthFailure::Stale as usize] >= 1);
}

#[test]
fn rest_expiry_only_checked_at_allocate() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.1:1000", "alice", 30);
    assert_eq!(c.allocate(&mut h).1, None);
    h.advance(300);
    // The credential expired 270 s ago: refreshes, permissions and channels still work.
    assert_eq!(c.refresh(&mut h, 600), (None, Some(600)));
    assert_eq!(c.permission(&mut h, "127.0.0.1:9"), None);
    assert_eq!(c.bind(&mut h, 0x4000, "127.0.0.1:9"), None);
    // A new allocation with it is refused.
    let mut again = Client::rest("192.0.2.1:1001", "alice", 30);
    assert_eq!(again.allocate(&mut h).1, Some(401));
}

#[test]
fn lifetimes_clamped_refresh_and_expiry() {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
        }),
        max_allocation_age: Duration::from_secs(5000),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg, policy_allowing_loopback(), Quotas::new(10, 10));
    let mut c = Client::rest("192.0.2.1:1000", "alice", 100_000);
    let (_, _, resp) = c.call(&mut h, method::ALLOCATE, |b| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add_u32(attr::LIFETIME, 99_999);
    });
    assert_eq!(
        Message::parse(&resp).unwrap().u32_attr(attr::LIFETIME).unwrap(),
        Some(3600)
    );
    assert_eq!(c.refresh(&mut h, 10), (None, Some(600)), "below default: default");
    assert_eq!(c.refresh(&mut h, 99_999), (None, Some(3600)), "above max: max");
    h.advance(3000);
    assert_eq!(
        c.refresh(&mut h, 3600),
        (None, Some(2000)),
        "bounded by max_allocation_age"
    );
    h.advance(2001);
    assert_eq!(h.server.allocation_count(), 0, "expired");
    let mut closed = false;
    while let Some(e) = h.server.next_event() {
        if let Event::Closed { reason, .. } = e {
            assert_eq!(reason, CloseReason::Expired);
            closed = true;
        }
    }
    assert!(closed);
    assert_eq!(c.refresh(&mut h, 600).0, Some(437));
}

#[test]
fn refresh_zero_deletes_and_frees_quota() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.1:1000", "alice", 3600);
    assert_eq!(c.allocate(&mut h).1, None);
    assert_eq!(c.refresh(&mut h, 0), (None, Some(0)));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.quotas.total(), 0);
    assert_eq!(c.refresh(&mut h, 600).0, Some(437));
    // The 5-tuple can allocate again.
    assert_eq!(c.allocate(&mut h).1, None);
}

#[test]
fn allocate_retransmission_and_mismatch() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.1:1000", "alice", 3600);
    let (_, _, first) = c.allocate(&mut h);
    // Same transaction again: the same success.
    let req = c.request(
        method::ALLOCATE,
        |b| {
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        },
        true,
    );
    c.tid -= 1;
    let req_again = c.request(
        method::ALLOCATE,
        |b| {
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        },
        true,
    );
    assert_eq!(req, req_again);
    let r1 = h.send(c.addr, &req).unwrap();
    let m = Message::parse(&r1).unwrap();
    assert_eq!(
        error_code(&m),
        Some(437),
        "a new transaction on an allocated 5-tuple"
    );
    // A retransmission of the original request (the authenticated one was transaction 2):
    // the same success, the same relay address.
    c.tid = 1;
    let (class, code, again) = c.allocate(&mut h);
    assert_eq!((class, code), (Class::Success, None));
    let relay = |b: &[u8]| {
        Message::parse(b)
            .unwrap()
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
    };
    assert_eq!(relay(&again), relay(&first));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn quotas_per_user_and_total() {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
        }),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg, policy_allowing_loopback(), Quotas::new(4, 2));
    let mut codes = Vec::new();
    for port in 0..3 {
        let mut c = Client::rest(&format!("192.0.2.1:{}", 2000 + port), "alice", 3600);
        codes.push(c.allocate(&mut h).1);
    }
    assert_eq!(codes, vec![None, None, Some(486)]);
    let mut codes = Vec::new();
    for port in 0..3 {
        let mut c = Client::rest(&format!("192.0.2.2:{}", 2000 + port), &format!("u{port}"), 3600);
        codes.push(c.allocate(&mut h).1);
    }
    assert_eq!(codes, vec![None, None, Some(508)]);
    assert_eq!(h.server.stats().quota_user, 1);
    assert_eq!(h.server.stats().quota_total, 1);
}

#[test]
fn permissions_and_channels_time_out() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.1:1000", "alice", 100_000);
    let (_, code, _) = c.call(&mut h, method::ALLOCATE, |b| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add_u32(attr::LIFETIME, 3600);
    });
    assert_eq!(code, None);
    let id = only_alloc(&mut h);
    assert_eq!(c.permission(&mut h, "127.0.0.1:7000"), None);
    assert_eq!(c.bind(&mut h, 0x4000, "127.0.0.1:7001"), None);
    h.advance(299);
    assert!(peer_packet(&mut h, id, "127.0.0.1:7000", b"x").is_some());
    h.advance(2);
    // The permissions (300 s) are gone; the channel (600 s) is bound but its peer's
    // permission lapsed too, so nothing flows until the client refreshes.
    assert!(peer_packet(&mut h, id, "127.0.0.1:7000", b"x").is_none());
    assert!(peer_packet(&mut h, id, "127.0.0.1:7001", b"x").is_none());
    assert_eq!(
        c.bind(&mut h, 0x4000, "127.0.0.1:7001"),
        None,
        "refresh of the binding"
    );
    let (_, bytes) = peer_packet(&mut h, id, "127.0.0.1:7001", b"y").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"y"));
    h.advance(601);
    let unix = h.unix();
    let cd = channel_data(0x4000, b"z");
    assert_eq!(
        h.server
            .handle_client_packet(c.addr, &cd, h.now, unix, &mut h.reply),
        ClientAction::None
    );
}

#[test]
fn ipv6_allocations_and_family_checks() {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
        }),
        relay_v6: Some(RelayIp {
            bind: "::1".parse().unwrap(),
            advertise: "2001:db8::5".parse().unwrap(),
        }),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg, PeerPolicy::secure_default(), Quotas::new(10, 10));
    let mut c = Client::rest("[2001:db8::9]:1000", "alice", 3600);
    let (_, code, resp) = c.call(&mut h, method::ALLOCATE, |b| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_eq!(code, None);
    let relay = Message::parse(&resp)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relay.ip().to_string(), "2001:db8::5");
    assert_eq!(c.permission(&mut h, "198.51.100.1:1"), Some(443));
    assert_eq!(c.permission(&mut h, "[2001:db8:1::1]:1"), None);
    assert_eq!(c.permission(&mut h, "[::ffff:127.0.0.1]:1"), Some(403));
    // No IPv6 relay configured: 440.
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.1:1000", "alice", 3600);
    let (_, code, _) = c.call(&mut h, method::ALLOCATE, |b| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_eq!(code, Some(440));
}

#[test]
fn bad_requests() {
    let mut h = Harness::default();
    let mut c = Client::rest("192.0.2.1:1000", "alice", 3600);
    let (_, code, _) = c.call(&mut h, method::ALLOCATE, |_| {});
    assert_eq!(code, Some(400), "REQUESTED-TRANSPORT missing");
    let (_, code, _) = c.call(&mut h, method::ALLOCATE, |b| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 6 << 24);
    });
    assert_eq!(code, Some(442), "TCP relay not offered over this");
    // Unknown comprehension-required attribute: 420 listing it.
    let req = c.request(
        method::BINDING,
        |b| {
            b.add(0x7abc, b"?");
        },
        false,
    );
    let resp = h.send(c.addr, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(error_code(&m), Some(420));
    assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x7a, 0xbc][..]));
    // Garbage of every kind is dropped without a reply or state.
    for junk in [
        &b""[..],
        b"\x00",
        b"\xff\xff\xff\xff",
        b"\x40\x00\x00\x10abc",
        &[0u8; 20][..],
    ] {
        assert_eq!(h.send(c.addr, junk), None);
    }
    assert_eq!(h.server.state_size(), 0);
}

#[test]
fn unauthenticated_flood_leaves_no_state() {
    let mut h = Harness::default();
    for i in 0..20_000u32 {
        let from = SocketAddr::new(
            IpAddr::from((0xC000_0200u32 + (i % 250)).to_be_bytes()),
            (1024 + i % 60_000) as u16,
        );
        let mut c = Client::rest(&from.to_string(), &format!("user{i}"), 3600);
        // Unauthenticated Allocate, forged credentials, stale nonces, Refresh, ChannelData.
        let req = c.request(
            method::ALLOCATE,
            |b| {
                b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
            },
            i % 2 == 0,
        );
        h.send(from, &req);
        c.nonce = Some(format!("{i:036}"));
        c.key = [0; 16];
        let req = c.request(method::REFRESH, |_| {}, true);
        h.send(from, &req);
        h.send(from, &channel_data(0x4000, b"x"));
    }
    assert_eq!(h.server.state_size(), 0);
    assert_eq!(h.server.quotas.total(), 0);
}

#[test]
fn kick_user_closes_allocations() {
    let mut h = Harness::default();
    let mut a = Client::rest("192.0.2.1:1000", "alice", 3600);
    let mut b = Client::rest("192.0.2.1:1001", "bob2", 3600);
    assert_eq!(a.allocate(&mut h).1, None);
    assert_eq!(b.allocate(&mut h).1, None);
    assert_eq!(h.server.kick_user("alice"), 1);
    assert_eq!(h.server.allocation_count(), 1);
    assert!(std::iter::from_fn(|| h.server.next_command()).any(|c| matches!(c, Command::CloseRelay { .. })));
}

/// Installs a ban list on the harness's credentials.
fn ban(h: &mut Harness, nets: &[&str]) {
    let mut creds = (*h.server.creds).clone();
    creds.banned = nets.iter().map(|n| n.parse().unwrap()).collect();
    h.server.set_credentials(Arc::new(creds));
}

#[test]
fn banned_client_allocate_gets_403_and_no_state() {
    let mut h = Harness::default();
    ban(&mut h, &["198.51.100.0/24", "2001:db8:bad::/48"]);
    // Unauthenticated: 403 at once, no 401 round trip.
    let mut c = Client::rest("198.51.100.7:5000", "alice", 3600);
    let (class, code, resp) = c.allocate(&mut h);
    assert_eq!((class, code), (Class::Error, Some(403)));
    let msg = Message::parse(&resp).unwrap();
    assert!(!msg.has_integrity());
    assert!(msg.has_fingerprint());
    // Authenticated with a valid nonce (from a Refresh challenge): still 403.
    let req = c.request(method::REFRESH, |_| {}, false);
    let resp = h.send(c.addr, &req).unwrap();
    c.nonce = Some(
        Message::parse(&resp)
            .unwrap()
            .nonce()
            .unwrap()
            .unwrap()
            .to_string(),
    );
    let (_, code, _) = c.allocate(&mut h);
    assert_eq!(code, Some(403));
    // IPv4-mapped spelling of a banned IPv4 address, and a banned IPv6 network.
    for addr in ["[::ffff:198.51.100.9]:5000", "[2001:db8:bad::1]:1"] {
        let mut c = Client::rest(addr, "alice", 3600);
        assert_eq!(c.allocate(&mut h).1, Some(403), "{addr}");
    }
    assert_eq!(h.server.stats().allocate_banned, 4);
    // Only the Refresh was challenged: no Allocate reached authentication.
    assert_eq!(h.server.stats().auth_failures, [1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(h.server.state_size(), 0);
    assert_eq!(h.server.quotas.total(), 0);
    assert!(h.server.next_event().is_none());
    // Neighbours outside the bans allocate normally.
    for addr in ["198.51.101.7:5000", "[2001:db8:600d::1]:1"] {
        let mut c = Client::rest(addr, "alice", 3600);
        assert_eq!(c.allocate(&mut h).1, None, "{addr}");
    }
    assert_eq!(h.server.allocation_count(), 2);
    // Lifting the ban lets the client in.
    ban(&mut h, &[]);
    let mut c = Client::rest("198.51.100.7:5000", "alice", 3600);
    assert_eq!(c.allocate(&mut h).1, None);
    assert_eq!(h.server.stats().allocate_banned, 4);
}

#[test]
fn kick_clients_closes_matching_allocations() {
    let mut h = Harness::default();
    let mut a = Client::rest("192.0.2.1:1000", "alice", 3600);
    let mut b = Client::rest("192.0.2.1:1001", "bob2", 3600);
    let mut c = Client::rest("203.0.113.5:1000", "carol", 3600);
    let mut d = Client::rest("[::ffff:192.0.2.200]:1000", "dave", 3600);
    for cl in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(cl.allocate(&mut h).1, None);
    }
    let mut created = HashMap::new();
    while let Some(e) = h.server.next_event() {
        if let Event::Created { id, client, .. } = e {
            created.insert(client, id);
        }
    }
    while h.server.next_command().is_some() {}
    let net: Cidr = "192.0.2.0/24".parse().unwrap();
    assert_eq!(h.server.kick_clients(|ip| net.contains(ip)), 3);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.quotas.total(), 1);
    let mut closed = Vec::new();
    while let Some(e) = h.server.next_event() {
        match e {
            Event::Closed {
                id,
                reason: CloseReason::Kicked,
                ..
            } => closed.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    closed.sort();
    let mut want = vec![created[&a.addr], created[&b.addr], created[&d.addr]];
    want.sort();
    assert_eq!(closed, want);
    let relays_closed = std::iter::from_fn(|| h.server.next_command())
        .filter(|c| matches!(c, Command::CloseRelay { .. }))
        .count();
    assert_eq!(relays_closed, 3);
    // The kicked 5-tuple is free again; the others are untouched.
    assert_eq!(a.refresh(&mut h, 600).0, Some(437));
    assert_eq!(c.refresh(&mut h, 600).0, None);
    assert_eq!(h.server.kick_clients(|_| false), 0);
}

#[test]
fn allocations_lists_live_state() {
    let mut h = Harness::default();
    let mut a = Client::rest("192.0.2.1:1000", "alice", 3600);
    assert_eq!(a.allocate(&mut h).1, None);
    let (id_a, relay_a) = match h.server.next_event() {
        Some(Event::Created { id, relay, .. }) => (id, relay),
        other => panic!("unexpected {other:?}"),
    };
    let t_created = h.now;
    assert_eq!(a.permission(&mut h, "127.0.0.1:7000"), None);
    h.advance(200);
    assert_eq!(a.bind(&mut h, 0x4001, "127.0.0.2:7001"), None);
    let unix = h.unix();
    let cd = channel_data(0x4001, b"hello");
    assert!(matches!(
        h.server
            .handle_client_packet(a.addr, &cd, h.now, unix, &mut h.reply),
        ClientAction::Relay { .. }
    ));
    assert!(peer_packet(&mut h, id_a, "127.0.0.2:7001", b"hi!").is_some());
    let mut b = Client::rest("192.0.2.2:1000", "bob2", 3600);
    assert_eq!(b.allocate(&mut h).1, None);
    h.advance(99);

    let mut list: Vec<AllocationInfo> = h.server.allocations(h.now).collect();
    list.sort_by_key(|i| i.id);
    assert_eq!(list.len(), 2);
    let info = &list[0];
    assert_eq!(info.id, id_a);
    assert_eq!(info.username, a.username);
    assert_eq!(info.user, "alice");
    assert_eq!(info.client, a.addr);
    assert_eq!(info.relay, relay_a);
    assert_eq!(info.age, h.now - t_created);
    assert_eq!(info.expires_in, Duration::from_secs(600 - 299));
    assert_eq!(
        info.permissions,
        vec![
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "127.0.0.2".parse().unwrap()
        ]
    );
    assert_eq!(info.channels, vec![(0x4001, "127.0.0.2:7001".parse().unwrap())]);
    assert_eq!(
        info.traffic,
        Traffic {
            packets_to_peer: 1,
            bytes_to_peer: 5,
            packets_to_client: 1,
            bytes_to_client: 3,
        }
    );
    assert_eq!(list[1].user, "bob2");
    assert!(list[1].permissions.is_empty() && list[1].channels.is_empty());
    assert_eq!(list[1].traffic, Traffic::default());

    // Two seconds on, before any sweep: the first permission (300 s) has lapsed.
    let later = h.now + Duration::from_secs(2);
    let info = h.server.allocations(later).find(|i| i.id == id_a).unwrap();
    assert_eq!(info.permissions, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(info.channels.len(), 1);
    // At 599 s the second permission (installed at 200 s) has lapsed too; the channel
    // (600 s from 200 s) has not. At 600 s the allocation itself is left out.
    let t = t_created + Duration::from_secs(599);
    let info = h.server.allocations(t).find(|i| i.id == id_a).unwrap();
    assert_eq!(info.expires_in, Duration::from_secs(1));
    assert!(info.permissions.is_empty());
    assert_eq!(info.channels.len(), 1);
    assert_eq!(
        h.server.allocations(t_created + Duration::from_secs(600)).count(),
        1
    );
}

#[test]
fn alloc_ids_carry_the_shard() {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
        }),
        shard: 5,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg, policy_allowing_loopback(), Quotas::new(10, 10));
    let mut c = Client::rest("192.0.2.1:1000", "alice", 3600);
    assert_eq!(c.allocate(&mut h).1, None);
    assert_eq!(only_alloc(&mut h).shard(), 5);
}

#[test]
fn bandwidth_cap_drops_excess() {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
        }),
        bandwidth_limit: 1000,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg, policy_allowing_loopback(), Quotas::new(10, 10));
    let mut c = Client::rest("192.0.2.1:1000", "alice", 3600);
    assert_eq!(c.allocate(&mut h).1, None);
    assert_eq!(c.bind(&mut h, 0x4000, "127.0.0.1:7000"), None);
    let unix = h.unix();
    let cd = channel_data(0x4000, &[0u8; 400]);
    let mut relayed = 0;
    for _ in 0..5 {
        if matches!(
            h.server
                .handle_client_packet(c.addr, &cd, h.now, unix, &mut h.reply),
            ClientAction::Relay { .. }
        ) {
            relayed += 1;
        }
    }
    assert_eq!(relayed, 2, "1000 bytes of burst");
    h.now += Duration::from_millis(500);
    assert!(matches!(
        h.server
            .handle_client_packet(c.addr, &cd, h.now, unix, &mut h.reply),
        ClientAction::Relay { .. }
    ));
    assert!(h.server.stats().bandwidth_drops >= 3);
}

#[test]
fn minted_by_core_accepted() {
    // Credentials minted the way /v1/ice-servers mints them authenticate here.
    let mut h = Harness::default();
    let (username, password) = mint(secrets().signing(), "zed", T0_UNIX, 60);
    let mut c = Client::rest("192.0.2.1:1000", "zed", 60);
    c.username = username.clone();
    c.key = long_term_key(&username, REALM, &password);
    assert_eq!(c.allocate(&mut h).1, None);
}

#[test]
fn even_port_reservations() {
    let mut h = Harness::default();
    let mut a = Client::rest("192.0.2.1:1000", "alice", 3600);
    let (_, code, resp) = a.call(&mut h, method::ALLOCATE, |b| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    assert_eq!(code, None);
    let m = Message::parse(&resp).unwrap();
    let relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relay.port() % 2, 0);
    let token = m.get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(token, [7u8; 8]);
    // Another 5-tuple takes the reserved port with the token.
    let mut b = Client::rest("192.0.2.1:1001", "alice", 3600);
    let t: [u8; 8] = token.as_slice().try_into().unwrap();
    let (_, code, resp) = b.call(&mut h, method::ALLOCATE, move |m| {
        m.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::RESERVATION_TOKEN, &t);
    });
    assert_eq!(code, None);
    let relay2 = Message::parse(&resp)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relay2.port(), relay.port() + 1);
    // An unknown token: 508, and the quota is given back.
    let mut c = Client::rest("192.0.2.1:1002", "carol", 3600);
    let (_, code, _) = c.call(&mut h, method::ALLOCATE, |m| {
        m.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::RESERVATION_TOKEN, &[1; 8]);
    });
    assert_eq!(code, Some(508));
    // A token with EVEN-PORT, or of the wrong size: 400.
    let (_, code, _) = c.call(&mut h, method::ALLOCATE, |m| {
        m.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::RESERVATION_TOKEN, &[7; 8])
            .add(attr::EVEN_PORT, &[0]);
    });
    assert_eq!(code, Some(400));
    let (_, code, _) = c.call(&mut h, method::ALLOCATE, |m| {
        m.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::RESERVATION_TOKEN, &[7; 4]);
    });
    assert_eq!(code, Some(400));
    assert_eq!(h.server.quotas.total(), 2);
}

#[test]
fn a_reservation_counts_against_the_users_quota() {
    // Quota 3 per user: Allocate with the R bit holds two units (the allocation and the
    // reserved port), and deleting the allocation leaves the reservation's unit held.
    let mut h = Harness::default();
    let reserve = |b: &mut MessageBuilder<'_>| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    };
    let mut a = Client::rest("192.0.2.1:1000", "alice", 3600);
    assert_eq!(a.call(&mut h, method::ALLOCATE, reserve).1, None);
    assert_eq!(h.server.quotas.total(), 2);
    assert_eq!(a.refresh(&mut h, 0).0, None);
    assert_eq!(h.server.quotas.total(), 1, "the reservation still holds its unit");
    // Two units are left: another reserving Allocate would need them both, and gets 486
    // with nothing counted when only one is free.
    let mut b = Client::rest("192.0.2.1:1001", "alice", 3600);
    assert_eq!(b.allocate(&mut h).1, None);
    let mut c = Client::rest("192.0.2.1:1002", "alice", 3600);
    assert_eq!(c.call(&mut h, method::ALLOCATE, reserve).1, Some(486));
    assert_eq!(h.server.quotas.total(), 2);
    // No token made (the driver's table was full): the unit comes back at once.
    let mut d = Client::rest("192.0.2.1:1003", "dave", 3600);
    let req = d.request(method::ALLOCATE, reserve, false);
    let challenge = h.send(d.addr, &req).unwrap();
    d.nonce = Some(
        Message::parse(&challenge)
            .unwrap()
            .nonce()
            .unwrap()
            .unwrap()
            .to_string(),
    );
    let req = d.request(method::ALLOCATE, reserve, true);
    let unix = h.unix();
    h.server
        .handle_client_packet(d.addr, &req, h.now, unix, &mut h.reply);
    let Some(Command::BindRelay { id, reserve_for, .. }) = h.server.next_command() else {
        panic!("a bind");
    };
    assert_eq!(reserve_for.as_deref(), Some("dave"));
    assert_eq!(h.server.quotas.total(), 4);
    h.server
        .relay_bound_reserved(id, Ok("127.0.0.1:50100".parse().unwrap()), None, h.now);
    assert_eq!(h.server.quotas.total(), 3);
}

fn harness_with_own_relay() -> Harness {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "203.0.113.9".parse().unwrap(),
        }),
        ..ServerConfig::default()
    };
    let policy = PeerPolicy::new(
        vec![],
        vec![],
        vec!["203.0.113.9".parse().unwrap()],
        vec![(3478, 3478)],
    )
    .with_relays(vec!["203.0.113.9".parse().unwrap()], (49152, 65535));
    Harness::new(cfg, policy, Quotas::new(100, 10))
}

fn send_indication(h: &mut Harness, from: SocketAddr, peer: &str) -> ClientAction<'static> {
    let mut send = Vec::new();
    let mut b = MessageBuilder::new(&mut send, method::SEND, Class::Indication, &[3; 12]);
    b.add_xor_address(attr::XOR_PEER_ADDRESS, &peer.parse().unwrap())
        .add(attr::DATA, b"to the host");
    b.finish();
    let unix = h.unix();
    match h
        .server
        .handle_client_packet(from, &send, h.now, unix, &mut h.reply)
    {
        ClientAction::Relay { id, peer, .. } => ClientAction::Relay {
            id,
            peer,
            payload: b"",
        },
        ClientAction::Reply => ClientAction::Reply,
        ClientAction::None => ClientAction::None,
    }
}

#[test]
fn own_relay_address_only_reaches_live_allocations() {
    let mut h = harness_with_own_relay();
    let mut a = Client::rest("192.0.2.1:1000", "alice", 3600);
    let mut b = Client::rest("192.0.2.2:1000", "bob", 3600);
    assert_eq!(a.allocate(&mut h).1, None);
    let (_, _, resp) = b.allocate(&mut h);
    let b_relay = Message::parse(&resp)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    let mut ids = Vec::new();
    while let Some(e) = h.server.next_event() {
        if let Event::Created { id, .. } = e {
            ids.push(id);
        }
    }
    let a_id = ids[0];
    // A port of the relay range that no allocation holds is a host service: 403, for a
    // permission and for a channel alike.
    assert_eq!(a.permission(&mut h, "203.0.113.9:60001"), Some(403));
    assert_eq!(a.bind(&mut h, 0x4001, "203.0.113.9:60001"), Some(403));
    // Bob's relay address is another allocation: allowed.
    let b_str = b_relay.to_string();
    assert_eq!(a.bind(&mut h, 0x4002, &b_str), None);
    match send_indication(&mut h, a.addr, &b_str) {
        ClientAction::Relay { peer, .. } => assert_eq!(peer, b_relay),
        other => panic!("{other:?}"),
    }
    // The permission covers the address; a Send to another port of it is still refused.
    assert_eq!(
        send_indication(&mut h, a.addr, "203.0.113.9:60001"),
        ClientAction::None
    );
    // Nothing from a host service reaches Alice either.
    assert!(peer_packet(&mut h, a_id, "203.0.113.9:60001", b"reply").is_none());
    assert!(peer_packet(&mut h, a_id, &b_str, b"from bob").is_some());
    // Once Bob's allocation is gone, its port is no allocation any more.
    assert_eq!(b.refresh(&mut h, 0).0, None);
    assert_eq!(send_indication(&mut h, a.addr, &b_str), ClientAction::None);
    assert!(peer_packet(&mut h, a_id, &b_str, b"late").is_none());
}

#[test]
fn shards_share_the_relay_port_registry() {
    let ports = Arc::new(RelayPorts::new());
    let share = |h: &mut Harness| {
        let placeholder = Server::new(
            ServerConfig::default(),
            [0; 32],
            Arc::new(Credentials::default()),
            Arc::new(PeerPolicy::secure_default()),
            Arc::new(Quotas::new(1, 1)),
            h.now,
        );
        let server = std::mem::replace(&mut h.server, placeholder);
        h.server = server.with_relay_ports(Arc::clone(&ports));
    };
    let mut h1 = harness_with_own_relay();
    let mut h2 = harness_with_own_relay();
    share(&mut h1);
    share(&mut h2);
    h2.relay_port = 51000;
    let mut a = Client::rest("192.0.2.1:1000", "alice", 3600);
    let mut b = Client::rest("192.0.2.2:1000", "bob", 3600);
    assert_eq!(a.allocate(&mut h1).1, None);
    let (_, _, resp) = b.allocate(&mut h2);
    let b_relay = Message::parse(&resp)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(a.permission(&mut h1, &b_relay.to_string()), None);
}

#[test]
fn unauthenticated_answers_are_limited_per_source() {
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "203.0.113.9".parse().unwrap(),
        }),
        unauthenticated_rate: 10,
        unauthenticated_burst: 20,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg, policy_allowing_loopback(), Quotas::new(100, 3));
    let victim: SocketAddr = "198.51.100.7:3478".parse().unwrap();
    let mut spoofed = Client::rest(&victim.to_string(), "x", 3600);
    let binding = spoofed.request(method::BINDING, |_| {}, false);
    let allocate = spoofed.request(
        method::ALLOCATE,
        |b| {
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        },
        false,
    );
    let mut answered = 0;
    for i in 0..1000 {
        let req = if i % 2 == 0 { &binding } else { &allocate };
        let from = SocketAddr::new(victim.ip(), 1024 + i as u16);
        answered += usize::from(h.send(from, req).is_some());
    }
    assert_eq!(answered, 20, "the burst, whatever the source port");
    assert_eq!(h.server.stats().unauthenticated_drops, 980);
    h.advance(1);
    let answered = (0..100).filter(|_| h.send(victim, &binding).is_some()).count();
    assert_eq!(answered, 10, "then the rate");
    // Another source is not held back, and an allocation's own requests never are.
    let mut c = Client::rest("192.0.2.50:4000", "carol", 3600);
    assert_eq!(c.allocate(&mut h).1, None);
    for _ in 0..100 {
        assert_eq!(c.refresh(&mut h, 600).0, None);
    }
    // No SOFTWARE attribute by default.
    let resp = h.send("192.0.2.51:4000".parse().unwrap(), &binding).unwrap();
    assert!(Message::parse(&resp).unwrap().get(attr::SOFTWARE).is_none());
}

#[test]
fn rest_expiry_beyond_the_longest_mint_is_refused() {
    let mut h = Harness::default();
    let max = h.server.cfg.max_credential_expiry.as_secs() as i64;
    let mut ok = Client::rest("192.0.2.1:1000", "alice", max);
    assert_eq!(ok.allocate(&mut h).1, None);
    for far in [max + 1, 10 * 365 * 86_400] {
        let mut c = Client::rest("192.0.2.1:1001", "alice", far);
        assert_eq!(c.allocate(&mut h).1, Some(401), "{far}");
    }
    // 2^64 - 1 as the expiry.
    let mut c = Client::rest("192.0.2.1:1002", "alice", 0);
    c.username = format!("{}:alice", u64::MAX);
    let password = rest_password(secrets().signing(), &c.username);
    c.key = long_term_key(&c.username, REALM, &password);
    assert_eq!(c.allocate(&mut h).1, Some(401));
    assert_eq!(
        h.server.stats().auth_failures[AuthFailure::ExpiryTooFar as usize],
        3
    );
}

#[test]
fn relay_bind_failures_answer_by_kind_and_give_the_quota_back() {
    let mut h = Harness::default();
    let cases = [
        (io::ErrorKind::AddrInUse, 508),
        (io::ErrorKind::OutOfMemory, 508),
        (io::ErrorKind::AddrNotAvailable, 500),
        (io::ErrorKind::PermissionDenied, 500),
    ];
    for (i, (kind, code)) in cases.into_iter().enumerate() {
        let mut c = Client::rest(&format!("192.0.2.1:{}", 2000 + i), "alice", 3600);
        let allocate = |b: &mut MessageBuilder<'_>| {
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        };
        let req = c.request(method::ALLOCATE, allocate, false);
        let challenge = h.send(c.addr, &req).unwrap();
        c.nonce = Some(
            Message::parse(&challenge)
                .unwrap()
                .nonce()
                .unwrap()
                .unwrap()
                .to_string(),
        );
        let req = c.request(method::ALLOCATE, allocate, true);
        let unix = h.unix();
        h.server
            .handle_client_packet(c.addr, &req, h.now, unix, &mut h.reply);
        let Some(Command::BindRelay { id, .. }) = h.server.next_command() else {
            panic!("a bind");
        };
        assert_eq!(h.server.quotas.total(), 1);
        let error = RelayBindError::Io(io::Error::from(kind));
        assert_eq!(error.is_capacity(), code == 508, "{kind:?}");
        h.server.relay_bound(id, Err(error), h.now);
        let Some(Command::SendToClient { to, bytes, .. }) = h.server.next_command() else {
            panic!("an answer");
        };
        assert_eq!(to, c.addr);
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(
            (msg.class(), error_code(&msg)),
            (Class::Error, Some(code)),
            "{kind:?}"
        );
        assert!(msg.verify_integrity(&c.key), "signed with the request's key");
        assert_eq!(h.server.quotas.total(), 0, "{kind:?}");
        assert_eq!(h.server.state_size(), 0, "{kind:?}");
    }
}

#[test]
fn close_reasons_have_the_words_of_session_history() {
    let words = [
        (CloseReason::Deleted, "deleted"),
        (CloseReason::Expired, "expired"),
        (CloseReason::Kicked, "kicked"),
        (CloseReason::Shutdown, "shutdown"),
        (CloseReason::Disconnected, "disconnected"),
    ];
    for (reason, word) in words {
        assert_eq!(reason.as_str(), word);
    }
    // Debug stays the variant's name (what history rows were written with so far).
    assert_eq!(format!("{:?}", CloseReason::Kicked), "Kicked");
}

#[test]
fn typed_requests_map_their_errors_to_stun_codes() {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::ALLOCATE, Class::Request, &[1; 12]);
    b.add_u32(attr::REQUESTED_TRANSPORT, 6 << 24);
    b.finish();
    let msg = Message::parse(&buf).unwrap();
    let ClientRequest::Allocate(Err(e)) = ClientRequest::parse(&msg).unwrap() else {
        panic!("an Allocate with a refused attribute");
    };
    assert_eq!((e, e.code()), (RequestError::UnsupportedTransport, 442));
    assert_eq!(TurnError::from(e).reason(), "Unsupported Transport Protocol");

    let mut buf = Vec::new();
    MessageBuilder::new(&mut buf, 0x0FF, Class::Request, &[2; 12]).finish();
    let msg = Message::parse(&buf).unwrap();
    assert_eq!(ClientRequest::parse(&msg), Err(RequestError::UnsupportedMethod));

    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::CHANNEL_BIND, Class::Request, &[3; 12]);
    b.add_u32(attr::CHANNEL_NUMBER, 0x4001 << 16)
        .add_xor_address(attr::XOR_PEER_ADDRESS, &"198.51.100.1:9".parse().unwrap());
    b.finish();
    let msg = Message::parse(&buf).unwrap();
    assert_eq!(
        ClientRequest::parse(&msg),
        Ok(ClientRequest::ChannelBind(Ok(ChannelBindRequest {
            number: 0x4001,
            peer: "198.51.100.1:9".parse().unwrap(),
        })))
    );
}

#[test]
fn a_stream_client_is_its_own_five_tuple_and_gets_padded_channel_data() {
    let mut h = Harness::default();
    let mut udp = Client::rest("192.0.2.7:4444", "alice", 3600);
    let mut tcp = Client::rest("192.0.2.7:4444", "alice", 3600);
    tcp.transport = Transport::Tcp;
    assert_eq!(udp.allocate(&mut h).0, Class::Success);
    assert_eq!(
        tcp.allocate(&mut h).0,
        Class::Success,
        "the same address over TCP is another client"
    );
    let mut ids = HashMap::new();
    while let Some(e) = h.server.next_event() {
        if let Event::Created { id, transport, .. } = e {
            ids.insert(transport, id);
        }
    }
    assert_eq!(ids.len(), 2, "{ids:?}");
    for c in [&mut udp, &mut tcp] {
        assert_eq!(c.bind(&mut h, 0x4000, "127.0.0.1:7000"), None);
    }
    let mut relayed = |id: AllocId| {
        // Garbage around the payload: the padding must be written, not found.
        let payload = b"hello";
        let mut buf = vec![0xAA; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        match h.server.handle_peer_packet(
            id,
            "127.0.0.1:7000".parse().unwrap(),
            &mut buf,
            PEER_HEADROOM,
            payload.len(),
            h.now,
        ) {
            PeerAction::ToClient {
                transport,
                start,
                end,
                ..
            } => (transport, buf[start..end].to_vec()),
            PeerAction::Drop => panic!("dropped"),
        }
    };
    let (t, over_udp) = relayed(ids[&Transport::Udp]);
    assert_eq!((t, over_udp), (Transport::Udp, channel_data(0x4000, b"hello")));
    let (t, over_tcp) = relayed(ids[&Transport::Tcp]);
    assert_eq!(t, Transport::Tcp);
    assert_eq!(over_tcp.len(), 4 + 8, "padded to a multiple of 4");
    assert_eq!(
        &over_tcp[2..4],
        &5u16.to_be_bytes(),
        "the length field is unpadded"
    );
    assert_eq!(&over_tcp[4..9], b"hello");
    assert_eq!(&over_tcp[9..], &[0, 0, 0], "zero padding");
    let listed: Vec<Transport> = h.server.allocations(h.now).map(|a| a.transport).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&Transport::Udp) && listed.contains(&Transport::Tcp));
}

#[test]
fn a_closed_stream_ends_its_allocation_and_only_its_own() {
    let mut h = Harness::default();
    let mut udp = Client::rest("192.0.2.7:4444", "alice", 3600);
    let mut tcp = Client::rest("192.0.2.7:4444", "alice", 3600);
    tcp.transport = Transport::Tcp;
    assert_eq!(udp.allocate(&mut h).0, Class::Success);
    assert_eq!(tcp.allocate(&mut h).0, Class::Success);
    while h.server.next_event().is_some() {}
    let client = tcp.addr;
    assert!(h.server.client_gone(client, Transport::Tcp));
    let closed: Vec<CloseReason> = std::iter::from_fn(|| h.server.next_event())
        .filter_map(|e| match e {
            Event::Closed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [CloseReason::Disconnected]);
    assert!(matches!(
        h.server.next_command(),
        Some(Command::CloseRelay { .. })
    ));
    let left: Vec<Transport> = h.server.allocations(h.now).map(|a| a.transport).collect();
    assert_eq!(left, [Transport::Udp], "the UDP client's allocation stays");
    assert!(
        !h.server.client_gone(client, Transport::Tcp),
        "nothing left to close"
    );
    // Its quota unit is back: the TCP client can allocate again on a new connection.
    tcp.addr = "192.0.2.7:4445".parse().unwrap();
    assert_eq!(tcp.allocate(&mut h).0, Class::Success);
}
