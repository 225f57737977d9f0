//! What the `state` import reaches: a [`StateStore`], chosen by the embedder. This crate has the
//! in-process one ([`MemoryStore`]); the gateway adds Redis. Both keep every value as bytes
//! (counters and rate limits as decimal text), so a filter reads the same thing from either.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub use crate::bindings::wasmgate::filter::state::{Counter, StateError, ThrottleResult};

/// Longest key a filter may use (its own bytes, before the store adds the filter's namespace).
pub const MAX_KEY_BYTES: usize = 512;

/// The future a [`StateStore`] call returns.
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// Where filters' state lives. Keys arrive namespaced by filter (`<filter>/<key>`); every call
/// is atomic with respect to the others on the same key, across threads and, for a shared
/// store, across gateways. Nothing panics: failures are [`StateError`]s.
pub trait StateStore: Send + Sync {
    /// Add `delta` to the counter `key`, which lives for `window` from its first increment.
    fn incr(&self, key: String, delta: u64, window: Duration) -> StateFuture<'_, Counter>;
    /// GCRA: count `cost` against `limit` per `window` under `key`, when it fits.
    fn throttle(
        &self,
        key: String,
        limit: u32,
        window: Duration,
        cost: u32,
    ) -> StateFuture<'_, ThrottleResult>;
    /// The value under `key`.
    fn get(&self, key: String) -> StateFuture<'_, Option<Vec<u8>>>;
    /// Store `value` under `key`, expiring after `ttl` when given.
    fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) -> StateFuture<'_, ()>;
    /// Remove `key`; whether it was there.
    fn delete(&self, key: String) -> StateFuture<'_, bool>;
    /// Store `value` if `key` holds `expected` (`None`: is absent); whether it did.
    fn compare_and_set(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StateFuture<'_, bool>;
    /// Largest value this store keeps.
    fn max_value_bytes(&self) -> usize;
}

/// The generic cell rate algorithm on microsecond clocks, as both backends run it (the Redis one
/// in Lua): `tat` is the stored theoretical arrival time, if any.
/// Returns the result and, when allowed, the new arrival time to store and for how long.
pub fn gcra(
    now_us: u64,
    tat: Option<u64>,
    limit: u32,
    window: Duration,
    cost: u32,
) -> (ThrottleResult, Option<(u64, Duration)>) {
    let limit = limit.max(1);
    let window_us = u64::try_from(window.as_micros())
        .unwrap_or(u64::MAX / 4)
        .max(1);
    let interval = (window_us / u64::from(limit)).max(1);
    let tat = tat.unwrap_or(now_us).max(now_us);
    let new_tat = tat.saturating_add(interval.saturating_mul(u64::from(cost)));
    let allow_at = new_tat.saturating_sub(window_us);
    let remaining = |tat: u64| {
        let left = window_us.saturating_sub(tat - now_us) / interval;
        u32::try_from(left).unwrap_or(u32::MAX).min(limit)
    };
    let ms = |us: u64| us.div_ceil(1000);
    if now_us < allow_at {
        let result = ThrottleResult {
            allowed: false,
            limit,
            remaining: remaining(tat),
            retry_after_ms: ms(allow_at - now_us),
            reset_ms: ms(tat - now_us),
        };
        return (result, None);
    }
    let result = ThrottleResult {
        allowed: true,
        limit,
        remaining: remaining(new_tat),
        retry_after_ms: 0,
        reset_ms: ms(new_tat - now_us),
    };
    let keep = Duration::from_micros(new_tat - now_us).max(Duration::from_millis(1));
    (result, Some((new_tat, keep)))
}

/// Microseconds since the Unix epoch (the clock rate limits run on, in both backends).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Limits of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Keys kept at most.
    pub max_entries: usize,
    /// Bytes of keys and values kept at most.
    pub max_bytes: usize,
    /// Largest value.
    pub max_value_bytes: usize,
}

impl Default for MemoryLimits {
    /// 100,000 keys, 64 MiB, values up to 1 MiB.
    fn default() -> Self {
        MemoryLimits {
            max_entries: 100_000,
            max_bytes: 64 << 20,
            max_value_bytes: 1 << 20,
        }
    }
}

/// Shards of a [`MemoryStore`]: a key's shard is locked only for the call on it.
const SHARDS: usize = 16;
/// Bytes counted for an entry besides its key and value.
const ENTRY_OVERHEAD: usize = 64;

/// The in-process store: sharded maps behind short locks, bounded in entries and bytes. When a
/// shard is full, its expired entries go first; if it is still full, a new key is refused with
/// `too-large` (a live counter is never dropped to make room).
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    limits: MemoryLimits,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Box<str>, Entry>,
    bytes: usize,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }

    fn size(key: &str, value: &[u8]) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(MemoryLimits::default())
    }
}

impl MemoryStore {
    /// An empty store under `limits`.
    pub fn new(limits: MemoryLimits) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            limits,
        }
    }

    /// Keys currently held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        lock(&self.shards[i])
    }

    /// Run `f` on the live entry under `key` (its value and expiry; `None` when absent or
    /// expired) with the shard locked; `f` returns its answer and what to write, if anything.
    fn update<R>(
        &self,
        key: String,
        f: impl FnOnce(
            Option<(&[u8], Option<Instant>)>,
            Instant,
        ) -> Result<(R, Option<Write>), StateError>,
    ) -> Result<R, StateError> {
        let now = Instant::now();
        let mut shard = self.shard(&key);
        let current = shard
            .entries
            .get(key.as_str())
            .filter(|e| e.live(now))
            .map(|e| (e.value.as_slice(), e.expires));
        let (result, write) = f(current, now)?;
        match write {
            None => {}
            Some(Write::Delete) => {
                if let Some(old) = shard.entries.remove(key.as_str()) {
                    shard.bytes -= Entry::size(&key, &old.value);
                }
            }
            Some(Write::Put(value, expires)) => self.put(&mut shard, key, value, expires, now)?,
        }
        Ok(result)
    }

    fn put(
        &self,
        shard: &mut Shard,
        key: String,
        value: Vec<u8>,
        expires: Option<Instant>,
        now: Instant,
    ) -> Result<(), StateError> {
        if value.len() > self.limits.max_value_bytes {
            return Err(StateError::TooLarge(format!(
                "a value of {} bytes is over this store's {} bytes",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        let size = Entry::size(&key, &value);
        let old = shard
            .entries
            .get(key.as_str())
            .map_or(0, |e| Entry::size(&key, &e.value));
        let (max_entries, max_bytes) = (
            self.limits.max_entries.div_ceil(SHARDS),
            self.limits.max_bytes.div_ceil(SHARDS),
        );
        let fits = |s: &Shard| {
            let entries = s.entries.len() + usize::from(old == 0);
            entries <= max_entries && s.bytes - old + size <= max_bytes
        };
        if !fits(shard) {
            let mut freed = 0;
            shard.entries.retain(|k, e| {
                let keep = e.live(now) || **k == *key;
                if !keep {
                    freed += Entry::size(k, &e.value);
                }
                keep
            });
            shard.bytes -= freed;
            if !fits(shard) {
                return Err(StateError::TooLarge("the state store is full".into()));
            }
        }
        shard.bytes = shard.bytes - old + size;
        shard.entries.insert(key.into(), Entry { value, expires });
        Ok(())
    }
}

/// What an update stores.
enum Write {
    Put(Vec<u8>, Option<Instant>),
    Delete,
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stored decimal number (a counter or a rate limit's arrival time).
fn number(value: &[u8], what: &str) -> Result<u64, StateError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StateError::Invalid(format!("the key does not hold {what}")))
}

fn ready<T: Send + 'static>(result: Result<T, StateError>) -> StateFuture<'static, T> {
    Box::pin(std::future::ready(result))
}

impl StateStore for MemoryStore {
    fn incr(&self, key: String, delta: u64, window: Duration) -> StateFuture<'_, Counter> {
        ready(self.update(key, |current, now| {
            // A live counter keeps its window; only a new one starts one.
            let (value, expires) = match current {
                Some((v, expires)) => (
                    number(v, "a counter")?.saturating_add(delta),
                    expires.unwrap_or(now + window),
                ),
                None => (delta, now + window),
            };
            let counter = Counter {
                value,
                reset_ms: u64::try_from((expires - now).as_millis()).unwrap_or(u64::MAX),
            };
            let write = Write::Put(value.to_string().into_bytes(), Some(expires));
            Ok((counter, Some(write)))
        }))
    }

    fn throttle(
        &self,
        key: String,
        limit: u32,
        window: Duration,
        cost: u32,
    ) -> StateFuture<'_, ThrottleResult> {
        ready(self.update(key, |current, now| {
            let tat = current
                .map(|(v, _)| number(v, "a rate limit"))
                .transpose()?;
            let (result, store) = gcra(unix_micros(), tat, limit, window, cost);
            let write =
                store.map(|(tat, keep)| Write::Put(tat.to_string().into_bytes(), Some(now + keep)));
            Ok((result, write))
        }))
    }

    fn get(&self, key: String) -> StateFuture<'_, Option<Vec<u8>>> {
        ready(self.update(key, |current, _| {
            Ok((current.map(|(v, _)| v.to_vec()), None))
        }))
    }

    fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) -> StateFuture<'_, ()> {
        ready(self.update(key, |_, now| {
            Ok(((), Some(Write::Put(value, ttl.map(|t| now + t)))))
        }))
    }

    fn delete(&self, key: String) -> StateFuture<'_, bool> {
        ready(self.update(key, |current, _| {
            Ok((current.is_some(), Some(Write::Delete)))
        }))
    }

    fn compare_and_set(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StateFuture<'_, bool> {
        ready(self.update(key, |current, now| {
            if current.map(|(v, _)| v) != expected.as_deref() {
                return Ok((false, None));
            }
            Ok((true, Some(Write::Put(value, ttl.map(|t| now + t)))))
        }))
    }

    fn max_value_bytes(&self) -> usize {
        self.limits.max_value_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: StateFuture<'_, T>) -> Result<T, StateError> {
        futures_util::FutureExt::now_or_never(f).expect("the memory store answers at once")
    }

    #[test]
    fn gcra_lets_a_burst_of_the_limit_then_one_per_interval() {
        let window = Duration::from_secs(1);
        let (mut tat, now) = (None, 1_000_000_000);
        for remaining in (0..10).rev() {
            let (r, store) = gcra(now, tat, 10, window, 1);
            assert!(r.allowed);
            assert_eq!(r.remaining, remaining);
            tat = store.map(|(t, _)| t);
        }
        let (r, store) = gcra(now, tat, 10, window, 1);
        assert!(!r.allowed && store.is_none());
        assert_eq!((r.remaining, r.retry_after_ms, r.reset_ms), (0, 100, 1000));
        // 100 ms later exactly one more fits; half a second later five, never ten.
        assert!(gcra(now + 100_000, tat, 10, window, 1).0.allowed);
        let mut allowed = 0;
        let mut t = tat;
        for _ in 0..20 {
            let (r, store) = gcra(now + 500_000, t, 10, window, 1);
            if let Some((next, _)) = store {
                t = Some(next);
            }
            allowed += usize::from(r.allowed);
        }
        assert_eq!(allowed, 5);
    }

    #[test]
    fn a_throttle_across_threads_allows_exactly_the_limit() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let allowed = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let r =
                            block(store.throttle("f/k".into(), 150, Duration::from_secs(3600), 1));
                        if r.unwrap().allowed {
                            allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 150);
        let counted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        block(store.incr("f/c".into(), 1, Duration::from_secs(60))).unwrap();
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(
            block(store.get("f/c".into())).unwrap().as_deref(),
            Some(&b"800"[..])
        );
    }

    #[test]
    fn a_full_store_drops_expired_keys_first_then_refuses_new_ones() {
        // One key per shard.
        let store = MemoryStore::new(MemoryLimits {
            max_entries: SHARDS,
            max_bytes: 1 << 20,
            max_value_bytes: 1024,
        });
        let shard = |key: &str| store.hasher.hash_one(key) as usize % SHARDS;
        let same_shard = |prefix: &str| {
            (0..)
                .map(|i| format!("{prefix}{i}"))
                .find(|k| shard(k) == shard("f/a"))
                .unwrap()
        };
        let (b, c) = (same_shard("f/b"), same_shard("f/c"));
        block(store.set("f/a".into(), vec![1], Some(Duration::from_millis(30)))).unwrap();
        let full = block(store.set(b.clone(), vec![1], None));
        assert!(matches!(full, Err(StateError::TooLarge(_))), "{full:?}");
        std::thread::sleep(Duration::from_millis(50));
        // The expired key makes room; a live one does not.
        block(store.set(b.clone(), vec![1], None)).unwrap();
        assert_eq!(store.len(), 1);
        assert!(block(store.set(c, vec![1], None)).is_err());
        // Replacing a key in a full shard is fine.
        block(store.set(b.clone(), b"1".to_vec(), None)).unwrap();
        let big = block(store.set("f/big".into(), vec![0; 2048], None));
        assert!(matches!(big, Err(StateError::TooLarge(_))));
        assert_eq!(
            block(store.incr(b.clone(), 1, Duration::from_secs(1)))
                .unwrap()
                .value,
            2
        );
        // A key holding text is not a counter.
        block(store.set(b.clone(), b"text".to_vec(), None)).unwrap();
        let text = block(store.incr(b, 1, Duration::from_secs(1)));
        assert!(matches!(text, Err(StateError::Invalid(_))));
    }
}
