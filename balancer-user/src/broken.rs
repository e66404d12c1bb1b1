//! The part a deliberately broken build breaks (`cargo xtask prove`; see
//! `balancer_common::broken`). Without the cargo feature `broken` (every build but the proof's),
//! [`broken`] is always `None` and the environment is never read.
use balancer_common::broken::Broken;

/// The part to break, from `REUSELB_BROKEN`, read once. Always `None` without the feature
/// `broken`; a name that is no kind panics, so a mistyped proof cannot pass as a normal build.
pub fn broken() -> Option<Broken> {
    #[cfg(feature = "broken")]
    {
        use balancer_common::broken::ENV_BROKEN;
        static KIND: std::sync::OnceLock<Option<Broken>> = std::sync::OnceLock::new();
        *KIND.get_or_init(|| {
            let name = std::env::var(ENV_BROKEN).ok()?;
            let kind = Broken::from_name(&name)
                .unwrap_or_else(|| panic!("{ENV_BROKEN}={name}: no such broken build"));
            log::warn!("deliberately broken build: {} ({ENV_BROKEN})", kind.name());
            Some(kind)
        })
    }
    #[cfg(not(feature = "broken"))]
    {
        None
    }
}

/// Whether this build was asked to break `kind`.
pub fn is(kind: Broken) -> bool {
    broken() == Some(kind)
}
