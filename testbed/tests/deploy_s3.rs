//! The same deploy with bundles kept in S3: a real S3-protocol server (s3s-fs, started by
//! scripts/start-s3.sh) instead of copies on the nodes.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;
use std::time::Duration;

use node::bundle::{S3Config, S3Store};
use proto::{ContainerHealth, ContainerState};
use testbed::harness::{LocalCluster, ensure_image, remove_containers_of, repo_root};

const ENDPOINT: &str = "http://127.0.0.1:19000";
const ACCESS_KEY: &str = "stratus-test";
const SECRET_KEY: &str = "stratus-test-secret";

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_of("hello-s3");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_with_the_s3_store_keeps_the_bundle_in_the_bucket() {
    ensure_image().unwrap();
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/start-s3.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot start the S3 server");
    let _cleanup = Cleanup;
    remove_containers_of("hello-s3");
    let bucket = format!("e2e-{}", std::process::id());
    let flags: Vec<String> = [
        "--store",
        &format!("s3://{bucket}"),
        "--s3-endpoint",
        ENDPOINT,
        "--s3-access-key",
        ACCESS_KEY,
        "--s3-secret-key",
        SECRET_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cluster = LocalCluster::start_with(27, 3, flags).unwrap();
    cluster
        .wait_for("3 live nodes", Duration::from_secs(60), || {
            cluster.converged()
        })
        .await
        .unwrap();

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("hello-s3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo_root().join("examples/hello/start.sh"),
        dir.join("start.sh"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(repo_root().join("examples/hello/stratus.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"hello-s3\"");
    std::fs::write(dir.join("stratus.toml"), manifest).unwrap();
    let zip = tempfile::NamedTempFile::new().unwrap();
    node::bundle::pack_dir(&dir, std::fs::File::create(zip.path()).unwrap()).unwrap();

    let client = cluster.agents[0].client();
    let accepted = client.deploy("hello-s3", zip.path(), |_| {}).await.unwrap();
    let s3 = S3Store::new(
        S3Config::from_url(&format!("s3://{bucket}"))
            .unwrap()
            .with_endpoint(ENDPOINT)
            .with_credentials(ACCESS_KEY, SECRET_KEY),
    )
    .unwrap();
    assert!(
        s3.has(&accepted.sha256).await.unwrap(),
        "the bundle is not in the bucket"
    );

    cluster
        .wait_for("2 healthy replicas", Duration::from_secs(90), || async {
            client.app("hello-s3").await.is_ok_and(|view| {
                view.replicas
                    .iter()
                    .filter(|r| {
                        r.state == ContainerState::Running && r.health == ContainerHealth::Healthy
                    })
                    .count()
                    == 2
            })
        })
        .await
        .unwrap();
    // Nodes other than the accepting one got the bundle from the bucket, not from a peer:
    // no PUT /v1/blobs reached them, so their store holds only what they fetched to run.
    client.destroy("hello-s3").await.unwrap();
}
