//! Which address a request comes from, for the per-address limits.
//!
//! Behind a reverse proxy or a load balancer the TCP peer is the proxy, so every client would
//! share one address and 20 bad logins a minute would lock everyone out. Proxies report the
//! client in `X-Forwarded-For`, but any client can send that header too, so it is believed only
//! from the proxies listed in `TRUSTED_PROXIES` (none by default: the header is ignored).
//!
//! From a trusted peer, the header is read from the right (each proxy appends the address it
//! received the connection from): trusted proxies' own addresses are skipped, and the first
//! address that is not trusted is the client. Whatever a client wrote further left is ignored,
//! so it cannot choose its address. An entry that is not an address ends the walk at the last
//! trusted hop, which is then the address limited; a chain of only trusted hops is one of our
//! own callers, named by the leftmost.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::AppState;
use crate::problem::AppError;

pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses (`10.0.0.7`, `fd00::1`) and CIDR ranges
    /// (`10.0.0.0/8`). Empty means none. Returns what is wrong with the first bad item.
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut ranges = Vec::new();
        for item in list.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!("{list:?} has an empty item"));
            }
            let range = match IpAddr::from_str(item) {
                Ok(address) => IpNet::from(address.to_canonical()),
                Err(_) => IpNet::from_str(item).map_err(|_| {
                    format!("{item:?} is neither an IP address nor a CIDR range like 10.0.0.0/8")
                })?,
            };
            // Peers are compared in their canonical form (IPv4-mapped addresses as IPv4), so a
            // mapped range would silently match nothing.
            if let IpNet::V6(v6) = range
                && v6.network().to_ipv4_mapped().is_some()
                && v6.prefix_len() >= 96
            {
                return Err(format!(
                    "{item:?} is an IPv4-mapped range; write it as IPv4 (e.g. 10.0.0.0/8)"
                ));
            }
            if range.prefix_len() == 0 {
                return Err(format!(
                    "{item:?} trusts every address, which lets any client choose the address it is limited by; list the proxies' own addresses or ranges"
                ));
            }
            if range.trunc() != range {
                return Err(format!(
                    "{item:?} has bits set beyond its prefix; did you mean {}?",
                    range.trunc()
                ));
            }
            ranges.push(range);
        }
        Ok(Self { ranges })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn is_trusted(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.ranges.iter().any(|range| range.contains(&address))
    }

    /// The client's address for a request from `peer` with `headers` (see the module docs).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        // The nearest hop known to be a trusted proxy, or the client once an untrusted one shows.
        let mut nearest = peer;
        // Several headers are one list, in order. Split as bytes: a proxy appends to what the
        // client sent, so a byte that is not visible ASCII on the client's side must not make the
        // proxy's own entries unreadable; only an entry the walk reaches is decoded.
        let values = headers.get_all(FORWARDED_FOR).iter().rev();
        for value in values {
            for entry in value.as_bytes().rsplit(|&byte| byte == b',') {
                let Some(hop) = std::str::from_utf8(entry).ok().and_then(parse_hop) else {
                    return nearest;
                };
                if !self.is_trusted(hop) {
                    return hop;
                }
                nearest = hop;
            }
        }
        nearest
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:443`) as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let address = IpAddr::from_str(entry)
        .or_else(|_| SocketAddr::from_str(entry).map(|socket| socket.ip()))
        .or_else(|_| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .ok_or(())
                .and_then(|inner| IpAddr::from_str(inner).map_err(|_| ()))
        })
        .ok()?;
    Some(address.to_canonical())
}

/// The key a client address is limited by: an IPv4 address itself, an IPv6 address's /64 (one
/// subscriber's network: a host or a VPS gets a whole /64, so keying on /128 would give it 2^64
/// budgets).
pub fn limit_key(address: IpAddr) -> String {
    match address.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let network = ipnet::Ipv6Net::new(v6, 64)
                .map(|net| net.trunc())
                .expect("64 is a valid IPv6 prefix length");
            network.to_string()
        }
    }
}

/// The client's address (see the module docs), for handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::internal("read the peer address", rejection))?;
        Ok(ClientAddress(
            state
                .trusted_proxies()
                .client_address(peer.ip(), &parts.headers),
        ))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn addresses_and_ranges_parse_and_mistakes_are_explained() {
        let proxies = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8").unwrap();
        assert!(proxies.is_trusted(ip("10.1.2.3")));
        assert!(proxies.is_trusted(ip("192.168.1.7")));
        assert!(!proxies.is_trusted(ip("192.168.1.8")));
        assert!(proxies.is_trusted(ip("fd12::1")));
        // An IPv4 peer seen on an IPv6 socket is the same peer.
        assert!(proxies.is_trusted(ip("::ffff:10.9.9.9")));
        assert!(!proxies.is_trusted(ip("11.0.0.1")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("  ").unwrap().is_empty());

        for (bad, expected) in [
            ("10.0.0.0/33", "neither an IP address nor a CIDR range"),
            ("proxy.internal", "neither an IP address nor a CIDR range"),
            ("10.0.0.1,,10.0.0.2", "empty item"),
            ("0.0.0.0/0", "trusts every address"),
            ("::/0", "trusts every address"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ] {
            let problem = TrustedProxies::parse(bad).expect_err(bad);
            assert!(problem.contains(expected), "{bad}: {problem}");
        }
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let headers = forwarded(&["203.0.113.9"]);
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_address(ip("10.0.0.5"), &headers),
            ip("10.0.0.5")
        );
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        assert_eq!(
            proxies.client_address(ip("198.51.100.4"), &headers),
            ip("198.51.100.4"),
            "a client talking to us directly cannot name another address"
        );
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &headers),
            ip("203.0.113.9")
        );
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5"),
            "a trusted peer without the header is the client"
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client_whatever_the_client_wrote() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer = ip("10.0.0.5");
        // The client forged two entries; two trusted proxies appended theirs.
        let headers = forwarded(&["1.1.1.1, 2.2.2.2, 203.0.113.9, 10.0.0.3, 10.0.0.4"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("203.0.113.9"));
        // The same list spread over several headers.
        let headers = forwarded(&["1.1.1.1, 2.2.2.2", "203.0.113.9,10.0.0.3", "10.0.0.4"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("203.0.113.9"));
        // Ports and brackets, as some proxies write them; IPv6.
        let headers = forwarded(&["[2001:db8::7]:4711, 10.0.0.3:8080"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("2001:db8::7"));
        let headers = forwarded(&["198.51.100.1:65000"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("198.51.100.1"));
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop_and_an_all_trusted_chain_is_its_leftmost() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer = ip("10.0.0.5");
        let headers = forwarded(&["203.0.113.9, unknown, 10.0.0.3"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("10.0.0.3"));
        let headers = forwarded(&["not an address"]);
        assert_eq!(proxies.client_address(peer, &headers), peer);
        let headers = forwarded(&["10.0.0.2, 10.0.0.3"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("10.0.0.2"));
        let mut headers = HeaderMap::new();
        headers.append(
            FORWARDED_FOR,
            HeaderValue::from_bytes(b"203.0.113.9, \xff").unwrap(),
        );
        assert_eq!(proxies.client_address(peer, &headers), peer);
        // A byte the client wrote that is not visible ASCII does not hide the entry its proxy
        // appended (the client would otherwise be limited as the proxy).
        let mut headers = HeaderMap::new();
        headers.append(
            FORWARDED_FOR,
            HeaderValue::from_bytes(b"\x80, 203.0.113.9").unwrap(),
        );
        assert_eq!(proxies.client_address(peer, &headers), ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_and_mapped_ranges_are_refused() {
        assert_eq!(limit_key(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(limit_key(ip("::ffff:203.0.113.9")), "203.0.113.9");
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1")),
            limit_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(limit_key(ip("2001:db8:1:2::7")), "2001:db8:1:2::/64");
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        let error = TrustedProxies::parse("::ffff:10.0.0.0/104").unwrap_err();
        assert!(error.contains("write it as IPv4"), "{error}");
    }
}
