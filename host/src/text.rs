//! Small values as text on the request path without `core::fmt` (a `format!` of an IPv4
//! address costs about 1,300 instructions; these, about a tenth of that).

pub use wasmgate_sandbox::AddrText;

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
    use std::net::{IpAddr, SocketAddr};

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
