//! The compose cluster as `docker-compose.yml` ships it (issue 14): 3 agents and the
//! ingress, run by `scripts/compose-up.sh` exactly as a user runs it, then removed by
//! `scripts/compose-down.sh`. Each test checks on its own, through the published ports, what
//! the script claims:
//!
//! - the app (examples/hello) answers through the ingress's published port, from a replica
//!   the API lists, and the dashboard answers on node-1's API;
//! - with `--s3` (the `s3` profile's s3s-fs, built locally, and `docker-compose.s3.yml`),
//!   the release's bundle is in the bucket, asked over the S3 protocol;
//! - after `compose-down.sh` nothing of the cluster is left: containers, app containers,
//!   network, volume, data dirs.
//!
//! Needs Docker Compose (v2 `docker compose` or v1 `docker-compose`); fails and says how to
//! install it without. Each test is a compose project of its own (`stratus-compose-<net>`,
//! with its network, cluster id and data dir) published on `127.0.<net>.2` (API :7070,
//! ingress :8080, S3 :9000), so it collides neither with `scripts/compose-up.sh`'s cluster
//! on 127.0.0.1 nor with other tests; they run one at a time.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use node::bundle::{DEFAULT_PREFIX, S3Config, S3Store};
use testbed::compose::compose_command;
use testbed::harness::{API_TOKEN, NetLease, keygen, repo_root, stratus_bin};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// examples/hello, which compose-up.sh deploys by default.
const APP: &str = "hello";
/// The development keys of docker-compose.yml's S3 server.
const S3_ACCESS_KEY: &str = "stratus";
const S3_SECRET_KEY: &str = "stratus-dev-secret";

/// One compose project run by the scripts, with every address and name its own.
struct ComposeStack {
    net: u8,
    project: String,
    env: Vec<(String, String)>,
    data: PathBuf,
    _data: tempfile::TempDir,
    _lease: NetLease,
}

impl ComposeStack {
    fn new(net: u8) -> ComposeStack {
        let lease = NetLease::acquire(net).unwrap();
        let bin = stratus_bin().unwrap();
        let project = format!("stratus-compose-{net}");
        let data = tempfile::Builder::new()
            .prefix("stratus-compose-test-")
            .tempdir()
            .unwrap();
        let host = format!("127.0.{net}.2");
        let env = vec![
            ("COMPOSE_PROJECT_NAME".to_string(), project.clone()),
            ("STRATUS_COMPOSE_NETWORK".to_string(), project.clone()),
            ("STRATUS_COMPOSE_CLUSTER_ID".to_string(), project.clone()),
            ("STRATUS_COMPOSE_API".to_string(), format!("{host}:7070")),
            (
                "STRATUS_COMPOSE_INGRESS".to_string(),
                format!("{host}:8080"),
            ),
            ("STRATUS_COMPOSE_S3".to_string(), format!("{host}:9000")),
            (
                "STRATUS_COMPOSE_DATA".to_string(),
                data.path().display().to_string(),
            ),
            // Built from the debug binary the tests run; one tag for every test here.
            (
                "STRATUS_AGENT_IMAGE".to_string(),
                "stratus/agent:compose-test".to_string(),
            ),
            ("STRATUS_BIN".to_string(), bin.display().to_string()),
            ("STRATUS_CLUSTER_KEY".to_string(), keygen(&bin).unwrap()),
            ("STRATUS_API_TOKEN".to_string(), API_TOKEN.to_string()),
        ];
        let stack = ComposeStack {
            net,
            project,
            env,
            data: data.path().to_path_buf(),
            _data: data,
            _lease: lease,
        };
        // Leftovers of an earlier run that was killed before it could clean up.
        stack.script("compose-down.sh", &[]);
        stack
    }

    /// Runs `scripts/NAME ARGS` with this stack's environment; prints what it printed.
    fn script(&self, name: &str, args: &[&str]) -> Output {
        let output = Command::new("bash")
            .arg(repo_root().join("scripts").join(name))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        println!(
            "$ scripts/{name} {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn up(&self, args: &[&str]) -> String {
        let output = self.script("compose-up.sh", args);
        assert!(
            output.status.success(),
            "compose-up.sh {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn host(&self) -> String {
        format!("127.0.{}.2", self.net)
    }

    fn client(&self) -> api::Client {
        api::Client::new(&format!("{}:7070", self.host()))
            .unwrap()
            .with_token(Some(API_TOKEN.to_string()))
    }

    /// Asks the ingress for `/` with `Host: host`, as an outside client would.
    async fn through_ingress(&self, host: &str) -> reqwest::Response {
        http()
            .get(format!("http://{}:8080/", self.host()))
            .header(reqwest::header::HOST, host)
            .send()
            .await
            .unwrap()
    }

    /// Everything Docker still has of this project: its containers, its app containers
    /// (by cluster id), its network and its volumes.
    fn leftovers(&self) -> Vec<String> {
        let list = |args: &[&str]| -> Vec<String> {
            let output = Command::new("docker").args(args).output().unwrap();
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let mut left = Vec::new();
        let project = format!("label=com.docker.compose.project={}", self.project);
        let cluster = format!("label=stratus.cluster={}", self.project);
        for filter in [&project, &cluster] {
            for id in list(&["ps", "-aq", "--filter", filter]) {
                left.push(format!("container {id} ({filter})"));
            }
        }
        for volume in list(&["volume", "ls", "-q", "--filter", &project]) {
            left.push(format!("volume {volume}"));
        }
        let network = Command::new("docker")
            .args(["network", "inspect", &self.project])
            .output()
            .unwrap();
        if network.status.success() {
            left.push(format!("network {}", self.project));
        }
        for member in ["node-1", "node-2", "node-3", "ingress"] {
            let dir = self.data.join(member);
            if dir.exists() {
                left.push(format!("data dir {}", dir.display()));
            }
        }
        left
    }

    /// compose-down.sh, then nothing may be left.
    fn down_and_check(&self) {
        let output = self.script("compose-down.sh", &[]);
        assert!(output.status.success(), "compose-down.sh failed");
        let left = self.leftovers();
        assert!(left.is_empty(), "compose-down.sh left: {left:?}");
    }
}

impl Drop for ComposeStack {
    fn drop(&mut self) {
        if !self.leftovers().is_empty() {
            self.script("compose-down.sh", &[]);
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// What compose-up.sh promises: the app answering through the ingress from a replica the
/// API lists, the dashboard on node-1's API, an unknown host refused by the ingress.
async fn check_the_story(stack: &ComposeStack, printed: &str) {
    let dashboard = format!("http://{}:7070/", stack.host());
    assert!(
        printed.contains(&format!("dashboard:     {dashboard}")),
        "compose-up.sh did not print the dashboard's URL {dashboard}"
    );
    assert!(
        printed.contains(&format!(
            "GET http://{}:8080/ -> hello from {APP}",
            stack.host()
        )),
        "compose-up.sh did not print an answer through the ingress"
    );

    let view = stack.client().app(APP).await.unwrap();
    let release = view.release.as_ref().unwrap().number;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let answer = stack.through_ingress(&format!("{APP}.localhost")).await;
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        let body = answer.text().await.unwrap();
        // "hello from hello release 1 replica 0 on node node-2"
        let words: Vec<&str> = body.split_whitespace().collect();
        let (replica, node) = match words.as_slice() {
            [
                _,
                "from",
                app,
                "release",
                r,
                "replica",
                replica,
                "on",
                "node",
                node,
            ] if *app == APP && r.parse::<u64>().ok() == Some(release) => {
                (replica.parse::<u32>().unwrap(), node.to_string())
            }
            _ => panic!("not an answer of {APP} release {release}: {body:?}"),
        };
        assert!(
            view.replicas
                .iter()
                .any(|r| r.node_id == node && r.replica == replica && r.release == release),
            "{body:?} names no replica the API lists: {:?}",
            view.replicas
        );
        seen.insert((node, replica));
    }
    println!("answers through the ingress from {seen:?}");

    let unknown = stack.through_ingress("nothing-here.localhost").await;
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);

    let page = http().get(&dashboard).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.to_ascii_lowercase().contains("<html"),
        "{dashboard} is no page"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_up_serves_the_app_through_the_ingress_and_down_removes_it_all() {
    compose_command();
    let _serial = SERIAL.lock().await;
    let stack = ComposeStack::new(56);
    let printed = stack.up(&[]);
    check_the_story(&stack, &printed).await;
    stack.down_and_check();
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_up_with_s3_keeps_the_bundle_in_the_s3_server() {
    compose_command();
    let _serial = SERIAL.lock().await;
    let stack = ComposeStack::new(57);
    let printed = stack.up(&["--s3"]);
    check_the_story(&stack, &printed).await;

    // The release's bundle, over the S3 protocol on the published port, with the keys the
    // agents were given.
    let view = stack.client().app(APP).await.unwrap();
    let bundle = view.release.unwrap().bundle;
    let store = S3Store::new(
        S3Config::from_url("s3://stratus")
            .unwrap()
            .with_endpoint(format!("http://{}:9000", stack.host()))
            .with_credentials(S3_ACCESS_KEY, S3_SECRET_KEY),
    )
    .unwrap();
    assert!(
        store.has(&bundle.sha256).await.unwrap(),
        "bundle {} is not in s3://stratus",
        bundle.sha256
    );
    assert!(
        printed.contains(&format!(
            "s3://stratus/{DEFAULT_PREFIX}{}: {} bytes",
            bundle.sha256, bundle.size
        )),
        "compose-up.sh did not show the bundle in the bucket"
    );
    // Every member keeps its bundles there (each checked the bucket at start).
    let compose = compose_command();
    for service in ["node-1", "node-2", "node-3", "ingress"] {
        let logs = Command::new(&compose[0])
            .args(&compose[1..])
            .args(["-p", &stack.project, "--project-directory"])
            .arg(repo_root())
            .arg("-f")
            .arg(repo_root().join("docker-compose.yml"))
            .args(["logs", "--no-color", service])
            .envs(stack.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        let logs = String::from_utf8_lossy(&logs.stdout);
        assert!(
            logs.contains("bundles are kept in S3"),
            "{service} does not keep its bundles in S3:\n{logs}"
        );
    }

    stack.down_and_check();
}
