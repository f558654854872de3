//! The daemon's own log output through `tracing` (apps' logs are [`crate::workload::logs`]).
//!
//! Lines are formatted on the thread that logs and written by a background thread through
//! a buffer, flushed whenever no more lines are waiting: an ingress writes one access-log
//! line per request, and a `write` system call on the request's thread for each was a
//! measurable share of its CPU (`testbed bench ingress`, "stratus ingress" against
//! "stratus, no access log"). The queue is not lossy: when it is full, the logging thread
//! waits rather than drop lines.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the queue holds before a logging thread waits.
const QUEUE_LINES: usize = 16_384;

/// Installs the global subscriber, writing to stderr with the filter `filter` (the
/// `STRATUS_LOG` syntax, e.g. `info,ingress::access=off`). Keep the guard until exit:
/// dropping it writes out what is still queued.
pub fn init(filter: EnvFilter) -> WorkerGuard {
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stderr()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
    guard
}

/// The filter of `STRATUS_LOG`, `info` if unset or invalid.
pub fn filter_from_env() -> EnvFilter {
    EnvFilter::try_from_env("STRATUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}
