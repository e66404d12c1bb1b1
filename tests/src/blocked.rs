//! The load-awareness scene's set-up and count, shared by every test that runs it (registered
//! apps, pods, `reuselb run` rows, the README's claims): long requests until two distinct workers
//! hold one ([`block_two`]), a measuring window that ends inside their block
//! ([`Blocked::window`]), and where the short requests sent in it went ([`Blocked::share`]).
//!
//! Invariant: the window ends at least its margin before the first long request can end, however
//! long the set-up took (a long request that lands on a worker blocked already costs a wait); a
//! set-up so slow that less than a third of the wanted window is left panics with what it took.
use std::{
    collections::HashSet,
    net::SocketAddr,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::apps::{one_request, wait_until, LoadReport};

/// Long requests sent at most, to block two distinct workers (under the hash policy one may land
/// on a worker blocked already).
const MAX_LONG_REQUESTS: usize = 8;

/// Two (or more) workers held by a long request each, until [`Blocked::end`].
pub struct Blocked {
    /// The workers seen busy when the set-up ended.
    pub pids: HashSet<u32>,
    /// The first long request's send; no block ends before `started + block`.
    started: Instant,
    block: Duration,
    setup: Duration,
    long_requests: Vec<JoinHandle<Result<u32, String>>>,
}

/// Sends `long_request` (one that holds its worker for `block`) to `entry`, one at a time, until
/// `busy` names two distinct workers, waiting up to `poll` for each to show; at most
/// [`MAX_LONG_REQUESTS`]. Panics if two workers could not be blocked. Threads started here live in
/// the caller's network namespace.
pub fn block_two(
    entry: SocketAddr,
    long_request: &str,
    block: Duration,
    poll: Duration,
    busy: impl Fn() -> HashSet<u32>,
) -> Blocked {
    let started = Instant::now();
    let mut long_requests = Vec::new();
    let mut pids = HashSet::new();
    while pids.len() < 2 && long_requests.len() < MAX_LONG_REQUESTS {
        let request = long_request.to_string();
        long_requests.push(std::thread::spawn(move || one_request(entry, &request)));
        wait_until(poll, || busy().len() > pids.len());
        pids = busy();
    }
    assert!(
        pids.len() >= 2,
        "could not block two workers with {} long requests: busy {pids:?}",
        long_requests.len()
    );
    Blocked { pids, started, block, setup: started.elapsed(), long_requests }
}

impl Blocked {
    /// `want`, or less: what ends `margin` before the first long request can. Panics if that is
    /// under a third of `want` (the set-up took too long to measure inside the block).
    pub fn window(&self, want: Duration, margin: Duration) -> Duration {
        let left = self.block.saturating_sub(self.started.elapsed() + margin);
        let window = want.min(left);
        assert!(
            window >= want / 3,
            "blocking two workers took {:?} ({} long requests): only {window:?} of the {want:?} \
             window is left inside the block",
            self.setup,
            self.long_requests.len()
        );
        window
    }

    /// Where the short requests of `report` went: a failed one waited past the client's timeout
    /// behind a block, so it counts as sent to a blocked worker.
    pub fn share(&self, report: &LoadReport) -> BlockedShare {
        let answered: u64 =
            report.by_pid.iter().filter(|(pid, _)| self.pids.contains(pid)).map(|(_, n)| n).sum();
        BlockedShare { to_blocked: answered + report.failed, total: report.ok + report.failed }
    }

    /// Waits for the long requests to end.
    pub fn end(self) {
        for request in self.long_requests {
            let _ = request.join();
        }
    }
}

/// What the short requests of one scene met.
#[derive(Clone, Copy, Debug)]
pub struct BlockedShare {
    /// Short requests answered by a blocked worker, plus those that failed (they waited past the
    /// client's timeout behind a block).
    pub to_blocked: u64,
    /// Short requests sent.
    pub total: u64,
}

impl BlockedShare {
    pub fn share(&self) -> f64 {
        self.to_blocked as f64 / self.total.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scene whose first long request was sent `ago`, and that holds its worker for `block`.
    fn sent(ago: Duration, block: Duration) -> Blocked {
        let started = Instant::now() - ago;
        Blocked { pids: HashSet::from([1, 2]), started, block, setup: ago, long_requests: vec![] }
    }

    #[test]
    fn a_quick_set_up_gets_the_whole_window() {
        let blocked = sent(Duration::from_millis(100), Duration::from_secs(6));
        assert_eq!(
            blocked.window(Duration::from_millis(2500), Duration::from_secs(1)),
            Duration::from_millis(2500)
        );
    }

    /// The CI failure of stop 28: a set-up of 2.63 s left 2.37 s of a 6 s block with a 1 s
    /// margin, and the old check refused it; the window now ends inside the block instead.
    #[test]
    fn a_slow_set_up_shortens_the_window_to_end_inside_the_block() {
        let blocked = sent(Duration::from_millis(2630), Duration::from_secs(6));
        let window = blocked.window(Duration::from_millis(2500), Duration::from_secs(1));
        assert!(
            window < Duration::from_millis(2370) && window > Duration::from_millis(2200),
            "{window:?}"
        );
    }

    #[test]
    #[should_panic(expected = "window is left inside the block")]
    fn a_set_up_that_leaves_under_a_third_of_the_window_panics() {
        let blocked = sent(Duration::from_millis(4200), Duration::from_secs(6));
        blocked.window(Duration::from_millis(2500), Duration::from_secs(1));
    }
}
