//! The settings every balanced group takes, whether a listed service or a pods template gives
//! them: `policy`, `mode`, `weight`, `max_workers`, `pack_depth` and `allowed_uids`. They are
//! declared once, by [`with_group_settings!`], with their defaults and their per-value checks
//! (in [`crate::de`]), and range-checked once, by [`check`], for configs built in code.
//!
//! A macro and not a flattened struct: serde's `flatten` does not work with
//! `deny_unknown_fields`, and every struct of the file refuses unknown fields.
use balancer_common::MAX_SLOTS;

use crate::{MAX_PACK_DEPTH, MAX_WEIGHT};

/// Declares `pub struct $name` with its own fields before and after the shared group settings
/// (written `..group_settings,` in the field list; the order is the order serde names the fields
/// in), and its methods over them: `allowed_uids_or`, and `check_settings` (see [`check`]).
macro_rules! with_group_settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$hmeta:meta])* pub $head:ident : $hty:ty, )*
            ..group_settings,
            $( $(#[$tmeta:meta])* pub $tail:ident : $tty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$hmeta])* pub $head: $hty, )*
            /// How a new connection picks its worker (default `speed-aware`).
            #[serde(default, deserialize_with = "crate::de::de_policy")]
            pub policy: ::balancer_common::Policy,
            /// Which program runs: `auto` (select-or-migrate where the kernel has it), `select`,
            /// `select-or-migrate`.
            #[serde(default, deserialize_with = "crate::de::de_mode")]
            pub mode: crate::Mode,
            /// Weight of a worker that registers without asking for one
            /// (1..=[`crate::MAX_WEIGHT`]).
            #[serde(
                default = "crate::settings::default_weight",
                deserialize_with = "crate::de::de_weight"
            )]
            pub weight: u32,
            /// Most workers registered at once in one group
            /// (1..=[`balancer_common::MAX_SLOTS`]).
            #[serde(
                default = "crate::settings::default_max_workers",
                deserialize_with = "crate::de::de_max_workers"
            )]
            pub max_workers: u32,
            /// The pack policy's depth (0..=[`crate::MAX_PACK_DEPTH`]): connections in flight
            /// per unit of weight that fill a worker before the next one gets new connections;
            /// 0 (the default) counts as 1. Read only while the policy is `pack`.
            #[serde(default, deserialize_with = "crate::de::de_pack_depth")]
            pub pack_depth: u32,
            /// Uids whose workers may register into these groups; `None`: only the daemon's own
            /// uid (see `allowed_uids_or`).
            #[serde(default, deserialize_with = "crate::de::de_opt_uids")]
            pub allowed_uids: Option<Vec<u32>>,
            $( $(#[$tmeta])* pub $tail: $tty, )*
        }

        impl $name {
            /// The allowed uids, or `[own_uid]` when the file gives none.
            pub fn allowed_uids_or(&self, own_uid: u32) -> Vec<u32> {
                self.allowed_uids.clone().unwrap_or_else(|| vec![own_uid])
            }

            /// The range checks of the group settings: the field at fault and the message.
            pub(crate) fn check_settings(&self) -> Result<(), (&'static str, String)> {
                crate::settings::check(
                    self.max_workers,
                    self.weight,
                    self.pack_depth,
                    self.allowed_uids.as_deref(),
                )
            }
        }
    };
}
pub(crate) use with_group_settings;

pub(crate) fn default_weight() -> u32 {
    1
}

pub(crate) fn default_max_workers() -> u32 {
    MAX_SLOTS
}

/// The range checks of the group settings, the same for a service and a template. A parsed file
/// had its values checked one by one already (with positions); a config built in code is checked
/// here.
pub(crate) fn check(
    max_workers: u32,
    weight: u32,
    pack_depth: u32,
    allowed_uids: Option<&[u32]>,
) -> Result<(), (&'static str, String)> {
    if !(1..=MAX_SLOTS).contains(&max_workers) {
        return Err((
            "max_workers",
            format!("max_workers must be 1..={MAX_SLOTS}, got {max_workers}"),
        ));
    }
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(("weight", format!("weight must be 1..={MAX_WEIGHT}, got {weight}")));
    }
    if pack_depth > MAX_PACK_DEPTH {
        return Err((
            "pack_depth",
            format!("pack_depth must be 0..={MAX_PACK_DEPTH}, got {pack_depth}"),
        ));
    }
    if allowed_uids.is_some_and(|u| u.is_empty()) {
        return Err((
            "allowed_uids",
            "allowed_uids is empty, so no worker could register: expected at least one uid, or \
             omit it to allow the daemon's own uid"
                .to_owned(),
        ));
    }
    Ok(())
}
