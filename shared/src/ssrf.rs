//! Server-side request forgery protection: which destinations a webhook may reach.
//!
//! A subscription URL is attacker-controlled input. Dispatchers check every address a
//! destination resolves to, at connect time (so DNS rebinding cannot swap in an internal
//! address after validation), and consumer-api checks the URL when it is saved. Refused unless
//! configuration allows their network: loopback, private (RFC 1918), carrier-grade NAT,
//! link-local (and with it the cloud metadata address), unique-local IPv6, unspecified,
//! multicast, broadcast and documentation ranges, and IPv4 addresses spelled as IPv6
//! (`::ffff:127.0.0.1`, NAT64, 6to4) by the address they embed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// Only `https` (and `http` where allowed) are delivered to.
    #[error("scheme {0:?} is not allowed; use https")]
    Scheme(String),
    /// `http` is refused unless `security.allow_http` is set.
    #[error("http is not allowed; use https (or set security.allow_http)")]
    HttpNotAllowed,
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The destination address is in a refused range.
    #[error(
        "destination {ip} is a {kind} address, refused unless security.allowed_networks includes it"
    )]
    Forbidden {
        /// The refused address.
        ip: IpAddr,
        /// Which kind of range it is in.
        kind: &'static str,
    },
}

/// The destinations allowed, from `[security]`.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
    allow_http: bool,
}

impl NetworkPolicy {
    /// A policy allowing `allowed_networks` (CIDRs such as `127.0.0.0/8`) besides public
    /// addresses, and `http` when `allow_http`.
    ///
    /// # Errors
    /// The entry that is not a CIDR.
    pub fn new(allowed_networks: &[String], allow_http: bool) -> Result<Self, String> {
        let allowed = allowed_networks
            .iter()
            .map(|n| n.trim().parse::<IpNet>().map_err(|_| n.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allowed,
            allow_http,
        })
    }

    /// Checks one resolved address.
    ///
    /// # Errors
    /// [`SsrfError::Forbidden`] naming the kind of range.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match forbidden_kind(ip) {
            Some(kind) => Err(SsrfError::Forbidden { ip, kind }),
            None => Ok(()),
        }
    }

    /// Checks the scheme, and the host when it is a literal address. Hostnames are checked
    /// when they are resolved (dispatchers: at connect time).
    ///
    /// # Errors
    /// An [`SsrfError`] saying what is refused.
    pub fn check_url(&self, url: &url::Url) -> Result<(), SsrfError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(SsrfError::HttpNotAllowed),
            other => return Err(SsrfError::Scheme(other.to_owned())),
        }
        match url.host() {
            None => Err(SsrfError::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }
}

/// An IPv4 address written as IPv6 (mapped, NAT64, 6to4, compatible) is judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped)
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(tail),
        // ::a.b.c.d (deprecated compatible), but not :: and ::1
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail),
        // 64:ff9b::a.b.c.d (NAT64)
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        // 2002:AABB:CCDD::/48 (6to4)
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("carrier-grade NAT")
            } else if v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
                Some("broadcast, multicast or reserved")
            } else if v4.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                Some("documentation or benchmarking")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("IETF protocol assignment")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("unique-local (incl. cloud metadata fd00:ec2::254)")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first == 0x2001 && v6.segments()[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &NetworkPolicy, ip: &str) -> bool {
        policy.check_ip(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn internal_addresses_are_refused_in_every_spelling() {
        let p = NetworkPolicy::default();
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(refused(&p, ip), "{ip} allowed");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!refused(&p, ip), "{ip} refused");
        }
    }

    #[test]
    fn configured_networks_are_allowed_including_mapped_spellings() {
        let p = NetworkPolicy::new(&["127.0.0.0/8".into(), "::1/128".into()], true).unwrap();
        assert!(!refused(&p, "127.0.0.1"));
        assert!(!refused(&p, "::ffff:127.0.0.1"));
        assert!(!refused(&p, "::1"));
        assert!(refused(&p, "10.0.0.1"));
        assert!(NetworkPolicy::new(&["nonsense".into()], false).is_err());
    }

    #[test]
    fn urls_need_https_unless_http_is_allowed_and_literal_hosts_are_checked() {
        let strict = NetworkPolicy::default();
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(strict.check_url(&url("https://example.com/hook")).is_ok());
        assert_eq!(
            strict.check_url(&url("http://example.com/")),
            Err(SsrfError::HttpNotAllowed)
        );
        assert!(matches!(
            strict.check_url(&url("ftp://example.com/")),
            Err(SsrfError::Scheme(_))
        ));
        assert!(strict.check_url(&url("https://127.0.0.1/")).is_err());
        assert!(
            strict
                .check_url(&url("https://[::ffff:127.0.0.1]/"))
                .is_err()
        );
        assert!(strict.check_url(&url("https://[::1]:8443/")).is_err());
        let local = NetworkPolicy::new(&["127.0.0.0/8".into()], true).unwrap();
        assert!(local.check_url(&url("http://127.0.0.1:9/x")).is_ok());
    }
}
