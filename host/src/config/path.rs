//! Path matches and rewrite templates as written in a route: parsed and checked here, matched
//! and rendered by the router (`crate::route`).

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

/// One segment of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches itself.
    Literal(String),
    /// Captures one non-empty segment.
    Param(String),
    /// Captures the remaining path (zero or more segments); only last.
    Rest(String),
}

/// A parsed path pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    /// The segments, in order.
    pub segments: Vec<Segment>,
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
}

/// A rewrite template such as `/v2/users/{id}`, filled with the route's captures.
#[derive(Debug, Clone)]
pub struct Template {
    /// Text and parameters, in order.
    pub parts: Vec<TemplatePart>,
}

/// One part of a [`Template`].
#[derive(Debug, Clone)]
pub enum TemplatePart {
    /// Copied as is.
    Text(String),
    /// Replaced by the capture of this name.
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
