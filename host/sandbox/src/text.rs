//! Addresses as text without `core::fmt` (a `format!` of an IPv4 address costs about 1,300
//! instructions; this, about a tenth of that): the client address a filter asks for, and the
//! gateway's `X-Forwarded-For` and access log.

use std::net::{IpAddr, SocketAddr};

/// An address as text, held on the stack.
pub struct AddrText {
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    /// `ip` as `Display` writes it.
    pub fn ip(ip: IpAddr) -> AddrText {
        let mut text = AddrText {
            buf: [0; 64],
            len: 0,
        };
        text.push_ip(ip);
        text
    }

    /// `addr` as `Display` writes it: `1.2.3.4:80`, `[::1]:80`.
    pub fn socket(addr: SocketAddr) -> AddrText {
        let mut text = AddrText {
            buf: [0; 64],
            len: 0,
        };
        match addr {
            SocketAddr::V4(v4) => text.push_ip(IpAddr::V4(*v4.ip())),
            SocketAddr::V6(v6) if v6.scope_id() != 0 => {
                text.display(&addr);
                return text;
            }
            SocketAddr::V6(v6) => {
                text.push(b"[");
                text.push_ip(IpAddr::V6(*v6.ip()));
                text.push(b"]");
            }
        }
        text.push(b":");
        text.push(itoa::Buffer::new().format(addr.port()).as_bytes());
        text
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn push_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                let mut n = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b".");
                    }
                    self.push(n.format(octet).as_bytes());
                }
            }
            // Rare on the request path: the formatting machinery, into the rest of the buffer.
            IpAddr::V6(v6) => self.display(&v6),
        }
    }

    /// `value`'s `Display` appended (at most what fits; any socket address does).
    fn display(&mut self, value: &dyn std::fmt::Display) {
        use std::io::Write;
        let mut rest = &mut self.buf[self.len..];
        let before = rest.len();
        let _ = write!(rest, "{value}");
        self.len += before - rest.len();
    }
}
