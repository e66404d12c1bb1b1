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

use balancer_common::{Policy, MAX_SLOTS};
use serde::Deserialize;

use super::{
    de_max_workers, de_mode, de_name, de_opt_abs_path, de_opt_uids, de_pack_depth, de_policy,
    de_weight, default_max_workers, default_weight, Mode, RangedV, Seg, MAX_PACK_DEPTH, MAX_WEIGHT,
};

/// Default of `pods.max_groups`.
pub const DEFAULT_MAX_GROUPS: u32 = 64;
/// Highest `pods.max_groups`.
pub const MAX_GROUPS: u32 = 1024;
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
    #[serde(default, deserialize_with = "de_opt_abs_path")]
    pub shim_socket: Option<PathBuf>,
    /// Most groups at once (1..=[`MAX_GROUPS`]); a worker that would make one more is refused
    /// (`no_free_slot`) and serves on the kernel's hash.
    #[serde(default = "default_max_groups", deserialize_with = "de_max_groups")]
    pub max_groups: u32,
    /// How long a group with no worker left is kept (its last socket listening, its pins) for a
    /// worker to come back before it is removed (0..=[`MAX_REMOVAL_GRACE_MS`]).
    #[serde(default = "default_removal_grace", deserialize_with = "de_removal_grace")]
    pub removal_grace_ms: u32,
    /// The template of a worker that names none.
    #[serde(default = "default_template", deserialize_with = "de_name")]
    pub default_template: String,
    /// At least one.
    pub templates: Vec<Template>,
}

/// Settings of the groups of the pods that name it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// `[a-z0-9_-]{1,32}`, unique among the templates.
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    #[serde(default, deserialize_with = "de_policy")]
    pub policy: Policy,
    #[serde(default, deserialize_with = "de_mode")]
    pub mode: Mode,
    /// Weight of a worker that asks for none (1..=[`MAX_WEIGHT`]).
    #[serde(default = "default_weight", deserialize_with = "de_weight")]
    pub weight: u32,
    /// Most workers per group (1..=[`MAX_SLOTS`]).
    #[serde(default = "default_max_workers", deserialize_with = "de_max_workers")]
    pub max_workers: u32,
    /// The pack policy's depth, as in a service's `pack_depth` (0..=[`MAX_PACK_DEPTH`]; 0
    /// counts as 1).
    #[serde(default, deserialize_with = "de_pack_depth")]
    pub pack_depth: u32,
    /// Uids whose workers may use this template; `None`: only the daemon's own uid.
    #[serde(default, deserialize_with = "de_opt_uids")]
    pub allowed_uids: Option<Vec<u32>>,
}

fn default_max_groups() -> u32 {
    DEFAULT_MAX_GROUPS
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
            if !(1..=MAX_SLOTS).contains(&t.max_workers) {
                return Err((
                    at(i, "max_workers"),
                    format!("max_workers must be 1..={MAX_SLOTS}, got {}", t.max_workers),
                ));
            }
            if !(1..=MAX_WEIGHT).contains(&t.weight) {
                return Err((
                    at(i, "weight"),
                    format!("weight must be 1..={MAX_WEIGHT}, got {}", t.weight),
                ));
            }
            if t.pack_depth > MAX_PACK_DEPTH {
                return Err((
                    at(i, "pack_depth"),
                    format!("pack_depth must be 0..={MAX_PACK_DEPTH}, got {}", t.pack_depth),
                ));
            }
            if t.allowed_uids.as_ref().is_some_and(|u| u.is_empty()) {
                return Err((
                    at(i, "allowed_uids"),
                    "allowed_uids is empty, so no worker could use this template: expected at \
                     least one uid, or omit it to allow the daemon's own uid"
                        .to_owned(),
                ));
            }
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

impl Template {
    /// The allowed uids, or `[own_uid]` when the file gives none.
    pub fn allowed_uids_or(&self, own_uid: u32) -> Vec<u32> {
        self.allowed_uids.clone().unwrap_or_else(|| vec![own_uid])
    }
}
