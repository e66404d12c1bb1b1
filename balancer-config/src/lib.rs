//! The daemon's configuration file (`reuselb daemon --config FILE`, `reuselb check-config FILE`).
//!
//! YAML, read with serde_yaml; unknown fields are errors everywhere. Every error names the file,
//! the line and column of the offending node, the field, the bad value and what was expected:
//!
//! ```text
//! /etc/reuselb/reuselb.yaml:7:13: services[0].policy: unknown policy `fastest`: expected one of least-loaded, work-left, peak-ewma, p2c, round-robin, hash, pack
//! ```
//!
//! Checks of one value (policy names, addresses, ranges, paths) run while the file is read, so
//! serde_yaml knows where the value is. Checks across values (duplicate names, overlapping listen
//! addresses, shared socket paths) run afterwards in [`Config::validate`]; their position is found
//! by reading the text again with a probe that stops at the offending node (see [`locate`]), so
//! they point at the exact line and column too. `deploy/examples/reuselb.yaml` documents the format.
//!
//! A crate of its own, with no dependency on the rest of reuselb but balancer-common's `Policy`:
//! balancer-user re-exports it as `balancer_user::config`, and the fuzz target (fuzz/) depends on
//! it directly, without building balancer-user's eBPF programs.
use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use balancer_common::{Policy, PolicyNames, MAX_SLOTS};
pub mod pods;
pub use pods::{Pods, Template};

use serde::{
    de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize,
};

/// Which program a service runs (`mode:` in the file; balancer-user's `Group` takes it too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// select-or-migrate where the kernel supports it (5.14+), select-only otherwise.
    #[default]
    Auto,
    Select,
    SelectOrMigrate,
}

/// Default of `shim_socket_dir`.
pub const DEFAULT_SHIM_SOCKET_DIR: &str = "/run/reuselb";
/// Default of `pin_path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/reuselb";
/// Highest default `weight` a service or template may give (the operator's, for workers that ask
/// for none); what a worker may ask for itself is capped lower, at the registry's
/// `MAX_ASKED_WEIGHT` (1024).
pub const MAX_WEIGHT: u32 = 65535;
/// Longest service name.
pub const MAX_NAME_LEN: usize = 32;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the per-service registration sockets (`<dir>/<name>.sock` by default).
    #[serde(default = "default_shim_socket_dir", deserialize_with = "de_abs_path")]
    pub shim_socket_dir: PathBuf,
    /// Where `/metrics`, `/healthz` and `/status` are served; `None`: `--metrics-addr`, else
    /// 127.0.0.1:9464.
    #[serde(default, deserialize_with = "de_opt_metrics_addr")]
    pub metrics_addr: Option<SocketAddr>,
    /// bpffs directory under which each service's programs and maps are pinned.
    #[serde(default = "default_pin_path", deserialize_with = "de_abs_path")]
    pub pin_path: PathBuf,
    /// The services listed by address. May be empty when `pods` is given.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Groups made on registration for workers nobody lists (pods): see [`pods`].
    #[serde(default)]
    pub pods: Option<Pods>,
}

/// One balanced service: its listen addresses share one set of workers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `[a-z0-9_-]{1,32}`, unique in the file. Used in metrics labels, pin paths and socket names.
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    /// At least one `IP:PORT`; a single address may be written without brackets.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_policy")]
    pub policy: Policy,
    /// Which program runs: `auto` (select-or-migrate where the kernel has it), `select`,
    /// `select-or-migrate`.
    #[serde(default, deserialize_with = "de_mode")]
    pub mode: Mode,
    /// Weight of a worker that registers without asking for one (1..=[`MAX_WEIGHT`]).
    #[serde(default = "default_weight", deserialize_with = "de_weight")]
    pub weight: u32,
    /// Most workers registered at once (1..=[`MAX_SLOTS`]).
    #[serde(default = "default_max_workers", deserialize_with = "de_max_workers")]
    pub max_workers: u32,
    /// Milliseconds (0..=[`MAX_BLOCKED_AFTER_MS`]) after which a worker with connections in flight
    /// and no progress (no completion, no first connection) counts as blocked, and least-loaded
    /// and p2c pass it over while another worker is not; 0 (the default) turns the check off.
    #[serde(default, deserialize_with = "de_blocked_after_ms")]
    pub blocked_after_ms: u32,
    /// The pack policy's depth (0..=[`MAX_PACK_DEPTH`]): connections in flight per unit of
    /// weight that fill a worker before the next one gets new connections; 0 (the default)
    /// counts as 1. Read only while the policy is `pack`.
    #[serde(default, deserialize_with = "de_pack_depth")]
    pub pack_depth: u32,
    /// Uids whose workers may register; `None`: only the daemon's own uid
    /// (see [`Service::allowed_uids_or`]).
    #[serde(default, deserialize_with = "de_opt_uids")]
    pub allowed_uids: Option<Vec<u32>>,
    /// The registration socket. `None` in the file means `<shim_socket_dir>/<name>.sock`;
    /// [`Config::parse`] fills it in, so it is always `Some` in a parsed config
    /// (use [`Service::shim_socket`]).
    #[serde(default, deserialize_with = "de_opt_abs_path")]
    pub shim_socket: Option<PathBuf>,
    /// Network namespace of the listen addresses (a path such as `/var/run/netns/pod1` or
    /// `/proc/PID/ns/net`); `None`: the daemon's own.
    #[serde(default, deserialize_with = "de_opt_abs_path")]
    pub netns: Option<PathBuf>,
}

fn default_shim_socket_dir() -> PathBuf {
    PathBuf::from(DEFAULT_SHIM_SOCKET_DIR)
}
fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_weight() -> u32 {
    1
}
fn default_max_workers() -> u32 {
    MAX_SLOTS
}

/// A config that cannot be used. `Display` is `FILE:LINE:COLUMN: message` (or `FILE: message`
/// when there is no position, such as an unreadable file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", located(file, *line, *column, message))]
    Invalid {
        /// The file as given (or `<config>` for a config built in code).
        file: String,
        /// 1-based, where known.
        line: Option<usize>,
        /// 1-based, where known.
        column: Option<usize>,
        /// What is wrong and what was expected, with the field's path (`services[1].listen[0]: ...`).
        message: String,
    },
}

fn located(file: &str, line: Option<usize>, column: Option<usize>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {message}"),
        (Some(l), None) => format!("{file}:{l}: {message}"),
        _ => format!("{file}: {message}"),
    }
}

impl ConfigError {
    /// `(line, column)`, 1-based, if the error has a position.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line: Some(l), column: Some(c), .. } => Some((*l, *c)),
            _ => None,
        }
    }
}

/// One step of a path into the document, for positions of semantic errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A semantic error before it is given a position.
struct Problem {
    at: Vec<Seg>,
    message: String,
}

impl Problem {
    fn new(at: Vec<Seg>, message: String) -> Self {
        let message = format!("{}: {message}", path_text(&at));
        Self { at, message }
    }
}

fn path_text(at: &[Seg]) -> String {
    let mut s = String::new();
    for seg in at {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Which services a reload adds, removes and changes (see [`Config::diff`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// In the new config only.
    pub added: Vec<String>,
    /// In the old config only.
    pub removed: Vec<String>,
    /// Changed in what applies to a running group: policy, blocked_after_ms, pack_depth, weight,
    /// max_workers, allowed_uids.
    pub updated: Vec<String>,
    /// Changed in what needs a new group: listen, netns, mode or shim_socket.
    pub recreated: Vec<String>,
    /// `shim_socket_dir`, `metrics_addr` or `pin_path` changed.
    pub globals_changed: bool,
    /// The `pods` section changed (added, removed, or any of its values).
    pub pods_changed: bool,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks `text`; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let invalid = |line: Option<usize>, column: Option<usize>, message: String| {
            ConfigError::Invalid { file: file.to_owned(), line, column, message }
        };
        if text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
        }) {
            return Err(invalid(
                Some(1),
                Some(1),
                "the file is empty: expected a mapping with at least a `services:` list".to_owned(),
            ));
        }
        let mut config: Config = serde_yaml::from_str(text).map_err(|err| {
            let (line, column) = match err.location() {
                Some(loc) => (Some(loc.line()), Some(loc.column())),
                None => (None, None),
            };
            let mut message = err.to_string();
            if let (Some(l), Some(c)) = (line, column) {
                if let Some(pos) = message.find(&format!(" at line {l} column {c}")) {
                    let end = pos + format!(" at line {l} column {c}").len();
                    message.replace_range(pos..end, "");
                }
            }
            if let Some(l) = line {
                let bad_line = text.lines().nth(l.saturating_sub(1)).unwrap_or("");
                if bad_line.chars().take_while(|c| c.is_whitespace()).any(|c| c == '\t') {
                    message.push_str(
                        " (a tab is indenting this line: YAML indentation must be spaces)",
                    );
                }
            }
            invalid(line, column, message)
        })?;
        config.fill_defaults();
        if let Err(problem) = config.check() {
            let (line, column) = match locate(text, &problem.at) {
                Some((l, c)) => (Some(l), Some(c)),
                None => (None, None),
            };
            return Err(invalid(line, column, problem.message));
        }
        Ok(config)
    }

    /// The checks across values (unique names, non-overlapping addresses, distinct sockets), for
    /// a config built in code; [`Config::parse`] runs them too, with positions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut filled = self.clone();
        filled.fill_defaults();
        filled.check().map_err(|p| ConfigError::Invalid {
            file: "<config>".to_owned(),
            line: None,
            column: None,
            message: p.message,
        })
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// What a reload from `self` to `new` changes.
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        let mut d = ConfigDiff {
            globals_changed: self.shim_socket_dir != new.shim_socket_dir
                || self.metrics_addr != new.metrics_addr
                || self.pin_path != new.pin_path,
            pods_changed: self.pods != new.pods,
            ..ConfigDiff::default()
        };
        for s in &new.services {
            match self.service(&s.name) {
                None => d.added.push(s.name.clone()),
                Some(old) if old == s => {}
                Some(old) => {
                    if old.listen != s.listen
                        || old.netns != s.netns
                        || old.mode != s.mode
                        || old.shim_socket() != s.shim_socket()
                    {
                        d.recreated.push(s.name.clone());
                    } else {
                        d.updated.push(s.name.clone());
                    }
                }
            }
        }
        for s in &self.services {
            if new.service(&s.name).is_none() {
                d.removed.push(s.name.clone());
            }
        }
        d
    }

    /// Gives every service without a `shim_socket` its default, `<shim_socket_dir>/<name>.sock`.
    /// [`Config::parse`] does it; a config built in code may need it.
    pub fn fill_defaults(&mut self) {
        for s in &mut self.services {
            if s.shim_socket.is_none() {
                s.shim_socket = Some(self.shim_socket_dir.join(format!("{}.sock", s.name)));
            }
        }
        if let Some(p) = &mut self.pods {
            if p.shim_socket.is_none() {
                p.shim_socket = Some(self.shim_socket_dir.join("pods.sock"));
            }
        }
    }

    fn check(&self) -> Result<(), Problem> {
        let svc = |i: usize, field: &'static str| {
            vec![Seg::Key("services"), Seg::Index(i), Seg::Key(field)]
        };
        if self.services.is_empty() && self.pods.is_none() {
            return Err(Problem::new(
                vec![Seg::Key("services")],
                "no services: expected at least one, or a `pods:` section".to_owned(),
            ));
        }
        if let Some(pods) = &self.pods {
            pods.check().map_err(|(at, message)| Problem::new(at, message))?;
            if let Some(i) = self.services.iter().position(|s| s.name == "pods") {
                return Err(Problem::new(
                    vec![Seg::Key("services"), Seg::Index(i), Seg::Key("name")],
                    "the service name `pods` is taken by the pods section (its pins and metrics \
                     label): expected another name"
                        .to_owned(),
                ));
            }
            let socket = pods.shim_socket();
            if let Some(s) = self.services.iter().find(|s| s.shim_socket() == socket) {
                return Err(Problem::new(
                    vec![Seg::Key("pods"), Seg::Key("shim_socket")],
                    format!(
                        "shim socket {} is also the socket of service `{}`: expected one socket \
                         per service, and one for the pods",
                        socket.display(),
                        s.name
                    ),
                ));
            }
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut sockets: HashMap<&Path, usize> = HashMap::new();
        // (netns, address) -> (service index, address index)
        let mut addrs: Vec<(Option<&Path>, SocketAddr, usize)> = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            if !valid_name(&s.name) {
                return Err(Problem::new(svc(i, "name"), name_message(&s.name)));
            }
            if let Some(&first) = names.get(s.name.as_str()) {
                return Err(Problem::new(
                    svc(i, "name"),
                    format!("duplicate service name `{}`: services[{first}] has it already; expected unique names", s.name),
                ));
            }
            names.insert(&s.name, i);
            if s.listen.is_empty() {
                return Err(Problem::new(
                    svc(i, "listen"),
                    "no listen address: expected at least one IP:PORT".to_owned(),
                ));
            }
            for (k, addr) in s.listen.iter().enumerate() {
                let mut at = svc(i, "listen");
                at.push(Seg::Index(k));
                if let Err(msg) = check_listen(addr) {
                    return Err(Problem::new(at, msg));
                }
                for &(netns, other, j) in &addrs {
                    if netns == s.netns.as_deref() && overlaps(addr, &other) {
                        let whose = if j == i {
                            "this service".to_owned()
                        } else {
                            format!("service `{}`", self.services[j].name)
                        };
                        let same = if *addr == other {
                            "is already".to_owned()
                        } else {
                            format!("overlaps {other}, which is")
                        };
                        return Err(Problem::new(
                            at,
                            format!(
                                "listen address {addr} {same} used by {whose}{}; expected every listen address once per network namespace",
                                match netns {
                                    Some(p) => format!(" (netns {})", p.display()),
                                    None => String::new(),
                                }
                            ),
                        ));
                    }
                }
                addrs.push((s.netns.as_deref(), *addr, i));
            }
            if !(1..=MAX_SLOTS).contains(&s.max_workers) {
                return Err(Problem::new(
                    svc(i, "max_workers"),
                    format!("max_workers must be 1..={MAX_SLOTS}, got {}", s.max_workers),
                ));
            }
            if !(1..=MAX_WEIGHT).contains(&s.weight) {
                return Err(Problem::new(
                    svc(i, "weight"),
                    format!("weight must be 1..={MAX_WEIGHT}, got {}", s.weight),
                ));
            }
            if let Some(uids) = &s.allowed_uids {
                if uids.is_empty() {
                    return Err(Problem::new(
                        svc(i, "allowed_uids"),
                        "allowed_uids is empty, so no worker could register: expected at least one uid, or omit it to allow the daemon's own uid".to_owned(),
                    ));
                }
            }
            let socket = s.shim_socket();
            if let Some(&first) = sockets.get(socket) {
                // Point at the explicit shim_socket if there is one, else at the name that made it.
                let field = if explicit_shim_socket(self, i) { "shim_socket" } else { "name" };
                return Err(Problem::new(
                    svc(i, field),
                    format!(
                        "shim socket {} is also the socket of service `{}`: expected one socket per service",
                        socket.display(),
                        self.services[first].name
                    ),
                ));
            }
            sockets.insert(socket, i);
        }
        Ok(())
    }
}

/// Whether service `i`'s shim socket was given explicitly (differs from the default path).
fn explicit_shim_socket(config: &Config, i: usize) -> bool {
    let s = &config.services[i];
    s.shim_socket() != config.shim_socket_dir.join(format!("{}.sock", s.name))
}

impl Service {
    /// The registration socket. [`Config::parse`] fills in the default; for a config built in
    /// code, call [`Config::fill_defaults`] first (until then this is an empty path).
    pub fn shim_socket(&self) -> &Path {
        self.shim_socket.as_deref().unwrap_or(Path::new(""))
    }

    /// The allowed uids, or `[own_uid]` when the file gives none.
    pub fn allowed_uids_or(&self, own_uid: u32) -> Vec<u32> {
        self.allowed_uids.clone().unwrap_or_else(|| vec![own_uid])
    }
}

fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    // IPv6 listeners are V6ONLY (see listener::bind_reuseport), so the families never overlap.
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn name_message(name: &str) -> String {
    format!("invalid service name `{name}`: expected 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `_` and `-`")
}

fn check_listen(addr: &SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Err(format!("invalid listen address `{addr}`: port 0 is not a fixed port; expected IP:PORT with a port of 1..=65535"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Value checks during deserialization. Each error is made inside a visitor, so serde_yaml gives
// it the position of the value.

/// Visitor of one string value, checked by `parse`: its error (a message) becomes the value's.
struct StrV<T> {
    expecting: String,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for StrV<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

/// One string value, `expecting` a kind of string, checked by `parse`.
fn de_str<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: impl Into<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_str(StrV { expecting: expecting.into(), parse })
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    de_str(
        d,
        format!("a service name of 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `_` and `-`"),
        |v| if valid_name(v) { Ok(v.to_owned()) } else { Err(name_message(v)) },
    )
}

fn de_policy<'de, D: Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
    de_str(d, format!("one of {PolicyNames}"), |v| {
        v.parse().map_err(|_| format!("unknown policy `{v}`: expected one of {PolicyNames}"))
    })
}

fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    de_str(d, "one of auto, select, select-or-migrate", |v| match v {
        "auto" => Ok(Mode::Auto),
        "select" => Ok(Mode::Select),
        "select-or-migrate" => Ok(Mode::SelectOrMigrate),
        _ => Err(format!("unknown mode `{v}`: expected one of auto, select, select-or-migrate")),
    })
}

/// Visitor of one `IP:PORT`.
struct AddrV {
    what: &'static str,
    port_zero_ok: bool,
}

impl Visitor<'_> for AddrV {
    type Value = SocketAddr;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an IP:PORT address such as 127.0.0.1:8000 or [::1]:8000")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        let addr: SocketAddr = v.trim().parse().map_err(|_| {
            E::custom(format!("invalid {} `{v}`: expected IP:PORT such as 127.0.0.1:8000 or [::1]:8000 (an IP, not a host name)", self.what))
        })?;
        if !self.port_zero_ok {
            check_listen(&addr).map_err(E::custom)?;
        }
        Ok(addr)
    }
}

impl<'de> DeserializeSeed<'de> for AddrV {
    type Value = SocketAddr;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SocketAddr, D::Error> {
        d.deserialize_str(self)
    }
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<SocketAddr>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of IP:PORT addresses such as [\"127.0.0.1:8000\", \"[::1]:8000\"]")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<SocketAddr>, E> {
            Ok(vec![AddrV { what: "listen address", port_zero_ok: false }.visit_str(v)?])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<SocketAddr>, A::Error> {
            let mut out = Vec::new();
            while let Some(a) =
                seq.next_element_seed(AddrV { what: "listen address", port_zero_ok: false })?
            {
                out.push(a);
            }
            if out.is_empty() {
                return Err(de::Error::custom("no listen address: expected at least one IP:PORT"));
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

fn de_opt_metrics_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    d.deserialize_str(AddrV { what: "metrics address", port_zero_ok: true }).map(Some)
}

/// Visitor of one integer `min..=max`, named `field` in the error; `expected` says what kind of
/// integer (for a value of another type).
struct RangedV {
    field: &'static str,
    expected: &'static str,
    min: u64,
    max: u64,
}

impl RangedV {
    fn bad<E: de::Error>(&self, got: impl fmt::Display) -> E {
        E::custom(format!("{} must be {}..={}, got {got}", self.field, self.min, self.max))
    }
}

impl Visitor<'_> for RangedV {
    type Value = u32;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {}..={}", self.expected, self.min, self.max)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v as u32)
        } else {
            Err(self.bad(v))
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        if v < 0 {
            Err(self.bad(v))
        } else {
            self.visit_u64(v as u64)
        }
    }
}

impl<'de> DeserializeSeed<'de> for RangedV {
    type Value = u32;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_any(self)
    }
}

fn de_max_workers<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV { field: "max_workers", expected: "an integer", min: 1, max: MAX_SLOTS as u64 }
        .deserialize(d)
}

/// The longest `blocked_after_ms`: ten minutes.
pub const MAX_BLOCKED_AFTER_MS: u32 = 600_000;

fn de_blocked_after_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV {
        field: "blocked_after_ms",
        expected: "milliseconds (0 turns the check off)",
        min: 0,
        max: MAX_BLOCKED_AFTER_MS as u64,
    }
    .deserialize(d)
}

/// The largest `pack_depth`.
pub const MAX_PACK_DEPTH: u32 = 65_535;

fn de_pack_depth<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV {
        field: "pack_depth",
        expected: "connections in flight per unit of weight (0 counts as 1)",
        min: 0,
        max: MAX_PACK_DEPTH as u64,
    }
    .deserialize(d)
}

fn de_weight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV { field: "weight", expected: "an integer", min: 1, max: MAX_WEIGHT as u64 }
        .deserialize(d)
}

/// Uids: 0..=4294967294 (u32::MAX is "no uid" to the kernel).
const UID: RangedV =
    RangedV { field: "uid", expected: "a numeric uid", min: 0, max: u32::MAX as u64 - 1 };

fn de_opt_uids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<u32>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of numeric uids such as [33, 1000]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u32>, A::Error> {
            let mut out = Vec::new();
            while let Some(uid) = seq.next_element_seed(UID)? {
                out.push(uid);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V).map(Some)
}

fn de_abs_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    de_str(d, "an absolute path", |v| {
        if v.starts_with('/') {
            Ok(PathBuf::from(v))
        } else {
            Err(format!("expected an absolute path (starting with /), got `{v}`"))
        }
    })
}

fn de_opt_abs_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    de_abs_path(d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Positions of semantic errors.

/// Line and column (1-based) of the node at `path` in `text`, found by reading the text again
/// with serde_yaml and failing on purpose at that node: serde_yaml then reports the node's
/// position. Works for block and flow style alike; `None` if the path is not in the text.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    const MARK: &str = "\u{0}reuselb-probe";
    let de = serde_yaml::Deserializer::from_str(text);
    match (Probe { path }).deserialize(de) {
        Err(err) if err.to_string().contains(MARK) => {
            err.location().map(|l| (l.line(), l.column()))
        }
        _ => None,
    }
}

struct Probe<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.first() {
            None => d.deserialize_any(Hit),
            Some(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(Seg::Key(want)) = self.path.first() else { return Ok(()) };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if key.as_str() == Some(*want) {
                return map.next_value_seed(Probe { path: &self.path[1..] });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(Seg::Index(want)) = self.path.first() else { return Ok(()) };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe { path: &self.path[1..] }).map(|_| ())
    }
    // A scalar where a list or mapping was expected: the path is not there, except that a
    // single scalar stands for a list of one (`listen: 127.0.0.1:8000`).
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        if self.path == [Seg::Index(0)] {
            return Err(E::custom("\u{0}reuselb-probe"));
        }
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Fails on whatever node it is given, so that serde_yaml stamps the node's position.
struct Hit;

impl<'de> Visitor<'de> for Hit {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\u{0}reuselb-probe")
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom("\u{0}reuselb-probe"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom("\u{0}reuselb-probe"))
    }
}
