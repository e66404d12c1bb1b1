//! The BPF filesystem at /sys/fs/bpf, where reuselb pins its maps and programs.

use std::process::Command;

use anyhow::{Context as _, Result};

use super::{needs_root, report};
use crate::command;

const MOUNTPOINT: &str = "/sys/fs/bpf";

pub fn ensure(root: bool) -> Result<()> {
    let step = "bpffs";
    if mounted()? {
        report(step, format!("mounted at {MOUNTPOINT}"));
        return Ok(());
    }
    if !root {
        return Err(needs_root(format!("mounting the BPF filesystem at {MOUNTPOINT}")));
    }
    command::run(Command::new("mount").args(["-t", "bpf", "bpf", MOUNTPOINT]))?;
    report(step, format!("mounted at {MOUNTPOINT} now"));
    Ok(())
}

/// True if the topmost mount at /sys/fs/bpf is a bpf filesystem.
fn mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let fstype = mounts.lines().rev().find_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        (fields.next() == Some(MOUNTPOINT)).then(|| fields.next())
    });
    Ok(fstype == Some(Some("bpf")))
}
