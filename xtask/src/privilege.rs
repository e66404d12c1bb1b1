//! Whether we run as root, read from /proc so that xtask needs no libc binding.

use anyhow::{Context as _, Result};

/// True if the effective user id is 0.
pub fn is_root() -> Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no effective uid on the Uid: line of /proc/self/status")?;
    Ok(euid == "0")
}
