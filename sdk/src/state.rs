//! State this filter keeps across requests: counters in time windows, rate limits, and values
//! with a time to live.
//!
//! The gateway's `[state]` config decides where it lives: in the gateway process (shared by
//! its worker threads) or in Redis (shared by every gateway using the same server). Keys
//! belong to this filter: another filter using the same key string sees its own value. Every
//! call can fail (the store is down, the value is too large); a failure is an [`Error`], never
//! a trap, and this filter decides what to do: a rate limiter usually lets the request through.
//!
//! ```
//! use std::time::Duration;
//! use wasmgate_sdk::state;
//!
//! // At most 10 requests per second for this client, with no burst of 20 at a second's edge.
//! let verdict = state::throttle("client:10.0.0.1", 10, Duration::from_secs(1), 1)?;
//! assert!(verdict.allowed);
//! assert_eq!(verdict.remaining, 9);
//!
//! // A counter that starts again every minute.
//! let seen = state::incr("logins:ann", 1, Duration::from_secs(60))?;
//! assert_eq!(seen.value, 1);
//!
//! // A value that expires, and an update only if nobody changed it meanwhile.
//! state::set("greeting", b"hello", Some(Duration::from_secs(30)))?;
//! assert!(state::compare_and_set("greeting", Some(b"hello"), b"hi", None)?);
//! assert_eq!(state::get("greeting")?.as_deref(), Some(&b"hi"[..]));
//! # Ok::<(), state::Error>(())
//! ```
//!
//! Outside the gateway (native unit tests) the store is a per-thread map with the same
//! semantics, on the system clock.

use std::time::Duration;

use crate::__bindings::wasmgate::filter::state as wit;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Why a state call did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The store cannot be reached or did not answer in time.
    Unavailable(String),
    /// The key or value is larger than the limits, or the in-process store is full.
    TooLarge(String),
    /// The key holds something else (a counter used as a rate limit, ...).
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unavailable(why) => write!(f, "state unavailable: {why}"),
            Error::TooLarge(why) => write!(f, "state too large: {why}"),
            Error::Invalid(why) => write!(f, "state invalid: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::StateError> for Error {
    fn from(e: wit::StateError) -> Error {
        match e {
            wit::StateError::Unavailable(why) => Error::Unavailable(why),
            wit::StateError::TooLarge(why) => Error::TooLarge(why),
            wit::StateError::Invalid(why) => Error::Invalid(why),
        }
    }
}

/// A counter's value in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The count after this increment.
    pub value: u64,
    /// Time until the window ends and the count starts again from zero.
    pub reset: Duration,
}

/// The answer of [`throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// The request fits the limit (and was counted).
    pub allowed: bool,
    /// The limit, as given.
    pub limit: u32,
    /// Requests that would still be allowed right now.
    pub remaining: u32,
    /// When not allowed: time until this request would be.
    pub retry_after: Duration,
    /// Time until the limit is whole again.
    pub reset: Duration,
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Add `delta` to the counter `key` and return its new value. The counter lives for one
/// `window` from its first increment, then starts again from zero. Atomic across the
/// gateway's threads and, on Redis, across gateways.
pub fn incr(key: &str, delta: u64, window: Duration) -> Result<Counter, Error> {
    if cfg!(target_family = "wasm") {
        let c = wit::incr(key, delta, ms(window))?;
        Ok(Counter {
            value: c.value,
            reset: Duration::from_millis(c.reset_ms),
        })
    } else {
        native::incr(key, delta, window)
    }
}

/// Count `cost` requests against `limit` per `window` under `key`, with the generic cell rate
/// algorithm: up to `limit` at once, then one more every `window / limit`; no window boundary
/// lets twice the limit through. A request that does not fit is not counted.
pub fn throttle(key: &str, limit: u32, window: Duration, cost: u32) -> Result<Throttle, Error> {
    if cfg!(target_family = "wasm") {
        let t = wit::throttle(key, limit, ms(window), cost)?;
        Ok(Throttle {
            allowed: t.allowed,
            limit: t.limit,
            remaining: t.remaining,
            retry_after: Duration::from_millis(t.retry_after_ms),
            reset: Duration::from_millis(t.reset_ms),
        })
    } else {
        native::throttle(key, limit, window, cost)
    }
}

/// The value under `key`, if any and not expired. A counter reads as its decimal value.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    if cfg!(target_family = "wasm") {
        Ok(wit::get(key)?)
    } else {
        native::get(key)
    }
}

/// Store `value` under `key`, for `ttl` when given (else until deleted or evicted).
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
    if cfg!(target_family = "wasm") {
        Ok(wit::set(key, value, ttl.map(ms))?)
    } else {
        native::set(key, value, ttl)
    }
}

/// Remove `key`; whether it was there.
pub fn delete(key: &str) -> Result<bool, Error> {
    if cfg!(target_family = "wasm") {
        Ok(wit::delete(key)?)
    } else {
        native::delete(key)
    }
}

/// Store `value` under `key` only if it holds `expected` (`None`: only if absent); whether it
/// was stored. Atomic like [`incr`].
pub fn compare_and_set(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<bool, Error> {
    if cfg!(target_family = "wasm") {
        Ok(wit::compare_and_set(key, expected, value, ttl.map(ms))?)
    } else {
        native::compare_and_set(key, expected, value, ttl)
    }
}

/// Keep `data` (at most 4 KiB) from this request phase for this filter's response phase of the
/// same request, which reads it with [`kept`]; replaces what was kept before. The gateway
/// carries it, so it works when instances are reused (two phases may run on different
/// instances): the way to pass a request's verdict, say rate limit headers, to its response.
pub fn keep(data: &[u8]) {
    if cfg!(target_family = "wasm") {
        wit::keep(data);
    } else {
        native::KEPT.with(|k| *k.borrow_mut() = Some(data[..data.len().min(4096)].to_vec()));
    }
}

/// What this filter's request phase kept for the current request with [`keep`]. In native
/// tests, what the last [`keep`] on this thread kept.
pub fn kept() -> Option<Vec<u8>> {
    if cfg!(target_family = "wasm") {
        wit::kept()
    } else {
        native::KEPT.with(|k| k.borrow().clone())
    }
}

/// The per-thread store of native tests.
mod native {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::{Counter, Error, MAX_KEY_BYTES, Throttle};

    /// A value and when it expires.
    type Entry = (Vec<u8>, Option<Instant>);

    thread_local! {
        static STORE: RefCell<HashMap<String, Entry>> = RefCell::default();
        pub(super) static KEPT: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }

    fn with<R>(
        key: &str,
        f: impl FnOnce(&mut Option<Entry>, Instant) -> Result<R, Error>,
    ) -> Result<R, Error> {
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::TooLarge(format!("a key of {} bytes", key.len())));
        }
        let now = Instant::now();
        STORE.with(|store| {
            let mut store = store.borrow_mut();
            let mut entry = store
                .remove(key)
                .filter(|(_, expires)| expires.is_none_or(|at| at > now));
            let result = f(&mut entry, now);
            if let Some(entry) = entry {
                store.insert(key.to_string(), entry);
            }
            result
        })
    }

    fn number(value: &[u8]) -> Result<u64, Error> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Invalid("the key does not hold a number".into()))
    }

    pub fn incr(key: &str, delta: u64, window: Duration) -> Result<Counter, Error> {
        with(key, |entry, now| {
            let (value, expires) = match entry {
                Some((v, expires)) => (
                    number(v)?.saturating_add(delta),
                    expires.unwrap_or(now + window),
                ),
                None => (delta, now + window),
            };
            *entry = Some((value.to_string().into_bytes(), Some(expires)));
            Ok(Counter {
                value,
                reset: expires - now,
            })
        })
    }

    pub fn throttle(key: &str, limit: u32, window: Duration, cost: u32) -> Result<Throttle, Error> {
        // The stored value is the theoretical arrival time, in microseconds from `base`.
        thread_local!(static BASE: Instant = Instant::now());
        with(key, |entry, now| {
            let now_us = BASE.with(|base| (now - *base).as_micros() as u64);
            let limit = limit.max(1);
            let window_us = (window.as_micros() as u64).max(1);
            let interval = (window_us / u64::from(limit)).max(1);
            let tat = match entry {
                Some((v, _)) => number(v)?.max(now_us),
                None => now_us,
            };
            let new_tat = tat + interval * u64::from(cost);
            let allow_at = new_tat.saturating_sub(window_us);
            let remaining = |tat: u64| {
                (window_us.saturating_sub(tat - now_us) / interval).min(u64::from(limit)) as u32
            };
            if now_us < allow_at {
                return Ok(Throttle {
                    allowed: false,
                    limit,
                    remaining: remaining(tat),
                    retry_after: Duration::from_micros(allow_at - now_us),
                    reset: Duration::from_micros(tat - now_us),
                });
            }
            let keep = Duration::from_micros(new_tat - now_us);
            *entry = Some((new_tat.to_string().into_bytes(), Some(now + keep)));
            Ok(Throttle {
                allowed: true,
                limit,
                remaining: remaining(new_tat),
                retry_after: Duration::ZERO,
                reset: keep,
            })
        })
    }

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        with(key, |entry, _| Ok(entry.as_ref().map(|(v, _)| v.clone())))
    }

    pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        with(key, |entry, now| {
            *entry = Some((value.to_vec(), ttl.map(|t| now + t)));
            Ok(())
        })
    }

    pub fn delete(key: &str) -> Result<bool, Error> {
        with(key, |entry, _| Ok(entry.take().is_some()))
    }

    pub fn compare_and_set(
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        with(key, |entry, now| {
            if entry.as_ref().map(|(v, _)| v.as_slice()) != expected {
                return Ok(false);
            }
            *entry = Some((value.to_vec(), ttl.map(|t| now + t)));
            Ok(true)
        })
    }
}
