//! The CLI's comforts against real agents (`node::testsuite`, process runtime): `stratus ps`
//! with the uptime, restarts, CPU and memory of replicas on two nodes, one of them crashed
//! and restarted; `stratus doctor` against a live agent (its ports, DNS's too, held by it),
//! passing, then failing on a wrong cluster key and a squatted port; `stratus open`
//! choosing the URL from the app's record and the ingress a node advertises; and the
//! completion scripts, each checked by its own shell.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use node::testsuite::{Step, TestCluster, USER_TOKEN, bundle_for_test, cluster_for_test, wait_for};
use proto::api::{ReplicaView, ReplicasResponse};
use proto::{ContainerHealth, ContainerState};

const SETTLE: Duration = Duration::from_secs(90);

async fn converged_cluster(count: usize) -> TestCluster {
    let mut cluster = cluster_for_test(count).await.unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    cluster
}

async fn stratus(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(args)
        // The caller's own settings must not leak into what is tested.
        .env_remove("STRATUS_API")
        .env_remove("STRATUS_API_TOKEN")
        .env_remove("STRATUS_CLUSTER_KEY")
        .env_remove("STRATUS_CONFIG")
        .output()
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// An app of two replicas that each take more than half a node's CPU (so they land on
/// two nodes), serving `/` with busybox; a replica exits when the file
/// `<markers>/crash-<replica>` appears (and removes it, so its restart serves again).
fn crashable_app(root: &Path, markers: &Path) -> PathBuf {
    let dir = root.join("pulse");
    std::fs::create_dir_all(&dir).unwrap();
    // Every in-process node offers the machine's cores: more than half of them each.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cpu = cores as f64 * 0.6;
    std::fs::write(
        dir.join("start.sh"),
        r#"#!/bin/sh
set -eu
www="${TMPDIR:-/tmp}/pulse-$$"
mkdir -p "$www"
echo "pulse $STRATUS_REPLICA" > "$www/index.html"
busybox httpd -f -p "$PORT" -h "$www" &
marker="$MARKERS/crash-$STRATUS_REPLICA"
while [ ! -e "$marker" ]; do sleep 0.2; done
rm -f "$marker"
kill "$!"
echo "told to crash"
exit 7
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("stratus.toml"),
        format!(
            "name = \"pulse\"\ncmd = \"sh start.sh\"\nreplicas = 2\n\
             [resources]\ncpu = {cpu:.1}\nmemory = \"32MiB\"\n\
             [env]\nMARKERS = \"{}\"\n[health]\npath = \"/\"\ninterval = \"300ms\"\n",
            markers.display()
        ),
    )
    .unwrap();
    dir
}

fn routable(replica: &ReplicaView) -> bool {
    replica.state == ContainerState::Running && replica.health == ContainerHealth::Healthy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_shows_uptime_restarts_cpu_and_memory_of_replicas_on_every_node() {
    let cluster = converged_cluster(2).await;
    let work = tempfile::tempdir().unwrap();
    let markers = work.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let bundle = bundle_for_test(&crashable_app(work.path(), &markers)).unwrap();
    let client = cluster.node(0).client();
    client.deploy("pulse", bundle.path(), |_| {}).await.unwrap();
    wait_for(SETTLE, || async {
        let view = client.app("pulse").await.map_err(|err| err.to_string())?;
        let up = view.replicas.iter().filter(|r| routable(r)).count();
        (up == 2)
            .then_some(())
            .ok_or(format!("{up} of 2 replicas routable"))
    })
    .await
    .unwrap();

    // Replica 0 crashes once; its node starts it again.
    std::fs::write(markers.join("crash-0"), "").unwrap();
    wait_for(SETTLE, || async {
        let answer = client
            .replicas("pulse")
            .await
            .map_err(|err| err.to_string())?;
        let restarted = answer.replicas.iter().any(|replica| {
            replica.replica == 0
                && routable(replica)
                && replica
                    .usage
                    .as_ref()
                    .is_some_and(|usage| usage.restarts == 1)
        });
        restarted.then_some(()).ok_or(format!(
            "replica 0 not restarted and routable yet: {answer:?}"
        ))
    })
    .await
    .unwrap();

    // Asked of node 0, which runs one replica and asks node 1 for the other.
    let answer: ReplicasResponse = client.replicas("pulse").await.unwrap();
    assert_eq!(answer.node_id, "node-0");
    let nodes: std::collections::BTreeSet<&str> =
        answer.replicas.iter().map(|r| r.node_id.as_str()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "the replicas should be on both nodes: {answer:?}"
    );
    for replica in answer.replicas.iter().filter(|r| routable(r)) {
        let usage = replica.usage.as_ref().unwrap();
        assert!(usage.note.is_none(), "{replica:?}");
        assert!(usage.started_at_ms.is_some(), "{replica:?}");
        assert!(usage.uptime_ms.is_some(), "{replica:?}");
        assert!(usage.cpu_millis.is_some(), "{replica:?}");
        assert!(usage.memory_bytes.unwrap() > 0, "{replica:?}");
        assert_eq!(usage.memory_limit_bytes, None, "processes have no limit");
        let expected = if replica.replica == 0 { 1 } else { 0 };
        assert_eq!(usage.restarts, expected, "{replica:?}");
    }

    // The same through the binary: a table, and the JSON the API answers.
    let api = cluster.node(1).api_addr.to_string();
    let table = stratus(&["ps", "pulse", "--api", &api, "--token", USER_TOKEN]).await;
    assert!(table.status.success(), "{}", text(&table));
    let shown = String::from_utf8_lossy(&table.stdout);
    for column in ["UPTIME", "RESTARTS", "CPU", "MEMORY", "node-0", "node-1"] {
        assert!(shown.contains(column), "{column} missing from\n{shown}");
    }
    let json = stratus(&[
        "ps", "pulse", "--json", "--api", &api, "--token", USER_TOKEN,
    ])
    .await;
    assert!(json.status.success(), "{}", text(&json));
    let parsed: ReplicasResponse = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed.node_id, "node-1");
    assert_eq!(parsed.replicas.len(), answer.replicas.len());

    // An unknown app says what to do, as every API error does.
    let unknown = stratus(&["ps", "nope", "--api", &api, "--token", USER_TOKEN]).await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("stratus apps"),
        "{}",
        text(&unknown)
    );
    cluster.shutdown().await.unwrap();
}

/// The flags node `index` of the test cluster runs with, as doctor takes them.
fn agent_flags(cluster: &TestCluster, index: usize) -> Vec<String> {
    let node = cluster.node(index);
    let mut flags = vec![
        "--api".to_string(),
        format!("http://{}", node.api_addr),
        "--api-addr".to_string(),
        node.api_addr.to_string(),
        "--gossip-addr".to_string(),
        node.gossip_addr.to_string(),
        "--node-id".to_string(),
        node.node_id.clone(),
        "--data-dir".to_string(),
        node.data_dir().display().to_string(),
        "--runtime".to_string(),
        "process".to_string(),
    ];
    if index > 0 {
        flags.push("--seeds".to_string());
        flags.push(cluster.node(0).gossip_addr.to_string());
    }
    flags
}

async fn doctor(flags: &[String]) -> Output {
    let mut args = vec!["doctor"];
    args.extend(flags.iter().map(String::as_str));
    stratus(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_live_agent_and_says_what_is_wrong_otherwise() {
    let mut cluster = cluster_for_test(1).await.unwrap();
    cluster
        .add_node_with(|args| args.dns_addr = Some(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    let dns = cluster.node(1).dns_addr.unwrap();
    let mut flags = agent_flags(&cluster, 1);
    flags.push("--insecure-no-encryption".into());
    let mut with_dns = flags.clone();
    with_dns.extend(["--dns-addr".into(), dns.to_string()]);
    let passing = doctor(&with_dns).await;
    let report = text(&passing);
    assert!(passing.status.success(), "{report}");
    for line in [
        "docker",
        "not used: --runtime process",
        "is held by this host's agent (node-1)",
        // The in-process agents gossip in memory: their UDP ports are free.
        "(UDP) is free",
        "the agent here (node-1) takes calls signed with it",
        "1 peer(s) compared",
        "(node-0) is live, its API answers",
        "free of",
        // Its DNS server answers node-1's own name there.
        &format!("dns udp port  ok    {dns} (UDP) is held by this host's agent (node-1)"),
        &format!("dns tcp port  ok    {dns} (TCP) is held by this host's agent (node-1)"),
    ] {
        assert!(report.contains(line), "{line:?} missing from\n{report}");
    }
    assert!(report.contains("cluster key   WARN"), "{report}");
    assert!(
        report.contains("warning(s); nothing that stops the agent"),
        "{report}"
    );

    let mut json_flags = flags.clone();
    json_flags.push("--json".into());
    let json = doctor(&json_flags).await;
    assert!(json.status.success(), "{}", text(&json));
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    let verdict = |check: &str| {
        findings
            .iter()
            .find(|finding| finding["check"] == check)
            .unwrap_or_else(|| panic!("no {check} in {findings:?}"))["verdict"]
            .clone()
    };
    assert_eq!(verdict("clock"), "ok");
    assert_eq!(verdict("seeds"), "ok");
    // Whatever this machine's disk holds, it was measured.
    assert!(["ok", "warn"].contains(&verdict("disk").as_str().unwrap()));

    // Another cluster's key, and the API port taken by something that is not an agent.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken: SocketAddr = squatter.local_addr().unwrap();
    let mut wrong = agent_flags(&cluster, 1);
    let key = String::from_utf8(stratus(&["keygen"]).await.stdout).unwrap();
    wrong.extend(["--cluster-key".into(), key.trim().to_string()]);
    let api_addr = wrong.iter().position(|flag| flag == "--api-addr").unwrap();
    wrong[api_addr + 1] = taken.to_string();
    let failing = doctor(&wrong).await;
    let report = text(&failing);
    assert_eq!(failing.status.code(), Some(1), "{report}");
    assert!(report.contains("api port     FAIL"), "{report}");
    assert!(
        report.contains(&format!("sport = :{}", taken.port())),
        "{report}"
    );
    assert!(report.contains("cluster key  FAIL"), "{report}");
    assert!(
        report.contains("refuses calls signed with this key"),
        "{report}"
    );
    assert!(report.contains("check(s) failed"), "{report}");
    drop(squatter);

    // No key at all: the agent would refuse to start, and doctor says how to make one.
    let missing = doctor(&agent_flags(&cluster, 1)).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("stratus keygen"),
        "{}",
        text(&missing)
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_prints_the_url_of_the_app_through_the_advertised_ingress() {
    let mut cluster = cluster_for_test(1).await.unwrap();
    // Advertised only: the agent library serves no ingress, the binary would.
    cluster
        .add_node_with(|args| args.ingress_addr = Some("127.0.0.1:18080".parse().unwrap()))
        .await
        .unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = node::testsuite::hello_app_for_test(work.path(), "hello", 1, 0.1).unwrap();
    let bundle = bundle_for_test(&dir).unwrap();
    let client = cluster.node(0).client();
    client.deploy("hello", bundle.path(), |_| {}).await.unwrap();
    let api = cluster.node(0).api_addr.to_string();
    let opened = stratus(&[
        "open", "hello", "--print", "--api", &api, "--token", USER_TOKEN,
    ])
    .await;
    assert!(opened.status.success(), "{}", text(&opened));
    assert_eq!(
        String::from_utf8_lossy(&opened.stdout).trim(),
        "http://hello.localhost:18080/"
    );
    let json = stratus(&[
        "open", "hello", "--json", "--api", &api, "--token", USER_TOKEN,
    ])
    .await;
    let url: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(url["ingress"], "127.0.0.1:18080");
    let unknown = stratus(&[
        "open", "nope", "--print", "--api", &api, "--token", USER_TOKEN,
    ])
    .await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("stratus apps"),
        "{}",
        text(&unknown)
    );
    cluster.shutdown().await.unwrap();
}

/// Each shell parses its script without running it: bash and zsh with `-n`, fish with
/// `--no-execute`. A shell that is not installed is skipped, and says so
/// (`scripts/install-deps.sh` installs them for CI).
#[tokio::test]
async fn completion_scripts_parse_in_their_shells_and_know_every_command() {
    let work = tempfile::tempdir().unwrap();
    for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
        let output = stratus(&["completions", shell]).await;
        assert!(output.status.success(), "{}", text(&output));
        let script = String::from_utf8(output.stdout).unwrap();
        for command in ["deploy", "doctor", "ps", "open", "completions", "tenant"] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
        let path = work.path().join(format!("stratus.{shell}"));
        std::fs::write(&path, &script).unwrap();
        match tokio::process::Command::new(shell)
            .arg(check)
            .arg(&path)
            .output()
            .await
        {
            Ok(parsed) => assert!(parsed.status.success(), "{shell}: {}", text(&parsed)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{shell} is not installed: its completion script is not parsed");
            }
            Err(err) => panic!("cannot run {shell}: {err}"),
        }
    }
    let bad = stratus(&["completions", "tcsh"]).await;
    assert!(!bad.status.success());
    assert!(text(&bad).contains("bash"), "{}", text(&bad));

    let pages = work.path().join("man");
    let written = stratus(&["man", "--out", pages.to_str().unwrap()]).await;
    assert!(written.status.success(), "{}", text(&written));
    for page in [
        "stratus.1",
        "stratus-ps.1",
        "stratus-doctor.1",
        "stratus-token-create.1",
    ] {
        assert!(pages.join(page).is_file(), "{page} not written");
    }
    let top = stratus(&["man"]).await;
    assert!(String::from_utf8_lossy(&top.stdout).contains(".TH stratus"));
}
