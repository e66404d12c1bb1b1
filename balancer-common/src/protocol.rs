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
/// Version 3: [`Register::flags`] (the worker asks the controller for its listener:
/// [`Register::WANT_SOCKET`]), [`Register::template`] and [`Register::pod`] (which settings the
/// worker asks for, and a label for its group), and [`Reply::flags`]
/// ([`Reply::SOCKET_ATTACHED`]).
pub const VERSION: u16 = 3;

/// Length of [`Register::template`]: a template name has at most this many bytes minus one.
pub const TEMPLATE_LEN: usize = 32;
/// Length of [`Register::pod`]: a pod label has at most this many bytes minus one.
pub const POD_LEN: usize = 64;

pub use crate::layout::LAYOUT_VERSION;

/// Size of the reason text in a [`Reply`].
pub const REASON_LEN: usize = 112;

/// Default path of the controller's registration socket.
pub const DEFAULT_SOCKET_PATH: &str = "/run/reuselb/shim.sock";
/// Environment variable through which `reuselb run` tells the shim where the controller listens.
pub const ENV_SOCKET: &str = "REUSELB_SOCKET";
/// Environment variable naming the balanced addresses (comma separated `ADDR:PORT`).
pub const ENV_LISTEN: &str = "REUSELB_LISTEN";
/// Environment variable naming the service template a worker asks for ([`Register::template`]).
pub const ENV_TEMPLATE: &str = "REUSELB_TEMPLATE";
/// Environment variable carrying a label for the worker's group, such as `namespace/pod`
/// ([`Register::pod`]).
pub const ENV_POD: &str = "REUSELB_POD";

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
    /// [`Register::WANT_SOCKET`]; other bits are reserved and must be 0.
    pub flags: u32,
    /// Name of the service template the worker asks for ([`ENV_TEMPLATE`]): a [`Name`], empty for
    /// the default. It chooses settings only: which group a worker joins is decided by the socket
    /// it hands over, never by a name it claims.
    pub template: Name<TEMPLATE_LEN>,
    /// A label for the worker's group in metrics and `/status` ([`ENV_POD`]), empty for none.
    pub pod: Name<POD_LEN>,
}

/// A short NUL-padded ASCII name in a fixed-size field: letters, digits and `.-_/:`, at most
/// `N - 1` bytes. Decoding refuses anything else, so what reaches a log or a metric label is
/// always printable and bounded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name<const N: usize>([u8; N]);

impl<const N: usize> Name<N> {
    /// The empty name.
    pub const EMPTY: Self = Self([0; N]);

    /// `text` as a name, or `None` when it is too long or has a character outside the set.
    pub fn new(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() >= N || !b.iter().all(|&c| Self::allowed(c)) {
            return None;
        }
        let mut out = [0u8; N];
        out[..b.len()].copy_from_slice(b);
        Some(Self(out))
    }

    const fn allowed(c: u8) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'/' | b':')
    }

    /// Checks raw bytes: allowed characters up to the first NUL, only NULs after it.
    fn from_bytes(b: &[u8]) -> Option<Self> {
        let end = b.iter().position(|&c| c == 0)?;
        if !b[..end].iter().all(|&c| Self::allowed(c)) || b[end..].iter().any(|&c| c != 0) {
            return None;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Some(Self(out))
    }

    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(N);
        // Only ASCII is ever stored (checked by `new` and `from_bytes`).
        core::str::from_utf8(&self.0[..end]).unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }

    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> core::fmt::Debug for Name<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
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
    /// [`Reply::SOCKET_ATTACHED`]; other bits are reserved and 0.
    pub flags: u32,
    /// The slot's epoch: the shim stops counting if the slot ever shows another one.
    pub epoch: u64,
    /// NUL-padded UTF-8 explanation, for the worker's log.
    pub reason: [u8; REASON_LEN],
}

named_enum! {
    /// Outcome of a registration; the name is the metrics label.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Status: u16 {
        Ok = 0 => "ok",
        /// The message was not a valid [`Register`].
        BadMessage = 1 => "bad_message",
        /// No descriptor attached, or more than one.
        NoDescriptor = 2 => "no_descriptor",
        /// The peer's uid is not allowed.
        UidNotAllowed = 3 => "uid_not_allowed",
        /// The descriptor is not a TCP listener with SO_REUSEPORT on the service's address.
        NotAListener = 4 => "not_a_listener",
        /// The socket is in another network namespace than the service's.
        WrongNamespace = 5 => "wrong_namespace",
        /// Every slot is taken.
        NoFreeSlot = 6 => "no_free_slot",
        /// The controller failed (a map update, say).
        Internal = 7 => "internal",
        /// The shim was built for another load-table layout ([`Register::layout`]).
        LayoutMismatch = 8 => "layout_mismatch",
        /// No service template has the name in [`Register::template`].
        UnknownTemplate = 9 => "unknown_template",
        /// The pod (network namespace) has as many groups, or workers, as one pod may have.
        PodLimit = 10 => "pod_limit",
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
    /// Reserved flag bits set: carries the flags received.
    Flags(u32),
    /// A name field that is not a [`Name`].
    Name,
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
            DecodeError::Flags(x) => write!(f, "unknown flags {x:#x}"),
            DecodeError::Name => {
                f.write_str("a name field with characters outside [A-Za-z0-9.-_/:] or no NUL")
            }
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
    pub const SIZE: usize = 24 + TEMPLATE_LEN + POD_LEN;
    /// The worker cannot put a socket of its own into the group (it runs as another uid than the
    /// socket it was given, say): the controller creates the worker's listener and attaches it to
    /// the reply ([`Reply::SOCKET_ATTACHED`]).
    pub const WANT_SOCKET: u32 = 1;
    const KNOWN_FLAGS: u32 = Self::WANT_SOCKET;

    /// A registration of this build's layout ([`LAYOUT_VERSION`]), no flags, no names.
    pub fn new(pid: u32, weight: u32) -> Self {
        Self {
            magic: MAGIC,
            version: VERSION,
            layout: LAYOUT_VERSION,
            pid,
            weight,
            flags: 0,
            template: Name::EMPTY,
            pod: Name::EMPTY,
        }
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.layout.to_le_bytes());
        b[8..12].copy_from_slice(&self.pid.to_le_bytes());
        b[12..16].copy_from_slice(&self.weight.to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        // 20..24 reserved, 0.
        b[24..24 + TEMPLATE_LEN].copy_from_slice(self.template.as_bytes());
        b[24 + TEMPLATE_LEN..].copy_from_slice(self.pod.as_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        check_header(b, Self::SIZE)?;
        let flags = u32_at(b, 16);
        if flags & !Self::KNOWN_FLAGS != 0 || u32_at(b, 20) != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let template = Name::from_bytes(&b[24..24 + TEMPLATE_LEN]).ok_or(DecodeError::Name)?;
        let pod = Name::from_bytes(&b[24 + TEMPLATE_LEN..]).ok_or(DecodeError::Name)?;
        Ok(Self {
            layout: u16_at(b, 6),
            flags,
            template,
            pod,
            ..Self::new(u32_at(b, 8), u32_at(b, 12))
        })
    }
}

impl Reply {
    pub const SIZE: usize = 32 + REASON_LEN;
    /// A second descriptor follows the load map: the worker's listener, created by the controller
    /// (the answer to [`Register::WANT_SOCKET`]).
    pub const SOCKET_ATTACHED: u32 = 1;
    const KNOWN_FLAGS: u32 = Self::SOCKET_ATTACHED;

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
            flags: 0,
            epoch,
            reason: text,
        }
    }

    /// The same reply with `flags` ([`Reply::SOCKET_ATTACHED`]).
    pub fn with_flags(self, flags: u32) -> Self {
        Self { flags, ..self }
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
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        // 20..24 reserved, 0.
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..].copy_from_slice(&self.reason);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        check_header(b, Self::SIZE)?;
        let status = u16_at(b, 6);
        Status::from_id(status).ok_or(DecodeError::Status(status))?;
        let flags = u32_at(b, 16);
        if flags & !Self::KNOWN_FLAGS != 0 || u32_at(b, 20) != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let mut reason = [0u8; REASON_LEN];
        reason.copy_from_slice(&b[32..]);
        Ok(Self {
            magic: MAGIC,
            version: VERSION,
            status,
            slot: u32_at(b, 8),
            map_id: u32_at(b, 12),
            flags,
            epoch: u64_at(b, 24),
            reason,
        })
    }
}
