//! The file's model: [`Config`] (the whole file), [`Service`] (one listed service) and [`Mode`].
//! The pods section's model is in [`crate::pods`]; the settings a service shares with a pods
//! template are declared once in [`crate::settings`].
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{pods::Pods, settings::with_group_settings, DEFAULT_PIN_PATH, DEFAULT_SHIM_SOCKET_DIR};

/// Which program a service runs (`mode:` in the file; balancer-user's `Group` takes it too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// select-or-migrate where the kernel supports it (5.14+), select-only otherwise.
    #[default]
    Auto,
    Select,
    SelectOrMigrate,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the per-service registration sockets (`<dir>/<name>.sock` by default).
    #[serde(
        default = "crate::model::default_shim_socket_dir",
        deserialize_with = "crate::de::de_abs_path"
    )]
    pub shim_socket_dir: PathBuf,
    /// Where `/metrics`, `/healthz` and `/status` are served; `None`: `--metrics-addr`, else
    /// 127.0.0.1:9464.
    #[serde(default, deserialize_with = "crate::de::de_opt_metrics_addr")]
    pub metrics_addr: Option<SocketAddr>,
    /// bpffs directory under which each service's programs and maps are pinned.
    #[serde(
        default = "crate::model::default_pin_path",
        deserialize_with = "crate::de::de_abs_path"
    )]
    pub pin_path: PathBuf,
    /// The services listed by address. May be empty when `pods` is given.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Groups made on registration for workers nobody lists (pods): see [`pods`].
    #[serde(default)]
    pub pods: Option<Pods>,
}

with_group_settings! {
    /// One balanced service: its listen addresses share one set of workers.
    #[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Service {
        /// `[a-z0-9_-]{1,32}`, unique in the file. Used in metrics labels, pin paths and socket names.
        #[serde(deserialize_with = "crate::de::de_name")]
        pub name: String,
        /// At least one `IP:PORT`; a single address may be written without brackets.
        #[serde(deserialize_with = "crate::de::de_listen")]
        pub listen: Vec<SocketAddr>,
        ..group_settings,
        /// Milliseconds (0..=[`MAX_BLOCKED_AFTER_MS`]) after which a worker with connections in flight
        /// and no progress (no completion, no first connection) counts as blocked, and least-loaded
        /// and p2c pass it over while another worker is not; 0 (the default) turns the check off.
        /// Under speed-aware it replaces the adaptive limit, which 0 keeps.
        #[serde(default, deserialize_with = "crate::de::de_blocked_after_ms")]
        pub blocked_after_ms: u32,
        /// The registration socket. `None` in the file means `<shim_socket_dir>/<name>.sock`;
        /// [`Config::parse`] fills it in, so it is always `Some` in a parsed config
        /// (use [`Service::shim_socket`]).
        #[serde(default, deserialize_with = "crate::de::de_opt_abs_path")]
        pub shim_socket: Option<PathBuf>,
        /// Network namespace of the listen addresses (a path such as `/var/run/netns/pod1` or
        /// `/proc/PID/ns/net`); `None`: the daemon's own.
        #[serde(default, deserialize_with = "crate::de::de_opt_abs_path")]
        pub netns: Option<PathBuf>,
    }
}

pub(crate) fn default_shim_socket_dir() -> PathBuf {
    PathBuf::from(DEFAULT_SHIM_SOCKET_DIR)
}

pub(crate) fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}

impl Service {
    /// The registration socket. [`Config::parse`] fills in the default; for a config built in
    /// code, call [`Config::fill_defaults`] first (until then this is an empty path).
    pub fn shim_socket(&self) -> &Path {
        self.shim_socket.as_deref().unwrap_or(Path::new(""))
    }
}
