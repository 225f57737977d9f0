//! Service discovery through DNS: an upstream whose host is a name is resolved (hickory), each
//! address becoming an endpoint, and resolved again when the answer's TTL runs out (within
//! `[dns] min_ttl` and `max_ttl`). A changed answer swaps the service's endpoints without a
//! reload; endpoints whose address stayed keep their state. Until a name's first answer, its
//! upstream is one endpoint resolved by the system when connecting, as without discovery.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

use super::endpoints::EndpointState;
use super::{Endpoint, Table};
use crate::config::{Balance, Dns};

/// Endpoint state by service and endpoint id, shared with the discovery tasks.
pub(super) type States = Arc<Mutex<HashMap<(String, String), Arc<EndpointState>>>>;
/// The last answer for each named upstream, by service and URL.
pub(super) type Resolved = Arc<Mutex<HashMap<(String, String), Vec<IpAddr>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The upstream's host is a name (not an IP address).
pub(super) fn is_name(uri: &http::Uri) -> bool {
    uri.host().is_some_and(|h| {
        h.trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_err()
    })
}

/// The endpoints of `upstreams`: one per upstream, or one per resolved address of a named one.
pub(super) fn endpoints(
    service: &str,
    upstreams: &[(http::Uri, u32)],
    states: &States,
    resolved: &Resolved,
) -> Vec<Endpoint> {
    let resolved = lock(resolved);
    let mut states = lock(states);
    let mut out = Vec::new();
    for (base, weight) in upstreams {
        let addresses: Vec<Option<IpAddr>> =
            match resolved.get(&(service.to_string(), base.to_string())) {
                Some(ips) if is_name(base) && !ips.is_empty() => {
                    ips.iter().copied().map(Some).collect()
                }
                _ => vec![None],
            };
        for address in addresses {
            let mut endpoint = Endpoint::new(base.clone(), address, *weight);
            endpoint.state = states
                .entry((service.to_string(), endpoint.id()))
                .or_default()
                .clone();
            out.push(endpoint);
        }
    }
    out
}

/// The gateway's DNS resolver, as `[dns]` says.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    pub(super) dns: Dns,
}

impl Resolver {
    pub fn new(dns: &Dns) -> Result<Resolver, String> {
        let mut opts = ResolverOpts::default();
        opts.ip_strategy = match dns.lookup.as_str() {
            "ipv4" => LookupIpStrategy::Ipv4Only,
            "ipv6" => LookupIpStrategy::Ipv6Only,
            "both" => LookupIpStrategy::Ipv4AndIpv6,
            _ => LookupIpStrategy::Ipv4thenIpv6,
        };
        opts.positive_min_ttl = Some(dns.min_ttl);
        opts.positive_max_ttl = Some(dns.max_ttl);
        opts.cache_size = 64;
        let builder = if dns.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("the system's DNS settings: {e}"))?
        } else {
            let servers: Vec<NameServerConfig> = dns
                .servers
                .iter()
                .flat_map(|addr| {
                    [
                        NameServerConfig::new(*addr, Protocol::Udp),
                        NameServerConfig::new(*addr, Protocol::Tcp),
                    ]
                })
                .collect();
            let config =
                ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::from(servers));
            hickory_resolver::Resolver::builder_with_config(
                config,
                TokioConnectionProvider::default(),
            )
        };
        Ok(Resolver {
            inner: Arc::new(builder.with_options(opts).build()),
            dns: dns.clone(),
        })
    }

    /// The addresses of `host` (sorted) and how long the answer holds, within the TTL bounds.
    async fn lookup(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), String> {
        let answer = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let mut ips: Vec<IpAddr> = answer.iter().collect();
        ips.sort();
        ips.dedup();
        let ttl = answer
            .valid_until()
            .saturating_duration_since(Instant::now())
            .clamp(self.dns.min_ttl, self.dns.max_ttl);
        Ok((ips, ttl))
    }
}

/// What a discovery task works on for one service.
pub(super) struct Discovery {
    pub service: String,
    pub upstreams: Vec<(http::Uri, u32)>,
    pub balance: Balance,
    pub table: Arc<ArcSwap<Table>>,
    pub states: States,
    pub resolved: Resolved,
}

/// Resolve the service's named upstreams again and again; swap its endpoints when an answer
/// changes.
pub(super) async fn run(d: Discovery, resolver: Resolver) {
    loop {
        let mut wait = resolver.dns.max_ttl;
        let mut changed = Vec::new();
        for (base, _) in d.upstreams.iter().filter(|(u, _)| is_name(u)) {
            let host = base.host().unwrap_or_default();
            match resolver.lookup(host).await {
                Ok((ips, ttl)) => {
                    wait = wait.min(ttl);
                    let key = (d.service.clone(), base.to_string());
                    let mut resolved = lock(&d.resolved);
                    if resolved.get(&key) != Some(&ips) {
                        changed.push(format!("{host}: {ips:?}"));
                        resolved.insert(key, ips);
                    }
                }
                Err(why) => {
                    // The last answer keeps serving; ask again soon.
                    wait = wait.min(resolver.dns.min_ttl.max(Duration::from_secs(1)));
                    tracing::warn!(service = %d.service, host, "DNS lookup failed, keeping the last answer: {why}");
                }
            }
        }
        if !changed.is_empty() {
            let endpoints = endpoints(&d.service, &d.upstreams, &d.states, &d.resolved);
            // Addresses no answer gives any more take their state with them.
            lock(&d.states).retain(|(service, id), _| {
                *service != d.service || endpoints.iter().any(|e| e.id() == *id)
            });
            tracing::info!(service = %d.service, answers = ?changed, endpoints = endpoints.len(), "DNS answer changed the endpoints");
            d.table.store(Arc::new(Table::new(&d.balance, endpoints)));
        }
        tokio::time::sleep(wait).await;
    }
}

/// The connector's resolver: the system's, or a fixed address (a resolved endpoint's).
#[derive(Clone)]
pub(crate) struct Pinned {
    address: Option<IpAddr>,
    system: GaiResolver,
}

impl Pinned {
    pub(super) fn new(address: Option<IpAddr>) -> Pinned {
        Pinned {
            address,
            system: GaiResolver::new(),
        }
    }
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for Pinned {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.system.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        match self.address {
            // The connector puts the URL's port on it.
            Some(ip) => Box::pin(async move { Ok(vec![SocketAddr::new(ip, 0)].into_iter()) }),
            None => {
                let resolving = self.system.call(name);
                Box::pin(async move { Ok(resolving.await?.collect::<Vec<_>>().into_iter()) })
            }
        }
    }
}
