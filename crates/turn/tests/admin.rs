//! The admin hooks of a running relay: one worker on 127.0.0.1, real UDP clients.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use callbox_core::credentials::long_term_key;
use callbox_core::metrics::MetricsRegistry;
use callbox_core::{Cidr, PeerPolicy};
use callbox_turn::{AllocationEvent, TurnControl, TurnRole, TurnSettings, UdpListeners};
use test_support::turn_client::TurnClient;
use turn_proto::server::{CloseReason, Credentials, Quotas, RelayIp, Traffic};
use turn_proto::stun::{Class, attr};
use turn_proto::{AllocId, ServerConfig};

const REALM: &str = "callbox";
const PORTS: (u16, u16) = (20_000, 30_000);

fn credentials(banned: &[&str]) -> Credentials {
    let mut static_users = HashMap::new();
    static_users.insert("alice".to_string(), long_term_key("alice", REALM, "pw"));
    Credentials {
        secrets: None,
        static_users,
        banned: banned.iter().map(|n| n.parse().unwrap()).collect(),
    }
}

struct Relay {
    addr: SocketAddr,
    control: TurnControl,
    events: tokio::sync::mpsc::Receiver<AllocationEvent>,
    metrics: Arc<callbox_turn::Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start() -> Relay {
    let listeners = UdpListeners::bind(&["127.0.0.1:0".parse().unwrap()], 1).unwrap();
    let addr = listeners.local_addrs()[0];
    let loopback = "127.0.0.1".parse().unwrap();
    let settings = TurnSettings {
        server: ServerConfig {
            realm: REALM.into(),
            relay_v4: Some(RelayIp {
                bind: loopback,
                advertise: loopback,
            }),
            ..ServerConfig::default()
        },
        workers: 1,
        port_range: PORTS,
        credentials: Arc::new(ArcSwap::from_pointee(credentials(&[]))),
        policy: Arc::new(ArcSwap::from_pointee(PeerPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap()],
            vec![],
            vec![],
            vec![(addr.port(), addr.port())],
        ))),
        quotas: Arc::new(Quotas::new(100, 10)),
        reservation_lifetime: turn_proto::server::RESERVATION_LIFETIME,
        max_reservations: 1024,
        http: callbox_http::Limits {
            max_connections: 8,
            max_per_address: 8,
            ipv6_prefix: 64,
            header_timeout: Duration::from_secs(5),
        },
        streams: callbox_turn::StreamSettings::default(),
    };
    let (role, events) = TurnRole::new(
        settings,
        listeners,
        callbox_turn::TcpListeners::none(),
        [7; 32],
        Arc::new(MetricsRegistry::new()),
    )
    .unwrap();
    let control = role.control();
    let metrics = role.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(role.run(None, async {
        let _ = stopped.await;
    }));
    Relay {
        addr,
        control,
        events,
        metrics,
        stop,
        run,
    }
}

impl Relay {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.run.await.unwrap().unwrap();
    }

    /// The next Closed event, skipping others.
    async fn next_closed(&mut self) -> (AllocId, CloseReason) {
        loop {
            let record = tokio::time::timeout(Duration::from_secs(3), self.events.recv())
                .await
                .expect("an event in time")
                .expect("the channel is open");
            if let AllocationEvent::Closed { id, reason, .. } = record {
                return (id, reason);
            }
        }
    }
}

/// A client with an allocation, and its relayed address.
fn allocate(relay: &Relay) -> (TurnClient, SocketAddr) {
    let mut c = TurnClient::new(relay.addr, "alice", "pw", REALM);
    let r = c.allocate();
    assert_eq!((r.class, r.code), (Class::Success, None), "Allocate");
    let relayed = r
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS");
    (c, relayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_close_allocation() {
    let mut relay = start();
    let (mut c, relayed) = allocate(&relay);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(c.channel_bind(0x4000, peer_addr).code, None);
    c.send_channel_data(0x4000, b"hello");
    let mut buf = [0u8; 64];
    assert_eq!(peer.recv_from(&mut buf).unwrap().0, 5);

    let list = relay.control.allocations().await;
    assert_eq!(list.len(), 1, "{list:?}");
    let info = &list[0];
    assert_eq!(info.id.shard(), 0);
    assert_eq!((info.username.as_str(), info.user.as_str()), ("alice", "alice"));
    assert_eq!(info.client, c.sock.local_addr().unwrap());
    assert_eq!(info.relay, relayed);
    assert!((PORTS.0..=PORTS.1).contains(&info.relay.port()));
    assert_eq!(info.permissions, vec![peer_addr.ip()]);
    assert_eq!(info.channels, vec![(0x4000, peer_addr)]);
    assert_eq!(
        info.traffic,
        Traffic {
            packets_to_peer: 1,
            bytes_to_peer: 5,
            ..Traffic::default()
        }
    );
    assert!(info.expires_in > Duration::from_secs(500) && info.age < Duration::from_secs(60));

    let id = info.id;
    assert!(relay.control.close_allocation(id).await);
    assert_eq!(relay.next_closed().await, (id, CloseReason::Kicked));
    assert!(!relay.control.close_allocation(id).await);
    assert!(relay.control.allocations().await.is_empty());
    // An id of a shard (worker) that does not exist.
    assert!(!relay.control.close_allocation(AllocId(7 << 48 | 1)).await);
    // The 5-tuple has no allocation any more.
    assert_eq!(c.refresh(600).code, Some(437));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_user_kick_clients_and_bans() {
    let mut relay = start();
    let _a = allocate(&relay);
    let _b = allocate(&relay);
    assert_eq!(relay.control.allocations().await.len(), 2);
    // Controls are handled in order: the listing after the kick sees it done.
    relay.control.kick_user("alice");
    assert!(relay.control.allocations().await.is_empty());
    for _ in 0..2 {
        assert_eq!(relay.next_closed().await.1, CloseReason::Kicked);
    }
    relay.control.kick_user("alice");
    assert!(relay.control.allocations().await.is_empty());

    // A ban of the network, the way the admin role applies it: credentials, then the kick.
    let _c = allocate(&relay);
    relay.control.set_credentials(credentials(&["127.0.0.0/8"]));
    relay
        .control
        .kick_clients(vec!["127.0.0.1/32".parse::<Cidr>().unwrap()]);
    assert_eq!(relay.next_closed().await.1, CloseReason::Kicked);
    assert!(relay.control.allocations().await.is_empty());
    let mut d = TurnClient::new(relay.addr, "alice", "pw", REALM);
    let r = d.allocate();
    assert_eq!((r.class, r.code), (Class::Error, Some(403)));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !relay.metrics.render().contains("callbox_turn_banned_total 1\n") {
        assert!(Instant::now() < deadline, "{}", relay.metrics.render());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    relay.control.set_credentials(credentials(&[]));
    let _e = allocate(&relay);
    assert_eq!(relay.control.allocations().await.len(), 1);
    relay.shutdown().await;
}
