//! A small path syntax for JSON documents, used by the bundled `transform` and `aggregate`
//! filters and available to any filter.
//!
//! A path is object keys separated by dots; a segment of digits indexes an array:
//! `user.address.city`, `items.0.price`. The empty path is the whole document. Keys that
//! contain dots cannot be addressed.
//!
//! [`retain`] (allow-list filtering) walks through arrays: `orders.id` keeps the `id` of every
//! element of `orders`.

use serde_json::{Map, Value};

use crate::Error;

mod doc;
mod scan;

pub use doc::Doc;

/// One edit of a JSON body, for [`crate::Request::edit_json`] and
/// [`crate::Response::edit_json`] (the gateway runs them in the host) or [`edit_bytes`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// Rename the field at `from` to the key `to`, in the same object.
    Rename {
        /// Path of the field.
        from: String,
        /// Its new key.
        to: String,
    },
    /// Move the value at `from` to the path `to`.
    Move {
        /// Path of the value.
        from: String,
        /// Where it goes.
        to: String,
    },
    /// Remove the field at `path`.
    Remove {
        /// Path of the field.
        path: String,
    },
    /// Set the field at `path` to `value`, creating objects on the way.
    Set {
        /// Path of the field.
        path: String,
        /// Its value.
        value: Value,
    },
    /// Keep only these paths (see [`retain`]).
    Retain {
        /// The paths kept.
        paths: Vec<String>,
    },
}

/// Why a JSON body operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// There is no body: the filter did not declare it needs it
    /// ([`crate::Needs::request_body`] / [`crate::Needs::response_body`]).
    NoBody,
    /// The body is not valid JSON; says where.
    NotJson(String),
    /// An edit could not be applied (a path through a value that is not an object or array).
    Edit(String),
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonError::NoBody => f.write_str(
                "no body: declare Needs::request_body / Needs::response_body to read it",
            ),
            JsonError::NotJson(why) => write!(f, "the body is not JSON: {why}"),
            JsonError::Edit(why) => write!(f, "JSON edit failed: {why}"),
        }
    }
}

impl std::error::Error for JsonError {}

impl From<crate::__bindings::wasmgate::filter::types::JsonError> for JsonError {
    fn from(err: crate::__bindings::wasmgate::filter::types::JsonError) -> Self {
        use crate::__bindings::wasmgate::filter::types::JsonError as Wit;
        match err {
            Wit::NoBody => JsonError::NoBody,
            Wit::NotJson(why) => JsonError::NotJson(why),
            Wit::Edit(why) => JsonError::Edit(why),
        }
    }
}

/// `edits` applied, in order, to the JSON document `body`: the new document. Only the parts
/// the edits name are parsed ([`Doc`]); the host runs this same code for a filter's
/// [`crate::Request::edit_json`].
pub fn edit_bytes(body: Option<&[u8]>, edits: &[Edit]) -> Result<Vec<u8>, JsonError> {
    let body = body.ok_or(JsonError::NoBody)?;
    let mut doc = Doc::parse(body).map_err(|e| JsonError::NotJson(e.message().to_owned()))?;
    let failed = |e: Error| JsonError::Edit(e.message().to_owned());
    for edit in edits {
        match edit {
            Edit::Rename { from, to } => {
                doc.rename(from, to);
            }
            Edit::Move { from, to } => {
                if let Some(value) = doc.remove(from) {
                    doc.set(to, value).map_err(failed)?;
                }
            }
            Edit::Remove { path } => {
                doc.remove(path);
            }
            Edit::Set { path, value } => doc.set(path, value.clone()).map_err(failed)?,
            Edit::Retain { paths } => doc.retain(paths),
        }
    }
    Ok(doc.to_vec())
}

/// The value at `path` of the JSON document `body`, parsing only that part.
pub fn get_in(body: Option<&[u8]>, path: &str) -> Result<Option<Value>, JsonError> {
    let body = body.ok_or(JsonError::NoBody)?;
    let doc = Doc::parse(body).map_err(|e| JsonError::NotJson(e.message().to_owned()))?;
    Ok(doc.get(path))
}

/// The edits as the WIT contract carries them.
pub(crate) fn to_wit(edits: &[Edit]) -> Vec<crate::__bindings::wasmgate::filter::types::JsonEdit> {
    use crate::__bindings::wasmgate::filter::types::JsonEdit as Wit;
    edits
        .iter()
        .map(|edit| match edit {
            Edit::Rename { from, to } => Wit::Rename((from.clone(), to.clone())),
            Edit::Move { from, to } => Wit::Move((from.clone(), to.clone())),
            Edit::Remove { path } => Wit::Remove(path.clone()),
            Edit::Set { path, value } => Wit::Set((path.clone(), value.to_string())),
            Edit::Retain { paths } => Wit::Retain(paths.clone()),
        })
        .collect()
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('.').filter(|s| !s.is_empty())
}

/// The value at `path`.
pub fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    segments(path).try_fold(doc, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Remove and return the value at `path`.
pub fn remove(doc: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (get_mut(doc, parent)?, last),
        None => (doc, path),
    };
    match parent {
        Value::Object(m) => m.shift_remove(last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// Rename the object key at `path` to `new_key`, keeping its position among its siblings.
/// Returns whether the key was there.
pub fn rename(doc: &mut Value, path: &str, new_key: &str) -> bool {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => match get_mut(doc, parent) {
            Some(p) => (p, last),
            None => return false,
        },
        None => (doc, path),
    };
    let Value::Object(map) = parent else {
        return false;
    };
    if !map.contains_key(last) {
        return false;
    }
    let old = std::mem::take(map);
    for (k, v) in old {
        if k == last {
            map.insert(new_key.to_string(), v);
        } else if k != new_key {
            map.insert(k, v);
        }
    }
    true
}

fn get_mut<'a>(doc: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    segments(path).try_fold(doc, |v, seg| match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
        _ => None,
    })
}

/// Put `value` at `path`, creating missing objects on the way. The empty path replaces the
/// document. Fails when the way is blocked by a value that is not an object or array.
pub fn set(doc: &mut Value, path: &str, value: Value) -> Result<(), Error> {
    let segs: Vec<&str> = segments(path).collect();
    let Some((last, parents)) = segs.split_last() else {
        *doc = value;
        return Ok(());
    };
    let mut cur = doc;
    for seg in parents {
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        cur = match cur {
            Value::Object(m) => m.entry(seg.to_string()).or_insert(Value::Null),
            Value::Array(a) => {
                let i: usize = seg
                    .parse()
                    .map_err(|_| Error::msg(format!("{path}: {seg:?} is not an array index")))?;
                a.get_mut(i)
                    .ok_or_else(|| Error::msg(format!("{path}: index {i} is out of range")))?
            }
            _ => {
                return Err(Error::msg(format!(
                    "{path}: {seg:?} is not an object or array"
                )));
            }
        };
    }
    if cur.is_null() {
        *cur = Value::Object(Map::new());
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.to_string(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| Error::msg(format!("{path}: {last:?} is not an array index")))?;
            let slot = a
                .get_mut(i)
                .ok_or_else(|| Error::msg(format!("{path}: index {i} is out of range")))?;
            *slot = value;
            Ok(())
        }
        _ => Err(Error::msg(format!("{path}: cannot set inside a scalar"))),
    }
}

/// Keep only the fields named by `paths` (an allow-list); everything else is dropped. Arrays
/// are walked through, so `orders.id` keeps `id` in every element of `orders`.
pub fn retain(doc: &Value, paths: &[String]) -> Value {
    let split: Vec<Vec<&str>> = paths.iter().map(|p| segments(p).collect()).collect();
    let refs: Vec<&[&str]> = split.iter().map(Vec::as_slice).collect();
    retain_inner(doc, &refs)
}

pub(crate) fn retain_inner(doc: &Value, paths: &[&[&str]]) -> Value {
    if paths.iter().any(|p| p.is_empty()) {
        return doc.clone();
    }
    match doc {
        Value::Array(items) => Value::Array(items.iter().map(|v| retain_inner(v, paths)).collect()),
        Value::Object(m) => {
            let mut out = Map::new();
            for (key, value) in m {
                let below: Vec<&[&str]> = paths
                    .iter()
                    .filter(|p| p[0] == key)
                    .map(|p| &p[1..])
                    .collect();
                if !below.is_empty() {
                    out.insert(key.clone(), retain_inner(value, &below));
                }
            }
            Value::Object(out)
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_set_remove_follow_dots_and_indices() {
        let mut doc = json!({"user": {"id": 1, "tags": ["a", "b"]}});
        assert_eq!(get(&doc, "user.tags.1"), Some(&json!("b")));
        set(&mut doc, "user.address.city", json!("Oslo")).unwrap();
        assert_eq!(doc["user"]["address"]["city"], "Oslo");
        assert_eq!(remove(&mut doc, "user.id"), Some(json!(1)));
        assert_eq!(remove(&mut doc, "user.tags.0"), Some(json!("a")));
        assert!(set(&mut doc, "user.tags.0.x", json!(1)).is_err());
    }

    #[test]
    fn rename_keeps_the_key_in_place() {
        let mut doc = json!({"id": "3", "name": "Grace"});
        assert!(rename(&mut doc, "id", "userId"));
        assert_eq!(doc.to_string(), r#"{"userId":"3","name":"Grace"}"#);
        assert!(!rename(&mut doc, "missing", "x"));
    }

    #[test]
    fn retain_keeps_allowed_fields_through_arrays() {
        let doc = json!({"id": 1, "secret": "x", "orders": [{"id": 7, "card": "4111"}], "a": {"b": 1, "c": 2}});
        let kept = retain(&doc, &["id".into(), "orders.id".into(), "a.b".into()]);
        assert_eq!(kept, json!({"id": 1, "orders": [{"id": 7}], "a": {"b": 1}}));
    }
}
