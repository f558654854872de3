//! Public traffic through the ingress embedded in an agent: routes follow deploys and
//! destroys through gossip, with no reload.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;
use std::time::Duration;

use testbed::harness::{LocalCluster, ensure_image, remove_containers_of, repo_root};

const INGRESS: &str = "127.0.31.2:18080";

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_of("hello");
    }
}

/// (status, body) of a GET through the ingress with `host`.
fn get(host: &str) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args([
            "-H",
            &format!("Host: {host}"),
            &format!("http://{INGRESS}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_answers_through_the_ingress_and_goes_away_with_destroy() {
    ensure_image().unwrap();
    remove_containers_of("hello");
    let _cleanup = Cleanup;
    let mut cluster = LocalCluster::start_with(31, 0, Vec::new()).unwrap();
    cluster
        .add_agent(None, vec!["--ingress-addr".into(), INGRESS.into()])
        .unwrap();
    cluster.add_agent(None, Vec::new()).unwrap();
    cluster
        .wait_for("2 live nodes", Duration::from_secs(60), || {
            cluster.converged()
        })
        .await
        .unwrap();
    assert_eq!(
        get("hello.localhost").0,
        "404",
        "an unknown app must be a 404"
    );

    let zip = tempfile::NamedTempFile::new().unwrap();
    node::bundle::pack_dir(
        &repo_root().join("examples/hello"),
        std::fs::File::create(zip.path()).unwrap(),
    )
    .unwrap();
    let client = cluster.agents[1].client();
    client.deploy("hello", zip.path(), |_| {}).await.unwrap();
    let took = cluster
        .wait_for(
            "hello answering through the ingress",
            Duration::from_secs(90),
            || async {
                let (code, body) = get("hello.localhost");
                code == "200" && body.contains("hello from hello")
            },
        )
        .await
        .unwrap();
    println!(
        "answering through the ingress {:.1} s after the ack",
        took.as_secs_f64()
    );
    // Both replicas take traffic.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (_, body) = get("HELLO.localhost:18080");
        if let Some(replica) = body.split("replica ").nth(1) {
            seen.insert(replica.chars().next().unwrap_or('?'));
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "traffic did not reach both replicas: {seen:?}"
    );
    assert_eq!(get("nope.localhost").0, "404");

    client.destroy("hello").await.unwrap();
    cluster
        .wait_for(
            "hello gone from the ingress",
            Duration::from_secs(60),
            || async { get("hello.localhost").0 == "404" },
        )
        .await
        .unwrap();
}
