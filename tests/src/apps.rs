//! Real app servers for the end-to-end tests: uWSGI, gunicorn and nginx processes, started with or
//! without the reuselb shim, killed with their whole process group when dropped (panics included);
//! a bounded HTTP load generator (the library's HTTP client); uWSGI's stats server.
use std::{
    collections::{BTreeSet, HashMap},
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use balancer_user::http::client::Blocking;
use rustix::process::{kill_process, kill_process_group, test_kill_process, Pid, Signal};

/// The workspace root (the tests crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The demo WSGI apps' directory (`tests/apps`).
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

fn artifact(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release").join(default));
    assert!(
        path.is_file(),
        "{} not found ({env} unset or wrong): build it with `cargo build --release -p balancer-user -p balancer-shim` \
         or run the tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// The `reuselb` binary (`REUSELB_BIN`, else `target/release/reuselb`). Panics if missing.
pub fn reuselb_bin() -> PathBuf {
    artifact("REUSELB_BIN", "reuselb")
}

/// `reuselb run` under `prlimit --nofile=NOFILE:NOFILE` (the controller is prlimit's exec: the
/// same pid), its registry on `dir/shim.sock`, its service on `addr`, `args` added, an app that
/// only sleeps, its log in `dir/run.log`. Returns once the registration socket exists.
pub fn reuselb_run_with_nofile(dir: &Path, addr: SocketAddr, nofile: usize, args: &[&str]) -> Proc {
    let socket = dir.join("shim.sock");
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(reuselb_bin())
        .args(["run", "--listen", &addr.to_string(), "--socket"])
        .arg(&socket)
        .args(["--no-metrics", "--status-every", "0"])
        .args(args)
        .args(["--", "sleep", "60"]);
    let run = Proc::spawn("reuselb run", cmd, &dir.join("run.log"));
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()),
        "reuselb run did not start: {}",
        run.log_tail(20)
    );
    run
}

/// The shim (`REUSELB_SHIM`, else `target/release/libbalancer_shim.so`). Panics if missing.
pub fn shim_lib() -> PathBuf {
    artifact("REUSELB_SHIM", "libbalancer_shim.so")
}

/// Panics unless `program` can be run (`program --version`, or `-v` for nginx, succeeds).
pub fn require(program: &str) {
    let flag = if program == "nginx" { "-v" } else { "--version" };
    let ok = Command::new(program).arg(flag).stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        ok.map(|s| s.success()).unwrap_or(false),
        "{program} is required by this test and is not installed (run `cargo xtask setup`)"
    );
}

/// The machine, as the tests of this binary share it: a test that measures holds it alone
/// ([`serial`]); a test that loads it (starts processes, opens many connections, builds an image)
/// but measures nothing timing-dependent shares it with others like it ([`shared`]), never with
/// one that measures. The machines have few cores: a measurement beside another test's load
/// would measure that load.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The machine to itself, for a test that measures (balance, latency, timing): no other test of
/// the binary runs meanwhile, nor shares its ports or processes.
pub fn serial() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// The machine shared with other such tests, for a test that loads it but measures nothing
/// timing-dependent: it waits while a measuring test runs ([`serial`]).
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A free loopback port (the kernel picks one). The tests call it in a private network namespace
/// (`private_loopback`), where nothing else takes ports.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// A fresh directory under the system temp dir (`reuselb-<tag>-<random>`), removed when dropped:
/// [`tempfile::TempDir`], with the mode 0755 a plain `mkdir` gives, so that a test's process of
/// another uid (hostile.rs) reaches the sockets in it and is refused by the registry, not by the
/// directory.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("reuselb-{tag}-"))
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for {tag}: {e}"));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A test's own bpffs directory, `/sys/fs/bpf/reuselb-test-<pid>-<tag>` (emptied first if a
/// killed run left it), for a group's or a daemon's pins; removed however the test ends.
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/reuselb-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Per-worker requests served between two reads of uWSGI's stats (`uwsgi_stats`): by pid, a
/// worker absent from `before` counting from 0.
pub fn stats_delta(before: &[(u32, u64)], after: &[(u32, u64)]) -> Vec<u64> {
    after
        .iter()
        .map(|(pid, n)| n - before.iter().find(|(p, _)| p == pid).map(|(_, b)| *b).unwrap_or(0))
        .collect()
}

/// A process started in a process group of its own. Dropping it SIGKILLs that group, and the
/// group of any child it started in its own group (`reuselb run` does that for the app).
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    extra_groups: Vec<i32>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Self {
        let out =
            std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
        let err = out.try_clone().expect("dup log");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name: name.into(), child, log: log.into(), extra_groups: Vec::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The direct children's pids.
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    /// Remembers the process group of each current child (for `reuselb run`, the app server's).
    pub fn adopt_child_groups(&mut self) {
        for c in self.children() {
            if !self.extra_groups.contains(&(c as i32)) {
                self.extra_groups.push(c as i32);
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` to the process (not the group).
    pub fn signal(&self, sig: i32) {
        let signal = Signal::from_named_raw(sig).unwrap_or_else(|| panic!("{sig} is not a signal"));
        // An exited process is not an error here: the test sees it exited.
        if let Some(pid) = pid(self.pid()) {
            let _ = kill_process(pid, signal);
        }
    }

    /// Waits up to `timeout` for the process to exit; its exit status, if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Groups that are gone already are fine: the point is that none is left.
        for group in self.extra_groups.iter().chain([&(self.child.id() as i32)]) {
            if let Some(group) = pid(*group as u32) {
                let _ = kill_process_group(group, Signal::KILL);
            }
        }
        let _ = self.child.wait();
        // Give the kernel a moment to reap grandchildren (they are re-parented to init).
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The processes `depth` generations below `pid` (1: its children, 2: its grandchildren).
pub fn descendants(pid: u32, depth: u32) -> Vec<u32> {
    let mut level = vec![pid];
    for _ in 0..depth {
        level = level.iter().flat_map(|p| children_of(*p)).collect();
    }
    level
}

pub fn alive(pid: u32) -> bool {
    self::pid(pid).is_some_and(|pid| test_kill_process(pid).is_ok())
}

/// A process id as rustix takes it: None for 0 or one out of range, which names no process.
fn pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// uWSGI

/// How uWSGI talks on its balanced socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UwsgiProto {
    /// `http-socket`: plain HTTP.
    Http,
    /// `socket`: the uwsgi protocol (behind nginx `uwsgi_pass`).
    Uwsgi,
    /// `http11-socket`: HTTP/1.1 with keep-alive.
    Http11,
}

/// A uWSGI configuration with the seed's settings.
#[derive(Clone, Debug)]
pub struct UwsgiConfig {
    pub addr: SocketAddr,
    pub proto: UwsgiProto,
    pub stats_port: u16,
    pub processes: u32,
    pub threads: u32,
    pub max_requests: Option<u32>,
    pub app: PathBuf,
    /// Each worker loads the app itself (`--lazy-apps`, the default here), or the master loads
    /// it and the workers fork from it.
    pub lazy_apps: bool,
    /// More uWSGI options.
    pub extra: Vec<String>,
}

impl UwsgiConfig {
    pub fn new(addr: SocketAddr, proto: UwsgiProto) -> Self {
        Self {
            addr,
            proto,
            stats_port: free_port(),
            processes: 8,
            threads: 20,
            max_requests: None,
            app: apps_dir().join("gil_app.py"),
            lazy_apps: true,
            extra: Vec::new(),
        }
    }

    /// `uwsgi` and its arguments.
    pub fn command_line(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "uwsgi".into(),
            "--plugin".into(),
            "python3".into(),
            "--master".into(),
            "--processes".into(),
            self.processes.to_string(),
            "--threads".into(),
            self.threads.to_string(),
            "--enable-threads".into(),
            "--lazy-apps".into(),
            "--die-on-term".into(),
            "--disable-logging".into(),
            "--stats".into(),
            format!("127.0.0.1:{}", self.stats_port),
            "--wsgi-file".into(),
            self.app.display().to_string(),
            match self.proto {
                UwsgiProto::Http => "--http-socket".into(),
                UwsgiProto::Uwsgi => "--socket".into(),
                UwsgiProto::Http11 => "--http11-socket".into(),
            },
            self.addr.to_string(),
        ];
        if !self.lazy_apps {
            // A flag without a value: the master loads the app, and the workers fork from it.
            v.retain(|a| a != "--lazy-apps");
        }
        if let Some(n) = self.max_requests {
            v.push("--max-requests".into());
            v.push(n.to_string());
        }
        v.extend(self.extra.iter().cloned());
        v
    }

    /// Per-worker figures from the stats server (`(pid, requests)`), or None if it does not answer.
    pub fn stats(&self) -> Option<Vec<(u32, u64)>> {
        uwsgi_stats(self.stats_port)
    }

    /// Starts this uWSGI with the shim preloaded, registering at `socket` (a controller may be
    /// there or not), its output in `log`; waits until every worker is up (`wait_ready`, 30 s).
    /// Panics with the log's tail otherwise.
    pub fn start_with_shim(&self, socket: &Path, log: &Path) -> Proc {
        let app = spawn_with_shim(&self.command_line(), self.addr, socket, log);
        assert!(
            self.wait_ready(Duration::from_secs(30)),
            "uWSGI did not start ({}): {}",
            log.display(),
            app.log_tail(40)
        );
        app
    }

    /// Waits until the stats server answers with every worker up (`ready`: accepting requests).
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.stats()
                .map(|w| w.len() == self.processes as usize && w.iter().all(|(pid, _)| *pid != 0))
                .unwrap_or(false)
        })
    }
}

/// Pids of the uWSGI workers running a request now (stats server on 127.0.0.1:`stats_port`:
/// `status` "busy"); empty if it does not answer.
pub fn busy_workers(stats_port: u16) -> std::collections::HashSet<u32> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", stats_port)) else {
        return Default::default();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut text = String::new();
    if s.read_to_string(&mut text).is_err() {
        return Default::default();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return Default::default() };
    v["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| w["status"].as_str() == Some("busy"))
                .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads uWSGI's stats server (raw JSON over TCP): `(pid, requests)` per worker.
pub fn uwsgi_stats(port: u16) -> Option<Vec<(u32, u64)>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let workers = v.get("workers")?.as_array()?;
    Some(
        workers
            .iter()
            .map(|w| (w["pid"].as_u64().unwrap_or(0) as u32, w["requests"].as_u64().unwrap_or(0)))
            .collect(),
    )
}

/// Starts uWSGI with no reuselb at all.
pub fn spawn_plain(cmdline: &[String], log: &Path) -> Proc {
    let mut cmd = Command::new(&cmdline[0]);
    cmd.args(&cmdline[1..]);
    Proc::spawn(&cmdline[0], cmd, log)
}

/// Starts an app server with the shim preloaded by hand (the controller may be elsewhere, or not
/// running yet).
pub fn spawn_with_shim(cmdline: &[String], listen: SocketAddr, socket: &Path, log: &Path) -> Proc {
    spawn_with_shim_listening(cmdline, &[listen], socket, log)
}

/// [`spawn_with_shim`] balancing several addresses (`REUSELB_LISTEN` lists them all, as
/// `reuselb run --listen A --listen B` does).
pub fn spawn_with_shim_listening(
    cmdline: &[String],
    listen: &[SocketAddr],
    socket: &Path,
    log: &Path,
) -> Proc {
    let listen: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    let mut cmd = Command::new(&cmdline[0]);
    cmd.args(&cmdline[1..])
        .env("LD_PRELOAD", shim_lib())
        .env(balancer_common::protocol::ENV_LISTEN, listen.join(","))
        .env(balancer_common::protocol::ENV_SOCKET, socket);
    Proc::spawn(&cmdline[0], cmd, log)
}

/// Starts `reuselb run --listen ADDR --socket PATH -- cmdline...`.
pub fn spawn_reuselb_run(
    cmdline: &[String],
    listen: SocketAddr,
    socket: &Path,
    log: &Path,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(reuselb_bin());
    cmd.arg("run").arg("--listen").arg(listen.to_string()).arg("--socket").arg(socket);
    cmd.args(extra);
    cmd.arg("--").args(cmdline);
    let mut p = Proc::spawn("reuselb run", cmd, log);
    // The app server runs in a process group of its own: remember it for the cleanup.
    wait_until(Duration::from_secs(5), || !p.children().is_empty());
    p.adopt_child_groups();
    p
}

/// Number of TCP sockets in LISTEN state on loopback IPv4 `port`, in the calling thread's network
/// namespace (from /proc/thread-self/net/tcp: /proc/net is the main thread's).
pub fn listening_sockets(port: u16) -> usize {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/thread-self/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
        .count()
}

/// The processes whose shim logged a registration in `text` (`reuselb-shim[pid]: registered …`).
///
/// Processes, not lines: a process may register more than once (a fresh socket that lost a race
/// to a rescue's own socket is registered, dropped and replaced; a controller that went away is
/// registered with again), and each registration logs a line.
pub fn registered_pids(text: &str) -> BTreeSet<u32> {
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find("reuselb-shim[")? + "reuselb-shim[".len()..];
            let (pid, tail) = rest.split_once("]: ")?;
            tail.starts_with("registered ").then(|| pid.parse().ok())?
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// gunicorn and nginx

/// gunicorn with `workers` sync workers serving the demo app on `addr`.
pub fn gunicorn_command_line(addr: SocketAddr, workers: u32) -> Vec<String> {
    vec![
        "gunicorn".into(),
        "--chdir".into(),
        apps_dir().display().to_string(),
        "--workers".into(),
        workers.to_string(),
        "--worker-class".into(),
        "sync".into(),
        "--bind".into(),
        addr.to_string(),
        "--backlog".into(),
        "256".into(),
        "--timeout".into(),
        "30".into(),
        "gil_app:application".into(),
    ]
}

/// nginx in the foreground, one process, listening on `port` and passing every request to the
/// uwsgi-protocol socket `upstream`. Its files live in `dir`.
pub fn spawn_nginx(dir: &Path, port: u16, upstream: SocketAddr) -> Proc {
    start_nginx(dir, port, &Nginx { upstreams: &[upstream], ..Nginx::default() })
        .unwrap_or_else(|e| panic!("{e}"))
}

/// How nginx passes requests on: to these uwsgi-protocol sockets, with `least_conn` or its
/// default round robin, and with a fastrouter key if one is given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nginx<'a> {
    pub upstreams: &'a [SocketAddr],
    pub least_conn: bool,
    pub fastrouter_key: Option<&'a str>,
}

/// nginx in the foreground, one process, listening on `port` and passing every request on as
/// `how` says. Its files live in `dir`. Returns once it accepts connections; an error with its
/// logs if it did not start within 5 s.
pub fn start_nginx(dir: &Path, port: u16, how: &Nginx<'_>) -> Result<Proc, String> {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    let servers: String = how.upstreams.iter().map(|u| format!("    server {u};\n")).collect();
    let balance = if how.least_conn { "    least_conn;\n" } else { "" };
    let key = how
        .fastrouter_key
        .map(|k| format!("      uwsgi_param UWSGI_FASTROUTER_KEY {k};\n"))
        .unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream app {{\n{balance}{servers}  }}\n\
             server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    location / {{\n      include /etc/nginx/uwsgi_params;\n{key}\
                   uwsgi_pass app;\n    }}\n  }}\n}}\n"
        ),
    )
    .map_err(|e| format!("writing {}: {e}", conf.display()))?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
    let p = Proc::spawn("nginx", cmd, &dir.join("nginx.log"));
    if !wait_until(Duration::from_secs(5), || TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        return Err(format!(
            "nginx did not start: {}\n{}",
            p.log_tail(20),
            std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
        ));
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Load

/// Outcome of a load run.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// Of the failures, how many were empty answers (the server accepted the connection and closed
    /// it without answering); the others were refused, reset or timed out.
    pub empty_answers: u64,
    /// Requests answered, per worker pid (from the app's `pid=` body).
    pub by_pid: HashMap<u32, u64>,
    /// A few failure messages.
    pub errors: Vec<String>,
    /// When each failure happened, relative to the start.
    pub failure_times: Vec<Duration>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Counts one request's outcome: the worker's pid that answered, or the error (failed at
    /// `at`, relative to the start); keeps at most `max_errors` messages.
    fn count(&mut self, outcome: Result<u32, String>, at: Duration, max_errors: usize) {
        match outcome {
            Ok(pid) => {
                self.ok += 1;
                *self.by_pid.entry(pid).or_default() += 1;
            }
            Err(e) => {
                self.failed += 1;
                self.empty_answers += u64::from(e == EMPTY_ANSWER);
                self.failure_times.push(at);
                if self.errors.len() < max_errors {
                    self.errors.push(e);
                }
            }
        }
    }

    /// busiest / ideal over the given per-worker counts.
    pub fn imbalance(counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        if counts.is_empty() || total == 0 {
            return f64::INFINITY;
        }
        let ideal = total as f64 / counts.len() as f64;
        *counts.iter().max().unwrap() as f64 / ideal
    }
}

/// A load generator running in the background: `concurrency` threads, each doing GETs (a fresh
/// connection each, with the library's HTTP client) to `addr` until stopped or `max` passes.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    report: Arc<Mutex<LoadReport>>,
    started: Instant,
    /// Requests answered so far, live (the report adds them up only at the end).
    served: Arc<AtomicU64>,
}

impl Load {
    pub fn start(addr: SocketAddr, concurrency: usize, path: &str, max: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let started = Instant::now();
        let served = Arc::new(AtomicU64::new(0));
        let threads = (0..concurrency)
            .map(|_| {
                let stop = stop.clone();
                let report = report.clone();
                let served = served.clone();
                let path = path.to_owned();
                std::thread::spawn(move || {
                    let mut local = LoadReport::default();
                    let client = Blocking::new().expect("a runtime for the load's HTTP client");
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
                        let outcome = crate::http::worker_pid(&client, addr, &path);
                        let failed = outcome.is_err();
                        if !failed {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        local.count(outcome, started.elapsed(), 5);
                        if failed {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    let mut r = report.lock().unwrap();
                    r.ok += local.ok;
                    r.failed += local.failed;
                    r.empty_answers += local.empty_answers;
                    for (pid, n) in local.by_pid {
                        *r.by_pid.entry(pid).or_default() += n;
                    }
                    r.failure_times.extend(local.failure_times);
                    for e in local.errors {
                        if r.errors.len() < 10 {
                            r.errors.push(e);
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads, report, started, served }
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops the load and returns what happened.
    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut r = self.report.lock().unwrap().clone();
        r.elapsed = self.started.elapsed();
        r.failure_times.sort();
        r
    }

    /// An open loop: `count` GETs of `path`, started evenly over `window` whatever happened to
    /// the earlier ones, each on a thread and a connection of its own; waits for every answer (or
    /// the client's timeout). Every request is counted however long it waits, unlike a closed
    /// loop, whose clients stop sending while one of their requests is stuck.
    pub fn paced(addr: SocketAddr, count: usize, path: &str, window: Duration) -> LoadReport {
        let started = Instant::now();
        let step = window / count.max(1) as u32;
        let threads: Vec<_> = (0..count)
            .map(|i| {
                let at = step * i as u32;
                std::thread::sleep(at.saturating_sub(started.elapsed()));
                let path = path.to_owned();
                std::thread::spawn(move || (crate::http::one_request(addr, &path), at))
            })
            .collect();
        let mut r = LoadReport::default();
        for t in threads {
            let (outcome, at) = t.join().expect("a paced request's thread");
            r.count(outcome, at, 10);
        }
        r.elapsed = started.elapsed();
        r
    }

    /// Runs a load for `duration` and returns the report.
    pub fn run(addr: SocketAddr, concurrency: usize, path: &str, duration: Duration) -> LoadReport {
        let load = Self::start(addr, concurrency, path, duration);
        std::thread::sleep(duration);
        load.finish()
    }
}

pub use crate::http::one_request;
/// The error of [`crate::http::worker_pid`] for a connection closed with no answer at all.
pub use crate::http::EMPTY_ANSWER;
