//! Host-port allocation for published containers and processes.
//!
//! The decision is pure: [`PortAllocator::allocate`] walks the configured range from a
//! cursor, skips ports that known containers hold (running or exited: an exited container
//! keeps its port binding and gets it back on restart) and asks a caller-supplied check
//! whether a candidate is really free. The drivers pass [`bind_test`], which binds the port
//! on the advertise IP and on the wildcard address for a moment, so a port taken by
//! something Stratus does not know about (another daemon, a process left from a crashed
//! agent, another agent's app on the same host) is skipped too.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::str::FromStr;

/// An inclusive range of host ports, `start-end` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// 10,000 ports well above the usual service ports and below Linux's ephemeral range
    /// (32768-60999), so outgoing connections never take them.
    pub const DEFAULT: PortRange = PortRange {
        start: 20000,
        end: 29999,
    };

    /// Returns `None` when `start > end` or `start` is 0 (port 0 means "any" to the kernel).
    pub fn new(start: u16, end: u16) -> Option<PortRange> {
        (start > 0 && start <= end).then_some(PortRange { start, end })
    }

    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    /// Never true for a range built by [`PortRange::new`]; here for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.start > self.end
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::DEFAULT
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid port range {0:?}: write start-end, for example 20000-29999")]
pub struct PortRangeError(String);

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || PortRangeError(text.to_string());
        let (start, end) = text.split_once('-').ok_or_else(invalid)?;
        let start = start.trim().parse().map_err(|_| invalid())?;
        let end = end.trim().parse().map_err(|_| invalid())?;
        PortRange::new(start, end).ok_or_else(invalid)
    }
}

/// Hands out host ports round-robin over a range.
///
/// Round-robin rather than lowest-free: a port released a moment ago may still be in a
/// peer's route table or in TIME_WAIT, so it is the last one handed out again.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: PortRange,
    /// The next port to try.
    cursor: u16,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> PortAllocator {
        PortAllocator {
            range,
            cursor: range.start,
        }
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Picks the first port from the cursor on that is neither in `in_use` nor refused by
    /// `is_free`, and moves the cursor past it. `None` when every port in the range is
    /// taken. `is_free` is called at most once per candidate, in order.
    pub fn allocate(
        &mut self,
        in_use: &BTreeSet<u16>,
        mut is_free: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        let mut candidate = self.cursor;
        for _ in 0..self.range.len() {
            let next = if candidate >= self.range.end {
                self.range.start
            } else {
                candidate + 1
            };
            if !in_use.contains(&candidate) && is_free(candidate) {
                self.cursor = next;
                return Some(candidate);
            }
            candidate = next;
        }
        None
    }
}

/// Whether a TCP listener could bind `ip:port`, and the wildcard address's `port`, right
/// now. Apps bind `0.0.0.0:$PORT`, which fails if anything holds the port on any address:
/// two agents on one host (127.0.0.1 and 127.0.0.2, say) would otherwise both find a port
/// free on their own IP and hand it to two apps. Each listener is dropped at once; the
/// caller must still expect to lose a race for the port with another program.
pub fn bind_test(ip: IpAddr, port: u16) -> bool {
    let wildcard = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    [wildcard, ip]
        .into_iter()
        .all(|ip| TcpListener::bind(SocketAddr::new(ip, port)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u16, end: u16) -> PortRange {
        PortRange::new(start, end).unwrap()
    }

    #[test]
    fn parses_and_rejects_ranges() {
        assert_eq!("20000-29999".parse(), Ok(PortRange::DEFAULT));
        assert_eq!(" 5 - 6 ".parse(), Ok(range(5, 6)));
        for bad in ["", "20000", "2-1", "0-10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!(PortRange::DEFAULT.len(), 10_000);
        assert_eq!(PortRange::DEFAULT.to_string(), "20000-29999");
    }

    #[test]
    fn allocates_round_robin_and_skips_ports_in_use() {
        let mut allocator = PortAllocator::new(range(100, 104));
        let in_use = BTreeSet::from([101]);
        assert_eq!(allocator.allocate(&in_use, |_| true), Some(100));
        assert_eq!(allocator.allocate(&in_use, |_| true), Some(102));
        // 100 is free again, but the cursor goes on before coming back.
        assert_eq!(allocator.allocate(&in_use, |_| true), Some(103));
        assert_eq!(allocator.allocate(&in_use, |_| true), Some(104));
        assert_eq!(allocator.allocate(&in_use, |_| true), Some(100));
    }

    #[test]
    fn skips_ports_that_fail_the_bind_test() {
        let mut allocator = PortAllocator::new(range(100, 103));
        let mut tried = Vec::new();
        let port = allocator.allocate(&BTreeSet::new(), |port| {
            tried.push(port);
            port == 102
        });
        assert_eq!(port, Some(102));
        assert_eq!(tried, [100, 101, 102]);
        assert_eq!(allocator.allocate(&BTreeSet::new(), |_| true), Some(103));
    }

    #[test]
    fn reports_a_full_range_after_one_lap() {
        let mut allocator = PortAllocator::new(range(100, 102));
        let in_use = BTreeSet::from([100, 102]);
        let mut calls = 0;
        let port = allocator.allocate(&in_use, |_| {
            calls += 1;
            false
        });
        assert_eq!(port, None);
        assert_eq!(calls, 1, "only 101 was neither in use nor tried");
    }

    #[test]
    fn wraps_at_the_top_of_the_u16_range() {
        let mut allocator = PortAllocator::new(range(65534, 65535));
        assert_eq!(allocator.allocate(&BTreeSet::new(), |_| true), Some(65534));
        assert_eq!(allocator.allocate(&BTreeSet::new(), |_| true), Some(65535));
        assert_eq!(allocator.allocate(&BTreeSet::new(), |_| true), Some(65534));
    }

    #[test]
    fn bind_test_sees_a_taken_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!bind_test("127.0.0.1".parse().unwrap(), port));
        drop(listener);
        assert!(bind_test("127.0.0.1".parse().unwrap(), port));
    }

    #[test]
    fn bind_test_sees_a_port_taken_on_another_address_of_the_host() {
        // Another agent's app (or anything) on 127.0.0.1: free on 127.0.0.2 alone, but an
        // app of ours binding 0.0.0.0 would fail with "address already in use".
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let other_ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(TcpListener::bind(SocketAddr::new(other_ip, port)).is_ok());
        assert!(!bind_test(other_ip, port));
        assert!(
            TcpListener::bind(("0.0.0.0", port)).is_err(),
            "what the app would see"
        );
        drop(listener);
        assert!(bind_test(other_ip, port));
    }
}
