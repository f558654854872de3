//! The process driver, for hosts without Docker: each placement is `sh -c cmd` run in its
//! bundle directory, in a process group of its own.
//!
//! There is no isolation and no port mapping: the app listens on `$PORT`, a host port from
//! the [`PortAllocator`], and is reached at `advertise_ip:$PORT`. CPU and memory limits are
//! not enforced (that needs cgroups, which is what the Docker driver is for). The app gets
//! a small allowlist of the agent's environment ([`INHERITED_ENV`]) plus `PORT` and the
//! spec's variables, never the agent's secrets. Its stdout and stderr are appended to
//! `<log_dir>/<id>.log`, which outlives the process so `logs` still works after a stop.
//!
//! Stopping sends SIGTERM to the whole group, so children the app spawned get it too, and
//! SIGKILL to whatever of the group is left after the grace period.
//!
//! Limits of a driver without a daemon: `list` reports only the processes this driver
//! started. It cannot adopt processes across an agent restart, so dropping the driver
//! kills every group it started (they could only hold ports), and an agent that crashes
//! without dropping it leaves them running until someone kills them; their ports are
//! then skipped by the allocator's bind test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::SeekFrom;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use proto::ContainerState;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use futures_util::StreamExt as _;

use super::ports::{PortAllocator, PortRange, bind_test};
use super::{
    ContainerSpec, LogStream, ResourceUsage, RunningContainer, RuntimeDriver, RuntimeError,
    container_name,
};

/// Variables of the agent's environment an app also gets: enough to find programs and
/// behave like a login shell would, nothing that could carry the agent's configuration.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// How often `stop` checks whether the group is gone.
const STOP_POLL: Duration = Duration::from_millis(20);

/// How long `stop` waits for the kernel to reap a group after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// At most this much of the end of a log file is read for `logs`.
const LOG_READ_LIMIT: u64 = 1 << 20;

/// How far apart the two samples of a usage reading are: a rate needs two, and a shorter
/// gap would see too few clock ticks (100 a second) to tell 1% from 5%.
const USAGE_SAMPLE_GAP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    /// The IP in the addresses handed to peers; ports are bind-tested on it.
    pub advertise_ip: IpAddr,
    pub port_range: PortRange,
    /// Where `<id>.log` files go; created if missing.
    pub log_dir: PathBuf,
}

impl ProcessOptions {
    pub fn new(advertise_ip: IpAddr, log_dir: impl Into<PathBuf>) -> ProcessOptions {
        ProcessOptions {
            advertise_ip,
            port_range: PortRange::default(),
            log_dir: log_dir.into(),
        }
    }
}

/// One process group this driver started.
struct Managed {
    child: Child,
    /// The group id, which is the shell's pid (`process_group(0)`).
    pgid: Pid,
    running: RunningContainer,
}

impl Managed {
    /// Reaps the shell if it exited, and records its exit code.
    fn refresh(&mut self) {
        if self.running.exit_code.is_some() {
            return;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.running.state = ContainerState::Exited;
                // Killed by a signal: report it as a shell would (128 + signal number).
                let code = status.code().map(i64::from).unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + i64::from(status.signal().unwrap_or(0))
                });
                self.running.exit_code = Some(code);
            }
            Ok(None) => {}
            Err(err) => warn!(id = %self.running.id, %err, "cannot poll process"),
        }
    }
}

struct State {
    allocator: PortAllocator,
    /// By driver id ([`container_name`] of the placement).
    managed: BTreeMap<String, Managed>,
}

/// Runs placements as plain process groups on this host.
pub struct ProcessDriver {
    options: ProcessOptions,
    state: Mutex<State>,
}

impl ProcessDriver {
    /// Creates the log directory; starts nothing.
    pub fn new(options: ProcessOptions) -> Result<ProcessDriver, RuntimeError> {
        std::fs::create_dir_all(&options.log_dir).map_err(|source| RuntimeError::Io {
            action: format!("create log dir {}", options.log_dir.display()),
            source,
        })?;
        let allocator = PortAllocator::new(options.port_range);
        Ok(ProcessDriver {
            options,
            state: Mutex::new(State {
                allocator,
                managed: BTreeMap::new(),
            }),
        })
    }

    pub fn options(&self) -> &ProcessOptions {
        &self.options
    }

    /// The file a placement's output goes to.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.options.log_dir.join(format!("{id}.log"))
    }

    fn spawn(
        &self,
        spec: &ContainerSpec,
        id: &str,
        port: u16,
    ) -> Result<(Child, Pid), RuntimeError> {
        if spec.built {
            return Err(RuntimeError::Io {
                action: format!("start {id}"),
                source: std::io::Error::other(
                    "this app is built into an image and this node runs apps as processes: run the agent with Docker (--runtime docker)",
                ),
            });
        }
        let log_path = self.log_path(id);
        let io_error = |action: String| move |source| RuntimeError::Io { action, source };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error(format!("open log file {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_error(format!("open log file {}", log_path.display())))?;

        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&spec.cmd)
            .current_dir(&spec.bundle_dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group, so stop can signal the app and everything it spawned at once,
            // and a Ctrl-C meant for the agent does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        for key in INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command.envs(&spec.env).env("PORT", port.to_string());

        let child = command.spawn().map_err(io_error(format!(
            "run `sh -c {:?}` in {}",
            spec.cmd,
            spec.bundle_dir.display()
        )))?;
        let pid = child.id().ok_or_else(|| RuntimeError::Io {
            action: format!("start {id}"),
            source: std::io::Error::other("the process exited before its pid was read"),
        })?;
        let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        Ok((child, pgid))
    }
}

#[async_trait]
impl RuntimeDriver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    /// Plain processes are never sandboxed.
    fn has_gvisor(&self) -> bool {
        false
    }

    fn id_for(&self, placement_id: &str) -> String {
        container_name(placement_id)
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<RunningContainer, RuntimeError> {
        let id = self.id_for(&spec.placement_id);
        let mut state = self.state.lock().await;

        if let Some(existing) = state.managed.get_mut(&id) {
            existing.refresh();
            if existing.running.state == ContainerState::Running {
                return Ok(existing.running.clone());
            }
            info!(id, "placement exists but exited; starting it again");
            // The shell is gone, but something it spawned may still hold the port.
            let _ = signal_group(existing.pgid, Signal::SIGKILL);
            state.managed.remove(&id);
        }

        let ip = self.options.advertise_ip;
        let in_use: BTreeSet<u16> = state
            .managed
            .values()
            .map(|managed| managed.running.addr.port())
            .collect();
        // Apps usually listen on every interface (0.0.0.0:$PORT), not on the advertise IP,
        // so the port must be free host-wide, not just on that address.
        let port = state
            .allocator
            .allocate(&in_use, |port| {
                bind_test(ip, port) && bind_test(std::net::Ipv4Addr::UNSPECIFIED.into(), port)
            })
            .ok_or(RuntimeError::NoFreePort {
                range: self.options.port_range,
                ip,
            })?;
        let (child, pgid) = self.spawn(spec, &id, port)?;
        let running = RunningContainer {
            id: id.clone(),
            placement_id: spec.placement_id.clone(),
            app: spec.app.clone(),
            release: spec.release,
            replica: spec.replica,
            addr: SocketAddr::new(ip, port),
            state: ContainerState::Running,
            exit_code: None,
        };
        info!(id, addr = %running.addr, pgid = pgid.as_raw(), "started");
        state.managed.insert(
            id,
            Managed {
                child,
                pgid,
                running: running.clone(),
            },
        );
        Ok(running)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // Taken out of the map first: a concurrent start of the same placement then starts
        // a new copy on a new port instead of returning one that is being stopped.
        let Some(mut managed) = self.state.lock().await.managed.remove(id) else {
            return Ok(());
        };
        let pgid = managed.pgid;
        if !signal_group(pgid, Signal::SIGTERM) {
            managed.refresh();
            return Ok(());
        }
        let deadline = Instant::now() + grace;
        loop {
            // Reaps the shell: a zombie leader still counts as a member of the group.
            managed.refresh();
            if !group_exists(pgid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        warn!(
            id,
            grace_ms = grace.as_millis() as u64,
            "still running after the grace period; killing it"
        );
        signal_group(pgid, Signal::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            managed.refresh();
            if !group_exists(pgid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Io {
                    action: format!("kill process group {} of {id}", pgid.as_raw()),
                    source: std::io::Error::other(
                        "it survived SIGKILL: look for a process stuck in the kernel (state D)",
                    ),
                });
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    async fn list(&self) -> Result<Vec<RunningContainer>, RuntimeError> {
        let mut state = self.state.lock().await;
        Ok(state
            .managed
            .values_mut()
            .map(|managed| {
                managed.refresh();
                managed.running.clone()
            })
            .collect())
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, RuntimeError> {
        // Only names this driver could have made: anything else could walk out of log_dir.
        let known = self.state.lock().await.managed.contains_key(id);
        if !known && !is_plain_name(id) {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        let path = self.log_path(id);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound { id: id.to_string() });
            }
            Err(source) => {
                return Err(RuntimeError::Io {
                    action: format!("open log file {}", path.display()),
                    source,
                });
            }
        };
        let read_error = |source| RuntimeError::Io {
            action: format!("read log file {}", path.display()),
            source,
        };
        let len = file.metadata().await.map_err(read_error)?.len();
        let start = len.saturating_sub(LOG_READ_LIMIT);
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(read_error)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).await.map_err(read_error)?;
        // Reading from the middle of the file: the first line is probably cut.
        if start > 0 {
            let first_newline = bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.drain(..first_newline);
        }
        Ok(super::last_lines(&bytes, tail))
    }

    async fn follow_logs(&self, id: &str, tail: usize) -> Result<LogStream, RuntimeError> {
        let initial = self.logs(id, tail).await?;
        let path = self.log_path(id);
        let start = tokio::fs::metadata(&path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        // Poll the file for growth: a log file has no change notification that works
        // everywhere, and 200 ms is well within what a person watching logs notices.
        let tail_stream = futures_util::stream::unfold(
            (path, start, super::LineSplitter::default()),
            |(path, mut offset, mut splitter)| async move {
                loop {
                    let len = tokio::fs::metadata(&path).await.ok()?.len();
                    if len < offset {
                        offset = 0; // truncated or replaced: start over
                    }
                    if len > offset {
                        let mut file = tokio::fs::File::open(&path).await.ok()?;
                        file.seek(SeekFrom::Start(offset)).await.ok()?;
                        // A chunk at a time: an app that wrote a gigabyte since the last
                        // poll must not make us hold it all.
                        let mut bytes = Vec::new();
                        file.take(LOG_READ_LIMIT)
                            .read_to_end(&mut bytes)
                            .await
                            .ok()?;
                        offset += bytes.len() as u64;
                        let lines = splitter.push(&bytes);
                        if !lines.is_empty() {
                            return Some((
                                futures_util::stream::iter(lines),
                                (path, offset, splitter),
                            ));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        )
        .flatten();
        Ok(Box::pin(
            futures_util::stream::iter(initial).chain(tail_stream),
        ))
    }

    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError> {
        let pgid = {
            let mut state = self.state.lock().await;
            let managed = state
                .managed
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
            managed.refresh();
            if managed.running.state != ContainerState::Running {
                return Ok(ResourceUsage::default());
            }
            managed.pgid
        };
        // No /proc (not Linux): nothing to tell, which is not an error.
        let Some(before) = group_sample(pgid) else {
            return Ok(ResourceUsage::default());
        };
        let started = Instant::now();
        tokio::time::sleep(USAGE_SAMPLE_GAP).await;
        let Some(after) = group_sample(pgid) else {
            return Ok(ResourceUsage::default());
        };
        let units = ProcUnits::of_this_host();
        Ok(usage_between(before, after, started.elapsed(), units))
    }
}

impl Drop for ProcessDriver {
    fn drop(&mut self) {
        // No later driver can adopt these groups (see the module doc), so they go with us.
        for (id, managed) in &mut self.state.get_mut().managed {
            managed.refresh();
            if signal_group(managed.pgid, Signal::SIGKILL) {
                warn!(id, "killed on driver drop");
            }
        }
    }
}

/// Sends `signal` to the group; false when the group no longer exists.
fn signal_group(pgid: Pid, signal: Signal) -> bool {
    match killpg(pgid, signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(err) => {
            warn!(pgid = pgid.as_raw(), %err, ?signal, "cannot signal process group");
            true
        }
    }
}

/// Whether any live process is still in the group.
///
/// Zombies do not count: once the shell exits, what it spawned is reparented to PID 1,
/// which in a container or sandbox may never reap it, and a zombie holds no port and runs
/// nothing. Where `/proc` is missing, any member counts, zombies included.
fn group_exists(pgid: Pid) -> bool {
    match live_members(pgid) {
        Some(count) => count > 0,
        None => !matches!(killpg(pgid, None), Err(Errno::ESRCH)),
    }
}

/// Counts the non-zombie processes of a group from `/proc/<pid>/stat`.
fn live_members(pgid: Pid) -> Option<usize> {
    member_stats(pgid).map(|stats| stats.len())
}

/// The `/proc/<pid>/stat` lines of the group's live (not zombie) members; `None` without
/// `/proc`.
fn member_stats(pgid: Pid) -> Option<Vec<String>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Vanishes between the listing and the read when the process exits: not a member.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat)
            && pgrp == pgid.as_raw()
            && !matches!(state, 'Z' | 'X')
        {
            members.push(stat);
        }
    }
    Some(members)
}

/// State and process group from a `/proc/<pid>/stat` line: `pid (comm) state ppid pgrp ...`.
/// The command name may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// What the live members of a process group had used when `/proc` was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct GroupSample {
    /// Clock ticks of CPU, user and system, their reaped children's included.
    cpu_ticks: u64,
    /// Resident pages.
    rss_pages: u64,
}

/// Clock ticks a second and bytes a page, as this kernel counts them in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcUnits {
    ticks_per_sec: u64,
    page_bytes: u64,
}

impl ProcUnits {
    fn of_this_host() -> ProcUnits {
        use nix::unistd::{SysconfVar, sysconf};
        let read = |var, default: u64| {
            sysconf(var)
                .ok()
                .flatten()
                .and_then(|value| u64::try_from(value).ok())
                .filter(|value| *value > 0)
                .unwrap_or(default)
        };
        ProcUnits {
            ticks_per_sec: read(SysconfVar::CLK_TCK, 100),
            page_bytes: read(SysconfVar::PAGE_SIZE, 4096),
        }
    }
}

/// The reading between two samples `elapsed` apart. A member that exited in between
/// takes its ticks with it: the rate is then low for that reading, never negative.
fn usage_between(
    before: GroupSample,
    after: GroupSample,
    elapsed: Duration,
    units: ProcUnits,
) -> ResourceUsage {
    let elapsed_ms = elapsed.as_millis().max(1);
    let ticks = u128::from(after.cpu_ticks.saturating_sub(before.cpu_ticks));
    // ticks / ticks_per_sec seconds of CPU in elapsed_ms: thousandths of a core.
    let millis = ticks * 1_000 * 1_000 / (u128::from(units.ticks_per_sec) * elapsed_ms);
    ResourceUsage {
        cpu_millis: Some(u64::try_from(millis).unwrap_or(u64::MAX)),
        memory_bytes: Some(after.rss_pages.saturating_mul(units.page_bytes)),
        memory_limit_bytes: None,
    }
}

/// Sums the group's live members from `/proc/<pid>/stat`; `None` without `/proc`.
fn group_sample(pgid: Pid) -> Option<GroupSample> {
    let mut sample = GroupSample::default();
    for member in member_stats(pgid)?
        .iter()
        .filter_map(|stat| parse_stat_usage(stat))
    {
        sample.cpu_ticks += member.cpu_ticks;
        sample.rss_pages += member.rss_pages;
    }
    Some(sample)
}

/// utime, stime, cutime and cstime (fields 14 to 17) and rss (field 24) of a
/// `/proc/<pid>/stat` line, counted from the last `)` as [`parse_stat`] does.
fn parse_stat_usage(stat: &str) -> Option<GroupSample> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    let ticks = [14, 15, 16, 17]
        .into_iter()
        .map(field)
        .sum::<Option<u64>>()?;
    // rss is signed in the kernel's format; a negative one is nonsense, read as none.
    let rss = fields
        .get(24 - 3)?
        .parse::<i64>()
        .ok()
        .map_or(0, |rss| u64::try_from(rss).unwrap_or(0));
    Some(GroupSample {
        cpu_ticks: ticks,
        rss_pages: rss,
    })
}

fn is_plain_name(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_reach_the_file_system() {
        assert!(is_plain_name("stratus-web-1-0"));
        for bad in ["", "..", "../etc/passwd", "a/b", ".hidden"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn parses_proc_stat_lines() {
        assert_eq!(parse_stat("42 (sh) S 1 42 42 0 -1"), Some(('S', 42)));
        assert_eq!(parse_stat("7 (a) b (c)) Z 1 9 9"), Some(('Z', 9)));
        assert_eq!(parse_stat("garbage"), None);
        let own = Pid::from_raw(nix::unistd::getpgrp().as_raw());
        assert!(
            live_members(own).unwrap() >= 1,
            "this test process is in its own group"
        );
    }

    #[test]
    fn usage_comes_from_the_ticks_and_pages_in_proc_stat() {
        // A real line (a shell), with utime 250, stime 50, cutime 10, cstime 0, rss 700.
        let line = "4242 (sh -c (x)) S 1 4242 4242 0 -1 4194560 1200 300 0 0 250 50 10 0 \
                    20 0 1 0 98765 12345678 700 18446744073709551615";
        assert_eq!(
            parse_stat_usage(line),
            Some(GroupSample {
                cpu_ticks: 310,
                rss_pages: 700,
            })
        );
        assert_eq!(parse_stat_usage("1 (short) S 1 1"), None);
        let units = ProcUnits {
            ticks_per_sec: 100,
            page_bytes: 4096,
        };
        // 25 ticks (a quarter second of CPU) in half a second: half a core.
        let usage = usage_between(
            GroupSample {
                cpu_ticks: 100,
                rss_pages: 10,
            },
            GroupSample {
                cpu_ticks: 125,
                rss_pages: 256,
            },
            Duration::from_millis(500),
            units,
        );
        assert_eq!(usage.cpu_millis, Some(500));
        assert_eq!(usage.memory_bytes, Some(256 * 4096));
        assert_eq!(usage.memory_limit_bytes, None);
        // A member gone between the samples: less, never an underflow.
        let fewer = usage_between(
            GroupSample {
                cpu_ticks: 100,
                rss_pages: 10,
            },
            GroupSample::default(),
            Duration::from_millis(500),
            units,
        );
        assert_eq!(fewer.cpu_millis, Some(0));
    }

    #[test]
    fn this_process_group_has_a_sample() {
        let own = Pid::from_raw(nix::unistd::getpgrp().as_raw());
        let sample = group_sample(own).unwrap();
        assert!(sample.rss_pages > 0, "{sample:?}");
    }

    #[test]
    fn log_path_is_under_the_log_dir() {
        let dir = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(ProcessOptions::new(
            "127.0.0.1".parse().unwrap(),
            dir.path().join("logs"),
        ))
        .unwrap();
        assert!(dir.path().join("logs").is_dir(), "created by new");
        assert_eq!(
            driver.log_path("stratus-a"),
            dir.path().join("logs/stratus-a.log")
        );
    }
}
