//! The handle of one replica this node runs, kept in the agent's state by placement id.
//! It owns nothing of the state, so the state can hold it without importing the supervisor
//! that creates it.

use tokio::sync::watch;

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
