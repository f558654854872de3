//! `stratus`: the agent daemon and the CLI in one binary. Parses arguments, sets up
//! logging and signals, and hands over to the `node` library.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use node::cluster::seal::ClusterKey;
use node::config::{AgentArgs, AgentConfig};
use rand::SeedableRng;

mod config_commands;
mod doc_commands;
mod doctor_commands;
mod embedded_ingress;
mod event_commands;
mod internal_balancer;
mod open_commands;
mod tenancy_commands;

#[derive(Parser)]
#[command(
    name = "stratus",
    version,
    about = "A self-hosted PaaS with no master: every host runs `stratus agent`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the agent variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon on this host: join the cluster, gossip, serve the API
    Agent(AgentArgs),
    /// Join the cluster as a member that runs no workloads and serve public HTTP traffic
    /// for every app (an agent with --no-workloads and --ingress-addr)
    Ingress {
        /// Address the ingress listens on (HTTP/1.1, and HTTP/2 with prior knowledge)
        #[arg(long, env = "STRATUS_INGRESS_LISTEN", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Also serve HTTPS here, with the certificates of --tls-cert (HTTP/2 by ALPN)
        #[arg(long, env = "STRATUS_INGRESS_TLS_LISTEN")]
        tls_listen: Option<std::net::SocketAddr>,
        /// DOMAIN=CERT.pem:KEY.pem, repeated (or comma-separated) for more domains; DOMAIN may
        /// be *.example.com; clients without SNI get the first
        #[arg(long, value_delimiter = ',')]
        tls_cert: Option<Vec<String>>,
        /// Admin port serving /metrics (Prometheus text format)
        #[arg(long, env = "STRATUS_INGRESS_ADMIN_LISTEN")]
        admin_listen: Option<std::net::SocketAddr>,
        /// Largest request body passed on, in bytes (413 above) [default: 10485760]
        #[arg(long)]
        max_body_bytes: Option<u64>,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Print a new random cluster key for --cluster-key
    Keygen,
    /// Show the cluster as one node sees it
    Nodes {
        #[command(flatten)]
        target: Target,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Deploy an app folder (with its stratus.toml) to the cluster and follow the rollout
    Deploy {
        /// The app folder
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
        /// Give up following the rollout after this many seconds
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// List the apps
    Apps {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Show an app's replicas with their uptime, restarts, and the CPU and memory they use
    Ps {
        app: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Print an app's URL (its first domain, or APP.<base domain> on the ingress) and open
    /// it in a browser
    Open(open_commands::OpenArgs),
    /// Check this host for what the agent needs (Docker, its ports, the cluster key, the
    /// clock, disk space, the seeds), with the agent's own flags and STRATUS_* environment
    Doctor(doctor_commands::DoctorArgs),
    /// Print a completion script: `source <(stratus completions bash)`, or write it where
    /// the shell looks (e.g. ~/.local/share/bash-completion/completions/stratus)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write a man page per command to --out (stratus.1, stratus-deploy.1, ...), or print
    /// stratus(1)
    Man {
        /// Folder to write the pages to, e.g. /usr/local/share/man/man1
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show an app's release and where every replica runs
    Status {
        app: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Print the output of every replica of an app, each line prefixed with its replica
    Logs {
        app: String,
        #[command(flatten)]
        target: Target,
        /// Keep printing new lines as they are written
        #[arg(short, long)]
        follow: bool,
        /// Lines of history per replica
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// The kept output of stopped replicas (replaced, moved, crashed) instead
        #[arg(long, conflicts_with = "follow")]
        previous: bool,
        /// The whole output of the build of release N instead
        #[arg(long, value_name = "N", conflicts_with_all = ["follow", "previous"])]
        build: Option<u64>,
    },
    /// List an app's builds, newest first: release, builder, node, duration, cache, result
    Builds {
        app: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// List an app's releases, newest first, with the failed ones and why
    Releases {
        app: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Roll an app back to an earlier release (a new release copying it), one replica at a time
    Rollback {
        app: String,
        /// Release number to go back to [default: the last good one before the current]
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        target: Target,
        /// Give up following the rollout after this many seconds
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Set how many replicas of an app run
    Scale {
        app: String,
        replicas: u32,
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Replace every replica of an app with a fresh one, one at a time (no downtime)
    Restart {
        app: String,
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Operate on a node: drain it (its replicas move away, it takes no new ones) or undrain it
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Stop every replica of an app and forget it
    Destroy {
        app: String,
        #[command(flatten)]
        target: Target,
    },
    /// An app's config vars: list (values hidden unless --show), set KEY=VALUE, unset KEY
    Config(config_commands::ConfigArgs),
    /// Manage tenants: create, list, delete, quota
    Tenant {
        #[command(subcommand)]
        action: tenancy_commands::TenantAction,
    },
    /// Manage a tenant's API tokens: create, list, revoke
    Token {
        #[command(subcommand)]
        action: tenancy_commands::TokenAction,
    },
    /// The mutating API calls (deploys, scales, config, tokens...) gathered from every live node
    Audit {
        /// Only this tenant's (a tenant's admin sees only its own)
        #[arg(long)]
        tenant: Option<String>,
        /// Only this recent, e.g. 1h or 30m
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster's events as the node sees them: nodes, deploys, rollouts, replicas,
    /// builds and route changes
    Events {
        /// Keep printing new events as they happen
        #[arg(short, long)]
        follow: bool,
        /// Only this app's events
        #[arg(long)]
        app: Option<String>,
        /// Only events of this topic: node, app, replica, build or ingress
        #[arg(long)]
        topic: Option<proto::events::Topic>,
        /// Only events after this index (the `index` of the last one seen, with --json)
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        target: Target,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Show the tenant, role and expiry of the token in use
    Whoami {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Move every replica off NODE (no downtime) and place nothing new there
    Drain {
        node: String,
        #[command(flatten)]
        target: Target,
    },
    /// Let NODE take replicas again
    Undrain {
        node: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Which node to ask, and how to prove who we are.
#[derive(clap::Args)]
struct Target {
    /// API of any node: http://host:port, or https://host:port for agents with --api-tls-cert
    #[arg(long, env = "STRATUS_API", default_value = "http://127.0.0.1:7070")]
    api: String,
    /// The agents' --api-token (the cluster administrator) or a tenant's token
    #[arg(long, env = "STRATUS_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate that signed the agents' API certificates (https:// only) [default: the web's roots]
    #[arg(long, env = "STRATUS_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

impl Target {
    fn client(&self) -> anyhow::Result<api::Client> {
        let ca = match &self.ca_cert {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read(path)
                    .with_context(|| format!("cannot read --ca-cert {}", path.display()))?,
            )),
            None => None,
        };
        let http =
            api::client::http_client(ca.as_ref().map(|(path, pem)| (path.as_str(), &pem[..])))?;
        Ok(api::Client::with_http(&self.api, http)?.with_token(self.token.clone()))
    }
}

/// mimalloc: the ingress allocates on every request (Pingora's headers, buffers and
/// futures), and glibc's malloc cost about a fifth of its CPU in `testbed bench ingress`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen => {
            println!(
                "{}",
                ClusterKey::generate(&mut rand::rngs::StdRng::from_os_rng())
            );
            Ok(())
        }
        Command::Agent(args) => {
            let _log = init_logging();
            run_agent(AgentConfig::resolve(args)?)
        }
        Command::Ingress {
            listen,
            tls_listen,
            tls_cert,
            admin_listen,
            max_body_bytes,
            mut agent,
        } => {
            let _log = init_logging();
            agent.no_workloads = true;
            agent.ingress_addr = Some(listen);
            agent.ingress_tls_addr = tls_listen.or(agent.ingress_tls_addr);
            agent.ingress_tls_cert = tls_cert.or(agent.ingress_tls_cert);
            agent.ingress_admin_addr = admin_listen.or(agent.ingress_admin_addr);
            agent.ingress_max_body_bytes = max_body_bytes.or(agent.ingress_max_body_bytes);
            run_agent(AgentConfig::resolve(agent)?)
        }
        Command::Nodes { target, json } => runtime()?.block_on(async {
            let nodes = target.client()?.nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!("{}", node::cli::nodes_table(&nodes));
            }
            Ok(())
        }),
        Command::Deploy {
            dir,
            target,
            timeout_secs,
        } => runtime()?.block_on(async {
            node::cli::deploy::deploy(&target.client()?, &dir, Duration::from_secs(timeout_secs))
                .await
        }),
        Command::Apps { target, json } => runtime()?.block_on(async {
            let apps = target.client()?.apps().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else {
                println!("{}", node::cli::apps_table(&apps));
            }
            Ok(())
        }),
        Command::Ps { app, target, json } => runtime()?.block_on(async {
            let replicas = target.client()?.replicas(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&replicas)?);
            } else {
                println!("{}", node::cli::ps::replicas_table(&replicas));
            }
            Ok(())
        }),
        Command::Open(args) => runtime()?.block_on(open_commands::open(args)),
        Command::Doctor(args) => {
            let healthy = runtime()?.block_on(doctor_commands::doctor(args))?;
            // The report said what failed; the exit code is for scripts.
            if !healthy {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Completions { shell } => doc_commands::completions(shell),
        Command::Man { out } => doc_commands::man(out.as_deref()),
        Command::Status { app, target, json } => runtime()?.block_on(async {
            let view = target.client()?.app(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("{}", node::cli::app_status(&view));
            }
            Ok(())
        }),
        Command::Logs {
            app,
            target,
            follow,
            tail,
            previous,
            build,
        } => runtime()?.block_on(async {
            use futures_util::StreamExt as _;
            let client = target.client()?;
            let mut lines: api::client::LogLines = if let Some(release) = build {
                client.build_log(&app, release).await?
            } else if previous {
                Box::pin(client.previous_logs(&app, tail).await?.map(Ok))
            } else {
                client.logs(&app, follow, tail).await?
            };
            // A stream that breaks ends with its error, so `logs -f` fails loudly instead
            // of exiting as if the app had stopped writing.
            let mut out = std::io::stdout().lock();
            while let Some(line) = lines.next().await {
                // A reader that hung up (`stratus logs web | head`) has all it wanted.
                match writeln!(out, "{}", line?) {
                    Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    written => written?,
                }
            }
            Ok(())
        }),
        Command::Builds { app, target, json } => runtime()?.block_on(async {
            let builds = target.client()?.builds(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&builds)?);
            } else {
                println!("{}", node::cli::builds_table(&builds));
            }
            Ok(())
        }),
        Command::Releases { app, target, json } => runtime()?.block_on(async {
            let releases = target.client()?.releases(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&releases)?);
            } else {
                println!("{}", node::cli::releases_table(&releases));
            }
            Ok(())
        }),
        Command::Rollback {
            app,
            to,
            target,
            timeout_secs,
        } => follow_change(&target, &app, timeout_secs, async |client| {
            client.rollback(&app, to).await
        }),
        Command::Scale {
            app,
            replicas,
            target,
            timeout_secs,
        } => follow_change(&target, &app, timeout_secs, async |client| {
            client.scale(&app, replicas).await
        }),
        Command::Restart {
            app,
            target,
            timeout_secs,
        } => follow_change(&target, &app, timeout_secs, async |client| {
            client.restart(&app).await
        }),
        Command::Node { action } => runtime()?.block_on(async {
            let (node, target, draining) = match action {
                NodeAction::Drain { node, target } => (node, target, true),
                NodeAction::Undrain { node, target } => (node, target, false),
            };
            let reply = target.client()?.drain(&node, draining).await?;
            if reply.draining {
                println!(
                    "{} is draining: its replicas move away one at a time; `stratus nodes` shows it",
                    reply.node_id
                );
            } else {
                println!("{} takes replicas again", reply.node_id);
            }
            Ok(())
        }),
        Command::Destroy { app, target } => runtime()?.block_on(async {
            target.client()?.destroy(&app).await?;
            println!("{app} destroyed: its replicas are stopping on every node");
            Ok(())
        }),
        Command::Config(args) => runtime()?.block_on(config_commands::run(args)),
        Command::Tenant { action } => runtime()?.block_on(tenancy_commands::tenant(action)),
        Command::Token { action } => runtime()?.block_on(tenancy_commands::token(action)),
        Command::Audit {
            tenant,
            since,
            target,
            json,
        } => runtime()?.block_on(tenancy_commands::audit(target, tenant, since, json)),
        Command::Events {
            follow,
            app,
            topic,
            since,
            target,
            json,
        } => runtime()?.block_on(event_commands::events(
            target, follow, app, topic, since, json,
        )),
        Command::Whoami { target, json } => {
            runtime()?.block_on(tenancy_commands::whoami(target, json))
        }
    }
}

/// Binds the agent's sockets, starts the ingress beside it when `--ingress-addr` is set
/// and the node-local balancer when `--internal-port` is, and runs the agent until SIGINT
/// or SIGTERM.
fn run_agent(config: AgentConfig) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let api = runtime
        .block_on(tokio::net::TcpListener::bind(config.api_addr))
        .with_context(|| format!("cannot listen for the API on {}", config.api_addr))?;
    let gossip = node::agent::Gossip::sealed_udp(config.keyring.clone());
    let dns = match &config.dns {
        Some(dns) => Some(
            runtime
                .block_on(node::dns::DnsListeners::bind(dns.addr))
                .with_context(|| format!("cannot listen for DNS on {} (UDP and TCP)", dns.addr))?,
        ),
        None => None,
    };
    // Its port 53 leads here from every tenant network: every address, not loopback.
    let internal_dns = match &config.internal {
        Some(ports) => {
            let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, ports.dns));
            Some(
                runtime
                    .block_on(node::dns::DnsListeners::bind(addr))
                    .with_context(|| format!("cannot listen for containers' DNS on {addr}"))?,
            )
        }
        None => None,
    };
    let listeners = node::agent::Listeners {
        api,
        dns,
        internal_dns,
    };
    let (routes, feeds) = tokio::sync::watch::channel(None);
    let tenant_subnets = std::sync::Arc::new(node::dns::TenantSubnets::new());
    let ingress = embedded_ingress::start(&config, &runtime, feeds.clone())?;
    let balancer =
        internal_balancer::start(config.internal, tenant_subnets.clone(), &runtime, feeds)?;
    let feeds = node::agent::Feeds {
        routes: (ingress.is_some() || balancer.is_some()).then_some(routes),
        tenant_subnets,
    };
    let result = runtime.block_on(node::agent::run_with_feeds(
        config,
        listeners,
        gossip,
        shutdown_signal(),
        feeds,
    ));
    for server in [ingress, balancer].into_iter().flatten() {
        server.stop();
    }
    result?;
    Ok(())
}

/// Sends a change (scale, rollback, restart) and follows its rollout as `deploy` does.
fn follow_change(
    target: &Target,
    app: &str,
    timeout_secs: u64,
    send: impl AsyncFnOnce(&api::Client) -> Result<proto::api::ChangeAccepted, api::ClientError>,
) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = target.client()?;
        let accepted = send(&client).await?;
        println!("{}", accepted.message);
        node::cli::deploy::follow(
            &client,
            app,
            accepted.release,
            Duration::from_secs(timeout_secs),
        )
        .await
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Keep the guard until the daemon exits: dropping it writes out the queued lines.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    node::logging::init(node::logging::filter_from_env())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
