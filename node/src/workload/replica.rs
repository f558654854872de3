//! The replicas this node runs, by placement id, and the runtime that runs them. The
//! supervisor creates and removes entries; logs and stop requests look them up. Nothing
//! here imports the supervisor, so what reads the table does not depend on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::workload::runtime::RuntimeDriver;

/// A replica this node runs; dropping the sender stops nothing, sending `true` does.
pub struct ReplicaHandle {
    pub app: String,
    pub release: u64,
    pub replica: u32,
    stop: watch::Sender<bool>,
    /// When its current container started (wall clock, ms since the epoch, for people)
    /// and on the monotonic clock (for its uptime); `None` while none runs.
    started: Option<(u64, Instant)>,
    /// Times a container of it started; all but the first are restarts.
    starts: u32,
}

/// How long a replica has run and how often its container was started again after it
/// exited: what `stratus ps` shows beside what the runtime measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaTimes {
    pub placement_id: String,
    pub started_at_ms: Option<u64>,
    pub uptime: Option<Duration>,
    pub restarts: u32,
}

impl ReplicaHandle {
    pub fn new(app: String, release: u64, replica: u32, stop: watch::Sender<bool>) -> Self {
        ReplicaHandle {
            app,
            release,
            replica,
            stop,
            started: None,
            starts: 0,
        }
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

pub struct Replicas {
    runtime: Arc<dyn RuntimeDriver>,
    running: Mutex<BTreeMap<String, ReplicaHandle>>,
}

impl Replicas {
    pub fn new(runtime: Arc<dyn RuntimeDriver>) -> Replicas {
        Replicas {
            runtime,
            running: Mutex::default(),
        }
    }

    pub fn runtime(&self) -> &dyn RuntimeDriver {
        &*self.runtime
    }

    pub async fn insert(&self, placement_id: String, handle: ReplicaHandle) {
        self.running.lock().await.insert(placement_id, handle);
    }

    pub async fn remove(&self, placement_id: &str) {
        self.running.lock().await.remove(placement_id);
    }

    pub async fn runs(&self, placement_id: &str) -> bool {
        self.running.lock().await.contains_key(placement_id)
    }

    /// A container of it started (at `at_ms` on the wall clock); after the first, each
    /// start is a restart.
    pub async fn started(&self, placement_id: &str, at_ms: u64) {
        if let Some(handle) = self.running.lock().await.get_mut(placement_id) {
            handle.started = Some((at_ms, Instant::now()));
            handle.starts = handle.starts.saturating_add(1);
        }
    }

    /// Its container exited or vanished: nothing of it runs until the next start.
    pub async fn exited(&self, placement_id: &str) {
        if let Some(handle) = self.running.lock().await.get_mut(placement_id) {
            handle.started = None;
        }
    }

    /// The start times and restarts of the replicas of `app` this node runs.
    pub async fn times_of(&self, app: &str) -> Vec<ReplicaTimes> {
        self.running
            .lock()
            .await
            .iter()
            .filter(|(_, handle)| handle.app == app)
            .map(|(placement_id, handle)| ReplicaTimes {
                placement_id: placement_id.clone(),
                started_at_ms: handle.started.map(|(at_ms, _)| at_ms),
                uptime: handle.started.map(|(_, at)| at.elapsed()),
                restarts: handle.starts.saturating_sub(1),
            })
            .collect()
    }

    /// Tells the replica to stop; false if this node does not run it.
    pub async fn stop(&self, placement_id: &str) -> bool {
        match self.running.lock().await.get(placement_id) {
            Some(handle) => {
                handle.stop();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::runtime::{ProcessDriver, ProcessOptions};

    #[tokio::test(start_paused = true)]
    async fn a_replica_counts_its_restarts_and_the_uptime_of_its_current_container() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessDriver::new(ProcessOptions::new(
            "127.0.0.1".parse().unwrap(),
            dir.path(),
        ))
        .unwrap();
        let replicas = Replicas::new(Arc::new(runtime));
        let (stop, _) = watch::channel(false);
        replicas
            .insert("p1".into(), ReplicaHandle::new("web".into(), 1, 0, stop))
            .await;
        let times = replicas.times_of("web").await;
        assert_eq!(times[0].started_at_ms, None, "not started yet");
        assert_eq!(times[0].restarts, 0);

        replicas.started("p1", 1_000).await;
        tokio::time::advance(Duration::from_secs(90)).await;
        let times = replicas.times_of("web").await;
        assert_eq!(times[0].started_at_ms, Some(1_000));
        assert_eq!(times[0].uptime, Some(Duration::from_secs(90)));
        assert_eq!(times[0].restarts, 0, "the first start is no restart");

        replicas.exited("p1").await;
        assert_eq!(replicas.times_of("web").await[0].uptime, None);
        replicas.started("p1", 5_000).await;
        tokio::time::advance(Duration::from_secs(3)).await;
        let times = replicas.times_of("web").await;
        assert_eq!(times[0].restarts, 1);
        assert_eq!(times[0].uptime, Some(Duration::from_secs(3)));
        assert!(replicas.times_of("other").await.is_empty());
    }
}
