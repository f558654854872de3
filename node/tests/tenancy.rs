//! Tenants on agents in one process (`node::testsuite`): two tenants deploying apps, every
//! cross-tenant attempt failing with nothing changed, roles, revocation reaching all five
//! nodes (timed, printed), expiry, and quotas held against concurrent deploys from three nodes.
//!
//! What needs Docker (tenant networks, gVisor) is in the runtime tests.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use api::{Client, ClientError};
use node::testsuite::{
    Step, TestCluster, bundle_for_test, cluster_for_test, hello_app_for_test, wait_for,
};
use proto::api::{CreateTenantRequest, CreateTokenRequest};
use proto::tenancy::{Quota, Role};

const SETTLE: Duration = Duration::from_secs(60);

async fn converged_cluster(count: usize) -> TestCluster {
    let mut cluster = cluster_for_test(count).await.unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    cluster
}

fn client_with(cluster: &TestCluster, node: usize, token: &str) -> Client {
    Client::new(&format!("http://{}", cluster.node(node).api_addr))
        .unwrap()
        .with_token(Some(token.to_string()))
}

async fn tenant(admin: &Client, name: &str, quota: Quota) {
    admin
        .create_tenant(&CreateTenantRequest {
            name: name.into(),
            isolation: Default::default(),
            quota,
        })
        .await
        .unwrap();
}

async fn token(admin: &Client, tenant: &str, role: Role, expires_in_secs: Option<u64>) -> String {
    let created = admin
        .create_token(&CreateTokenRequest {
            tenant: tenant.into(),
            role,
            name: Some(format!("{tenant}-{role}")),
            expires_in_secs,
        })
        .await
        .unwrap();
    assert!(created.token.starts_with("stratus_"), "{}", created.token);
    created.token
}

/// A hello app named `name` with one replica and, optionally, a domain.
fn app_bundle(work: &std::path::Path, name: &str, domain: Option<&str>) -> tempfile::NamedTempFile {
    let dir = hello_app_for_test(work, name, 1, 0.1).unwrap();
    if let Some(domain) = domain {
        let manifest = dir.join("stratus.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("domains = [\"{domain}\"]\n{text}")).unwrap();
    }
    bundle_for_test(&dir).unwrap()
}

fn status_and_code(err: &ClientError) -> (u16, String) {
    match err {
        ClientError::Api { status, error, .. } => (*status, error.clone()),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_and_change_only_their_own_apps() {
    let cluster = converged_cluster(3).await;
    let admin = cluster.node(0).client();
    tenant(&admin, "acme", Quota::default()).await;
    tenant(&admin, "globex", Quota::default()).await;
    let acme = client_with(
        &cluster,
        1,
        &token(&admin, "acme", Role::Deploy, None).await,
    );
    let acme_reader = client_with(&cluster, 2, &token(&admin, "acme", Role::Read, None).await);
    let globex_token = token(&admin, "globex", Role::Admin, None).await;
    let globex = client_with(&cluster, 2, &globex_token);

    let work = tempfile::tempdir().unwrap();
    let shop = app_bundle(work.path(), "shop", Some("shop.example.com"));
    acme.deploy("shop", shop.path(), |_| {}).await.unwrap();
    let rival = app_bundle(work.path(), "rival", None);
    globex.deploy("rival", rival.path(), |_| {}).await.unwrap();

    let who = globex.whoami().await.unwrap();
    assert_eq!(
        (who.tenant.as_deref(), who.role),
        (Some("globex"), Role::Admin)
    );
    assert!(admin.whoami().await.unwrap().admin);

    // Lists: each tenant sees its own app; the administrator sees both.
    let names = |apps: proto::api::AppsResponse| -> Vec<String> {
        apps.apps.into_iter().map(|app| app.name).collect()
    };
    assert_eq!(names(acme.apps().await.unwrap()), vec!["shop"]);
    assert_eq!(names(globex.apps().await.unwrap()), vec!["rival"]);
    assert_eq!(names(admin.apps().await.unwrap()), vec!["rival", "shop"]);

    // Another tenant's app answers exactly as an absent one.
    let absent = globex.app("nothing-here").await.unwrap_err();
    let foreign = globex.app("shop").await.unwrap_err();
    assert_eq!(status_and_code(&absent), (404, "unknown_app".into()));
    assert_eq!(status_and_code(&foreign), status_and_code(&absent));
    assert_eq!(
        foreign.detail().unwrap().replace("shop", "X"),
        absent.detail().unwrap().replace("nothing-here", "X")
    );
    let before = admin.app("shop").await.unwrap();
    let attempts: Vec<(&str, Result<(), ClientError>)> = vec![
        ("status", globex.app("shop").await.map(drop)),
        ("releases", globex.releases("shop").await.map(drop)),
        ("builds", globex.builds("shop").await.map(drop)),
        ("logs", globex.logs("shop", false, 10).await.map(drop)),
        ("scale", globex.scale("shop", 3).await.map(drop)),
        ("restart", globex.restart("shop").await.map(drop)),
        ("rollback", globex.rollback("shop", Some(1)).await.map(drop)),
        ("destroy", globex.destroy("shop").await.map(drop)),
    ];
    for (what, result) in attempts {
        let err = result
            .err()
            .unwrap_or_else(|| panic!("{what} of another tenant's app passed"));
        assert_eq!(status_and_code(&err).0, 404, "{what}: {err}");
    }
    // A deploy over the name, and a claim of its domain, are refused.
    let over = app_bundle(work.path(), "shop", None);
    let err = globex
        .deploy("shop", over.path(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&err).0, 409, "{err}");
    assert!(err.to_string().contains("taken"), "{err}");
    let claim = app_bundle(work.path(), "grab", Some("shop.example.com"));
    let err = globex
        .deploy("grab", claim.path(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&err).0, 409, "{err}");
    assert!(err.to_string().contains("another tenant's app"), "{err}");
    assert!(
        !err.to_string().contains("shop "),
        "the owner is named: {err}"
    );
    // Nothing changed.
    let after = admin.app("shop").await.unwrap();
    assert_eq!(after.replicas_desired, before.replicas_desired);
    assert_eq!(after.releases, before.releases);
    assert!(admin.app("grab").await.is_err());

    // Roles: a reader reads but does not change; nobody but the administrator makes tenants.
    acme_reader.app("shop").await.unwrap();
    let err = acme_reader.scale("shop", 2).await.unwrap_err();
    assert_eq!(status_and_code(&err), (403, "forbidden".into()));
    assert!(err.to_string().contains("deploy role"), "{err}");
    let err = globex
        .create_tenant(&CreateTenantRequest {
            name: "mine".into(),
            isolation: Default::default(),
            quota: Quota::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&err).0, 403);
    // A tenant admin makes tokens for its own tenant only.
    let err = globex
        .create_token(&CreateTokenRequest {
            tenant: "acme".into(),
            role: Role::Admin,
            name: None,
            expires_in_secs: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&err).0, 404, "{err}");
    let listed = globex.tokens(None).await.unwrap().tokens;
    assert!(listed.iter().all(|token| token.tenant == "globex"));

    // The audit log: each call recorded on the node that served it (globex called node 2,
    // acme node 1), gathered from node 0; a tenant's admin sees only its own tenant's.
    let audit = admin
        .gather_audit(&api::AuditQuery::default())
        .await
        .unwrap();
    assert!(audit.unreachable.is_empty(), "{:?}", audit.unreachable);
    let refused_scale = audit
        .records
        .iter()
        .find(|r| {
            r.action == "POST /v1/apps/{app}/scale"
                && r.target == "/v1/apps/shop/scale"
                && r.tenant.as_deref() == Some("globex")
        })
        .expect("globex's refused scale is audited");
    assert_eq!(refused_scale.status, 404);
    assert_eq!(refused_scale.node, "node-2");
    assert_eq!(refused_scale.token_name.as_deref(), Some("globex-admin"));
    assert!(
        refused_scale.source.starts_with("127.0.0.1:"),
        "{}",
        refused_scale.source
    );
    let deployed = audit
        .records
        .iter()
        .find(|r| r.target == "/v1/apps/shop/deploys" && r.status == 202)
        .expect("acme's deploy is audited");
    assert_eq!(
        (deployed.node.as_str(), deployed.tenant.as_deref()),
        ("node-1", Some("acme"))
    );
    assert!(
        audit
            .records
            .iter()
            .any(|r| r.action == "POST /v1/tenants" && r.token_id == "admin")
    );
    let own = globex
        .gather_audit(&api::AuditQuery::default())
        .await
        .unwrap();
    assert!(!own.records.is_empty());
    assert!(
        own.records
            .iter()
            .all(|r| r.tenant.as_deref() == Some("globex"))
    );
    let err = acme
        .gather_audit(&api::AuditQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "a deploy token reads no audit log");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_on_every_node_and_an_expired_one_too() {
    // Five nodes: a token has three keepers, so two nodes learn of the revocation only
    // through gossip.
    let cluster = converged_cluster(5).await;
    let admin = cluster.node(0).client();
    tenant(&admin, "acme", Quota::default()).await;
    let secret = token(&admin, "acme", Role::Read, None).await;
    for node in 0..5 {
        let client = client_with(&cluster, node, &secret);
        wait_for(SETTLE, || async {
            client.apps().await.map(drop).map_err(|e| e.to_string())
        })
        .await
        .unwrap();
    }
    let id = secret.split('_').nth(1).unwrap().to_string();
    let started = tokio::time::Instant::now();
    admin.revoke_token(&id).await.unwrap();
    let mut refused_after = Vec::new();
    for node in 0..5 {
        let client = client_with(&cluster, node, &secret);
        wait_for(SETTLE, || async {
            match client.apps().await {
                Err(err) if err.status() == Some(401) => Ok(()),
                other => Err(format!("node {node} still answers {:?}", other.map(drop))),
            }
        })
        .await
        .unwrap();
        refused_after.push(started.elapsed());
    }
    // The figure, for the README: how long a revocation takes to reach every node.
    eprintln!("revocation refused on every node after {refused_after:?}");
    let err = client_with(&cluster, 2, &secret).apps().await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");

    let brief = token(&admin, "acme", Role::Read, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let err = client_with(&cluster, 1, &brief).apps().await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("expired"), "{err}");

    // A deleted tenant's tokens stop working too.
    let other = token(&admin, "acme", Role::Deploy, None).await;
    admin.delete_tenant("acme").await.unwrap();
    let err = client_with(&cluster, 0, &other).apps().await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    // A forged secret with a real id is refused like an unknown token.
    let forged = format!("stratus_{id}_{}", "0".repeat(64));
    assert_eq!(
        client_with(&cluster, 0, &forged)
            .apps()
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_against_concurrent_deploys_from_three_nodes() {
    let cluster = converged_cluster(3).await;
    let admin = cluster.node(0).client();
    tenant(
        &admin,
        "acme",
        Quota {
            replicas: Some(2),
            ..Quota::default()
        },
    )
    .await;
    let secret = token(&admin, "acme", Role::Deploy, None).await;
    let work = tempfile::tempdir().unwrap();
    let apps = ["one", "two", "three"];
    let bundles: Vec<_> = apps
        .iter()
        .map(|app| app_bundle(work.path(), app, None))
        .collect();
    let mut deploys = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let client = client_with(&cluster, index, &secret);
        let path = bundles[index].path().to_path_buf();
        let app = app.to_string();
        deploys.push(tokio::spawn(async move {
            client.deploy(&app, &path, |_| {}).await
        }));
    }
    let mut accepted = 0;
    let mut refusals = Vec::new();
    for deploy in deploys {
        match deploy.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(err) => refusals.push(err),
        }
    }
    assert_eq!(accepted, 2, "refusals: {refusals:?}");
    let [refusal] = refusals.as_slice() else {
        panic!("{refusals:?}")
    };
    assert_eq!(status_and_code(refusal), (409, "quota_exceeded".into()));
    let text = refusal.to_string();
    assert!(
        text.contains("replicas used 2, this change asks 1, the limit is 2"),
        "{text}"
    );
    // Scaling past it is refused with the numbers too; scaling within it is not.
    let client = client_with(&cluster, 1, &secret);
    let deployed = client.apps().await.unwrap().apps;
    let first = &deployed[0].name;
    let err = client.scale(first, 2).await.unwrap_err();
    assert_eq!(status_and_code(&err).1, "quota_exceeded");
    client.scale(first, 0).await.unwrap();
    client.scale(first, 1).await.unwrap();
    let tenants = admin.tenants().await.unwrap().tenants;
    assert_eq!(tenants[0].used.replicas, 2);
    cluster.shutdown().await.unwrap();
}

/// The quota keeper grants only while it sees a majority: a node cut off from the others
/// is its own keeper, and refuses (503, saying why) instead of counting alone; the
/// majority side still deploys within the quota; after the heal the cut-off node deploys
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_partition_only_the_majority_side_passes_quota_checks() {
    let mut cluster = converged_cluster(3).await;
    let admin = cluster.node(0).client();
    tenant(
        &admin,
        "acme",
        Quota {
            replicas: Some(5),
            ..Quota::default()
        },
    )
    .await;
    let secret = token(&admin, "acme", Role::Deploy, None).await;
    cluster
        .run(vec![
            Step::Isolate(2),
            Step::ExpectLive {
                by: vec![2],
                live: vec![2],
            },
            Step::ExpectLive {
                by: vec![0, 1],
                live: vec![0, 1],
            },
        ])
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let alone = app_bundle(work.path(), "alone", None);
    let err = client_with(&cluster, 2, &secret)
        .deploy("alone", alone.path(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(err.to_string().contains("majority"), "{err}");
    let majority = app_bundle(work.path(), "majority", None);
    client_with(&cluster, 0, &secret)
        .deploy("majority", majority.path(), |_| {})
        .await
        .unwrap();
    cluster
        .run(vec![Step::Rejoin(2), Step::Converged])
        .await
        .unwrap();
    client_with(&cluster, 2, &secret)
        .deploy("alone", alone.path(), |_| {})
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}
