//! Samples this machine's load with `sysinfo` and decides when it is worth gossiping.

use proto::NodeLoad;
use proto::node::LoadChangeThresholds;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Keeps the `sysinfo` state between samples (CPU usage is a difference of two readings).
pub struct LoadSampler {
    system: System,
    last_published: Option<NodeLoad>,
    thresholds: LoadChangeThresholds,
}

impl Default for LoadSampler {
    fn default() -> Self {
        LoadSampler::new()
    }
}

impl LoadSampler {
    pub fn new() -> LoadSampler {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        LoadSampler {
            system,
            last_published: None,
            thresholds: LoadChangeThresholds::default(),
        }
    }

    /// Reads the machine now. `reserved` is (millicores, bytes) reserved by containers.
    pub fn sample(&mut self, reserved: (u64, u64)) -> NodeLoad {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        NodeLoad {
            cpu_cores: self.system.cpus().len() as u32,
            cpu_usage_pct: self.system.global_cpu_usage(),
            mem_total_bytes: self.system.total_memory(),
            mem_available_bytes: self.system.available_memory(),
            reserved_cpu_millis: reserved.0,
            reserved_mem_bytes: reserved.1,
        }
    }

    /// Returns the load to publish, if it changed enough since the last publication.
    pub fn poll_publish(&mut self, load: NodeLoad) -> Option<NodeLoad> {
        let changed = match &self.last_published {
            None => true,
            Some(last) => last.differs_meaningfully(&load, self.thresholds),
        };
        if !changed {
            return None;
        }
        self.last_published = Some(load);
        Some(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_real_machine_and_only_republishes_on_change() {
        let mut sampler = LoadSampler::new();
        let load = sampler.sample((0, 0));
        assert!(load.cpu_cores >= 1);
        assert!(load.mem_total_bytes > 0);
        assert!(load.mem_available_bytes <= load.mem_total_bytes);
        assert_eq!(sampler.poll_publish(load), Some(load));
        assert_eq!(
            sampler.poll_publish(load),
            None,
            "identical load is not republished"
        );
        let reserved = NodeLoad {
            reserved_mem_bytes: 1,
            ..load
        };
        assert_eq!(sampler.poll_publish(reserved), Some(reserved));
    }
}
