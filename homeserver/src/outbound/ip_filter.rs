//! Which addresses the server may send requests to on a user's behalf (URL previews, push
//! gateways): public ones only, unless the operator allows a range explicitly.
//!
//! A URL preview or a pusher's URL makes the server send a request a user chose. Without this check a user could
//! make it fetch from loopback, the private network or a cloud metadata service and read the
//! answer back through the preview. The check is applied to every address a host name resolves
//! to (by the resolver the preview client connects through, so the address checked is the one
//! connected to) and to IP literals in the URL and in every redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Ranges that are not the public internet: this host, private and shared networks, link-local,
/// documentation, benchmarking, multicast and reserved space (IANA special-purpose registries;
/// the same set Synapse refuses by default, plus the unspecified addresses).
const BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// The operator's allow list on top of the built-in refusals.
#[derive(Debug, Clone)]
pub struct IpFilter {
    blocked: Vec<IpNet>,
    allowed: Vec<IpNet>,
}

impl IpFilter {
    /// A filter allowing the given CIDR ranges (already validated by the configuration).
    pub fn new(allowed: &[String]) -> IpFilter {
        IpFilter {
            blocked: BLOCKED
                .iter()
                .map(|r| r.parse().expect("built-in ranges are valid"))
                .collect(),
            allowed: allowed.iter().filter_map(|r| r.parse().ok()).collect(),
        }
    }

    /// Whether the server may connect to `ip`.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        // An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by the
        // IPv4 address it reaches.
        let ip = match ip {
            IpAddr::V6(v6) => match embedded_ipv4(v6) {
                Some(v4) => {
                    if self.allowed.iter().any(|net| net.contains(&IpAddr::V4(v4))) {
                        return true;
                    }
                    IpAddr::V4(v4)
                }
                None => ip,
            },
            v4 => v4,
        };
        !self.blocked.iter().any(|net| net.contains(&ip))
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`) address.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0, _, _] if ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST => {
            Some(low())
        }
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low()),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(filter: &IpFilter, ip: &str) -> bool {
        filter.is_allowed(ip.parse().unwrap())
    }

    #[test]
    fn non_public_addresses_are_refused() {
        let f = IpFilter::new(&[]);
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!allowed(&f, ip), "{ip} should be refused");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
        ] {
            assert!(allowed(&f, ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn the_allow_list_wins() {
        let f = IpFilter::new(&["127.0.0.1/32".into(), "fd00::/8".into()]);
        assert!(allowed(&f, "127.0.0.1"));
        assert!(allowed(&f, "::ffff:127.0.0.1"));
        assert!(allowed(&f, "fd12::1"));
        assert!(!allowed(&f, "127.0.0.2"));
        assert!(!allowed(&f, "10.0.0.1"));
    }
}
