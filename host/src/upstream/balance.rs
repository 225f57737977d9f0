//! Picking an endpoint: the service's policy over the endpoints that take traffic (healthy and
//! not ejected), skipping those a retry already tried when others remain.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;

use super::endpoints::now_ms;
use super::{Endpoint, Tried};
use crate::config::{AllUnhealthy, Balance, HashOn};

/// Points on the hash ring per unit of weight.
const RING_POINTS: u32 = 160;

/// A policy, with what it precomputes from the endpoints and their weights.
#[derive(Debug)]
pub(super) struct Balancer {
    policy: Balance,
    /// Round robin: endpoint indexes in smooth weighted order, one cycle.
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// Consistent hashing: (point, endpoint index), sorted by point.
    ring: Vec<(u64, usize)>,
}

impl Balancer {
    pub(super) fn new(policy: Balance, endpoints: &[Endpoint]) -> Balancer {
        let ring = match policy {
            Balance::ConsistentHash(_) => ring(endpoints),
            _ => Vec::new(),
        };
        Balancer {
            schedule: smooth_schedule(endpoints),
            policy,
            next: AtomicUsize::new(0),
            ring,
        }
    }

    /// The endpoint for this try: one that takes traffic and was not tried yet, else one that
    /// takes traffic; `None` when none does (unless `all_unhealthy` is panic, which then uses
    /// every endpoint).
    pub(super) fn pick(
        &self,
        endpoints: &[Endpoint],
        key: Option<u64>,
        tried: &Tried,
        all_unhealthy: AllUnhealthy,
    ) -> Option<usize> {
        let now = now_ms();
        let up = |i: usize| endpoints[i].state.available(now);
        let fresh = |i: usize| up(i) && !tried.contains(i);
        if let Some(i) = self.pick_where(endpoints, key, &fresh) {
            return Some(i);
        }
        if let Some(i) = self.pick_where(endpoints, key, &up) {
            return Some(i);
        }
        match all_unhealthy {
            AllUnhealthy::Fail => None,
            AllUnhealthy::Panic => self.pick_where(endpoints, key, &|_| true),
        }
    }

    fn pick_where(
        &self,
        endpoints: &[Endpoint],
        key: Option<u64>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = endpoints.len();
        match (&self.policy, key) {
            (Balance::ConsistentHash(_), Some(key)) if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|(point, _)| *point < key);
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1)
                    .find(|i| ok(*i))
            }
            (Balance::Random, _) => {
                let total: u64 = (0..n)
                    .filter(|i| ok(*i))
                    .map(|i| weight(endpoints, i))
                    .sum();
                if total == 0 {
                    return None;
                }
                let mut at = random() % total;
                (0..n).filter(|i| ok(*i)).find(|i| {
                    let w = weight(endpoints, *i);
                    if at < w {
                        return true;
                    }
                    at -= w;
                    false
                })
            }
            (Balance::LeastRequest, _) => {
                let candidates: Vec<usize> = (0..n).filter(|i| ok(*i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let a = candidates[(random() % len as u64) as usize];
                        let mut b = candidates[(random() % (len as u64 - 1)) as usize];
                        if b == a {
                            b = candidates[len - 1];
                        }
                        let load = |i: usize| endpoints[i].state.active.load(Ordering::Relaxed);
                        Some(if load(b) < load(a) { b } else { a })
                    }
                }
            }
            // Round robin, and consistent hashing without a key.
            _ => {
                let len = self.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| self.schedule[(start + k) % len])
                    .find(|i| ok(*i))
            }
        }
    }
}

fn weight(endpoints: &[Endpoint], i: usize) -> u64 {
    u64::from(endpoints[i].weight)
}

/// One cycle of smooth weighted round robin (nginx's): weights 5, 1, 1 give a a b a c a a, not
/// a a a a a b c.
fn smooth_schedule(endpoints: &[Endpoint]) -> Vec<usize> {
    let total: i64 = endpoints.iter().map(|e| i64::from(e.weight)).sum();
    let mut current = vec![0i64; endpoints.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, e) in current.iter_mut().zip(endpoints) {
            *c += i64::from(e.weight);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("a service has endpoints");
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

/// The hash ring: `RING_POINTS` points per unit of weight for each endpoint, placed by its URL
/// (and address), so an endpoint keeps its points whatever the others are.
fn ring(endpoints: &[Endpoint]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let id = e.id();
        for point in 0..RING_POINTS * e.weight {
            ring.push((stable_hash(&(id.as_str(), point)), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// A hash that is the same in every process, so that replicas agree on where a key goes.
fn stable_hash(value: &impl Hash) -> u64 {
    // SipHash with fixed keys.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The request's key for consistent hashing; `None` when the request lacks it (then the
/// service balances round robin).
pub fn hash_key(on: &HashOn, headers: &HeaderMap, client: SocketAddr, path: &str) -> Option<u64> {
    match on {
        HashOn::Header(name) => headers.get(name).map(|v| stable_hash(&v.as_bytes())),
        HashOn::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| stable_hash(&v)),
        HashOn::Client => Some(stable_hash(&client.ip())),
        HashOn::Path => Some(stable_hash(&path)),
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1);
}

/// A fast per-thread random number (xorshift64*); for spreading load, not for secrets.
fn random() -> u64 {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A random duration in `0..=max`, for jittered backoff.
pub(super) fn jitter(max: std::time::Duration) -> std::time::Duration {
    let ms = max.as_millis() as u64;
    std::time::Duration::from_millis(if ms == 0 { 0 } else { random() % (ms + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint::new(format!("http://10.0.0.{i}:80").parse().unwrap(), None, *w))
            .collect()
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let e = endpoints(&[5, 1, 1]);
        assert_eq!(smooth_schedule(&e), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&endpoints(&[1, 1, 1])), vec![0, 1, 2]);
    }

    #[test]
    fn random_and_round_robin_follow_the_weights() {
        let e = endpoints(&[3, 1]);
        for policy in [Balance::RoundRobin, Balance::Random] {
            let b = Balancer::new(policy.clone(), &e);
            let mut counts = [0usize; 2];
            for _ in 0..4000 {
                counts[b
                    .pick(&e, None, &Tried::default(), AllUnhealthy::Fail)
                    .unwrap()] += 1;
            }
            let share = counts[0] as f64 / 4000.0;
            assert!((0.70..0.80).contains(&share), "{policy:?}: {counts:?}");
        }
    }

    #[test]
    fn consistent_hashing_moves_about_one_nth_of_keys() {
        let on = HashOn::Path;
        let four = endpoints(&[1, 1, 1, 1]);
        let three: Vec<Endpoint> = four[..3]
            .iter()
            .map(|e| Endpoint::new(e.base.clone(), None, 1))
            .collect();
        let (b4, b3) = (
            Balancer::new(Balance::ConsistentHash(on.clone()), &four),
            Balancer::new(Balance::ConsistentHash(on), &three),
        );
        let keys: Vec<u64> = (0..10_000).map(|k| stable_hash(&k)).collect();
        let mut moved = 0;
        for k in &keys {
            let before = b4
                .pick(&four, Some(*k), &Tried::default(), AllUnhealthy::Fail)
                .unwrap();
            let after = b3
                .pick(&three, Some(*k), &Tried::default(), AllUnhealthy::Fail)
                .unwrap();
            // Only keys of the removed endpoint may move.
            if before != 3 {
                assert_eq!(before, after);
            } else {
                moved += 1;
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((0.18..0.32).contains(&share), "{share}");
    }

    #[test]
    fn hash_keys_come_from_a_header_a_cookie_the_client_or_the_path() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "ada".parse().unwrap());
        headers.append(
            http::header::COOKIE,
            "theme=dark; session=s1".parse().unwrap(),
        );
        let client: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let key = |on: &str, headers: &HeaderMap, client: SocketAddr, path: &str| {
            hash_key(&HashOn::parse(on).unwrap(), headers, client, path)
        };
        let (none, other_port) = (HeaderMap::new(), "10.1.2.3:6000".parse().unwrap());
        assert!(key("header:x-user", &headers, client, "/").is_some());
        assert_eq!(key("header:x-user", &none, client, "/"), None);
        assert_eq!(
            key("cookie:session", &headers, client, "/"),
            Some(stable_hash(&"s1"))
        );
        assert_eq!(key("cookie:missing", &headers, client, "/"), None);
        // The client's address without its port: one client, one key.
        assert_eq!(
            key("client", &none, client, "/"),
            key("client", &none, other_port, "/x")
        );
        assert_ne!(
            key("path", &none, client, "/a"),
            key("path", &none, client, "/b")
        );
        assert!(HashOn::parse("header:").is_none() && HashOn::parse("query:x").is_none());
    }

    #[test]
    fn retries_avoid_tried_endpoints_and_fail_fast_when_none_is_up() {
        let e = endpoints(&[1, 1]);
        let b = Balancer::new(Balance::RoundRobin, &e);
        let mut tried = Tried::default();
        tried.insert(0);
        for _ in 0..10 {
            assert_eq!(b.pick(&e, None, &tried, AllUnhealthy::Fail), Some(1));
        }
        // Only tried ones left: one of them again.
        tried.insert(1);
        assert!(b.pick(&e, None, &tried, AllUnhealthy::Fail).is_some());
        for ep in &e {
            ep.state.set_healthy_for_test(false);
        }
        assert_eq!(
            b.pick(&e, None, &Tried::default(), AllUnhealthy::Fail),
            None
        );
        assert!(
            b.pick(&e, None, &Tried::default(), AllUnhealthy::Panic)
                .is_some()
        );
    }
}
