//! The check of a descriptor the controller says is the load map, before the shim maps it:
//! `/proc/self/fdinfo/<fd>` must show an `ARRAY` (type 2) of one [`LoadTable`] with
//! `BPF_F_MMAPABLE`, and the kernel id the reply names (0: not named, then only the shape is
//! checked). No `bpf()` call (denied to unprivileged workers on kernels before 6.5 with
//! `unprivileged_bpf_disabled`).
//!
//! Invariant: a descriptor that fails the check is never mapped (a memfd or a short map would
//! SIGBUS the worker); this module only reads, it neither closes nor keeps the descriptor.

use core::{ffi::c_int, mem::size_of};

use balancer_common::{LoadTable, BPF_F_MMAPABLE};

use crate::real::Real;

/// What `/proc/self/fdinfo/<fd>` says about a BPF map descriptor.
#[derive(Default)]
struct MapInfo {
    map_type: Option<u64>,
    value_size: Option<u64>,
    max_entries: Option<u64>,
    map_flags: Option<u64>,
    map_id: Option<u64>,
}

/// Checks that `fd` is the load map: an mmap-able array of one [`LoadTable`], with the kernel id
/// `want_id` (0: not named by the controller, shape only). Returns its id.
pub(crate) fn check_load_map(fd: c_int, want_id: u32) -> Result<u32, &'static str> {
    let mut path = [0u8; 40];
    let prefix = b"/proc/self/fdinfo/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = fd as u32;
    let mut nd = 0;
    loop {
        digits[nd] = b'0' + (n % 10) as u8;
        nd += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for k in 0..nd {
        path[prefix.len() + k] = digits[nd - 1 - k];
    }
    // SAFETY: opens a NUL-terminated path (the rest of `path` is zeroes).
    let f = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if f < 0 {
        return Err("no fdinfo");
    }
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reads into the free part of our buffer.
        let r = unsafe { libc::read(f, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if r <= 0 {
            break;
        }
        len += r as usize;
    }
    // SAFETY: the descriptor opened above.
    unsafe { Real::CLOSE()(f) };
    let text = core::str::from_utf8(&buf[..len]).map_err(|_| "unreadable fdinfo")?;
    let mut info = MapInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let parsed = match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse::<u64>().ok(),
        };
        match key {
            "map_type" => info.map_type = parsed,
            "value_size" => info.value_size = parsed,
            "max_entries" => info.max_entries = parsed,
            "map_flags" => info.map_flags = parsed,
            "map_id" => info.map_id = parsed,
            _ => {}
        }
    }
    const BPF_MAP_TYPE_ARRAY: u64 = 2;
    if info.map_type.is_none() {
        return Err("not a BPF map");
    }
    if info.map_type != Some(BPF_MAP_TYPE_ARRAY) {
        return Err("not an array map");
    }
    if info.value_size != Some(size_of::<LoadTable>() as u64) {
        return Err("value size is not the load table's");
    }
    if info.max_entries != Some(1) {
        return Err("not one entry");
    }
    if info.map_flags.is_none_or(|f| f & BPF_F_MMAPABLE as u64 == 0) {
        return Err("not mmap-able");
    }
    let id = info.map_id.unwrap_or(0) as u32;
    if want_id != 0 && id != want_id {
        return Err("another map than the reply names");
    }
    Ok(id)
}
