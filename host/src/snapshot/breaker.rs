//! A circuit breaker per binding: a filter that keeps failing on a route is not run again for
//! a while; its requests get its failure policy at once, without spending CPU on it, so it
//! cannot slow other routes down.
//!
//! A request's use of a binding counts once, as failed if any of its phase calls failed, and
//! is reported when its last call is done. A [`Ticket`] carries that report from the request
//! phase to the response phase; a ticket dropped unreported (the request ended before the
//! filter's response phase could run: an upstream error, another filter's failure) counts
//! nothing, and a probe that ends that way lets the next request probe instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failed requests that open the breaker.
pub const TRIP_AFTER: u32 = 5;
/// Consecutive failed requests that open the breaker when each ran a call to its deadline or
/// its memory cap: each of those cost a worker many milliseconds, not microseconds.
pub const TRIP_AFTER_COSTLY: u32 = 2;
/// How long an open breaker fails requests before letting one probe through; each probe that
/// fails doubles it, up to [`MAX_COOL_DOWN`], so that a filter that stays broken (one that
/// loops to its deadline on every request) gets less and less of the workers' time.
pub const COOL_DOWN: Duration = Duration::from_secs(1);
/// The longest cool-down.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    consecutive: u32,
    /// Of those, the last ones in a row that were costly.
    costly: u32,
    open_until: Option<Instant>,
    /// The cool-down the next opening lasts.
    cool_down: Option<Duration>,
    probing: bool,
}

/// One request's admission through a breaker; report it with [`Ticket::report`].
#[must_use = "an unreported ticket counts nothing"]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open: the filter is not run (cooling down, or one probe under way).
    pub fn is_open(&self) -> bool {
        self.state().open_until.is_some()
    }

    /// A ticket when the filter may run now. While open, none; after the cool-down, exactly
    /// one (the probe) until it is reported or dropped.
    pub fn admit(&self) -> Option<Ticket<'_>> {
        let mut s = self.state();
        let probe = match s.open_until {
            None => false,
            Some(until) if Instant::now() < until => return None,
            Some(_) if s.probing => return None,
            Some(_) => {
                s.probing = true;
                true
            }
        };
        Some(Ticket {
            breaker: self,
            probe,
            reported: false,
        })
    }
}

/// How a request's use of a binding went, as its breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Failed at a call's deadline or memory cap.
    FailedCostly,
}

impl Ticket<'_> {
    /// Report the request's outcome; when this failure opened the breaker, for how long.
    pub fn report(mut self, outcome: Outcome) -> Option<Duration> {
        self.reported = true;
        let mut s = self.breaker.state();
        if self.probe {
            s.probing = false;
        }
        if outcome == Outcome::Passed {
            s.consecutive = 0;
            s.costly = 0;
            s.open_until = None;
            s.cool_down = None;
            return None;
        }
        s.consecutive += 1;
        s.costly = match outcome {
            Outcome::FailedCostly => s.costly + 1,
            _ => 0,
        };
        let tripped = s.consecutive >= TRIP_AFTER || s.costly >= TRIP_AFTER_COSTLY;
        if !tripped || (s.open_until.is_some() && !self.probe) {
            // Not yet; or a request admitted before the breaker opened, ending now.
            return None;
        }
        let cool_down = s.cool_down.unwrap_or(COOL_DOWN);
        s.cool_down = Some((cool_down * 2).min(MAX_COOL_DOWN));
        let was_closed = s.open_until.is_none();
        s.open_until = Some(Instant::now() + cool_down);
        was_closed.then_some(cool_down)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.state().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_cool_down() {
        let b = Breaker::default();
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.admit().unwrap().report(Outcome::Failed), None);
        }
        assert_eq!(
            b.admit().unwrap().report(Outcome::Failed),
            Some(COOL_DOWN),
            "the fifth failure opens it"
        );
        assert!(b.admit().is_none());
        b.state().open_until = Some(Instant::now());
        let probe = b.admit().expect("one probe after the cool-down");
        assert!(b.admit().is_none(), "only one");
        probe.report(Outcome::Passed);
        assert!(b.admit().is_some(), "a good probe closes it");
    }

    /// Each failed probe doubles the cool-down, up to the longest; a good probe starts over.
    #[test]
    fn failed_probes_double_the_cool_down() {
        let b = Breaker::default();
        for _ in 0..TRIP_AFTER {
            let _ = b.admit().unwrap().report(Outcome::Failed);
        }
        let mut expected = COOL_DOWN;
        for _ in 0..8 {
            let opened = b.state().open_until.expect("open");
            b.state().open_until = Some(Instant::now());
            let probe = b.admit().expect("a probe");
            let before = Instant::now();
            assert_eq!(probe.report(Outcome::Failed), None, "it was open already");
            expected = (expected * 2).min(MAX_COOL_DOWN);
            let until = b.state().open_until.expect("open again");
            assert!(until >= before + expected, "{expected:?}");
            assert!(until <= Instant::now() + expected, "{expected:?}");
            assert!(opened <= until);
        }
        assert_eq!(expected, MAX_COOL_DOWN);
        b.state().open_until = Some(Instant::now());
        b.admit().expect("a probe").report(Outcome::Passed);
        for _ in 0..TRIP_AFTER - 1 {
            let _ = b.admit().unwrap().report(Outcome::Failed);
        }
        assert_eq!(b.admit().unwrap().report(Outcome::Failed), Some(COOL_DOWN));
    }

    /// Calls cut at their deadline or memory cap open it after two in a row; a cheap failure
    /// between them starts that count over (the five-in-a-row count goes on).
    #[test]
    fn costly_failures_open_it_sooner() {
        let b = Breaker::default();
        assert_eq!(b.admit().unwrap().report(Outcome::FailedCostly), None);
        assert_eq!(b.admit().unwrap().report(Outcome::Failed), None);
        assert_eq!(b.admit().unwrap().report(Outcome::FailedCostly), None);
        assert_eq!(
            b.admit().unwrap().report(Outcome::FailedCostly),
            Some(COOL_DOWN),
            "two costly failures in a row"
        );
        b.state().open_until = Some(Instant::now());
        b.admit().unwrap().report(Outcome::Passed);
        assert_eq!(b.admit().unwrap().report(Outcome::FailedCostly), None);
        assert_eq!(b.admit().unwrap().report(Outcome::Passed), None);
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.admit().unwrap().report(Outcome::Failed), None);
        }
        assert_eq!(
            b.admit().unwrap().report(Outcome::FailedCostly),
            Some(COOL_DOWN),
            "the fifth failure in a row, whatever its kind"
        );
    }

    #[test]
    fn an_unreported_probe_lets_the_next_request_probe() {
        let b = Breaker::default();
        for _ in 0..TRIP_AFTER {
            b.admit().unwrap().report(Outcome::Failed);
        }
        b.state().open_until = Some(Instant::now());
        drop(b.admit().expect("a probe"));
        assert!(
            b.admit().is_some(),
            "the dropped probe did not wedge the breaker"
        );
    }
}
