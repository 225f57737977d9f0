//! Clock, randomness and a small cache, provided by the gateway.
//!
//! Outside the gateway (native unit tests) the clock is the system clock, the cache is a
//! per-thread map, and randomness is not cryptographic.

use std::time::{Duration, SystemTime};

use crate::__bindings::wasmgate::filter::{cache as wit_cache, host as wit_host};

/// The gateway's wall clock.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms())
}

/// The gateway's wall clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    if cfg!(target_family = "wasm") {
        wit_host::now_ms()
    } else {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// `len` bytes from the gateway's secure random generator (at most 4096).
pub fn random_bytes(len: u32) -> Vec<u8> {
    if cfg!(target_family = "wasm") {
        wit_host::random_bytes(len)
    } else {
        use std::hash::{BuildHasher, RandomState};
        (0..len)
            .map(|i| RandomState::new().hash_one(i) as u8)
            .collect()
    }
}

/// A small cache shared by every instance of this filter, across requests and routes. Entries
/// expire after their time to live and may be evicted earlier; values over 64 KiB are not kept.
pub mod cache {
    use super::*;

    thread_local! {
        static NATIVE: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, SystemTime)>> =
            Default::default();
    }

    /// The value under `key`, if present and fresh.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        if cfg!(target_family = "wasm") {
            wit_cache::get(key)
        } else {
            NATIVE.with(|m| {
                m.borrow()
                    .get(key)
                    .filter(|(_, exp)| *exp > SystemTime::now())
                    .map(|(v, _)| v.clone())
            })
        }
    }

    /// Keep `value` under `key` for `ttl`.
    pub fn set(key: &str, value: &[u8], ttl: Duration) {
        let ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        if cfg!(target_family = "wasm") {
            wit_cache::set(key, value, ms);
        } else {
            NATIVE.with(|m| {
                m.borrow_mut()
                    .insert(key.to_string(), (value.to_vec(), SystemTime::now() + ttl))
            });
        }
    }
}
