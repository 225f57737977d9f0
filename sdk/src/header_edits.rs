//! Declarative header edits, as the bundled `headers` and `transform` filters take them from
//! config: remove, rename, set, add, applied in that order.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Context, Error, Headers};

/// Header edits for one direction, deserialized from a filter's config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Header names whose every value is removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// `old-name = "new-name"`: every value moves to the new name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Headers set to one value, replacing existing ones.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers added, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

/// Whether `name` is a valid HTTP header name (an RFC 9110 token).
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HeaderEdits {
    /// Only sets and adds (no removes, no renames): the edits need nothing of the message,
    /// so response edits can be made from the request phase with
    /// [`HeaderEdits::apply_for_response`], and the filter needs no response phase.
    pub fn only_writes(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty()
    }

    /// From the request phase: the `set` and `add` edits, in that order, for the response to
    /// this request (see [`Context::set_response_header`]). Removes and renames are not
    /// made: check [`HeaderEdits::only_writes`] first.
    pub fn apply_for_response(&self, ctx: &Context) {
        for (name, value) in &self.set {
            ctx.set_response_header(name, value);
        }
        for (name, value) in &self.add {
            ctx.append_response_header(name, value);
        }
    }

    /// No edits at all: applying them changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Reject invalid names, and values with CR, LF or NUL; `side` prefixes the message.
    pub fn validate(&self, side: &str) -> Result<(), Error> {
        let names = self
            .remove
            .iter()
            .chain(self.rename.keys())
            .chain(self.rename.values())
            .chain(self.set.keys())
            .chain(self.add.keys());
        for name in names {
            if !valid_header_name(name) {
                return Err(Error::msg(format!("{side}: invalid header name {name:?}")));
            }
        }
        for (name, value) in self.set.iter().chain(&self.add) {
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(Error::msg(format!(
                    "{side}: value of {name:?} contains a control character"
                )));
            }
        }
        Ok(())
    }

    /// Apply the edits: remove, rename, set, add.
    pub fn apply(&self, headers: &mut Headers) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (from, to) in &self.rename {
            let values: Vec<Vec<u8>> = headers.get_all(from).map(<[u8]>::to_vec).collect();
            if headers.remove(from) {
                headers.remove(to);
                for v in values {
                    headers.append(to, v);
                }
            }
        }
        for (name, value) in &self.set {
            headers.set(name, value.as_bytes());
        }
        for (name, value) in &self.add {
            headers.append(name, value.as_bytes());
        }
    }
}
