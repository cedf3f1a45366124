//! A small blocking TURN client for tests, built on turn-proto's codec: over UDP, or over
//! a TCP or TLS stream (RFC 8656 section 12 framing: STUN messages and ChannelData padded
//! to four bytes).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
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

/// A byte stream to the server: a TCP connection or a TLS session over one.
pub trait StreamIo: Read + Write + Send {}
impl<T: Read + Write + Send> StreamIo for T {}

/// The client's stream, when it talks over TCP or TLS.
pub struct Stream(RefCell<Box<dyn StreamIo>>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

impl Stream {
    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut s = self.0.borrow_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    /// The next STUN message or ChannelData frame (its padding read and dropped).
    fn frame(&self) -> std::io::Result<Vec<u8>> {
        let mut s = self.0.borrow_mut();
        let mut head = [0u8; 4];
        s.read_exact(&mut head)?;
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let rest = if head[0] & 0xC0 == 0 {
            16 + len
        } else {
            len.div_ceil(4) * 4
        };
        let mut frame = vec![0u8; 4 + rest];
        frame[..4].copy_from_slice(&head);
        s.read_exact(&mut frame[4..])?;
        if head[0] & 0xC0 != 0 {
            frame.truncate(4 + len);
        }
        Ok(frame)
    }
}

/// One client 5-tuple talking to a TURN server.
#[derive(Debug)]
pub struct TurnClient {
    /// The UDP socket (unused when the client talks over `stream`).
    pub sock: UdpSocket,
    stream: Option<Stream>,
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
            stream: None,
            server,
            username: username.to_string(),
            key: long_term_key(username, realm, password),
            realm: realm.to_string(),
            nonce: None,
            tid: rand_seed(),
        }
    }

    /// A client over TCP to `server` (3 s read timeout).
    pub fn tcp(server: SocketAddr, username: &str, password: &str, realm: &str) -> Self {
        let tcp = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("TCP connect");
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = tcp.set_nodelay(true);
        Self::over(Box::new(tcp), server, username, password, realm)
    }

    /// A client over an established stream (a TLS session, see [`crate::tls::connect`]).
    pub fn over(
        stream: Box<dyn StreamIo>,
        server: SocketAddr,
        username: &str,
        password: &str,
        realm: &str,
    ) -> Self {
        let mut c = Self::new(server, username, password, realm);
        c.stream = Some(Stream(RefCell::new(stream)));
        c
    }

    /// Sends one request and waits for its response (over UDP retransmitting twice).
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
        if let Some(stream) = &self.stream {
            stream.send(&buf).ok()?;
            loop {
                let frame = stream.frame().ok()?;
                if let Some((r, nonce)) = parse_answer(&frame, &tid) {
                    self.nonce = nonce.or(self.nonce.take());
                    return Some(r);
                }
            }
        }
        let mut rbuf = [0u8; 2048];
        for _ in 0..3 {
            self.sock.send_to(&buf, self.server).ok()?;
            while let Ok((n, _)) = self.sock.recv_from(&mut rbuf) {
                if let Some((r, nonce)) = parse_answer(&rbuf[..n], &tid) {
                    self.nonce = nonce.or(self.nonce.take());
                    return Some(r);
                }
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
        if let Some(stream) = &self.stream {
            // Over a stream, ChannelData is padded to a multiple of four bytes.
            v.resize(v.len().div_ceil(4) * 4, 0);
            stream.send(&v).expect("send");
            return;
        }
        self.sock.send_to(&v, self.server).expect("send");
    }

    /// Sends an already encoded message (an indication, a crafted request) as is.
    pub fn send_raw(&self, bytes: &[u8]) {
        match &self.stream {
            Some(stream) => stream.send(bytes).expect("send"),
            None => {
                self.sock.send_to(bytes, self.server).expect("send");
            }
        }
    }

    /// Receives one datagram or frame from the server (ChannelData or an indication).
    pub fn recv(&self) -> Option<Vec<u8>> {
        if let Some(stream) = &self.stream {
            return stream.frame().ok();
        }
        let mut buf = [0u8; 2048];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    }
}

/// The response to transaction `tid` in `bytes`, and the NONCE it carries.
fn parse_answer(bytes: &[u8], tid: &[u8; 12]) -> Option<(Response, Option<String>)> {
    let msg = Message::parse(bytes).ok()?;
    if msg.transaction_id() != *tid {
        return None;
    }
    let code = msg
        .get(attr::ERROR_CODE)
        .map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]));
    let nonce = msg.nonce().ok().flatten().map(str::to_string);
    let r = Response {
        class: msg.class(),
        code,
        bytes: bytes.to_vec(),
    };
    Some((r, nonce))
}

fn rand_seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id()
}
