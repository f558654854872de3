//! The replicas this node runs, by placement id, and the runtime that runs them. The
//! supervisor creates and removes entries; logs and stop requests look them up. Nothing
//! here imports the supervisor, so what reads the table does not depend on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Mutex, watch};

use crate::workload::runtime::RuntimeDriver;

/// A replica this node runs; dropping the sender stops nothing, sending `true` does.
pub struct ReplicaHandle {
    pub app: String,
    pub release: u64,
    pub replica: u32,
    stop: watch::Sender<bool>,
}

impl ReplicaHandle {
    pub fn new(app: String, release: u64, replica: u32, stop: watch::Sender<bool>) -> Self {
        ReplicaHandle {
            app,
            release,
            replica,
            stop,
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
