//! Route matching: path (prefix, exact, or pattern with `{param}` captures), method and host;
//! and the path sent upstream (prefix strip or rewrite template).
//!
//! Routes are tried in config order; the first that matches wins. Paths are matched as sent,
//! without percent-decoding, so `/a%2Fb` never matches a pattern expecting `/a/b`.

use http::{HeaderMap, Method, Uri, header};

use crate::config::{PathMatch, Pattern, RouteConfig, Segment, Template, TemplatePart};

/// Path parameters a route captured, in pattern order.
pub type Params = Vec<(String, String)>;

/// The request attributes routes match on.
pub struct MatchInput<'a> {
    pub method: &'a Method,
    /// Lower-case host without port; empty when the request names none.
    pub host: &'a str,
    pub path: &'a str,
}

/// The captures when `route` accepts the request.
pub fn matches(route: &RouteConfig, input: &MatchInput<'_>) -> Option<Params> {
    if !method_and_host_match(&route.methods, route.host.as_deref(), input) {
        return None;
    }
    path_params(&route.path, input.path)
}

/// Captured parameters if `path` matches.
fn path_params(path_match: &PathMatch, path: &str) -> Option<Params> {
    match path_match {
        PathMatch::Prefix(prefix) => {
            let rest = path.strip_prefix(prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(Vec::new)
        }
        PathMatch::Exact(exact) => (path == exact).then(Vec::new),
        PathMatch::Pattern(p) => pattern_params(p, path),
    }
}

fn pattern_params(pattern: &Pattern, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut rest = path.strip_prefix('/')?;
    for (i, seg) in pattern.segments.iter().enumerate() {
        if let Segment::Rest(name) = seg {
            params.push((name.clone(), rest.to_string()));
            return Some(params);
        }
        let (part, tail) = match rest.split_once('/') {
            Some((part, tail)) => (part, Some(tail)),
            None => (rest, None),
        };
        match seg {
            Segment::Literal(lit) if lit == part => {}
            Segment::Param(name) if !part.is_empty() => {
                params.push((name.clone(), part.to_string()));
            }
            _ => return None,
        }
        match tail {
            Some(tail) => rest = tail,
            None => {
                // Path ended: the pattern must end here too, or continue only with `{*rest}`.
                return match pattern.segments.get(i + 1) {
                    None => Some(params),
                    Some(Segment::Rest(name)) => {
                        params.push((name.clone(), String::new()));
                        Some(params)
                    }
                    Some(_) => None,
                };
            }
        }
    }
    None
}

/// The template with parameters filled in.
fn render(template: &Template, params: &[(String, String)]) -> String {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            TemplatePart::Text(t) => out.push_str(t),
            TemplatePart::Param(name) => {
                if let Some((_, v)) = params.iter().find(|(k, _)| k == name) {
                    out.push_str(v);
                }
            }
        }
    }
    out
}

/// Whether a route's method and host conditions accept the request.
fn method_and_host_match(methods: &[Method], host: Option<&str>, input: &MatchInput<'_>) -> bool {
    if !methods.is_empty() && !methods.contains(input.method) {
        return false;
    }
    match host {
        None => true,
        Some(pattern) => match pattern.strip_prefix("*.") {
            Some(suffix) => input
                .host
                .strip_suffix(suffix)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => input.host == pattern,
        },
    }
}

/// The path and query the upstream receives, after prefix strip or rewrite.
pub fn upstream_path(route: &RouteConfig, uri: &Uri, params: &[(String, String)]) -> String {
    let path = uri.path();
    let rendered;
    let new_path = if let Some(template) = &route.rewrite {
        rendered = render(template, params);
        &rendered
    } else if route.strip_prefix {
        let prefix = match &route.path {
            PathMatch::Prefix(p) => p.as_str(),
            _ => "",
        };
        match path.strip_prefix(prefix).unwrap_or(path) {
            "" => "/",
            rest => rest,
        }
    } else {
        path
    };
    match uri.query() {
        Some(query) => [new_path, "?", query].concat(),
        None => new_path.to_owned(),
    }
}

/// The authority the client addressed: the URI's (HTTP/2, absolute-form) or the `Host` header.
pub fn request_authority(uri: &Uri, headers: &HeaderMap) -> String {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The host part of a `Host` header or authority, lower-cased, without port.
pub fn host_without_port(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        // IPv6 literal: keep through the closing bracket.
        authority.find(']').map_or(authority, |i| &authority[..=i])
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> PathMatch {
        PathMatch::Pattern(Pattern::parse(p).unwrap())
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let p = PathMatch::Prefix("/api".into());
        assert!(path_params(&p, "/api").is_some());
        assert!(path_params(&p, "/api/users").is_some());
        assert!(path_params(&p, "/apix").is_none());
        assert!(path_params(&PathMatch::Prefix(String::new()), "/anything").is_some());
    }

    #[test]
    fn patterns_capture_segments_and_rest() {
        let p = pattern("/users/{id}/orders/{order}");
        assert_eq!(
            path_params(&p, "/users/42/orders/7").unwrap(),
            vec![("id".into(), "42".into()), ("order".into(), "7".into())]
        );
        assert!(path_params(&p, "/users/42/orders").is_none());
        assert!(path_params(&p, "/users//orders/7").is_none());
        assert!(path_params(&p, "/users/42/orders/7/extra").is_none());

        let files = pattern("/files/{*path}");
        assert_eq!(
            path_params(&files, "/files/a/b.txt").unwrap(),
            vec![("path".into(), "a/b.txt".into())]
        );
        assert_eq!(
            path_params(&files, "/files").unwrap(),
            vec![("path".into(), String::new())]
        );
    }

    #[test]
    fn templates_render_captures() {
        let t = Template::parse("/v2/users/{id}/profile", &["id".into()]).unwrap();
        assert_eq!(
            render(&t, &[("id".into(), "42".into())]),
            "/v2/users/42/profile"
        );
    }

    #[test]
    fn host_wildcards_need_a_subdomain() {
        let input = |host| MatchInput {
            method: &Method::GET,
            host,
            path: "/",
        };
        let wild = Some("*.example.com");
        assert!(method_and_host_match(&[], wild, &input("api.example.com")));
        assert!(!method_and_host_match(&[], wild, &input("example.com")));
        assert!(!method_and_host_match(&[], wild, &input("badexample.com")));
        assert!(!method_and_host_match(&[Method::POST], None, &input("x")));
        assert_eq!(host_without_port("API.example.com:8080"), "api.example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
    }
}
