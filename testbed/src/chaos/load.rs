//! Continuous traffic through an ingress: `clients` concurrent loops, each with its own
//! keep-alive connection, sending `GET /` (or another path) with `Host: <app>.localhost`
//! and a short pause,
//! recording every request's start, latency, status or error, and which replica answered.
//!
//! The replica is read from the body: `examples/hello` answers `... release R replica N on
//! node NODE`. [`Load::mark`] puts named instants into the record, so a failure can be told
//! as "1.2 s after `kill`".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The ingress's listening address.
    pub ingress: SocketAddr,
    /// The `Host` header, e.g. `chaos.localhost`.
    pub host: String,
    /// What each request gets: `/` unless set.
    pub path: String,
    pub clients: usize,
    /// Between the end of one request and the start of the next, per client.
    pub pause: Duration,
    /// A request (connection included) that takes longer fails as a timeout.
    pub timeout: Duration,
}

impl LoadConfig {
    /// 4 clients, 20 ms pauses, 5 s timeouts: about 150 requests a second on this
    /// machine, enough to see a gap of a fraction of a second, without starving the agents
    /// of CPU on 2 cores. The timeout is generous because CI shares the 2 cores with the
    /// build and other tests (2 s saw scheduling stalls there); a stuck route still shows.
    pub fn new(ingress: SocketAddr, app: &str) -> LoadConfig {
        LoadConfig {
            ingress,
            host: format!("{app}.localhost"),
            path: "/".to_string(),
            clients: 4,
            pause: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The replica that answered, from the example app's body.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub node: String,
    pub release: u64,
    pub replica: u32,
}

impl Backend {
    /// Parses `... release R replica N on node NODE`.
    pub fn parse(body: &str) -> Option<Backend> {
        let rest = &body[body.find("release ")? + "release ".len()..];
        let mut words = rest.split_whitespace();
        let release = words.next()?.parse().ok()?;
        (words.next()? == "replica").then_some(())?;
        let replica = words.next()?.parse().ok()?;
        (words.next()? == "on").then_some(())?;
        (words.next()? == "node").then_some(())?;
        let node = words.next()?.to_string();
        Some(Backend {
            node,
            release,
            replica,
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} r{}/{}", self.node, self.release, self.replica)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered {
        status: u16,
        backend: Option<Backend>,
    },
    /// Connection error, timeout, or a body that could not be read.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub client: usize,
    /// When the request started, from the start of the load.
    pub at: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
}

impl Sample {
    /// Errors, timeouts and any status outside 2xx.
    pub fn failed(&self) -> bool {
        match &self.outcome {
            Outcome::Answered { status, .. } => !(200..300).contains(status),
            Outcome::Error(_) => true,
        }
    }

    pub fn backend(&self) -> Option<&Backend> {
        match &self.outcome {
            Outcome::Answered { backend, .. } => backend.as_ref(),
            Outcome::Error(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub label: String,
    /// From the start of the load.
    pub at: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the load generator's HTTP client: {0}")]
pub struct LoadError(reqwest::Error);

/// Traffic running in the background until [`Load::stop`].
pub struct Load {
    started: Instant,
    wall_start: SystemTime,
    stop: watch::Sender<bool>,
    marks: mpsc::UnboundedSender<Mark>,
    mark_rx: mpsc::UnboundedReceiver<Mark>,
    /// The releases answered so far, live: a step can wait for the traffic to reach a
    /// release the agents already call routable (the ingress learns routes a feed round
    /// later than the API does).
    served: Arc<watch::Sender<BTreeSet<u64>>>,
    clients: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts the clients on the current tokio runtime.
    pub fn start(config: LoadConfig) -> Result<Load, LoadError> {
        let (stop, stop_rx) = watch::channel(false);
        let (marks, mark_rx) = mpsc::unbounded_channel();
        let served = Arc::new(watch::Sender::new(BTreeSet::new()));
        let started = Instant::now();
        let url = format!("http://{}{}", config.ingress, config.path);
        let mut clients = Vec::new();
        for index in 0..config.clients {
            // One client each, one idle connection each: every loop keeps its own
            // keep-alive connection to the ingress, as a browser would.
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(config.timeout)
                .pool_max_idle_per_host(1)
                .build()
                .map_err(LoadError)?;
            clients.push(tokio::spawn(client_loop(
                index,
                http,
                url.clone(),
                config.clone(),
                started,
                stop_rx.clone(),
                served.clone(),
            )));
        }
        Ok(Load {
            started,
            wall_start: SystemTime::now(),
            stop,
            marks,
            mark_rx,
            served,
            clients,
        })
    }

    /// Records `label` at this instant.
    pub fn mark(&self, label: &str) {
        let _ = self.marks.send(Mark {
            label: label.to_string(),
            at: self.started.elapsed(),
        });
    }

    /// Waits until a request is answered by `release`, or `timeout` passes (false).
    pub async fn wait_served(&self, release: u64, timeout: Duration) -> bool {
        let mut served = self.served.subscribe();
        tokio::time::timeout(timeout, served.wait_for(|set| set.contains(&release)))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops every client (requests in flight finish, bounded by the timeout) and returns
    /// what they recorded.
    pub async fn stop(mut self) -> LoadReport {
        let _ = self.stop.send(true);
        let mut samples = Vec::new();
        for client in self.clients.drain(..) {
            if let Ok(recorded) = client.await {
                samples.extend(recorded);
            }
        }
        samples.sort_by_key(|sample| sample.at);
        let mut marks = Vec::new();
        while let Ok(mark) = self.mark_rx.try_recv() {
            marks.push(mark);
        }
        LoadReport {
            samples,
            marks,
            wall_start: self.wall_start,
            duration: self.started.elapsed(),
        }
    }
}

async fn client_loop(
    index: usize,
    http: reqwest::Client,
    url: String,
    config: LoadConfig,
    started: Instant,
    mut stop: watch::Receiver<bool>,
    served: Arc<watch::Sender<BTreeSet<u64>>>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !*stop.borrow() {
        let begin = Instant::now();
        let outcome = match http
            .get(&url)
            .header(reqwest::header::HOST, &config.host)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Ok(body) => Outcome::Answered {
                        status,
                        backend: Backend::parse(&body),
                    },
                    Err(err) => Outcome::Error(describe(&err)),
                }
            }
            Err(err) => Outcome::Error(describe(&err)),
        };
        if let Outcome::Answered {
            backend: Some(backend),
            ..
        } = &outcome
        {
            served.send_if_modified(|set| set.insert(backend.release));
        }
        samples.push(Sample {
            client: index,
            at: begin.duration_since(started),
            latency: begin.elapsed(),
            outcome,
        });
        tokio::select! {
            _ = tokio::time::sleep(config.pause) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    samples
}

/// reqwest's message with its causes, which say what really happened (refused, reset).
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timeout".to_string()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Everything a [`Load`] recorded.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Sorted by start.
    pub samples: Vec<Sample>,
    pub marks: Vec<Mark>,
    /// The wall clock when the load started, to line samples up with agents' logs.
    pub wall_start: SystemTime,
    pub duration: Duration,
}

impl LoadReport {
    pub fn total(&self) -> usize {
        self.samples.len()
    }

    pub fn failures(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| sample.failed())
            .collect()
    }

    /// When `label` was marked (the first such mark).
    pub fn mark(&self, label: &str) -> Option<Duration> {
        self.marks
            .iter()
            .find(|mark| mark.label == label)
            .map(|mark| mark.at)
    }

    /// `at` told from the last mark before it, e.g. `kill +1.204 s`.
    pub fn relative(&self, at: Duration) -> String {
        match self.marks.iter().rev().find(|mark| mark.at <= at) {
            Some(mark) => format!("{} +{:.3} s", mark.label, (at - mark.at).as_secs_f64()),
            None => format!("start +{:.3} s", at.as_secs_f64()),
        }
    }

    /// Answers per replica (`node rRELEASE/REPLICA`), and per failure kind.
    pub fn per_backend(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for sample in &self.samples {
            let key = match &sample.outcome {
                Outcome::Answered {
                    status,
                    backend: Some(backend),
                } if (200..300).contains(status) => backend.to_string(),
                Outcome::Answered { status, .. } => format!("status {status}"),
                Outcome::Error(_) => "error".to_string(),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
    }

    /// Start of the last successful request answered from `node` at or after `since`.
    pub fn last_answer_from(&self, node: &str, since: Duration) -> Option<Duration> {
        self.samples
            .iter()
            .filter(|sample| sample.at >= since && !sample.failed())
            .filter(|sample| sample.backend().is_some_and(|b| b.node == node))
            .map(|sample| sample.at)
            .max()
    }

    /// Failures that started in `[from, to)`.
    pub fn failures_between(&self, from: Duration, to: Duration) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| sample.failed() && sample.at >= from && sample.at < to)
            .collect()
    }
}

/// Consecutive failures with one cause (see [`LoadReport::failure_runs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRun {
    pub cause: String,
    pub count: usize,
    pub first: Duration,
    pub last: Duration,
}

impl LoadReport {
    /// Failures grouped into runs: in start order, a failure joins the current run if it
    /// has the same cause and no request succeeded since.
    pub fn failure_runs(&self) -> Vec<FailureRun> {
        let mut runs: Vec<FailureRun> = Vec::new();
        let mut open = false;
        for sample in &self.samples {
            if !sample.failed() {
                open = false;
                continue;
            }
            let cause = match &sample.outcome {
                Outcome::Answered { status, .. } => format!("status {status}"),
                Outcome::Error(text) => text.clone(),
            };
            match runs.last_mut() {
                Some(run) if open && run.cause == cause => {
                    run.count += 1;
                    run.last = sample.at;
                }
                _ => runs.push(FailureRun {
                    cause,
                    count: 1,
                    first: sample.at,
                    last: sample.at,
                }),
            }
            open = true;
        }
        runs
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures();
        writeln!(
            f,
            "load: {} requests in {:.1} s ({:.0}/s), {} failed",
            self.total(),
            self.duration.as_secs_f64(),
            self.total() as f64 / self.duration.as_secs_f64().max(0.001),
            failures.len()
        )?;
        for mark in &self.marks {
            writeln!(f, "  mark {:>8.3} s  {}", mark.at.as_secs_f64(), mark.label)?;
        }
        for (backend, count) in self.per_backend() {
            writeln!(f, "  {count:>7}  {backend}")?;
        }
        // Failures in runs: consecutive failures with the same cause, no success between.
        const SHOWN: usize = 20;
        let runs = self.failure_runs();
        for run in runs.iter().take(SHOWN) {
            writeln!(
                f,
                "  {:>5} failed from {:.3} s ({}) to {:.3} s ({}): {}",
                run.count,
                run.first.as_secs_f64(),
                self.relative(run.first),
                run.last.as_secs_f64(),
                self.relative(run.last),
                run.cause
            )?;
        }
        if runs.len() > SHOWN {
            writeln!(f, "  ... and {} more runs of failures", runs.len() - SHOWN)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_apps_body_names_its_replica() {
        let body = "hello from chaos release 2 replica 1 on node node-4\n";
        assert_eq!(
            Backend::parse(body),
            Some(Backend {
                node: "node-4".into(),
                release: 2,
                replica: 1
            })
        );
        assert_eq!(Backend::parse("<html>503</html>"), None);
        assert_eq!(Backend::parse("release x replica 1 on node n"), None);
    }

    fn sample(at_ms: u64, outcome: Outcome) -> Sample {
        Sample {
            client: 0,
            at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(1),
            outcome,
        }
    }

    #[test]
    fn failures_are_errors_and_non_2xx_and_are_told_from_the_last_mark() {
        let ok = |node: &str| Outcome::Answered {
            status: 200,
            backend: Some(Backend {
                node: node.into(),
                release: 1,
                replica: 0,
            }),
        };
        let report = LoadReport {
            samples: vec![
                sample(100, ok("a")),
                sample(1_500, Outcome::Error("refused".into())),
                sample(1_600, ok("b")),
                sample(
                    1_700,
                    Outcome::Answered {
                        status: 502,
                        backend: None,
                    },
                ),
                sample(2_500, ok("a")),
            ],
            marks: vec![Mark {
                label: "kill".into(),
                at: Duration::from_millis(1_000),
            }],
            wall_start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(3),
        };
        assert_eq!(report.failures().len(), 2);
        assert_eq!(
            report.relative(Duration::from_millis(1_500)),
            "kill +0.500 s"
        );
        assert_eq!(
            report.relative(Duration::from_millis(500)),
            "start +0.500 s"
        );
        assert_eq!(
            report.last_answer_from("a", Duration::from_secs(1)),
            Some(Duration::from_millis(2_500))
        );
        assert_eq!(report.last_answer_from("c", Duration::ZERO), None);
        let counts = report.per_backend();
        assert_eq!(counts["a r1/0"], 2);
        assert_eq!(counts["error"], 1);
        assert_eq!(counts["status 502"], 1);
        assert_eq!(
            report
                .failures_between(Duration::from_secs(1), Duration::from_millis(1_600))
                .len(),
            1
        );
        // A success between two failures splits them into two runs.
        let runs = report.failure_runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].cause, "refused");
        assert_eq!(runs[1].cause, "status 502");
    }
}
