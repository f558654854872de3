//! `stratus logs`: the output of every replica of an app, gathered by whichever node was
//! asked, from its own runtime and from the nodes that run the other replicas.

use api::{ApiError, LineStream, LogQuery};
use futures_util::StreamExt as _;

use crate::state::AgentState;

/// Every replica's lines, each prefixed with `[release/replica node]`, merged as they come.
pub async fn app_logs(
    state: &AgentState,
    app: &str,
    query: LogQuery,
) -> Result<LineStream, ApiError> {
    if state
        .catalog
        .lock()
        .await
        .record(app)
        .is_none_or(|record| record.deleted)
    {
        return Err(ApiError::UnknownApp(app.to_string()));
    }
    let view = state.view().await;
    let mut streams: Vec<LineStream> = Vec::new();
    for placed in view.containers.iter().filter(|c| c.record.app == app) {
        let prefix = format!(
            "[v{}/{} {}] ",
            placed.record.release, placed.record.replica, placed.node_id
        );
        let lines = if placed.node_id == state.node_id() {
            replica_logs(state, &placed.record.id, query).await
        } else {
            let peer = view
                .node(&placed.node_id)
                .and_then(|node| node.identity.as_ref())
                .and_then(|identity| state.peer(identity.api_addr));
            match peer {
                Some(client) => client
                    .replica_logs(&placed.record.id, query.follow, query.tail)
                    .await
                    .map_err(|err| ApiError::Unavailable(err.to_string())),
                None => Err(ApiError::Unavailable(format!(
                    "no API address for {}",
                    placed.node_id
                ))),
            }
        };
        // One unreachable replica must not hide the others: say so in the stream.
        let lines = lines.unwrap_or_else(|err| {
            Box::pin(futures_util::stream::iter([format!(
                "(logs unavailable: {err})"
            )]))
        });
        streams.push(Box::pin(lines.map(move |line| format!("{prefix}{line}"))));
    }
    if streams.is_empty() {
        return Ok(Box::pin(futures_util::stream::iter([format!(
            "({app} has no replica running)"
        )])));
    }
    Ok(Box::pin(futures_util::stream::select_all(streams)))
}

/// One replica of this node.
pub async fn replica_logs(
    state: &AgentState,
    placement_id: &str,
    query: LogQuery,
) -> Result<LineStream, ApiError> {
    let known = state.replicas.lock().await.contains_key(placement_id);
    if !known {
        return Err(ApiError::NotFound {
            method: "GET".into(),
            path: format!("replica {placement_id} on {}", state.node_id()),
        });
    }
    let id = state.runtime.id_for(placement_id);
    if query.follow {
        let stream = state
            .runtime
            .follow_logs(&id, query.tail)
            .await
            .map_err(|err| ApiError::Unavailable(err.to_string()))?;
        return Ok(stream);
    }
    let lines = state
        .runtime
        .logs(&id, query.tail)
        .await
        .map_err(|err| ApiError::Unavailable(err.to_string()))?;
    Ok(Box::pin(futures_util::stream::iter(lines)))
}
