//! How a release's image reaches the nodes that run it, on agents in one process that each
//! talk to a Docker daemon of their own (`node::sandbox_dockerd`), so an image one node
//! has is not silently on another:
//!
//! 1. the Dockerfile example, built on one node and run by a replica on every node: the
//!    others load the image the build saved into the store (their daemons hold it, and
//!    nothing of a build: no parent chain, no intermediate images);
//! 2. a corrupt copy of the image's layer in a holder's store is refused and discarded: a
//!    node lacking the image takes the next holder's good copy, and while every reachable
//!    copy is corrupt its replica says so and runs nothing, until a good holder is back;
//! 3. `image = "..."` against the local registry (`scripts/start-registry.sh`): pulled once
//!    with `--image-pull if-missing` (the pull's progress in the deploy's events), loaded by
//!    a `--image-pull never` node, and refused (422, naming the image and the flag) by that
//!    node while the cluster has no copy;
//! 4. the node a build was placed on stops mid-build: the deploy ends, built elsewhere.
//! 5. a dependency image installed on one node is loaded (not installed again) by a build of
//!    another app with the same dependencies on another node while the first is down; and
//!    a later install on the first node takes the package from its download cache.
//!
//! Needs root, Docker and the base images (`scripts/build-images.sh`); the tests run one at
//! a time (each starts several daemons on a 2-core machine). `STRATUS_SKIP_DOCKER_TESTS=1`
//! skips them.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use node::sandbox_dockerd::SandboxDockerd;
use node::testsuite::{
    TestCluster, cluster_for_test, ensure_test_image, examples_dir, healthy_replicas,
    skip_docker_tests, wait_for,
};
use proto::api::{DeployAccepted, NodeStatus};
use proto::build::{BuildEvent, Builder, ImageRef};
use tokio::time::Instant;

const PYTHON: &str = "stratus/python:3.11";
const BUSYBOX: &str = "stratus/busybox:latest";
const PULLED: &str = "127.0.0.1:5055/stratus-tests/pulled:1";

/// Replica host ports of this file's tests, away from the 41000s the in-process cluster
/// hands out by default (another test binary's leftover containers may hold those).
const PORTS_BASE: u16 = 44_000;
const PORTS_PER_NODE: u16 = 100;

/// Generous bounds, never the figures: builds and image loads on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

/// One test at a time: each starts several daemons, and two would share host ports.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn text(output: &std::process::Output) -> String {
    format!(
        "{} (stdout {:?}, stderr {:?})",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// `docker -H <sandbox> args...`, which must succeed: its stdout, trimmed.
fn docker_ok(sandbox: &SandboxDockerd, args: &[&str]) -> String {
    let output = sandbox.docker(args);
    assert!(
        output.status.success(),
        "docker {args:?} on {}: {}",
        sandbox.name(),
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `docker args...` against the system's daemon.
fn host_docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap()
}

/// Sandboxes named `{prefix}-{i}`, started at once, each given `images[i]` from the
/// system's daemon.
async fn start_sandboxes(prefix: &str, images: Vec<Vec<&'static str>>) -> Vec<SandboxDockerd> {
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let started: Vec<_> = images
                .iter()
                .enumerate()
                .map(|(i, images)| {
                    let name = format!("{prefix}-{i}");
                    scope.spawn(move || {
                        let sandbox = SandboxDockerd::start(&name)?;
                        for image in images {
                            sandbox.copy_image_from_system(image)?;
                        }
                        Ok::<_, String>(sandbox)
                    })
                })
                .collect();
            started
                .into_iter()
                .map(|handle| handle.join().unwrap().unwrap())
                .collect()
        })
    })
    .await
    .unwrap()
}

/// Stops the daemons off the async threads (each may take seconds).
async fn drop_sandboxes(sandboxes: Vec<SandboxDockerd>) {
    tokio::task::spawn_blocking(move || drop(sandboxes))
        .await
        .unwrap();
}

/// Adds an agent that runs Docker on `sandbox` (none: the process runtime), with its own
/// replica ports, changed further by `configure`.
async fn add_node(
    cluster: &mut TestCluster,
    sandbox: Option<&SandboxDockerd>,
    configure: impl FnOnce(&mut node::config::AgentArgs),
) -> usize {
    let index = cluster.nodes.len();
    let first = PORTS_BASE + index as u16 * PORTS_PER_NODE;
    let host = sandbox.map(SandboxDockerd::host);
    cluster
        .add_node_with(|args| {
            if let Some(host) = host {
                args.docker_host = Some(host);
                args.runtime = Some("docker".into());
            }
            args.port_range = Some(format!("{first}-{}", first + PORTS_PER_NODE - 1));
            configure(args);
        })
        .await
        .unwrap()
}

/// Until `client`'s node sees `nodes` live nodes, `builders` of them able to build.
async fn wait_nodes(client: &api::Client, nodes: usize, builders: usize) {
    wait_for(Duration::from_secs(30), || async {
        let view = client.nodes().await.map_err(|err| err.to_string())?;
        let live: Vec<_> = view
            .nodes
            .iter()
            .filter(|node| node.status == NodeStatus::Live)
            .collect();
        let can_build = live
            .iter()
            .filter(|node| node.identity.as_ref().is_some_and(|id| id.builds))
            .count();
        (live.len() == nodes && can_build == builders)
            .then_some(())
            .ok_or(format!(
                "{} live, {can_build} can build; want {nodes} and {builders}",
                live.len()
            ))
    })
    .await
    .unwrap();
}

/// A deploy through the streamed API, with every build event it sent.
async fn deploy(
    client: &api::Client,
    app: &str,
    dir: &Path,
) -> (Result<DeployAccepted, api::ClientError>, Vec<BuildEvent>) {
    let zip = node::testsuite::bundle_for_test(dir).unwrap();
    let mut events = Vec::new();
    let accepted = client
        .deploy_following(app, zip.path(), |_| {}, |event| events.push(event))
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

fn placed_on(events: &[BuildEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            BuildEvent::Placed { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

/// Until `n` replicas of `release` are healthy on `n` distinct nodes; returns the nodes.
async fn wait_spread(client: &api::Client, app: &str, release: u64, n: usize) -> BTreeSet<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let healthy = healthy_replicas(client, app, release).await;
        let nodes: BTreeSet<String> = healthy.iter().map(|r| r.node_id.clone()).collect();
        if healthy.len() == n && nodes.len() == n {
            return nodes;
        }
        if Instant::now() >= deadline {
            let view = client.app(app).await.map(|view| view.replicas);
            panic!("not {n} healthy replicas of {app} r{release} after {WAIT:?}: {view:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until `node_id` runs a healthy replica of `release`.
async fn wait_healthy_on(client: &api::Client, app: &str, release: u64, node_id: &str) {
    wait_for(WAIT, || async {
        let healthy = healthy_replicas(client, app, release).await;
        if healthy.iter().any(|replica| replica.node_id == node_id) {
            return Ok(());
        }
        let view = client.app(app).await.map_err(|err| err.to_string())?;
        Err(format!(
            "no healthy replica on {node_id}; {app} replicas: {:?}",
            view.replicas
        ))
    })
    .await
    .unwrap();
}

/// The image the app's current release runs, as `client`'s node has it in the catalog.
async fn release_image(client: &api::Client, app: &str) -> ImageRef {
    client
        .app(app)
        .await
        .unwrap()
        .release
        .and_then(|release| release.image)
        .expect("the release records its image")
}

/// Where `data_dir`'s blob store keeps blob `sha256`.
fn blob_path(data_dir: &Path, sha256: &str) -> PathBuf {
    data_dir.join("blobs").join(&sha256[..2]).join(sha256)
}

/// Flips one byte in the middle of `path` (the size stays): what bit rot does.
fn corrupt(path: &Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
    let at = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0xff;
    file.write_all_at(&byte, at).unwrap();
    file.sync_all().unwrap();
}

fn sha256_of(path: &Path) -> String {
    node::bundle::sha256_file(path).unwrap()
}

/// The image ids (`sha256:...`) the daemon holds, intermediate ones included.
fn all_image_ids(sandbox: &SandboxDockerd) -> BTreeSet<String> {
    docker_ok(sandbox, &["images", "-a", "-q", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `docker image inspect --format`, which must succeed.
fn image_field(sandbox: &SandboxDockerd, image: &str, format: &str) -> String {
    docker_ok(sandbox, &["image", "inspect", "--format", format, image])
}

/// The images the app's containers in `sandbox` were created from.
/// The diff ids of an image's layers in `sandbox`.
fn layers_of(sandbox: &SandboxDockerd, image: &str) -> BTreeSet<String> {
    image_field(sandbox, image, "{{json .RootFS.Layers}}")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|layer| layer.trim_matches('"').to_string())
        .collect()
}

fn container_images(sandbox: &SandboxDockerd, app: &str) -> Vec<String> {
    let label = format!("label=stratus.app={app}");
    let ids = docker_ok(sandbox, &["ps", "-a", "-q", "--filter", &label]);
    ids.lines()
        .map(|id| docker_ok(sandbox, &["inspect", "--format", "{{.Image}}", id]))
        .collect()
}

fn host_image_id(image: &str) -> String {
    let output = host_docker(&["image", "inspect", "--format", "{{.Id}}", image]);
    assert!(output.status.success(), "{image}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
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
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// A folder with `files` (name, content).
fn app_folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_built_on_one_node_runs_on_every_node_without_building_there() {
    if skip_docker_tests() {
        return;
    }
    ensure_test_image().unwrap();
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    const NODES: usize = 3;
    const APP: &str = "dockerfile-app";
    // Any node may be chosen to build: each has the Dockerfile's base image, and nothing else.
    let sandboxes = start_sandboxes("spread", vec![vec![PYTHON]; NODES]).await;
    let python = host_image_id(PYTHON);
    for sandbox in &sandboxes {
        assert_eq!(all_image_ids(sandbox), BTreeSet::from([python.clone()]));
    }
    let mut cluster = cluster_for_test(0).await.unwrap();
    for sandbox in &sandboxes {
        add_node(&mut cluster, Some(sandbox), |_| {}).await;
    }
    let client = cluster.node(0).client();
    wait_nodes(&client, NODES, NODES).await;
    println!(
        "{NODES} sandboxed agents up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let app = example_copy("dockerfile", |dir| {
        edit(
            &dir.join("stratus.toml"),
            "name = \"dockerfile-app\"",
            &format!("name = \"dockerfile-app\"\nreplicas = {NODES}"),
        );
    });
    let deployed = Instant::now();
    let (accepted, events) = deploy(&client, APP, app.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    println!(
        "built and accepted in {:.1} s",
        deployed.elapsed().as_secs_f64()
    );
    let build = accepted.build.clone().unwrap();
    assert_eq!(build.builder, Builder::Dockerfile);
    assert_eq!(placed_on(&events), vec![build.node.clone()], "built once");
    let builder: usize = cluster
        .nodes
        .iter()
        .position(|node| node.node_id == build.node)
        .unwrap_or_else(|| panic!("{} is not a node of the cluster", build.node));
    println!("built on {}", build.node);
    let image = build.image.clone().unwrap();
    assert_eq!(
        image.tag,
        format!("stratus-app/{APP}:r{}", accepted.release)
    );
    // The release, and the build record every node reads, name the same image and node.
    assert_eq!(release_image(&client, APP).await, image);
    let builds = cluster.node(2).client().builds(APP).await.unwrap();
    assert_eq!(builds.builds.len(), 1, "{builds:?}");
    assert_eq!(builds.builds[0].node, build.node);
    assert_eq!(builds.builds[0].image.as_ref(), Some(&image));
    let output = lines_of(&events);
    assert!(output.contains("image held by"), "{output}");

    let running = wait_spread(&client, APP, accepted.release, NODES).await;
    println!(
        "{NODES} replicas healthy on {running:?} {:.1} s after the deploy",
        deployed.elapsed().as_secs_f64()
    );
    for (index, sandbox) in sandboxes.iter().enumerate() {
        let node_id = &cluster.node(index).node_id;
        // Each node's replica runs the recorded image from the node's own daemon.
        assert!(sandbox.has_image(&image.id), "{node_id} lacks {}", image.id);
        assert_eq!(
            container_images(sandbox, APP),
            vec![image.id.clone()],
            "{node_id}'s containers"
        );
        assert_eq!(image_field(sandbox, &image.id, "{{.Id}}"), image.id);
        let parent = image_field(sandbox, &image.id, "{{.Parent}}");
        let ids = all_image_ids(sandbox);
        if index == builder {
            // The classic builder's image has its last step's image as parent, and the
            // steps' images stay beside it: what the other nodes must not have.
            assert!(!parent.is_empty(), "the builder's image has no parent");
            assert!(
                ids.len() > 2,
                "the builder has no intermediate images: {ids:?}"
            );
        } else {
            // `docker load` brings the image and its layers, not the build's history: no
            // parent, nothing but the base it was given and the image itself.
            assert!(
                parent.is_empty(),
                "{node_id} has {} with parent {parent}: it was built there, not loaded",
                image.id
            );
            assert_eq!(
                ids,
                BTreeSet::from([python.clone(), image.id.clone()]),
                "{node_id} holds images of a build"
            );
            // It holds the config and the layers it lacked (all but the base's), intact.
            let base_layers = layers_of(sandbox, &python);
            for blob in image.blobs() {
                let path = blob_path(cluster.node(index).data_dir(), &blob.sha256);
                if base_layers.contains(&format!("sha256:{}", blob.sha256)) {
                    continue;
                }
                assert_eq!(sha256_of(&path), blob.sha256, "{node_id}'s copy");
            }
        }
    }
    cluster.shutdown().await.unwrap();
    drop_sandboxes(sandboxes).await;
    println!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}

/// A Dockerfile app that needs only busybox, so the nodes that never build need no base.
fn busybox_app(name: &str, replicas: u32, page: &str) -> tempfile::TempDir {
    app_folder(&[
        (
            "stratus.toml",
            &format!(
                "name = \"{name}\"\nreplicas = {replicas}\n[resources]\ncpu = 0.1\nmemory = \"32MiB\"\n\
                 [build]\ncpu = 0.5\nmemory = \"256MiB\"\n\
                 [health]\npath = \"/\"\ninterval = \"1s\"\n"
            ),
        ),
        (
            "Dockerfile",
            &format!(
                "FROM {BUSYBOX}\nRUN mkdir -p /www && echo '{page}' > /www/index.html\n\
                 CMD busybox httpd -f -p $PORT -h /www\n"
            ),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_copy_of_the_image_is_refused_and_the_replica_waits_for_a_good_one() {
    if skip_docker_tests() {
        return;
    }
    ensure_test_image().unwrap();
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    const APP: &str = "spread-check";
    // node-0 and node-1 build and run; node-2 runs nothing (no workloads, no Docker) but,
    // as one of the app's three keepers, holds the image archive; node-3 and node-4 join
    // later with empty daemons.
    let sandboxes = start_sandboxes(
        "corrupt",
        vec![vec![BUSYBOX], vec![BUSYBOX], vec![], vec![]],
    )
    .await;
    let (s0, s1, s3, s4) = (&sandboxes[0], &sandboxes[1], &sandboxes[2], &sandboxes[3]);
    let mut cluster = cluster_for_test(0).await.unwrap();
    add_node(&mut cluster, Some(s0), |_| {}).await;
    add_node(&mut cluster, Some(s1), |_| {}).await;
    add_node(&mut cluster, None, |args| args.no_workloads = true).await;
    let client = cluster.node(0).client();
    wait_nodes(&client, 3, 2).await;

    let app = busybox_app(APP, 2, "spread ok");
    let (accepted, events) = deploy(&client, APP, app.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let release = accepted.release;
    let image = release_image(&client, APP).await;
    // The layer the Dockerfile made: the blob every node without the image must fetch.
    let digest = image.layers.last().unwrap().sha256.clone();
    wait_spread(&client, APP, release, 2).await;
    for index in 0..3 {
        let copy = blob_path(cluster.node(index).data_dir(), &digest);
        assert_eq!(
            sha256_of(&copy),
            digest,
            "node-{index} holds the image's layer"
        );
    }
    println!(
        "deployed, 3 holders, in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A corrupt copy, then a good one: node-3 asks the holders in node-id order, so node-0
    // (corrupt) first; node-0 finds its copy corrupt, deletes it and refuses; node-1's serves.
    add_node(&mut cluster, Some(s3), |_| {}).await;
    wait_nodes(&client, 4, 3).await;
    let copy_0 = blob_path(cluster.node(0).data_dir(), &digest);
    corrupt(&copy_0);
    client.scale(APP, 3).await.unwrap();
    wait_healthy_on(&client, APP, release, "node-3").await;
    assert!(
        !copy_0.exists(),
        "node-0's corrupt copy was not discarded: was it ever read?"
    );
    assert!(s3.has_image(&image.id));
    assert_eq!(container_images(s3, APP), vec![image.id.clone()]);
    assert_eq!(
        image_field(s3, &image.id, "{{.Parent}}"),
        "",
        "loaded, not built"
    );
    let copy_3 = blob_path(cluster.node(3).data_dir(), &digest);
    assert_eq!(
        sha256_of(&copy_3),
        digest,
        "node-3 keeps the good copy it fetched"
    );
    println!(
        "node-3 skipped the corrupt copy and runs its replica, {:.1} s in",
        started.elapsed().as_secs_f64()
    );

    // Every reachable copy corrupt: node-1's and node-3's; node-0's is gone and the good
    // holder, node-2, is stopped. node-4 must not run the replica, and must say why.
    add_node(&mut cluster, Some(s4), |_| {}).await;
    wait_nodes(&client, 5, 4).await;
    let copy_1 = blob_path(cluster.node(1).data_dir(), &digest);
    corrupt(&copy_1);
    corrupt(&copy_3);
    cluster.stop_node(2).await.unwrap();
    wait_nodes(&client, 4, 4).await;
    client.scale(APP, 4).await.unwrap();
    let node_4 = cluster.node(4).client();
    let deadline = Instant::now() + WAIT;
    let detail = loop {
        // node-4's own view: its replica's record is there at once.
        let view = node_4.app(APP).await.unwrap();
        let mine = view.replicas.iter().find(|r| r.node_id == "node-4");
        let detail = mine.and_then(|r| r.detail.clone()).unwrap_or_default();
        if detail.contains("corrupt") {
            break detail;
        }
        assert!(
            Instant::now() < deadline,
            "node-4 never said the copies are corrupt: {mine:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("node-4's replica while every copy is corrupt: {detail}");
    assert!(detail.contains(&image.tag), "{detail}");
    assert!(detail.contains(&digest), "{detail}");
    assert!(
        detail.contains("fetch it again from another node"),
        "{detail}"
    );
    assert!(
        !s4.has_image(&image.id),
        "node-4 loaded an image from a corrupt archive"
    );
    assert!(
        container_images(s4, APP).is_empty(),
        "node-4 created a container without the image"
    );
    assert!(
        !blob_path(cluster.node(4).data_dir(), &digest).exists(),
        "node-4 stored a copy it could not verify"
    );
    for copy in [&copy_1, &copy_3] {
        assert!(!copy.exists(), "{} was not discarded", copy.display());
    }

    // The good holder is back: node-4's next attempt finds its copy.
    let back = Instant::now();
    cluster.restart_node(2).await.unwrap();
    wait_healthy_on(&client, APP, release, "node-4").await;
    println!(
        "node-4 healthy {:.1} s after the good holder came back",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(container_images(s4, APP), vec![image.id.clone()]);
    assert_eq!(
        sha256_of(&blob_path(cluster.node(4).data_dir(), &digest)),
        digest
    );
    cluster.shutdown().await.unwrap();
    drop_sandboxes(sandboxes).await;
    println!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}

/// Removes a tag from the system's daemon when dropped.
struct HostTag(String);

impl Drop for HostTag {
    fn drop(&mut self) {
        let _ = host_docker(&["rmi", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_image_is_pulled_once_if_missing_and_refused_where_pulls_are_not_allowed() {
    if skip_docker_tests() {
        return;
    }
    ensure_test_image().unwrap();
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    const APP: &str = "pulled-app";
    let script = examples_dir().join("../scripts/start-registry.sh");
    let registry = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        registry.status.success(),
        "start-registry.sh: {}",
        text(&registry)
    );
    assert_eq!(
        String::from_utf8_lossy(&registry.stdout).trim(),
        "127.0.0.1:5055"
    );
    let tagged = host_docker(&["tag", BUSYBOX, PULLED]);
    assert!(tagged.status.success(), "{}", text(&tagged));
    let _tag = HostTag(PULLED.to_string());
    let pushed = host_docker(&["push", PULLED]);
    assert!(pushed.status.success(), "{}", text(&pushed));

    // node-0 pulls when it must (the default); node-1 never does. Both daemons start empty.
    let sandboxes = start_sandboxes("pull", vec![vec![], vec![]]).await;
    let (puller, never) = (&sandboxes[0], &sandboxes[1]);
    let mut cluster = cluster_for_test(0).await.unwrap();
    add_node(&mut cluster, Some(puller), |_| {}).await;
    add_node(&mut cluster, Some(never), |args| {
        args.image_pull = Some("never".into())
    })
    .await;
    let (client, never_client) = (cluster.node(0).client(), cluster.node(1).client());
    wait_nodes(&client, 2, 2).await;
    let app = app_folder(&[
        (
            "stratus.toml",
            &format!(
                "name = \"{APP}\"\nimage = \"{PULLED}\"\ncmd = \"busybox httpd -f -p $PORT -h /app\"\n\
                 replicas = 2\n[resources]\ncpu = 0.1\nmemory = \"32MiB\"\n\
                 [health]\npath = \"/\"\ninterval = \"1s\"\n"
            ),
        ),
        ("index.html", "pulled ok\n"),
    ]);

    // Nowhere in the cluster and no pulls allowed: refused, nothing pulled.
    let (refused, _) = deploy(&never_client, APP, app.path()).await;
    let err = refused.expect_err("a node that never pulls refuses an image it lacks");
    assert_eq!(err.status(), Some(422), "{err}");
    let message = err.to_string();
    assert!(message.contains(PULLED), "{message}");
    assert!(message.contains("--image-pull"), "{message}");
    assert!(!never.has_image(PULLED) && !puller.has_image(PULLED));

    // The default pulls it, the progress in the deploy's events, and files it for the others.
    let (accepted, events) = deploy(&client, APP, app.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let output = lines_of(&events);
    println!("the pull, as the deploy streamed it:\n{output}");
    assert!(output.contains(&format!("pulling {PULLED}")), "{output}");
    assert!(output.contains("Pull complete"), "{output}");
    assert!(
        output.contains(&format!("Downloaded newer image for {PULLED}")),
        "{output}"
    );
    assert!(output.contains("storing it for the cluster"), "{output}");
    assert!(accepted.build.is_none(), "nothing is built");
    let image = release_image(&client, APP).await;
    assert_eq!(image.tag, PULLED);
    assert_eq!(image.builder, Builder::Image);
    assert_eq!(image.id, host_image_id(BUSYBOX));
    let running = wait_spread(&client, APP, accepted.release, 2).await;
    assert_eq!(running.len(), 2);
    // node-0 pulled it (the registry's digest is recorded); node-1 loaded the cluster's
    // copy (a loaded image has none): it never pulled.
    let pulled_digests = image_field(puller, PULLED, "{{json .RepoDigests}}");
    assert!(
        pulled_digests.contains("127.0.0.1:5055/stratus-tests/pulled@sha256:"),
        "{pulled_digests}"
    );
    assert_eq!(image_field(never, &image.id, "{{json .RepoDigests}}"), "[]");
    for sandbox in [puller, never] {
        assert_eq!(container_images(sandbox, APP), vec![image.id.clone()]);
    }

    // Now the cluster has a copy: the node that never pulls takes the next deploy.
    let (accepted, events) = deploy(&never_client, APP, app.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let output = lines_of(&events);
    assert!(!output.contains("pulling"), "{output}");
    // Both may land on one node: the rollout's spreading counts the retiring replicas too.
    wait_for(WAIT, || async {
        let healthy = healthy_replicas(&client, APP, accepted.release).await;
        (healthy.len() == 2)
            .then_some(())
            .ok_or(format!("healthy: {healthy:?}"))
    })
    .await
    .unwrap();
    cluster.shutdown().await.unwrap();
    drop_sandboxes(sandboxes).await;
    println!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_whose_node_stops_midway_is_built_again_elsewhere() {
    if skip_docker_tests() {
        return;
    }
    ensure_test_image().unwrap();
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    const APP: &str = "slow-build";
    const BUILDERS: usize = 3;
    // node-0 takes the deploy and builds nothing (no workloads), so the build is placed on
    // a peer; three builders, so that with one gone the release still reaches three holders.
    let sandboxes = start_sandboxes("midway", vec![vec![BUSYBOX]; BUILDERS]).await;
    let mut cluster = cluster_for_test(0).await.unwrap();
    add_node(&mut cluster, None, |args| args.no_workloads = true).await;
    for sandbox in &sandboxes {
        add_node(&mut cluster, Some(sandbox), |_| {}).await;
    }
    let client = cluster.node(0).client();
    wait_nodes(&client, BUILDERS + 1, BUILDERS).await;
    let app = app_folder(&[
        (
            "stratus.toml",
            &format!(
                "name = \"{APP}\"\nreplicas = 1\n[resources]\ncpu = 0.1\nmemory = \"32MiB\"\n\
                 [build]\ncpu = 0.5\nmemory = \"256MiB\"\n\
                 [health]\npath = \"/\"\ninterval = \"1s\"\n"
            ),
        ),
        (
            "Dockerfile",
            &format!(
                "FROM {BUSYBOX}\nRUN echo slow step && sleep 20\n\
                 RUN mkdir -p /www && echo 'built after all' > /www/index.html\n\
                 CMD busybox httpd -f -p $PORT -h /www\n"
            ),
        ),
    ]);

    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let deploying = {
        let client = client.clone();
        let zip = node::testsuite::bundle_for_test(app.path()).unwrap();
        tokio::spawn(async move {
            let accepted = client
                .deploy_following(
                    APP,
                    zip.path(),
                    |_| {},
                    |event| {
                        let _ = events_tx.send(event);
                    },
                )
                .await;
            drop(zip);
            accepted
        })
    };
    let deployed = Instant::now();
    let mut events = Vec::new();
    // Until the build is placed and its slow step runs.
    let first = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no slow step within 60 s: {events:?}"))
            .unwrap_or_else(|| panic!("the deploy ended early: {events:?}"));
        events.push(event);
        let placed = placed_on(&events);
        if let Some(node) = placed.first()
            && lines_of(&events).contains("slow step")
        {
            break node.clone();
        }
    };
    assert_ne!(first, "node-0", "node-0 builds nothing");
    let index = cluster
        .nodes
        .iter()
        .position(|node| node.node_id == first)
        .unwrap();
    let stopping = Instant::now();
    cluster.stop_node(index).await.unwrap();
    println!(
        "placed on {first}; stopped it {:.1} s into the deploy (the stop took {:.1} s)",
        deployed.elapsed().as_secs_f64(),
        stopping.elapsed().as_secs_f64()
    );
    let accepted = tokio::time::timeout(Duration::from_secs(120), deploying)
        .await
        .unwrap_or_else(|_| panic!("the deploy still runs 120 s after {first} stopped"))
        .unwrap();
    while let Ok(event) = events_rx.try_recv() {
        events.push(event);
    }
    let ended = stopping.elapsed().as_secs_f64();
    let output = lines_of(&events);
    println!("the deploy ended {ended:.1} s after the stop:\n{output}");
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{output}"));
    let build = accepted.build.unwrap();
    assert_ne!(build.node, first, "the summary is of the build elsewhere");
    let placed = placed_on(&events);
    assert_eq!(placed.len(), 2, "placed twice: {placed:?}");
    assert_eq!(placed[1], build.node);
    assert!(
        output.contains(&format!(
            "{first} left the cluster mid-build: placing the build again"
        )),
        "{output}"
    );
    wait_spread(&client, APP, accepted.release, 1).await;
    cluster.shutdown().await.unwrap();
    drop_sandboxes(sandboxes).await;
    println!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}

/// A Python app that installs one small package from PyPI; `marker` changes only the code.
fn six_app(name: &str, requirements: &str) -> tempfile::TempDir {
    app_folder(&[
        (
            "stratus.toml",
            &format!(
                "name = \"{name}\"\nreplicas = 1\n[resources]\ncpu = 0.1\nmemory = \"64MiB\"\n\
                 [build]\ncpu = 0.5\nmemory = \"512MiB\"\n[health]\ninterval = \"1s\"\n"
            ),
        ),
        ("requirements.txt", requirements),
        (
            "app.py",
            "import os, six, http.server\n\
             http.server.HTTPServer(('0.0.0.0', int(os.environ['PORT'])), \
             http.server.SimpleHTTPRequestHandler).serve_forever()\n",
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dependencies_installed_on_one_node_are_reused_by_another_and_downloads_are_cached() {
    if skip_docker_tests() {
        return;
    }
    ensure_test_image().unwrap();
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let sandboxes = start_sandboxes("deps", vec![vec![PYTHON], vec![PYTHON]]).await;
    let mut cluster = cluster_for_test(0).await.unwrap();
    for sandbox in &sandboxes {
        add_node(&mut cluster, Some(sandbox), |_| {}).await;
    }
    let client = cluster.node(0).client();
    wait_nodes(&client, 2, 2).await;

    // The first install: pip downloads six, into the building node's download cache.
    let first = six_app("deps-a", "six==1.16.0\n");
    let (accepted, events) = deploy(&client, "deps-a", first.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let build = accepted.build.clone().unwrap();
    assert_eq!(
        build.cache,
        proto::build::CacheUse::Miss,
        "{}",
        lines_of(&events)
    );
    let deps = build.dependencies.clone().expect("a dependency image");
    let built_on: usize = cluster
        .nodes
        .iter()
        .position(|node| node.node_id == build.node)
        .unwrap();
    let other = 1 - built_on;
    let cache = cluster
        .node(built_on)
        .data_dir()
        .join("builds/download-cache/pip/wheels");
    assert!(
        std::fs::read_dir(&cache).is_ok_and(|mut entries| entries.next().is_some()),
        "pip left nothing in {}:\n{}",
        cache.display(),
        lines_of(&events)
    );
    wait_spread(&client, "deps-a", accepted.release, 1).await;

    // Another app with the same dependencies, built on the other node while the first is
    // gone: it loads the dependency image from the blobs the first left with the keepers.
    cluster.stop_node(built_on).await.unwrap();
    let client = cluster.node(other).client();
    wait_nodes(&client, 1, 1).await;
    let second = six_app("deps-b", "six==1.16.0\n");
    let (accepted, events) = deploy(&client, "deps-b", second.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let output = lines_of(&events);
    let reused = accepted.build.clone().unwrap();
    assert_eq!(reused.node, cluster.node(other).node_id);
    assert_eq!(reused.cache, proto::build::CacheUse::Hit, "{output}");
    assert_eq!(reused.cache_key, build.cache_key, "the same key");
    assert_eq!(reused.dependencies.as_ref().map(|d| &d.id), Some(&deps.id));
    assert!(
        output.contains(&format!("dependencies: loading {}", deps.tag)),
        "{output}"
    );
    assert!(!output.contains("installing the dependencies"), "{output}");
    assert!(sandboxes[other].has_image(&deps.id));
    wait_spread(&client, "deps-b", accepted.release, 1).await;

    // A different requirements file on the first node, back: a new key, so pip runs, but
    // six comes from that node's download cache, not from PyPI.
    cluster.restart_node(built_on).await.unwrap();
    wait_nodes(&client, 2, 2).await;
    cluster.stop_node(other).await.unwrap();
    let client = cluster.node(built_on).client();
    wait_nodes(&client, 1, 1).await;
    let third = six_app("deps-c", "six==1.16.0\n# one more line, another key\n");
    let (accepted, events) = deploy(&client, "deps-c", third.path()).await;
    let accepted = accepted.unwrap_or_else(|err| panic!("{err}\n{}", lines_of(&events)));
    let output = lines_of(&events);
    assert_eq!(
        accepted.build.as_ref().unwrap().cache,
        proto::build::CacheUse::Miss
    );
    assert!(
        output.contains("File was already downloaded /stratus/cache/wheels/six-1.16.0"),
        "{output}"
    );
    cluster.shutdown().await.unwrap();
    drop_sandboxes(sandboxes).await;
    println!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}
