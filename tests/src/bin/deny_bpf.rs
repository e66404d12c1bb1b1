//! `deny_bpf CMD [ARGS...]`: runs CMD under a seccomp filter that kills the process at its first
//! `bpf()` call. The filter (built by `seccompiler` for this architecture, with
//! `PR_SET_NO_NEW_PRIVS` set first) is inherited across `fork` and `exec`, so every process CMD
//! starts (an app server's workers) runs under it too: a test sees any `bpf()` call of theirs as
//! the caller's death by SIGSYS. Container runtimes' default profiles deny `bpf()` (with EPERM);
//! killing instead makes a call seen, not only one whose failure matters.
use std::{collections::BTreeMap, os::unix::process::CommandExt, process::Command};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: deny_bpf CMD [ARGS...]");
        std::process::exit(2);
    };
    let rules = BTreeMap::from([(libc::SYS_bpf, vec![])]);
    let arch = std::env::consts::ARCH.try_into().expect("an architecture seccompiler knows");
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::KillProcess, arch)
        .expect("building the seccomp filter");
    let program_bpf: BpfProgram = filter.try_into().expect("compiling the seccomp filter");
    seccompiler::apply_filter(&program_bpf).expect("installing the seccomp filter");
    let err = Command::new(program).args(rest).exec();
    eprintln!("deny_bpf: starting {program:?}: {err}");
    std::process::exit(127);
}
