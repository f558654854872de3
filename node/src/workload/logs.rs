//! `stratus logs`: the output of every replica of an app, gathered by whichever node was
//! asked, from its own runtime and from the nodes that run the other replicas.
//!
//! The output of a replica that stops (replaced, scaled down, moved, or restarted after a
//! crash) is kept on its node as a file for [`RETAIN_FOR`], at most [`RETAIN_PER_APP`]
//! per app, and shown by `stratus logs APP --previous`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::{ApiError, LineStream, LogQuery};
use futures_util::StreamExt as _;
use proto::ContainerRecord;
use tracing::warn;

use crate::control::hlc::unix_ms;
use crate::handles::AgentHandles;

/// How long the output of a stopped replica is kept.
pub const RETAIN_FOR: Duration = Duration::from_secs(24 * 3600);
/// How many stopped replicas' outputs are kept per app on one node.
pub const RETAIN_PER_APP: usize = 20;
/// Lines kept of each.
pub const RETAIN_LINES: usize = 1_000;

/// Every replica's lines, each prefixed with `[release/replica node]`, merged as they come.
pub async fn app_logs(
    agent: &AgentHandles,
    app: &str,
    query: LogQuery,
) -> Result<LineStream, ApiError> {
    if agent.catalog.live_record(app).await.is_none() {
        return Err(ApiError::UnknownApp(app.to_string()));
    }
    let view = agent.view().await;
    if query.previous {
        return Ok(previous_everywhere(agent, &view, app, query.tail).await);
    }
    let mut streams: Vec<LineStream> = Vec::new();
    for placed in view.containers.iter().filter(|c| c.record.app == app) {
        let prefix = format!(
            "[v{}/{} {}] ",
            placed.record.release, placed.record.replica, placed.node_id
        );
        let lines = if placed.node_id == agent.node_id() {
            replica_logs(agent, &placed.record.id, query).await
        } else {
            let peer = view
                .node(&placed.node_id)
                .and_then(|node| node.identity.as_ref())
                .and_then(|identity| agent.peers.client(identity.api_addr));
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
    agent: &AgentHandles,
    placement_id: &str,
    query: LogQuery,
) -> Result<LineStream, ApiError> {
    let known = agent.replicas.runs(placement_id).await;
    if !known {
        return Err(ApiError::NotFound {
            method: "GET".into(),
            path: format!("replica {placement_id} on {}", agent.node_id()),
        });
    }
    let id = agent.replicas.runtime().id_for(placement_id);
    if query.follow {
        let stream = agent
            .replicas
            .runtime()
            .follow_logs(&id, query.tail)
            .await
            .map_err(|err| ApiError::Unavailable(err.to_string()))?;
        return Ok(stream);
    }
    let lines = agent
        .replicas
        .runtime()
        .logs(&id, query.tail)
        .await
        .map_err(|err| ApiError::Unavailable(err.to_string()))?;
    Ok(Box::pin(futures_util::stream::iter(lines)))
}

/// The kept outputs of `app` from every live node, one node after the other.
async fn previous_everywhere(
    agent: &AgentHandles,
    view: &crate::cluster::membership::ClusterView,
    app: &str,
    tail: usize,
) -> LineStream {
    let mut lines = previous_logs(agent, app, tail).await;
    for node in view.live_nodes().filter(|n| n.node_id != agent.node_id()) {
        let Some(client) = node
            .identity
            .as_ref()
            .and_then(|identity| agent.peers.client(identity.api_addr))
        else {
            continue;
        };
        match client.node_previous_logs(app, tail).await {
            Ok(stream) => lines.extend(stream.collect::<Vec<String>>().await),
            Err(err) => lines.push(format!(
                "(kept logs of {} unavailable: {err})",
                node.node_id
            )),
        }
    }
    if lines.is_empty() {
        lines.push(format!("(no stopped replica of {app} has kept output)"));
    }
    Box::pin(futures_util::stream::iter(lines))
}

fn retained_dir(agent: &AgentHandles, app: &str) -> PathBuf {
    agent.config.data_dir.join("logs").join(app)
}

/// Keeps the last output of a replica that is about to be stopped or replaced.
pub async fn retain(agent: &AgentHandles, record: &ContainerRecord, container_id: &str) {
    let lines = match agent
        .replicas
        .runtime()
        .logs(container_id, RETAIN_LINES)
        .await
    {
        Ok(lines) if !lines.is_empty() => lines,
        Ok(_) => return,
        Err(err) => {
            warn!(placement = %record.id, error = %err, "cannot read the output to keep");
            return;
        }
    };
    let dir = retained_dir(agent, &record.app);
    // Name: when, then who; sorting by name sorts by time.
    let path = dir.join(format!(
        "{:013}-v{}-{}-{}.log",
        unix_ms(),
        record.release,
        record.replica,
        record.id
    ));
    let written = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(&path, lines.join("\n") + "\n").await
    }
    .await;
    if let Err(err) = written {
        warn!(path = %path.display(), error = %err, "cannot keep a stopped replica's output");
    }
    if let Err(err) = prune(&dir, unix_ms()).await {
        warn!(dir = %dir.display(), error = %err, "cannot prune kept outputs");
    }
}

/// Names of the kept outputs in `dir`, oldest first (names start with the time).
async fn kept_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Drops kept outputs older than [`RETAIN_FOR`] and all but the newest [`RETAIN_PER_APP`].
async fn prune(dir: &Path, now_ms: u64) -> std::io::Result<()> {
    let names = kept_files(dir).await?;
    let keep_from = names.len().saturating_sub(RETAIN_PER_APP);
    for (index, name) in names.iter().enumerate() {
        let written_ms: u64 = name
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        let too_old = now_ms.saturating_sub(written_ms) > RETAIN_FOR.as_millis() as u64;
        if index < keep_from || too_old {
            tokio::fs::remove_file(dir.join(name)).await?;
        }
    }
    Ok(())
}

/// This node's kept outputs of `app`'s stopped replicas, oldest first, each line prefixed
/// with `[v<release>/<replica> <node>, stopped <time>]`, the last `tail` lines of each.
pub async fn previous_logs(agent: &AgentHandles, app: &str, tail: usize) -> Vec<String> {
    let dir = retained_dir(agent, app);
    // No folder yet: nothing was kept.
    let names = kept_files(&dir).await.unwrap_or_default();
    let mut out = Vec::new();
    for name in names {
        let Ok(text) = tokio::fs::read_to_string(dir.join(&name)).await else {
            continue;
        };
        let mut parts = name.trim_end_matches(".log").splitn(4, '-');
        let stopped_ms: u64 = parts.next().and_then(|ms| ms.parse().ok()).unwrap_or(0);
        let release = parts.next().unwrap_or("v?");
        let replica = parts.next().unwrap_or("?");
        let prefix = format!(
            "[{release}/{replica} {}, stopped {}] ",
            agent.node_id(),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(stopped_ms)
            )
        );
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(tail);
        out.extend(lines[start..].iter().map(|line| format!("{prefix}{line}")));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn prune_keeps_the_newest_and_drops_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let now = 10 * RETAIN_FOR.as_millis() as u64;
        let old = now - RETAIN_FOR.as_millis() as u64 - 1;
        std::fs::write(dir.path().join(format!("{old:013}-v1-0-web-r1-0.log")), "x").unwrap();
        for i in 0..(RETAIN_PER_APP + 3) {
            let at = now - 1000 + i as u64;
            std::fs::write(dir.path().join(format!("{at:013}-v2-0-web-r2-0.log")), "y").unwrap();
        }
        prune(dir.path(), now).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left.len(), RETAIN_PER_APP);
        assert!(left.iter().all(|name| name.contains("-v2-")), "{left:?}");
        assert!(left[0].starts_with(&format!("{:013}", now - 1000 + 3)));
    }
}
