//! The packet path allocates nothing: ChannelData and Send indications from the client,
//! ChannelData and Data indications to it. Counted with a global allocator wrapper.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use callbox_core::credentials::{long_term_key, mint};
use callbox_core::{PeerPolicy, Secret, SecretSet};
use turn_proto::server::{Credentials, PEER_HEADROOM, PEER_TAILROOM, Quotas, RelayIp, ServerConfig};
use turn_proto::stun::{Class, Message, MessageBuilder, attr, method};
use turn_proto::{ClientAction, Command, PeerAction, Server};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn request(
    m: u16,
    tid: u8,
    key: &[u8; 16],
    username: &str,
    nonce: &str,
    attrs: impl Fn(&mut MessageBuilder<'_>),
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, m, Class::Request, &[tid; 12]);
    attrs(&mut b);
    b.add(attr::USERNAME, username.as_bytes())
        .add(attr::REALM, b"callbox")
        .add(attr::NONCE, nonce.as_bytes())
        .add_integrity(key);
    b.finish();
    buf
}

#[test]
fn relaying_allocates_nothing() {
    let secret = Secret::new("s");
    let creds = Credentials {
        secrets: Some(SecretSet::new(vec![secret.clone()]).unwrap()),
        static_users: HashMap::new(),
        banned: Vec::new(),
    };
    let policy = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![], vec![], vec![]);
    let cfg = ServerConfig {
        relay_v4: Some(RelayIp {
            bind: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
        }),
        ..ServerConfig::default()
    };
    let now = Instant::now();
    let mut server = Server::new(
        cfg,
        [1; 32],
        Arc::new(creds),
        Arc::new(policy),
        Arc::new(Quotas::new(10, 10)),
        now,
    );
    let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let other_peer: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let (username, password) = mint(&secret, "u", 1_800_000_000, 3600);
    let key = long_term_key(&username, "callbox", &password);
    let mut reply = Vec::with_capacity(1500);

    // Get a nonce, allocate, bind a channel, permit a second peer.
    let unauth = {
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, method::ALLOCATE, Class::Request, &[0; 12]);
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        b.finish();
        buf
    };
    server.handle_client_packet(client, &unauth, now, 1_800_000_000, &mut reply);
    let nonce = Message::parse(&reply)
        .unwrap()
        .nonce()
        .unwrap()
        .unwrap()
        .to_string();
    let alloc = request(method::ALLOCATE, 1, &key, &username, &nonce, |b| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    server.handle_client_packet(client, &alloc, now, 1_800_000_000, &mut reply);
    let Some(Command::BindRelay { id, .. }) = server.next_command() else {
        panic!("no bind")
    };
    server.relay_bound(id, Ok("127.0.0.1:50000".parse().unwrap()), now);
    while server.next_command().is_some() {}
    let bind = request(method::CHANNEL_BIND, 2, &key, &username, &nonce, |b| {
        b.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16)
            .add_xor_address(attr::XOR_PEER_ADDRESS, &peer);
    });
    server.handle_client_packet(client, &bind, now, 1_800_000_000, &mut reply);
    assert!(Message::parse(&reply).unwrap().class() == Class::Success);
    let perm = request(method::CREATE_PERMISSION, 3, &key, &username, &nonce, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, &other_peer);
    });
    server.handle_client_packet(client, &perm, now, 1_800_000_000, &mut reply);
    assert!(Message::parse(&reply).unwrap().class() == Class::Success);

    let channel_data = [0x40, 0x00, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let send = {
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, method::SEND, Class::Indication, &[9; 12]);
        b.add_xor_address(attr::XOR_PEER_ADDRESS, &other_peer)
            .add(attr::DATA, b"payload");
        b.finish();
        buf
    };
    let mut peer_buf = vec![0u8; PEER_HEADROOM + 1200 + PEER_TAILROOM];
    let mut relayed = 0;

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        if let ClientAction::Relay { .. } =
            server.handle_client_packet(client, &channel_data, now, 1_800_000_000, &mut reply)
        {
            relayed += 1;
        }
        if let ClientAction::Relay { .. } =
            server.handle_client_packet(client, &send, now, 1_800_000_000, &mut reply)
        {
            relayed += 1;
        }
        for from in [peer, other_peer] {
            if let PeerAction::ToClient { .. } =
                server.handle_peer_packet(id, from, &mut peer_buf, PEER_HEADROOM, 1000, now)
            {
                relayed += 1;
            }
        }
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(relayed, 40_000, "every packet relayed");
    assert_eq!(after - before, 0, "heap allocations on the packet path");
}
