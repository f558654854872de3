//! `stratus config`: an app's config vars, listed (values hidden unless `--show`), set or
//! unset. Each change is one new release, rolled out like a restart.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use proto::api::ConfigChange;

use crate::Target;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: Option<ConfigAction>,
    /// The app whose vars to list
    app: Option<String>,
    /// Print the values too (needs the deploy role)
    #[arg(long)]
    show: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Set KEY=VALUE pairs: one new release
    Set {
        app: String,
        #[arg(required = true, value_parser = parse_pair)]
        pairs: Vec<(String, String)>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove KEYs: one new release
    Unset {
        app: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let (target, app, change) = match args.action {
        None => {
            let Some(app) = args.app else {
                anyhow::bail!("name the app: `stratus config APP`, `stratus config set APP K=V`");
            };
            let view = args.target.client()?.config(&app, args.show).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else if view.vars.is_empty() {
                println!("{app} has no config vars: `stratus config set {app} KEY=VALUE`");
            } else {
                for (key, value) in &view.vars {
                    println!("{key}={}", value.as_deref().unwrap_or("<hidden: --show>"));
                }
            }
            return Ok(());
        }
        Some(ConfigAction::Set { app, pairs, target }) => (
            target,
            app,
            ConfigChange {
                set: pairs.into_iter().collect::<BTreeMap<_, _>>(),
                unset: Vec::new(),
            },
        ),
        Some(ConfigAction::Unset { app, keys, target }) => (
            target,
            app,
            ConfigChange {
                set: BTreeMap::new(),
                unset: keys,
            },
        ),
    };
    let accepted = target.client()?.change_config(&app, &change).await?;
    println!(
        "{}: its replicas restart one at a time; `stratus status {app}` shows the rollout",
        accepted.message
    );
    Ok(())
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}
