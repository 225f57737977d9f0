//! `google.api.http` path templates (google/api/http.proto, "Path template syntax"):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{name}` is `{name=*}`; `**` matches the rest of the path and may only end the template.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments, to the end of the path.
    Rest,
}

/// A variable: the field path it sets and the segments it covers (`start..end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: Vec<String>,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    verb: Option<String>,
}

impl Template {
    /// Parse `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or("a path template starts with '/'")?;
        // The verb is after the last ':' that is outside braces and past the last '/'.
        let (body, verb) = split_verb(rest);
        let mut template = Template {
            segments: Vec::new(),
            variables: Vec::new(),
            verb: verb.map(str::to_owned),
        };
        if let Some(verb) = verb
            && (verb.is_empty() || !verb.chars().all(literal_char))
        {
            return Err(format!("bad verb {verb:?}"));
        }
        let mut chars = body;
        loop {
            if let Some(after) = chars.strip_prefix('{') {
                let close = after.find('}').ok_or("a '{' without its '}'")?;
                let inner = &after[..close];
                if inner.contains('{') {
                    return Err("variables do not nest".into());
                }
                let (path, pattern) = match inner.split_once('=') {
                    Some((path, pattern)) => (path, pattern),
                    None => (inner, "*"),
                };
                let field_path: Vec<String> = path.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|p| !ident(p)) {
                    return Err(format!("{path:?} is not a field path"));
                }
                if template
                    .variables
                    .iter()
                    .any(|v| v.field_path == field_path)
                {
                    return Err(format!("field {path:?} is bound twice"));
                }
                let start = template.segments.len();
                for part in pattern.split('/') {
                    template.segments.push(segment(part)?);
                }
                template.variables.push(Variable {
                    field_path,
                    start,
                    end: template.segments.len(),
                });
                chars = &after[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let part = &chars[..end];
                if part.contains('{') || part.contains('}') {
                    return Err(format!("{part:?}: a variable takes a whole segment"));
                }
                template.segments.push(segment(part)?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(next) => chars = next,
                None if chars.is_empty() => break,
                None => return Err(format!("unexpected {chars:?} after a variable")),
            }
        }
        if let Some(at) = template.segments.iter().position(|s| *s == Segment::Rest)
            && at + 1 != template.segments.len()
        {
            return Err("'**' may only be the last segment".into());
        }
        Ok(template)
    }

    /// Literal segments: a template with more of them is preferred when several match.
    pub fn literals(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Match `path` (no query), giving each variable's value (percent-decoded, except `/` in
    /// a multi-segment value, as the spec says), or `None`.
    pub fn matches(&self, path: &str) -> Option<Vec<(&[String], String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let ends_with_rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(ends_with_rest);
        if parts.len() < fixed || (!ends_with_rest && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(l) => {
                    if decode(part)? != *l {
                        return None;
                    }
                }
                Segment::One => {
                    if part.is_empty() {
                        return None;
                    }
                }
                Segment::Rest => {}
            }
        }
        let mut values = Vec::with_capacity(self.variables.len());
        for v in &self.variables {
            let end = match self.segments.get(v.end - 1) {
                Some(Segment::Rest) => parts.len(),
                _ => v.end,
            };
            let covered = &parts[v.start..end];
            let value = match covered {
                [one] => decode(one)?,
                many => many.join("/"),
            };
            values.push((v.field_path.as_slice(), value));
        }
        Some(values)
    }
}

fn split_verb(rest: &str) -> (&str, Option<&str>) {
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let last_brace = rest.rfind('}').map_or(0, |i| i + 1);
    let from = last_slash.max(last_brace);
    match rest[from..].rfind(':') {
        Some(i) => (&rest[..from + i], Some(&rest[from + i + 1..])),
        None => (rest, None),
    }
}

fn segment(part: &str) -> Result<Segment, String> {
    match part {
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        "" => Err("an empty segment".into()),
        l if l.chars().all(literal_char) => Ok(Segment::Literal(l.to_owned())),
        l => Err(format!("{l:?} is not a literal segment")),
    }
}

fn literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=@%".contains(c)
}

fn ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Percent-decode one segment; `None` when it is not valid UTF-8 after decoding.
fn decode(part: &str) -> Option<String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        let t = Template::parse(t).unwrap();
        t.matches(path).map(|v| {
            v.into_iter()
                .map(|(f, value)| (f.join("."), value))
                .collect()
        })
    }

    #[test]
    fn variables_take_one_segment_or_their_pattern() {
        assert_eq!(
            vars(
                "/v1/shelves/{shelf}/books/{book.id}",
                "/v1/shelves/7/books/b%20c"
            ),
            Some(vec![
                ("shelf".into(), "7".into()),
                ("book.id".into(), "b c".into())
            ])
        );
        assert_eq!(
            vars("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(vec![("name".into(), "shelves/1/books/2".into())])
        );
        assert_eq!(vars("/v1/shelves/{shelf}", "/v1/shelves/1/books"), None);
        assert_eq!(vars("/v1/shelves/{shelf}", "/v1/shelves/"), None);
        assert_eq!(vars("/v1/shelves", "/v1/shelvez"), None);
    }

    #[test]
    fn double_star_takes_the_rest_and_verbs_end_the_path() {
        assert_eq!(
            vars("/v1/files/{path=**}", "/v1/files/a/b/c"),
            Some(vec![("path".into(), "a/b/c".into())])
        );
        assert_eq!(
            vars("/v1/shelves/{shelf}:clear", "/v1/shelves/3:clear"),
            Some(vec![("shelf".into(), "3".into())])
        );
        assert_eq!(vars("/v1/shelves/{shelf}:clear", "/v1/shelves/3"), None);
    }

    #[test]
    fn bad_templates_say_why() {
        for (bad, why) in [
            ("v1/x", "starts with '/'"),
            ("/v1/{x", "without its '}'"),
            ("/v1/{1x}", "not a field path"),
            ("/v1/**/x", "last segment"),
            ("/v1//x", "empty segment"),
            ("/v1/{a}/{a}", "bound twice"),
            ("/v1/a{b}", "whole segment"),
        ] {
            let err = Template::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
