//! Agents serving their API over TLS (`--api-tls-cert`, `--api-tls-key`), with a CA of the
//! test's (`--api-tls-ca`): the CLI deploys over https with `--ca-cert` and is refused
//! without it, and the agents' own calls to each other (bundle copies, placements) go over
//! https too, each signed. On agents in one process (`node::testsuite`).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::time::Duration;

use node::testsuite::{
    Step, USER_TOKEN, bundle_for_test, cluster_for_test, healthy_replicas, hello_app_for_test,
    wait_for,
};

/// Writes a CA and a certificate it signed for 127.0.0.1 (with its key) into `dir`:
/// (ca.pem, cert.pem, key.pem).
fn write_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stratus test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// `stratus deploy DIR --api URL` with the user token and `extra` flags; (success, stderr).
async fn cli_deploy(dir: &Path, api: &str, extra: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stratus"))
        .arg("deploy")
        .arg(dir)
        .args(["--api", api, "--token", USER_TOKEN])
        .args(["--timeout-secs", "60"])
        .args(extra)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_over_tls_deploy_and_call_each_other_over_it() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_pki(pki.path());
    let mut cluster = cluster_for_test(0).await.unwrap();
    for _ in 0..2 {
        cluster
            .add_node_with(|args| {
                args.api_tls_cert = Some(cert.clone());
                args.api_tls_key = Some(key.clone());
                args.api_tls_ca = Some(ca.clone());
            })
            .await
            .unwrap();
    }
    cluster.run(vec![Step::Converged]).await.unwrap();
    let api = format!("https://{}", cluster.node(0).api_addr);
    let work = tempfile::tempdir().unwrap();

    // Without the CA, the CLI refuses the agent's certificate and says where it called.
    let app = hello_app_for_test(work.path(), "refused", 1, 0.1).unwrap();
    let (ok, stderr) = cli_deploy(&app, &api, &[]).await;
    assert!(!ok, "deployed without trusting the agent's CA");
    assert!(stderr.contains(&api), "{stderr}");
    // Plain HTTP to the TLS port gets nowhere either.
    let plain = api::Client::new(&format!("http://{}", cluster.node(0).api_addr)).unwrap();
    assert!(plain.health().await.is_err());

    // With it: the CLI's deploy path over https.
    let app = hello_app_for_test(work.path(), "cli", 1, 0.1).unwrap();
    let ca_flag = ca.display().to_string();
    let (ok, stderr) = cli_deploy(&app, &api, &["--ca-cert", &ca_flag]).await;
    assert!(ok, "{stderr}");

    // Three replicas of 0.9 core on two nodes of two cores: node 0 must copy the bundle to
    // node 1 and place a replica there, over https and signed.
    let client = cluster.node(0).client();
    let dir = hello_app_for_test(work.path(), "spread", 3, 0.9).unwrap();
    let bundle = bundle_for_test(&dir).unwrap();
    let accepted = client
        .deploy("spread", bundle.path(), |_| {})
        .await
        .unwrap();
    assert!(
        accepted.holders.len() >= 2,
        "the bundle reached no peer: {:?}",
        accepted.holders
    );
    let other = cluster.node(1).client();
    wait_for(Duration::from_secs(90), || async {
        let healthy = healthy_replicas(&other, "spread", accepted.release).await;
        let nodes: std::collections::BTreeSet<_> = healthy
            .iter()
            .map(|replica| replica.node_id.clone())
            .collect();
        (healthy.len() == 3 && nodes.len() == 2)
            .then_some(())
            .ok_or(format!("{} healthy on {nodes:?}", healthy.len()))
    })
    .await
    .unwrap();
    cluster.shutdown().await.unwrap();
}
