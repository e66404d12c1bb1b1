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

named_enum! {
    /// What a broken build breaks; the name is the one of `REUSELB_BROKEN`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Broken: u32 {
        /// Both programs return SK_PASS at once: the kernel's hash decides, nothing is counted.
        SkPass = 1 => "sk-pass",
        /// The programs ignore the load table: every connection goes to the next active slot in
        /// turn, whatever the policy (still counted, so the accounting looks right).
        IgnoreLoad = 2 => "ignore-load",
        /// The shim counts nothing (no accepted, no completed).
        NoCount = 3 => "no-count",
        /// The shim counts requests but never their answers (a connection is done only when it
        /// closes).
        NoAnswers = 4 => "no-answers",
        /// The controller never corrects a slot's in-flight count (reconciliation off).
        NoReconcile = 5 => "no-reconcile",
        /// The controller never recomputes the fast path's idle bytes.
        NoIdleRefresh = 6 => "no-idle-refresh",
        /// The select-or-migrate program refuses every migration (SK_DROP): the queue of a
        /// closing listener is reset, as with the select-only program.
        NoMigrate = 7 => "no-migrate",
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
