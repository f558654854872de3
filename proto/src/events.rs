//! The cluster's events as `GET /v1/events` streams them: what changed, about what, seen
//! from the answering node.
//!
//! Identity: an event is its `kind` and `subject` plus the facts in it (a release number,
//! a node generation). Each node derives events from its own view, as the edges of one
//! lifecycle per subject (a replica is placed, starts, turns healthy...), and emits every
//! edge it passes even when gossip showed it several at once. So the same real change
//! seen from any two nodes gives the same kind and subject, in the same order for one
//! subject. Across subjects, and across nodes, there is no total order: `index` orders
//! the events of one node only, and `at_ms` is when that node saw the change.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an event is about, for `?topic=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Topic {
    Node,
    App,
    Replica,
    Build,
    Ingress,
}

impl Topic {
    pub const ALL: [Topic; 5] = [
        Topic::Node,
        Topic::App,
        Topic::Replica,
        Topic::Build,
        Topic::Ingress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Node => "node",
            Topic::App => "app",
            Topic::Replica => "replica",
            Topic::Build => "build",
            Topic::Ingress => "ingress",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown topic {0:?}: use node, app, replica, build or ingress")]
pub struct UnknownTopic(pub String);

impl FromStr for Topic {
    type Err = UnknownTopic;

    fn from_str(text: &str) -> Result<Topic, UnknownTopic> {
        Topic::ALL
            .into_iter()
            .find(|topic| topic.as_str() == text)
            .ok_or_else(|| UnknownTopic(text.to_string()))
    }
}

/// Where one replica is, as its events name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaRef {
    pub app: String,
    pub release: u64,
    pub replica: u32,
    pub node: String,
    /// The placement id, stable across the replica's restarts on its node.
    pub id: String,
}

/// What happened. The `kind` tag (`replica.healthy`) is the event's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Change {
    /// First heard of through gossip.
    #[serde(rename = "node.joined")]
    NodeJoined { node: String, generation: u64 },
    /// The failure detector hears it (after joining, or again after being dead).
    #[serde(rename = "node.live")]
    NodeLive { node: String, generation: u64 },
    #[serde(rename = "node.dead")]
    NodeDead { node: String, generation: u64 },
    /// Announced a graceful shutdown.
    #[serde(rename = "node.left")]
    NodeLeft { node: String, generation: u64 },
    #[serde(rename = "node.draining")]
    NodeDraining { node: String },
    #[serde(rename = "node.undrained")]
    NodeUndrained { node: String },

    /// A new release is recorded: a deploy, a config change, a restart or a rollback
    /// (the note says which).
    #[serde(rename = "app.deploy_accepted")]
    DeployAccepted {
        app: String,
        release: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Healthy replicas of the release being rolled out.
    #[serde(rename = "app.rollout_progress")]
    RolloutProgress {
        app: String,
        release: u64,
        healthy: u32,
        desired: u32,
    },
    /// Every desired replica runs this release and is healthy, and no other release is
    /// routed.
    #[serde(rename = "app.release_live")]
    ReleaseLive { app: String, release: u64 },
    #[serde(rename = "app.release_failed")]
    ReleaseFailed {
        app: String,
        release: u64,
        reason: String,
    },
    /// The release cannot run for now (no node has room, no node runs gVisor...), as the
    /// node scheduling it published.
    #[serde(rename = "app.rollout_blocked")]
    RolloutBlocked {
        app: String,
        release: u64,
        reason: String,
    },
    /// A failed rollout put the app back on the release it ran before.
    #[serde(rename = "app.rolled_back")]
    RolledBack { app: String, from: u64, to: u64 },
    #[serde(rename = "app.scaled")]
    Scaled { app: String, from: u32, to: u32 },
    #[serde(rename = "app.destroyed")]
    Destroyed { app: String },

    /// Only the node that accepted the deploy sees a build start: the others learn of the
    /// build when it is finished and recorded.
    #[serde(rename = "build.started")]
    BuildStarted {
        app: String,
        node: String,
        builder: String,
    },
    #[serde(rename = "build.finished")]
    BuildFinished {
        app: String,
        release: u64,
        node: String,
        builder: String,
        duration_ms: u64,
        /// The dependency cache: `hit`, `miss` or `none` (a builder without one).
        #[serde(default)]
        cache: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },

    #[serde(rename = "replica.placed")]
    ReplicaPlaced { replica: ReplicaRef },
    #[serde(rename = "replica.started")]
    ReplicaStarted { replica: ReplicaRef },
    #[serde(rename = "replica.healthy")]
    ReplicaHealthy { replica: ReplicaRef },
    #[serde(rename = "replica.unhealthy")]
    ReplicaUnhealthy { replica: ReplicaRef, reason: String },
    #[serde(rename = "replica.crashed")]
    ReplicaCrashed { replica: ReplicaRef, reason: String },
    /// Running again after a crash, on the same node.
    #[serde(rename = "replica.restarted")]
    ReplicaRestarted { replica: ReplicaRef },
    #[serde(rename = "replica.stopped")]
    ReplicaStopped { replica: ReplicaRef, reason: String },

    /// The replicas the ingress sends the app's traffic to changed.
    #[serde(rename = "ingress.routes_changed")]
    RoutesChanged { app: String, backends: u32 },
}

impl Change {
    pub fn topic(&self) -> Topic {
        match self {
            Change::NodeJoined { .. }
            | Change::NodeLive { .. }
            | Change::NodeDead { .. }
            | Change::NodeLeft { .. }
            | Change::NodeDraining { .. }
            | Change::NodeUndrained { .. } => Topic::Node,
            Change::DeployAccepted { .. }
            | Change::RolloutProgress { .. }
            | Change::ReleaseLive { .. }
            | Change::ReleaseFailed { .. }
            | Change::RolloutBlocked { .. }
            | Change::RolledBack { .. }
            | Change::Scaled { .. }
            | Change::Destroyed { .. } => Topic::App,
            Change::BuildStarted { .. } | Change::BuildFinished { .. } => Topic::Build,
            Change::ReplicaPlaced { .. }
            | Change::ReplicaStarted { .. }
            | Change::ReplicaHealthy { .. }
            | Change::ReplicaUnhealthy { .. }
            | Change::ReplicaCrashed { .. }
            | Change::ReplicaRestarted { .. }
            | Change::ReplicaStopped { .. } => Topic::Replica,
            Change::RoutesChanged { .. } => Topic::Ingress,
        }
    }

    /// The replica the event is about, for the replica topic.
    pub fn replica(&self) -> Option<&ReplicaRef> {
        match self {
            Change::ReplicaPlaced { replica }
            | Change::ReplicaStarted { replica }
            | Change::ReplicaHealthy { replica }
            | Change::ReplicaUnhealthy { replica, .. }
            | Change::ReplicaCrashed { replica, .. }
            | Change::ReplicaRestarted { replica }
            | Change::ReplicaStopped { replica, .. } => Some(replica),
            _ => None,
        }
    }

    /// The app the event is about, if any (for `?app=` and tenant scoping).
    pub fn app(&self) -> Option<&str> {
        if let Some(replica) = self.replica() {
            return Some(&replica.app);
        }
        match self {
            Change::DeployAccepted { app, .. }
            | Change::RolloutProgress { app, .. }
            | Change::ReleaseLive { app, .. }
            | Change::ReleaseFailed { app, .. }
            | Change::RolloutBlocked { app, .. }
            | Change::RolledBack { app, .. }
            | Change::Scaled { app, .. }
            | Change::Destroyed { app }
            | Change::BuildStarted { app, .. }
            | Change::BuildFinished { app, .. }
            | Change::RoutesChanged { app, .. } => Some(app),
            _ => None,
        }
    }

    /// What the event is about: a node id, an app name, or `app/node/placement` for a
    /// replica. With the kind, this is what two nodes agree on.
    pub fn subject(&self) -> String {
        if let Some(replica) = self.replica() {
            return format!("{}/{}/{}", replica.app, replica.node, replica.id);
        }
        match self {
            Change::NodeJoined { node, .. }
            | Change::NodeLive { node, .. }
            | Change::NodeDead { node, .. }
            | Change::NodeLeft { node, .. }
            | Change::NodeDraining { node }
            | Change::NodeUndrained { node } => node.clone(),
            other => other.app().unwrap_or_default().to_string(),
        }
    }

    /// The `kind` tag, as serialized.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::NodeJoined { .. } => "node.joined",
            Change::NodeLive { .. } => "node.live",
            Change::NodeDead { .. } => "node.dead",
            Change::NodeLeft { .. } => "node.left",
            Change::NodeDraining { .. } => "node.draining",
            Change::NodeUndrained { .. } => "node.undrained",
            Change::DeployAccepted { .. } => "app.deploy_accepted",
            Change::RolloutProgress { .. } => "app.rollout_progress",
            Change::ReleaseLive { .. } => "app.release_live",
            Change::ReleaseFailed { .. } => "app.release_failed",
            Change::RolloutBlocked { .. } => "app.rollout_blocked",
            Change::RolledBack { .. } => "app.rolled_back",
            Change::Scaled { .. } => "app.scaled",
            Change::Destroyed { .. } => "app.destroyed",
            Change::BuildStarted { .. } => "build.started",
            Change::BuildFinished { .. } => "build.finished",
            Change::ReplicaPlaced { .. } => "replica.placed",
            Change::ReplicaStarted { .. } => "replica.started",
            Change::ReplicaHealthy { .. } => "replica.healthy",
            Change::ReplicaUnhealthy { .. } => "replica.unhealthy",
            Change::ReplicaCrashed { .. } => "replica.crashed",
            Change::ReplicaRestarted { .. } => "replica.restarted",
            Change::ReplicaStopped { .. } => "replica.stopped",
            Change::RoutesChanged { .. } => "ingress.routes_changed",
        }
    }
}

/// One event as a node streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// This node's sequence number: `?since=INDEX` resumes after it.
    pub index: u64,
    /// When this node saw the change (Unix ms).
    pub at_ms: u64,
    pub topic: Topic,
    pub subject: String,
    /// The app's tenant, when the event is about a tenant's app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(flatten)]
    pub change: Change,
}

/// One line of `GET /v1/events` as NDJSON: an event, or a heartbeat while nothing happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventLine {
    Event(Box<Event>),
    Heartbeat {
        /// The newest index this node has given out.
        heartbeat: u64,
    },
    /// The reader fell more than the node's buffer behind: the stream ends here, and the
    /// text says how to go on.
    Gone {
        gone: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            index: 7,
            at_ms: 1_700_000_000_000,
            topic: Topic::Replica,
            subject: "web/n1/web-3-0".into(),
            tenant: Some("acme".into()),
            change: Change::ReplicaCrashed {
                replica: ReplicaRef {
                    app: "web".into(),
                    release: 3,
                    replica: 0,
                    node: "n1".into(),
                    id: "web-3-0".into(),
                },
                reason: "exit code 1".into(),
            },
        }
    }

    #[test]
    fn an_event_reads_as_its_kind_with_its_facts_beside_it() {
        let text = serde_json::to_string(&sample()).expect("serializes");
        assert!(text.contains(r#""kind":"replica.crashed""#), "{text}");
        assert!(text.contains(r#""reason":"exit code 1""#), "{text}");
        let back: EventLine = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, EventLine::Event(Box::new(sample())));
        let beat: EventLine = serde_json::from_str(r#"{"heartbeat":9}"#).expect("parses");
        assert_eq!(beat, EventLine::Heartbeat { heartbeat: 9 });
    }

    #[test]
    fn kind_topic_and_subject_agree_with_the_serialized_tag() {
        let event = sample();
        assert_eq!(event.change.kind(), "replica.crashed");
        assert_eq!(event.change.topic(), Topic::Replica);
        assert_eq!(event.change.subject(), event.subject);
        assert_eq!(event.change.app(), Some("web"));
        for topic in Topic::ALL {
            assert_eq!(topic.as_str().parse::<Topic>(), Ok(topic));
        }
        assert!("nodes".parse::<Topic>().is_err());
    }
}
