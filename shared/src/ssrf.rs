//! Server-side request forgery protection: which destinations a webhook may reach.
//!
//! A subscription URL is attacker-controlled input. Dispatchers check every address a
//! destination resolves to, at connect time (so DNS rebinding cannot swap in an internal
//! address after validation), and consumer-api checks the URL when it is saved. Refused unless
//! configuration allows their network: loopback, private (RFC 1918), carrier-grade NAT,
//! link-local (and with it the cloud metadata address), unique-local IPv6, unspecified,
//! multicast, broadcast and documentation ranges, and IPv4 addresses spelled as IPv6
//! (`::ffff:127.0.0.1`, NAT64, 6to4) by the address they embed.
//!
//! Host *names* are also judged by themselves, whatever they resolve to (a name that does not
//! resolve where it is saved may well resolve where it is delivered): the cloud metadata
//! names ([`REFUSED_NAMES`]), names under internal suffixes ([`REFUSED_SUFFIXES`]) and
//! single-label names (resolved through the resolver's search list, so to an internal host)
//! are refused unless `security.allowed_hosts` lists them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Names refused whatever they resolve to: cloud metadata services and the local host.
pub const REFUSED_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "localhost",
    "localhost.localdomain",
];

/// Names under these suffixes are refused whatever they resolve to: internal and link-local
/// naming (RFC 6762 `.local`, RFC 8375 `.home.arpa`, RFC 6761 `.localhost`, cloud `.internal`,
/// Kubernetes `.svc` and `.cluster.local`) and private top-level names never delegated.
pub const REFUSED_SUFFIXES: &[&str] = &[
    ".internal",
    ".local",
    ".localhost",
    ".localdomain",
    ".cluster.local",
    ".svc",
    ".home.arpa",
    ".lan",
    ".intranet",
    ".corp",
    ".home",
    ".private",
];

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
    /// The host name is refused by itself.
    #[error(
        "destination host {host:?} is {why}, refused whatever it resolves to unless security.allowed_hosts includes it"
    )]
    ForbiddenName {
        /// The refused name (lower case, without a trailing dot).
        host: String,
        /// Why.
        why: &'static str,
    },
}

impl SsrfError {
    /// Whether the destination itself is refused (an address or a name), as opposed to how
    /// it is written (its scheme).
    pub fn is_forbidden_destination(&self) -> bool {
        matches!(self, Self::Forbidden { .. } | Self::ForbiddenName { .. })
    }
}

/// A `security.allowed_hosts` entry: a name (`hooks.corp.internal`), every name under a
/// suffix (`*.corp.internal`), or `*`: every name (test and fuzzing instances only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Every name.
    Any,
    /// Exactly this name.
    Exact(String),
    /// Any name ending in this suffix (which starts with a dot).
    Under(String),
}

impl HostPattern {
    /// Parses an entry.
    ///
    /// # Errors
    /// The entry, when it is not a host name or `*.` and a host name.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" {
            return Ok(Self::Any);
        }
        let (name, under) = match entry.strip_prefix("*.") {
            Some(rest) => (rest.to_owned(), true),
            None => (entry.clone(), false),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(entry);
        }
        Ok(if under {
            Self::Under(format!(".{name}"))
        } else {
            Self::Exact(name)
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => host == name,
            Self::Under(suffix) => host.ends_with(suffix.as_str()),
        }
    }
}

/// The destinations allowed, from `[security]`.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
    allowed_hosts: Vec<HostPattern>,
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
            allowed_hosts: Vec::new(),
            allow_http,
        })
    }

    /// The same policy, also allowing the host names `allowed_hosts` matches
    /// (`security.allowed_hosts`).
    ///
    /// # Errors
    /// The entry that is not a [`HostPattern`].
    pub fn with_allowed_hosts(mut self, allowed_hosts: &[String]) -> Result<Self, String> {
        self.allowed_hosts = allowed_hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Whether every address is allowed (`0.0.0.0/0` and `::/0` listed): resolving a name
    /// to check its addresses is then pointless.
    pub fn allows_every_address(&self) -> bool {
        let all = |net: &str| {
            net.parse::<IpNet>()
                .is_ok_and(|all| self.allowed.contains(&all))
        };
        all("0.0.0.0/0") && all("::/0")
    }

    /// Checks a host name by itself: metadata and internal names, and single-label names,
    /// are refused unless allowed.
    ///
    /// # Errors
    /// [`SsrfError::ForbiddenName`] saying why.
    pub fn check_name(&self, host: &str) -> Result<(), SsrfError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.allowed_hosts.iter().any(|p| p.matches(&host)) {
            return Ok(());
        }
        let why = if REFUSED_NAMES.contains(&host.as_str()) {
            Some("a metadata or local name")
        } else if REFUSED_SUFFIXES.iter().any(|suffix| host.ends_with(suffix)) {
            Some("an internal name")
        } else if !host.contains('.') {
            Some("a single-label name (resolved through the search list)")
        } else {
            None
        };
        match why {
            Some(why) => Err(SsrfError::ForbiddenName { host, why }),
            None => Ok(()),
        }
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

    /// Checks the scheme, the host when it is a literal address, and a host name by itself
    /// ([`Self::check_name`]). The addresses a name resolves to are checked when it is
    /// resolved (dispatchers: at connect time).
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
            Some(url::Host::Domain(name)) => self.check_name(name),
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

    #[test]
    fn metadata_and_internal_names_are_refused_whatever_they_resolve_to() {
        let strict = NetworkPolicy::default();
        for name in [
            "metadata.google.internal",
            "METADATA.google.internal.",
            "metadata.goog",
            "metadata",
            "instance-data",
            "instance-data.ec2.internal",
            "localhost",
            "api.localhost",
            "printer.local",
            "db.svc",
            "redis.default.svc.cluster.local",
            "box.localdomain",
            "nas.home.arpa",
            "anything.internal",
            "kubernetes",
        ] {
            assert!(
                matches!(
                    strict.check_name(name),
                    Err(SsrfError::ForbiddenName { .. })
                ),
                "{name} allowed"
            );
        }
        for name in [
            "example.com",
            "hooks.example.org",
            "internal.example.com",
            "local.io",
        ] {
            assert!(strict.check_name(name).is_ok(), "{name} refused");
        }
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(
            strict
                .check_url(&url("https://metadata.google.internal/computeMetadata/v1/"))
                .is_err()
        );
        let allowing = NetworkPolicy::default()
            .with_allowed_hosts(&["hooks.corp.internal".into(), "*.svc.cluster.local".into()])
            .unwrap();
        assert!(allowing.check_name("hooks.corp.internal").is_ok());
        assert!(allowing.check_name("a.b.svc.cluster.local").is_ok());
        assert!(allowing.check_name("other.corp.internal").is_err());
        assert!(allowing.check_name("metadata.google.internal").is_err());
        let everything = NetworkPolicy::new(&["0.0.0.0/0".into(), "::/0".into()], true)
            .unwrap()
            .with_allowed_hosts(&["*".into()])
            .unwrap();
        assert!(everything.check_name("metadata").is_ok());
        assert!(everything.allows_every_address());
        assert!(!strict.allows_every_address());
        for bad in ["", "*.", "a..b", "http://x", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
