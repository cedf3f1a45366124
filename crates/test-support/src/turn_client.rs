//! A small blocking TURN client over UDP for tests, built on turn-proto's codec.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use callbox_core::credentials::long_term_key;
use turn_proto::stun::{Class, Message, MessageBuilder, attr, method};

/// The parts of a response a test looks at.
#[derive(Debug, Clone)]
pub struct Response {
    pub class: Class,
    pub code: Option<u16>,
    pub bytes: Vec<u8>,
}

impl Response {
    pub fn xor_address(&self, t: u16) -> Option<SocketAddr> {
        Message::parse(&self.bytes).ok()?.xor_address(t).ok()?
    }

    pub fn lifetime(&self) -> Option<u32> {
        Message::parse(&self.bytes).ok()?.u32_attr(attr::LIFETIME).ok()?
    }
}

/// One client 5-tuple talking to a TURN server.
#[derive(Debug)]
pub struct TurnClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub key: [u8; 16],
    realm: String,
    nonce: Option<String>,
    tid: u32,
}

impl TurnClient {
    pub fn new(server: SocketAddr, username: &str, password: &str, realm: &str) -> Self {
        let bind = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        Self::new_from(bind.parse().unwrap(), server, username, password, realm)
    }

    /// [`TurnClient::new`] on a socket bound to `bind` (another loopback source).
    pub fn new_from(
        bind: SocketAddr,
        server: SocketAddr,
        username: &str,
        password: &str,
        realm: &str,
    ) -> Self {
        let sock = UdpSocket::bind(bind).expect("bind client socket");
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self {
            sock,
            server,
            username: username.to_string(),
            key: long_term_key(username, realm, password),
            realm: realm.to_string(),
            nonce: None,
            tid: rand_seed(),
        }
    }

    /// Sends one request and waits for its response (retransmitting twice).
    pub fn request(
        &mut self,
        m: u16,
        attrs: &dyn Fn(&mut MessageBuilder<'_>),
        auth: bool,
    ) -> Option<Response> {
        self.tid = self.tid.wrapping_add(1);
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.tid.to_be_bytes());
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, m, Class::Request, &tid);
        attrs(&mut b);
        if auth {
            b.add(attr::USERNAME, self.username.as_bytes())
                .add(attr::REALM, self.realm.as_bytes())
                .add(attr::NONCE, self.nonce.as_deref().unwrap_or("").as_bytes())
                .add_integrity(&self.key);
        }
        b.add_fingerprint();
        b.finish();
        let mut rbuf = [0u8; 2048];
        for _ in 0..3 {
            self.sock.send_to(&buf, self.server).ok()?;
            while let Ok((n, _)) = self.sock.recv_from(&mut rbuf) {
                let Ok(msg) = Message::parse(&rbuf[..n]) else {
                    continue;
                };
                if msg.transaction_id() != tid {
                    continue;
                }
                let code = msg
                    .get(attr::ERROR_CODE)
                    .map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]));
                if let Ok(Some(nonce)) = msg.nonce() {
                    self.nonce = Some(nonce.to_string());
                }
                return Some(Response {
                    class: msg.class(),
                    code,
                    bytes: rbuf[..n].to_vec(),
                });
            }
        }
        None
    }

    /// An authenticated request, with the 401/438 nonce round trip done as needed.
    pub fn call(&mut self, m: u16, attrs: &dyn Fn(&mut MessageBuilder<'_>)) -> Response {
        let mut auth = self.nonce.is_some();
        for _ in 0..3 {
            let r = self.request(m, attrs, auth).expect("the server answered");
            let challenged = matches!(r.code, Some(401) | Some(438)) && self.nonce.is_some();
            if challenged && (!auth || r.code == Some(438)) {
                auth = true;
                continue;
            }
            return r;
        }
        panic!("no answer after the nonce round trips");
    }

    pub fn allocate(&mut self) -> Response {
        self.call(method::ALLOCATE, &|b| {
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        })
    }

    pub fn allocate_v6(&mut self) -> Response {
        self.call(method::ALLOCATE, &|b| {
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
                .add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })
    }

    pub fn refresh(&mut self, lifetime: u32) -> Response {
        self.call(method::REFRESH, &|b| {
            b.add_u32(attr::LIFETIME, lifetime);
        })
    }

    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Response {
        self.call(method::CREATE_PERMISSION, &|b| {
            for p in peers {
                b.add_xor_address(attr::XOR_PEER_ADDRESS, p);
            }
        })
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Response {
        self.call(method::CHANNEL_BIND, &|b| {
            b.add_u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, &peer);
        })
    }

    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) {
        let mut v = channel.to_be_bytes().to_vec();
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        self.sock.send_to(&v, self.server).expect("send");
    }

    /// Receives one datagram from the server (ChannelData or an indication).
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    }
}

fn rand_seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id()
}
