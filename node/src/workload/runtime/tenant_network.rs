//! Isolation between tenants on one node, as data: the Docker network each tenant's
//! containers join, its bridge, and the nftables rules that close what Docker's own
//! network isolation leaves open. Pure; the Docker driver creates the networks and hands
//! the script to `nft -f -`. SECURITY.md ("Isolation between tenants") has the design.
//!
//! - One bridge network per tenant and node, [`network_name`] (`stratus-t-<tenant>`), on a
//!   bridge of a name derived from the daemon and the network ([`bridge_name`], `stt-` and
//!   11 hex digits), created when the tenant's first container starts here. Containers of
//!   one tenant reach each other on it; Docker drops forwarding between two of its bridge
//!   networks (its `DOCKER-ISOLATION` chains).
//! - [`nft_script`]: one table per daemon and port range, whose chains run just before
//!   Docker's (priority `filter - 1`) and drop, for packets that come in from a tenant
//!   bridge: connections to the replica port range on this host (the published ports of
//!   every tenant, whichever address they are bound to) or on any other host (another
//!   node's replicas), matched on the port before any DNAT, for connections the container
//!   opens (`ct direction original`: its answers to an agent's connection pass); and
//!   forwarding from one tenant
//!   bridge to another, even where Docker's own rules are off (`--iptables=false`).
//!   Agents and ingresses connect from the host itself or from other hosts, never through
//!   a tenant bridge, so they still reach every replica.
//! - With the node-local balancer on ([`InternalPorts`]), the same table redirects what a
//!   tenant's container sends to a host address (its gateway) on port 53, UDP or TCP, to
//!   the agent's DNS port for containers, and on port 80 to the balancer's port: a
//!   container resolves `APP.internal` to its gateway and calls `http://APP.internal/`
//!   there. Both listeners tell the caller's tenant by its source address, which the
//!   redirect keeps, and only tenant bridges and the host itself (`lo`) reach their ports.

use sha2::{Digest, Sha256};

use super::ports::PortRange;

/// Docker network names of tenants start with this.
pub const NETWORK_PREFIX: &str = "stratus-t-";

/// Bridge interface names of tenant networks start with this.
pub const BRIDGE_PREFIX: &str = "stt-";

/// Label on a tenant network (and on the containers that join it): the tenant.
pub const TENANT_LABEL: &str = "stratus.tenant";

/// Docker's option naming a bridge network's interface.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The Docker network of `tenant`'s containers on a node.
pub fn network_name(tenant: &str) -> String {
    format!("{NETWORK_PREFIX}{tenant}")
}

/// The bridge interface of `network` on the daemon `daemon_id`: stable, at most 15 bytes
/// (Linux's limit), and different on two daemons of one host (a sandbox dockerd beside
/// the host's), which could otherwise fight over one interface.
pub fn bridge_name(daemon_id: &str, network: &str) -> String {
    let digest = Sha256::digest(format!("{daemon_id}\0{network}").as_bytes());
    let hex = hex::encode(digest);
    format!("{BRIDGE_PREFIX}{}", &hex[..11])
}

/// The nftables table of the daemon `daemon_id` with the replica port range `ports`.
pub fn table_name(daemon_id: &str, ports: PortRange) -> String {
    let digest = Sha256::digest(format!("{daemon_id}\0{ports}").as_bytes());
    format!("stratus_{}", &hex::encode(digest)[..12])
}

/// The agent's listeners for containers (`--internal-port`), which a tenant bridge's
/// ports 80 and 53 lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalPorts {
    /// The node-local balancer (HTTP).
    pub http: u16,
    /// The DNS server's listener for containers (UDP and TCP).
    pub dns: u16,
}

/// An `nft -f -` script that makes the table of `table` exist with its rules for `ports`
/// and adds `bridges` to its tenant bridges. Idempotent and atomic (one transaction), and
/// it never removes a bridge another agent sharing the daemon added: each agent adds the
/// bridges it uses, and the rules are the same for all.
///
/// The port-range rules match every tenant bridge on the host by its name (`stt-*`), not
/// only the bridges of this table's set: agents sharing a daemon with port ranges of
/// their own each keep a table, and a tenant that only another agent runs here must not
/// reach this agent's published ports (`testbed/tests/tenants_docker.rs` caught it).
///
/// With `internal`, a `prerouting` chain (just before Docker's DNAT) redirects the
/// bridges' DNS and HTTP to the agent's own ports; on their own bridges only, so two
/// agents on one daemon, each with ports of its own, both answer their containers.
/// Without it the chain is there and empty, so turning the balancer off takes effect.
pub fn nft_script(
    table: &str,
    ports: PortRange,
    bridges: &[String],
    internal: Option<InternalPorts>,
) -> String {
    let range = ports.to_string();
    let mut script = format!(
        "add table inet {table}\n\
         add set inet {table} bridges {{ type ifname; }}\n\
         add set inet {table} same_bridge {{ type ifname . ifname; }}\n\
         add chain inet {table} input {{ type filter hook input priority filter - 1; policy accept; }}\n\
         add chain inet {table} forward {{ type filter hook forward priority filter - 1; policy accept; }}\n\
         add chain inet {table} prerouting {{ type nat hook prerouting priority dstnat - 1; policy accept; }}\n\
         flush chain inet {table} input\n\
         flush chain inet {table} forward\n\
         flush chain inet {table} prerouting\n\
         add rule inet {table} input iifname \"{BRIDGE_PREFIX}*\" ct direction original meta l4proto tcp ct original proto-dst {range} drop\n\
         add rule inet {table} forward iifname \"{BRIDGE_PREFIX}*\" ct direction original meta l4proto tcp ct original proto-dst {range} drop\n\
         add rule inet {table} forward iifname @bridges oifname @bridges iifname . oifname != @same_bridge drop\n"
    );
    if let Some(InternalPorts { http, dns }) = internal {
        let to_host =
            format!("add rule inet {table} prerouting iifname @bridges fib daddr type local");
        script.push_str(&format!(
            "{to_host} udp dport 53 redirect to :{dns}\n\
             {to_host} tcp dport 53 redirect to :{dns}\n\
             {to_host} tcp dport 80 redirect to :{http}\n\
             add rule inet {table} input meta l4proto {{ tcp, udp }} th dport {{ {http}, {dns} }} iifname != \"lo\" iifname != \"{BRIDGE_PREFIX}*\" drop\n"
        ));
    }
    for bridge in bridges {
        debug_assert!(is_bridge_name(bridge), "{bridge}");
        script.push_str(&format!(
            "add element inet {table} bridges {{ \"{bridge}\" }}\n\
             add element inet {table} same_bridge {{ \"{bridge}\" . \"{bridge}\" }}\n"
        ));
    }
    script
}

/// What [`bridge_name`] makes: only these are written into a script.
pub fn is_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX)
        .is_some_and(|rest| rest.len() == 11 && rest.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_network_and_bridge_on_each_daemon() {
        assert_eq!(network_name("acme"), "stratus-t-acme");
        let bridge = bridge_name("daemon-1", &network_name("acme"));
        assert!(bridge.len() <= 15 && is_bridge_name(&bridge), "{bridge}");
        assert_eq!(bridge, bridge_name("daemon-1", "stratus-t-acme"), "stable");
        assert_ne!(bridge, bridge_name("daemon-1", "stratus-t-globex"));
        assert_ne!(bridge, bridge_name("daemon-2", "stratus-t-acme"));
        assert!(!is_bridge_name("docker0") && !is_bridge_name("stt-x\"; flush"));
    }

    #[test]
    fn the_rules_close_the_port_range_and_other_bridges_to_tenant_containers() {
        let ports = PortRange::new(20000, 29999).unwrap();
        let table = table_name("daemon-1", ports);
        assert!(
            table.starts_with("stratus_") && table.len() == 20,
            "{table}"
        );
        assert_ne!(table, table_name("daemon-2", ports));
        let a = bridge_name("daemon-1", "stratus-t-a");
        let b = bridge_name("daemon-1", "stratus-t-b");
        let script = nft_script(&table, ports, &[a.clone(), b.clone()], None);
        assert!(script.contains(&format!(
            "add rule inet {table} input iifname \"stt-*\" ct direction original meta l4proto tcp ct original proto-dst 20000-29999 drop"
        )));
        assert!(script.contains(
            "forward iifname @bridges oifname @bridges iifname . oifname != @same_bridge drop"
        ));
        assert!(script.contains(&format!("same_bridge {{ \"{a}\" . \"{a}\" }}")));
        assert!(script.contains(&format!("bridges {{ \"{b}\" }}")));
        // Rules are flushed and written again, so running the script twice adds none twice.
        let flush = script.find("flush chain").unwrap();
        let first_rule = script.find("add rule").unwrap();
        assert!(flush < first_rule);
        assert!(
            !script.contains("delete"),
            "nothing another agent added is removed"
        );
        assert!(!script.contains("redirect"), "no balancer, no redirect");
        assert!(script.contains(&format!("flush chain inet {table} prerouting")));
    }

    #[test]
    fn with_the_balancer_a_bridge_s_dns_and_http_to_the_host_lead_to_the_agent() {
        let ports = PortRange::new(20000, 29999).unwrap();
        let table = table_name("daemon-1", ports);
        let internal = InternalPorts {
            http: 8711,
            dns: 8712,
        };
        let script = nft_script(&table, ports, &[], Some(internal));
        let rule = |tail: &str| {
            format!("add rule inet {table} prerouting iifname @bridges fib daddr type local {tail}")
        };
        for tail in [
            "udp dport 53 redirect to :8712",
            "tcp dport 53 redirect to :8712",
            "tcp dport 80 redirect to :8711",
        ] {
            assert!(script.contains(&rule(tail)), "{tail}\n{script}");
        }
        assert!(
            script.contains("type nat hook prerouting priority dstnat - 1"),
            "before Docker's DNAT"
        );
        // The listeners are for containers and the host only: another host, or a container
        // off the tenant networks (docker0), is dropped.
        assert!(script.contains(&format!(
            "add rule inet {table} input meta l4proto {{ tcp, udp }} th dport {{ 8711, 8712 }} iifname != \"lo\" iifname != \"stt-*\" drop"
        )));
        // The redirected connection keeps port 80 as its original destination, outside the
        // replica range the input chain closes.
        assert!(!ports.contains(80) && !ports.contains(53));
    }
}
