//! Starting and stopping one configuration of `bench compare`: nginx in front, the uWSGI
//! instances (and the fastrouter or `reuselb run`) behind it, as [`super::configs::How`] says.
//!
//! Invariant: a [`Deployment`] owns every process it started; dropping it kills nginx first, then
//! every app server (each [`Proc`] kills its process group, and `reuselb run`'s app group too),
//! then removes its files. `deploy` returns only when every worker answers through nginx.
use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::loadgen::check_interrupted;
use integration_tests::apps::{
    self, free_port, start_nginx, wait_until, Nginx, Proc, TempDir, UwsgiConfig, UwsgiProto,
};

use super::configs::{CfgRef, How, Variant};

/// Each configuration's processes. Dropping it kills nginx first, then every app server (each
/// [`Proc`] kills its process group, and `reuselb run`'s app group too), then removes its files.
pub struct Deployment {
    pub cfg: CfgRef,
    /// nginx's address: where the load goes.
    pub front: SocketAddr,
    pub nginx: Option<Proc>,
    pub procs: Vec<Proc>,
    /// The uWSGI instances that run the app (their stats servers).
    pub instances: Vec<UwsgiConfig>,
    /// Roots of the process trees behind nginx (app servers, fastrouter, `reuselb run`).
    pub roots: Vec<u32>,
    /// The balancing process besides nginx: the fastrouter (its whole tree) or `reuselb run`
    /// (that process only, not the app it started).
    pub router: Option<(u32, bool)>,
    /// Worker process pids.
    pub workers: Vec<u32>,
    dir: TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.nginx.take();
        self.procs.clear();
    }
}

pub struct Binaries {
    reuselb: PathBuf,
    shim: PathBuf,
    _dir: TempDir,
}

/// Copies of reuselb and the shim in a private directory, so a rebuild during the bench does not
/// swap them under a running configuration.
pub fn snapshot_binaries() -> Result<Binaries> {
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

/// The app the uWSGI instances run, and whether each worker loads it itself (`lazy-apps`) or
/// forks from a master that loaded it.
#[derive(Clone, Debug)]
pub struct App {
    pub file: PathBuf,
    pub lazy: bool,
}

impl App {
    /// `bench compare`'s app (tests/apps/bench_app.py), lazy-apps.
    pub fn bench() -> Self {
        App { file: apps::apps_dir().join("bench_app.py"), lazy: true }
    }
}

fn uwsgi_config(addr: SocketAddr, v: Variant, app: &App, extra: &[&str]) -> UwsgiConfig {
    let mut c = UwsgiConfig::new(addr, UwsgiProto::Uwsgi);
    c.processes = v.processes;
    c.threads = v.threads;
    c.app = app.file.clone();
    c.lazy_apps = app.lazy;
    c.extra = ["--listen", "1024"].iter().chain(extra).map(|s| s.to_string()).collect();
    c
}

fn wait_ready(cfg: &UwsgiConfig, p: &Proc) -> Result<()> {
    if !cfg.wait_ready(Duration::from_secs(40)) {
        bail!("uWSGI on {} did not start: {}", cfg.addr, p.log_tail(30));
    }
    Ok(())
}

/// What nginx passes requests to: the configuration's listening addresses, how it picks among
/// them, and the fastrouter's key.
struct Upstreams {
    addrs: Vec<SocketAddr>,
    least_conn: bool,
    key: Option<&'static str>,
}

impl Upstreams {
    fn plain(addrs: Vec<SocketAddr>) -> Self {
        Upstreams { addrs, least_conn: false, key: None }
    }
}

/// Starts configuration `cfg` of `variant` with `bench compare`'s app; returns when every worker
/// answers through nginx.
pub fn deploy(cfg: CfgRef, v: Variant, bins: &Binaries) -> Result<Deployment> {
    deploy_app(cfg, v, bins, &App::bench())
}

/// [`deploy`] with `app`.
pub fn deploy_app(cfg: CfgRef, v: Variant, bins: &Binaries, app: &App) -> Result<Deployment> {
    let dir = TempDir::new(&format!("compare-{}", cfg.letter));
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
    let upstreams = match cfg.how {
        How::Shared { thunder_lock } => dep.start_shared(v, app, thunder_lock)?,
        How::Reuselb { policy, extra } => dep.start_reuselb(v, app, bins, (policy, extra))?,
        How::Fastrouter => dep.start_fastrouter(v, app)?,
        How::NginxLeastConn => dep.start_per_process(v, app)?,
    };
    dep.start_nginx(front_port, &upstreams)?;
    dep.wait_serving()?;
    Ok(dep)
}

impl Deployment {
    /// The worker process the slow and stalls workloads impair, the same one in every
    /// configuration: the first uWSGI instance's first worker (worker 1 of the one instance of
    /// A, B and reuselb's configurations; E's first instance's worker; D's first instance's first
    /// worker), as its stats server lists it now (a respawned worker has a new pid); the first
    /// worker known at the start if the stats server does not answer.
    pub fn first_worker(&self) -> u32 {
        let now = self.instances.first().and_then(|u| u.stats()).and_then(|w| w.first().copied());
        now.map(|(pid, _)| pid).filter(|&pid| pid != 0).unwrap_or(self.workers[0])
    }

    /// A log file's path in the deployment's directory.
    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds an app server (or router) process: a root of the trees behind nginx.
    fn add_root(&mut self, p: Proc) -> &Proc {
        self.roots.push(p.pid());
        self.procs.push(p);
        self.procs.last().unwrap()
    }

    /// One uWSGI instance whose workers share its one listening socket.
    fn start_shared(&mut self, v: Variant, app: &App, thunder_lock: bool) -> Result<Upstreams> {
        let addr = loopback(free_port());
        let extra: &[&str] = if thunder_lock { &["--thunder-lock"] } else { &[] };
        let u = uwsgi_config(addr, v, app, extra);
        let p = apps::spawn_plain(&u.command_line(), &self.log("uwsgi.log"));
        wait_ready(&u, self.add_root(p))?;
        self.instances.push(u);
        Ok(Upstreams::plain(vec![addr]))
    }

    /// One uWSGI instance under `reuselb run --policy <policy> <extra...>`.
    fn start_reuselb(
        &mut self,
        v: Variant,
        app: &App,
        bins: &Binaries,
        (policy, extra): (&str, &[&str]),
    ) -> Result<Upstreams> {
        let addr = loopback(free_port());
        let u = uwsgi_config(addr, v, app, &[]);
        let socket = self.dir.path().join("shim.sock");
        let mut cmd = Command::new(&bins.reuselb);
        cmd.arg("run").arg("--listen").arg(addr.to_string()).arg("--socket").arg(&socket);
        cmd.args(["--policy", policy]).args(extra);
        cmd.args(["--status-every", "0", "--log-level", "warn"]).arg("--shim").arg(&bins.shim);
        cmd.arg("--").args(u.command_line());
        let mut p = Proc::spawn("reuselb run", cmd, &self.log("run.log"));
        // The app server runs in a process group of its own: remember it for the cleanup.
        wait_until(Duration::from_secs(5), || !p.children().is_empty());
        p.adopt_child_groups();
        self.router = Some((p.pid(), false));
        wait_ready(&u, self.add_root(p))?;
        // Every worker has its own listening socket (and the master none).
        let ok = wait_until(Duration::from_secs(20), || {
            apps::listening_sockets(addr.port()) == v.processes as usize
        });
        if !ok {
            bail!(
                "{}: expected {} listening sockets on {addr}, found {}: {}",
                self.cfg.short(),
                v.processes,
                apps::listening_sockets(addr.port()),
                self.procs[0].log_tail(30)
            );
        }
        self.instances.push(u);
        Ok(Upstreams::plain(vec![addr]))
    }

    /// uWSGI's fastrouter, and two instances of half the processes each subscribed to it.
    fn start_fastrouter(&mut self, v: Variant, app: &App) -> Result<Upstreams> {
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
        let p = Proc::spawn("fastrouter", cmd, &self.log("fastrouter.log"));
        self.router = Some((p.pid(), true));
        self.add_root(p);
        if !wait_until(Duration::from_secs(10), || TcpStream::connect(fr).is_ok()) {
            bail!("the fastrouter did not start: {}", self.procs[0].log_tail(20));
        }
        let halves = [v.processes.div_ceil(2), v.processes / 2];
        for (i, n) in halves.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            let addr = loopback(free_port());
            let subscribe = format!("{sub}:app");
            let half = Variant { processes: n, ..v };
            let u = uwsgi_config(addr, half, app, &["--subscribe-to", &subscribe]);
            let p = apps::spawn_plain(&u.command_line(), &self.log(&format!("uwsgi{i}.log")));
            wait_ready(&u, self.add_root(p))?;
            self.instances.push(u);
        }
        Ok(Upstreams { addrs: vec![fr], least_conn: false, key: Some("app") })
    }

    /// One single-process uWSGI instance per process, for nginx's `least_conn`.
    fn start_per_process(&mut self, v: Variant, app: &App) -> Result<Upstreams> {
        let mut addrs = Vec::new();
        for i in 0..v.processes {
            let addr = loopback(free_port());
            let u = uwsgi_config(addr, Variant { processes: 1, ..v }, app, &[]);
            let p = apps::spawn_plain(&u.command_line(), &self.log(&format!("uwsgi{i}.log")));
            self.add_root(p);
            self.instances.push(u);
            addrs.push(addr);
        }
        for (u, p) in self.instances.iter().zip(&self.procs) {
            wait_ready(u, p)?;
        }
        Ok(Upstreams { addrs, least_conn: true, key: None })
    }

    /// nginx in front, on `front_port`; then the workers, as the instances' stats servers list
    /// them.
    fn start_nginx(&mut self, front_port: u16, upstreams: &Upstreams) -> Result<()> {
        let nginx_dir = self.dir.path().join("nginx");
        fs::create_dir_all(&nginx_dir)?;
        let how = Nginx {
            upstreams: &upstreams.addrs,
            least_conn: upstreams.least_conn,
            fastrouter_key: upstreams.key,
        };
        self.nginx = Some(start_nginx(&nginx_dir, front_port, &how).map_err(anyhow::Error::msg)?);
        for u in &self.instances {
            let stats = u.stats().with_context(|| {
                format!("{}: stats server of {} does not answer", self.cfg.short(), u.addr)
            })?;
            self.workers.extend(stats.iter().map(|(pid, _)| *pid));
        }
        Ok(())
    }

    /// Returns once it serves through nginx, and (fastrouter) both instances subscribed; an
    /// error after 30 s.
    fn wait_serving(&self) -> Result<()> {
        let mut seen: Vec<u32> = Vec::new();
        let instance_of = |pid: u32| {
            self.instances
                .iter()
                .position(|u| u.stats().unwrap_or_default().iter().any(|(p, _)| *p == pid))
        };
        let mut instances_seen = vec![false; self.instances.len()];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            check_interrupted()?;
            if let Ok(pid) = apps::one_request(self.front, "/?cpu=0") {
                if !seen.contains(&pid) {
                    seen.push(pid);
                    if let Some(i) = instance_of(pid) {
                        instances_seen[i] = true;
                    }
                }
                if self.cfg.how != How::Fastrouter || instances_seen.iter().all(|s| *s) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: not serving through nginx on {} (instances answering: {instances_seen:?}): {}",
                    self.cfg.short(),
                    self.front,
                    self.procs.iter().map(|p| p.log_tail(10)).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
