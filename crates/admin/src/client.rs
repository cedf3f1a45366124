//! A minimal blocking HTTP/1.1 client for loopback: what `callbox admin` commands and the
//! tests use to reach the API. One request per connection (`Connection: close`); chunked
//! bodies are decoded. Not for the open internet: no TLS, no redirects, no proxies.

use std::io::{self, Read as _, Write as _};

pub use callbox_core::http1::Response;
use callbox_core::http1::parse_response;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends one request and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}
