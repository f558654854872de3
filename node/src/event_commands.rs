//! `stratus events`: its call, and the follow loop that notices a node gone silent. What
//! it prints is `node::cli::events`'s.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use proto::events::{EventLine, Topic};

use crate::Target;

/// A followed stream that brings not even a heartbeat for this long is broken: the node
/// sends one after 15 s of silence.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

pub async fn events(
    target: Target,
    follow: bool,
    app: Option<String>,
    topic: Option<Topic>,
    since: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let client = target.client()?;
    let query = api::EventQuery {
        since,
        topic,
        app,
        follow: Some(follow),
    };
    let mut lines = client.events(&query).await?;
    let mut out = std::io::stdout().lock();
    loop {
        let next = tokio::time::timeout(SILENCE_LIMIT, lines.next())
            .await
            .with_context(|| {
                format!(
                    "{} sent nothing for {SILENCE_LIMIT:?}, not even a heartbeat: follow another node's events",
                    target.api
                )
            })?;
        let Some(line) = next else {
            return Ok(());
        };
        let written = match line? {
            EventLine::Event(event) if json => {
                writeln!(out, "{}", serde_json::to_string(&event)?)
            }
            EventLine::Event(event) => writeln!(out, "{}", node::cli::events::event_line(&event)),
            EventLine::Heartbeat { .. } => Ok(()),
            EventLine::Gone { gone } => anyhow::bail!("{gone}"),
        };
        match written {
            // A reader that hung up (`stratus events | head`) has all it wanted.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            written => written?,
        }
    }
}
