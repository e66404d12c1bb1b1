//! What registrations must satisfy, as the caller set it: allowed uids, `max_workers` of a listed
//! service, the default weight. Changed by a configuration reload ([`super::Registry`]'s setters),
//! read by admission and applied to registered workers by the loop.
//!
//! Invariants: `max_workers` is within `1..=MAX_SLOTS`; `default_weight` within
//! `1..=`[`MAX_DEFAULT_WEIGHT`]; `allowed_uids` is never empty (the controller's own uid when
//! none is given); `generation` grows at every change, so the loop applies a change once.
use balancer_common::MAX_SLOTS;

/// The largest weight a *worker* may ask for at registration (`Register::weight`, a value the
/// worker chooses and nobody checked); a worker asking more gets this, a log line and a count.
pub const MAX_ASKED_WEIGHT: u32 = 1024;

/// The largest default weight the *operator* may give a service or template (the weight of a
/// worker that asks for none): the configuration's accepted range, `balancer_config::MAX_WEIGHT`.
pub const MAX_DEFAULT_WEIGHT: u32 = balancer_config::MAX_WEIGHT;

#[derive(Clone, Debug)]
pub(super) struct Settings {
    allowed_uids: Vec<u32>,
    any_uid: bool,
    max_workers: u32,
    default_weight: u32,
    generation: u64,
}

impl Settings {
    pub(super) fn new(allowed_uids: &[u32], any_uid: bool, max_workers: u32, weight: u32) -> Self {
        let mut s = Self {
            allowed_uids: allowed_or_own(allowed_uids),
            any_uid,
            max_workers: 0,
            default_weight: 0,
            generation: 0,
        };
        s.set_max_workers(max_workers);
        s.set_default_weight(weight);
        s.generation = 0;
        s
    }

    /// Root may always register; then anyone (`any_uid`) or the listed uids.
    pub(super) fn allows(&self, uid: u32) -> bool {
        uid == 0 || self.any_uid || self.allowed_uids.contains(&uid)
    }

    pub(super) fn max_workers(&self) -> u32 {
        self.max_workers
    }

    pub(super) fn default_weight(&self) -> u32 {
        self.default_weight
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Who may connect at all: these uids too (a pod template's), besides the configured ones.
    pub(super) fn also_allow(&mut self, uids: &[u32]) {
        self.allowed_uids.extend(allowed_or_own(uids));
        self.allowed_uids.sort_unstable();
        self.allowed_uids.dedup();
    }

    pub(super) fn set_allowed_uids(&mut self, uids: &[u32]) {
        self.allowed_uids = allowed_or_own(uids);
        self.generation += 1;
    }

    pub(super) fn set_max_workers(&mut self, max: u32) {
        self.max_workers = max.clamp(1, MAX_SLOTS);
        self.generation += 1;
    }

    pub(super) fn set_default_weight(&mut self, weight: u32) {
        self.default_weight = weight.clamp(1, MAX_DEFAULT_WEIGHT);
        self.generation += 1;
    }
}

/// `uids`, or the controller's own uid when empty.
fn allowed_or_own(uids: &[u32]) -> Vec<u32> {
    if uids.is_empty() {
        vec![rustix::process::geteuid().as_raw()]
    } else {
        uids.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_weight_keeps_the_configured_range() {
        // The operator's range (the configuration accepts up to 65535), not a worker's ask.
        let s = Settings::new(&[], false, 4, 2000);
        assert_eq!(s.default_weight(), 2000);
        assert_eq!(Settings::new(&[], false, 4, u32::MAX).default_weight(), MAX_DEFAULT_WEIGHT);
        assert_eq!(Settings::new(&[], false, 4, 0).default_weight(), 1);
    }

    #[test]
    fn uids_and_limits() {
        let s = Settings::new(&[1000], false, 0, 1);
        assert!(s.allows(0) && s.allows(1000) && !s.allows(1001));
        assert!(Settings::new(&[1000], true, 0, 1).allows(1001));
        assert_eq!(s.max_workers(), 1);
        assert_eq!(Settings::new(&[], false, u32::MAX, 1).max_workers(), MAX_SLOTS);
    }
}
