//! Giving freed memory back to the system.
//!
//! mimalloc keeps the pages a thread frees in that thread's heap, and returns free arena
//! memory to the system (purges it) only when a thread calls into it after a delay. A
//! gateway's threads go quiet after a burst, so without help the burst's memory stays
//! resident until the next one: 84 MiB instead of 34 MiB, 20 s after 1024 clients left
//! (bench/README.md, "Resident memory"). Two things help: a worker about to park collects its
//! own heap (at most every [`PARK_COLLECT_EVERY`]), and a thread wakes every [`PURGE_EVERY`]
//! to purge what has waited out the delay, whichever thread freed it.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Least time between two collections of one worker's heap when it parks.
const PARK_COLLECT_EVERY: Duration = Duration::from_millis(250);
/// How often free memory that has waited out mimalloc's purge delay is returned.
const PURGE_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Tokio's `on_thread_park` hook (the serving threads' and the main runtime's): collect this
/// thread's heap unless it did lately.
pub fn on_park() {
    let now = Instant::now();
    LAST_COLLECT.with(|last| {
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= PARK_COLLECT_EVERY)
        {
            last.set(Some(now));
            // SAFETY: mi_collect only releases memory mimalloc holds as free.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
}

/// Start the thread that purges free memory program-wide, for the life of the process.
pub fn start_purger() {
    let started = std::thread::Builder::new()
        .name("wasmgate-memory".into())
        .spawn(|| {
            loop {
                std::thread::sleep(PURGE_EVERY);
                // SAFETY: as above.
                unsafe { libmimalloc_sys::mi_collect(false) };
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the memory thread; free memory is returned later");
    }
}
