//! The `pods:` section: groups made on registration, for workers nobody lists (the pods of a
//! Kubernetes node).
//!
//! A worker that registers on the pods socket joins the group of (the network namespace of the
//! socket it hands over, the address that socket is bound to, its template); the first worker of
//! such a key makes the group. Which settings the group gets is its template's: the one the
//! worker names (`REUSELB_TEMPLATE`), or `default_template`. Nothing here names a pod.
//!
//! Invariants of a parsed section: at least one template, unique template names, the default
//! template among them, a socket path of its own (no service has it).
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{de::RangedV, locate::Seg, settings::with_group_settings};

/// Default of `pods.max_groups`.
pub const DEFAULT_MAX_GROUPS: u32 = 64;
/// Highest `pods.max_groups`.
pub const MAX_GROUPS: u32 = 1024;
/// Default of `pods.max_groups_per_pod`.
pub const DEFAULT_MAX_GROUPS_PER_POD: u32 = 8;
/// Default of `pods.max_workers_per_pod`.
pub const DEFAULT_MAX_WORKERS_PER_POD: u32 = 256;
/// Highest `pods.max_workers_per_pod` (every slot of [`MAX_GROUPS`] groups).
pub const MAX_WORKERS_PER_POD: u32 = 65_536;
/// Default of `pods.removal_grace_ms`.
pub const DEFAULT_REMOVAL_GRACE_MS: u32 = 5000;
/// Highest `pods.removal_grace_ms` (10 minutes).
pub const MAX_REMOVAL_GRACE_MS: u32 = 600_000;
/// Default of `pods.default_template`.
pub const DEFAULT_TEMPLATE: &str = "default";

/// Groups made on registration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pods {
    /// The registration socket of every pod; `None` in the file means
    /// `<shim_socket_dir>/pods.sock` ([`crate::Config::parse`] fills it in).
    #[serde(default, deserialize_with = "crate::de::de_opt_abs_path")]
    pub shim_socket: Option<PathBuf>,
    /// Most groups at once (1..=[`MAX_GROUPS`]); a worker that would make one more is refused
    /// (`no_free_slot`) and serves on the kernel's hash.
    #[serde(default = "default_max_groups", deserialize_with = "de_max_groups")]
    pub max_groups: u32,
    /// Most groups of one pod (one network namespace) at once, groups being made included
    /// (1..=[`MAX_GROUPS`]); a worker that would make one more is refused (`pod_limit`).
    #[serde(default = "default_max_groups_per_pod", deserialize_with = "de_max_groups_per_pod")]
    pub max_groups_per_pod: u32,
    /// Most workers of one pod (one network namespace) over all its groups, registrations
    /// waiting for a group being made included (1..=[`MAX_WORKERS_PER_POD`]); a worker beyond
    /// it is refused (`pod_limit`).
    #[serde(default = "default_max_workers_per_pod", deserialize_with = "de_max_workers_per_pod")]
    pub max_workers_per_pod: u32,
    /// How long a group with no worker left is kept (its last socket listening, its pins) for a
    /// worker to come back before it is removed (0..=[`MAX_REMOVAL_GRACE_MS`]).
    #[serde(default = "default_removal_grace", deserialize_with = "de_removal_grace")]
    pub removal_grace_ms: u32,
    /// The template of a worker that names none.
    #[serde(default = "default_template", deserialize_with = "crate::de::de_name")]
    pub default_template: String,
    /// At least one.
    pub templates: Vec<Template>,
}

with_group_settings! {
    /// Settings of the groups of the pods that name it.
    #[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Template {
        /// `[a-z0-9_-]{1,32}`, unique among the templates.
        #[serde(deserialize_with = "crate::de::de_name")]
        pub name: String,
        ..group_settings,
    }
}

fn default_max_groups() -> u32 {
    DEFAULT_MAX_GROUPS
}
fn default_max_groups_per_pod() -> u32 {
    DEFAULT_MAX_GROUPS_PER_POD
}
fn default_max_workers_per_pod() -> u32 {
    DEFAULT_MAX_WORKERS_PER_POD
}
fn default_removal_grace() -> u32 {
    DEFAULT_REMOVAL_GRACE_MS
}
fn default_template() -> String {
    DEFAULT_TEMPLATE.to_owned()
}

fn de_max_groups<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::DeserializeSeed;
    RangedV { field: "max_groups", expected: "an integer", min: 1, max: MAX_GROUPS as u64 }
        .deserialize(d)
}

fn de_max_groups_per_pod<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::DeserializeSeed;
    RangedV { field: "max_groups_per_pod", expected: "an integer", min: 1, max: MAX_GROUPS as u64 }
        .deserialize(d)
}

fn de_max_workers_per_pod<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::DeserializeSeed;
    RangedV {
        field: "max_workers_per_pod",
        expected: "an integer",
        min: 1,
        max: MAX_WORKERS_PER_POD as u64,
    }
    .deserialize(d)
}

fn de_removal_grace<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::DeserializeSeed;
    RangedV {
        field: "removal_grace_ms",
        expected: "milliseconds",
        min: 0,
        max: MAX_REMOVAL_GRACE_MS as u64,
    }
    .deserialize(d)
}

impl Pods {
    /// The registration socket (filled in by [`crate::Config::parse`]; empty until then).
    pub fn shim_socket(&self) -> &Path {
        self.shim_socket.as_deref().unwrap_or(Path::new(""))
    }

    /// The template called `name`.
    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// The checks across values, as (path, message).
    pub(crate) fn check(&self) -> Result<(), (Vec<Seg>, String)> {
        let at = |i: usize, field: &'static str| {
            vec![Seg::Key("pods"), Seg::Key("templates"), Seg::Index(i), Seg::Key(field)]
        };
        if self.templates.is_empty() {
            return Err((
                vec![Seg::Key("pods"), Seg::Key("templates")],
                "no templates: expected at least one (the default template's settings)".to_owned(),
            ));
        }
        for (i, t) in self.templates.iter().enumerate() {
            if let Some(first) = self.templates[..i].iter().position(|o| o.name == t.name) {
                return Err((
                    at(i, "name"),
                    format!(
                        "duplicate template name `{}`: pods.templates[{first}] has it already; \
                         expected unique names",
                        t.name
                    ),
                ));
            }
            t.check_settings().map_err(|(field, message)| (at(i, field), message))?;
        }
        if self.template(&self.default_template).is_none() {
            let names: Vec<&str> = self.templates.iter().map(|t| t.name.as_str()).collect();
            return Err((
                vec![Seg::Key("pods"), Seg::Key("default_template")],
                format!(
                    "default_template `{}` is not a template: expected one of {}",
                    self.default_template,
                    names.join(", ")
                ),
            ));
        }
        if !(1..=MAX_GROUPS).contains(&self.max_groups) {
            return Err((
                vec![Seg::Key("pods"), Seg::Key("max_groups")],
                format!("max_groups must be 1..={MAX_GROUPS}, got {}", self.max_groups),
            ));
        }
        if !(1..=MAX_GROUPS).contains(&self.max_groups_per_pod) {
            return Err((
                vec![Seg::Key("pods"), Seg::Key("max_groups_per_pod")],
                format!(
                    "max_groups_per_pod must be 1..={MAX_GROUPS}, got {}",
                    self.max_groups_per_pod
                ),
            ));
        }
        if !(1..=MAX_WORKERS_PER_POD).contains(&self.max_workers_per_pod) {
            return Err((
                vec![Seg::Key("pods"), Seg::Key("max_workers_per_pod")],
                format!(
                    "max_workers_per_pod must be 1..={MAX_WORKERS_PER_POD}, got {}",
                    self.max_workers_per_pod
                ),
            ));
        }
        if self.removal_grace_ms > MAX_REMOVAL_GRACE_MS {
            return Err((
                vec![Seg::Key("pods"), Seg::Key("removal_grace_ms")],
                format!(
                    "removal_grace_ms must be 0..={MAX_REMOVAL_GRACE_MS}, got {}",
                    self.removal_grace_ms
                ),
            ));
        }
        Ok(())
    }
}
