//! The deliberately broken builds of `cargo xtask prove`: what each one breaks, and its name.
//!
//! A build with the cargo feature `broken` (balancer-ebpf, balancer-user, balancer-shim; only
//! `cargo xtask prove` turns it on, in a target directory of its own) reads [`ENV_BROKEN`] and
//! breaks the one part it names; without that variable it behaves as the normal build. The normal
//! build (`cargo xtask build`, `cargo xtask test`, the image) has no such feature, never reads the
//! variable, and carries none of the broken code. One build serves every kind, so the proof pays
//! for one extra build, not one per kind.
//!
//! The names are the ones of `cargo xtask prove --broken` and of the claims table
//! (docs/CLAIMS.md).

/// The environment variable that names the part to break (one of [`Broken::ALL`]'s names).
pub const ENV_BROKEN: &str = "REUSELB_BROKEN";

/// The value the eBPF object's `BROKEN` global holds in a build with the feature `broken`.
pub const GLOBAL_BROKEN: &str = "BROKEN";

/// What a broken build breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Broken {
    /// Both programs return SK_PASS at once: the kernel's hash decides, nothing is counted.
    SkPass = 1,
    /// The programs ignore the load table: every connection goes to the next active slot in
    /// turn, whatever the policy (still counted, so the accounting looks right).
    IgnoreLoad = 2,
    /// The shim counts nothing (no accepted, no completed).
    NoCount = 3,
    /// The shim counts requests but never their answers (a connection is done only when it
    /// closes).
    NoAnswers = 4,
    /// The controller never corrects a slot's in-flight count (reconciliation off).
    NoReconcile = 5,
    /// The controller never recomputes the fast path's idle bytes.
    NoIdleRefresh = 6,
}

impl Broken {
    /// Every kind, in the order `cargo xtask prove` runs them.
    pub const ALL: [Broken; 6] = [
        Broken::SkPass,
        Broken::IgnoreLoad,
        Broken::NoCount,
        Broken::NoAnswers,
        Broken::NoReconcile,
        Broken::NoIdleRefresh,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Broken::SkPass => "sk-pass",
            Broken::IgnoreLoad => "ignore-load",
            Broken::NoCount => "no-count",
            Broken::NoAnswers => "no-answers",
            Broken::NoReconcile => "no-reconcile",
            Broken::NoIdleRefresh => "no-idle-refresh",
        }
    }

    /// The kind called `name`, if any.
    pub fn from_name(name: &str) -> Option<Broken> {
        Broken::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The kind with id `id` (the eBPF global's value), if any.
    pub fn from_id(id: u32) -> Option<Broken> {
        Broken::ALL.into_iter().find(|b| *b as u32 == id)
    }
}

#[cfg(test)]
mod tests {
    use super::Broken;

    #[test]
    fn names_and_ids_round_trip() {
        for b in Broken::ALL {
            assert_eq!(Broken::from_name(b.name()), Some(b));
            assert_eq!(Broken::from_id(b as u32), Some(b));
        }
        assert_eq!(Broken::from_name("sk_pass"), None);
        assert_eq!(Broken::from_id(0), None);
    }
}
