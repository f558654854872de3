//! `stratus audit`: this node's records and every live peer's, merged oldest first. A node
//! that does not answer is named in the answer instead of failing it.

use api::{ApiError, AuditQuery, AuditedCall};
use proto::api::{AuditRecord, AuditResponse};
use tracing::warn;

use crate::control::hlc::unix_ms;
use crate::handles::AgentHandles;

pub async fn record(agent: &AgentHandles, call: AuditedCall) {
    let record = AuditRecord {
        at_ms: unix_ms(),
        node: agent.node_id().to_string(),
        token_id: call.token_id,
        token_name: call.token_name,
        tenant: call.tenant,
        action: call.action,
        target: call.target,
        status: call.status,
        source: call.source,
    };
    agent.audit.append(&record).await;
}

pub async fn local(agent: &AgentHandles, query: &AuditQuery) -> Result<Vec<AuditRecord>, ApiError> {
    agent
        .audit
        .read(query)
        .await
        .map_err(|err| ApiError::Internal(format!("cannot read this node's audit log: {err}")))
}

pub async fn gather(agent: &AgentHandles, query: AuditQuery) -> AuditResponse {
    let view = agent.view().await;
    let mut records = Vec::new();
    let mut unreachable = Vec::new();
    match local(agent, &query).await {
        Ok(mine) => records.extend(mine),
        Err(err) => {
            warn!(error = %err, "cannot read the local audit log");
            unreachable.push(agent.node_id().to_string());
        }
    }
    let peers = view
        .live_nodes()
        .filter(|node| node.node_id != agent.node_id());
    let asks = peers.filter_map(|node| {
        let client = agent.peers.client(node.identity.as_ref()?.api_addr)?;
        let node_id = node.node_id.clone();
        let query = query.clone();
        Some(async move { (node_id, client.audit(&query).await) })
    });
    for (node_id, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(theirs) => records.extend(theirs),
            Err(err) => {
                warn!(node = %node_id, error = %err, "no audit records from a peer");
                unreachable.push(node_id);
            }
        }
    }
    records.sort_by(|a, b| (a.at_ms, &a.node).cmp(&(b.at_ms, &b.node)));
    AuditResponse {
        records,
        unreachable,
    }
}
