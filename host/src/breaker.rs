//! A circuit breaker per route filter binding: a filter that keeps trapping or hitting its
//! limits is not run again for a while; its requests get its failure policy at once, without
//! spending CPU on it, so it cannot slow other routes down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 5;
/// How long an open breaker fails requests before letting one probe through.
pub const COOL_DOWN: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    consecutive: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    /// Whether the filter may run now. While open, answers false; after the cool-down, lets
    /// exactly one probe run until it reports.
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if s.probing => false,
            Some(_) => {
                s.probing = true;
                true
            }
        }
    }

    /// Report a run's outcome; returns true when this failure opened the breaker.
    pub fn report(&self, failed: bool) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.probing = false;
        if !failed {
            s.consecutive = 0;
            s.open_until = None;
            return false;
        }
        s.consecutive += 1;
        if s.consecutive >= TRIP_AFTER {
            let was_closed = s.open_until.is_none();
            s.open_until = Some(Instant::now() + COOL_DOWN);
            return was_closed;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_cool_down() {
        let b = Breaker::default();
        for _ in 0..TRIP_AFTER - 1 {
            assert!(b.allow());
            assert!(!b.report(true));
        }
        assert!(b.report(true), "the fifth failure opens it");
        assert!(!b.allow());
        b.state.lock().unwrap().open_until = Some(Instant::now());
        assert!(b.allow(), "one probe after the cool-down");
        assert!(!b.allow(), "only one");
        b.report(false);
        assert!(b.allow(), "a good probe closes it");
    }
}
