//! `stratus open APP`: prints the app's URL and opens it in a browser when the machine
//! has a program for that. Which URL is `node::cli::open`'s choice.

use clap::Args;
use node::cli::open::{app_url, opener, pick_ingress};

use crate::Target;

#[derive(Args)]
pub struct OpenArgs {
    app: String,
    /// The agents' --base-domain: apps without a domain answer at APP.<base domain>
    #[arg(long, env = "STRATUS_BASE_DOMAIN", default_value = "localhost")]
    base_domain: String,
    /// Print the URL only; open nothing
    #[arg(long)]
    print: bool,
    /// Print the URL and what is known about it as JSON; open nothing
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

pub async fn open(args: OpenArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let (view, nodes) = tokio::try_join!(client.app(&args.app), client.nodes())?;
    let url = app_url(&view, pick_ingress(&nodes), &args.base_domain);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&url)?);
        return Ok(());
    }
    println!("{}", url.url);
    if let Some(note) = &url.note {
        eprintln!("note: {note}");
    }
    if args.print || url.note.is_some() && url.ingress.is_none() {
        return Ok(());
    }
    let Some(program) = opener(cfg!(target_os = "macos"), on_path) else {
        return Ok(());
    };
    // Not waited for past its exit: xdg-open hands the URL to the browser and returns.
    let status = tokio::process::Command::new(program)
        .arg(&url.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("{program} {status}: open the URL above yourself"),
        Err(err) => eprintln!("cannot run {program} ({err}): open the URL above yourself"),
    }
    Ok(())
}

/// Whether `program` is an executable file in a folder of `$PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
    })
}
