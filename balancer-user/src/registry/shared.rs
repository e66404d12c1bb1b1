//! What the caller's side ([`super::Registry`]) and the registry thread share: the groups, the
//! counters, the settings, the stop request and the heartbeat.
//!
//! Invariants: every field is behind an atomic or a lock held briefly, so the caller never waits
//! on the loop; the heartbeat counts milliseconds since the registry started, and only the loop
//! beats it.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use super::{closer, counters::Counters, services::Services, settings::Settings};

/// What the registry does with its slots when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// Free every slot.
    Free,
    /// Leave every slot as it is (the program keeps balancing the workers, with the counts their
    /// shims keep making, and the next controller adopts the pinned group).
    KeepSlots,
    /// Free every slot and detach the program from the services' reuseport groups (a service
    /// removed).
    Detach,
}

pub(super) struct Shared {
    services: Services,
    counters: Counters,
    stop: AtomicBool,
    how: Mutex<Stop>,
    settings: Mutex<Settings>,
    /// When the registry started; the heartbeat counts from here.
    started: Instant,
    /// Milliseconds since `started` at the loop's last turn.
    heartbeat_ms: AtomicU64,
    /// What the closer threads are doing (stuck or not).
    closer: Arc<closer::Health>,
}

impl Shared {
    pub(super) fn new(services: Services, settings: Settings) -> Self {
        Self {
            services,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            how: Mutex::new(Stop::Free),
            settings: Mutex::new(settings),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            closer: Arc::new(closer::Health::new()),
        }
    }

    pub(super) fn services(&self) -> &Services {
        &self.services
    }

    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(super) fn closer_health(&self) -> &Arc<closer::Health> {
        &self.closer
    }

    pub(super) fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the loop to stop, doing `how` with the slots.
    pub(super) fn request_stop(&self, how: Stop) {
        *self.how.lock().unwrap_or_else(|e| e.into_inner()) = how;
        self.stop.store(true, Ordering::Release);
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// What to do with the slots at stop.
    pub(super) fn stop_how(&self) -> Stop {
        *self.how.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Release);
    }

    pub(super) fn since_last_beat(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Acquire)))
    }
}
