//! Config vars on agents in one process with a cluster key: `config set` makes one new
//! release whose replicas see the value, and the value shows nowhere else: not in
//! `stratus status` or `releases`, not in any log line the agents write (captured here at
//! debug level), and not in any file of their data folders.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use node::cluster::seal::ClusterKey;
use node::testsuite::{
    Step, bundle_for_test, cluster_for_test, healthy_replicas, hello_app_for_test,
    http_get_for_test, wait_for,
};
use proto::api::ConfigChange;
use rand::SeedableRng as _;

const SECRET: &str = "sekrit-7f3a9c1e-value";
const SETTLE: Duration = Duration::from_secs(90);

/// Every log line of the process, kept for the test to search.
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|window| window == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_makes_a_release_the_replicas_see_and_nothing_else_shows() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let key = ClusterKey::generate(&mut rand::rngs::StdRng::seed_from_u64(3));
    let mut cluster = cluster_for_test(0).await.unwrap();
    for _ in 0..2 {
        let key = key.clone();
        cluster
            .add_node_with(move |args| args.cluster_key = Some(vec![key]))
            .await
            .unwrap();
    }
    cluster.run(vec![Step::Converged]).await.unwrap();
    let client = cluster.node(0).client();
    let work = tempfile::tempdir().unwrap();
    let bundle =
        bundle_for_test(&hello_app_for_test(work.path(), "shop", 1, 0.1).unwrap()).unwrap();
    client.deploy("shop", bundle.path(), |_| {}).await.unwrap();

    let accepted = client
        .change_config(
            "shop",
            &ConfigChange {
                set: BTreeMap::from([
                    ("GREETING".to_string(), SECRET.to_string()),
                    ("OTHER".to_string(), "x".to_string()),
                ]),
                unset: Vec::new(),
            },
        )
        .await
        .unwrap();
    // Two keys, one release.
    assert_eq!(accepted.release, 2, "{}", accepted.message);
    assert!(!accepted.message.contains(SECRET));

    // The new release's replica gets the value as its environment (the hello app prints
    // $GREETING on its page).
    let other = cluster.node(1).client();
    wait_for(SETTLE, || async {
        let replicas = healthy_replicas(&other, "shop", 2).await;
        let Some(replica) = replicas.first() else {
            return Err("no healthy replica of release 2 yet".to_string());
        };
        let page = http_get_for_test(replica.addr)
            .await
            .map_err(|e| e.to_string())?;
        page.contains(SECRET)
            .then_some(())
            .ok_or(format!("the page does not show the value: {page}"))
    })
    .await
    .unwrap();

    // Hidden unless asked for; shown with --show.
    let hidden = other.config("shop", false).await.unwrap();
    assert_eq!(hidden.vars.get("GREETING"), Some(&None));
    let shown = other.config("shop", true).await.unwrap();
    assert_eq!(shown.vars["GREETING"].as_deref(), Some(SECRET));
    // A deploy keeps the vars.
    client.deploy("shop", bundle.path(), |_| {}).await.unwrap();
    assert_eq!(
        client.config("shop", true).await.unwrap().vars["OTHER"].as_deref(),
        Some("x")
    );
    // Bad keys and oversized values are refused with nothing changed.
    let bad = ConfigChange {
        set: BTreeMap::from([("BAD-KEY".to_string(), "1".to_string())]),
        unset: Vec::new(),
    };
    assert_eq!(
        client
            .change_config("shop", &bad)
            .await
            .unwrap_err()
            .status(),
        Some(400)
    );
    let huge = ConfigChange {
        set: BTreeMap::from([("HUGE".to_string(), "x".repeat(33 * 1024))]),
        unset: Vec::new(),
    };
    assert_eq!(
        client
            .change_config("shop", &huge)
            .await
            .unwrap_err()
            .status(),
        Some(413)
    );
    assert_eq!(client.app("shop").await.unwrap().releases, vec![1, 2, 3]);

    // Nowhere else: status, releases, logs, files.
    let status = serde_json::to_string(&client.app("shop").await.unwrap()).unwrap();
    assert!(!status.contains(SECRET), "{status}");
    let releases = serde_json::to_string(&client.releases("shop").await.unwrap()).unwrap();
    assert!(!releases.contains(SECRET), "{releases}");
    std::io::stdout().flush().unwrap();
    let captured = logs.0.lock().clone();
    assert!(
        !captured.is_empty(),
        "the agents logged nothing: the check would prove nothing"
    );
    assert!(
        !captured
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes()),
        "the value is in the agents' logs"
    );
    for index in 0..2 {
        let dir = cluster.node(index).data_dir().to_path_buf();
        // The catalog holds the app's releases; the value must be there only sealed.
        assert!(dir.join("catalog.redb").exists());
        assert_eq!(
            files_containing(&dir, SECRET.as_bytes()),
            Vec::<String>::new()
        );
    }
    cluster.shutdown().await.unwrap();
}
