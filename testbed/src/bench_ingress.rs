//! `bench ingress`: the Stratus ingress against nginx and HAProxy, each in front of the same
//! backend, loaded by wrk.
//!
//! Every party is a process of its own: the backend (`testbed bench-backend`, a small hyper
//! server), the ingress (`testbed bench-ingress`, [`ingress::run`] with a static route table
//! for one app, Host routing and the access log as in production), nginx and HAProxy
//! (configured as equivalent reverse proxies, generated configs in a temporary folder), and
//! wrk. The targets are measured in turns, round after round, and the figures are the
//! medians over rounds. On a small machine wrk, the backend and the proxy share the cores,
//! so only the ratios between targets mean something.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ingress::{BalancerConfig, ProxyConfig, RouteApp, RouteState, RouteTable};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::{ContainerHealth, ContainerRecord, ContainerState};
use tokio::time::Instant;

/// The app the bench routes to, and the Host header wrk sends.
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

/// How `bench ingress` loads each target.
#[derive(Debug, Clone)]
pub struct IngressBench {
    pub rounds: usize,
    pub duration: Duration,
    pub connections: usize,
    /// wrk's threads.
    pub wrk_threads: usize,
    /// Worker threads of every proxy (the agent gives the ingress 2).
    pub proxy_threads: usize,
    /// The targets measured, in this order within a round.
    pub targets: Vec<Kind>,
}

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkRun {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Socket errors plus answers that were not 2xx or 3xx.
    pub errors: u64,
    pub requests: u64,
    /// CPU time the target's processes (the proxy, not the backend) spent per request.
    pub cpu_per_request: Option<Duration>,
    /// Connections the backend accepted during the run: how well the proxy reuses its
    /// upstream connections (wrk's own for the backend itself).
    pub backend_connections: u64,
}

/// Medians over rounds for one target.
#[derive(Debug, Clone)]
pub struct TargetFigures {
    pub name: String,
    pub kind: Kind,
    pub median: WrkRun,
    pub errors: u64,
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The backend itself, no proxy.
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
}

/// Runs the whole bench and prints the figures.
pub fn ingress(bench: &IngressBench) -> anyhow::Result<Vec<TargetFigures>> {
    anyhow::ensure!(bench.rounds >= 1, "need at least one round");
    anyhow::ensure!(
        bench.connections >= bench.wrk_threads,
        "wrk needs at least one connection per thread"
    );
    install_missing()?;
    let dir = tempfile::Builder::new()
        .prefix("stratus-ingbench")
        .tempdir()?;
    let exe = std::env::current_exe().context("cannot find the testbed binary")?;

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
            targets.push(start_target(kind, &exe, dir.path(), backend_addr, bench)?);
        }
    }
    println!(
        "wrk -t{} -c{} -d{}s --latency, Host: {HOST}; proxies with {} worker threads; {} rounds",
        bench.wrk_threads,
        bench.connections,
        bench.duration.as_secs_f64(),
        bench.proxy_threads,
        bench.rounds
    );
    // Warm every target up once: connection pools filled, caches hot, JIT-free but page
    // faults paid.
    for target in &targets {
        wrk(bench, target.addr, Duration::from_secs(2))?;
    }
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); targets.len()];
    for round in 0..bench.rounds {
        // Rotate the order so no target always runs first (or right after a heavy one).
        for offset in 0..targets.len() {
            let index = (round + offset) % targets.len();
            let target = &mut targets[index];
            target.ensure_running()?;
            let cpu_before = target.cpu_time();
            let connections_before = backend_connections(backend_addr)?;
            let mut run = wrk(bench, target.addr, bench.duration)?;
            run.backend_connections =
                backend_connections(backend_addr)?.saturating_sub(connections_before + 1);
            if let (Some(before), Some(after)) = (cpu_before, target.cpu_time())
                && run.requests > 0
            {
                run.cpu_per_request =
                    Some(after.saturating_sub(before) / u32::try_from(run.requests)?);
            }
            println!(
                "round {}  {:<24} {:>9.0} req/s  p50 {:>8}  p99 {:>8}{}",
                round + 1,
                target.name,
                run.requests_per_sec,
                show(run.p50),
                show(run.p99),
                if run.errors > 0 {
                    format!("  {} errors", run.errors)
                } else {
                    String::new()
                }
            );
            runs[index].push(run);
        }
    }
    let figures: Vec<TargetFigures> = targets
        .iter()
        .zip(&runs)
        .map(|(target, runs)| TargetFigures {
            name: target.name.clone(),
            kind: target.kind,
            median: median_run(runs),
            errors: runs.iter().map(|r| r.errors).sum(),
        })
        .collect();
    print_figures(bench, &figures);
    // The proxies go first, then their backend.
    drop(targets);
    drop(backend);
    drop(backend_port);
    Ok(figures)
}

/// Starts the process behind `kind` (none for the backend itself) and waits until it
/// answers.
fn start_target(
    kind: Kind,
    exe: &Path,
    dir: &Path,
    backend: SocketAddr,
    bench: &IngressBench,
) -> anyhow::Result<Target> {
    let ip = match kind {
        Kind::Direct => {
            return Ok(Target {
                name: "backend direct".into(),
                kind,
                addr: backend,
                process: None,
                _port: None,
            });
        }
        Kind::Stratus => INGRESS_IP,
        Kind::StratusNoLog => INGRESS_NOLOG_IP,
        Kind::PingoraBare => PINGORA_IP,
        Kind::Nginx => NGINX_IP,
        Kind::Haproxy => HAPROXY_IP,
    };
    let port = reserve(ip)?;
    let addr = port.addr;
    let threads = bench.proxy_threads.to_string();
    let (name, mut command) = match kind {
        Kind::Stratus | Kind::StratusNoLog => {
            let mut command = Command::new(exe);
            command.args(["bench-ingress", "--listen", &addr.to_string()]);
            command.args(["--backend", &backend.to_string(), "--threads", &threads]);
            if kind == Kind::Stratus {
                ("stratus ingress".to_string(), command)
            } else {
                command.arg("--no-access-log");
                ("stratus, no access log".to_string(), command)
            }
        }
        Kind::PingoraBare => {
            let mut command = Command::new(exe);
            command.args(["bench-pingora", "--listen", &addr.to_string()]);
            command.args(["--backend", &backend.to_string(), "--threads", &threads]);
            ("pingora, no hooks".to_string(), command)
        }
        Kind::Nginx => {
            let conf = write_nginx_conf(dir, addr, backend, bench)?;
            let mut command = Command::new("nginx");
            command.args(["-p", &dir.display().to_string()]);
            command.args(["-c", &conf.display().to_string()]);
            (format!("nginx {}", version("nginx", &["-v"])), command)
        }
        Kind::Direct => unreachable!("the backend has no process of its own"),
        Kind::Haproxy => {
            let conf = write_haproxy_conf(dir, addr, backend, bench)?;
            let mut command = Command::new("haproxy");
            command.args(["-db", "-f", &conf.display().to_string()]);
            (format!("haproxy {}", version("haproxy", &["-v"])), command)
        }
    };
    let log = dir.join(format!("{kind:?}.log"));
    Target::start(&name, kind, port, &mut command, &log)
}

fn print_figures(bench: &IngressBench, figures: &[TargetFigures]) {
    println!(
        "\nmedians over {} rounds of {} s:",
        bench.rounds,
        bench.duration.as_secs_f64()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>14} {:>13} {:>8}",
        "target", "req/s", "p50", "p99", "proxy CPU/req", "backend conns", "errors"
    );
    for figure in figures {
        println!(
            "{:<26} {:>10.0} {:>10} {:>10} {:>14} {:>13} {:>8}",
            figure.name,
            figure.median.requests_per_sec,
            show(figure.median.p50),
            show(figure.median.p99),
            figure.median.cpu_per_request.map_or("-".into(), show),
            figure.median.backend_connections,
            figure.errors
        );
    }
    let peers: Vec<&TargetFigures> = figures
        .iter()
        .filter(|f| matches!(f.kind, Kind::Nginx | Kind::Haproxy))
        .collect();
    let best_rps = peers.iter().max_by(|a, b| {
        a.median
            .requests_per_sec
            .total_cmp(&b.median.requests_per_sec)
    });
    let best_p99 = peers.iter().min_by_key(|f| f.median.p99);
    let (Some(best_rps), Some(best_p99)) = (best_rps, best_p99) else {
        return;
    };
    for ours in figures.iter().filter(|f| {
        matches!(
            f.kind,
            Kind::Stratus | Kind::StratusNoLog | Kind::PingoraBare
        )
    }) {
        println!(
            "{}: throughput {:.2}x {}, p99 {:.2}x {}'s",
            ours.name,
            ours.median.requests_per_sec / best_rps.median.requests_per_sec,
            best_rps.name,
            ours.median.p99.as_secs_f64() / best_p99.median.p99.as_secs_f64().max(1e-9),
            best_p99.name,
        );
    }
    println!(
        "wrk, the backend and the proxy share this machine's {} cores: absolute figures are \
         the machine's, only the ratios between targets matter",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
}

/// Per field median (each field on its own, so a round is not kept or dropped whole).
fn median_run(runs: &[WrkRun]) -> WrkRun {
    fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> Option<T> {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values.get(values.len() / 2).copied()
    }
    WrkRun {
        requests_per_sec: median(runs.iter().map(|r| r.requests_per_sec).collect())
            .unwrap_or_default(),
        p50: median(runs.iter().map(|r| r.p50).collect()).unwrap_or_default(),
        p99: median(runs.iter().map(|r| r.p99).collect()).unwrap_or_default(),
        errors: median(runs.iter().map(|r| r.errors).collect()).unwrap_or_default(),
        requests: median(runs.iter().map(|r| r.requests).collect()).unwrap_or_default(),
        cpu_per_request: median(runs.iter().filter_map(|r| r.cpu_per_request).collect()),
        backend_connections: median(runs.iter().map(|r| r.backend_connections).collect())
            .unwrap_or_default(),
    }
}

fn show(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

/// Installs wrk, nginx and HAProxy from the distribution when missing (Debian's apt).
fn install_missing() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["wrk", "nginx", "haproxy"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
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
    args.extend(&missing);
    run(&args)?;
    for tool in missing {
        anyhow::ensure!(
            on_path(tool),
            "{tool} is still missing after apt-get install"
        );
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(tool).is_file())
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

/// A measured address, and the proxy process behind it (none for the backend itself).
struct Target {
    name: String,
    kind: Kind,
    addr: SocketAddr,
    process: Option<Process>,
    /// Dropped after the process (fields drop in order).
    _port: Option<Reserved>,
}

impl Target {
    fn start(
        name: &str,
        kind: Kind,
        port: Reserved,
        command: &mut Command,
        log: &Path,
    ) -> anyhow::Result<Target> {
        let mut process = Process::spawn(name, command, log)?;
        wait_until_serving(port.addr, &mut process)?;
        Ok(Target {
            name: name.to_string(),
            kind,
            addr: port.addr,
            process: Some(process),
            _port: Some(port),
        })
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_alive(),
            None => Ok(()),
        }
    }

    /// CPU time of the proxy process and its children (nginx's and HAProxy's workers).
    fn cpu_time(&self) -> Option<Duration> {
        let root = self.process.as_ref()?.pid()?.as_raw();
        cpu_time_of_tree(root)
    }
}

/// User + system time of `root` and every process whose parent is `root`, from /proc.
fn cpu_time_of_tree(root: i32) -> Option<Duration> {
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)?;
    let mut pids = HashSet::from([root]);
    let mut ticks = 0u64;
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
        if pid == root || ppid == Some(root) {
            pids.insert(pid);
            ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
        }
    }
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_sec as f64))
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

fn wrk(bench: &IngressBench, addr: SocketAddr, duration: Duration) -> anyhow::Result<WrkRun> {
    let out = Command::new("wrk")
        .args([
            &format!("-t{}", bench.wrk_threads),
            &format!("-c{}", bench.connections),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
            "-H",
            &format!("Host: {HOST}"),
            &format!("http://{addr}/"),
        ])
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

/// Reads req/s, the 50th and 99th latency percentiles, the request count and the errors
/// from wrk's `--latency` output.
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun::default();
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

/// nginx as an equivalent reverse proxy: Host routing, HTTP/1.1 to a keep-alive upstream
/// pool, the same forwarded headers and request id as the ingress, the access log on.
fn write_nginx_conf(
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    bench: &IngressBench,
) -> anyhow::Result<PathBuf> {
    let d = dir.display();
    let mut conf = String::new();
    writeln!(
        conf,
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # nginx closes a client connection after 1,000 requests by default; the others do not.
    keepalive_requests 1000000;
    upstream app {{
        server {backend};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        # The bench holds the port (bound, not listening) with SO_REUSEPORT.
        listen {listen} default_server reuseport;
        return 404;
    }}
    server {{
        listen {listen};
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
/// forwarded headers and request id as the ingress, an access log line per request.
fn write_haproxy_conf(
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    bench: &IngressBench,
) -> anyhow::Result<PathBuf> {
    let mut conf = String::new();
    writeln!(
        conf,
        r#"global
    nbthread {threads}
    # Fits the usual 20,000 open files limit (HAProxy wants about 2 per connection).
    maxconn 4096
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
    # SO_REUSEPORT, as the bench's reservation of the port (HAProxy's default on Linux).
    bind {listen}
    unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt%pid
    option forwardfor
    http-response set-header X-Request-Id %[unique-id]
    http-request return status 404 unless {{ req.hdr(host),field(1,:) -i {HOST} }}
    http-request set-header X-Request-Id %[unique-id]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    use_backend app if {{ req.hdr(host),field(1,:) -i {HOST} }}

backend app
    http-reuse always
    server app1 {backend}"#,
        threads = bench.proxy_threads,
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

/// `testbed bench-ingress`: the Stratus ingress with one app, `bench`, whose only replica is
/// `backend`, until SIGTERM. With `access_log` the access log goes to stderr through
/// `tracing` at `info`, as `stratus agent` does.
pub fn serve_ingress(
    listen: SocketAddr,
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
    // The agent's own runtime, which feeds routes; here it only waits for SIGTERM.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let routes = Arc::new(RouteState::new(BalancerConfig::default()));
        routes.update(table).await;
        let handle = ingress::run(listen, routes, ProxyConfig::default(), threads).spawn()?;
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
        assert_eq!(run.requests, 800_000);
        assert_eq!(run.errors, 12);
    }

    #[test]
    fn wrk_output_without_percentiles_is_refused() {
        assert!(parse_wrk("Requests/sec: 10.0\n").is_err());
    }
}
