//! Network partitions between groups of loopback addresses, made with an nftables table of
//! the test's own and always removed again.
//!
//! Agents on one machine share the loopback interface, so a partition cannot unplug a cable:
//! it drops packets instead, in a table named `stratus_test_<pid>_<n>`, on `input` so that
//! they vanish as on a cut network (the sender's `send` succeeds). Two kinds of rules:
//!
//! - by address, both directions: a packet from an address of one group to an address of
//!   the other. This catches every socket bound to its agent's address, which is how
//!   gossip (UDP) leaves an agent;
//! - by cgroup, for sockets that are not bound: an agent's API client connects from
//!   `127.0.0.1` (the kernel's source for loopback routes), whichever agent it is, so the
//!   address says nothing. [`crate::harness::LocalCluster::isolate_agents_in_cgroups`] puts
//!   each agent in a cgroup v2 of its own, named after its address; what a socket of one
//!   group's cgroups sends to the other group's agent ports (API over TCP, gossip over
//!   UDP) is marked on `output`, where the sending socket is known, and dropped on `input`.
//!
//! Only the agents' own ports are cut for unbound sockets: an ingress embedded in an agent
//! keeps reaching replicas published on the other group's addresses, and the test's own
//! calls (from the test process, in no agent's cgroup) reach every agent.
//!
//! The table goes away on [`Partition::heal`] or when the [`Partition`] is dropped, also
//! while unwinding from a panic. A test killed outright cannot run its destructor: the next
//! [`Partition::new`] removes tables whose process no longer exists.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cgroups::{AgentCgroups, CgroupError};
use crate::harness::{API_PORT, GOSSIP_PORT};

/// Tables of this process are `stratus_test_<pid>_<n>`.
const TABLE_PREFIX: &str = "stratus_test_";

/// Packet marks of partitions are `0x5a7a____`; nothing else on a test host uses them.
const MARK_BASE: u32 = 0x5a7a_0000;

static NEXT_TABLE: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("cannot run nft (install Debian's nftables): {0}")]
    NftMissing(std::io::Error),
    #[error("nft failed: {0}")]
    Nft(String),
    #[error("a partition needs two non-empty groups with no address in common")]
    Groups,
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// Traffic between two groups of addresses is dropped while this lives.
#[derive(Debug)]
pub struct Partition {
    table: String,
    healed: bool,
}

impl Partition {
    /// Cuts `a` from `b`: UDP and TCP both ways between their addresses, and for agents
    /// that live in cgroups of their own, whatever their unbound sockets send to the other
    /// group's agent ports. Addresses outside both groups are not touched.
    pub fn new(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> Result<Partition, PartitionError> {
        if a.is_empty() || b.is_empty() || a.iter().any(|ip| b.contains(ip)) {
            return Err(PartitionError::Groups);
        }
        remove_stale_tables();
        let number = NEXT_TABLE.fetch_add(1, Ordering::Relaxed);
        let table = format!("{TABLE_PREFIX}{}_{number}", std::process::id());
        // A mark of this table's own, so two partitions never drop each other's packets.
        let mark = MARK_BASE | ((std::process::id() & 0xff) << 8) | (number & 0xff);
        let cgroups = AgentCgroups::detect().ok();
        let script = ruleset(&table, mark, a, b, cgroups.as_ref());
        nft_script(&script)?;
        Ok(Partition {
            table,
            healed: false,
        })
    }

    /// The nftables table's name (`nft list table inet NAME` shows it).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Removes the table: traffic flows again.
    pub fn heal(mut self) -> Result<(), PartitionError> {
        self.healed = true;
        delete_table(&self.table)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.healed
            && let Err(err) = delete_table(&self.table)
        {
            eprintln!("could not remove nftables table {}: {err}", self.table);
        }
    }
}

fn set(addrs: &[Ipv4Addr]) -> String {
    let list: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

/// The whole table as one nft script, applied atomically.
///
/// Packets are dropped on `input`, as a cut cable would lose them: the sender's `send`
/// succeeds and nothing arrives (dropping on `output` would hand the sender an immediate
/// EPERM, which no real network does). The sending socket's cgroup is only known on
/// `output`, so a packet of an agent's unbound socket is marked there and dropped on
/// `input` by its mark (a mark stays with a packet across the loopback device).
fn ruleset(
    table: &str,
    mark: u32,
    a: &[Ipv4Addr],
    b: &[Ipv4Addr],
    cgroups: Option<&AgentCgroups>,
) -> String {
    let (set_a, set_b) = (set(a), set(b));
    let mut marking = Vec::new();
    if let Some(cgroups) = cgroups {
        for (group, other) in [(a, &set_b), (b, &set_a)] {
            for ip in group {
                let Some((path, level)) = cgroups.nft_path(*ip) else {
                    continue;
                };
                marking.push(format!(
                    "socket cgroupv2 level {level} \"{path}\" ip daddr {other} tcp dport {API_PORT} meta mark set {mark:#x}"
                ));
                marking.push(format!(
                    "socket cgroupv2 level {level} \"{path}\" ip daddr {other} udp dport {GOSSIP_PORT} meta mark set {mark:#x}"
                ));
            }
        }
    }
    let dropping = [
        format!("ip saddr {set_a} ip daddr {set_b} drop"),
        format!("ip saddr {set_b} ip daddr {set_a} drop"),
        format!("meta mark {mark:#x} drop"),
    ];
    let chain = |name: &str, hook: &str, rules: &[String]| {
        let body: String = rules.iter().map(|rule| format!("    {rule}\n")).collect();
        format!(
            "  chain {name} {{\n    type filter hook {hook} priority filter; policy accept;\n{body}  }}\n"
        )
    };
    format!(
        "table inet {table} {{\n{}{}}}\n",
        chain("mark_agents", "output", &marking),
        chain("cut", "input", &dropping)
    )
}

fn nft_script(script: &str) -> Result<(), PartitionError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(PartitionError::NftMissing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|err| PartitionError::Nft(err.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|err| PartitionError::Nft(err.to_string()))?;
    if !output.status.success() {
        return Err(PartitionError::Nft(format!(
            "{}\n{script}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

fn delete_table(table: &str) -> Result<(), PartitionError> {
    let output = Command::new("nft")
        .args(["delete", "table", "inet", table])
        .output()
        .map_err(PartitionError::NftMissing)?;
    if !output.status.success() {
        return Err(PartitionError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Tables left by test processes that died without running their destructors.
fn remove_stale_tables() {
    let Ok(output) = Command::new("nft")
        .args(["list", "tables", "inet"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(TABLE_PREFIX)
            .and_then(|rest| rest.split('_').next())
        else {
            continue;
        };
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = delete_table(name);
        }
    }
}

/// Whether this table is present, for tests that check the cleanup.
pub fn table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_cuts_both_directions_by_address() {
        let a = [Ipv4Addr::new(127, 0, 40, 2)];
        let b = [Ipv4Addr::new(127, 0, 40, 3), Ipv4Addr::new(127, 0, 40, 4)];
        let script = ruleset("t", 0x5a7a_0001, &a, &b, None);
        assert!(
            script.contains("ip saddr { 127.0.40.2 } ip daddr { 127.0.40.3, 127.0.40.4 } drop")
        );
        assert!(
            script.contains("ip saddr { 127.0.40.3, 127.0.40.4 } ip daddr { 127.0.40.2 } drop")
        );
        assert!(script.contains("meta mark 0x5a7a0001 drop"));
        assert!(script.contains("hook input"));
    }
}
