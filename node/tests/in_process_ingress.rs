//! Public traffic through an ingress fed from one in-process agent's routes (moved from
//! `testbed/tests/ingress.rs`): routes follow deploys and destroys through gossip, with no
//! reload. The ingress is the real Pingora one, built here from the agent's route feed as
//! the binary's `embedded_ingress.rs` builds it (the `node` library never imports
//! `ingress`); the replicas are process-runtime replicas of `examples/hello`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use node::testsuite::{
    Step, bundle_for_test, cluster_for_test, examples_dir, healthy_replicas, wait_for,
};
use proto::routes::RouteFeed;
use tokio::sync::watch;

/// A loopback address of this test's own (no other test uses 127.0.131.x), so the ingress
/// binds a fixed port without racing anyone for it.
const INGRESS: &str = "127.0.131.2:18080";

/// Starts the ingress on [`INGRESS`] and the task that turns each route feed into its
/// route table; returns the ingress and its routes.
fn start_ingress(
    mut feed: watch::Receiver<Option<RouteFeed>>,
) -> (ingress::IngressHandle, Arc<ingress::RouteState>) {
    let routes = Arc::new(ingress::RouteState::new(Default::default()));
    let listen: SocketAddr = INGRESS.parse().unwrap();
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
        let routes = table_routes;
        while feed.changed().await.is_ok() {
            let Some(feed) = feed.borrow_and_update().clone() else {
                continue;
            };
            routes
                .update(ingress::RouteTable::from_feed("localhost", &feed))
                .await;
        }
    });
    (handle, routes)
}

/// (status, body) of a GET through the ingress with `host`; status "" when the ingress
/// did not answer within 5 s.
async fn get(host: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(INGRESS).await?;
        stream
            .write_all(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), request).await else {
        return (String::new(), String::new());
    };
    let code = answer
        .lines()
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_answers_through_the_ingress_and_goes_away_with_destroy() {
    let mut cluster = cluster_for_test(0).await.unwrap();
    let (_, feed) = cluster.add_node_with_routes(|_| {}).await.unwrap();
    cluster.add_node().await.unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    let (ingress, routes) = start_ingress(feed);
    // Pingora binds on its own threads: wait until it answers at all.
    wait_for(Duration::from_secs(30), || async {
        let (code, _) = get("hello.localhost").await;
        (!code.is_empty())
            .then_some(())
            .ok_or("the ingress does not answer".to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        get("hello.localhost").await.0,
        "404",
        "an unknown app must be a 404"
    );

    let bundle = bundle_for_test(&examples_dir().join("hello")).unwrap();
    let client = cluster.node(1).client();
    let accepted = client.deploy("hello", bundle.path(), |_| {}).await.unwrap();
    wait_for(Duration::from_secs(90), || async {
        let (code, body) = get("hello.localhost").await;
        (code == "200" && body.contains("hello from hello"))
            .then_some(())
            .ok_or(format!("{code} {body}"))
    })
    .await
    .unwrap();
    // Both replicas take traffic, once the ingress member sees both healthy and its route
    // table has both: gossip takes a round or two to bring the other node's replica into
    // the route feed, and 40 requests in process take milliseconds, not curl's seconds.
    let witness = cluster.node(0).client();
    wait_for(Duration::from_secs(90), || async {
        let healthy = healthy_replicas(&witness, "hello", accepted.release)
            .await
            .len();
        (healthy == 2).then_some(()).ok_or(format!(
            "the ingress member sees {healthy} of 2 replicas healthy"
        ))
    })
    .await
    .unwrap();
    wait_for(Duration::from_secs(90), || async {
        let backends = routes.table().backends("hello").map_or(0, <[_]>::len);
        (backends == 2)
            .then_some(())
            .ok_or(format!("the ingress routes hello to {backends} backends"))
    })
    .await
    .unwrap();
    // 40 requests, 5 at a time: the default balancer (power of two choices by
    // `(outstanding + 1) x latency`) sends sequential requests to the faster replica until
    // the other's estimate decays, which curl's pace left time for and this one does not;
    // requests in flight together are what spreads traffic.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let answers =
            futures_util::future::join_all((0..5).map(|_| get("HELLO.localhost:18080"))).await;
        for (_, body) in answers {
            if let Some(replica) = body.split("replica ").nth(1) {
                seen.insert(replica.chars().next().unwrap_or('?'));
            }
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "traffic did not reach both replicas: {seen:?}"
    );
    assert_eq!(get("nope.localhost").await.0, "404");

    client.destroy("hello").await.unwrap();
    wait_for(Duration::from_secs(60), || async {
        let (code, _) = get("hello.localhost").await;
        (code == "404").then_some(()).ok_or(format!("still {code}"))
    })
    .await
    .unwrap();
    ingress.stop(ingress::server::Stop::Fast);
    cluster.shutdown().await.unwrap();
}
