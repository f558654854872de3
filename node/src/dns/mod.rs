//! DNS for apps and nodes (`--dns-addr`), answered by every agent from its own view: the
//! names `APP.service.stratus`, `_http._tcp.APP.service.stratus`,
//! `RELEASE.APP.service.stratus` and `NODE.node.stratus` (see [`zone`] for the whole
//! list). ARCHITECTURE.md ("DNS") has the design.
//!
//! - [`zone`]: the answer table, pure: names to records, for one asker;
//! - [`zone_feed`]: the zone remade from every view change;
//! - [`exchange`]: one query's bytes to the answer's, pure: truncation, EDNS, errors;
//! - [`askers`]: the tenant a source address belongs to, and its network's gateway;
//! - [`server`]: the UDP and TCP sockets, forwarding to a recursor, counters.

pub mod askers;
pub mod exchange;
pub mod server;
pub mod zone;
pub mod zone_feed;

pub use askers::TenantSubnets;
pub use server::{DnsCounters, DnsListeners, DnsService, DnsStats};
pub use zone::{Asker, Scope, Zone, ZoneConfig};
