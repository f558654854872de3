//! The ingress in front of real agents and real Docker containers: an app that never
//! becomes healthy gets the 503 page with `Retry-After`; a replica that starts failing is
//! ejected by its circuit breaker while the other one serves, and readmitted once it
//! recovers, as `/metrics` on the ingress's admin port shows.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testbed::harness::{LocalCluster, ensure_image, remove_containers_of};

struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_of(self.0);
    }
}

/// (status, headers and body) of `curl -i` through `ingress` with `host` for `path`.
fn get(ingress: &str, host: &str, path: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "5",
            "-H",
            &format!("Host: {host}"),
        ])
        .arg(format!("http://{ingress}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// `count` GETs of `path` sent at once through `ingress` with `host`: (status, answer) of
/// each. Concurrency is what spreads requests over replicas: with one request at a time,
/// the balancer keeps picking whichever replica measured fastest.
async fn burst(ingress: &str, host: &str, path: &str, count: usize) -> Vec<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..count {
        let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let ingress = ingress.to_string();
        requests.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&ingress).await.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut raw = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
                .await
                .ok()?
                .ok()?;
            let text = String::from_utf8_lossy(&raw).into_owned();
            let status = text.split(' ').nth(1)?.parse().ok()?;
            Some((status, text))
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = requests.join_next().await {
        answers.push(answer.unwrap().unwrap_or((0, String::new())));
    }
    answers
}

/// The ingress's metrics in the Prometheus text format.
fn metrics(admin: &str) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{admin}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of the sample `line` (metric name and labels exactly), 0 when absent.
fn sample(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Writes an app folder: busybox httpd serving `index.html` and `cgi-bin/status`, which
/// answers 500 while `/tmp/fail` exists in the container and 200 otherwise.
fn write_app(dir: &Path, name: &str, replicas: u32, health_path: &str) {
    std::fs::write(
        dir.join("stratus.toml"),
        format!(
            "name = \"{name}\"\ncmd = \"sh start.sh\"\nreplicas = {replicas}\n\
             [resources]\ncpu = 0.1\nmemory = \"32MiB\"\n\
             [health]\npath = \"{health_path}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("start.sh"),
        r#"#!/bin/sh
set -eu
www="${TMPDIR:-/tmp}/www-$$"
mkdir -p "$www/cgi-bin"
echo "$STRATUS_APP replica $STRATUS_REPLICA" > "$www/index.html"
cat > "$www/cgi-bin/status" <<EOF
#!/bin/sh
if [ -e /tmp/fail ]; then
  printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nfailing replica $STRATUS_REPLICA\n'
else
  printf 'Content-Type: text/plain\r\n\r\nok replica $STRATUS_REPLICA\n'
fi
EOF
chmod +x "$www/cgi-bin/status"
exec busybox httpd -f -vv -p "$PORT" -h "$www"
"#,
    )
    .unwrap();
}

async fn deploy(cluster: &LocalCluster, dir: &Path, name: &str) {
    let zip = tempfile::NamedTempFile::new().unwrap();
    node::bundle::pack_dir(dir, std::fs::File::create(zip.path()).unwrap()).unwrap();
    cluster.agents[1]
        .client()
        .deploy(name, zip.path(), |_| {})
        .await
        .unwrap();
}

/// Container ids of `app`'s replicas.
fn containers_of(app: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=stratus.app={app}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn docker_exec(container: &str, command: &[&str]) {
    let status = Command::new("docker")
        .args(["exec", container])
        .args(command)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "docker exec {container} {command:?} failed"
    );
}

/// A cluster of two agents on `127.0.<net>.x`, the first with the ingress (and its admin
/// port), both running workloads.
async fn cluster(net: u8, ingress: &str, admin: &str) -> LocalCluster {
    let mut cluster = LocalCluster::start_with(net, 0, Vec::new()).unwrap();
    cluster
        .add_agent(
            None,
            vec![
                "--ingress-addr".into(),
                ingress.into(),
                "--ingress-admin-addr".into(),
                admin.into(),
            ],
        )
        .unwrap();
    cluster.add_agent(None, Vec::new()).unwrap();
    cluster
        .wait_for("2 live nodes", Duration::from_secs(60), || {
            cluster.converged()
        })
        .await
        .unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_with_no_healthy_replica_gets_the_503_page_with_retry_after() {
    const INGRESS: &str = "127.0.34.2:18080";
    const ADMIN: &str = "127.0.34.2:18090";
    ensure_image().unwrap();
    remove_containers_of("sickly");
    let _cleanup = Cleanup("sickly");
    let cluster = cluster(34, INGRESS, ADMIN).await;
    assert_eq!(get(INGRESS, "sickly.localhost", "/").0, 404);

    // Its health check asks for a page that does not exist: never healthy.
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), "sickly", 1, "/no-such-page");
    deploy(&cluster, dir.path(), "sickly").await;
    cluster
        .wait_for(
            "the 503 page for sickly",
            Duration::from_secs(90),
            || async { get(INGRESS, "sickly.localhost", "/").0 == 503 },
        )
        .await
        .unwrap();
    let (_, answer) = get(INGRESS, "sickly.localhost", "/");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 5"), "{answer}");
    assert!(answer.contains("Service unavailable"), "{answer}");
    // Its replica runs (the health check reaches it and gets a 404), yet gets no traffic.
    cluster
        .wait_for(
            "sickly's replica running",
            Duration::from_secs(60),
            || async { !containers_of("sickly").is_empty() },
        )
        .await
        .unwrap();
    assert_eq!(get(INGRESS, "sickly.localhost", "/").0, 503);
    let text = metrics(ADMIN);
    assert!(
        sample(
            &text,
            "stratus_ingress_requests_total{app=\"sickly\",class=\"5xx\"}"
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(sample(&text, "stratus_ingress_route_apps"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "stratus_ingress_route_backends"),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_replica_is_ejected_by_its_breaker_and_readmitted_after_it_recovers() {
    const INGRESS: &str = "127.0.35.2:18080";
    const ADMIN: &str = "127.0.35.2:18090";
    const OPENED: &str =
        "stratus_ingress_breaker_transitions_total{app=\"flaky\",from=\"closed\",to=\"open\"}";
    const CLOSED: &str =
        "stratus_ingress_breaker_transitions_total{app=\"flaky\",from=\"half_open\",to=\"closed\"}";
    ensure_image().unwrap();
    remove_containers_of("flaky");
    let _cleanup = Cleanup("flaky");
    let cluster = cluster(35, INGRESS, ADMIN).await;
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), "flaky", 2, "/");
    deploy(&cluster, dir.path(), "flaky").await;

    // Both replicas answer through the ingress.
    let mut seen = std::collections::BTreeSet::new();
    let mut bursts = 0;
    while seen.len() < 2 {
        bursts += 1;
        assert!(bursts <= 200, "both replicas never answered: {seen:?}");
        for (status, body) in burst(INGRESS, "flaky.localhost", "/cgi-bin/status", 20).await {
            if status == 200
                && let Some(replica) = body.split("ok replica ").nth(1)
            {
                seen.insert(replica.trim().to_string());
            }
        }
        if seen.len() < 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // One replica starts answering 500.
    let containers = containers_of("flaky");
    assert_eq!(containers.len(), 2, "{containers:?}");
    let failing = &containers[0];
    docker_exec(failing, &["touch", "/tmp/fail"]);

    // Its breaker opens; meanwhile every answer that is not its 500 is the other replica's.
    let mut failures = 0;
    let mut served_by_the_other = 0;
    let mut bursts = 0;
    while sample(&metrics(ADMIN), OPENED) < 1.0 {
        bursts += 1;
        assert!(bursts <= 100, "the failing replica's breaker never opened");
        for (status, body) in burst(INGRESS, "flaky.localhost", "/cgi-bin/status", 20).await {
            match status {
                500 => {
                    assert!(body.contains("failing replica"), "{body}");
                    failures += 1;
                }
                200 => {
                    assert!(body.contains("ok replica"), "{body}");
                    served_by_the_other += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    assert!(failures >= 5, "opened after {failures} failures");
    println!(
        "breaker opened after {bursts} bursts of 20 requests: {failures} answered 500 by the \
         failing replica, {served_by_the_other} served by the other"
    );
    // While it is ejected, the other replica takes the traffic: only the breaker's
    // half-open trials (one at a time) reach the failing one.
    let mut ok = 0;
    let mut trials = 0;
    for (status, body) in burst(INGRESS, "flaky.localhost", "/cgi-bin/status", 40).await {
        match status {
            200 => ok += 1,
            500 => trials += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let text = metrics(ADMIN);
    let reopened = sample(
        &text,
        "stratus_ingress_breaker_transitions_total{app=\"flaky\",from=\"half_open\",to=\"open\"}",
    );
    assert!(
        f64::from(trials) <= reopened + 1.0,
        "{trials} requests reached the ejected replica, the breaker reopened {reopened} times"
    );
    assert!(ok >= 30, "only {ok} of 40 requests were served: {text}");

    // It recovers: a half-open trial succeeds and the breaker closes.
    docker_exec(failing, &["rm", "/tmp/fail"]);
    let mut bursts = 0;
    while sample(&metrics(ADMIN), CLOSED) < 1.0 {
        bursts += 1;
        // The backoff doubles with each failed trial, up to 30 s.
        assert!(bursts <= 300, "the breaker never closed again");
        burst(INGRESS, "flaky.localhost", "/cgi-bin/status", 20).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = metrics(ADMIN);
    assert_eq!(
        sample(&text, "stratus_ingress_breakers{state=\"open\"}"),
        0.0,
        "{text}"
    );
    for (status, body) in burst(INGRESS, "flaky.localhost", "/cgi-bin/status", 20).await {
        assert_eq!(status, 200, "{body}");
    }
}
