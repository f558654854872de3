//! The dashboard in real browsers: Debian's `chromium` through `chromedriver` and Debian's
//! `firefox-esr` through `geckodriver`, headless, driven by WebDriver against an
//! in-process 3-node cluster, the same script in each. One script of steps,
//! each printed, so a failure names its step: load the page and sign in; the nodes and
//! apps shown are the API's; a deploy's rollout appears live; the page's scale and
//! rollback buttons change the app; a tenant's read-only token sees its own apps only,
//! with no buttons; an isolated node goes dead on the page; the page's own node stopping
//! shows the lost-node banner. Screenshots go to
//! `target/dashboard-screenshots/`.
//!
//! Needs `chromium`, `chromedriver`, `firefox-esr` and `geckodriver`
//! (`scripts/install-deps.sh` installs them, as CI does); without them the tests fail,
//! unless `STRATUS_SKIP_BROWSER_TESTS=1` asks to skip.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use node::testsuite::{
    Step, TestCluster, USER_TOKEN, bundle_for_test, cluster_for_test, healthy_replicas,
    hello_app_for_test, wait_for,
};
use proto::api::{CreateTenantRequest, CreateTokenRequest, NodeStatus};
use proto::tenancy::Role;
use serde::Deserialize;

/// Page updates ride the event stream; a rollout of the hello app takes a few seconds.
const SETTLE: Duration = Duration::from_secs(90);
const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);

/// True (and says so) when `STRATUS_SKIP_BROWSER_TESTS=1`, the way
/// `node::testsuite::skip_docker_tests` does for Docker: skipping is asked for, never
/// silent. CI does not set it.
fn skip_browser_tests() -> bool {
    let skip = std::env::var_os("STRATUS_SKIP_BROWSER_TESTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("STRATUS_SKIP_BROWSER_TESTS=1: skipping a browser test");
    }
    skip
}

fn find_program(names: &[&str]) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "none of {names:?} is on PATH: run scripts/install-deps.sh (it installs Debian's \
         chromium, chromium-driver and firefox-esr, and geckodriver from crates.io, as CI \
         does), or set STRATUS_SKIP_BROWSER_TESTS=1 to skip"
    ))
}

/// Where the screenshots go: the target dir, so CI can keep them as artifacts.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}

/// The browsers the script runs in, each through its own WebDriver server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Debian's `chromium` through `chromedriver`.
    Chromium,
    /// Debian's `firefox-esr` through `geckodriver` (crates.io's; `scripts/install-deps.sh`
    /// installs both).
    Firefox,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Chromium => "chromium",
            Kind::Firefox => "firefox",
        }
    }
}

/// A headless browser through a WebDriver server this test started, and stops.
struct Browser {
    kind: Kind,
    client: Client,
    driver: tokio::process::Child,
}

/// The WebDriver server runs in a process group of its own, with the browser it starts:
/// a test that fails half-way kills the whole group, and leaves no browser behind.
impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Browser {
    async fn start(kind: Kind) -> Result<Browser, String> {
        let (browser, driver) = match kind {
            Kind::Chromium => (
                find_program(&["chromium", "chromium-browser", "google-chrome"])?,
                find_program(&["chromedriver"])?,
            ),
            Kind::Firefox => (
                find_program(&["firefox-esr", "firefox"])?,
                find_program(&["geckodriver"])?,
            ),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|err| format!("no free port: {err}"))?
            .port();
        let mut command = tokio::process::Command::new(&driver);
        match kind {
            Kind::Chromium => command.arg(format!("--port={port}")),
            Kind::Firefox => command.args(["--port", &port.to_string()]),
        };
        let driver_process = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", driver.display()))?;
        wait_for(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
                .map_err(|err| format!("{} does not listen on {port}: {err}", driver.display()))
        })
        .await?;
        let mut capabilities = serde_json::Map::new();
        match kind {
            Kind::Chromium => capabilities.insert(
                "goog:chromeOptions".to_string(),
                serde_json::json!({
                    "binary": browser,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-dev-shm-usage",
                        "--disable-gpu",
                        "--hide-scrollbars",
                        format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                    ],
                }),
            ),
            Kind::Firefox => capabilities.insert(
                "moz:firefoxOptions".to_string(),
                serde_json::json!({
                    "binary": browser,
                    "args": [
                        "-headless",
                        format!("--width={}", DESKTOP.0),
                        format!("--height={}", DESKTOP.1),
                    ],
                }),
            ),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|err| format!("{} gave no session: {err}", driver.display()))?;
        Ok(Browser {
            kind,
            client,
            driver: driver_process,
        })
    }

    /// What the page shows, read from its `data-` attributes in one call.
    async fn page(&self) -> Result<Page, String> {
        let value = self
            .client
            .execute(PAGE_SCRIPT, Vec::new())
            .await
            .map_err(|err| format!("cannot read the page: {err}"))?;
        serde_json::from_value(value).map_err(|err| format!("unexpected page state: {err}"))
    }

    /// Sizes the window so that the page itself gets `width` x `height`, as a screenshot
    /// shows it (the window's frame takes some of its size, even headless).
    async fn set_viewport(&self, (width, height): (u32, u32)) {
        self.client.set_window_size(width, height).await.unwrap();
        let frame = self
            .client
            .execute(
                "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
                Vec::new(),
            )
            .await
            .unwrap();
        let (dw, dh): (u32, u32) = serde_json::from_value(frame).unwrap_or((0, 0));
        self.client
            .set_window_size(width + dw, height + dh)
            .await
            .unwrap();
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        // Chromium's are the README's; the other browsers' carry their name.
        let path = match self.kind {
            Kind::Chromium => dir.join(format!("{name}.png")),
            other => dir.join(format!("{}-{name}.png", other.name())),
        };
        std::fs::write(&path, png).unwrap();
        println!("  screenshot: {}", path.display());
        path
    }

    /// Ends the session (the browser quits), then the drop ends the driver's group.
    async fn stop(self) {
        let _ = self.client.clone().close().await;
    }
}

const PAGE_SCRIPT: &str = r#"
const all = (selector) => [...document.querySelectorAll(selector)];
const banner = document.querySelector('#banner');
return {
  signed_in: !document.querySelector('#dashboard').hidden,
  who: document.querySelector('#who').textContent,
  nodes: all('#nodes [data-node]').map((e) => [e.dataset.node, e.dataset.status]),
  apps: all('#apps [data-app]').map((e) => [e.dataset.app, e.dataset.release, Number(e.dataset.healthy), Number(e.dataset.desired)]),
  replicas: all('#replicas [data-replica]').map((e) => [e.dataset.replica, e.dataset.node, e.dataset.state, e.dataset.health]),
  releases: all('#releases [data-release]').map((e) => [Number(e.dataset.release), e.dataset.status]),
  events: all('#events [data-kind]').map((e) => [e.dataset.kind, e.dataset.subject, e.dataset.release]),
  actions: !document.querySelector('#app-actions').hidden,
  logs: document.querySelector('#logs').textContent,
  banner: banner.hidden ? null : banner.textContent,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
};
"#;

#[derive(Debug, Deserialize)]
struct Page {
    signed_in: bool,
    who: String,
    nodes: Vec<(String, String)>,
    /// name, release, healthy, desired
    apps: Vec<(String, String, u32, u32)>,
    /// release-replica, node, state, health
    replicas: Vec<(String, String, String, String)>,
    releases: Vec<(u64, String)>,
    /// kind, subject, release (empty when the event names none)
    events: Vec<(String, String, String)>,
    actions: bool,
    logs: String,
    banner: Option<String>,
    /// Pixels the page is wider than the window: a phone would scroll sideways.
    overflow: i64,
}

fn status_name(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Joining => "joining",
        NodeStatus::Live => "live",
        NodeStatus::Left => "left",
        NodeStatus::Dead => "dead",
    }
}

/// The page shows the nodes and apps `index`'s API answers, with the same statuses and
/// counts.
async fn page_matches_api(browser: &Browser, cluster: &TestCluster, index: usize) {
    let client = cluster.node(index).client();
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        let nodes = client.nodes().await.map_err(|err| err.to_string())?;
        let mut expected: Vec<(String, String)> = nodes
            .nodes
            .iter()
            .map(|node| (node.node_id.clone(), status_name(node.status).to_string()))
            .collect();
        expected.sort();
        if page.nodes != expected {
            return Err(format!(
                "the page shows nodes {:?}, the API {expected:?}",
                page.nodes
            ));
        }
        let apps = client.apps().await.map_err(|err| err.to_string())?;
        let mut expected: Vec<(String, String, u32, u32)> = apps
            .apps
            .iter()
            .map(|app| {
                let release = app.release.map(|r| r.to_string()).unwrap_or_default();
                (
                    app.name.clone(),
                    release,
                    app.replicas_healthy,
                    app.replicas_desired,
                )
            })
            .collect();
        expected.sort();
        if page.apps != expected {
            return Err(format!(
                "the page shows apps {:?}, the API {expected:?}",
                page.apps
            ));
        }
        Ok(())
    })
    .await
    .unwrap();
}

/// Deploys the hello app (2 replicas) through node-1's API; `revision` makes each bundle
/// differ.
async fn deploy_hello(cluster: &TestCluster, root: &Path, revision: u32) -> u64 {
    let dir = hello_app_for_test(root, "hello", 2, 0.1).unwrap();
    std::fs::write(dir.join("REVISION"), revision.to_string()).unwrap();
    let bundle = bundle_for_test(&dir).unwrap();
    let client = cluster.node(1).client();
    let accepted = client.deploy("hello", bundle.path(), |_| {}).await.unwrap();
    accepted.release
}

fn step(text: &str) {
    println!("step: {text}");
}

async fn click(browser: &Browser, selector: &str) {
    browser
        .client
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|err| panic!("no {selector} on the page: {err}"))
        .click()
        .await
        .unwrap();
}

/// Types `token` into the sign-in form and submits it.
async fn sign_in(browser: &Browser, token: &str) {
    let field = browser
        .client
        .wait()
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    field.send_keys(token).await.unwrap();
    click(browser, "#sign-in-form button[type=submit]").await;
}

/// [`wait_for`], returning what the check found.
async fn wait_for_value<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(complaint) if tokio::time::Instant::now() >= deadline => {
                panic!("still not so after {timeout:?}: {complaint}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_cluster_live_in_chromium() {
    if skip_browser_tests() {
        return;
    }
    the_dashboard_follows_the_cluster_live(Kind::Chromium).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_cluster_live_in_firefox() {
    if skip_browser_tests() {
        return;
    }
    the_dashboard_follows_the_cluster_live(Kind::Firefox).await;
}

async fn the_dashboard_follows_the_cluster_live(kind: Kind) {
    let browser = Browser::start(kind)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    step(&format!("in {}", kind.name()));
    browser.set_viewport(DESKTOP).await;
    let apps_dir = tempfile::tempdir().unwrap();

    step("start 3 nodes and deploy hello");
    let mut cluster = cluster_for_test(3).await.unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    let first = deploy_hello(&cluster, apps_dir.path(), 1).await;
    let api = cluster.node(0).client();
    wait_for(SETTLE, || async {
        let healthy = healthy_replicas(&api, "hello", first).await.len();
        (healthy == 2)
            .then_some(())
            .ok_or(format!("{healthy} of 2 replicas of hello healthy"))
    })
    .await
    .unwrap();

    step("load the page from node-0 and sign in");
    let url = format!("http://{}/", cluster.node(0).api_addr);
    browser.client.goto(&url).await.unwrap();
    let token = browser
        .client
        .wait()
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    token.send_keys(USER_TOKEN).await.unwrap();
    browser
        .client
        .find(Locator::Css("#sign-in-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        (page.signed_in && page.who == "cluster administrator")
            .then_some(())
            .ok_or(format!("not signed in (who: {:?})", page.who))
    })
    .await
    .unwrap();

    step("the nodes and apps shown are the API's");
    page_matches_api(&browser, &cluster, 0).await;

    step("open hello: its replicas, releases, log tail and (for this token) actions");
    browser
        .client
        .find(Locator::Css("#apps [data-app=\"hello\"] a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        let healthy = page
            .replicas
            .iter()
            .filter(|(id, _, state, health)| {
                id.starts_with(&format!("{first}-")) && state == "running" && health == "healthy"
            })
            .count();
        if healthy != 2 || !page.actions {
            return Err(format!(
                "hello's replicas {:?}, actions shown: {}",
                page.replicas, page.actions
            ));
        }
        if page.releases.first() != Some(&(first, "current".to_string())) {
            return Err(format!("hello's releases: {:?}", page.releases));
        }
        // What examples/hello prints as it starts, through the page's followed log tail.
        if !page.logs.contains("of hello serving on port") {
            let start: String = page.logs.chars().take(300).collect();
            return Err(format!("hello's start is not in the log tail: {start:?}"));
        }
        Ok(())
    })
    .await
    .unwrap();

    step("deploy a new release through the API and watch the rollout on the page");
    let second = deploy_hello(&cluster, apps_dir.path(), 2).await;
    assert!(second > first);
    // The new release's replicas shown before all were healthy: the page followed the
    // rollout as it went, not only its end.
    let seen_rolling = std::sync::atomic::AtomicBool::new(false);
    wait_for(SETTLE, || {
        let seen_rolling = &seen_rolling;
        let browser = &browser;
        async move {
            let page = browser.page().await?;
            let events_of = |kind: &str| {
                page.events.iter().any(|(k, subject, release)| {
                    k == kind && subject.starts_with("hello") && *release == second.to_string()
                })
            };
            let new_replicas = page
                .replicas
                .iter()
                .filter(|(id, ..)| id.starts_with(&format!("{second}-")))
                .count();
            let healthy_new = page
                .replicas
                .iter()
                .filter(|(id, _, state, health)| {
                    id.starts_with(&format!("{second}-"))
                        && state == "running"
                        && health == "healthy"
                })
                .count();
            if new_replicas > 0 && healthy_new < 2 {
                seen_rolling.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let row = page.apps.iter().find(|app| app.0 == "hello");
            let live = row == Some(&("hello".to_string(), second.to_string(), 2, 2));
            if healthy_new == 2
                && live
                && events_of("replica.healthy")
                && events_of("app.release_live")
            {
                Ok(())
            } else {
                Err(format!(
                    "release {second}: {healthy_new} healthy on the page, row {row:?}, events {:?}",
                    page.events.iter().take(8).collect::<Vec<_>>()
                ))
            }
        }
    })
    .await
    .unwrap();
    assert!(
        seen_rolling.load(std::sync::atomic::Ordering::Relaxed),
        "the page never showed the rollout under way"
    );
    page_matches_api(&browser, &cluster, 0).await;
    let desktop = browser.screenshot("desktop").await;

    step("scale hello to 3 with the page's button");
    let scale_to = browser
        .client
        .find(Locator::Css("#scale-to"))
        .await
        .unwrap();
    // As a user does: click into the field, erase, type. WebDriver's `clear` leaves the
    // field unfocused, and the page's next live update (which leaves a focused field
    // alone) then puts the current count back before the keys arrive: Firefox typed
    // "23" that way.
    scale_to.click().await.unwrap();
    scale_to
        .send_keys("\u{E010}\u{E003}\u{E003}\u{E003}\u{E003}3")
        .await
        .unwrap();
    click(&browser, "#scale").await;
    wait_for(SETTLE, || async {
        let desired = api
            .app("hello")
            .await
            .map_err(|err| err.to_string())?
            .replicas_desired;
        let page = browser.page().await?;
        let row = page.apps.iter().find(|app| app.0 == "hello");
        let scaled = page
            .events
            .iter()
            .any(|(kind, subject, _)| kind == "app.scaled" && subject == "hello");
        (desired == 3 && row.is_some_and(|row| row.2 == 3 && row.3 == 3) && scaled)
            .then_some(())
            .ok_or(format!(
                "desired {desired} per the API, row {row:?} on the page"
            ))
    })
    .await
    .unwrap();

    step("roll back with the page's button: a new release of the first one's bundle");
    click(&browser, "#rollback").await;
    let rolled_back = wait_for_value(SETTLE, || async {
        let releases = api.releases("hello").await.map_err(|err| err.to_string())?;
        let current = releases.releases.first().ok_or("no releases")?;
        let expected = format!("rollback to v{first}");
        if current.number > second && current.note.as_deref() == Some(expected.as_str()) {
            Ok(current.number)
        } else {
            Err(format!(
                "current release {} ({:?})",
                current.number, current.note
            ))
        }
    })
    .await;
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        let row = page.apps.iter().find(|app| app.0 == "hello");
        (page.releases.first() == Some(&(rolled_back, "current".to_string()))
            && row.is_some_and(|row| row.1 == rolled_back.to_string() && row.2 == 3))
        .then_some(())
        .ok_or(format!("releases {:?}, row {row:?}", page.releases))
    })
    .await
    .unwrap();
    browser.screenshot("actions").await;

    step("a tenant's read-only token sees that tenant's apps only, without buttons");
    let admin = cluster.node(0).client();
    admin
        .create_tenant(&CreateTenantRequest {
            name: "acme".into(),
            isolation: Default::default(),
            quota: Default::default(),
        })
        .await
        .unwrap();
    let token_of = |role: Role| {
        let admin = admin.clone();
        async move {
            admin
                .create_token(&CreateTokenRequest {
                    tenant: "acme".into(),
                    role,
                    name: Some(format!("acme-{role}")),
                    expires_in_secs: None,
                })
                .await
                .unwrap()
                .token
        }
    };
    let deployer = token_of(Role::Deploy).await;
    let reader = token_of(Role::Read).await;
    let acme_dir = hello_app_for_test(apps_dir.path(), "acme-web", 1, 0.1).unwrap();
    let acme_bundle = bundle_for_test(&acme_dir).unwrap();
    cluster
        .node(0)
        .client()
        .with_token(Some(deployer))
        .deploy("acme-web", acme_bundle.path(), |_| {})
        .await
        .unwrap();
    click(&browser, "#sign-out").await;
    sign_in(&browser, &reader).await;
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        let names: Vec<&str> = page.apps.iter().map(|app| app.0.as_str()).collect();
        (page.signed_in
            && page.who.contains("acme")
            && page.who.contains("read")
            && names == ["acme-web"])
        .then_some(())
        .ok_or(format!("who {:?}, apps {names:?}", page.who))
    })
    .await
    .unwrap();
    browser
        .client
        .goto(&format!("{url}#app=acme-web"))
        .await
        .unwrap();
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        (!page.replicas.is_empty() && !page.actions)
            .then_some(())
            .ok_or(format!(
                "replicas {:?}, buttons shown: {}",
                page.replicas, page.actions
            ))
    })
    .await
    .unwrap();
    browser.screenshot("tenant-read-only").await;
    click(&browser, "#sign-out").await;
    sign_in(&browser, USER_TOKEN).await;
    browser.client.goto(&url).await.unwrap();

    step("at phone width the page fits the screen");
    browser.set_viewport(PHONE).await;
    wait_for(Duration::from_secs(10), || async {
        let page = browser.page().await?;
        (page.overflow <= 0)
            .then_some(())
            .ok_or(format!("{} px wider than a phone", page.overflow))
    })
    .await
    .unwrap();
    browser.screenshot("phone").await;
    browser.set_viewport(DESKTOP).await;

    step("isolate node-2: node-0 sees it dead, and so does the page");
    cluster.isolate(2).await;
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        let dead = page
            .nodes
            .iter()
            .any(|(id, status)| id == "node-2" && status == "dead");
        let event = page
            .events
            .iter()
            .any(|(kind, subject, _)| kind == "node.dead" && subject == "node-2");
        (dead && event).then_some(()).ok_or(format!(
            "nodes {:?}, events {:?}",
            page.nodes,
            &page.events[..page.events.len().min(5)]
        ))
    })
    .await
    .unwrap();
    page_matches_api(&browser, &cluster, 0).await;
    browser.screenshot("node-dead").await;

    step("stop node-0, the page's own: it says it lost the node and retries");
    cluster.stop_node(0).await.unwrap();
    wait_for(SETTLE, || async {
        let page = browser.page().await?;
        match &page.banner {
            Some(text) if text.contains("Lost node node-0") && text.contains("retrying") => Ok(()),
            other => Err(format!("banner {other:?}")),
        }
    })
    .await
    .unwrap();
    browser.screenshot("node-lost").await;

    println!("desktop screenshot for the README: {}", desktop.display());
    browser.stop().await;
    cluster.shutdown().await.unwrap();
}
