//! Losing a host, or only its agent, and counting an app's replicas as the cluster and as
//! Docker see them.

use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use proto::api::ReplicaView;

use crate::harness::LocalCluster;

/// A running container of an app, from Docker's labels (see `node::workload::runtime::labels`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DockerReplica {
    pub id: String,
    pub node: String,
    pub placement: String,
}

/// Running containers of `app` started by agents of the cluster `cluster_id`.
pub fn docker_replicas(cluster_id: &str, app: &str) -> anyhow::Result<Vec<DockerReplica>> {
    let output = Command::new("docker")
        .args(["ps", "--no-trunc"])
        .args(["--filter", &format!("label=stratus.app={app}")])
        .args(["--filter", &format!("label=stratus.cluster={cluster_id}")])
        .args([
            "--format",
            "{{.ID}}\t{{.Label \"stratus.node\"}}\t{{.Label \"stratus.placement\"}}",
        ])
        .output()
        .context("cannot run docker ps")?;
    if !output.status.success() {
        bail!(
            "docker ps failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut replicas: Vec<DockerReplica> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            Some(DockerReplica {
                id: fields.next()?.to_string(),
                node: fields.next()?.to_string(),
                placement: fields.next()?.to_string(),
            })
        })
        .collect();
    replicas.sort();
    Ok(replicas)
}

/// Running containers that the agent `node_id` of `cluster_id` started, of any app.
fn containers_of_node(cluster_id: &str, node_id: &str) -> anyhow::Result<Vec<String>> {
    let output = Command::new("docker")
        .args(["ps", "-q"])
        .args(["--filter", &format!("label=stratus.node={node_id}")])
        .args(["--filter", &format!("label=stratus.cluster={cluster_id}")])
        .output()
        .context("cannot run docker ps")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// What [`kill_host`] did, and when.
#[derive(Debug, Clone)]
pub struct HostKill {
    pub node_id: String,
    /// The wall clock at the kill, to line up with agents' logs.
    pub wall: SystemTime,
    pub containers: Vec<String>,
}

/// The host is gone: kill -9 the agent, then `docker kill` (SIGKILL) every container it
/// started. The containers are left exited, as after a power loss; the agent decides what
/// to do with them if it comes back.
pub fn kill_host(cluster: &mut LocalCluster, index: usize) -> anyhow::Result<HostKill> {
    let node_id = cluster.agents[index].node_id.clone();
    let cluster_id = cluster.cluster_id();
    let wall = SystemTime::now();
    cluster.kill9(index);
    let containers = containers_of_node(&cluster_id, &node_id)?;
    if !containers.is_empty() {
        let output = Command::new("docker")
            .arg("kill")
            .args(&containers)
            .output()
            .context("cannot run docker kill")?;
        // A container that exited meanwhile is not an error: it is gone either way.
        if !output.status.success() && !containers_of_node(&cluster_id, &node_id)?.is_empty() {
            bail!(
                "docker kill failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(HostKill {
        node_id,
        wall,
        containers,
    })
}

/// Removes every container (running or not) the agent `node_id` of `cluster_id` started:
/// the host comes back blank, as a re-provisioned machine would.
pub fn wipe_host(cluster_id: &str, node_id: &str) -> anyhow::Result<()> {
    let output = Command::new("docker")
        .args(["ps", "-aq"])
        .args(["--filter", &format!("label=stratus.node={node_id}")])
        .args(["--filter", &format!("label=stratus.cluster={cluster_id}")])
        .output()
        .context("cannot run docker ps")?;
    let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let output = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output()
            .context("cannot run docker rm")?;
        if !output.status.success() {
            bail!(
                "docker rm failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

/// Only the agent dies (kill -9); its containers keep running and answering.
pub fn kill_agent_only(cluster: &mut LocalCluster, index: usize) -> SystemTime {
    let wall = SystemTime::now();
    cluster.kill9(index);
    wall
}

/// Replicas of `app`'s current release that are running and healthy, as `client`'s node
/// sees them; empty when the node does not answer.
pub async fn routable_replicas(client: &api::Client, app: &str) -> Vec<ReplicaView> {
    let Ok(view) = client.app(app).await else {
        return Vec::new();
    };
    let Some(current) = view.release.as_ref().map(|release| release.number) else {
        return Vec::new();
    };
    view.replicas
        .into_iter()
        .filter(|replica| {
            replica.release == current
                && replica.state == proto::ContainerState::Running
                && replica.health == proto::ContainerHealth::Healthy
        })
        .collect()
}

/// Every replica record of `app` (any release, any state) `client`'s node sees.
pub async fn all_replicas(client: &api::Client, app: &str) -> Vec<ReplicaView> {
    client
        .app(app)
        .await
        .map(|view| view.replicas)
        .unwrap_or_default()
}

/// One request the ingress logged (`ingress::access` lines at info level).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLine {
    pub wall: SystemTime,
    pub app: String,
    /// `app/node/placement` of the last attempt, or `-`.
    pub backend: String,
    pub status: u16,
    /// Attempts after the first: each follows a failed attempt on another replica.
    pub retries: u32,
}

impl AccessLine {
    pub fn backend_node(&self) -> Option<&str> {
        self.backend.split('/').nth(1)
    }
}

/// The ingress's access log lines in an agent's log.
pub fn access_lines(log: &str) -> Vec<AccessLine> {
    log.lines()
        .filter(|line| line.contains("ingress::access"))
        .filter_map(|line| {
            let wall = parse_rfc3339(line.split_whitespace().next()?)?;
            Some(AccessLine {
                wall,
                app: field(line, "app")?,
                backend: field(line, "backend")?,
                status: field(line, "status")?.parse().ok()?,
                retries: field(line, "retries")?.parse().ok()?,
            })
        })
        .collect()
}

/// `name=value` or `name="value"` in a tracing line.
fn field(line: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=");
    let start = line.find(&needle)? + needle.len();
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return Some(quoted[..quoted.find('"')?].to_string());
    }
    Some(rest.split_whitespace().next()?.to_string())
}

/// `2025-01-02T03:04:05.678901Z` (tracing's timestamps, always UTC) as a `SystemTime`.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut time_parts = hms.split(':');
    let hour: u64 = time_parts.next()?.parse().ok()?;
    let minute: u64 = time_parts.next()?.parse().ok()?;
    let second: u64 = time_parts.next()?.parse().ok()?;
    let digits = fraction.len().min(9);
    let nanos: u32 = fraction.get(..digits)?.parse::<u32>().ok()? * 10u32.pow(9 - digits as u32);
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_timestamps_parse_as_utc() {
        let parsed = parse_rfc3339("2024-03-01T00:00:01.250000Z").unwrap();
        assert_eq!(
            parsed.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_709_251_201_250)
        );
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn access_lines_are_read_from_an_agents_log() {
        let log = "2024-03-01T00:00:01.250000Z  INFO ingress::access: request app=\"chaos\" backend=\"chaos/node-3/chaos-r1-0\" status=200 duration_ms=1.5 retries=1 method=GET host=chaos.localhost path=/ request_id=ab\n\
                   2024-03-01T00:00:01.300000Z  INFO node::agent: something else\n";
        let lines = access_lines(log);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].app, "chaos");
        assert_eq!(lines[0].backend_node(), Some("node-3"));
        assert_eq!(lines[0].status, 200);
        assert_eq!(lines[0].retries, 1);
    }
}
