//! Deploys from source, end to end, on agents in one process that run real Docker (one
//! daemon, the system's) and a real Pingora ingress fed from one agent's routes: the Flask
//! example built once and served by 2 replicas on 2 nodes; a code-only change that reuses
//! the dependency layer (from the build record and its output); the release phase; a build
//! and a release command that fail and leave the previous release serving; the Dockerfile,
//! Node and static builders; and bad input (a package.json that does not parse, a `FROM`
//! image that exists nowhere).
//!
//! Needs the base images (`scripts/build-images.sh` builds them) and PyPI (pip inside the
//! build container). Image spread between separate Docker daemons is `build_image_spread.rs`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use node::testsuite::{
    TestCluster, cluster_for_test, ensure_test_image, examples_dir, healthy_replicas,
    skip_docker_tests, wait_for,
};
use proto::build::{BuildEvent, Builder, CacheUse};
use proto::routes::RouteFeed;
use tokio::sync::watch;

/// Loopback addresses no other test uses, one per test of this file.
const FLASK_INGRESS: &str = "127.0.131.3:18080";
const BUILDERS_INGRESS: &str = "127.0.131.4:18080";

/// Builds pull wheels from PyPI: generous, the bound and never the figure.
const BUILD_WAIT: Duration = Duration::from_secs(240);

fn start_ingress(
    mut feed: watch::Receiver<Option<RouteFeed>>,
    listen: &str,
) -> (ingress::IngressHandle, Arc<ingress::RouteState>) {
    let routes = Arc::new(ingress::RouteState::new(Default::default()));
    let listen: SocketAddr = listen.parse().unwrap();
    let handle = ingress::build(
        &ingress::Listeners::http(listen),
        routes.clone(),
        ingress::ProxyConfig::default(),
        1,
    )
    .unwrap()
    .spawn()
    .unwrap();
    let table_routes = routes.clone();
    tokio::spawn(async move {
        while feed.changed().await.is_ok() {
            let Some(feed) = feed.borrow_and_update().clone() else {
                continue;
            };
            table_routes
                .update(ingress::RouteTable::from_feed("localhost", &feed))
                .await;
        }
    });
    (handle, routes)
}

/// The body of a GET through the ingress with `host`, if it answered 200.
async fn get(ingress: &str, host: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(ingress).await?;
        stream
            .write_all(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .ok()?
        .ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    status.contains(" 200 ").then(|| body.to_string())
}

async fn raw_get(ingress: &str, host: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(ingress).await.ok()?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    Some(response.chars().take(400).collect())
}

/// Removes the containers of a test's cluster when the test ends, passed or failed: the
/// agents leave their replicas running when they stop (a restarted agent adopts them), and
/// a replica left on a host port would answer another test's health checks there.
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let filter = format!("label=stratus.cluster={}", self.0);
        let listed = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output();
        if let Ok(listed) = listed {
            let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

async fn docker_cluster(
    nodes: usize,
    ingress: &str,
) -> (TestCluster, ingress::IngressHandle, RemoveContainers) {
    let cluster_id = format!("build-test-{}-{}", std::process::id(), nodes);
    let cleanup = RemoveContainers(cluster_id.clone());
    let docker = |args: &mut node::config::AgentArgs| {
        args.runtime = Some("docker".into());
        args.cluster_id = Some(cluster_id.clone());
    };
    let mut cluster = cluster_for_test(0).await.unwrap();
    let (_, feed) = cluster.add_node_with_routes(docker).await.unwrap();
    for _ in 1..nodes {
        cluster.add_node_with(docker).await.unwrap();
    }
    let (ingress, _) = start_ingress(feed, ingress);
    let client = cluster.node(0).client();
    wait_for(Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let view = client.nodes().await.map_err(|err| err.to_string())?;
            let builders = view
                .nodes
                .iter()
                .filter(|node| node.identity.as_ref().is_some_and(|id| id.builds))
                .count();
            (builders == nodes)
                .then_some(())
                .ok_or(format!("{builders} of {nodes} nodes can build"))
        }
    })
    .await
    .unwrap();
    (cluster, ingress, cleanup)
}

/// A deploy through the streamed API, with every build event it sent.
async fn deploy(
    client: &api::Client,
    dir: &Path,
) -> (
    Result<proto::api::DeployAccepted, api::ClientError>,
    Vec<BuildEvent>,
) {
    let zip = node::testsuite::bundle_for_test(dir).unwrap();
    let manifest = std::fs::read_to_string(dir.join("stratus.toml")).unwrap();
    let app = manifest
        .lines()
        .find_map(|line| line.strip_prefix("name = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let mut events = Vec::new();
    let accepted = client
        .deploy_following(&app, zip.path(), |_| {}, |event| events.push(event))
        .await;
    (accepted, events)
}

fn lines_of(events: &[BuildEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            BuildEvent::Step { text } | BuildEvent::Line { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_serving(ingress: &str, host: &str, text: &str) {
    wait_for(Duration::from_secs(90), || async {
        match get(ingress, host).await {
            Some(body) if body.contains(text) => Ok(()),
            other => Err(format!(
                "{host} answered {other:?}, waiting for {text:?}; raw: {:?}",
                raw_get(ingress, host).await
            )),
        }
    })
    .await
    .unwrap();
}

/// Until `n` replicas of `release` are healthy; the failure shows every replica's state.
async fn wait_healthy(client: &api::Client, app: &str, release: u64, n: usize) {
    wait_for(BUILD_WAIT, || async {
        let healthy = healthy_replicas(client, app, release).await;
        if healthy.len() == n {
            return Ok(());
        }
        let view = client.app(app).await.map_err(|err| err.to_string())?;
        Err(format!("{app} replicas: {:?}", view.replicas))
    })
    .await
    .unwrap();
}

/// A copy of `examples/NAME` in a temporary folder, changed by `change`.
fn example_copy(name: &str, change: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = examples_dir().join(name);
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    change(dir.path());
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flask_is_built_once_runs_on_two_nodes_and_a_code_change_reuses_its_dependencies() {
    if skip_docker_tests() {
        return;
    }
    ensure_test_image().unwrap();
    let (cluster, _ingress, _cleanup) = docker_cluster(2, FLASK_INGRESS).await;
    let client = cluster.node(0).client();

    // The Flask example: built once, on one node, and run by 2 replicas on 2 nodes.
    let (accepted, events) = deploy(&client, &examples_dir().join("flask")).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let build = accepted.build.clone().unwrap();
    assert_eq!(build.builder, Builder::Python);
    assert_eq!(build.reason, "found requirements.txt");
    // Miss on a fresh machine; a hit when this daemon built the same layer before.
    assert_ne!(build.cache, CacheUse::None);
    let output = lines_of(&events);
    assert!(
        output.contains("builder: python (found requirements.txt)"),
        "{output}"
    );
    // The dependency image is built (pip's output in the deploy) or found by its key.
    assert!(output.contains("stratus-deps/python:"), "{output}");
    if build.cache == CacheUse::Miss {
        assert!(output.contains("pip install"), "{output}");
    }
    assert!(output.contains("the code is a"), "{output}");
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, BuildEvent::Placed { .. }))
            .count()
            == 1,
        "placed once: {events:?}"
    );
    wait_for(BUILD_WAIT, || {
        let client = client.clone();
        async move {
            let healthy = healthy_replicas(&client, "flask", accepted.release).await;
            let nodes: std::collections::BTreeSet<_> = healthy
                .iter()
                .map(|replica| replica.node_id.clone())
                .collect();
            (healthy.len() == 2 && nodes.len() == 2)
                .then_some(())
                .ok_or(format!("healthy: {healthy:?}"))
        }
    })
    .await
    .unwrap();
    // It writes its SQLite file beside its code: the filesystem is writable.
    wait_serving(
        FLASK_INGRESS,
        "flask.localhost",
        "hello from flask, release 1",
    )
    .await;
    let builds = client.builds("flask").await.unwrap();
    assert_eq!(builds.builds.len(), 1, "built once: {builds:?}");

    // A code-only change, with a release command: the dependency layer is reused.
    let changed = example_copy("flask", |dir| {
        edit(&dir.join("app.py"), "hello from flask", "hello again");
        edit(
            &dir.join("stratus.toml"),
            "replicas = 2",
            "replicas = 2\nrelease = \"echo migrating to $STRATUS_RELEASE\"",
        );
    });
    let (accepted, events) = deploy(&client, changed.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let build = accepted.build.clone().unwrap();
    assert_eq!(build.cache, CacheUse::Hit, "{}", lines_of(&events));
    let log: Vec<String> = {
        use futures_util::StreamExt as _;
        let lines = client.build_log("flask", accepted.release).await.unwrap();
        lines.map(|line| line.unwrap()).collect().await
    };
    let log = log.join("\n");
    assert!(
        !log.contains("Collecting"),
        "nothing is installed again:\n{log}"
    );
    assert!(
        log.contains("dependencies: reused") && !log.contains("building the dependency image"),
        "{log}"
    );
    assert!(
        log.contains("the code is a"),
        "a layer on the same dependency image:\n{log}"
    );
    assert!(
        log.contains("migrating to 2"),
        "the release command ran:\n{log}"
    );
    wait_serving(FLASK_INGRESS, "flask.localhost", "hello again, release 2").await;

    // A requirement that cannot be installed: a clear error, release 2 keeps serving.
    let unbuildable = example_copy("flask", |dir| {
        std::fs::write(
            dir.join("requirements.txt"),
            "flask\nstratus-no-such-package-for-tests==9.9.9\n",
        )
        .unwrap();
    });
    let (failed, events) = deploy(&client, unbuildable.path()).await;
    let err = failed.expect_err("the build fails");
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(err.to_string().contains("was not built"), "{err}");
    assert!(
        lines_of(&events).contains("stratus-no-such-package-for-tests"),
        "the output names the package"
    );
    let view = client.app("flask").await.unwrap();
    assert_eq!(view.release.as_ref().map(|r| r.number), Some(2));
    assert!(
        get(FLASK_INGRESS, "flask.localhost")
            .await
            .unwrap()
            .contains("hello again")
    );

    // A release command that fails: nothing is rolled out.
    let bad_release = example_copy("flask", |dir| {
        edit(
            &dir.join("stratus.toml"),
            "replicas = 2",
            "replicas = 2\nrelease = \"echo the migration broke; exit 3\"",
        );
    });
    let (failed, events) = deploy(&client, bad_release.path()).await;
    let err = failed.expect_err("the release command fails");
    assert!(err.to_string().contains("exited with 3"), "{err}");
    assert!(lines_of(&events).contains("the migration broke"));
    let builds = client.builds("flask").await.unwrap();
    let results: Vec<(u64, bool)> = builds
        .builds
        .iter()
        .map(|build| (build.release, build.error.is_none()))
        .collect();
    assert_eq!(results, vec![(4, false), (3, false), (2, true), (1, true)]);
    let releases = client.releases("flask").await.unwrap();
    assert_eq!(
        releases.releases.first().map(|r| r.number),
        Some(2),
        "{releases:?}"
    );
    assert!(
        get(FLASK_INGRESS, "flask.localhost")
            .await
            .unwrap()
            .contains("hello again")
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerfile_node_and_static_apps_build_and_bad_sources_fail_clearly() {
    if skip_docker_tests() {
        return;
    }
    ensure_test_image().unwrap();
    let (cluster, _ingress, _cleanup) = docker_cluster(1, BUILDERS_INGRESS).await;
    let client = cluster.node(0).client();

    // A Dockerfile, with a build argument.
    let dockerfile = example_copy("dockerfile", |dir| {
        edit(
            &dir.join("stratus.toml"),
            "# [build]\n# args = { GREETING = \"howdy\" }",
            "[build]\nargs = { GREETING = \"howdy\" }",
        );
    });
    let (accepted, events) = deploy(&client, dockerfile.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    assert_eq!(accepted.build.unwrap().builder, Builder::Dockerfile);
    wait_healthy(&client, "dockerfile-app", accepted.release, 1).await;
    wait_serving(BUILDERS_INGRESS, "dockerfile-app.localhost", "howdy").await;

    // Node, with no dependencies (no registry can be reached from here).
    let node_app = tempfile::tempdir().unwrap();
    std::fs::write(
        node_app.path().join("stratus.toml"),
        "name = \"node-app\"\n",
    )
    .unwrap();
    std::fs::write(
        node_app.path().join("package.json"),
        r#"{"name":"node-app","version":"1.0.0","scripts":{"start":"node server.js"}}"#,
    )
    .unwrap();
    std::fs::write(
        node_app.path().join("server.js"),
        "require('http').createServer((q, s) => s.end('hello from node\\n')).listen(process.env.PORT);\n",
    )
    .unwrap();
    let (accepted, events) = deploy(&client, node_app.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    assert_eq!(accepted.build.unwrap().builder, Builder::Node);
    wait_healthy(&client, "node-app", accepted.release, 1).await;
    wait_serving(BUILDERS_INGRESS, "node-app.localhost", "hello from node").await;

    // Static files.
    let (accepted, events) = deploy(&client, &examples_dir().join("static")).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    assert_eq!(accepted.build.unwrap().builder, Builder::Static);
    wait_healthy(&client, "static-site", accepted.release, 1).await;
    let index = std::fs::read_to_string(examples_dir().join("static/index.html")).unwrap();
    let title = index
        .lines()
        .find(|line| line.contains("<title>"))
        .unwrap()
        .trim();
    wait_serving(BUILDERS_INGRESS, "static-site.localhost", title).await;

    // A package.json that does not parse: refused with the file's name, node-app serving.
    std::fs::write(node_app.path().join("package.json"), "{ not json").unwrap();
    let (failed, _) = deploy(&client, node_app.path()).await;
    let err = failed.expect_err("refused");
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(
        err.to_string().contains("package.json does not parse"),
        "{err}"
    );
    assert!(
        get(BUILDERS_INGRESS, "node-app.localhost")
            .await
            .unwrap()
            .contains("hello from node")
    );

    // Nothing a builder starts from and no `cmd`: refused, saying what would do.
    let bare = tempfile::tempdir().unwrap();
    std::fs::write(bare.path().join("stratus.toml"), "name = \"bare\"\n").unwrap();
    std::fs::write(bare.path().join("notes.txt"), "no code here\n").unwrap();
    let (failed, _) = deploy(&client, bare.path()).await;
    let err = failed.expect_err("refused");
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(err.to_string().contains("cmd: missing"), "{err}");
    assert!(err.to_string().contains("requirements.txt"), "{err}");

    // FROM an image nobody has: the error names it and how to provide it.
    let missing = example_copy("dockerfile", |dir| {
        edit(
            &dir.join("Dockerfile"),
            "FROM stratus/python:3.11",
            "FROM stratus-tests/nowhere:1",
        );
    });
    let (failed, _) = deploy(&client, missing.path()).await;
    let err = failed.expect_err("refused");
    assert!(err.to_string().contains("stratus-tests/nowhere:1"), "{err}");
    assert!(err.to_string().contains("build-base-images.sh"), "{err}");
    wait_serving(BUILDERS_INGRESS, "dockerfile-app.localhost", "howdy").await;
    cluster.shutdown().await.unwrap();
}
