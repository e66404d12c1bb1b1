//! The baseline of the selector bench: an SK_REUSEPORT program that only returns SK_PASS
//! (`r0 = 1; exit`), loaded with the raw bpf(2) syscall because aya 0.14 has no loader for
//! hand-written instructions, and its run-time statistics read with `BPF_OBJ_GET_INFO_BY_FD`.
//!
//! The attribute and info layouts below are the kernel ABI (`linux/bpf.h`); the offsets are
//! checked at compile time, and the bench cross-checks the parsed run count and run time
//! against aya's own reading of the same program.
use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
pub const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
/// `BPF_SK_REUSEPORT_SELECT` (enum bpf_attach_type).
const BPF_SK_REUSEPORT_SELECT: u32 = 39;
/// `<asm-generic/socket.h>`; not in the libc crate for linux-gnu.
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

/// Name the program shows in `bpftool prog` (at most 15 bytes).
pub const PROG_NAME: &str = "reuselb_pass";

/// `struct bpf_insn`: opcode, dst_reg:4 | src_reg:4, off, imm.
#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const _: () = {
    assert!(size_of::<BpfInsn>() == 8);
    assert!(offset_of!(ProgLoadAttr, insns) == 8);
    assert!(offset_of!(ProgLoadAttr, license) == 16);
    assert!(offset_of!(ProgLoadAttr, log_level) == 24);
    assert!(offset_of!(ProgLoadAttr, log_buf) == 32);
    assert!(offset_of!(ProgLoadAttr, kern_version) == 40);
    assert!(offset_of!(ProgLoadAttr, prog_name) == 48);
    assert!(offset_of!(ProgLoadAttr, prog_ifindex) == 64);
    assert!(offset_of!(ProgLoadAttr, expected_attach_type) == 68);
    assert!(size_of::<ProgLoadAttr>() == 72);
};

/// The `info` member of `union bpf_attr` (`BPF_OBJ_GET_INFO_BY_FD`).
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info` offsets (linux/bpf.h; checked against the header with offsetof):
/// type @0 (u32), id @4 (u32), run_time_ns @192 (u64), run_cnt @200 (u64); 232 bytes up to
/// `attach_btf_id`. A smaller buffer than the kernel's struct is fine: the kernel copies
/// `min(info_len, sizeof)` and writes the length it filled back into `info_len`.
const INFO_TYPE: usize = 0;
const INFO_ID: usize = 4;
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;
const INFO_LEN: usize = 232;

fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr points to a live, initialised attribute struct of the stated size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says about the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawInfo {
    pub prog_type: u32,
    pub id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// A loaded SK_PASS-only SK_REUSEPORT program. Dropping it closes the fd; the kernel frees the
/// program once it is no longer attached either.
pub struct SkPassProgram {
    fd: OwnedFd,
}

impl SkPassProgram {
    pub fn load() -> Result<Self> {
        let insns = [
            // r0 = 1 (SK_PASS): BPF_ALU64 | BPF_MOV | BPF_K
            BpfInsn { code: 0xb7, regs: 0, off: 0, imm: 1 },
            // exit: BPF_JMP | BPF_EXIT
            BpfInsn { code: 0x95, regs: 0, off: 0, imm: 0 },
        ];
        let license = b"GPL\0";
        let mut name = [0u8; 16];
        name[..PROG_NAME.len()].copy_from_slice(PROG_NAME.as_bytes());
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_SK_REUSEPORT_SELECT,
            ..Default::default()
        };
        match sys_bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: BPF_PROG_LOAD returns a new descriptor that we own.
            Ok(fd) => Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } }),
            Err(err) => {
                // Once more with the verifier log, for a useful message.
                let mut log = vec![0u8; 64 * 1024];
                attr.log_level = 1;
                attr.log_size = log.len() as u32;
                attr.log_buf = log.as_mut_ptr() as u64;
                let retry = sys_bpf(BPF_PROG_LOAD, &mut attr);
                if let Ok(fd) = retry {
                    // SAFETY: as above; close it, the first attempt is what failed.
                    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
                }
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                bail!(
                    "BPF_PROG_LOAD of the SK_PASS-only SK_REUSEPORT program failed: {err}; verifier log: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                )
            }
        }
    }

    /// Attaches the program to the reuseport group of `socket` (SO_ATTACH_REUSEPORT_EBPF).
    pub fn attach(&self, socket: BorrowedFd<'_>) -> Result<()> {
        let prog_fd: libc::c_int = self.fd.as_raw_fd();
        setsockopt_int(socket, SO_ATTACH_REUSEPORT_EBPF, prog_fd)
            .context("SO_ATTACH_REUSEPORT_EBPF")
    }

    /// Detaches whatever program runs on `socket`'s reuseport group (SO_DETACH_REUSEPORT_BPF).
    pub fn detach(socket: BorrowedFd<'_>) -> Result<()> {
        setsockopt_int(socket, SO_DETACH_REUSEPORT_BPF, 0).context("SO_DETACH_REUSEPORT_BPF")
    }

    pub fn info(&self) -> Result<RawInfo> {
        // u64 buffer: 8-aligned, like the kernel struct.
        let mut buf = [0u64; INFO_LEN / 8];
        let mut attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: INFO_LEN as u32,
            info: buf.as_mut_ptr() as u64,
        };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
            .context("BPF_OBJ_GET_INFO_BY_FD on the SK_PASS program")?;
        if (attr.info_len as usize) < INFO_RUN_CNT + 8 {
            bail!(
                "the kernel filled only {} bytes of bpf_prog_info (no run_cnt field)",
                attr.info_len
            );
        }
        // SAFETY: reads plain integers at in-bounds offsets of a byte view of `buf`.
        let bytes: &[u8; INFO_LEN] = unsafe { &*(buf.as_ptr() as *const [u8; INFO_LEN]) };
        let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap());
        let info = RawInfo {
            prog_type: u32_at(INFO_TYPE),
            id: u32_at(INFO_ID),
            run_time_ns: u64_at(INFO_RUN_TIME_NS),
            run_cnt: u64_at(INFO_RUN_CNT),
        };
        if info.prog_type != BPF_PROG_TYPE_SK_REUSEPORT {
            bail!("bpf_prog_info of the SK_PASS program says type {}, expected {BPF_PROG_TYPE_SK_REUSEPORT}: layout mismatch", info.prog_type);
        }
        Ok(info)
    }
}

fn setsockopt_int(socket: BorrowedFd<'_>, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a valid c_int of the stated size.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Checks our parse of `bpf_prog_info` against aya's (which uses its generated bindings):
/// both must report the same id, run count and run time for the program.
pub fn cross_check_with_aya(prog: &SkPassProgram) -> Result<()> {
    let mine = prog.info()?;
    let theirs = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == mine.id)
        .with_context(|| format!("aya does not list program id {}", mine.id))?;
    let (cnt, ns) = (theirs.run_count(), theirs.run_time().as_nanos() as u64);
    if cnt != mine.run_cnt || ns != mine.run_time_ns {
        bail!(
            "bpf_prog_info parse mismatch for program {}: ours run_cnt={} run_time_ns={}, aya's run_cnt={cnt} run_time_ns={ns}",
            mine.id,
            mine.run_cnt,
            mine.run_time_ns
        );
    }
    Ok(())
}
