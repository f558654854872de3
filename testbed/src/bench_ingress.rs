//! `bench ingress`: the Stratus ingress against nginx and HAProxy, each in front of the same
//! backend, measured as a proxy vendor would.
//!
//! Every party is a process of its own: the backend (`testbed bench-backend`, a small hyper
//! server), the ingress (`testbed bench-ingress`, the ingress's servers with a static route
//! table for one app, Host routing and the access log as in production), Pingora with no
//! hooks of ours, nginx and HAProxy (configured as equivalent reverse proxies, generated
//! configs in a temporary folder), and the load generators. Each proxy serves plain HTTP and
//! HTTPS (TLS 1.3, one ECDSA P-256 certificate made for the run; rustls for us, OpenSSL for
//! nginx and HAProxy).
//!
//! Two kinds of load, each under every [`Load`] (protocol and client connections):
//! - closed loop (wrk): every connection sends its next request when the answer comes, so
//!   the figure is the most requests per second each proxy serves; targets in turns, round
//!   after round, medians over rounds;
//! - open loop at fixed rates (oha `-q` with latency correction, which counts the time a
//!   request waited behind a late one): the same offered rate for every proxy, a share of
//!   the best peer's maximum under oha in a closed loop (oha costs more CPU per request
//!   than wrk), so queueing delay shows in p99 and p99.9.
//!
//! On a small machine the load generator, the backend and the proxy share the cores, so
//! only the ratios between targets within one run mean something.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ingress::{BalancerConfig, CertSpec, Listeners, ProxyConfig, RouteApp, RouteState, RouteTable};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::{ContainerHealth, ContainerRecord, ContainerState};
use tokio::time::Instant;

/// The app the bench routes to, and the Host header the load generators send.
pub const APP: &str = "bench";
pub const HOST: &str = "bench.localhost";

/// The bench's loopback addresses: the backend, the ingress, nginx, HAProxy.
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 252, 1);
const INGRESS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 252, 2);
const NGINX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 252, 3);
const HAPROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 252, 4);
const INGRESS_NOLOG_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 252, 5);
const PINGORA_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 252, 6);

/// What the backend answers to every request.
const BODY: &[u8] = b"hello from the bench backend\n";
/// Where the backend tells how many connections it has accepted.
const CONNECTIONS_PATH: &str = "/connections";

/// Prints p50, p99 and p99.9 (µs) at the end of a wrk run; `--latency` stops at p99.
const WRK_PERCENTILES: &str = r#"done = function(summary, latency, requests)
  io.write(string.format("bench-percentiles %d %d %d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// How `bench ingress` loads each target.
#[derive(Debug, Clone)]
pub struct IngressBench {
    pub rounds: usize,
    /// Length of each closed-loop run.
    pub duration: Duration,
    /// wrk's threads.
    pub wrk_threads: usize,
    /// Worker threads of every proxy (the agent gives the ingress 2).
    pub proxy_threads: usize,
    /// The targets measured, in this order within a round.
    pub targets: Vec<Kind>,
    /// The loads, each measured closed-loop and then at the fixed rates.
    pub loads: Vec<Load>,
    /// Open-loop rates, in percent of the best peer's closed-loop req/s under the same
    /// load (none: closed loop only).
    pub fixed_rates: Vec<u32>,
    /// Length of each fixed-rate run.
    pub fixed_duration: Duration,
}

/// A protocol and a number of client connections, e.g. `https:1000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// HTTPS (TLS 1.3, keep-alive) rather than plain HTTP/1.1.
    pub tls: bool,
    pub connections: usize,
}

impl FromStr for Load {
    type Err = String;

    fn from_str(text: &str) -> Result<Load, String> {
        let bad = || format!("not a load (http:N or https:N): {text}");
        let (scheme, connections) = text.split_once(':').ok_or_else(bad)?;
        let tls = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(bad()),
        };
        let connections = connections.parse::<usize>().map_err(|_| bad())?;
        if connections == 0 {
            return Err(bad());
        }
        Ok(Load { tls, connections })
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = if self.tls {
            "HTTPS (TLS 1.3)"
        } else {
            "HTTP/1.1"
        };
        write!(f, "{protocol}, {} connections", self.connections)
    }
}

/// One run of a load generator against one target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    /// Socket errors plus answers that were not 2xx or 3xx.
    pub errors: u64,
    pub requests: u64,
    /// CPU time the target's processes (the proxy, not the backend) spent per request.
    pub cpu_per_request: Option<Duration>,
    /// Context switches (voluntary and not) of the proxy's threads per request.
    pub switches_per_request: Option<f64>,
    /// Resident memory of the proxy's processes at the end of the run.
    pub rss_bytes: Option<u64>,
    /// Connections the backend accepted during the run: how well the proxy reuses its
    /// upstream connections (the load generator's own for the backend itself).
    pub backend_connections: u64,
}

/// Medians over rounds for one target under one load.
#[derive(Debug, Clone)]
pub struct TargetFigures {
    pub name: String,
    pub kind: Kind,
    pub median: Run,
    pub errors: u64,
}

/// One target's run at a fixed rate.
#[derive(Debug, Clone)]
pub struct FixedFigures {
    pub name: String,
    pub kind: Kind,
    /// Requests per second offered.
    pub offered: f64,
    pub run: Run,
}

/// What one load measured.
#[derive(Debug, Clone)]
pub struct LoadFigures {
    pub load: Load,
    pub closed: Vec<TargetFigures>,
    /// Per fixed rate (percent of the best peer's maximum), every target's run.
    pub fixed: Vec<(u32, Vec<FixedFigures>)>,
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The backend itself, no proxy (plain HTTP loads only).
    Direct,
    /// The ingress with its access log, as in production.
    Stratus,
    /// The ingress without the access log.
    StratusNoLog,
    /// Pingora's proxy with no hooks of ours: the floor of any proxy built on it.
    PingoraBare,
    Nginx,
    Haproxy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Direct,
        Kind::Stratus,
        Kind::StratusNoLog,
        Kind::PingoraBare,
        Kind::Nginx,
        Kind::Haproxy,
    ];

    fn is_peer(self) -> bool {
        matches!(self, Kind::Nginx | Kind::Haproxy)
    }

    fn is_ours(self) -> bool {
        matches!(self, Kind::Stratus | Kind::StratusNoLog | Kind::PingoraBare)
    }
}

/// The certificate every proxy serves, and HAProxy's file of both.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    combined: PathBuf,
}

/// Runs the whole bench and prints the figures.
pub fn ingress(bench: &IngressBench) -> anyhow::Result<Vec<LoadFigures>> {
    anyhow::ensure!(bench.rounds >= 1, "need at least one round");
    anyhow::ensure!(!bench.loads.is_empty(), "need at least one load");
    for load in &bench.loads {
        anyhow::ensure!(
            load.connections >= bench.wrk_threads,
            "wrk needs at least one connection per thread ({load})"
        );
    }
    let fixed_rates: Vec<u32> = bench
        .fixed_rates
        .iter()
        .copied()
        .filter(|&r| r > 0)
        .collect();
    install_missing(!fixed_rates.is_empty())?;
    let dir = tempfile::Builder::new()
        .prefix("stratus-ingbench")
        .tempdir()?;
    let exe = std::env::current_exe().context("cannot find the testbed binary")?;
    let certificate = make_certificate(dir.path())?;
    std::fs::write(dir.path().join("percentiles.lua"), WRK_PERCENTILES)?;

    let backend_port = reserve(BACKEND_IP)?;
    let backend_addr = backend_port.addr;
    let mut backend = Process::spawn(
        "backend",
        Command::new(&exe).args([
            "bench-backend",
            "--listen",
            &backend_addr.to_string(),
            "--threads",
            &bench.proxy_threads.to_string(),
        ]),
        &dir.path().join("backend.log"),
    )?;
    wait_until_serving(backend_addr, &mut backend)?;

    let mut targets = Vec::new();
    for kind in Kind::ALL {
        if bench.targets.contains(&kind) {
            targets.push(start_target(
                kind,
                &exe,
                dir.path(),
                backend_addr,
                &certificate,
                bench,
            )?);
        }
    }
    println!(
        "closed loop: wrk -t{} -d{}s --latency, {} rounds; fixed rates: oha -q --latency-correction \
         -z{}s at {:?} % of the best peer's maximum; Host: {HOST}; proxies with {} worker threads",
        bench.wrk_threads,
        bench.duration.as_secs_f64(),
        bench.rounds,
        bench.fixed_duration.as_secs_f64(),
        fixed_rates,
        bench.proxy_threads,
    );
    let mut all = Vec::new();
    for load in &bench.loads {
        let figures = measure_load(bench, *load, &mut targets, backend_addr, dir.path())?;
        all.push(figures);
    }
    println!("\n==== summary ====");
    for figures in &all {
        print_closed(bench, figures);
        print_fixed(figures);
    }
    print_verdict(&all);
    // The proxies go first, then their backend.
    drop(targets);
    drop(backend);
    drop(backend_port);
    Ok(all)
}

/// The closed-loop rounds, then the fixed rates, of one load.
fn measure_load(
    bench: &IngressBench,
    load: Load,
    targets: &mut [Target],
    backend: SocketAddr,
    dir: &Path,
) -> anyhow::Result<LoadFigures> {
    println!("\n== {load} ==");
    let active: Vec<usize> = (0..targets.len())
        .filter(|&i| targets[i].addr(load).is_some())
        .collect();
    // Warm every target up once: connection pools filled, caches hot, page faults paid.
    for &index in &active {
        let addr = targets[index].addr(load).context("no address")?;
        wrk(bench, load, addr, Duration::from_secs(2), dir)?;
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); active.len()];
    for round in 0..bench.rounds {
        // Rotate the order so no target always runs first (or right after a heavy one).
        for offset in 0..active.len() {
            let slot = (round + offset) % active.len();
            let target = &mut targets[active[slot]];
            let addr = target.addr(load).context("no address")?;
            let run = measured(target, backend, || {
                wrk(bench, load, addr, bench.duration, dir)
            })?;
            println!("round {}  {}", round + 1, run_line(&target.name, &run));
            runs[slot].push(run);
        }
    }
    let closed: Vec<TargetFigures> = active
        .iter()
        .zip(&runs)
        .map(|(&index, runs)| TargetFigures {
            name: targets[index].name.clone(),
            kind: targets[index].kind,
            median: median_run(runs),
            errors: runs.iter().map(|r| r.errors).sum(),
        })
        .collect();
    let mut fixed = Vec::new();
    let rates: Vec<u32> = bench
        .fixed_rates
        .iter()
        .copied()
        .filter(|&r| r > 0)
        .collect();
    // The rates are shares of what the generator that offers them gets from the best peer
    // in a closed loop: oha spends more CPU per request than wrk, and on shared cores a
    // share of wrk's maximum can already be more than oha and a proxy together sustain.
    let mut maximum = None;
    if !rates.is_empty() {
        for &index in &active {
            let target = &mut targets[index];
            if !target.kind.is_peer() {
                continue;
            }
            let addr = target.addr(load).context("no address")?;
            let run = measured(target, backend, || {
                oha(load, addr, None, bench.fixed_duration)
            })?;
            println!("oha, closed loop: {}", run_line(&target.name, &run));
            maximum = Some(run.requests_per_sec.max(maximum.unwrap_or(0.0)));
        }
    }
    if let Some(maximum) = maximum {
        for &percent in &rates {
            let rate = (maximum * f64::from(percent) / 100.0).round().max(1.0);
            println!(
                "fixed rate {rate:.0} req/s ({percent} % of the best peer's maximum under oha):"
            );
            let mut at_rate = Vec::new();
            for &index in &active {
                let target = &mut targets[index];
                if target.kind == Kind::Direct {
                    continue;
                }
                let addr = target.addr(load).context("no address")?;
                let run = measured(target, backend, || {
                    oha(load, addr, Some(rate), bench.fixed_duration)
                })?;
                println!("  {}", run_line(&target.name, &run));
                at_rate.push(FixedFigures {
                    name: target.name.clone(),
                    kind: target.kind,
                    offered: rate,
                    run,
                });
            }
            fixed.push((percent, at_rate));
        }
    }
    Ok(LoadFigures {
        load,
        closed,
        fixed,
    })
}

/// Runs `load` against `target` and adds what the proxy's processes spent meanwhile.
fn measured(
    target: &mut Target,
    backend: SocketAddr,
    load: impl FnOnce() -> anyhow::Result<Run>,
) -> anyhow::Result<Run> {
    target.ensure_running()?;
    let before = target.usage();
    let connections_before = backend_connections(backend)?;
    let mut run = load()?;
    run.backend_connections = backend_connections(backend)?.saturating_sub(connections_before + 1);
    let after = target.usage();
    if let (Some(before), Some(after)) = (before, after)
        && run.requests > 0
    {
        let requests = u32::try_from(run.requests)?;
        run.cpu_per_request = Some(after.cpu.saturating_sub(before.cpu) / requests);
        run.switches_per_request =
            Some(after.switches.saturating_sub(before.switches) as f64 / run.requests as f64);
        run.rss_bytes = Some(after.rss_bytes);
    }
    Ok(run)
}

fn run_line(name: &str, run: &Run) -> String {
    format!(
        "{name:<24} {:>9.0} req/s  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  CPU/req {:>7}{}",
        run.requests_per_sec,
        show(run.p50),
        show(run.p99),
        show(run.p999),
        run.cpu_per_request.map_or("-".into(), show),
        if run.errors > 0 {
            format!("  {} errors", run.errors)
        } else {
            String::new()
        }
    )
}

/// The peer (nginx or HAProxy) with the most req/s.
fn best_peer(figures: &[TargetFigures]) -> Option<&TargetFigures> {
    figures.iter().filter(|f| f.kind.is_peer()).max_by(|a, b| {
        a.median
            .requests_per_sec
            .total_cmp(&b.median.requests_per_sec)
    })
}

/// Starts the process behind `kind` (none for the backend itself) and waits until it
/// answers on both its listeners.
fn start_target(
    kind: Kind,
    exe: &Path,
    dir: &Path,
    backend: SocketAddr,
    certificate: &Certificate,
    bench: &IngressBench,
) -> anyhow::Result<Target> {
    let ip = match kind {
        Kind::Direct => {
            return Ok(Target {
                name: "backend direct".into(),
                kind,
                http: backend,
                tls: None,
                process: None,
                _ports: Vec::new(),
            });
        }
        Kind::Stratus => INGRESS_IP,
        Kind::StratusNoLog => INGRESS_NOLOG_IP,
        Kind::PingoraBare => PINGORA_IP,
        Kind::Nginx => NGINX_IP,
        Kind::Haproxy => HAPROXY_IP,
    };
    let http = reserve(ip)?;
    let tls = reserve(ip)?;
    let (http_addr, tls_addr) = (http.addr, tls.addr);
    let threads = bench.proxy_threads.to_string();
    let ours = |command: &mut Command| {
        command.args(["--listen", &http_addr.to_string()]);
        command.args(["--tls-listen", &tls_addr.to_string()]);
        command.arg("--tls-cert").arg(&certificate.cert);
        command.arg("--tls-key").arg(&certificate.key);
        command.args(["--backend", &backend.to_string(), "--threads", &threads]);
    };
    let (name, mut command) = match kind {
        Kind::Stratus | Kind::StratusNoLog => {
            let mut command = Command::new(exe);
            command.arg("bench-ingress");
            ours(&mut command);
            if kind == Kind::Stratus {
                ("stratus ingress".to_string(), command)
            } else {
                command.arg("--no-access-log");
                ("stratus, no access log".to_string(), command)
            }
        }
        Kind::PingoraBare => {
            let mut command = Command::new(exe);
            command.arg("bench-pingora");
            ours(&mut command);
            ("pingora, no hooks".to_string(), command)
        }
        Kind::Nginx => {
            let conf = write_nginx_conf(dir, http_addr, tls_addr, backend, certificate, bench)?;
            let mut command = Command::new("nginx");
            command.args(["-p", &dir.display().to_string()]);
            command.args(["-c", &conf.display().to_string()]);
            (format!("nginx {}", version("nginx", &["-v"])), command)
        }
        Kind::Direct => unreachable!("the backend has no process of its own"),
        Kind::Haproxy => {
            let conf = write_haproxy_conf(dir, http_addr, tls_addr, backend, certificate, bench)?;
            let mut command = Command::new("haproxy");
            command.args(["-db", "-f", &conf.display().to_string()]);
            (format!("haproxy {}", version("haproxy", &["-v"])), command)
        }
    };
    let log = dir.join(format!("{kind:?}.log"));
    let mut process = Process::spawn(&name, &mut command, &log)?;
    wait_until_serving(http_addr, &mut process)?;
    wait_until_tls(tls_addr, &mut process)?;
    Ok(Target {
        name,
        kind,
        http: http_addr,
        tls: Some(tls_addr),
        process: Some(process),
        _ports: vec![http, tls],
    })
}

fn print_closed(bench: &IngressBench, figures: &LoadFigures) {
    println!(
        "\n{}: closed loop (wrk -c{}), medians over {} rounds of {} s:",
        figures.load,
        figures.load.connections,
        bench.rounds,
        bench.duration.as_secs_f64()
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>6}",
        "target", "req/s", "p50", "p99", "p99.9", "CPU/req", "cs/req", "RSS", "b.conns", "errors"
    );
    for figure in &figures.closed {
        let run = &figure.median;
        println!(
            "{:<26} {:>9.0} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>6}",
            figure.name,
            run.requests_per_sec,
            show(run.p50),
            show(run.p99),
            show(run.p999),
            run.cpu_per_request.map_or("-".into(), show),
            run.switches_per_request
                .map_or("-".into(), |s| format!("{s:.2}")),
            run.rss_bytes.map_or("-".into(), show_bytes),
            run.backend_connections,
            figure.errors
        );
    }
    let Some(best) = best_peer(&figures.closed) else {
        return;
    };
    let best_p99 = figures
        .closed
        .iter()
        .filter(|f| f.kind.is_peer())
        .map(|f| f.median.p99)
        .min()
        .unwrap_or_default();
    for ours in figures.closed.iter().filter(|f| f.kind.is_ours()) {
        println!(
            "{}: req/s {:.2}x {}'s, p99 {:.2}x the best peer's, CPU/req {}",
            ours.name,
            ours.median.requests_per_sec / best.median.requests_per_sec,
            best.name,
            ratio(ours.median.p99, best_p99),
            match (ours.median.cpu_per_request, best.median.cpu_per_request) {
                (Some(a), Some(b)) => format!("{:.2}x {}'s", ratio(a, b), best.name),
                _ => "-".into(),
            }
        );
    }
    println!(
        "(the load generator, the backend and the proxy share this machine's {} cores: only \
         ratios within one run mean something; RSS is summed over the proxy's processes)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
}

fn print_fixed(figures: &LoadFigures) {
    for (percent, runs) in &figures.fixed {
        let Some(first) = runs.first() else {
            continue;
        };
        println!(
            "\n{}: fixed rate {:.0} req/s ({percent} % of the best peer's maximum under oha), \
             oha with latency correction:",
            figures.load, first.offered
        );
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
            "target", "achieved", "p50", "p99", "p99.9", "CPU/req", "RSS", "errors"
        );
        for figure in runs {
            let run = &figure.run;
            println!(
                "{:<26} {:>9.0} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
                figure.name,
                run.requests_per_sec,
                show(run.p50),
                show(run.p99),
                show(run.p999),
                run.cpu_per_request.map_or("-".into(), show),
                run.rss_bytes.map_or("-".into(), show_bytes),
                run.errors
            );
        }
        let best_p99 = runs
            .iter()
            .filter(|f| f.kind.is_peer())
            .map(|f| f.run.p99)
            .min()
            .unwrap_or_default();
        for ours in runs.iter().filter(|f| f.kind.is_ours()) {
            println!(
                "{}: p99 {:.2}x the best peer's",
                ours.name,
                ratio(ours.run.p99, best_p99)
            );
        }
        let rows: Vec<(&str, &Run)> = runs.iter().map(|f| (f.name.as_str(), &f.run)).collect();
        print!("{}", latency_chart(&rows));
    }
}

/// Whether the ingress (with its access log) meets issue 13's goal: closed loop, req/s at
/// least the best peer's with a p99 no worse; at each fixed rate, a p99 no worse than
/// either peer's.
fn print_verdict(all: &[LoadFigures]) {
    println!();
    for figures in all {
        let ours = figures.closed.iter().find(|f| f.kind == Kind::Stratus);
        let (Some(ours), Some(best)) = (ours, best_peer(&figures.closed)) else {
            continue;
        };
        let best_p99 = figures
            .closed
            .iter()
            .filter(|f| f.kind.is_peer())
            .map(|f| f.median.p99)
            .min()
            .unwrap_or_default();
        let closed = ours.median.requests_per_sec >= best.median.requests_per_sec
            && ours.median.p99 <= best_p99;
        let fixed = figures.fixed.iter().all(|(_, runs)| {
            let ours = runs.iter().find(|f| f.kind == Kind::Stratus);
            ours.is_some_and(|ours| {
                runs.iter()
                    .filter(|f| f.kind.is_peer())
                    .all(|peer| ours.run.p99 <= peer.run.p99)
            })
        });
        println!(
            "goal, {}: closed loop {} ({:.2}x {}'s req/s, p99 {:.2}x the best peer's); fixed \
             rates {}",
            figures.load,
            if closed { "met" } else { "not met" },
            ours.median.requests_per_sec / best.median.requests_per_sec,
            best.name,
            ratio(ours.median.p99, best_p99),
            if figures.fixed.is_empty() {
                "not run"
            } else if fixed {
                "met"
            } else {
                "not met"
            }
        );
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// Bars of p50 (`-`), p99 (`=`) and p99.9 (`#`) on a log scale, one row per target.
pub fn latency_chart(rows: &[(&str, &Run)]) -> String {
    const WIDTH: usize = 56;
    let values = rows
        .iter()
        .flat_map(|(_, run)| [run.p50, run.p999])
        .filter(|d| !d.is_zero());
    let (Some(low), Some(high)) = (values.clone().min(), values.max()) else {
        return String::new();
    };
    let floor = 10f64.powf(low.as_secs_f64().log10().floor());
    let ceiling = 10f64
        .powf(high.as_secs_f64().log10().ceil())
        .max(floor * 10.0);
    let decades = (ceiling / floor).log10();
    let column = |d: Duration| -> usize {
        let x = (d.as_secs_f64().max(floor) / floor).log10() / decades;
        ((x * WIDTH as f64).round() as usize).min(WIDTH)
    };
    let mut out = String::new();
    for (name, run) in rows {
        let (a, b, c) = (column(run.p50), column(run.p99), column(run.p999));
        let bar: String = (1..=WIDTH)
            .map(|i| match i {
                i if i <= a => '-',
                i if i <= b => '=',
                i if i <= c => '#',
                _ => ' ',
            })
            .collect();
        let _ = writeln!(out, "  {name:<24} |{bar}|");
    }
    // The axis: a label at each decade.
    let mut axis = vec![' '; WIDTH + 12];
    let mut tick = floor;
    while tick <= ceiling * 1.0001 {
        let label = show(Duration::from_secs_f64(tick)).replace(".00", "");
        let at = column(Duration::from_secs_f64(tick));
        for (i, ch) in label.chars().enumerate() {
            if let Some(slot) = axis.get_mut(at + i) {
                *slot = ch;
            }
        }
        tick *= 10.0;
    }
    let axis: String = axis.into_iter().collect();
    let _ = writeln!(out, "  {:<24}  {}", "", axis.trim_end());
    let _ = writeln!(
        out,
        "  {:<24}  (log scale; - to p50, = to p99, # to p99.9)",
        ""
    );
    out
}

/// Per field median (each field on its own, so a round is not kept or dropped whole).
fn median_run(runs: &[Run]) -> Run {
    fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> Option<T> {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values.get(values.len() / 2).copied()
    }
    Run {
        requests_per_sec: median(runs.iter().map(|r| r.requests_per_sec).collect())
            .unwrap_or_default(),
        p50: median(runs.iter().map(|r| r.p50).collect()).unwrap_or_default(),
        p99: median(runs.iter().map(|r| r.p99).collect()).unwrap_or_default(),
        p999: median(runs.iter().map(|r| r.p999).collect()).unwrap_or_default(),
        errors: median(runs.iter().map(|r| r.errors).collect()).unwrap_or_default(),
        requests: median(runs.iter().map(|r| r.requests).collect()).unwrap_or_default(),
        cpu_per_request: median(runs.iter().filter_map(|r| r.cpu_per_request).collect()),
        switches_per_request: median(runs.iter().filter_map(|r| r.switches_per_request).collect()),
        rss_bytes: median(runs.iter().filter_map(|r| r.rss_bytes).collect()),
        backend_connections: median(runs.iter().map(|r| r.backend_connections).collect())
            .unwrap_or_default(),
    }
}

fn show(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1e6 {
        format!("{:.2} ms", micros / 1000.0)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

fn show_bytes(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// Installs wrk, nginx, HAProxy and openssl from the distribution when missing (Debian's
/// apt), and oha from crates.io (`cargo install oha`) when fixed rates are asked for.
fn install_missing(fixed_rates: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = ["wrk", "nginx", "haproxy", "openssl"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    if fixed_rates && !on_path("oha") {
        println!("installing oha (cargo install oha --locked; a few minutes)");
        let status = Command::new("cargo")
            .args(["install", "oha", "--locked"])
            .stdout(Stdio::null())
            .status()
            .context("cannot run cargo install")?;
        anyhow::ensure!(status.success(), "cargo install oha failed");
        anyhow::ensure!(
            on_path("oha"),
            "oha is installed but not on PATH (add ~/.cargo/bin)"
        );
    }
    Ok(())
}

fn apt_install(missing: &[&str]) -> anyhow::Result<()> {
    println!("installing {} (apt-get)", missing.join(", "));
    let sudo = !nix::unistd::geteuid().is_root();
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut command = if sudo {
            let mut command = Command::new("sudo");
            command.arg("apt-get");
            command
        } else {
            Command::new("apt-get")
        };
        // Package scripts must not start a system nginx or HAProxy on port 80.
        let status = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("RUNLEVEL", "1")
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get")?;
        anyhow::ensure!(status.success(), "apt-get {} failed", args.join(" "));
        Ok(())
    };
    run(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(missing);
    run(&args)?;
    for tool in missing {
        anyhow::ensure!(
            on_path(tool),
            "{tool} is still missing after apt-get install"
        );
    }
    Ok(())
}

/// A self-signed ECDSA P-256 certificate for [`HOST`], valid two days.
fn make_certificate(dir: &Path) -> anyhow::Result<Certificate> {
    let cert = dir.join("bench-cert.pem");
    let key = dir.join("bench-key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args([
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", &format!("/CN={HOST}")])
        .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("cannot run openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let combined = dir.join("bench-combined.pem");
    let mut both = std::fs::read(&cert)?;
    both.extend(std::fs::read(&key)?);
    std::fs::write(&combined, both)?;
    Ok(Certificate {
        cert,
        key,
        combined,
    })
}

fn on_path(tool: &str) -> bool {
    find_tool(tool).is_some()
}

/// Where `tool` is: on PATH, in the sbin folders, or in cargo's (`cargo install`).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .chain(cargo_bin)
        .map(|dir| dir.join(tool))
        .find(|file| file.is_file())
}

/// The first line of `tool`'s version output, trimmed to the version.
fn version(tool: &str, args: &[&str]) -> String {
    let Ok(out) = Command::new(tool).args(args).output() else {
        return String::new();
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let first = text.lines().next().unwrap_or_default();
    first
        .split(['/', ' '])
        .find(|word| word.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .and_then(|word| word.split('-').next())
        .unwrap_or_default()
        .to_string()
}

/// A free port on `ip`, kept bound (not listening) until dropped, so nothing else takes
/// it between here and the process that serves on it. That process binds it again with
/// `SO_REUSEPORT`, as the reservation is; a socket that does not listen gets none of its
/// connections.
struct Reserved {
    addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

fn reserve(ip: Ipv4Addr) -> anyhow::Result<Reserved> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .with_context(|| format!("cannot bind {ip}: is this loopback address up?"))?;
    Ok(Reserved {
        addr: socket.local_addr()?,
        _socket: socket,
    })
}

/// A process the bench started, stopped (SIGTERM, then SIGKILL) when dropped.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<Process> {
        let out = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> Option<Pid> {
        i32::try_from(self.child.id()).ok().map(Pid::from_raw)
    }

    /// An error with the end of the process's output when it has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let output = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = output.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A measured target: its plain and TLS addresses and the proxy process behind them
/// (none for the backend itself, which has no TLS address).
struct Target {
    name: String,
    kind: Kind,
    http: SocketAddr,
    tls: Option<SocketAddr>,
    process: Option<Process>,
    /// Dropped after the process (fields drop in order).
    _ports: Vec<Reserved>,
}

/// What a target's processes have used so far.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// User and system CPU time.
    cpu: Duration,
    /// Context switches of every thread, voluntary and not.
    switches: u64,
    /// Resident memory now.
    rss_bytes: u64,
}

impl Target {
    /// Where to send `load`, if this target serves its protocol.
    fn addr(&self, load: Load) -> Option<SocketAddr> {
        if load.tls { self.tls } else { Some(self.http) }
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_alive(),
            None => Ok(()),
        }
    }

    /// The proxy process's and its children's (nginx's workers) usage.
    fn usage(&self) -> Option<Usage> {
        let root = self.process.as_ref()?.pid()?.as_raw();
        usage_of_tree(root)
    }
}

/// CPU time, context switches and resident memory of `root` and every process whose
/// parent is `root`, from /proc.
fn usage_of_tree(root: i32) -> Option<Usage> {
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)?;
    let mut ticks = 0u64;
    let mut switches = 0u64;
    let mut rss_kb = 0u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) in its parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is the state (field 3): ppid is field 4, utime 14, stime 15.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let ppid = field(4).and_then(|p| i32::try_from(p).ok());
        if pid != root && ppid != Some(root) {
            continue;
        }
        ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
        let status = |path: &Path, key: &str| -> u64 {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| line.strip_prefix(key))
                .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        };
        rss_kb += status(&entry.path().join("status"), "VmRSS:");
        if let Ok(tasks) = std::fs::read_dir(entry.path().join("task")) {
            for task in tasks.flatten() {
                let path = task.path().join("status");
                switches += status(&path, "voluntary_ctxt_switches:")
                    + status(&path, "nonvoluntary_ctxt_switches:");
            }
        }
    }
    Some(Usage {
        cpu: Duration::from_secs_f64(ticks as f64 / ticks_per_sec as f64),
        switches,
        rss_bytes: rss_kb * 1024,
    })
}

/// Waits until `addr` answers a request for the bench app with 200.
fn wait_until_serving(addr: SocketAddr, process: &mut Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        process.check_alive()?;
        if get_ok(addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} does not answer 200 on {addr}", process.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `addr` answers a request for the bench app with 200 over TLS 1.3 (curl).
fn wait_until_tls(addr: SocketAddr, process: &mut Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        process.check_alive()?;
        let out = Command::new("curl")
            .args(["-sk", "--tlsv1.3", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Host: {HOST}"), &format!("https://{addr}/")])
            .output()
            .context("cannot run curl")?;
        if out.stdout == b"200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} does not answer 200 over TLS 1.3 on {addr}",
                process.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get_ok(addr: SocketAddr) -> anyhow::Result<()> {
    get(addr, "/").map(drop)
}

/// The body of a 200 answer to `GET path`.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "answered {}",
        answer.lines().next().unwrap_or("nothing")
    );
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// Connections the bench backend has accepted so far (itself excluded).
fn backend_connections(backend: SocketAddr) -> anyhow::Result<u64> {
    let body = get(backend, CONNECTIONS_PATH)?;
    Ok(body.trim().parse::<u64>()?.saturating_sub(1))
}

fn url(load: Load, addr: SocketAddr) -> String {
    format!("{}://{addr}/", if load.tls { "https" } else { "http" })
}

/// A closed-loop wrk run.
fn wrk(
    bench: &IngressBench,
    load: Load,
    addr: SocketAddr,
    duration: Duration,
    dir: &Path,
) -> anyhow::Result<Run> {
    let out = Command::new("wrk")
        .args([
            &format!("-t{}", bench.wrk_threads),
            &format!("-c{}", load.connections),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--timeout",
            "10s",
            "--latency",
            "-s",
        ])
        .arg(dir.join("percentiles.lua"))
        .args(["-H", &format!("Host: {HOST}"), &url(load, addr)])
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// Reads req/s, the latency percentiles (p99.9 from the bench's script when present), the
/// request count and the errors from wrk's `--latency` output.
pub fn parse_wrk(text: &str) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let mut seen = (false, false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => {
                run.requests_per_sec = value.parse()?;
                seen.0 = true;
            }
            ["50%", value] => {
                run.p50 = parse_latency(value)?;
                seen.1 = true;
            }
            ["99%", value] => {
                run.p99 = parse_latency(value)?;
                seen.2 = true;
            }
            ["bench-percentiles", p50, p99, p999] => {
                run.p50 = Duration::from_micros(p50.parse()?);
                run.p99 = Duration::from_micros(p99.parse()?);
                run.p999 = Duration::from_micros(p999.parse()?);
            }
            [count, "requests", "in", ..] => run.requests = count.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => run.errors += count.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.chunks(2) {
                    if let [_, count] = pair {
                        run.errors += count.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        seen == (true, true, true),
        "no Requests/sec or latency distribution"
    );
    Ok(run)
}

fn parse_latency(value: &str) -> anyhow::Result<Duration> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {value}"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    let secs = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => bail!("unknown unit in {value}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// An open-loop oha run at `rate` requests per second over `load.connections`
/// connections, latencies counted from when each request was due, not when it was sent;
/// without a rate, a closed loop over as many connections.
fn oha(load: Load, addr: SocketAddr, rate: Option<f64>, duration: Duration) -> anyhow::Result<Run> {
    let oha = find_tool("oha").context("oha is missing (cargo install oha --locked)")?;
    let mut command = Command::new(oha);
    command
        .args(["--no-tui", "-u", "us"])
        .arg("--wait-ongoing-requests-after-deadline")
        .args(["-z", &format!("{}s", duration.as_secs().max(1))])
        .args(["-c", &load.connections.to_string()])
        .args(["-H", &format!("Host: {HOST}")]);
    if let Some(rate) = rate {
        command.args(["-q", &format!("{rate:.0}"), "--latency-correction"]);
    }
    if load.tls {
        command.arg("--insecure");
    }
    let out = command
        .arg(url(load, addr))
        .stdin(Stdio::null())
        .output()
        .context("cannot run oha")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "oha failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_oha(&text).with_context(|| format!("cannot read oha's output:\n{text}"))
}

/// Reads req/s, p50, p99, p99.9, the answers and the errors from oha's text output
/// (`-u us`).
pub fn parse_oha(text: &str) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let mut seen = (false, false, false, false);
    let micros = |value: &str| -> anyhow::Result<Duration> {
        Ok(Duration::from_secs_f64(value.parse::<f64>()? / 1e6))
    };
    let mut in_errors = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => {
                run.requests_per_sec = value.parse()?;
                seen.0 = true;
            }
            ["50.00%", "in", value, "us"] if !seen.1 => {
                run.p50 = micros(value)?;
                seen.1 = true;
            }
            ["99.00%", "in", value, "us"] if !seen.2 => {
                run.p99 = micros(value)?;
                seen.2 = true;
            }
            ["99.90%", "in", value, "us"] if !seen.3 => {
                run.p999 = micros(value)?;
                seen.3 = true;
            }
            ["Error", "distribution:"] => in_errors = true,
            [status, count, "responses"] => {
                let count: u64 = count.parse()?;
                run.requests += count;
                let code: u16 = status.trim_matches(['[', ']']).parse()?;
                if code >= 400 {
                    run.errors += count;
                }
            }
            [count, ..] if in_errors && count.starts_with('[') => {
                run.errors += count.trim_matches(['[', ']']).parse::<u64>()?;
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        seen == (true, true, true, true),
        "no Requests/sec or response time distribution"
    );
    Ok(run)
}

/// nginx as an equivalent reverse proxy: Host routing, HTTP/1.1 to a keep-alive upstream
/// pool, the same forwarded headers and request id as the ingress, the access log on;
/// HTTPS with TLS 1.3 only (OpenSSL).
fn write_nginx_conf(
    dir: &Path,
    listen: SocketAddr,
    tls: SocketAddr,
    backend: SocketAddr,
    certificate: &Certificate,
    bench: &IngressBench,
) -> anyhow::Result<PathBuf> {
    let d = dir.display();
    let (cert, key) = (certificate.cert.display(), certificate.key.display());
    let mut conf = String::new();
    writeln!(
        conf,
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # nginx closes a client connection after 1,000 requests by default; the others do not.
    keepalive_requests 1000000;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    upstream app {{
        server {backend};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        # The bench holds the ports (bound, not listening) with SO_REUSEPORT.
        listen {listen} default_server reuseport;
        listen {tls} ssl default_server reuseport;
        return 404;
    }}
    server {{
        listen {listen};
        listen {tls} ssl;
        server_name {HOST};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id;
        }}
    }}
}}"#,
        workers = bench.proxy_threads,
    )?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// HAProxy as an equivalent reverse proxy: Host routing, `http-reuse always`, the same
/// forwarded headers and request id as the ingress, an access log line per request; HTTPS
/// with TLS 1.3 only (OpenSSL).
fn write_haproxy_conf(
    dir: &Path,
    listen: SocketAddr,
    tls: SocketAddr,
    backend: SocketAddr,
    certificate: &Certificate,
    bench: &IngressBench,
) -> anyhow::Result<PathBuf> {
    let mut conf = String::new();
    writeln!(
        conf,
        r#"global
    nbthread {threads}
    # Fits the usual 20,000 open files limit (HAProxy wants about 2 per connection).
    maxconn 8192
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive

frontend web
    # SO_REUSEPORT, as the bench's reservation of the ports (HAProxy's default on Linux).
    bind {listen}
    bind {tls} ssl crt {combined} ssl-min-ver TLSv1.3
    unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt%pid
    option forwardfor
    http-response set-header X-Request-Id %[unique-id]
    http-request return status 404 unless {{ req.hdr(host),field(1,:) -i {HOST} }}
    http-request set-header X-Request-Id %[unique-id]
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http unless {{ ssl_fc }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    use_backend app if {{ req.hdr(host),field(1,:) -i {HOST} }}

backend app
    http-reuse always
    server app1 {backend}"#,
        threads = bench.proxy_threads,
        combined = certificate.combined.display(),
    )?;
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// `testbed bench-backend`: answers every request with [`BODY`], keep-alive, until SIGTERM.
pub fn serve_backend(listen: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // SO_REUSEPORT: the bench keeps the port reserved with a socket of its own.
        let socket = if listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let accept = async {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        eprintln!("accept: {error}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let total = accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: Request<hyper::body::Incoming>| async move {
                            let body = if request.uri().path() == CONNECTIONS_PATH {
                                Bytes::from(total.to_string())
                            } else {
                                Bytes::from_static(BODY)
                            };
                            let mut response = Response::new(Full::new(body));
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("text/plain"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            () = accept => Ok(()),
            result = terminated() => result,
        }
    })
}

/// Where `testbed bench-ingress` and `testbed bench-pingora` serve HTTPS.
#[derive(Debug, Clone)]
pub struct BenchTls {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `testbed bench-ingress`: the Stratus ingress with one app, `bench`, whose only replica is
/// `backend`, until SIGTERM; plain HTTP on `listen` and HTTPS on `tls`'s address if given.
/// With `access_log` the access log goes to stderr through `tracing` at `info`, as
/// `stratus agent` does.
pub fn serve_ingress(
    listen: SocketAddr,
    tls: Option<BenchTls>,
    backend: SocketAddr,
    threads: usize,
    access_log: bool,
) -> anyhow::Result<()> {
    // As `stratus agent`: STRATUS_LOG, `info` by default, through the same writer.
    let mut filter = std::env::var("STRATUS_LOG").unwrap_or_else(|_| "info".into());
    if !access_log {
        filter.push_str(",ingress::access=off");
    }
    let _log = node::logging::init(tracing_subscriber::EnvFilter::new(filter));
    let record = ContainerRecord {
        id: "bench-0".into(),
        app: APP.into(),
        release: 1,
        replica: 0,
        addr: backend,
        state: ContainerState::Running,
        health: ContainerHealth::Healthy,
        detail: None,
    };
    let table = RouteTable::build(
        "localhost",
        std::iter::once(RouteApp::new(APP)),
        [("bench-node", &record)],
    );
    let listeners = Listeners {
        http: listen,
        tls: tls.map(|tls| ingress::TlsListener {
            addr: tls.listen,
            certs: vec![CertSpec {
                domain: HOST.to_string(),
                cert: tls.cert,
                key: tls.key,
            }],
        }),
        admin: None,
    };
    // The agent's own runtime, which feeds routes; here it only waits for SIGTERM.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let routes = Arc::new(RouteState::new(BalancerConfig::default()));
        routes.update(table).await;
        let handle =
            ingress::build_reusing(&listeners, routes, ProxyConfig::default(), threads)?.spawn()?;
        terminated().await?;
        tokio::task::spawn_blocking(move || handle.stop(ingress::Stop::Fast)).await?;
        Ok(())
    })
}

async fn terminated() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.252.1:4000/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   710.40us  300.11us  12.01ms   90.00%
    Req/Sec    40.00k     2.00k   45.00k    70.00%
  Latency Distribution
     50%  635.91us
     75%  712.00us
     90%    1.01ms
     99%    2.53ms
  800000 requests in 10.00s, 100.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  80000.12
Transfer/sec:     10.00MB
";
        let run = parse_wrk(text).unwrap();
        assert!((run.requests_per_sec - 80000.12).abs() < 1e-6);
        assert_eq!(run.p50, Duration::from_nanos(635_910));
        assert_eq!(run.p99, Duration::from_micros(2530));
        assert_eq!(run.p999, Duration::ZERO);
        assert_eq!(run.requests, 800_000);
        assert_eq!(run.errors, 12);
        let with_script = format!("{text}bench-percentiles 636 2531 9870\n");
        let run = parse_wrk(&with_script).unwrap();
        assert_eq!(run.p50, Duration::from_micros(636));
        assert_eq!(run.p999, Duration::from_micros(9870));
    }

    #[test]
    fn wrk_output_without_percentiles_is_refused() {
        assert!(parse_wrk("Requests/sec: 10.0\n").is_err());
    }

    #[test]
    fn reads_oha_output() {
        let text = "Summary:
  Success rate:\t100.00%
  Total:\t10001.2345 us
  Requests/sec:\t19998.5000

Response time distribution:
  10.00% in 120.0000 us
  50.00% in 210.5000 us
  99.00% in 1500.0000 us
  99.90% in 4200.2500 us
  99.99% in 9000.0000 us

Status code distribution:
  [200] 199980 responses
  [502] 5 responses

Error distribution:
  [3] connection closed before message completed
";
        let run = parse_oha(text).unwrap();
        assert!((run.requests_per_sec - 19998.5).abs() < 1e-6);
        assert_eq!(run.p50, Duration::from_nanos(210_500));
        assert_eq!(run.p99, Duration::from_micros(1500));
        assert_eq!(run.p999, Duration::from_nanos(4_200_250));
        assert_eq!(run.requests, 199_985);
        assert_eq!(run.errors, 8);
        assert!(parse_oha("Requests/sec:\t1.0\n").is_err());
    }

    #[test]
    fn loads_parse_and_print() {
        let load: Load = "https:1000".parse().unwrap();
        assert_eq!(
            load,
            Load {
                tls: true,
                connections: 1000
            }
        );
        assert_eq!(load.to_string(), "HTTPS (TLS 1.3), 1000 connections");
        assert!("http:0".parse::<Load>().is_err());
        assert!("ftp:10".parse::<Load>().is_err());
        assert!("http".parse::<Load>().is_err());
    }

    #[test]
    fn the_latency_chart_orders_its_bars() {
        let run = |p50: u64, p99: u64, p999: u64| Run {
            p50: Duration::from_micros(p50),
            p99: Duration::from_micros(p99),
            p999: Duration::from_micros(p999),
            ..Run::default()
        };
        let (fast, slow) = (run(100, 1000, 2000), run(200, 20_000, 90_000));
        let chart = latency_chart(&[("fast", &fast), ("slow", &slow)]);
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines.len(), 4, "{chart}");
        let width = |line: &str, c: char| line.chars().filter(|&x| x == c).count();
        assert!(
            width(lines[0], '#') + width(lines[0], '=')
                < width(lines[1], '#') + width(lines[1], '=')
        );
        assert!(
            lines[2].contains("100 µs") && lines[2].contains("100 ms"),
            "{chart}"
        );
    }
}
