//! `testbed`: start a local cluster, or print benchmark figures.

/// As the `stratus` binary, so that `bench ingress` measures the allocator that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use testbed::bench;
use testbed::bench_build::{self, BuildBench};
use testbed::bench_ingress::{self, IngressBench};
use testbed::bench_pingora;
use testbed::harness::LocalCluster;

#[derive(Parser)]
#[command(name = "testbed", about = "Local Stratus clusters and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start agents on 127.0.0.2, 127.0.0.3, ..., deploy examples/hello, keep them running until Ctrl-C
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Print benchmark figures
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// `bench ingress`'s backend: a small fixed answer to every request, until SIGTERM
    #[command(hide = true)]
    BenchBackend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// `bench ingress`'s ingress: one app, `bench`, on one backend, until SIGTERM
    #[command(hide = true)]
    BenchIngress {
        #[command(flatten)]
        proxy: BenchProxy,
        #[arg(long)]
        no_access_log: bool,
    },
    /// `bench ingress`'s bare Pingora proxy to one backend, until killed
    #[command(hide = true)]
    BenchPingora {
        #[command(flatten)]
        proxy: BenchProxy,
    },
}

/// Where one of `bench ingress`'s proxies listens and what it proxies to.
#[derive(clap::Args)]
struct BenchProxy {
    #[arg(long)]
    listen: SocketAddr,
    /// HTTPS too, here (with --tls-cert and --tls-key)
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
    #[arg(long)]
    backend: SocketAddr,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

impl BenchProxy {
    fn tls(&self) -> Option<bench_ingress::BenchTls> {
        Some(bench_ingress::BenchTls {
            listen: self.tls_listen?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

#[derive(Subcommand)]
enum Bench {
    /// Rounds to spread a key and bytes per node per round, simulated at 100, 500, 1,000 nodes
    Gossip {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = node::config::DEFAULT_GOSSIP_INTERVAL_MS)]
        interval_ms: u64,
        #[arg(long, default_value_t = 60)]
        max_rounds: u32,
    },
    /// Cost of sealing and opening gossip datagrams
    Seal,
    /// Time from the first byte of an upload to every replica healthy, on 3 real agents
    Deploy {
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Approximate bundle size
        #[arg(long, default_value_t = 1 << 20)]
        bundle_bytes: usize,
    },
    /// Time from kill -9 of an agent to every peer reporting it dead, on real agents
    Detect {
        #[arg(long, default_value_t = 5)]
        agents: usize,
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Keep both cores busy meanwhile and count false deaths
        #[arg(long)]
        busy: bool,
        /// Extra flags for every agent, e.g. --agent-args=--phi-threshold=10
        #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
        agent_args: Vec<String>,
    },
    /// Kill -9 of a host running a replica (agent and containers) under traffic through an
    /// ingress: time until the ingress stops sending to it and until replacements are healthy
    Failover {
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Agents run on 127.0.NET.x
        #[arg(long, default_value_t = 48)]
        net: u8,
    },
    /// Deploys from source on 3 agents with a dockerd each: cold Flask build, code-only
    /// redeploy, and a ~100 MB image spread to 2 nodes against docker save | docker load
    Build {
        /// Agents run on 127.0.NET.x
        #[arg(long, default_value_t = 249)]
        net: u8,
        /// Cold builds of examples/flask (each downloads its wheels from PyPI)
        #[arg(long, default_value_t = 3)]
        cold_rounds: usize,
        /// Code-only redeploys (app.py changed) of the last cold app
        #[arg(long, default_value_t = 5)]
        redeploy_rounds: usize,
        /// Spread rounds, each a new app with a new random layer on 3 replicas
        #[arg(long, default_value_t = 3)]
        spread_rounds: usize,
        /// Size of the spread image's random layer, in MiB
        #[arg(long, default_value_t = 100)]
        spread_mib: u64,
    },
    /// DNS queries/s of one agent's server on one core (dnsperf), and how soon answers
    /// drop a dead node's replicas
    Dns {
        /// Length of the dnsperf run, e.g. 10s
        #[arg(long, default_value = "10s", value_parser = parse_seconds)]
        duration: Duration,
        /// Apps in the zone, each asked for A, SRV and a missing name
        #[arg(long, default_value_t = 100)]
        apps: usize,
        /// Replicas of each app
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// dnsperf's clients (sockets)
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Freshness trials (0: throughput only)
        #[arg(long, default_value_t = 5)]
        trials: usize,
    },
    /// What the node-local balancer (http://APP.internal/) adds to an app-to-app call,
    /// against a direct call to the replica, from a container on the tenant's network
    Internal {
        /// Rounds, each timing both paths
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Sequential requests per path and round, on one keep-alive connection
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// The agent runs on 10.213.NET.2 (added to lo for the run)
        #[arg(long, default_value_t = 56)]
        net: u8,
    },
    /// Requests/s and latency of the ingress, nginx and HAProxy in front of one backend:
    /// closed loop (wrk) and open loop at fixed rates (oha), over HTTP and HTTPS
    Ingress {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Length of each closed-loop (wrk) run, e.g. 10s
        #[arg(long, default_value = "10s", value_parser = parse_seconds)]
        duration: Duration,
        /// Loads, each `http:CONNECTIONS` or `https:CONNECTIONS` (TLS 1.3)
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "http:64,https:64,https:1000"
        )]
        loads: Vec<bench_ingress::Load>,
        /// Fixed rates, in percent of the best peer's closed-loop maximum under each load
        /// (`--fixed-rates 0`: closed loop only)
        #[arg(long, value_delimiter = ',', default_value = "50,80")]
        fixed_rates: Vec<u32>,
        /// Length of each fixed-rate (oha) run
        #[arg(long, default_value = "10s", value_parser = parse_seconds)]
        fixed_duration: Duration,
        /// wrk's threads
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Worker threads of every proxy (the agent runs the ingress on 2)
        #[arg(long, default_value_t = 2)]
        proxy_threads: usize,
        /// What to measure (default: all)
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = bench_ingress::Kind::ALL)]
        targets: Vec<bench_ingress::Kind>,
    },
}

/// Whole seconds, with or without an `s`.
fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .strip_suffix('s')
        .unwrap_or(value)
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("not a number of seconds: {value}"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { nodes } => up(nodes),
        Command::BenchBackend { listen, threads } => bench_ingress::serve_backend(listen, threads),
        Command::BenchIngress {
            proxy,
            no_access_log,
        } => bench_ingress::serve_ingress(
            proxy.listen,
            proxy.tls(),
            proxy.backend,
            proxy.threads,
            !no_access_log,
        ),
        Command::BenchPingora { proxy } => {
            bench_pingora::serve(proxy.listen, proxy.tls(), proxy.backend, proxy.threads)
        }
        Command::Bench {
            which:
                Bench::Ingress {
                    rounds,
                    duration,
                    loads,
                    fixed_rates,
                    fixed_duration,
                    threads,
                    proxy_threads,
                    targets,
                },
        } => {
            bench_ingress::ingress(&IngressBench {
                rounds,
                duration,
                wrk_threads: threads,
                proxy_threads,
                targets,
                loads,
                fixed_rates,
                fixed_duration,
            })?;
            Ok(())
        }
        Command::Bench {
            which:
                Bench::Gossip {
                    nodes,
                    interval_ms,
                    max_rounds,
                },
        } => {
            bench::gossip(nodes, Duration::from_millis(interval_ms), max_rounds)?;
            Ok(())
        }
        Command::Bench { which: Bench::Seal } => bench::seal(),
        Command::Bench {
            which:
                Bench::Build {
                    net,
                    cold_rounds,
                    redeploy_rounds,
                    spread_rounds,
                    spread_mib,
                },
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(bench_build::build(&BuildBench {
                net,
                cold_rounds,
                redeploy_rounds,
                spread_rounds,
                spread_mib,
            }))?;
            bench_build::print_report(&report);
            Ok(())
        }
        Command::Bench {
            which: Bench::Deploy { runs, bundle_bytes },
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let mut timings = runtime.block_on(bench::deploy(251, runs, bundle_bytes))?;
            let max = timings.iter().max().copied().unwrap_or_default();
            let median = bench::median(&mut timings);
            println!(
                "first byte -> every replica healthy: median {:.0} ms, max {:.0} ms over {} runs (3 agents, 2 replicas, {} KiB of padding)",
                median.as_secs_f64() * 1000.0,
                max.as_secs_f64() * 1000.0,
                timings.len(),
                bundle_bytes / 1024
            );
            Ok(())
        }
        Command::Bench {
            which:
                Bench::Detect {
                    agents,
                    trials,
                    busy,
                    agent_args,
                },
        } => {
            anyhow::ensure!(agents >= 2, "need at least 2 agents");
            let runtime = tokio::runtime::Runtime::new()?;
            let mut report =
                runtime.block_on(bench::detect(250, agents, trials, busy, agent_args))?;
            let max = report.detections.iter().max().copied().unwrap_or_default();
            let median = bench::median(&mut report.detections);
            println!(
                "kill -9 -> dead on all peers: median {:.2} s, max {:.2} s over {} trials on {} agents{}; false deaths: {}",
                median.as_secs_f64(),
                max.as_secs_f64(),
                report.detections.len(),
                agents,
                if busy { " with both cores busy" } else { "" },
                report.false_deaths
            );
            Ok(())
        }
        Command::Bench {
            which:
                Bench::Dns {
                    duration,
                    apps,
                    replicas,
                    clients,
                    trials,
                },
        } => {
            let report = testbed::bench_dns::throughput(duration, apps, replicas, clients)?;
            println!(
                "dns: {:.0} queries/s on one core (goal >= 50000), average latency {:.3} ms, {} of {} lost; {apps} apps of {replicas} replicas, {clients} dnsperf clients, {} s",
                report.queries_per_second,
                report.average_latency_ms,
                report.lost,
                report.sent,
                duration.as_secs()
            );
            if trials > 0 {
                let runtime = tokio::runtime::Runtime::new()?;
                let results = runtime.block_on(testbed::bench_dns::freshness(trials))?;
                let mut stops: Vec<Duration> = results.iter().map(|t| t.stop_to_answer).collect();
                let mut views: Vec<f64> = results.iter().map(|t| t.view_to_answer_ms).collect();
                views.sort_by(f64::total_cmp);
                let median_stop = bench::median(&mut stops);
                println!(
                    "dns freshness: node stop -> answer without its replicas: median {:.0} ms, max {:.0} ms; node 0's view -> answer: median {:.1} ms, max {:.1} ms over {} trials (goal: within one gossip round, 100 ms here)",
                    median_stop.as_secs_f64() * 1000.0,
                    stops
                        .iter()
                        .max()
                        .copied()
                        .unwrap_or_default()
                        .as_secs_f64()
                        * 1000.0,
                    views.get(views.len() / 2).copied().unwrap_or_default(),
                    views.last().copied().unwrap_or_default(),
                    results.len()
                );
            }
            Ok(())
        }
        Command::Bench {
            which:
                Bench::Internal {
                    rounds,
                    requests,
                    net,
                },
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(testbed::bench_internal::internal(
                &testbed::bench_internal::InternalBench {
                    net,
                    rounds,
                    requests,
                },
            ))?;
            let micros = |d: Duration| d.as_secs_f64() * 1e6;
            for (name, p) in [
                ("direct to the replica", report.direct),
                ("through APP.internal", report.balanced),
            ] {
                println!(
                    "app-to-app {name:<22}: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs",
                    micros(p.p50),
                    micros(p.p90),
                    micros(p.p99)
                );
            }
            println!(
                "node-local balancer adds {:.0} µs at p50 (goal <= 150 µs); {} requests per path from a container on the tenant network, {rounds} alternating rounds; APP.internal resolved to {}",
                micros(report.added_p50()),
                report.samples,
                report.internal_ip
            );
            Ok(())
        }
        Command::Bench {
            which: Bench::Failover { trials, net },
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let trials = runtime.block_on(testbed::bench_failover::failover(net, trials))?;
            print_failover(&trials);
            Ok(())
        }
    }
}

fn print_failover(trials: &[testbed::bench_failover::FailoverTrial]) {
    let summary = |name: &str, goal: &str, mut values: Vec<Duration>| {
        let max = values.iter().max().copied().unwrap_or_default();
        let median = bench::median(&mut values);
        println!(
            "{name}: median {:.2} s, max {:.2} s over {} trials (goal {goal})",
            median.as_secs_f64(),
            max.as_secs_f64(),
            values.len()
        );
    };
    println!("\n5 agents + an ingress member, 3 replicas, kill -9 of a host running one:");
    for (index, trial) in trials.iter().enumerate() {
        println!(
            "  trial {}: {} | traffic off {:.2} s | route gone {:.2} s | healthy {:.2} s | {} of {} requests failed",
            index + 1,
            trial.victim,
            trial.traffic_off.as_secs_f64(),
            trial.route_gone.as_secs_f64(),
            trial.healthy.as_secs_f64(),
            trial.failed_requests,
            trial.requests
        );
    }
    summary(
        "(a) kill -> the ingress no longer sends to the host",
        "<= 3 s",
        trials.iter().map(|t| t.traffic_off).collect(),
    );
    summary(
        "    kill -> its replicas gone from the ingress's view",
        "-",
        trials.iter().map(|t| t.route_gone).collect(),
    );
    summary(
        "(b) kill -> replacement replicas healthy",
        "<= 10 s",
        trials.iter().map(|t| t.healthy).collect(),
    );
    let failed: usize = trials.iter().map(|t| t.failed_requests).sum();
    let total: usize = trials.iter().map(|t| t.requests).sum();
    println!("requests failed between a kill and recovery: {failed} of {total}");
}

/// Where `testbed up` runs the ingress (embedded in the first agent).
const INGRESS: &str = "127.0.0.2:8080";
/// Where the quick start's first agent answers DNS (Consul's port).
const DNS: &str = "127.0.0.2:8600";

/// The ingress learns routes from gossip: wait until hello answers there.
async fn wait_for_ingress(cluster: &LocalCluster) -> anyhow::Result<()> {
    cluster
        .wait_for(
            "hello through the ingress",
            Duration::from_secs(60),
            || async {
                tokio::process::Command::new("curl")
                    .args([
                        "-sf",
                        "--max-time",
                        "2",
                        "-H",
                        "Host: hello.localhost",
                        &format!("http://{INGRESS}/"),
                    ])
                    .output()
                    .await
                    .is_ok_and(|out| out.status.success())
            },
        )
        .await?;
    Ok(())
}

fn up(nodes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        testbed::harness::ensure_image()?;
        let mut cluster = LocalCluster::start_with(0, 0, Vec::new())?;
        // The first agent also runs the ingress and answers DNS.
        cluster.add_agent(
            None,
            vec![
                "--ingress-addr".into(),
                INGRESS.into(),
                "--dns-addr".into(),
                DNS.into(),
            ],
        )?;
        for _ in 1..nodes {
            cluster.add_agent(None, Vec::new())?;
        }
        cluster
            .wait_for("the cluster to converge", Duration::from_secs(60), || {
                cluster.converged()
            })
            .await?;
        let api = format!("http://{}", cluster.agents[0].api_addr());
        let status = std::process::Command::new(&cluster.bin)
            .args(["nodes", "--api", &api])
            .status()?;
        anyhow::ensure!(status.success(), "stratus nodes failed");
        let example = testbed::harness::repo_root().join("examples/hello");
        println!("\n$ stratus deploy {} --api {api}", example.display());
        let status = std::process::Command::new(&cluster.bin)
            .args(["deploy", &example.display().to_string(), "--api", &api])
            .args(["--token", testbed::harness::API_TOKEN])
            .status()?;
        anyhow::ensure!(status.success(), "stratus deploy failed");
        let view = cluster.agents[0].client().app("hello").await?;
        println!(
            "\n{nodes} agents running (data and logs in {}).",
            cluster.data_root().display()
        );
        wait_for_ingress(&cluster).await?;
        println!("Try, through the ingress (any app answers at APP.localhost there):");
        println!("  curl -H 'Host: hello.localhost' http://{INGRESS}/");
        println!("or a replica directly:");
        for replica in &view.replicas {
            println!("  curl http://{}/", replica.addr);
        }
        println!(
            "  {} status hello --api {api} --token {}",
            cluster.bin.display(),
            testbed::harness::API_TOKEN
        );
        println!(
            "The dashboard: {api}/ (sign in with {}), and the events: {} events -f --api {api} --token {}",
            testbed::harness::API_TOKEN,
            cluster.bin.display(),
            testbed::harness::API_TOKEN
        );
        let (dns_ip, dns_port) = DNS.split_once(':').unwrap_or((DNS, "53"));
        println!(
            "DNS from the first agent's view: dig @{dns_ip} -p {dns_port} _http._tcp.hello.service.stratus SRV"
        );
        println!("Press Ctrl-C to stop the agents and the app.");
        tokio::signal::ctrl_c().await?;
        testbed::harness::remove_containers_of("hello");
        Ok(())
    })
}
