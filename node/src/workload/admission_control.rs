//! What this node agrees to run: the admission ledger of the replicas it reserved room for
//! (the pure [`Admission`]), whether an operator drained it, and whether it can run a
//! gVisor tenant's replicas at all. A drain is remembered in a marker file across
//! restarts; gossiping it is the caller's part.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;

use crate::control::scheduler::{Admission, AdmitDecision, Needs};

pub struct AdmissionControl {
    ledger: Mutex<Admission>,
    draining: AtomicBool,
    drain_marker: PathBuf,
    gvisor: AtomicBool,
}

/// Why a placement was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Draining,
    NoRoom(String),
    /// The replica must run under gVisor and this node's runtime has no `runsc`.
    NoGvisor,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Draining => write!(f, "the node is draining: it takes no new replicas"),
            Refusal::NoRoom(reason) => write!(f, "{reason}"),
            Refusal::NoGvisor => write!(
                f,
                "its tenant runs under gVisor and this node has no runsc runtime: \
                 install runsc and add it to Docker's runtimes, or place it elsewhere"
            ),
        }
    }
}

impl AdmissionControl {
    /// Room for `cpu_millis` and `mem_bytes`; drained if the marker under `data_dir` says
    /// an operator drained the node before it stopped.
    pub fn new(data_dir: &Path, cpu_millis: u64, mem_bytes: u64) -> AdmissionControl {
        let drain_marker = data_dir.join("draining");
        AdmissionControl {
            ledger: Mutex::new(Admission::new(cpu_millis, mem_bytes)),
            draining: AtomicBool::new(drain_marker.exists()),
            drain_marker,
            gvisor: AtomicBool::new(false),
        }
    }

    /// Says whether this node's runtime runs gVisor (`runsc`); off until told.
    pub fn set_gvisor(&self, available: bool) {
        self.gvisor.store(available, Ordering::SeqCst);
    }

    /// As [`AdmissionControl::admit`], for a replica that must run under gVisor when
    /// `needs_gvisor`: refused on a node without it, before any room is reserved.
    pub async fn admit_placement(
        &self,
        placement_id: &str,
        needs: Needs,
        needs_gvisor: bool,
    ) -> Result<bool, Refusal> {
        if needs_gvisor && !self.gvisor.load(Ordering::SeqCst) {
            return Err(Refusal::NoGvisor);
        }
        self.admit(placement_id, needs).await
    }

    /// Reserves room for a new replica unless the node is drained or full. Admitting the
    /// same id twice is not two reservations (`Ok(false)` the second time).
    pub async fn admit(&self, placement_id: &str, needs: Needs) -> Result<bool, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        self.reserve(placement_id, needs).await
    }

    /// Reserves room for a replica that already runs here (left by the previous agent),
    /// drained or not: a drain moves replicas away one at a time, it does not drop them.
    pub async fn adopt(&self, placement_id: &str, needs: Needs) -> Result<bool, Refusal> {
        self.reserve(placement_id, needs).await
    }

    async fn reserve(&self, placement_id: &str, needs: Needs) -> Result<bool, Refusal> {
        match self.ledger.lock().await.admit(placement_id, needs) {
            AdmitDecision::Admitted => Ok(true),
            AdmitDecision::AlreadyAdmitted => Ok(false),
            AdmitDecision::Refused { reason } => Err(Refusal::NoRoom(reason)),
        }
    }

    /// Frees the room of a replica that is gone.
    pub async fn release(&self, placement_id: &str) {
        self.ledger.lock().await.release(placement_id);
    }

    /// CPU millis and memory bytes reserved now.
    pub async fn reserved(&self) -> (u64, u64) {
        self.ledger.lock().await.reserved()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Drains or undrains the node, on disk first so a restart keeps it.
    pub async fn set_draining(&self, draining: bool) -> Result<(), String> {
        let marker = &self.drain_marker;
        let written = if draining {
            tokio::fs::write(marker, b"drained by an operator\n").await
        } else {
            match tokio::fs::remove_file(marker).await {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        written.map_err(|err| format!("cannot record the drain in {}: {err}", marker.display()))?;
        self.draining.store(draining, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    const NEEDS: Needs = Needs {
        cpu_millis: 600,
        mem_bytes: 1 << 20,
    };

    #[tokio::test]
    async fn a_drained_node_admits_nothing_and_stays_drained_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let control = AdmissionControl::new(dir.path(), 1000, 1 << 30);
        assert_eq!(control.admit("a", NEEDS).await, Ok(true));
        assert_eq!(
            control.admit("a", NEEDS).await,
            Ok(false),
            "same id, one reservation"
        );
        assert!(matches!(
            control.admit("b", NEEDS).await,
            Err(Refusal::NoRoom(_))
        ));
        control.release("a").await;
        assert_eq!(control.reserved().await, (0, 0));

        control.set_draining(true).await.unwrap();
        assert_eq!(control.admit("b", NEEDS).await, Err(Refusal::Draining));
        assert_eq!(
            control.adopt("c", NEEDS).await,
            Ok(true),
            "what runs here stays"
        );
        control.release("c").await;
        let restarted = AdmissionControl::new(dir.path(), 1000, 1 << 30);
        assert!(restarted.is_draining(), "the drain outlives the agent");
        restarted.set_draining(false).await.unwrap();
        assert!(!AdmissionControl::new(dir.path(), 1000, 1 << 30).is_draining());
        assert_eq!(restarted.admit("b", NEEDS).await, Ok(true));
    }

    #[tokio::test]
    async fn a_node_without_gvisor_refuses_a_gvisor_replica_and_reserves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let control = AdmissionControl::new(dir.path(), 1000, 1 << 30);
        let refused = control.admit_placement("g", NEEDS, true).await;
        assert_eq!(refused, Err(Refusal::NoGvisor));
        assert!(
            Refusal::NoGvisor.to_string().contains("no runsc"),
            "the reason says what is missing"
        );
        assert_eq!(control.reserved().await, (0, 0));
        assert_eq!(control.admit_placement("c", NEEDS, false).await, Ok(true));
        control.release("c").await;

        control.set_gvisor(true);
        assert_eq!(control.admit_placement("g", NEEDS, true).await, Ok(true));
    }
}
