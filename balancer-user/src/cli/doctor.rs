//! `reuselb doctor`: is this kernel and this process able to run reuselb, and if not, what to do.
//! This file owns the checks, in the order they print, and their printing; [`cause`] owns the
//! reading of a refusal.
//!
//! Every check does the real thing where it can (load the program, attach it to a socket) rather
//! than guess from version numbers. When one fails, [`cause`] tells a refusal (seccomp, missing
//! capabilities, a security module) from a kernel that lacks the feature, and advises a kernel
//! upgrade only to a kernel older than the feature.
pub mod cause;

use std::{fs, net::SocketAddr};

use cause::{Diagnosis, Facts, Version};

use balancer_user::{
    group::{Group, GroupOptions, Mode},
    listener::bind_reuseport,
    loader::{self, Program},
    sys,
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

/// The oldest kernel with everything the select program uses (bpf_loop, mmap-able arrays).
const NEEDS_SELECT: Version = Version(5, 17);
/// The oldest kernel with the select-or-migrate attach type.
const NEEDS_MIGRATE: Version = Version(5, 14);

/// `reuselb doctor`: prints each check; exit status 1 if reuselb cannot run here.
pub fn doctor() -> i32 {
    let checks = run();
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("[{tag}] {}: {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("       fix: {fix}");
        }
    }
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    match worst {
        Level::Fail => {
            println!("reuselb cannot run here.");
            1
        }
        Level::Warn => {
            println!("reuselb can run here, with the limits above.");
            0
        }
        Level::Ok => {
            println!("reuselb can run here.");
            0
        }
    }
}

/// Runs every check, in order.
fn run() -> Vec<Check> {
    let facts = Facts::read();
    vec![
        kernel(),
        capabilities(&facts),
        confinement(&facts),
        bpffs(),
        select_program(&facts),
        migrate_program(&facts),
        attach(&facts),
        migrate_sysctl(),
    ]
}

/// Why `err` happened, for an operation that needs Linux `needs`.
fn diagnose(err: &(dyn std::error::Error + 'static), needs: Version, facts: &Facts) -> Diagnosis {
    cause::diagnose(cause::errno(err), needs, facts)
}

fn kernel() -> Check {
    match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => Check::new("kernel", Level::Ok, format!("Linux {}", release.trim()), None),
        Err(e) => {
            Check::new("kernel", Level::Warn, format!("cannot read the kernel release: {e}"), None)
        }
    }
}

fn capabilities(facts: &Facts) -> Check {
    let Some(missing) = facts.missing_capabilities() else {
        return Check::new(
            "capabilities",
            Level::Warn,
            "cannot read CapEff from /proc/self/status",
            None,
        );
    };
    // CAP_BPF loads SK_REUSEPORT programs. Without CAP_PERFMON the verifier's Spectre hardening
    // refuses pointer arithmetic whose offset differs between paths: both programs are refused.
    if missing.is_empty() {
        Check::new("capabilities", Level::Ok, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)", None)
    } else {
        Check::new(
            "capabilities",
            Level::Fail,
            format!("missing {}", missing.join(" and ")),
            Some("run as root, or grant CAP_BPF and CAP_PERFMON (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON)"),
        )
    }
}

/// What could refuse bpf() besides capabilities: said up front, so that a refusal further down
/// reads against it.
fn confinement(facts: &Facts) -> Check {
    let seccomp = match (facts.seccomp_mode, facts.seccomp_filters) {
        (Some(0), _) => "no seccomp filter".to_owned(),
        (Some(1), _) => "seccomp strict mode".to_owned(),
        (Some(_), Some(n)) => format!("{n} seccomp filter(s)"),
        (Some(_), None) => "seccomp filter(s)".to_owned(),
        (None, _) => "seccomp mode unknown".to_owned(),
    };
    let lsms = match &facts.lsms {
        Some(l) => format!("security modules {}", l.join(",")),
        None => "security modules unknown (securityfs not mounted)".to_owned(),
    };
    let unprivileged = match facts.unprivileged_bpf_disabled {
        Some(v) => format!("kernel.unprivileged_bpf_disabled={v}"),
        None => "kernel.unprivileged_bpf_disabled unknown".to_owned(),
    };
    Check::new("confinement", Level::Ok, format!("{seccomp}; {lsms}; {unprivileged}"), None)
}

fn bpffs() -> Check {
    if sys::is_bpffs(std::path::Path::new("/sys/fs/bpf")) {
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

/// The check `name` of an operation that needs Linux `needs`: `Ok` with `ok` when `result` is;
/// else `level`, with `failed(error, why)` as the detail (`why`: what the error's errno says,
/// given `facts`) and the diagnosis' fix. The error is kept whole (not its text), so that its
/// errno can be diagnosed.
fn needs_kernel(
    name: &'static str,
    (needs, facts): (Version, &Facts),
    result: Result<(), Box<dyn std::error::Error>>,
    ok: &str,
    level: Level,
    failed: impl FnOnce(&dyn std::error::Error, &str) -> String,
) -> Check {
    match result {
        Ok(()) => Check::new(name, Level::Ok, ok, None),
        Err(e) => {
            let d = diagnose(&*e, needs, facts);
            Check { name, level, detail: failed(&*e, &d.detail), fix: d.fix }
        }
    }
}

fn select_program(facts: &Facts) -> Check {
    needs_kernel(
        "sk_reuseport program",
        (NEEDS_SELECT, facts),
        loader::load(Program::Select).map(drop).map_err(Into::into),
        "BPF syscall, SK_REUSEPORT programs, REUSEPORT_SOCKARRAY and mmap-able arrays work",
        Level::Fail,
        |e, why| format!("cannot load the select program: {e}: {why}"),
    )
}

fn migrate_program(facts: &Facts) -> Check {
    needs_kernel(
        "migrate attach type",
        (NEEDS_MIGRATE, facts),
        loader::load(Program::SelectOrMigrate).map(drop).map_err(Into::into),
        "select-or-migrate works: queues of exiting workers move to others",
        Level::Warn,
        |e, why| {
            format!("select-or-migrate not accepted ({e}: {why}): reuselb runs select-only, and connections queued on a worker that exits are reset")
        },
    )
}

fn attach(facts: &Facts) -> Check {
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let group = Group::new(GroupOptions { mode: Mode::Auto, ..Default::default() })?;
        let listener = bind_reuseport(SocketAddr::from(([127, 0, 0, 1], 0)), 16)
            .map_err(|e| format!("binding a test socket: {e}"))?;
        group.attach(&listener)?;
        Ok(Group::detach(&listener)?)
    })();
    needs_kernel(
        "attach",
        (NEEDS_SELECT, facts),
        result,
        "attached to and detached from a loopback listener",
        Level::Fail,
        |e, why| format!("SO_ATTACH_REUSEPORT_EBPF failed: {e}: {why}"),
    )
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
