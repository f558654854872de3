//! A second Docker daemon of the test's own (feature `testsuite`), so that each test agent
//! can have an image store of its own: a pull, load or build in one sandbox is not seen by
//! the host's daemon or by another sandbox.
//!
//! [`SandboxDockerd::start`] runs `dockerd` with its own data root, exec root, socket, pid
//! file, config file and bridge (`stsb<N>` with 172.31.N.1/24, N from 1 to 254: several
//! sandboxes run at once, in one test binary or several). It never passes `--bridge=none`,
//! which makes dockerd delete the host's `docker0`. Docker's own iptables rules are off
//! (`--iptables=false`: two daemons must not rewrite the same chains); instead the sandbox
//! adds three rules of its own, so its containers and builds reach the outside (NAT from its
//! subnet, forwarding from and back to its bridge), and removes them when dropped. Published
//! ports work through docker-proxy. The storage driver is the first of overlay2,
//! fuse-overlayfs and vfs that starts (the host's daemon may need fuse-overlayfs).
//!
//! [`SandboxDockerd::start_with`] also gives the daemon extra OCI runtimes (its
//! `daemon.json` `runtimes`), e.g. gVisor's `runsc` with `--platform=ptrace` for the gVisor
//! tenant test.
//!
//! Dropping it removes its containers, stops the daemon (SIGTERM, SIGKILL after 10 s),
//! unmounts what is left under its folder, deletes the bridge, the rules and the folder.
//! A sandbox whose test process died without dropping it is cleaned up by the next
//! [`SandboxDockerd::start`] on the machine. Needs root, `dockerd`, `docker` and `ip`.
//!
//! Everything lives under `/tmp/stratus-sbx/<N>` (short, for unix socket paths):
//! `data/`, `x/` (exec root), `docker.sock`, `docker.pid`, `daemon.json`, `dockerd.log`,
//! `owner` (the test process's pid) and `name`.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where every sandbox has its folder.
const BASE: &str = "/tmp/stratus-sbx";
/// How long a daemon may take to answer `docker info`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A folder younger than this without an `owner` file is being set up, not stale.
const SETUP_GRACE: Duration = Duration::from_secs(60);
/// The storage drivers tried, in order.
const STORAGE_DRIVERS: [&str; 3] = ["overlay2", "fuse-overlayfs", "vfs"];

/// The storage driver the first sandbox of this process started with; later ones start
/// with it directly.
static WORKING_DRIVER: OnceLock<&'static str> = OnceLock::new();

/// An OCI runtime a sandbox daemon offers besides runc (`daemon.json` `runtimes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRuntime {
    /// The name containers ask for (`HostConfig.Runtime`), e.g. `runsc`.
    pub name: String,
    /// The runtime's binary.
    pub path: String,
    /// Arguments the daemon passes it, e.g. `--platform=ptrace`.
    pub args: Vec<String>,
}

impl SandboxRuntime {
    /// gVisor's `runsc` from `PATH`, with the ptrace platform (no KVM needed), or why not.
    ///
    /// Also `--network=host`: the container's sockets are the host kernel's, inside the
    /// network namespace Docker made for the container (still its own bridge address and
    /// published ports). Debian's runsc (2022-12) tells the root namespace by the presence
    /// of `/proc/sys/net/core/rmem_default`, which newer kernels have in every namespace,
    /// so its own network stack refuses to start on them ("cannot run with network enabled
    /// in root network namespace").
    pub fn gvisor_ptrace() -> Result<SandboxRuntime, String> {
        let path = output_text("sh", &["-c", "command -v runsc"])
            .map(|text| text.trim().to_string())
            .filter(|path| !path.is_empty())
            .ok_or("runsc is not installed: run scripts/install-deps.sh (Debian's runsc)")?;
        Ok(SandboxRuntime {
            name: "runsc".to_string(),
            path,
            args: vec![
                "--platform=ptrace".to_string(),
                "--network=host".to_string(),
            ],
        })
    }
}

/// A running sandboxed `dockerd`; dropping it stops it and removes all it made.
#[derive(Debug)]
pub struct SandboxDockerd {
    name: String,
    index: u8,
    dir: PathBuf,
    daemon: Option<Child>,
    storage_driver: &'static str,
    bridge_created: bool,
    /// The iptables rules added, each as its arguments after `-A`/`-I` (for `-D`).
    rules: Vec<Vec<String>>,
}

impl SandboxDockerd {
    /// Starts a sandboxed daemon and waits until it answers (60 s at most). `name` is for
    /// people: it is written in the sandbox's folder and named in errors.
    pub fn start(name: &str) -> Result<SandboxDockerd, String> {
        SandboxDockerd::start_with(name, &[])
    }

    /// As [`SandboxDockerd::start`], with `runtimes` besides runc.
    pub fn start_with(name: &str, runtimes: &[SandboxRuntime]) -> Result<SandboxDockerd, String> {
        fs::create_dir_all(BASE).map_err(|err| format!("cannot create {BASE}: {err}"))?;
        let index = {
            // One process or thread at a time judges what is stale and takes an index.
            let _lock = BaseLock::take()?;
            clean_stale();
            allocate()?
        };
        let mut sandbox = SandboxDockerd {
            name: name.to_string(),
            index,
            dir: Path::new(BASE).join(index.to_string()),
            daemon: None,
            storage_driver: STORAGE_DRIVERS[0],
            bridge_created: false,
            rules: Vec::new(),
        };
        // From here on an error drops `sandbox`, which undoes what was done.
        let context = |err: String| format!("sandbox dockerd {name:?} (#{index}): {err}");
        fs::write(sandbox.dir.join("name"), name).map_err(|err| context(err.to_string()))?;
        sandbox.create_bridge().map_err(context)?;
        sandbox.add_nat();
        sandbox.write_config(runtimes).map_err(context)?;
        let drivers: Vec<&'static str> = match WORKING_DRIVER.get() {
            Some(driver) => vec![*driver],
            None => STORAGE_DRIVERS.to_vec(),
        };
        let mut failures = Vec::new();
        for driver in drivers {
            match sandbox.run_daemon(driver) {
                Ok(()) => {
                    let _ = WORKING_DRIVER.set(driver);
                    sandbox.storage_driver = driver;
                    return Ok(sandbox);
                }
                Err(StartFailure::Exited(log)) => {
                    failures.push(format!("with --storage-driver={driver} it exited: {log}"));
                    sandbox.reset_data_root().map_err(context)?;
                }
                Err(StartFailure::Fatal(err)) => return Err(context(err)),
            }
        }
        Err(context(failures.join("; ")))
    }

    /// The `DOCKER_HOST` value that reaches this daemon: `unix:///tmp/stratus-sbx/N/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// The daemon's API socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The name given to [`SandboxDockerd::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sandbox's own bridge interface (`stsb<N>`).
    pub fn bridge(&self) -> String {
        bridge_name(self.index)
    }

    /// The bridge's subnet, `172.31.N.0/24`; the host is `172.31.N.1` on it.
    pub fn subnet(&self) -> String {
        subnet(self.index)
    }

    /// The storage driver the daemon runs with.
    pub fn storage_driver(&self) -> &str {
        self.storage_driver
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// Copies `image` from the host's Docker daemon (the `docker` CLI's default) into this
    /// one: `docker save | docker load`.
    pub fn copy_image_from_system(&self, image: &str) -> Result<(), String> {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot run docker save: {err}"))?;
        let Some(images) = save.stdout.take() else {
            return Err("docker save has no stdout".into());
        };
        let load = Command::new("docker")
            .args(["-H", &self.host(), "load", "-q"])
            .stdin(images)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|err| format!("cannot run docker load: {err}"))?;
        let saved = save
            .wait_with_output()
            .map_err(|err| format!("docker save: {err}"))?;
        if !saved.status.success() {
            return Err(format!(
                "docker save {image} from the host's daemon failed ({}): {}",
                saved.status,
                String::from_utf8_lossy(&saved.stderr).trim()
            ));
        }
        if !load.status.success() {
            return Err(format!(
                "docker load of {image} into sandbox {:?} failed ({}): {}",
                self.name,
                load.status,
                String::from_utf8_lossy(&load.stderr).trim()
            ));
        }
        Ok(())
    }

    /// True when this daemon has `image` (by name or id).
    pub fn has_image(&self, image: &str) -> bool {
        self.docker(&["image", "inspect", image]).status.success()
    }

    /// Runs the docker CLI against this daemon (`docker -H <host> args...`) and returns
    /// what it did; a CLI that cannot be started is an exit status of 127 with the reason
    /// as its stderr.
    pub fn docker(&self, args: &[&str]) -> Output {
        docker_at(&self.host(), args)
    }

    fn create_bridge(&mut self) -> Result<(), String> {
        let bridge = self.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        self.bridge_created = true;
        let gateway = format!("172.31.{}.1/24", self.index);
        run("ip", &["addr", "add", &gateway, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])
    }

    /// Outbound access for the sandbox's containers (and `RUN` steps of builds), as
    /// Docker's own rules give the host's: best effort, since a test that never leaves the
    /// machine does not need it.
    fn add_nat(&mut self) {
        for rule in nat_rules(self.index) {
            let (table, chain, spec) = (&rule[0], &rule[1], &rule[2..]);
            let verb = if chain == "POSTROUTING" { "-A" } else { "-I" };
            let mut args = vec!["-w", "-t", table.as_str(), verb, chain.as_str()];
            args.extend(spec.iter().map(String::as_str));
            match run("iptables", &args) {
                Ok(()) => self.rules.push(rule),
                Err(err) => {
                    eprintln!(
                        "sandbox dockerd {:?}: no outbound access for its containers: {err}",
                        self.name
                    );
                    return;
                }
            }
        }
    }

    /// `{}` but for the host's MTU (a smaller link MTU, 1400 here, with Docker's default
    /// 1500 stalls TLS downloads inside containers) and the extra runtimes.
    fn write_config(&self, runtimes: &[SandboxRuntime]) -> Result<(), String> {
        let config = daemon_config(host_mtu(), runtimes);
        fs::write(self.dir.join("daemon.json"), config.to_string())
            .map_err(|err| format!("cannot write daemon.json: {err}"))
    }

    fn run_daemon(&mut self, driver: &str) -> Result<(), StartFailure> {
        let fatal = StartFailure::Fatal;
        let dir = &self.dir;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|err| fatal(format!("cannot open the daemon's log: {err}")))?;
        let log_err = log
            .try_clone()
            .map_err(|err| fatal(format!("cannot open the daemon's log: {err}")))?;
        let arg = |name: &str, path: &str| format!("--{name}={}", dir.join(path).display());
        let mut command = Command::new("dockerd");
        command
            .arg(arg("data-root", "data"))
            .arg(arg("exec-root", "x"))
            .arg(format!("--host={}", self.host()))
            .arg(arg("pidfile", "docker.pid"))
            .arg(arg("config-file", "daemon.json"))
            .arg(format!("--bridge={}", self.bridge()))
            .arg("--iptables=false")
            .arg(format!("--storage-driver={driver}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // The host's client settings are not the daemon's.
        for var in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
        ] {
            command.env_remove(var);
        }
        let started = SystemTime::now();
        let child = command
            .spawn()
            .map_err(|err| fatal(format!("cannot run dockerd: {err}")))?;
        self.daemon = Some(child);
        loop {
            if let Some(child) = self.daemon.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.daemon = None;
                return Err(StartFailure::Exited(format!(
                    "{status}; its log ends:\n{}",
                    self.log_tail()
                )));
            }
            if docker_at(&self.host(), &["info", "--format", "{{.ID}}"])
                .status
                .success()
            {
                return Ok(());
            }
            if started.elapsed().unwrap_or_default() > START_TIMEOUT {
                self.stop_daemon();
                return Err(fatal(format!(
                    "dockerd did not answer on {} within {} s; its log ends:\n{}",
                    self.host(),
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// After a driver that did not start: an empty data root for the next.
    fn reset_data_root(&self) -> Result<(), String> {
        kill_processes_under(&self.dir);
        unmount_under(&self.dir);
        let data = self.dir.join("data");
        if mounts_under(&data).is_empty() && data.exists() {
            fs::remove_dir_all(&data)
                .map_err(|err| format!("cannot empty {}: {err}", data.display()))?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let Ok(pid) = i32::try_from(child.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let asked = SystemTime::now();
        while asked.elapsed().unwrap_or_default() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "sandbox dockerd {:?} did not stop within {} s of SIGTERM: killing it",
            self.name,
            STOP_TIMEOUT.as_secs()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for SandboxDockerd {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let listed = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&listed.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
            self.stop_daemon();
        }
        let rules = std::mem::take(&mut self.rules);
        tear_down(self.index, &self.dir, self.bridge_created, &rules);
    }
}

/// The sandbox daemon's `daemon.json`.
fn daemon_config(mtu: Option<u32>, runtimes: &[SandboxRuntime]) -> serde_json::Value {
    let mut config = serde_json::Map::new();
    if let Some(mtu) = mtu {
        config.insert("mtu".into(), mtu.into());
    }
    if !runtimes.is_empty() {
        let runtimes: serde_json::Map<String, serde_json::Value> = runtimes
            .iter()
            .map(|runtime| {
                (
                    runtime.name.clone(),
                    serde_json::json!({ "path": runtime.path, "runtimeArgs": runtime.args }),
                )
            })
            .collect();
        config.insert("runtimes".into(), runtimes.into());
    }
    config.into()
}

enum StartFailure {
    /// The daemon exited at start (e.g. its storage driver does not work here): its log.
    Exited(String),
    /// Anything else: no point trying another driver.
    Fatal(String),
}

fn bridge_name(index: u8) -> String {
    format!("stsb{index}")
}

fn subnet(index: u8) -> String {
    format!("172.31.{index}.0/24")
}

/// `[table, chain, spec...]` of the rules that give a sandbox's subnet outbound access.
fn nat_rules(index: u8) -> Vec<Vec<String>> {
    let bridge = bridge_name(index);
    let subnet = subnet(index);
    let rule = |words: &[&str]| words.iter().map(|word| word.to_string()).collect();
    vec![
        rule(&[
            "nat",
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-o",
            &bridge,
            "-j",
            "MASQUERADE",
        ]),
        rule(&["filter", "FORWARD", "-i", &bridge, "-j", "ACCEPT"]),
        rule(&[
            "filter",
            "FORWARD",
            "-o",
            &bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ]),
    ]
}

/// A lock on [`BASE`] shared by threads and processes: a folder created atomically, with
/// the holder's pid in it so that a holder that died is not waited for.
struct BaseLock(PathBuf);

impl BaseLock {
    fn take() -> Result<BaseLock, String> {
        let path = Path::new(BASE).join(".lock");
        let asked = SystemTime::now();
        loop {
            match fs::create_dir(&path) {
                Ok(()) => {
                    let _ = fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(BaseLock(path));
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(format!("cannot create {}: {err}", path.display())),
            }
            let holder = fs::read_to_string(path.join("pid"))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok());
            let abandoned = match holder {
                Some(pid) => !Path::new("/proc").join(pid.to_string()).exists(),
                None => fs::metadata(&path)
                    .and_then(|meta| meta.modified())
                    .is_ok_and(|at| at.elapsed().unwrap_or_default() > Duration::from_secs(10)),
            };
            if abandoned {
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            if asked.elapsed().unwrap_or_default() > START_TIMEOUT {
                return Err(format!(
                    "{} has been held by pid {holder:?} for {} s",
                    path.display(),
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BaseLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Takes the first free index: its folder is created atomically, so two processes never
/// take the same one. An index whose bridge name or subnet is in use on the host is skipped.
fn allocate() -> Result<u8, String> {
    let routes = output_text("ip", &["-4", "route", "show"]).unwrap_or_default();
    for index in 1..=254u8 {
        if Path::new("/sys/class/net")
            .join(bridge_name(index))
            .exists()
            || routes.contains(&format!("172.31.{index}."))
        {
            continue;
        }
        let dir = Path::new(BASE).join(index.to_string());
        match fs::create_dir(&dir) {
            Ok(()) => {
                let mut owner = fs::File::create(dir.join("owner"))
                    .map_err(|err| format!("cannot write {}/owner: {err}", dir.display()))?;
                write!(owner, "{}", std::process::id())
                    .map_err(|err| format!("cannot write {}/owner: {err}", dir.display()))?;
                return Ok(index);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(format!("cannot create {}: {err}", dir.display())),
        }
    }
    Err(format!(
        "no free sandbox: 254 in use under {BASE} or their 172.31.N.0/24 subnets are taken"
    ))
}

/// Tears down the sandboxes left by test processes that died without dropping them.
fn clean_stale() {
    let Ok(entries) = fs::read_dir(BASE) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u8>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let stale = match owner {
            Some(pid) => !Path::new("/proc").join(pid.to_string()).exists(),
            // Being set up right now, or left half made long ago.
            None => fs::metadata(&dir)
                .and_then(|meta| meta.modified())
                .is_ok_and(|at| at.elapsed().unwrap_or_default() > SETUP_GRACE),
        };
        if stale {
            eprintln!(
                "removing sandbox dockerd #{index} left by a process that is gone ({})",
                dir.display()
            );
            tear_down(index, &dir, true, &nat_rules(index));
        }
    }
}

/// Stops whatever still runs from `dir`, unmounts what is mounted under it, deletes the
/// rules, the bridge and the folder. Each step is best effort.
fn tear_down(index: u8, dir: &Path, bridge: bool, rules: &[Vec<String>]) {
    kill_processes_under(dir);
    unmount_under(dir);
    for rule in rules {
        let (table, chain, spec) = (&rule[0], &rule[1], &rule[2..]);
        let mut args = vec!["-w", "-t", table.as_str(), "-D", chain.as_str()];
        args.extend(spec.iter().map(String::as_str));
        let _ = run("iptables", &args);
    }
    if bridge
        && Path::new("/sys/class/net")
            .join(bridge_name(index))
            .exists()
    {
        let _ = run("ip", &["link", "del", &bridge_name(index)]);
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        let _ = fs::remove_dir_all(dir);
    } else {
        eprintln!(
            "sandbox dockerd #{index}: {} kept, still mounted: {}",
            dir.display(),
            left.join(", ")
        );
    }
}

/// Kills every process whose command line names `dir` (dockerd, its containerd, the
/// shims) or that runs in one of its containers' cgroups (a container outlives a killed
/// shim): SIGTERM, then SIGKILL for those still there after 5 s.
fn kill_processes_under(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let containers: Vec<String> = fs::read_dir(dir.join("data/containers"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|id| id.len() == 64)
                .map(|id| format!("/{id}"))
                .collect()
        })
        .unwrap_or_default();
    let ours = |pid: i32| {
        let named = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|arg| arg.contains(&needle))
        });
        named
            || (!containers.is_empty()
                && fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|cgroups| {
                    cgroups.lines().any(|line| {
                        containers.iter().any(|id| {
                            line.ends_with(id.as_str()) || line.contains(&format!("{id}/"))
                        })
                    })
                }))
    };
    let me = std::process::id() as i32;
    let find = || -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me && ours(*pid))
            .collect()
    };
    let pids = find();
    if pids.is_empty() {
        return;
    }
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    for _ in 0..50 {
        if find().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in find() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// The mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let inside = format!("{dir}/");
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| *point == dir || point.starts_with(&inside))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    mounts.dedup();
    mounts
}

fn unmount_under(dir: &Path) {
    for point in mounts_under(dir) {
        if run("umount", &[&point]).is_err() {
            let _ = run("umount", &["-l", &point]);
        }
    }
}

/// The MTU the host's daemon gives containers (its daemon.json), or the host's default
/// route's when below 1500.
fn host_mtu() -> Option<u32> {
    let configured = fs::read_to_string("/etc/docker/daemon.json")
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config.get("mtu")?.as_u64())
        .and_then(|mtu| u32::try_from(mtu).ok());
    if configured.is_some() {
        return configured;
    }
    let route = output_text("ip", &["-4", "route", "show", "default"])?;
    let device = route
        .split_whitespace()
        .skip_while(|word| *word != "dev")
        .nth(1)?;
    let mtu: u32 = fs::read_to_string(format!("/sys/class/net/{device}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (mtu < 1500).then_some(mtu)
}

fn docker_at(host: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| Output {
            status: ExitStatus::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot run docker: {err}").into_bytes(),
        })
}

/// Runs a command; its stderr is the error when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn output_text(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sandbox_has_its_own_bridge_and_subnet() {
        assert_eq!(bridge_name(7), "stsb7");
        assert_eq!(subnet(7), "172.31.7.0/24");
        assert!(
            bridge_name(254).len() < 16,
            "interface names are at most 15 bytes"
        );
        let rules = nat_rules(7);
        assert_eq!(rules.len(), 3);
        assert!(rules.iter().all(|rule| rule.contains(&"stsb7".to_string())));
    }

    #[test]
    fn extra_runtimes_go_into_the_daemon_config() {
        assert_eq!(daemon_config(None, &[]), serde_json::json!({}));
        let runsc = SandboxRuntime {
            name: "runsc".into(),
            path: "/usr/bin/runsc".into(),
            args: vec!["--platform=ptrace".into()],
        };
        assert_eq!(
            daemon_config(Some(1400), &[runsc]),
            serde_json::json!({
                "mtu": 1400,
                "runtimes": { "runsc": { "path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace"] } }
            })
        );
    }
}
