//! Route matching: path (prefix, exact, or pattern with `{param}` captures), method and host.
//!
//! Routes are tried in config order; the first that matches wins. Paths are matched as sent,
//! without percent-decoding, so `/a%2Fb` never matches a pattern expecting `/a/b`.

use http::Method;

/// How a route matches the request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The path equals this prefix or continues it at a `/` boundary (`/api` matches `/api`,
    /// `/api/x`, not `/apix`). Stored without a trailing `/`; `""` matches every path.
    Prefix(String),
    /// The path equals this exactly.
    Exact(String),
    /// Segment pattern such as `/users/{id}/orders` or `/files/{*rest}`.
    Pattern(Pattern),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    /// Matches the remaining path (zero or more segments); only last.
    Rest(String),
}

/// A parsed path pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl Pattern {
    /// Parse `/a/{b}/{*c}`: `{name}` captures one non-empty segment, `{*name}` the rest.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let mut segments = Vec::new();
        let mut names = Vec::new();
        let parts: Vec<&str> = text.trim_start_matches('/').split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                let (rest, name) = match inner.strip_prefix('*') {
                    Some(name) => (true, name),
                    None => (false, inner),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "{{{inner}}} is not a parameter name (letters, digits, '_')"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("parameter {{{name}}} appears twice"));
                }
                names.push(name);
                if rest {
                    if i + 1 != parts.len() {
                        return Err(format!("{{*{name}}} must be the last segment"));
                    }
                    Segment::Rest(name.to_string())
                } else {
                    Segment::Param(name.to_string())
                }
            } else if part.contains(['{', '}']) {
                return Err(format!(
                    "segment {part:?}: a parameter must be a whole segment"
                ));
            } else {
                Segment::Literal(part.to_string())
            };
            segments.push(seg);
        }
        Ok(Pattern {
            source: text.to_string(),
            segments,
        })
    }

    /// Names of the parameters this pattern captures, in order.
    pub fn param_names(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) | Segment::Rest(n) => Some(n.clone()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        let mut rest = path.strip_prefix('/')?;
        for (i, seg) in self.segments.iter().enumerate() {
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
                    return match self.segments.get(i + 1) {
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
}

/// A rewrite template such as `/v2/users/{id}`, filled with the route's captures.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone)]
enum TemplatePart {
    Text(String),
    Param(String),
}

impl Template {
    /// Parse a template; every `{name}` must be one of `captured`.
    pub fn parse(text: &str, captured: &[String]) -> Result<Template, String> {
        if !text.starts_with('/') {
            return Err("must start with '/'".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| "unclosed '{'".to_string())?
                + open;
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_string()));
            }
            let name = &rest[open + 1..close];
            if !captured.iter().any(|c| c == name) {
                return Err(format!("{{{name}}} is not captured by the route's pattern"));
            }
            parts.push(TemplatePart::Param(name.to_string()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err("unmatched '}'".into());
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The template with parameters filled in.
    pub fn render(&self, params: &[(String, String)]) -> String {
        let mut out = String::new();
        for part in &self.parts {
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
}

impl PathMatch {
    /// Captured parameters if `path` matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        match self {
            PathMatch::Prefix(prefix) => {
                let rest = path.strip_prefix(prefix.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then(Vec::new)
            }
            PathMatch::Exact(exact) => (path == exact).then(Vec::new),
            PathMatch::Pattern(p) => p.matches(path),
        }
    }
}

/// The request attributes routes match on.
pub struct MatchInput<'a> {
    pub method: &'a Method,
    /// Lower-case host without port; empty when the request names none.
    pub host: &'a str,
    pub path: &'a str,
}

/// Whether a route's method and host conditions accept the request.
pub fn method_and_host_match(
    methods: &[Method],
    host: Option<&str>,
    input: &MatchInput<'_>,
) -> bool {
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
        assert!(p.matches("/api").is_some());
        assert!(p.matches("/api/users").is_some());
        assert!(p.matches("/apix").is_none());
        assert!(
            PathMatch::Prefix(String::new())
                .matches("/anything")
                .is_some()
        );
    }

    #[test]
    fn patterns_capture_segments_and_rest() {
        let p = pattern("/users/{id}/orders/{order}");
        assert_eq!(
            p.matches("/users/42/orders/7").unwrap(),
            vec![("id".into(), "42".into()), ("order".into(), "7".into())]
        );
        assert!(p.matches("/users/42/orders").is_none());
        assert!(p.matches("/users//orders/7").is_none());
        assert!(p.matches("/users/42/orders/7/extra").is_none());

        let files = pattern("/files/{*path}");
        assert_eq!(
            files.matches("/files/a/b.txt").unwrap(),
            vec![("path".into(), "a/b.txt".into())]
        );
        assert_eq!(
            files.matches("/files").unwrap(),
            vec![("path".into(), String::new())]
        );
    }

    #[test]
    fn bad_patterns_and_templates_are_explained() {
        assert!(
            Pattern::parse("/a/{*rest}/b")
                .unwrap_err()
                .contains("last segment")
        );
        assert!(
            Pattern::parse("/a/{id}/{id}")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            Pattern::parse("/a/x{id}")
                .unwrap_err()
                .contains("whole segment")
        );
        assert!(
            Template::parse("/v2/{nope}", &["id".into()])
                .unwrap_err()
                .contains("not captured")
        );
    }

    #[test]
    fn templates_render_captures() {
        let t = Template::parse("/v2/users/{id}/profile", &["id".into()]).unwrap();
        assert_eq!(
            t.render(&[("id".into(), "42".into())]),
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
