//! A snapshot: the routes of one config with their filter chains resolved against the loaded
//! filters, and the services they reach. Requests read the current snapshot; a reload builds a
//! new one and swaps it in whole, so a request sees one consistent config for its whole life.

mod breaker;

use std::sync::Arc;

use wasmgate_sandbox::{
    FilterCache, FilterMetrics, InstancePool, Limits, LoadedFilter, Needs, StateStore,
};

pub use breaker::{Breaker, Outcome, Ticket};

use crate::config::{self, Config, FailurePolicy, FilterLimits, RouteConfig};
use crate::upstream::{EndpointRegistry, Service, Services};

/// The snapshot serving now; requests load it, reloads store a new one.
pub type Current = arc_swap::ArcSwap<Snapshot>;

/// Everything a request needs, consistent for its whole life.
pub struct Snapshot {
    pub routes: Vec<Route>,
    pub services: Arc<Services>,
    pub timeouts: config::Timeouts,
    pub body_limits: config::BodyLimits,
    /// `server.max_request_body_bytes`.
    pub max_request_body: Option<u64>,
    /// `server.max_uri_bytes`.
    pub max_uri: usize,
    /// How `compress = true` routes compress.
    pub compression: config::Compression,
    /// `server.websocket_idle_timeout`.
    pub websocket_idle: std::time::Duration,
    /// With `tls.redirect_http`, the HTTPS port plaintext requests are redirected to.
    pub https_redirect: Option<u16>,
}

/// A route with its filter chain resolved.
pub struct Route {
    pub config: RouteConfig,
    /// The route's name as a metric label.
    pub label: crate::metrics::Name,
    pub chain: Vec<ChainEntry>,
    /// Some filter of the chain reads the request body: it is buffered.
    pub needs_request_body: bool,
    /// Some filter of the chain reads the response body: it is buffered.
    pub needs_response_body: bool,
}

impl Route {
    /// Largest body buffered for this route's filters: its own `max_body_bytes`, else the
    /// gateway's.
    pub fn body_limit(&self, limits: &config::BodyLimits) -> u64 {
        self.config.max_body_bytes.unwrap_or(limits.max_body_bytes)
    }
}

impl Snapshot {
    /// Largest request body buffered for `route`'s filters, and largest body a service call
    /// of its filters may return: the route's limit, capped by `server.max_request_body_bytes`.
    pub fn request_body_limit(&self, route: &Route) -> u64 {
        route
            .body_limit(&self.body_limits)
            .min(self.max_request_body.unwrap_or(u64::MAX))
    }
}

/// One entry of a route's chain.
pub enum ChainEntry {
    /// The filter is loaded and accepted this route's config.
    Ready(Binding),
    /// The filter is not loaded or rejected this route's config: requests get 503.
    Unavailable { name: String, reason: String },
}

/// A filter bound to one route: a loaded version with this route's config, grants, limits and
/// failure policy, and the state that goes with them (instances, breaker).
pub struct Binding {
    /// The filter's name as a metric label.
    pub label: crate::metrics::Name,
    /// Instances of the filter version configured with this route's config.
    pub instances: Arc<InstancePool>,
    /// Services the route grants this filter.
    pub services: Arc<[String]>,
    pub cache: Arc<FilterCache>,
    /// The metrics the filter defines (shared by every route and version of it).
    pub metrics: Arc<FilterMetrics>,
    /// Where its `state` import keeps its keys.
    pub state: Arc<dyn StateStore>,
    pub limits: Limits,
    pub on_failure: FailurePolicy,
    /// Opens when this binding keeps failing; new per snapshot.
    pub breaker: Breaker,
}

impl Binding {
    /// The filter version.
    pub fn filter(&self) -> &Arc<LoadedFilter> {
        self.instances.filter()
    }

    /// What this route's config of the filter needs.
    pub fn needs(&self) -> Needs {
        self.instances.needs()
    }
}

/// A filter that could not be used, and where the config references it.
#[derive(Debug, Clone)]
pub struct FilterProblem {
    pub route: String,
    pub filter: String,
    pub place: config::Place,
    pub reason: String,
}

impl std::fmt::Display for FilterProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: route {:?}: filter {:?}: {}",
            self.place, self.route, self.filter, self.reason
        )
    }
}

/// Where a snapshot finds filters by name.
pub trait Filters {
    /// The serving version of filter `name`, or why there is none.
    fn resolve(&self, name: &str) -> Result<Arc<LoadedFilter>, String>;
    /// The cache shared by every instance of filter `name`.
    fn cache(&mut self, name: &str) -> Arc<FilterCache>;
    /// The metrics filter `name` defines.
    fn metrics(&mut self, name: &str) -> Arc<FilterMetrics>;
    /// The state store for `config` (kept while `config` does not change).
    fn state(&mut self, config: &config::StateConfig) -> Arc<dyn StateStore>;
}

impl Snapshot {
    /// Resolve `config`'s routes against `filters`, checking each route's filter config with
    /// the filter itself. Problems make the affected routes answer 503 and are returned.
    pub async fn build(
        config: &Config,
        filters: &mut impl Filters,
        endpoints: &mut EndpointRegistry,
    ) -> (Snapshot, Vec<FilterProblem>) {
        let mut problems = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            let mut chain = Vec::with_capacity(rc.filters.len());
            for f in &rc.filters {
                let limits = sandbox_limits(f.limits);
                let checked = match filters.resolve(&f.name) {
                    Ok(filter) => filter
                        .check_config(&f.config_json, limits)
                        .await
                        .map(|needs| (filter, needs)),
                    Err(e) => Err(e),
                };
                chain.push(match checked {
                    Ok((filter, needs)) => ChainEntry::Ready(Binding {
                        label: crate::metrics::Name::new(&f.name),
                        instances: Arc::new(InstancePool::new(
                            filter,
                            f.config_json.clone(),
                            needs,
                            f.limits.requests_per_instance,
                        )),
                        services: f.services.clone().into(),
                        cache: filters.cache(&f.name),
                        metrics: filters.metrics(&f.name),
                        state: filters.state(&config.state),
                        limits,
                        on_failure: f.on_failure,
                        breaker: Breaker::default(),
                    }),
                    Err(reason) => {
                        problems.push(FilterProblem {
                            route: rc.name.clone(),
                            filter: f.name.clone(),
                            place: f.place,
                            reason: reason.clone(),
                        });
                        ChainEntry::Unavailable {
                            name: f.name.clone(),
                            reason,
                        }
                    }
                });
            }
            let any = |pick: fn(&Needs) -> bool| {
                chain.iter().any(|e| match e {
                    ChainEntry::Ready(b) => pick(&b.needs()),
                    ChainEntry::Unavailable { .. } => false,
                })
            };
            let needs_request_body = any(|n| n.request_body);
            let needs_response_body = any(|n| n.response_body);
            routes.push(Route {
                label: crate::metrics::Name::new(&rc.name),
                config: rc.clone(),
                chain,
                needs_request_body,
                needs_response_body,
            });
        }
        let services = config
            .services
            .iter()
            .map(|s| (s.name.clone(), Service::new(s, endpoints)))
            .collect();
        let snapshot = Snapshot {
            routes,
            services: Arc::new(services),
            timeouts: config.timeouts,
            body_limits: config.limits,
            max_request_body: config.server.max_request_body_bytes,
            max_uri: config.server.max_uri_bytes,
            compression: config.compression.clone(),
            websocket_idle: config.server.websocket_idle_timeout,
            https_redirect: config
                .tls
                .as_ref()
                .filter(|t| t.redirect_http)
                .map(|t| t.listen.port()),
        };
        (snapshot, problems)
    }
}

/// The limits a filter's calls run under, from its config entry.
fn sandbox_limits(l: FilterLimits) -> Limits {
    Limits {
        deadline: l.deadline,
        memory_bytes: l.memory_bytes,
        max_output_bytes: l.max_output_bytes,
        requests_per_instance: l.requests_per_instance,
    }
}

#[cfg(test)]
mod tests {
    /// The testkit runs filters under the sandbox's default limits; the gateway under its
    /// config's. They must agree.
    #[test]
    fn config_and_sandbox_agree_on_the_default_limits() {
        assert_eq!(
            super::sandbox_limits(crate::config::FilterLimits::default()),
            wasmgate_sandbox::Limits::default()
        );
    }

    /// Config validates memory caps against its own maximum; the sandbox sizes its pool slots
    /// by its own. They must agree.
    #[test]
    fn config_and_sandbox_agree_on_the_memory_maximum() {
        assert_eq!(
            crate::config::MAX_FILTER_MEMORY_BYTES,
            wasmgate_sandbox::MAX_MEMORY_BYTES
        );
    }
}
