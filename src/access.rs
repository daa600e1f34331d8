//! Who may connect: CIDR allow lists of PBX (or scraper) source addresses, per listener.
//! Pure: parses and matches addresses, knows nothing of sockets.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network: an address and how many leading bits of it must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an address or network (e.g. 10.0.0.0/8, 192.0.2.7, ::1, fd00::/8): {why}")]
pub struct CidrError {
    text: String,
    why: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let error = |why| CidrError {
            text: text.to_owned(),
            why,
        };
        let trimmed = text.trim();
        let (addr, prefix) = match trimmed.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (trimmed, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| error("bad address"))?;
        let max = max_prefix(network);
        let prefix = match prefix {
            None => max,
            Some(bits) if !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()) => bits
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| error("prefix length too long for this address family"))?,
            Some(_) => return Err(error("prefix length must be a number")),
        };
        // A v4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network it names: peers
        // are compared in their canonical form.
        let (network, prefix) = match network {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (network.to_canonical(), prefix - 96)
            }
            _ => (network, prefix),
        };
        // Host bits set (`10.1.2.3/8`) are a common typo for the network; keep the network.
        Ok(Cidr {
            network: mask(network, prefix),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// True when `addr` lies inside this network (IPv4-mapped IPv6 peers count as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        let same_family = addr.is_ipv4() == self.network.is_ipv4();
        same_family && mask(addr, self.prefix) == self.network
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & keep).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & keep).into())
        }
    }
}

/// Networks allowed to connect to one listener; an address outside all of them is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<Cidr>,
}

impl AllowList {
    /// Parses config entries; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, CidrError> {
        let networks = entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(AllowList { networks })
    }

    /// Loopback only, IPv4 and IPv6: the default of every listener.
    pub fn loopback() -> AllowList {
        AllowList {
            networks: vec![
                Cidr {
                    network: IpAddr::V4([127, 0, 0, 0].into()),
                    prefix: 8,
                },
                Cidr {
                    network: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
        }
    }

    /// True when `addr` may connect.
    pub fn permits(&self, addr: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(addr))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// The config default of every `allow_from`: loopback only.
pub fn default_allow_from() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn networks_and_hosts() {
        let list = AllowList::parse(&["10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1"]).expect("ok");
        for yes in ["10.1.2.3", "10.255.255.255", "192.0.2.7", "fd12::1", "::1"] {
            assert!(list.permits(ip(yes)), "{yes}");
        }
        for no in ["11.0.0.1", "192.0.2.8", "fe80::1", "::2", "127.0.0.1"] {
            assert!(!list.permits(ip(no)), "{no}");
        }
    }

    #[test]
    fn v4_mapped_peers_and_networks_are_ipv4() {
        let list = AllowList::parse(&["192.168.0.0/16"]).expect("ok");
        // A dual-stack listener ([::]) reports IPv4 peers like this.
        assert!(list.permits(ip("::ffff:192.168.1.1")));
        assert!(!list.permits(ip("::ffff:10.0.0.1")));
        let mapped = AllowList::parse(&["::ffff:10.0.0.0/104"]).expect("ok");
        assert!(mapped.permits(ip("10.9.9.9")));
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn edges_of_prefix_lengths() {
        let all = AllowList::parse(&["0.0.0.0/0", "::/0"]).expect("ok");
        assert!(all.permits(ip("203.0.113.9")) && all.permits(ip("2001:db8::1")));
        let v4_only = AllowList::parse(&["0.0.0.0/0"]).expect("ok");
        assert!(!v4_only.permits(ip("2001:db8::1")));
        let host_bits = AllowList::parse(&["10.1.2.3/8"]).expect("ok");
        assert_eq!(host_bits.to_string(), "10.0.0.0/8");
        assert!(AllowList::parse::<&str>(&[]).is_ok_and(|l| !l.permits(ip("127.0.0.1"))));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/x",
            "host",
        ] {
            let err = AllowList::parse(&[bad]).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn loopback_default() {
        let list = AllowList::parse(&default_allow_from()).expect("ok");
        assert_eq!(list, AllowList::loopback());
        assert!(list.permits(ip("127.0.0.53")) && list.permits(ip("::1")));
        assert!(!list.permits(ip("192.168.1.10")));
    }
}
