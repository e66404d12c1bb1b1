//! `bench compare`: reuselb against what people run today, side by side on one machine.
//!
//! The seed's setup, nginx in front of uWSGI (8 processes × 20 threads, GIL-bound Python), in seven
//! configurations:
//!
//! | | configuration |
//! |---|---|
//! | A | uWSGI default: one shared listening socket |
//! | B | uWSGI `--thunder-lock` |
//! | C | per-worker SO_REUSEPORT sockets, the kernel's hash picks (`reuselb run --policy hash`) |
//! | D | uWSGI fastrouter with two uWSGI instances subscribed (half the processes each) |
//! | E | nginx `upstream { least_conn; }` over single-process uWSGI instances (one per process) |
//! | F | reuselb least-loaded |
//! | G | reuselb p2c |
//!
//! Three workloads (uniform CPU-bound; I/O then CPU; skewed: mostly short, a few long), and the
//! same with processes = cores (2 × 20 on a 2-core machine). All seven configurations of a variant
//! run at once, each behind its own nginx, idle but for the one being measured; runs are
//! interleaved (every configuration, then again, in a rotated order) and repeated, and the report
//! gives medians over the runs and ratios to A:
//!
//! 1. maximum throughput: closed loop, enough clients that a perfect balancer keeps every process
//!    busy twice over, and no more (more would hide an imbalance behind full queues);
//! 2. latency at 60% and 90% of A's maximum: open loop, Poisson arrivals, latency from each
//!    request's scheduled send time (corrected for coordinated omission), the same arrival times
//!    and request mix for every configuration;
//! 3. at 90%: the share of each worker process (busiest / ideal, coefficient of variation, from the
//!    pid in each answer), context switches per request of every process behind nginx (from
//!    /proc/<pid>/task/*/status), CPU per request of nginx and of the router or controller (from
//!    /proc/<pid>/task/*/schedstat), and for reuselb the kernel's ns per selection of the attached
//!    program (BPF run-time statistics, on for those runs only).
//!
//! Everything runs on 127.0.0.1 in a private network namespace; every process is killed when its
//! guard drops (error and Ctrl-C included).
use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::apps::{self, free_port, require, wait_until, Proc, TempDir, UwsgiConfig, UwsgiProto};
use anyhow::{bail, Context, Result};

use super::{
    chart::{self, Panel},
    choose_netns, kernel_release,
    loadgen::{self, check_interrupted, Mode, Outcome, Rng, Spec},
    summarize, target_dir,
};

// ---------------------------------------------------------------------------------------------
// What is compared

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cfg {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
}

pub const ALL_CFGS: [Cfg; 7] = [Cfg::A, Cfg::B, Cfg::C, Cfg::D, Cfg::E, Cfg::F, Cfg::G];

impl Cfg {
    fn letter(self) -> char {
        match self {
            Cfg::A => 'A',
            Cfg::B => 'B',
            Cfg::C => 'C',
            Cfg::D => 'D',
            Cfg::E => 'E',
            Cfg::F => 'F',
            Cfg::G => 'G',
        }
    }

    fn from_letter(c: char) -> Option<Self> {
        ALL_CFGS.iter().copied().find(|k| k.letter() == c.to_ascii_uppercase())
    }

    fn label(self) -> &'static str {
        match self {
            Cfg::A => "uWSGI shared socket",
            Cfg::B => "uWSGI thunder-lock",
            Cfg::C => "SO_REUSEPORT, kernel hash",
            Cfg::D => "fastrouter, 2 instances",
            Cfg::E => "nginx least_conn",
            Cfg::F => "reuselb least-loaded",
            Cfg::G => "reuselb p2c",
        }
    }

    fn short(self) -> String {
        format!("{} {}", self.letter(), self.label())
    }

    fn reuselb_policy(self) -> Option<&'static str> {
        match self {
            Cfg::C => Some("hash"),
            Cfg::F => Some("least-loaded"),
            Cfg::G => Some("p2c"),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Every request: 4 ms of CPU.
    Uniform,
    /// Every request: a 10 ms wait (GIL released), then 2 ms of CPU.
    IoCpu,
    /// 95% of requests 2 ms of CPU, 5% 50 ms (the demo app's mix).
    Skewed,
}

pub const ALL_WORKLOADS: [Workload; 3] = [Workload::Uniform, Workload::IoCpu, Workload::Skewed];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::IoCpu => "io+cpu",
            Workload::Skewed => "skewed",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::Uniform => "every request burns 4 ms of CPU under the GIL (`/?cpu=4`)",
            Workload::IoCpu => "every request waits 10 ms with the GIL released, then burns 2 ms of CPU (`/?io=10&cpu=2`)",
            Workload::Skewed => "95% of requests burn 2 ms of CPU, 5% burn 50 ms (`/?cpu=2`, `/?cpu=50`; the demo app's mix)",
        }
    }

    fn paths(self) -> Vec<String> {
        match self {
            Workload::Uniform => vec!["/?cpu=4".into()],
            Workload::IoCpu => vec!["/?io=10&cpu=2".into()],
            Workload::Skewed => vec!["/?cpu=2".into(), "/?cpu=50".into()],
        }
    }

    fn pick(self, rng: &mut Rng) -> usize {
        match self {
            Workload::Skewed => usize::from(rng.unit() < 0.05),
            _ => 0,
        }
    }

    /// Mean CPU and mean wall time of a request's work, in ms.
    fn means(self) -> (f64, f64) {
        match self {
            Workload::Uniform => (4.0, 4.0),
            Workload::IoCpu => (2.0, 12.0),
            Workload::Skewed => (0.95 * 2.0 + 0.05 * 50.0, 0.95 * 2.0 + 0.05 * 50.0),
        }
    }

    /// Closed-loop clients: two requests' worth of work per process, counting the waits.
    fn clients(self, processes: u32) -> usize {
        let (cpu, wall) = self.means();
        (2.0 * processes as f64 * wall / cpu).ceil() as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub processes: u32,
    pub threads: u32,
}

impl Variant {
    fn name(self) -> String {
        format!("{}x{}", self.processes, self.threads)
    }
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Debug)]
pub struct Options {
    pub full: bool,
    pub reps: usize,
    pub closed_secs: f64,
    pub open_secs: f64,
    pub warmup_secs: f64,
    /// Offered rates, as shares of A's maximum throughput.
    pub levels: Vec<f64>,
    pub variants: Vec<Variant>,
    pub workloads: Vec<Workload>,
    pub configs: Vec<Cfg>,
    pub no_netns: bool,
}

const USAGE: &str = "bench compare [--full] [--reps N] [--closed-secs S] [--open-secs S] [--warmup-secs S] \
                     [--configs ABCDEFG] [--workloads uniform,io+cpu,skewed] [--variants 8x20,2x20] [--no-netns]";

impl Options {
    fn quick() -> Self {
        Self {
            full: false,
            reps: 2,
            closed_secs: 1.5,
            open_secs: 1.5,
            warmup_secs: 0.5,
            levels: vec![0.6, 0.9],
            variants: vec![
                Variant { processes: 8, threads: 20 },
                Variant { processes: cores().max(1) as u32, threads: 20 },
            ],
            workloads: ALL_WORKLOADS.to_vec(),
            configs: ALL_CFGS.to_vec(),
            no_netns: false,
        }
    }

    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::quick();
        if args.iter().any(|a| a == "--full") {
            o.full = true;
            o.reps = 5;
            o.closed_secs = 3.0;
            o.open_secs = 6.0;
            o.warmup_secs = 2.0;
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut val = |name: &str| -> Result<String> {
                it.next().cloned().with_context(|| format!("{name} needs a value; usage: {USAGE}"))
            };
            match arg.as_str() {
                "--full" => {}
                "--reps" => o.reps = val("--reps")?.parse().context("--reps")?,
                "--closed-secs" => {
                    o.closed_secs = val("--closed-secs")?.parse().context("--closed-secs")?
                }
                "--open-secs" => {
                    o.open_secs = val("--open-secs")?.parse().context("--open-secs")?
                }
                "--warmup-secs" => {
                    o.warmup_secs = val("--warmup-secs")?.parse().context("--warmup-secs")?
                }
                "--configs" => {
                    let v = val("--configs")?;
                    o.configs = v
                        .chars()
                        .map(|c| {
                            Cfg::from_letter(c)
                                .with_context(|| format!("--configs: no configuration `{c}`"))
                        })
                        .collect::<Result<_>>()?;
                }
                "--workloads" => {
                    let v = val("--workloads")?;
                    o.workloads = v
                        .split(',')
                        .map(|w| {
                            ALL_WORKLOADS
                                .iter()
                                .copied()
                                .find(|x| x.name() == w || (w == "io" && *x == Workload::IoCpu))
                                .with_context(|| format!("--workloads: no workload `{w}`"))
                        })
                        .collect::<Result<_>>()?;
                }
                "--variants" => {
                    let v = val("--variants")?;
                    o.variants = v
                        .split(',')
                        .map(|s| {
                            let (p, t) = s
                                .split_once('x')
                                .with_context(|| format!("--variants: `{s}` is not PxT"))?;
                            Ok(Variant {
                                processes: p.parse().context("processes")?,
                                threads: t.parse().context("threads")?,
                            })
                        })
                        .collect::<Result<_>>()?;
                }
                "--no-netns" => o.no_netns = true,
                "-h" | "--help" => bail!("usage: {USAGE}"),
                other => bail!("unknown argument `{other}`; usage: {USAGE}"),
            }
        }
        if o.reps == 0 || o.configs.is_empty() || o.workloads.is_empty() || o.variants.is_empty() {
            bail!("nothing to run; usage: {USAGE}");
        }
        if o.closed_secs <= 0.0 || o.open_secs <= 0.0 {
            bail!("durations must be positive; usage: {USAGE}");
        }
        o.variants.dedup();
        Ok(o)
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------
// Deployments: one configuration's processes, killed on drop

/// Each configuration's processes. Dropping it kills nginx first, then every app server (each
/// [`Proc`] kills its process group, and `reuselb run`'s app group too), then removes its files.
struct Deployment {
    cfg: Cfg,
    /// nginx's address: where the load goes.
    front: SocketAddr,
    nginx: Option<Proc>,
    procs: Vec<Proc>,
    /// The uWSGI instances that run the app (their stats servers).
    instances: Vec<UwsgiConfig>,
    /// Roots of the process trees behind nginx (app servers, fastrouter, `reuselb run`).
    roots: Vec<u32>,
    /// The balancing process besides nginx: the fastrouter (its whole tree) or `reuselb run`
    /// (that process only, not the app it started).
    router: Option<(u32, bool)>,
    /// Worker process pids.
    workers: Vec<u32>,
    dir: TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.nginx.take();
        self.procs.clear();
    }
}

struct Binaries {
    reuselb: PathBuf,
    shim: PathBuf,
    _dir: TempDir,
}

/// Copies of reuselb and the shim in a private directory, so a rebuild during the bench does not
/// swap them under a running configuration.
fn snapshot_binaries() -> Result<Binaries> {
    let dir = TempDir::new("bench-bin");
    let reuselb = dir.path().join("reuselb");
    let shim = dir.path().join("libbalancer_shim.so");
    fs::copy(apps::reuselb_bin(), &reuselb).context("copying reuselb")?;
    fs::copy(apps::shim_lib(), &shim).context("copying the shim")?;
    Ok(Binaries { reuselb, shim, _dir: dir })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn uwsgi_config(addr: SocketAddr, processes: u32, threads: u32, extra: &[&str]) -> UwsgiConfig {
    let mut c = UwsgiConfig::new(addr, UwsgiProto::Uwsgi);
    c.processes = processes;
    c.threads = threads;
    c.app = apps::apps_dir().join("bench_app.py");
    c.extra = ["--listen", "1024"].iter().chain(extra).map(|s| s.to_string()).collect();
    c
}

/// nginx in the foreground, one process, on `port`, passing every request to `upstreams` over the
/// uwsgi protocol.
fn spawn_nginx(
    dir: &Path,
    port: u16,
    upstreams: &[SocketAddr],
    least_conn: bool,
    fastrouter_key: Option<&str>,
) -> Result<Proc> {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    let servers: String = upstreams.iter().map(|u| format!("    server {u};\n")).collect();
    let balance = if least_conn { "    least_conn;\n" } else { "" };
    let key = fastrouter_key
        .map(|k| format!("      uwsgi_param UWSGI_FASTROUTER_KEY {k};\n"))
        .unwrap_or_default();
    fs::write(
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
    .context("writing nginx.conf")?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
    let p = Proc::spawn("nginx", cmd, &dir.join("nginx.log"));
    if !wait_until(Duration::from_secs(5), || TcpStream::connect(loopback(port)).is_ok()) {
        bail!(
            "nginx did not start: {}\n{}",
            p.log_tail(20),
            fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
        );
    }
    Ok(p)
}

fn wait_ready(cfg: &UwsgiConfig, p: &Proc) -> Result<()> {
    if !cfg.wait_ready(Duration::from_secs(40)) {
        bail!("uWSGI on {} did not start: {}", cfg.addr, p.log_tail(30));
    }
    Ok(())
}

/// Starts configuration `cfg` of `variant`; returns when every worker answers through nginx.
fn deploy(cfg: Cfg, v: Variant, bins: &Binaries) -> Result<Deployment> {
    let dir = TempDir::new(&format!("compare-{}", cfg.letter()));
    let front_port = free_port();
    let mut dep = Deployment {
        cfg,
        front: loopback(front_port),
        nginx: None,
        procs: Vec::new(),
        instances: Vec::new(),
        roots: Vec::new(),
        router: None,
        workers: Vec::new(),
        dir,
    };
    let d = dep.dir.path().to_path_buf();
    let mut upstreams = Vec::new();
    let mut least_conn = false;
    let mut key = None;
    match cfg {
        Cfg::A | Cfg::B => {
            let addr = loopback(free_port());
            let extra: &[&str] = if cfg == Cfg::B { &["--thunder-lock"] } else { &[] };
            let u = uwsgi_config(addr, v.processes, v.threads, extra);
            let p = apps::spawn_plain(&u.command_line(), &d.join("uwsgi.log"));
            dep.roots.push(p.pid());
            dep.procs.push(p);
            wait_ready(&u, dep.procs.last().unwrap())?;
            dep.instances.push(u);
            upstreams.push(addr);
        }
        Cfg::C | Cfg::F | Cfg::G => {
            let addr = loopback(free_port());
            let u = uwsgi_config(addr, v.processes, v.threads, &[]);
            let socket = d.join("shim.sock");
            let policy = cfg.reuselb_policy().expect("a reuselb configuration");
            let mut cmd = Command::new(&bins.reuselb);
            cmd.arg("run").arg("--listen").arg(addr.to_string()).arg("--socket").arg(&socket);
            cmd.args(["--policy", policy, "--status-every", "0", "--log-level", "warn"])
                .arg("--shim")
                .arg(&bins.shim);
            cmd.arg("--").args(u.command_line());
            let mut p = Proc::spawn("reuselb run", cmd, &d.join("run.log"));
            // The app server runs in a process group of its own: remember it for the cleanup.
            wait_until(Duration::from_secs(5), || !p.children().is_empty());
            p.adopt_child_groups();
            dep.roots.push(p.pid());
            dep.router = Some((p.pid(), false));
            dep.procs.push(p);
            wait_ready(&u, dep.procs.last().unwrap())?;
            // Every worker has its own listening socket (and the master none).
            let ok = wait_until(Duration::from_secs(20), || {
                apps::listening_sockets(addr.port()) == v.processes as usize
            });
            if !ok {
                bail!(
                    "{}: expected {} listening sockets on {addr}, found {}: {}",
                    cfg.short(),
                    v.processes,
                    apps::listening_sockets(addr.port()),
                    dep.procs[0].log_tail(30)
                );
            }
            dep.instances.push(u);
            upstreams.push(addr);
        }
        Cfg::D => {
            let fr = loopback(free_port());
            let sub = loopback(free_port());
            let mut cmd = Command::new("uwsgi");
            cmd.args([
                "--plugin",
                "fastrouter",
                "--master",
                "--die-on-term",
                "--disable-logging",
                "--listen",
                "1024",
            ]);
            cmd.arg("--fastrouter")
                .arg(fr.to_string())
                .arg("--fastrouter-subscription-server")
                .arg(sub.to_string());
            let p = Proc::spawn("fastrouter", cmd, &d.join("fastrouter.log"));
            dep.roots.push(p.pid());
            dep.router = Some((p.pid(), true));
            dep.procs.push(p);
            if !wait_until(Duration::from_secs(10), || TcpStream::connect(fr).is_ok()) {
                bail!("the fastrouter did not start: {}", dep.procs[0].log_tail(20));
            }
            let halves = [v.processes.div_ceil(2), v.processes / 2];
            for (i, n) in halves.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                let addr = loopback(free_port());
                let subscribe = format!("{sub}:app");
                let u = uwsgi_config(addr, n, v.threads, &["--subscribe-to", &subscribe]);
                let p = apps::spawn_plain(&u.command_line(), &d.join(format!("uwsgi{i}.log")));
                dep.roots.push(p.pid());
                dep.procs.push(p);
                wait_ready(&u, dep.procs.last().unwrap())?;
                dep.instances.push(u);
            }
            upstreams.push(fr);
            key = Some("app");
        }
        Cfg::E => {
            for i in 0..v.processes {
                let addr = loopback(free_port());
                let u = uwsgi_config(addr, 1, v.threads, &[]);
                let p = apps::spawn_plain(&u.command_line(), &d.join(format!("uwsgi{i}.log")));
                dep.roots.push(p.pid());
                dep.procs.push(p);
                dep.instances.push(u);
                upstreams.push(addr);
            }
            for (u, p) in dep.instances.iter().zip(&dep.procs) {
                wait_ready(u, p)?;
            }
            least_conn = true;
        }
    }
    let nginx_dir = d.join("nginx");
    fs::create_dir_all(&nginx_dir)?;
    dep.nginx = Some(spawn_nginx(&nginx_dir, front_port, &upstreams, least_conn, key)?);
    for u in &dep.instances {
        let stats = u.stats().with_context(|| {
            format!("{}: stats server of {} does not answer", cfg.short(), u.addr)
        })?;
        dep.workers.extend(stats.iter().map(|(pid, _)| *pid));
    }
    // Serving through nginx, and (fastrouter) both instances subscribed.
    let mut seen: Vec<u32> = Vec::new();
    let instance_of = |pid: u32| {
        dep.instances
            .iter()
            .position(|u| u.stats().unwrap_or_default().iter().any(|(p, _)| *p == pid))
    };
    let mut instances_seen = vec![false; dep.instances.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_interrupted()?;
        if let Ok(pid) = apps::one_request(dep.front, "/?cpu=0") {
            if !seen.contains(&pid) {
                seen.push(pid);
                if let Some(i) = instance_of(pid) {
                    instances_seen[i] = true;
                }
            }
            if cfg != Cfg::D || instances_seen.iter().all(|s| *s) {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{}: not serving through nginx on {} (instances answering: {instances_seen:?}): {}",
                cfg.short(),
                dep.front,
                dep.procs.iter().map(|p| p.log_tail(10)).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(dep)
}

// ---------------------------------------------------------------------------------------------
// Counters from /proc and the kernel's BPF statistics

fn descendants(root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        for c in apps::children_of(out[i]) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// Context switches (voluntary + not) and CPU time (ns) of every thread of `pid`.
fn process_totals(pid: u32) -> (u64, u64) {
    let mut ctx = 0;
    let mut cpu = 0;
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return (0, 0) };
    for t in tasks.flatten() {
        let p = t.path();
        if let Ok(status) = fs::read_to_string(p.join("status")) {
            for line in status.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    ctx += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        if let Ok(s) = fs::read_to_string(p.join("schedstat")) {
            cpu += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (ctx, cpu)
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    /// Every process behind nginx: app servers, fastrouter, `reuselb run`.
    behind_ctxsw: u64,
    nginx_cpu_ns: u64,
    router_cpu_ns: u64,
}

impl Deployment {
    fn counters(&self) -> Counters {
        let mut c = Counters::default();
        let mut pids: Vec<u32> = Vec::new();
        for r in &self.roots {
            pids.extend(descendants(*r));
        }
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            c.behind_ctxsw += process_totals(pid).0;
        }
        if let Some(n) = &self.nginx {
            c.nginx_cpu_ns = process_totals(n.pid()).1;
        }
        if let Some((pid, tree)) = self.router {
            let pids = if tree { descendants(pid) } else { vec![pid] };
            c.router_cpu_ns = pids.iter().map(|p| process_totals(*p).1).sum();
        }
        c
    }

    /// Ids of the BPF programs `reuselb run` holds (from its descriptors' fdinfo).
    fn prog_ids(&self) -> Vec<u32> {
        let Some((pid, false)) = self.router else { return Vec::new() };
        let mut ids = Vec::new();
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return ids };
        for fd in fds.flatten() {
            let is_prog = fs::read_link(fd.path())
                .map(|l| l.to_string_lossy().contains("bpf-prog"))
                .unwrap_or(false);
            if !is_prog {
                continue;
            }
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

/// Summed (run time ns, run count) of the programs `ids`.
fn prog_counters(ids: &[u32]) -> Option<(u64, u64)> {
    if ids.is_empty() {
        return None;
    }
    let mut found = false;
    let (mut ns, mut cnt) = (0u64, 0u64);
    for info in aya::programs::loaded_programs().flatten() {
        if ids.contains(&info.id()) {
            found = true;
            ns += info.run_time().as_nanos() as u64;
            cnt += info.run_count();
        }
    }
    found.then_some((ns, cnt))
}

// ---------------------------------------------------------------------------------------------
// Runs

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Closed,
    /// Open loop at `levels[i]` of A's maximum.
    Open(usize),
}

/// One measured run.
#[derive(Clone, Debug, Default)]
struct Rec {
    throughput: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    failed: u64,
    busiest: f64,
    cv: f64,
    ctxsw_per_req: f64,
    nginx_us: f64,
    router_us: f64,
    bpf_ns: Option<f64>,
    errors: Vec<String>,
}

fn share(by_pid: &HashMap<u32, u64>, workers: &[u32]) -> (f64, f64) {
    let mut counts: Vec<u64> =
        workers.iter().map(|w| by_pid.get(w).copied().unwrap_or(0)).collect();
    // Answers from a pid that was not a worker at the start (a respawn) count as a worker of their own.
    counts.extend(by_pid.iter().filter(|(p, _)| !workers.contains(p)).map(|(_, n)| *n));
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = total as f64 / counts.len() as f64;
    let max = *counts.iter().max().unwrap() as f64;
    let var = counts.iter().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / counts.len() as f64;
    (max / mean, var.sqrt() / mean)
}

fn measure(
    dep: &Deployment,
    w: Workload,
    mode: Mode,
    secs: f64,
    seed: u64,
    detail: bool,
) -> Result<Rec> {
    let paths = w.paths();
    let pick = move |r: &mut Rng| w.pick(r);
    let spec = Spec {
        addr: dep.front,
        paths: &paths,
        pick: &pick,
        mode,
        duration: Duration::from_secs_f64(secs),
        seed,
        timeout: Duration::from_secs(10),
        max_inflight: 4000,
        drain: Duration::from_secs(5),
    };
    let ids = if detail { dep.prog_ids() } else { Vec::new() };
    // The kernel's BPF run-time statistics, on for this run only (and only for reuselb's runs).
    let stats_fd = if detail && !ids.is_empty() {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).ok()
    } else {
        None
    };
    let p0 = prog_counters(&ids);
    let c0 = dep.counters();
    let out: Outcome = loadgen::run(&spec)?;
    let c1 = dep.counters();
    let p1 = prog_counters(&ids);
    drop(stats_fd);
    let done = out.ok.max(1) as f64;
    let (busiest, cv) = share(&out.by_pid, &dep.workers);
    let bpf_ns = match (p0, p1) {
        (Some((t0, n0)), Some((t1, n1))) if n1 > n0 && t1 > t0 => {
            Some((t1 - t0) as f64 / (n1 - n0) as f64)
        }
        _ => None,
    };
    Ok(Rec {
        throughput: out.throughput(),
        p50: out.percentile_ms(0.50),
        p99: out.percentile_ms(0.99),
        p999: out.percentile_ms(0.999),
        failed: out.failed,
        busiest,
        cv,
        ctxsw_per_req: c1.behind_ctxsw.saturating_sub(c0.behind_ctxsw) as f64 / done,
        nginx_us: c1.nginx_cpu_ns.saturating_sub(c0.nginx_cpu_ns) as f64 / done / 1000.0,
        router_us: c1.router_cpu_ns.saturating_sub(c0.router_cpu_ns) as f64 / done / 1000.0,
        bpf_ns,
        errors: out.errors,
    })
}

type Key = (Variant, Workload, Cfg, Kind);

struct Results {
    runs: HashMap<Key, Vec<Rec>>,
    /// A's maximum (median) per variant and workload: the base of the offered rates.
    base: HashMap<(Variant, Workload), f64>,
}

impl Results {
    fn get(&self, v: Variant, w: Workload, c: Cfg, k: Kind) -> &[Rec] {
        self.runs.get(&(v, w, c, k)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Median of `f` over the runs (NaN if none); infinities count as the largest values.
    fn med(&self, v: Variant, w: Workload, c: Cfg, k: Kind, f: impl Fn(&Rec) -> f64) -> f64 {
        let vals: Vec<f64> = self.get(v, w, c, k).iter().map(f).filter(|x| !x.is_nan()).collect();
        if vals.is_empty() {
            return f64::NAN;
        }
        summarize(&vals).median
    }

    fn range(
        &self,
        v: Variant,
        w: Workload,
        c: Cfg,
        k: Kind,
        f: impl Fn(&Rec) -> f64,
    ) -> (f64, f64) {
        let vals: Vec<f64> = self.get(v, w, c, k).iter().map(f).filter(|x| !x.is_nan()).collect();
        if vals.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        let s = summarize(&vals);
        (s.min, s.max)
    }
}

/// The configurations in the order of round `rep`: rotated, so no configuration always runs first.
fn rotated(cfgs: &[Cfg], rep: usize) -> Vec<Cfg> {
    let mut v = cfgs.to_vec();
    let n = v.len();
    if n > 0 {
        v.rotate_left((rep * 3) % n);
    }
    v
}

fn machine() -> (String, String) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    (model, kernel_release())
}

/// Clock ticks of user + system time of `pid` (all its threads, live and exited).
fn proc_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5); utime and stime are fields 14 and 15.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// The machine's (user + nice + system, steal) clock ticks so far, all CPUs.
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    (at(0) + at(1) + at(2), at(7))
}

/// CPU the bench itself uses so far: this process and every process of every deployment.
fn own_ticks(deps: &[Deployment]) -> u64 {
    let mut pids = vec![std::process::id()];
    for d in deps {
        for r in &d.roots {
            pids.extend(descendants(*r));
        }
        if let Some(n) = &d.nginx {
            pids.push(n.pid());
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter().map(proc_ticks).sum()
}

/// What else ran on the machine while a variant was measured.
#[derive(Clone, Debug, Default)]
struct Interference {
    secs: f64,
    /// User + system CPU of processes outside the bench, in CPUs (average over the variant).
    other_cpus: f64,
    /// Steal time (the hypervisor running something else), in CPUs.
    steal_cpus: f64,
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn raise_nofile() {
    let lim = libc::rlimit { rlim_cur: 65536, rlim_max: 65536 };
    // SAFETY: setrlimit with a valid struct; failure only leaves the old limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into a rlimit we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
        let raised = libc::rlimit { rlim_cur: cur.rlim_max, rlim_max: cur.rlim_max };
        // SAFETY: setrlimit reads a rlimit we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
}

pub fn run(o: &Options) -> Result<String> {
    let started = Instant::now();
    loadgen::install_interrupt_handler();
    require("uwsgi");
    require("nginx");
    let netns = choose_netns(o.no_netns);
    raise_nofile();
    let bins = snapshot_binaries()?;
    let load_before = loadavg();
    let mut res = Results { runs: HashMap::new(), base: HashMap::new() };
    let mut interference: Vec<(Variant, Interference)> = Vec::new();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let base_cfg = if o.configs.contains(&Cfg::A) { Cfg::A } else { o.configs[0] };

    for &v in &o.variants {
        eprintln!("bench compare: {} — starting {} configurations", v.name(), o.configs.len());
        let mut deps: Vec<Deployment> = Vec::new();
        for &c in &o.configs {
            check_interrupted()?;
            let t = Instant::now();
            deps.push(
                deploy(c, v, &bins)
                    .with_context(|| format!("starting {} ({})", c.short(), v.name()))?,
            );
            eprintln!(
                "  {} up in {:.1} s ({} workers)",
                c.short(),
                t.elapsed().as_secs_f64(),
                deps.last().unwrap().workers.len()
            );
        }
        let dep_of = |c: Cfg| deps.iter().find(|d| d.cfg == c).expect("deployed");
        let (t0, (busy0, steal0), own0) = (Instant::now(), machine_ticks(), own_ticks(&deps));
        // Warm-up: every configuration, every workload, unrecorded.
        for &w in &o.workloads {
            for d in &deps {
                measure(
                    d,
                    w,
                    Mode::Closed { clients: w.clients(v.processes) },
                    o.warmup_secs,
                    1,
                    false,
                )?;
            }
        }
        // 1. Maximum throughput, closed loop.
        for rep in 0..o.reps {
            for &w in &o.workloads {
                let clients = w.clients(v.processes);
                eprintln!(
                    "  {} closed loop, {} clients, round {}/{}",
                    w.name(),
                    clients,
                    rep + 1,
                    o.reps
                );
                for c in rotated(&o.configs, rep) {
                    let r = measure(
                        dep_of(c),
                        w,
                        Mode::Closed { clients },
                        o.closed_secs,
                        1000 + rep as u64,
                        false,
                    )?;
                    eprintln!(
                        "    {}: {:.0} req/s, p99 {:.1} ms, failed {}",
                        c.short(),
                        r.throughput,
                        r.p99,
                        r.failed
                    );
                    res.runs.entry((v, w, c, Kind::Closed)).or_default().push(r);
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
        }
        for &w in &o.workloads {
            let base = res.med(v, w, base_cfg, Kind::Closed, |r| r.throughput);
            res.base.insert((v, w), base);
        }
        // 2. Latency at fixed offered rates, open loop.
        for rep in 0..o.reps {
            for &w in &o.workloads {
                let base = res.base[&(v, w)];
                for (li, level) in o.levels.iter().enumerate() {
                    let rate = base * level;
                    eprintln!(
                        "  {} open loop at {:.0}% of A ({rate:.0} req/s), round {}/{}",
                        w.name(),
                        level * 100.0,
                        rep + 1,
                        o.reps
                    );
                    let detail = li + 1 == o.levels.len();
                    for c in rotated(&o.configs, rep + li) {
                        let seed = 5000 + (rep * 10 + li) as u64;
                        let r =
                            measure(dep_of(c), w, Mode::Open { rate }, o.open_secs, seed, detail)?;
                        eprintln!(
                            "    {}: p50 {:.1} p99 {:.1} p99.9 {:.1} ms, busiest/ideal {:.2}, failed {}",
                            c.short(),
                            r.p50,
                            r.p99,
                            r.p999,
                            r.busiest,
                            r.failed
                        );
                        res.runs.entry((v, w, c, Kind::Open(li))).or_default().push(r);
                        std::thread::sleep(Duration::from_millis(150));
                    }
                }
            }
        }
        let (busy1, steal1) = machine_ticks();
        let own1 = own_ticks(&deps);
        let secs = t0.elapsed().as_secs_f64();
        let other = (busy1 - busy0) as f64 - (own1.saturating_sub(own0)) as f64;
        let i = Interference {
            secs,
            other_cpus: other.max(0.0) / hz / secs,
            steal_cpus: (steal1 - steal0) as f64 / hz / secs,
        };
        eprintln!(
            "bench compare: {} done in {secs:.0} s (other processes used {:.2} CPUs meanwhile, steal {:.2}); stopping its configurations",
            v.name(),
            i.other_cpus,
            i.steal_cpus
        );
        interference.push((v, i));
        drop(deps);
    }
    let load_after = loadavg();
    let elapsed = started.elapsed();
    let charts = write_charts(o, &res)?;
    report(o, &res, &netns, &load_before, &load_after, &interference, elapsed, &charts)
}

// ---------------------------------------------------------------------------------------------
// Report

fn ms(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v.is_infinite() {
        "∞".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ratio(v: f64, base: f64) -> String {
    if v.is_nan() || base.is_nan() || base == 0.0 {
        "—".into()
    } else if v.is_infinite() {
        "∞".into()
    } else {
        format!("{:.2}", v / base)
    }
}

fn write_charts(o: &Options, res: &Results) -> Result<Vec<PathBuf>> {
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    let last = o.levels.len() - 1;
    let pct = (o.levels[last] * 100.0).round();
    for &v in &o.variants {
        let groups: Vec<String> = o.workloads.iter().map(|w| w.name().to_string()).collect();
        let series: Vec<String> = o.configs.iter().map(|c| c.short()).collect();
        let table = |f: &dyn Fn(Workload, Cfg) -> f64| -> Vec<Vec<f64>> {
            o.workloads.iter().map(|&w| o.configs.iter().map(|&c| f(w, c)).collect()).collect()
        };
        let panels = vec![
            Panel {
                title: format!(
                    "p99 latency at {pct:.0}% of A's maximum (ms, log scale; lower is better)"
                ),
                y_label: "p99 ms".into(),
                groups: groups.clone(),
                series: series.clone(),
                values: table(&|w, c| res.med(v, w, c, Kind::Open(last), |r| r.p99)),
                reference: None,
                log: true,
            },
            Panel {
                title: "maximum throughput, closed loop (ratio to A; higher is better)".into(),
                y_label: "× A".into(),
                groups: groups.clone(),
                series: series.clone(),
                values: table(&|w, c| {
                    res.med(v, w, c, Kind::Closed, |r| r.throughput)
                        / res.med(v, w, Cfg::A, Kind::Closed, |r| r.throughput)
                }),
                reference: Some(1.0),
                log: false,
            },
            Panel {
                title: format!("busiest worker / ideal share at {pct:.0}% (1 = even)"),
                y_label: "busiest / ideal".into(),
                groups,
                series,
                values: table(&|w, c| res.med(v, w, c, Kind::Open(last), |r| r.busiest)),
                reference: Some(1.0),
                log: false,
            },
        ];
        let path = dir.join(format!("compare-{}.svg", v.name()));
        fs::write(
            &path,
            chart::svg(
                &format!(
                    "reuselb bench compare: {} processes × {} threads",
                    v.processes, v.threads
                ),
                &panels,
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

#[allow(clippy::too_many_arguments)]
fn report(
    o: &Options,
    res: &Results,
    netns: &str,
    load_before: &str,
    load_after: &str,
    interference: &[(Variant, Interference)],
    elapsed: Duration,
    charts: &[PathBuf],
) -> Result<String> {
    let (model, kernel) = machine();
    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# reuselb bench: compare\n")?;
    writeln!(
        w,
        "{} mode: {} rounds, closed-loop runs of {} s, open-loop runs of {} s, {} s warm-up per configuration and workload. \
         Run time {:.0} s.\n",
        if o.full { "Full" } else { "Quick" },
        o.reps,
        o.closed_secs,
        o.open_secs,
        o.warmup_secs,
        elapsed.as_secs_f64()
    )?;
    writeln!(
        w,
        "Machine: {} CPUs ({model}), kernel {kernel}, in {netns}; load average (1, 5, 15 min) {load_before} at the start, \
         {load_after} at the end (the bench itself keeps both CPUs busy).",
        cores()
    )?;
    for (v, i) in interference {
        writeln!(
            w,
            "While {} ran ({:.0} s), processes outside the bench used {:.2} CPUs on average (user + system time), and the \
             hypervisor stole {:.2}.",
            v.name(),
            i.secs,
            i.other_cpus,
            i.steal_cpus
        )?;
    }
    writeln!(w)?;
    writeln!(w, "Configurations (all behind one single-process nginx, `uwsgi_pass`; uWSGI `--listen 1024`, `--lazy-apps`):\n")?;
    for c in &o.configs {
        let what = match c {
            Cfg::A => "uWSGI as installed: every worker accepts from the one shared listening socket",
            Cfg::B => "the same with `--thunder-lock` (accept() serialized across processes)",
            Cfg::C => "`reuselb run --policy hash`: each worker its own SO_REUSEPORT socket, the kernel's 4-tuple hash picks (loads counted, not used)",
            Cfg::D => "uWSGI fastrouter (`--fastrouter`, subscription server) with two uWSGI instances of half the processes each subscribed; nginx passes to the fastrouter",
            Cfg::E => "nginx `upstream { least_conn; }` over one single-process uWSGI instance per process",
            Cfg::F => "`reuselb run --policy least-loaded`: the worker with the fewest connections in flight",
            Cfg::G => "`reuselb run --policy p2c`: the lighter of two random workers",
        };
        writeln!(w, "- **{}** {}: {what}", c.letter(), c.label())?;
    }
    writeln!(w)?;
    writeln!(w, "Workloads (`tests/apps/bench_app.py`; CPU is the thread's CPU time, so a preempted request still does all its work):\n")?;
    for wl in &o.workloads {
        writeln!(w, "- **{}**: {}", wl.name(), wl.describe())?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "Columns: **max** = closed-loop throughput with 2 requests' worth of work per process in flight (req/s, median of the runs) \
         and its ratio to A; **p50/p99/p99.9** = open-loop latency in ms at the offered rate, Poisson arrivals, measured from each \
         request's scheduled send time (median of the runs' percentiles; ∞ = requests failed); **busiest/ideal** and **CV** = \
         the busiest worker's answers over an even share, and the coefficient of variation of the per-worker answers, at the \
         highest rate; **ctxsw/req** = context switches (voluntary + involuntary) of every process behind nginx per request at \
         the highest rate; **nginx µs/req**, **router µs/req** = CPU time of nginx and of the fastrouter (D) or the `reuselb run` \
         controller (C, F, G) per request; **BPF ns** = the kernel's ns per selection of reuselb's attached program during \
         those runs (BPF run-time statistics); **fail** = failed requests over every run.\n"
    )?;
    let last = o.levels.len() - 1;
    let mut verdicts: Vec<String> = Vec::new();
    for &v in &o.variants {
        writeln!(w, "## {} processes × {} threads\n", v.processes, v.threads)?;
        for &wl in &o.workloads {
            let base = res.base.get(&(v, wl)).copied().unwrap_or(f64::NAN);
            writeln!(
                w,
                "### {}: {} closed-loop clients; A's maximum {base:.0} req/s; offered {}\n",
                wl.name(),
                wl.clients(v.processes),
                o.levels
                    .iter()
                    .map(|l| format!("{:.0}% = {:.0} req/s", l * 100.0, base * l))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            let mut head = String::from("| config | max req/s | ×A |");
            let mut sep = String::from("|---|---:|---:|");
            for l in &o.levels {
                let p = (l * 100.0).round();
                write!(head, " p50 @{p}% | p99 @{p}% | p99.9 @{p}% |")?;
                sep.push_str("---:|---:|---:|");
            }
            head.push_str(" p99 ×A | busiest/ideal | CV | ctxsw/req | nginx µs/req | router µs/req | BPF ns | fail |");
            sep.push_str("---:|---:|---:|---:|---:|---:|---:|---:|");
            writeln!(w, "{head}\n{sep}")?;
            let a_tp = res.med(v, wl, Cfg::A, Kind::Closed, |r| r.throughput);
            let a_p99 = res.med(v, wl, Cfg::A, Kind::Open(last), |r| r.p99);
            for &c in &o.configs {
                let tp = res.med(v, wl, c, Kind::Closed, |r| r.throughput);
                let mut row = format!("| {} | {tp:.0} | {} |", c.short(), ratio(tp, a_tp));
                for li in 0..o.levels.len() {
                    let k = Kind::Open(li);
                    write!(
                        row,
                        " {} | {} | {} |",
                        ms(res.med(v, wl, c, k, |r| r.p50)),
                        ms(res.med(v, wl, c, k, |r| r.p99)),
                        ms(res.med(v, wl, c, k, |r| r.p999))
                    )?;
                }
                let k = Kind::Open(last);
                let p99 = res.med(v, wl, c, k, |r| r.p99);
                let bpf = res.med(v, wl, c, k, |r| r.bpf_ns.unwrap_or(f64::NAN));
                let router = if matches!(c, Cfg::A | Cfg::B | Cfg::E) {
                    "—".to_string()
                } else {
                    format!("{:.1}", res.med(v, wl, c, k, |r| r.router_us))
                };
                let fail: u64 = [Kind::Closed]
                    .into_iter()
                    .chain((0..o.levels.len()).map(Kind::Open))
                    .flat_map(|k| res.get(v, wl, c, k))
                    .map(|r| r.failed)
                    .sum();
                writeln!(
                    w,
                    "{row} {} | {:.2} | {:.2} | {:.1} | {:.0} | {router} | {} | {fail} |",
                    ratio(p99, a_p99),
                    res.med(v, wl, c, k, |r| r.busiest),
                    res.med(v, wl, c, k, |r| r.cv),
                    res.med(v, wl, c, k, |r| r.ctxsw_per_req),
                    res.med(v, wl, c, k, |r| r.nginx_us),
                    if bpf.is_nan() { "—".to_string() } else { format!("{bpf:.0}") },
                )?;
            }
            writeln!(w)?;
            if o.configs.contains(&Cfg::F) {
                verdicts.push(verdict(o, res, v, wl));
            }
        }
    }
    if !verdicts.is_empty() {
        writeln!(w, "## Against the target\n")?;
        writeln!(
            w,
            "Target (issue 8): F has the lowest p99 at {:.0}% load on the skewed workload, is within noise of the best or better \
             on the other two, and its maximum throughput is at least the best other configuration's. \"Within noise\": F's median \
             is no worse than the best configuration's worst run, or within 10% of its median.\n",
            o.levels[last] * 100.0
        )?;
        writeln!(w, "| variant | workload | p99 @{:.0}%: F / best (best) | p99 verdict | max: F / best other (best) | max verdict |", o.levels[last] * 100.0)?;
        writeln!(w, "|---|---|---:|---|---:|---|")?;
        for line in &verdicts {
            writeln!(w, "{line}")?;
        }
        writeln!(w)?;
    }
    writeln!(w, "## Raw runs\n")?;
    writeln!(
        w,
        "Per configuration, in run order: closed-loop req/s; p99 ms at each offered rate.\n"
    )?;
    for &v in &o.variants {
        for &wl in &o.workloads {
            writeln!(w, "- {} {}:", v.name(), wl.name())?;
            for &c in &o.configs {
                let tp: Vec<String> = res
                    .get(v, wl, c, Kind::Closed)
                    .iter()
                    .map(|r| format!("{:.0}", r.throughput))
                    .collect();
                let mut line = format!("  - {}: max {}", c.letter(), tp.join(" "));
                for (li, l) in o.levels.iter().enumerate() {
                    let p: Vec<String> =
                        res.get(v, wl, c, Kind::Open(li)).iter().map(|r| ms(r.p99)).collect();
                    write!(line, "; p99 @{:.0}% {}", l * 100.0, p.join(" "))?;
                }
                let errs: Vec<&String> = [Kind::Closed]
                    .into_iter()
                    .chain((0..o.levels.len()).map(Kind::Open))
                    .flat_map(|k| res.get(v, wl, c, k))
                    .flat_map(|r| &r.errors)
                    .take(2)
                    .collect();
                if !errs.is_empty() {
                    write!(line, "; errors e.g. {errs:?}")?;
                }
                writeln!(w, "{line}")?;
            }
        }
    }
    writeln!(w)?;
    writeln!(
        w,
        "Charts: {}\n",
        charts.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
    )?;
    writeln!(
        w,
        "The selector's cost in isolation (ns per selection for 1 to 256 workers, with and without the program) is \
         `cargo xtask bench selector`'s table (`target/bench/selector.md`)."
    )?;
    Ok(md)
}

fn verdict(o: &Options, res: &Results, v: Variant, wl: Workload) -> String {
    let last = Kind::Open(o.levels.len() - 1);
    let p99 = |c: Cfg| res.med(v, wl, c, last, |r| r.p99);
    let tp = |c: Cfg| res.med(v, wl, c, Kind::Closed, |r| r.throughput);
    let f = p99(Cfg::F);
    let best = o
        .configs
        .iter()
        .copied()
        .filter(|&c| !p99(c).is_nan())
        .min_by(|a, b| p99(*a).partial_cmp(&p99(*b)).unwrap())
        .unwrap_or(Cfg::F);
    let best_other = o
        .configs
        .iter()
        .copied()
        .filter(|&c| c != Cfg::F)
        .min_by(|a, b| p99(*a).partial_cmp(&p99(*b)).unwrap());
    let (_, best_worst) = res.range(v, wl, best, last, |r| r.p99);
    let within = f <= best_worst || f <= p99(best) * 1.10;
    let p99_verdict = if best == Cfg::F {
        let margin = best_other
            .map(|b| format!(" (next: {} {})", b.letter(), ratio(p99(b), f)))
            .unwrap_or_default();
        format!("lowest{margin}")
    } else if wl == Workload::Skewed {
        format!("MISS: not lowest{}", if within { " (within noise)" } else { "" })
    } else if within {
        "within noise".to_string()
    } else {
        "MISS".to_string()
    };
    let tp_best_other = o
        .configs
        .iter()
        .copied()
        .filter(|&c| c != Cfg::F)
        .max_by(|a, b| tp(*a).partial_cmp(&tp(*b)).unwrap());
    let (tp_ratio, tp_verdict, tp_best) = match tp_best_other {
        Some(b) => {
            let r = tp(Cfg::F) / tp(b);
            let (bmin, _) = res.range(v, wl, b, Kind::Closed, |r| r.throughput);
            let verdict = if r >= 1.0 {
                "PASS".to_string()
            } else if tp(Cfg::F) >= bmin || r >= 0.97 {
                format!("within noise ({:+.1}%)", (r - 1.0) * 100.0)
            } else {
                format!("MISS ({:+.1}%)", (r - 1.0) * 100.0)
            };
            (format!("{r:.3}"), verdict, b.letter().to_string())
        }
        None => ("—".into(), "—".into(), "—".into()),
    };
    format!(
        "| {} | {} | {} ({}) | {p99_verdict} | {tp_ratio} ({tp_best}) | {tp_verdict} |",
        v.name(),
        wl.name(),
        ratio(f, p99(best)),
        best.letter(),
    )
}
