//! `reuselb doctor`: is this kernel and this process able to run reuselb, and if not, what to do.
//!
//! Every check does the real thing where it can (load the program, attach it to a socket) rather
//! than guess from version numbers.
use std::{fs, net::SocketAddr};

use crate::{
    group::{Group, GroupOptions, Mode},
    listener::bind_reuseport,
    loader::{self, Program},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Works, with something lost.
    Warn,
    /// reuselb cannot run.
    Fail,
}

#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    /// What to do about it, if anything.
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, level: Level, detail: impl Into<String>, fix: Option<&str>) -> Self {
        Self { name, level, detail: detail.into(), fix: fix.map(str::to_owned) }
    }
}

/// Runs every check, in order.
pub fn run() -> Vec<Check> {
    vec![
        kernel(),
        capabilities(),
        bpffs(),
        select_program(),
        migrate_program(),
        attach(),
        migrate_sysctl(),
    ]
}

fn kernel() -> Check {
    match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => Check::new("kernel", Level::Ok, format!("Linux {}", release.trim()), None),
        Err(e) => {
            Check::new("kernel", Level::Warn, format!("cannot read the kernel release: {e}"), None)
        }
    }
}

fn capabilities() -> Check {
    use rustix::thread::CapabilitySet;
    let caps = match crate::sys::effective_capabilities() {
        Ok(c) => c,
        Err(e) => {
            return Check::new(
                "capabilities",
                Level::Warn,
                format!("cannot read the capabilities: {e}"),
                None,
            )
        }
    };
    // CAP_BPF loads SK_REUSEPORT programs. Without CAP_PERFMON the verifier also walks the
    // speculative paths (Spectre hardening), and the least-loaded scan exceeds its budget.
    let admin = caps.contains(CapabilitySet::SYS_ADMIN);
    let bpf = admin || caps.contains(CapabilitySet::BPF);
    let perfmon = admin || caps.contains(CapabilitySet::PERFMON);
    if bpf && perfmon {
        Check::new("capabilities", Level::Ok, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)", None)
    } else {
        let missing: Vec<&str> = [(!bpf).then_some("CAP_BPF"), (!perfmon).then_some("CAP_PERFMON")]
            .into_iter()
            .flatten()
            .collect();
        Check::new(
            "capabilities",
            Level::Fail,
            format!("missing {}", missing.join(" and ")),
            Some("run as root, or grant CAP_BPF and CAP_PERFMON (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON)"),
        )
    }
}

fn bpffs() -> Check {
    if crate::sys::is_bpffs(std::path::Path::new("/sys/fs/bpf")) {
        Check::new("bpffs", Level::Ok, "mounted at /sys/fs/bpf", None)
    } else {
        Check::new(
            "bpffs",
            Level::Warn,
            "/sys/fs/bpf is not a BPF filesystem: state cannot be pinned to survive a restart",
            Some("mount -t bpf bpf /sys/fs/bpf"),
        )
    }
}

fn select_program() -> Check {
    match loader::load(Program::Select) {
        Ok(_) => Check::new(
            "sk_reuseport program",
            Level::Ok,
            "BPF syscall, SK_REUSEPORT programs, REUSEPORT_SOCKARRAY and mmap-able arrays work",
            None,
        ),
        Err(e) => Check::new(
            "sk_reuseport program",
            Level::Fail,
            format!("cannot load the select program: {e}"),
            Some("needs Linux 5.17+ (bpf_loop, mmap-able arrays) with CONFIG_BPF_SYSCALL, and CAP_BPF with CAP_PERFMON"),
        ),
    }
}

fn migrate_program() -> Check {
    match loader::load(Program::SelectOrMigrate) {
        Ok(_) => Check::new("migrate attach type", Level::Ok, "select-or-migrate works: queues of exiting workers move to others", None),
        Err(e) => Check::new(
            "migrate attach type",
            Level::Warn,
            format!("select-or-migrate not accepted ({e}): reuselb runs select-only, and connections queued on a worker that exits are reset"),
            Some("upgrade to Linux 5.14 or later"),
        ),
    }
}

fn attach() -> Check {
    let result = (|| -> Result<(), String> {
        let group = Group::new(GroupOptions { mode: Mode::Auto, ..Default::default() })
            .map_err(|e| e.to_string())?;
        let listener = bind_reuseport(SocketAddr::from(([127, 0, 0, 1], 0)), 16)
            .map_err(|e| format!("binding a test socket: {e}"))?;
        group.attach(&listener).map_err(|e| e.to_string())?;
        Group::detach(&listener).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => Check::new(
            "attach",
            Level::Ok,
            "attached to and detached from a loopback listener",
            None,
        ),
        Err(e) => {
            Check::new("attach", Level::Fail, format!("SO_ATTACH_REUSEPORT_EBPF failed: {e}"), None)
        }
    }
}

fn migrate_sysctl() -> Check {
    match fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(v) => Check::new(
            "net.ipv4.tcp_migrate_req",
            Level::Ok,
            format!("{} (not needed: the select-or-migrate program migrates by itself)", v.trim()),
            None,
        ),
        Err(_) => Check::new(
            "net.ipv4.tcp_migrate_req",
            Level::Warn,
            "absent: this kernel cannot migrate requests",
            Some("upgrade to Linux 5.14 or later"),
        ),
    }
}
