//! Deploys on real agents and real Docker: `stratus deploy` sent to a node that runs no
//! workloads, replicas on two other nodes answering over HTTP, `stratus destroy`, and
//! every kind of bad input refused with nothing stored.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use proto::{ContainerHealth, ContainerState};
use testbed::harness::{API_TOKEN, LocalCluster, ensure_image, remove_containers_of, repo_root};
use tokio::sync::Mutex;

const CONVERGE: Duration = Duration::from_secs(60);

struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_of(self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_runs_replicas_on_two_other_nodes_and_destroy_removes_them() {
    ensure_image().unwrap();
    let _cleanup = Cleanup("hello");
    remove_containers_of("hello");
    let mut cluster = LocalCluster::start_with(21, 0, Vec::new()).unwrap();
    cluster
        .add_agent(None, vec!["--no-workloads".into()])
        .unwrap();
    cluster.add_agent(None, Vec::new()).unwrap();
    cluster.add_agent(None, Vec::new()).unwrap();
    cluster
        .wait_for("3 live nodes", CONVERGE, || cluster.converged())
        .await
        .unwrap();

    let entry = cluster.agents[0].api_addr().to_string();
    let output = Command::new(&cluster.bin)
        .args([
            "deploy",
            &repo_root().join("examples/hello").display().to_string(),
        ])
        .args([
            "--api",
            &entry,
            "--token",
            API_TOKEN,
            "--timeout-secs",
            "90",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "deploy failed:\n{stdout}\n{stderr}\n{}",
        cluster.logs_tail(20)
    );
    assert!(stdout.contains("Release 1 of hello is live"), "{stdout}");

    // The CLI's node saw both replicas healthy; another node hears it a gossip round later.
    let other = cluster.agents[1].client();
    node::testsuite::wait_for(Duration::from_secs(30), || async {
        let healthy = node::testsuite::healthy_replicas(&other, "hello", 1)
            .await
            .len();
        (healthy == 2)
            .then_some(())
            .ok_or(format!("node-1 sees {healthy} of 2 replicas healthy"))
    })
    .await
    .unwrap();
    let view = other.app("hello").await.unwrap();
    let replicas: Vec<_> = view.replicas.iter().filter(|r| r.release == 1).collect();
    assert_eq!(replicas.len(), 2, "{view:?}");
    assert_ne!(
        replicas[0].node_id, replicas[1].node_id,
        "replicas share a node"
    );
    for replica in &replicas {
        assert_ne!(
            replica.node_id, "node-1",
            "the no-workloads node runs a replica"
        );
        assert_eq!(
            (replica.state, replica.health),
            (ContainerState::Running, ContainerHealth::Healthy)
        );
        let body = reqwest_get(&format!("http://{}/", replica.addr)).await;
        assert!(
            body.contains(&format!(
                "replica {} on node {}",
                replica.replica, replica.node_id
            )),
            "{body}"
        );
    }

    // Logs of both replicas come through the node that runs none of them.
    let output = Command::new(&cluster.bin)
        .args(["logs", "hello", "--api", &entry, "--token", API_TOKEN])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stdout);
    for replica in &replicas {
        let line = format!(
            "[v1/{} {}] replica {} of hello serving",
            replica.replica, replica.node_id, replica.replica
        );
        assert!(logs.contains(&line), "missing {line:?} in:\n{logs}");
    }
    // Following: once `logs -f` is open, each new request shows up on it as it is served,
    // from either node, while the stream stays open.
    let mut follow = tokio::process::Command::new(&cluster.bin)
        .args([
            "logs", "hello", "-f", "--tail", "0", "--api", &entry, "--token", API_TOKEN,
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let followed = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = tokio::spawn({
        let followed = followed.clone();
        async move {
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
            while let Ok(Some(line)) = lines.next_line().await {
                followed.lock().await.push(line);
            }
        }
    });
    // 1. The stream is open once a request made after `logs -f` started shows up on it:
    //    keep making fresh ones until one does (no guess at how long opening takes).
    let mut probes = 0;
    cluster
        .wait_for(
            "a request to show up in `stratus logs -f`",
            CONVERGE,
            || {
                probes += 1;
                let (url, followed) = (
                    format!("http://{}/probe-{probes}", replicas[0].addr),
                    followed.clone(),
                );
                async move {
                    let _ = reqwest_get(&url).await;
                    followed
                        .lock()
                        .await
                        .iter()
                        .any(|line| line.contains("/probe-"))
                }
            },
        )
        .await
        .unwrap();
    // 2. New output on each node, made now, arrives on the same open stream.
    for replica in &replicas {
        let path = format!("/followed-{}-{}", replica.node_id, rand::random::<u32>());
        assert!(
            !followed
                .lock()
                .await
                .iter()
                .any(|line| line.contains(&path)),
            "{path} seen before it was requested"
        );
        let _ = reqwest_get(&format!("http://{}{path}", replica.addr)).await;
        cluster
            .wait_for(
                &format!("{path} in `stratus logs -f`"),
                CONVERGE,
                || async {
                    followed
                        .lock()
                        .await
                        .iter()
                        .any(|line| line.contains(&path))
                },
            )
            .await
            .unwrap();
        let seen = followed
            .lock()
            .await
            .iter()
            .find(|line| line.contains(&path))
            .cloned()
            .unwrap();
        assert!(
            seen.starts_with(&format!("[v1/{} {}]", replica.replica, replica.node_id)),
            "{seen}"
        );
    }
    assert!(
        follow.try_wait().unwrap().is_none(),
        "`stratus logs -f` ended instead of following"
    );
    // `--tail 0`: nothing from before the stream opened (the startup lines).
    let shown = followed.lock().await.clone();
    assert!(
        !shown.iter().any(|line| line.contains("of hello serving")),
        "--tail 0 showed old output: {shown:?}"
    );
    drop(follow);
    reader.abort();

    let output = Command::new(&cluster.bin)
        .args(["destroy", "hello", "--api", &entry, "--token", API_TOKEN])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster
        .wait_for("every hello container gone", CONVERGE, || async {
            let listed = Command::new("docker")
                .args(["ps", "-aq", "--filter", "label=stratus.app=hello"])
                .output()
                .unwrap();
            listed.stdout.is_empty()
        })
        .await
        .unwrap();
    let apps = cluster.agents[2].client().apps().await.unwrap();
    assert!(apps.apps.is_empty(), "{apps:?}");
}

async fn reqwest_get(url: &str) -> String {
    // The API client's HTTP stack is enough; no need for a second one.
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .await;
    match output {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(err) => format!("curl failed: {err}"),
    }
}

/// A zip built in memory with the given files.
fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut writer = zip::ZipWriter::new(&mut buffer);
        for (name, content) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(content.as_bytes()).unwrap();
        }
        writer.finish().unwrap();
    }
    buffer.into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deploys_are_refused_with_a_clear_error_and_store_nothing() {
    let cluster =
        LocalCluster::start_with(22, 1, vec!["--max-upload-bytes".into(), "100000".into()])
            .unwrap();
    cluster
        .wait_for("the agent", CONVERGE, || cluster.converged())
        .await
        .unwrap();
    let agent = &cluster.agents[0];
    let url = format!("http://{}/v1/apps/web/deploys", agent.api_addr());
    let good_manifest = "name = \"web\"\ncmd = \"run\"\n";
    let valid = zip_of(&[
        ("stratus.toml", good_manifest),
        ("index.html", &"x".repeat(4000)),
    ]);
    let truncated = valid[..valid.len() / 2].to_vec();
    let symlink = {
        let mut buffer = std::io::Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut buffer);
        writer
            .start_file("stratus.toml", zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(good_manifest.as_bytes()).unwrap();
        writer
            .add_symlink(
                "passwd",
                "/etc/passwd",
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
        writer.finish().unwrap();
        buffer.into_inner()
    };
    // 8 MiB of zeros deflate to a few KiB: a ratio far beyond any real file.
    let bomb = {
        let mut buffer = std::io::Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut buffer);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("stratus.toml", options).unwrap();
        writer.write_all(good_manifest.as_bytes()).unwrap();
        writer.start_file("zeros.bin", options).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..8 {
            writer.write_all(&zeros).unwrap();
        }
        writer.finish().unwrap();
        buffer.into_inner()
    };
    // (what, token, body, expected status, word the error must contain)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no token",
            None,
            zip_of(&[("stratus.toml", good_manifest)]),
            401,
            "token",
        ),
        (
            "wrong token",
            Some("nope"),
            zip_of(&[("stratus.toml", good_manifest)]),
            401,
            "token",
        ),
        (
            "not a zip",
            Some(API_TOKEN),
            b"hello, not a zip".to_vec(),
            422,
            "not a zip",
        ),
        ("truncated", Some(API_TOKEN), truncated, 422, "zip"),
        ("symlink", Some(API_TOKEN), symlink, 422, "symbolic link"),
        ("zip bomb", Some(API_TOKEN), bomb, 422, "zip bomb"),
        (
            "traversal",
            Some(API_TOKEN),
            zip_of(&[("stratus.toml", good_manifest), ("../evil", "x")]),
            422,
            "evil",
        ),
        (
            "absolute path",
            Some(API_TOKEN),
            zip_of(&[("stratus.toml", good_manifest), ("/etc/evil", "x")]),
            422,
            "evil",
        ),
        (
            "no manifest",
            Some(API_TOKEN),
            zip_of(&[("index.html", "hi")]),
            422,
            "stratus.toml",
        ),
        (
            "bad manifest",
            Some(API_TOKEN),
            zip_of(&[("stratus.toml", "name = \"web\"\nreplicas = -1\ncmd = \"x\"")]),
            422,
            "replicas",
        ),
        (
            "name mismatch",
            Some(API_TOKEN),
            zip_of(&[("stratus.toml", "name = \"other\"\ncmd = \"x\"")]),
            400,
            "other",
        ),
        (
            "oversize",
            Some(API_TOKEN),
            vec![0u8; 200_000],
            413,
            "limit",
        ),
    ];
    for (what, token, body, status, needle) in cases {
        let mut request = Command::new("curl");
        request.args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            "@-",
            &url,
        ]);
        if let Some(token) = token {
            request.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let mut child = request
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, status.to_string(), "{what}: {body}");
        let error: proto::api::ErrorBody =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
        assert!(
            error.detail.contains(needle),
            "{what}: {:?} does not mention {needle:?}",
            error.detail
        );
    }
    // Nothing was recorded or stored.
    assert!(agent.client().apps().await.unwrap().apps.is_empty());
    let unknown = agent.client().app("web").await.unwrap_err();
    assert_eq!(unknown.status(), Some(404));
    let blobs = cluster.data_root().join(&agent.node_id).join("blobs");
    let stored = walk_files(&blobs);
    assert!(stored.is_empty(), "blobs left behind: {stored:?}");
    let uploads = walk_files(&cluster.data_root().join(&agent.node_id).join("uploads"));
    assert!(uploads.is_empty(), "uploads left behind: {uploads:?}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk_files(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}
