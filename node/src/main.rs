//! `stratus`: the agent daemon and the CLI in one binary. Parses arguments, sets up
//! logging and signals, and hands over to the `node` library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use node::config::{AgentArgs, AgentConfig};
use node::seal::ClusterKey;
use rand::SeedableRng;
use tracing_subscriber::EnvFilter;

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
    /// Print a new random cluster key for --cluster-key
    Keygen,
    /// Show the cluster as one node sees it
    Nodes {
        /// API of any node
        #[arg(long, env = "STRATUS_API", default_value = "http://127.0.0.1:7070")]
        api: String,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
}

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
            init_logging();
            let config = AgentConfig::resolve(args)?;
            runtime()?.block_on(node::agent::run(config, shutdown_signal()))?;
            Ok(())
        }
        Command::Nodes { api, json } => runtime()?.block_on(async {
            let client = api::Client::new(&api)?;
            let nodes = client.nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!("{}", node::cli::nodes_table(&nodes));
            }
            Ok(())
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRATUS_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
