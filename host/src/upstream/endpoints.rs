//! What the gateway knows about each endpoint (one upstream URL of a service): requests in
//! flight, health from active checks, ejection from passive outlier detection. The state lives
//! in an [`EndpointRegistry`] kept by the control plane, so a config reload keeps it for every
//! endpoint it did not change; health checks run as one task per service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use http::Request;

use crate::config::Transport;
use crate::config::{HealthCheck, OutlierDetection, ServiceConfig};

/// Milliseconds since the process's first look at the clock: the time ejections are kept in.
pub(super) fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// One endpoint's state, shared by every snapshot that has the endpoint.
#[derive(Debug)]
pub struct EndpointState {
    /// Requests sent and not yet answered (response headers).
    pub(super) active: AtomicUsize,
    /// The active health checks' verdict; endpoints start healthy.
    healthy: AtomicBool,
    /// Checks passed or failed in a row (the checker's own counters).
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    /// 5xx answers or connection failures in a row (outlier detection).
    consecutive_failures: AtomicU32,
    /// Until when (see [`now_ms`]) the endpoint is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// How many times it was ejected; each ejection lasts longer.
    ejections: AtomicU32,
    /// Totals since the endpoint appeared, for the admin endpoint.
    pub(super) requests: AtomicU64,
    pub(super) failures: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl EndpointState {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejected at `now` (from [`now_ms`]).
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Milliseconds of ejection left.
    pub fn ejected_for_ms(&self) -> u64 {
        self.ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms())
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn set_healthy_for_test(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Takes traffic at `now`.
    pub(super) fn available(&self, now: u64) -> bool {
        self.healthy() && !self.ejected(now)
    }
}

/// How one try at an endpoint ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// An answer below 500.
    Success,
    /// A 5xx answer, or no answer (connection failure, reset, timeout).
    Failure,
    /// Not the endpoint's doing (the client's body failed, the request was invalid).
    Neither,
}

/// Record `outcome` for endpoint `index` of `endpoints`, ejecting it when it has failed
/// `consecutive_failures` times in a row and the service's ejected share allows.
pub(super) fn record(
    service: &str,
    endpoints: &[super::Endpoint],
    index: usize,
    outcome: Outcome,
    outlier: Option<&OutlierDetection>,
) {
    let endpoint = &endpoints[index];
    let state = &endpoint.state;
    match outcome {
        Outcome::Neither => return,
        Outcome::Success => {
            state.requests.fetch_add(1, Ordering::Relaxed);
            if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
                state.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        Outcome::Failure => {
            state.requests.fetch_add(1, Ordering::Relaxed);
            state.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    let failures = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(outlier) = outlier else { return };
    let now = now_ms();
    if failures < outlier.consecutive_failures || state.ejected(now) {
        return;
    }
    let ejected = endpoints.iter().filter(|e| e.state.ejected(now)).count();
    if (ejected + 1) * 100 > outlier.max_ejected_percent as usize * endpoints.len() {
        return;
    }
    let n = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let length = outlier
        .base_ejection
        .saturating_mul(n)
        .min(outlier.max_ejection);
    state
        .ejected_until
        .store(now + length.as_millis() as u64, Ordering::Relaxed);
    state.consecutive_failures.store(0, Ordering::Relaxed);
    tracing::warn!(
        service,
        endpoint = %endpoint.base,
        failures,
        ejection = n,
        seconds = length.as_secs_f64(),
        "endpoint ejected after failing in a row"
    );
}

/// Endpoint state, DNS answers and per-service background tasks (health checks, discovery),
/// kept across config reloads.
#[derive(Default)]
pub struct EndpointRegistry {
    states: super::discovery::States,
    resolved: super::discovery::Resolved,
    shared: HashMap<String, Arc<super::ServiceShared>>,
    resolver: Option<super::Resolver>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EndpointRegistry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl EndpointRegistry {
    pub(super) fn states(&self) -> &super::discovery::States {
        &self.states
    }

    pub(super) fn resolved(&self) -> &super::discovery::Resolved {
        &self.resolved
    }

    /// State shared by every snapshot of `service` (counters its limits and retry budget use).
    pub(super) fn shared(&mut self, cfg: &ServiceConfig) -> Arc<super::ServiceShared> {
        let fresh = || Arc::new(super::ServiceShared::new(cfg.limits));
        let entry = self.shared.entry(cfg.name.clone()).or_insert_with(fresh);
        if entry.limits != cfg.limits {
            *entry = fresh();
        }
        entry.clone()
    }

    /// Serve `services`: forget endpoints, answers and services they no longer have, and run
    /// their health checks and DNS discovery (restarted with each snapshot; what they learned
    /// is kept in the endpoints' state). `dns` is the config's `[dns]`.
    pub fn sync(&mut self, services: &super::Services, dns: &crate::config::Dns) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        {
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            states.retain(|(service, id), _| {
                services.get(service).is_some_and(|s| {
                    s.table.load().endpoints.iter().any(|e| e.id() == *id)
                        || s.upstreams
                            .iter()
                            .any(|(u, _)| id.starts_with(&u.to_string()))
                })
            });
            let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            resolved.retain(|(service, url), _| {
                services
                    .get(service)
                    .is_some_and(|s| s.upstreams.iter().any(|(u, _)| u.to_string() == *url))
            });
        }
        self.shared.retain(|name, _| services.contains_key(name));
        if self.resolver.as_ref().is_none_or(|r| r.dns != *dns)
            && services.values().any(|s| s.named_upstreams())
        {
            match super::Resolver::new(dns) {
                Ok(resolver) => self.resolver = Some(resolver),
                Err(why) => tracing::error!("no DNS discovery: {why}"),
            }
        }
        for (name, service) in services {
            if let Some(check) = &service.health_check {
                self.tasks.push(tokio::spawn(run_checks(
                    name.clone(),
                    check.clone(),
                    service.transport.clone(),
                    service.shared.clone(),
                    service.table.clone(),
                )));
            }
            if let Some(resolver) = &self.resolver
                && service.named_upstreams()
            {
                let discovery = super::discovery::Discovery {
                    service: name.clone(),
                    upstreams: service.upstreams.clone(),
                    balance: service.balance.clone(),
                    table: service.table.clone(),
                    states: self.states.clone(),
                    resolved: self.resolved.clone(),
                };
                self.tasks.push(tokio::spawn(super::discovery::run(
                    discovery,
                    resolver.clone(),
                )));
            }
        }
    }
}

/// Check every endpoint each `interval` (the endpoints DNS gives at that moment), and flip its
/// health at the thresholds.
async fn run_checks(
    service: String,
    check: HealthCheck,
    transport: Transport,
    shared: Arc<super::ServiceShared>,
    table: Arc<arc_swap::ArcSwap<super::Table>>,
) {
    let connect_timeout = check.timeout;
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let table = table.load_full();
        let probes = table.endpoints.iter().map(|e| {
            let (service, check, transport, shared) = (&service, &check, &transport, &shared);
            async move {
                let passed = probe(e, check, transport, shared, connect_timeout).await;
                judge(service, &e.base, &e.state, check, passed);
            }
        });
        futures_util::future::join_all(probes).await;
    }
}

/// One check: `GET` the path, a passing status within the timeout.
async fn probe(
    endpoint: &super::Endpoint,
    check: &HealthCheck,
    transport: &Transport,
    shared: &Arc<super::ServiceShared>,
    connect_timeout: Duration,
) -> Result<(), String> {
    let uri = super::join(&endpoint.base, &check.path).map_err(|e| e.to_string())?;
    let mut req = Request::new(super::empty());
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("wasmgate-health-check"),
    );
    // The probe's connection lasts from one check to the next.
    let idle = check.interval.saturating_mul(2);
    let client = super::local_client(connect_timeout, idle, transport, shared, endpoint.address);
    let sent = tokio::time::timeout(check.timeout, client.request(req)).await;
    match sent {
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        Ok(Err(e)) => Err(super::causes(&e)),
        Ok(Ok(resp)) if check.passes(resp.status().as_u16()) => Ok(()),
        Ok(Ok(resp)) => Err(format!("status {}", resp.status())),
    }
}

fn judge(
    service: &str,
    base: &http::Uri,
    state: &EndpointState,
    check: &HealthCheck,
    passed: Result<(), String>,
) {
    match passed {
        Ok(()) => {
            state.check_failures.store(0, Ordering::Relaxed);
            let passes = state.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !state.healthy() && passes >= check.healthy_threshold {
                state.healthy.store(true, Ordering::Relaxed);
                tracing::info!(service, endpoint = %base, passes, "endpoint healthy again");
            }
        }
        Err(why) => {
            state.check_passes.store(0, Ordering::Relaxed);
            let failures = state.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if state.healthy() && failures >= check.unhealthy_threshold {
                state.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(service, endpoint = %base, failures, last = %why, "endpoint unhealthy: no traffic until it passes again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Endpoint;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::new(format!("http://10.0.0.{i}:80").parse().unwrap(), None, 1))
            .collect()
    }

    fn fail(e: &[Endpoint], i: usize, times: u32, outlier: &OutlierDetection) {
        for _ in 0..times {
            record("svc", e, i, Outcome::Failure, Some(outlier));
        }
    }

    #[test]
    fn ejections_grow_and_stop_at_the_maximum_share() {
        let outlier = OutlierDetection {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        };
        let e = endpoints(4);
        fail(&e, 0, 1, &outlier);
        record("svc", &e, 0, Outcome::Success, Some(&outlier));
        fail(&e, 0, 1, &outlier);
        assert!(
            !e[0].state.ejected(now_ms()),
            "a success in between resets the count"
        );
        fail(&e, 0, 1, &outlier);
        assert!(e[0].state.ejected(now_ms()));
        let first = e[0].state.ejected_for_ms();
        assert!((9_000..=10_000).contains(&first), "{first}");

        // Ejected again later: twice as long, then capped.
        e[0].state.ejected_until.store(0, Ordering::Relaxed);
        fail(&e, 0, 2, &outlier);
        let second = e[0].state.ejected_for_ms();
        assert!((19_000..=20_000).contains(&second), "{second}");
        e[0].state.ejected_until.store(0, Ordering::Relaxed);
        fail(&e, 0, 2, &outlier);
        let third = e[0].state.ejected_for_ms();
        assert!((24_000..=25_000).contains(&third), "{third}");
        assert_eq!(e[0].state.ejections(), 3);

        // Half of four may be out at once: the second goes, the third stays.
        fail(&e, 1, 2, &outlier);
        fail(&e, 2, 10, &outlier);
        let out: Vec<bool> = e.iter().map(|x| x.state.ejected(now_ms())).collect();
        assert_eq!(out, [true, true, false, false]);
    }
}
