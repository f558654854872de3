//! Agents in cgroups v2 of their own, one per loopback address, so that what their unbound
//! sockets send can be told apart: [`crate::harness::LocalCluster`] starts agents in them,
//! and [`crate::chaos::partition`] matches their sockets in nftables rules.
//!
//! It imports neither of them: both build on it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where nftables resolves cgroup v2 paths from (nft prefixes every path with it).
const NFT_CGROUP_BASE: &str = "/sys/fs/cgroup";
/// The folder of agents' cgroups, under the cgroup v2 root.
const AGENTS_CGROUP: &str = "stratus_testbed";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy under {NFT_CGROUP_BASE}: {0}")]
    NoCgroup2(String),
    #[error("cgroup setup failed at {path}: {source}")]
    Setup {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cgroup v2 hierarchy, for putting agents in cgroups of their own.
#[derive(Debug, Clone)]
pub struct AgentCgroups {
    /// Where cgroup2 is mounted, e.g. `/sys/fs/cgroup/unified` on a hybrid host.
    mount: PathBuf,
}

impl AgentCgroups {
    /// Finds the cgroup v2 mount, which must lie under `/sys/fs/cgroup` for nftables to
    /// resolve paths in it.
    pub fn detect() -> Result<AgentCgroups, CgroupError> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|err| CgroupError::NoCgroup2(err.to_string()))?;
        let mount = mounts
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (_, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
                (kind == "cgroup2").then(|| PathBuf::from(target))
            })
            .find(|target| target.starts_with(NFT_CGROUP_BASE))
            .ok_or_else(|| CgroupError::NoCgroup2("no cgroup2 mount found".into()))?;
        let cgroups = AgentCgroups { mount };
        let parent = cgroups.mount.join(AGENTS_CGROUP);
        std::fs::create_dir_all(&parent).map_err(|source| CgroupError::Setup {
            path: parent.clone(),
            source,
        })?;
        Ok(cgroups)
    }

    /// The cgroup of the agent on `ip` (created by [`AgentCgroups::create`]).
    pub fn dir(&self, ip: Ipv4Addr) -> PathBuf {
        self.mount.join(AGENTS_CGROUP).join(ip.to_string())
    }

    /// Creates the agent's cgroup and returns its `cgroup.procs`, where a process writes
    /// its pid to move itself in.
    pub fn create(&self, ip: Ipv4Addr) -> Result<PathBuf, CgroupError> {
        let dir = self.dir(ip);
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Setup {
            path: dir.clone(),
            source,
        })?;
        Ok(dir.join("cgroup.procs"))
    }

    /// Removes the agent's cgroup; only possible once no process is left in it.
    pub fn remove(&self, ip: Ipv4Addr) {
        let _ = std::fs::remove_dir(self.dir(ip));
    }

    /// The path as nft wants it, and its depth below the cgroup v2 root.
    pub(crate) fn nft_path(&self, ip: Ipv4Addr) -> Option<(String, usize)> {
        let dir = self.dir(ip);
        if !dir.is_dir() {
            return None;
        }
        let below_base = dir.strip_prefix(NFT_CGROUP_BASE).ok()?;
        let level = dir.strip_prefix(&self.mount).ok()?.components().count();
        Some((below_base.display().to_string(), level))
    }
}
