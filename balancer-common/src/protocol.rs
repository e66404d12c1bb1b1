//! The registration protocol between the worker shim and the controller.
//!
//! One datagram each way on a `SOCK_SEQPACKET` unix socket, fixed size, little endian:
//! the shim sends [`Register`] with its listening socket attached (SCM_RIGHTS); the controller
//! answers [`Reply`], with the load map attached on success. Fixed-size records keep the decoder
//! trivial to check: anything of another size or with another magic is rejected as a whole.

/// "RLB1" in little endian: the first four bytes of every message.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RLB1");
/// Version 2: [`Register::layout`] names the load-table layout the shim was built for, and
/// [`Reply::map_id`] the kernel id of the attached load map (so that the shim can check what it
/// maps through `/proc/self/fdinfo`, with no `bpf()` call).
pub const VERSION: u16 = 2;

pub use crate::layout::LAYOUT_VERSION;

/// Size of the reason text in a [`Reply`].
pub const REASON_LEN: usize = 112;

/// Default path of the controller's registration socket.
pub const DEFAULT_SOCKET_PATH: &str = "/run/reuselb/shim.sock";
/// Environment variable through which `reuselb run` tells the shim where the controller listens.
pub const ENV_SOCKET: &str = "REUSELB_SOCKET";
/// Environment variable naming the balanced addresses (comma separated `ADDR:PORT`).
pub const ENV_LISTEN: &str = "REUSELB_LISTEN";

/// Shim -> controller: "this listening socket (attached) belongs to worker `pid`".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    pub magic: u32,
    pub version: u16,
    /// The [`LAYOUT_VERSION`] of the load table the shim reads and writes; the controller refuses
    /// another one ([`Status::LayoutMismatch`]) instead of letting two layouts share one map.
    pub layout: u16,
    pub pid: u32,
    /// Relative capacity the worker asks for (its thread count, say); 0 means 1.
    pub weight: u32,
}

/// Controller -> shim.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub magic: u32,
    pub version: u16,
    /// A [`Status`] id.
    pub status: u16,
    /// The worker's slot (valid on success).
    pub slot: u32,
    /// Kernel id of the load map attached to the reply (0 when none is attached): the shim maps
    /// the descriptor only if `/proc/self/fdinfo` shows a map with this id and the table's size.
    pub map_id: u32,
    /// The slot's epoch: the shim stops counting if the slot ever shows another one.
    pub epoch: u64,
    /// NUL-padded UTF-8 explanation, for the worker's log.
    pub reason: [u8; REASON_LEN],
}

/// Outcome of a registration.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// The message was not a valid [`Register`].
    BadMessage = 1,
    /// No descriptor attached, or more than one.
    NoDescriptor = 2,
    /// The peer's uid is not allowed.
    UidNotAllowed = 3,
    /// The descriptor is not a TCP listener with SO_REUSEPORT on the service's address.
    NotAListener = 4,
    /// The socket is in another network namespace than the service's.
    WrongNamespace = 5,
    /// Every slot is taken.
    NoFreeSlot = 6,
    /// The controller failed (a map update, say).
    Internal = 7,
    /// The shim was built for another load-table layout ([`Register::layout`]).
    LayoutMismatch = 8,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::BadMessage,
        Status::NoDescriptor,
        Status::UidNotAllowed,
        Status::NotAListener,
        Status::WrongNamespace,
        Status::NoFreeSlot,
        Status::Internal,
        Status::LayoutMismatch,
    ];

    pub fn from_id(id: u16) -> Option<Status> {
        Self::ALL.iter().copied().find(|s| *s as u16 == id)
    }

    /// Short name for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadMessage => "bad_message",
            Status::NoDescriptor => "no_descriptor",
            Status::UidNotAllowed => "uid_not_allowed",
            Status::NotAListener => "not_a_listener",
            Status::WrongNamespace => "wrong_namespace",
            Status::NoFreeSlot => "no_free_slot",
            Status::Internal => "internal",
            Status::LayoutMismatch => "layout_mismatch",
        }
    }
}

/// Why a message could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Wrong size: carries the size received.
    Size(usize),
    BadMagic,
    /// Unsupported version: carries the version received.
    Version(u16),
    /// Unknown status id in a reply.
    Status(u16),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Size(n) => write!(f, "message of {n} bytes, expected a fixed-size record"),
            DecodeError::BadMagic => f.write_str("bad magic: not a reuselb message"),
            DecodeError::Version(v) => {
                write!(f, "protocol version {v}, this side speaks {VERSION}")
            }
            DecodeError::Status(s) => write!(f, "unknown status {s}"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn check_header(b: &[u8], size: usize) -> Result<(), DecodeError> {
    if b.len() != size {
        return Err(DecodeError::Size(b.len()));
    }
    if u32_at(b, 0) != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16_at(b, 4);
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    Ok(())
}

impl Register {
    pub const SIZE: usize = 16;

    /// A registration of this build's layout ([`LAYOUT_VERSION`]).
    pub fn new(pid: u32, weight: u32) -> Self {
        Self { magic: MAGIC, version: VERSION, layout: LAYOUT_VERSION, pid, weight }
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.layout.to_le_bytes());
        b[8..12].copy_from_slice(&self.pid.to_le_bytes());
        b[12..16].copy_from_slice(&self.weight.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        check_header(b, Self::SIZE)?;
        Ok(Self { layout: u16_at(b, 6), ..Self::new(u32_at(b, 8), u32_at(b, 12)) })
    }
}

impl Reply {
    pub const SIZE: usize = 24 + REASON_LEN;

    /// A reply; `reason` is cut at [`REASON_LEN`] bytes, on a character boundary.
    pub fn new(status: Status, slot: u32, epoch: u64, reason: &str) -> Self {
        let mut text = [0u8; REASON_LEN];
        let mut end = reason.len().min(REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].copy_from_slice(&reason.as_bytes()[..end]);
        Self {
            magic: MAGIC,
            version: VERSION,
            status: status as u16,
            slot,
            map_id: 0,
            epoch,
            reason: text,
        }
    }

    /// The same reply, naming the kernel id of the load map attached to it.
    pub fn with_map_id(self, map_id: u32) -> Self {
        Self { map_id, ..self }
    }

    pub fn status(&self) -> Status {
        Status::from_id(self.status).unwrap_or(Status::Internal)
    }

    /// The reason text, up to its first NUL (lossy if the controller sent invalid UTF-8).
    pub fn reason(&self) -> &str {
        let end = self.reason.iter().position(|&c| c == 0).unwrap_or(REASON_LEN);
        match core::str::from_utf8(&self.reason[..end]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.reason[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..12].copy_from_slice(&self.slot.to_le_bytes());
        b[12..16].copy_from_slice(&self.map_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..].copy_from_slice(&self.reason);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        check_header(b, Self::SIZE)?;
        let status = u16_at(b, 6);
        Status::from_id(status).ok_or(DecodeError::Status(status))?;
        let mut reason = [0u8; REASON_LEN];
        reason.copy_from_slice(&b[24..]);
        Ok(Self {
            magic: MAGIC,
            version: VERSION,
            status,
            slot: u32_at(b, 8),
            map_id: u32_at(b, 12),
            epoch: u64_at(b, 16),
            reason,
        })
    }
}
