//! The client's address: the socket's peer, unless that peer is a trusted
//! proxy (`http.trusted_proxies`): then it is read from the one forwarding
//! header the operator named (`http.client_ip_header`).
//!
//! Both WebSocket doors ([`super::upgrade`], [`super::legacy`]) use it for
//! the address a session reports (`welcome.observed_addr`, a worker's
//! observed endpoint). The admin guard does not: it trusts only the TCP
//! peer, and refuses a request that carries any forwarding header.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::config::ClientIpHeader;

/// The client's address: the socket's peer, or, when that peer is a trusted
/// proxy, the rightmost address in the forwarding header `which` that is not
/// itself a trusted proxy (the leftmost when all are). The port is the
/// header's when it gives one, else 0. An unparsable hop stops the walk: the
/// peer itself is then the best known address.
///
/// Only `which` is read. A proxy appends to (or sets) its own header and
/// passes the others through as the client sent them, so if a second header
/// were believed, a client could name its own address in it.
pub fn client_addr(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    which: ClientIpHeader,
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let mut chain: Vec<Option<SocketAddr>> = Vec::new();
    let lines = headers
        .get_all(which.header_name())
        .iter()
        .filter_map(|v| v.to_str().ok());
    match which {
        ClientIpHeader::Forwarded => {
            for elem in lines.flat_map(|v| v.split(',')) {
                let for_ = elem.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                });
                if let Some(v) = for_ {
                    chain.push(parse_hop(v.trim_matches('"')));
                }
            }
        }
        ClientIpHeader::XForwardedFor | ClientIpHeader::XRealIp => {
            for v in lines {
                chain.extend(v.split(',').map(|h| parse_hop(h.trim())));
            }
        }
    }
    for hop in chain.iter().rev() {
        match hop {
            Some(a) if is_trusted(a.ip()) => continue,
            Some(a) => return *a,
            None => return peer,
        }
    }
    chain.first().copied().flatten().unwrap_or(peer)
}

/// One hop of a forwarding header: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
fn parse_hop(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(SocketAddr::new(a.ip().to_canonical(), a.port()));
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip.to_canonical(), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        use ClientIpHeader::*;
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.1, 198.51.100.2, 10.9.9.9")]);
        assert_eq!(
            client_addr(stranger, &xff, &trusted, XForwardedFor),
            stranger
        );
        assert_eq!(client_addr(proxy, &xff, &[], XForwardedFor), proxy);
        assert_eq!(
            client_addr(proxy, &xff, &trusted, XForwardedFor),
            "198.51.100.2:0".parse().unwrap()
        );
        // Several header lines form one list; all trusted: the leftmost.
        let all = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            client_addr(proxy, &all, &trusted, XForwardedFor),
            "10.0.0.1:0".parse().unwrap()
        );
        // `Forwarded`, when it is the configured header, may carry a port.
        let fwd = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=10.0.0.7"#,
            ),
            ("x-forwarded-for", "203.0.113.1"),
        ]);
        assert_eq!(
            client_addr(proxy, &fwd, &trusted, Forwarded),
            "[2001:db8::1]:4711".parse().unwrap()
        );
        // An unparsable hop stops the walk at the proxy itself.
        let junk = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_addr(proxy, &junk, &trusted, Forwarded), proxy);
        // No header: the proxy.
        assert_eq!(
            client_addr(proxy, &HeaderMap::new(), &trusted, XForwardedFor),
            proxy
        );
        // X-Real-IP: the one address the proxy set.
        let real = headers(&[("x-real-ip", "198.51.100.9")]);
        assert_eq!(
            client_addr(proxy, &real, &trusted, XRealIp),
            "198.51.100.9:0".parse().unwrap()
        );
    }

    /// The proxy appends the address it saw to X-Forwarded-For and passes a
    /// client's own `Forwarded` through untouched: that header must not win.
    #[test]
    fn only_the_configured_header_is_read() {
        use ClientIpHeader::*;
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let sent = headers(&[
            ("forwarded", "for=192.0.2.66"),
            ("x-real-ip", "192.0.2.67"),
            ("x-forwarded-for", "198.51.100.2"),
        ]);
        assert_eq!(
            client_addr(proxy, &sent, &trusted, XForwardedFor),
            "198.51.100.2:0".parse().unwrap()
        );
        // The configured header missing: the proxy, never another header.
        let only_forwarded = headers(&[("forwarded", "for=192.0.2.66")]);
        assert_eq!(
            client_addr(proxy, &only_forwarded, &trusted, XForwardedFor),
            proxy
        );
        assert_eq!(
            client_addr(proxy, &sent, &trusted, XRealIp),
            "192.0.2.67:0".parse().unwrap()
        );
        assert_eq!(
            client_addr(proxy, &sent, &trusted, Forwarded),
            "192.0.2.66:0".parse().unwrap()
        );
    }
}
