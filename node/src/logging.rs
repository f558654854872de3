//! The daemon's own log output through `tracing` (apps' logs are [`crate::workload::logs`]).
//!
//! Lines are formatted on the thread that logs and written by a background thread through
//! a buffer, flushed whenever no more lines are waiting: an ingress writes one access-log
//! line per request, and a `write` system call on the request's thread for each was a
//! measurable share of its CPU (`testbed bench ingress`, "stratus ingress" against
//! "stratus, no access log"). The queue is not lossy: when it is full, the logging thread
//! waits rather than drop lines.
//!
//! Lines look as `tracing-subscriber`'s default ("full") format writes them. The ingress's
//! access log (target `ingress::access`) is written by [`LineFormat`]'s own path, which
//! produces the same text: the default formatter passes every field through `Debug` one
//! character at a time (about 18k instructions per access line by callgrind), where this one
//! copies a field whole once a scan finds nothing to escape.

use std::fmt::{self, Write as _};
use std::io::{BufWriter, IsTerminal};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Lines the queue holds before a logging thread waits.
const QUEUE_LINES: usize = 16_384;

/// The target whose events take [`LineFormat`]'s own path: the ingress's access log.
pub const ACCESS_TARGET: &str = "ingress::access";

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
        .event_format(LineFormat::default())
        .init();
    guard
}

/// The filter of `STRATUS_LOG`, `info` if unset or invalid.
pub fn filter_from_env() -> EnvFilter {
    EnvFilter::try_from_env("STRATUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// `tracing-subscriber`'s default format, with a faster path of the same output for
/// access-log events written without colours and outside any span.
#[derive(Debug, Default)]
pub struct LineFormat {
    full: Format<Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET
            || writer.has_ansi_escapes()
            || ctx.lookup_current().is_some()
        {
            return self.full.format_event(ctx, writer, event);
        }
        // The line is put together here and handed on whole: one call through the writer
        // (a `dyn fmt::Write`) instead of one per piece.
        let mut line = String::with_capacity(320);
        push_timestamp(&mut line, std::time::SystemTime::now());
        line.push_str(level_text(*meta.level()));
        line.push_str(meta.target());
        line.push_str(": ");
        let mut fields = PlainFields {
            line: &mut line,
            empty: true,
        };
        event.record(&mut fields);
        line.push('\n');
        writer.write_str(&line)
    }
}

/// `2026-01-02T03:04:05.678901Z ` as `tracing-subscriber`'s `SystemTime` writes it (UTC,
/// microseconds), without its `fmt` machinery.
fn push_timestamp(line: &mut String, now: std::time::SystemTime) {
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        line.push_str("<unknown time> ");
        return;
    };
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    push_digits(line, year, 4);
    line.push('-');
    push_digits(line, month, 2);
    line.push('-');
    push_digits(line, day, 2);
    line.push('T');
    push_digits(line, of_day / 3600, 2);
    line.push(':');
    push_digits(line, of_day / 60 % 60, 2);
    line.push(':');
    push_digits(line, of_day % 60, 2);
    line.push('.');
    push_digits(line, u64::from(since.subsec_micros()), 6);
    line.push_str("Z ");
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_digits(line: &mut String, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    at = at.min(digits.len().saturating_sub(width));
    for &digit in &digits[at..] {
        line.push(char::from(digit));
    }
}

/// The level as the default format pads it, with the spaces around it.
fn level_text(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    }
}

/// Writes fields as the default format's visitor does (`message` first as it comes, then
/// `name=value`, a `&str` quoted as `Debug` would), copying text whole when it needs no
/// escaping.
struct PlainFields<'a> {
    line: &'a mut String,
    empty: bool,
}

impl PlainFields<'_> {
    /// The separator and `name=`, or nothing for the message.
    fn start(&mut self, field: &Field) {
        if self.empty {
            self.empty = false;
        } else {
            self.line.push(' ');
        }
        let name = field.name();
        if name != "message" {
            self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
            self.line.push('=');
        }
    }
}

impl Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.start(field);
        if field.name() == "message" {
            push_sanitized(self.line, value);
        } else if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            let _ = write!(Sanitized(self.line), "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.start(field);
        push_digits(self.line, value, 1);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.start(field);
        if value < 0 {
            self.line.push('-');
        }
        push_digits(self.line, value.unsigned_abs(), 1);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.start(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.start(field);
        let _ = write!(Sanitized(self.line), "{value:?}");
    }
}

/// Appends text whole, unless it holds a terminal control character (C0 but tab, DEL, or
/// C1): those are written as `\xNN` / `\u{NN}` escapes, as `tracing-subscriber` does for
/// messages, so no field can drive the terminal of whoever reads the log.
struct Sanitized<'a>(&'a mut String);

impl fmt::Write for Sanitized<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        push_sanitized(self.0, text);
        Ok(())
    }
}

fn push_sanitized(line: &mut String, text: &str) {
    // C1 controls are U+0080..U+009F, encoded 0xC2 0x80..0x9F: 0xC2 is the test.
    if !text
        .bytes()
        .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xc2)
    {
        line.push_str(text);
        return;
    }
    for ch in text.chars() {
        match ch {
            '\t' => line.push(ch),
            ch if (ch as u32) < 0x20 || ch == '\x7f' => {
                let _ = write!(line, "\\x{:02x}", ch as u32);
            }
            ch if (0x80..=0x9f).contains(&(ch as u32)) => {
                let _ = write!(line, "\\u{{{:x}}}", ch as u32);
            }
            ch => line.push(ch),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<tokio::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.blocking_lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// What `log` writes with the default format and with ours, time stamps cut off.
    fn both(log: impl Fn()) -> (String, String) {
        let run = |ours: bool| {
            let out = Captured::default();
            let builder = tracing_subscriber::fmt()
                .with_writer(out.clone())
                .with_ansi(false);
            if ours {
                tracing::subscriber::with_default(
                    builder.event_format(LineFormat::default()).finish(),
                    &log,
                );
            } else {
                tracing::subscriber::with_default(builder.finish(), &log);
            }
            let text = String::from_utf8(out.0.blocking_lock().clone()).unwrap();
            // "2026-01-01T00:00:00.000000Z": 27 characters.
            text.lines()
                .map(|line| line.get(27..).unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        (run(false), run(true))
    }

    #[test]
    fn access_lines_read_as_the_default_format_writes_them() {
        let (default, ours) = both(|| {
            let host = "bench.localhost";
            tracing::info!(
                target: "ingress::access",
                app = "bench",
                backend = "node-1/10.0.0.1:20000",
                status = 200u16,
                duration_ms = 2.877,
                retries = 0u32,
                method = %"GET",
                tls = false,
                http2 = true,
                host = %host,
                path = %"/a/b",
                request_id = %"0123abcd",
                error = Some("peer: 10.0.0.1 said \"no\"".to_string()),
                "request"
            );
            tracing::info!(target: "ingress::access", status = -3i64, "x {}", 5);
        });
        assert_eq!(ours, default);
        assert!(
            ours.contains("INFO ingress::access: request app=\"bench\""),
            "{ours}"
        );
        assert!(
            ours.contains("error=\"peer: 10.0.0.1 said \\\"no\\\"\""),
            "{ours}"
        );
    }

    #[test]
    fn time_stamps_read_as_the_default_format_writes_them() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z "),
            (951_782_400_123_456, "2000-02-29T00:00:00.123456Z "),
            (1_798_761_600_000_001, "2027-01-01T00:00:00.000001Z "),
            (1_796_219_953_999_999, "2026-12-02T13:59:13.999999Z "),
        ];
        for (micros, text) in cases {
            let mut line = String::new();
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
            push_timestamp(&mut line, at);
            assert_eq!(line, text);
        }
    }

    #[test]
    fn other_events_keep_the_default_format() {
        let (default, ours) = both(|| {
            tracing::warn!(app = "a", count = 3, "breaker transition");
            tracing::error!(target: "node::agent", "stopping: {}", "why");
        });
        assert_eq!(ours, default);
    }

    #[test]
    fn control_characters_in_access_fields_are_escaped() {
        let (_, ours) = both(|| {
            tracing::info!(
                target: "ingress::access",
                path = %"/\x1b[31mred\u{9b}",
                app = "a\x07b",
                "request"
            );
        });
        assert!(!ours.contains('\x1b') && !ours.contains('\u{9b}') && !ours.contains('\x07'));
        assert!(ours.contains("path=/\\x1b[31mred\\u{9b}"), "{ours}");
        assert!(ours.contains("app=\"a\\u{7}b\""), "{ours}");
    }
}
