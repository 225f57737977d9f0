//! Small values as text on the request path without `core::fmt` (a `format!` of an IPv4
//! address costs about 1,300 instructions; these, about a tenth of that).

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

/// A request id: `prefix` as 8 hex digits, then `n` as at least 8 (what
/// `format!("{prefix:08x}{n:08x}")` writes).
pub fn request_id(prefix: u32, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 24];
    for i in 0..8 {
        buf[i] = HEX[(prefix >> (28 - 4 * i)) as usize & 15];
    }
    let digits = (16 - n.leading_zeros() as usize / 4).max(8);
    for i in 0..digits {
        buf[8 + i] = HEX[(n >> (4 * (digits - 1 - i))) as usize & 15];
    }
    String::from_utf8_lossy(&buf[..8 + digits]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form agrees with `Display` and `format!`.
    #[test]
    fn text_agrees_with_the_formatting_machinery() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.3.4",
            "10.0.255.7",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
            for port in [0, 80, 65535] {
                let addr = SocketAddr::new(ip, port);
                assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
            }
        }
        let scoped: SocketAddr = "[fe80::1%7]:8080".parse().unwrap();
        assert_eq!(AddrText::socket(scoped).as_str(), scoped.to_string());
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
            .parse()
            .unwrap();
        assert_eq!(AddrText::socket(longest).as_str(), longest.to_string());
        for (prefix, n) in [
            (0, 0),
            (0xdeadbeef, 1),
            (1, u64::from(u32::MAX)),
            (7, 1 << 32),
            (u32::MAX, u64::MAX),
        ] {
            assert_eq!(request_id(prefix, n), format!("{prefix:08x}{n:08x}"));
        }
    }
}
