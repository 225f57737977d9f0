//! Test configs built in code: services, routes and filter entries, rendered to the gateway's
//! TOML. Tests that are about the TOML itself (errors, places in the file) still write TOML.

use serde_json::Value;

/// A gateway config under construction. [`GatewayConfig::start`] fills in what every test
/// gateway needs (a free port, the built filters, an admin endpoint on a free port).
#[derive(Default, Clone)]
pub struct GatewayConfig {
    table: toml::Table,
}

impl GatewayConfig {
    pub fn new() -> GatewayConfig {
        GatewayConfig::default()
    }

    /// A service with these base URLs.
    pub fn service(mut self, name: &str, upstreams: &[String]) -> GatewayConfig {
        let services = self
            .table
            .entry("services")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let mut service = toml::Table::new();
        service.insert("upstreams".into(), to_toml(&upstreams));
        services
            .as_table_mut()
            .expect("services is a table")
            .insert(name.into(), toml::Value::Table(service));
        self
    }

    /// A route, after the ones added before it.
    pub fn route(mut self, route: Route) -> GatewayConfig {
        push(&mut self.table, "routes", route.table);
        self
    }

    /// Any other top-level key or table, e.g. `("server", json!({"max_headers": 10}))`.
    pub fn set(mut self, key: &str, value: Value) -> GatewayConfig {
        self.table.insert(key.into(), to_toml(&value));
        self
    }

    /// The config as TOML text.
    pub fn toml(&self) -> String {
        toml::to_string(&self.table).expect("a TOML table renders")
    }

    /// Start a gateway on this config.
    pub async fn start(self) -> crate::TestGateway {
        crate::TestGateway::start(&self.toml()).await
    }
}

/// A route entry.
#[derive(Clone)]
pub struct Route {
    table: toml::Table,
}

impl Route {
    fn with(name: &str, kind: &str, path: &str) -> Route {
        let mut table = toml::Table::new();
        table.insert("name".into(), name.into());
        table.insert(kind.into(), path.into());
        Route { table }
    }

    /// A route matching paths under `prefix`.
    pub fn prefix(name: &str, prefix: &str) -> Route {
        Route::with(name, "prefix", prefix)
    }

    /// A route matching exactly `path`.
    pub fn exact(name: &str, path: &str) -> Route {
        Route::with(name, "exact", path)
    }

    /// A route matching a `{param}` pattern.
    pub fn pattern(name: &str, pattern: &str) -> Route {
        Route::with(name, "pattern", pattern)
    }

    /// The service requests go to.
    pub fn service(self, service: &str) -> Route {
        self.set("service", Value::from(service))
    }

    /// The next filter of the chain.
    pub fn filter(mut self, filter: Filter) -> Route {
        push(&mut self.table, "filters", filter.table);
        self
    }

    /// Any other key of the route (`methods`, `host`, `rewrite`, `timeout`...).
    pub fn set(mut self, key: &str, value: Value) -> Route {
        self.table.insert(key.into(), to_toml(&value));
        self
    }
}

/// A filter entry of a route's chain.
#[derive(Clone)]
pub struct Filter {
    table: toml::Table,
}

impl Filter {
    /// The filter called `name` (its `.wasm` file stem), with no config.
    pub fn new(name: &str) -> Filter {
        let mut table = toml::Table::new();
        table.insert("name".into(), name.into());
        Filter { table }
    }

    /// The route's config for the filter.
    pub fn config(self, config: Value) -> Filter {
        self.set("config", config)
    }

    /// The services the route grants the filter.
    pub fn services(self, services: &[&str]) -> Filter {
        self.set("services", Value::from(services.to_vec()))
    }

    /// `on_failure = "fail-open"`.
    pub fn fail_open(self) -> Filter {
        self.set("on_failure", Value::from("fail-open"))
    }

    /// Per-entry limits, e.g. `json!({"deadline": "20ms"})`.
    pub fn limits(self, limits: Value) -> Filter {
        self.set("limits", limits)
    }

    /// Any other key of the entry.
    pub fn set(mut self, key: &str, value: Value) -> Filter {
        self.table.insert(key.into(), to_toml(&value));
        self
    }
}

/// Append `item` to the array of tables under `key`.
fn push(table: &mut toml::Table, key: &str, item: toml::Table) {
    table
        .entry(key)
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .expect("an array of tables")
        .push(toml::Value::Table(item));
}

fn to_toml(value: &impl serde::Serialize) -> toml::Value {
    toml::Value::try_from(value).expect("JSON without nulls converts to TOML")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_a_config_the_gateway_accepts() {
        let text = GatewayConfig::new()
            .service("svc", &["http://127.0.0.1:1".into()])
            .route(
                Route::prefix("api", "/api")
                    .service("svc")
                    .filter(
                        Filter::new("headers")
                            .config(json!({"request": {"set": {"x-a": "1"}}}))
                            .fail_open(),
                    )
                    .set("methods", json!(["GET"])),
            )
            .set("server", json!({"max_headers": 10}))
            .toml();
        let config = wasmgate::Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.routes[0].filters[0].name, "headers");
        assert_eq!(config.server.max_headers, 10);
    }
}
