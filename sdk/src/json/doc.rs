//! [`Doc`]: a JSON document opened only where it is read or changed.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::scan::{self, Index};
use crate::Error;

/// A JSON document that is parsed only along the paths a filter touches; every other part stays
/// the text it arrived as and is written back byte for byte.
///
/// Setting one field in a large body this way costs one validating pass over the text (no tree,
/// no allocation per value) and one copy out, instead of building a [`Value`] for every element
/// and printing them all again. The paths are those of the module's functions (`a.b.0.c`) and
/// the operations mean the same as [`super::get`], [`super::set`], [`super::remove`],
/// [`super::rename`] and [`super::retain`] on the parsed [`Value`].
///
/// ```
/// use wasmgate_sdk::json::Doc;
/// use serde_json::json;
///
/// let body = br#"{"user": {"id": 7}, "items": [1, 2, 3]}"#;
/// let mut doc = Doc::parse(body).unwrap();
/// doc.set("meta.via", json!("gateway")).unwrap();
/// doc.rename("user.id", "userId");
/// assert_eq!(doc.get("items.1"), Some(json!(2)));
/// // `items` was never opened: it is copied as it came, spaces included.
/// assert_eq!(
///     doc.to_vec(),
///     br#"{"user":{"userId":7},"items":[1, 2, 3],"meta":{"via":"gateway"}}"#
/// );
/// ```
///
/// [`Doc::parse`] checks the whole text as strictly as `serde_json` does (structure, strings,
/// escapes, UTF-8, number syntax, nesting depth), except that a number too large for an `f64` is
/// kept as written instead of refused.
#[derive(Debug)]
pub struct Doc<'a> {
    src: &'a [u8],
    index: Index,
    root: Node,
}

/// A part of the document: still text, opened one level, or a value the filter put there.
#[derive(Debug)]
enum Node {
    /// Untouched text: a byte range of the source holding one value.
    Raw(usize, usize),
    Object(Vec<(Key, Node)>),
    Array(Vec<Node>),
    Value(Value),
}

#[derive(Debug)]
enum Key {
    /// The byte range of the quoted key in the source, and whether it holds an escape.
    Raw(usize, usize, bool),
    Owned(String),
}

fn segments(path: &str) -> Vec<&str> {
    path.split('.').filter(|s| !s.is_empty()).collect()
}

/// Segments joined back into a path, to hand the rest of one to the [`Value`] functions.
fn join(segs: &[&str]) -> String {
    segs.join(".")
}

impl<'a> Doc<'a> {
    /// Check `src` and open it; nothing is parsed into values yet.
    pub fn parse(src: &'a [u8]) -> Result<Self, Error> {
        let ((start, end), index) = scan::validate(src)
            .map_err(|e| Error::msg(format!("invalid JSON at byte {}: {}", e.at, e.what)))?;
        Ok(Self {
            src,
            index,
            root: Node::Raw(start, end),
        })
    }

    /// The value at `path`, parsed from the text (only that part of it).
    pub fn get(&self, path: &str) -> Option<Value> {
        let segs = segments(path);
        let mut node = Place::Node(&self.root);
        for (n, seg) in segs.iter().enumerate() {
            node = match node {
                Place::Node(Node::Value(v)) => return super::get(v, &join(&segs[n..])).cloned(),
                Place::Node(Node::Object(members)) => {
                    Place::Node(&members.iter().find(|(k, _)| key_is(self.src, k, seg))?.1)
                }
                Place::Node(Node::Array(items)) => {
                    Place::Node(items.get(seg.parse::<usize>().ok()?)?)
                }
                Place::Node(Node::Raw(start, _)) => Place::Raw(self.raw_child(*start, seg)?),
                Place::Raw(start) => Place::Raw(self.raw_child(start, seg)?),
            };
        }
        Some(match node {
            Place::Node(node) => self.value_of(node),
            Place::Raw(start) => self.parse_raw(start, scan::skip(self.src, &self.index, start)),
        })
    }

    /// Put `value` at `path`, creating missing objects on the way (a `null` on the way becomes an
    /// object). The empty path replaces the document. Fails when the way is blocked by a value
    /// that is not an object or array.
    pub fn set(&mut self, path: &str, value: Value) -> Result<(), Error> {
        let segs = segments(path);
        let Some((last, parents)) = segs.split_last() else {
            self.root = Node::Value(value);
            return Ok(());
        };
        let (src, index) = (self.src, &self.index);
        let mut cur = &mut self.root;
        for (n, seg) in parents.iter().enumerate() {
            open(src, index, cur, true);
            cur = match cur {
                Node::Value(v) => return super::set(v, &join(&segs[n..]), value),
                Node::Object(members) => {
                    match members.iter().position(|(k, _)| key_is(src, k, seg)) {
                        Some(i) => &mut members[i].1,
                        None => {
                            members.push((Key::Owned(seg.to_string()), Node::Value(Value::Null)));
                            &mut members.last_mut().expect("just pushed").1
                        }
                    }
                }
                Node::Array(items) => index_mut(items, seg, path)?,
                Node::Raw(..) => {
                    return Err(Error::msg(format!(
                        "{path}: {seg:?} is not an object or array"
                    )));
                }
            };
        }
        open(src, index, cur, true);
        match cur {
            Node::Value(v) => super::set(v, last, value),
            Node::Object(members) => {
                let node = Node::Value(value);
                match members.iter().position(|(k, _)| key_is(src, k, last)) {
                    Some(i) => members[i].1 = node,
                    None => members.push((Key::Owned(last.to_string()), node)),
                }
                Ok(())
            }
            Node::Array(items) => {
                *index_mut(items, last, path)? = Node::Value(value);
                Ok(())
            }
            Node::Raw(..) => Err(Error::msg(format!("{path}: cannot set inside a scalar"))),
        }
    }

    /// Remove and return the value at `path`.
    pub fn remove(&mut self, path: &str) -> Option<Value> {
        let segs = segments(path);
        let (last, parents) = segs.split_last()?;
        let src = self.src;
        let removed = match self.open_path(parents)? {
            PlaceMut::Value(v, mut rest) => {
                rest.push(last);
                return super::remove(v, &join(&rest));
            }
            PlaceMut::Node(Node::Object(members)) => {
                let i = members.iter().position(|(k, _)| key_is(src, k, last))?;
                members.remove(i).1
            }
            PlaceMut::Node(Node::Array(items)) => {
                let i = last.parse::<usize>().ok().filter(|i| *i < items.len())?;
                items.remove(i)
            }
            PlaceMut::Node(_) => return None,
        };
        Some(self.take_value(removed))
    }

    /// Rename the object key at `path` to `new_key`, keeping its place among its siblings (a
    /// sibling already called `new_key` is dropped). Returns whether the key was there.
    pub fn rename(&mut self, path: &str, new_key: &str) -> bool {
        let segs = segments(path);
        let Some((last, parents)) = segs.split_last() else {
            return false;
        };
        let src = self.src;
        match self.open_path(parents) {
            Some(PlaceMut::Value(v, mut rest)) => {
                rest.push(last);
                super::rename(v, &join(&rest), new_key)
            }
            Some(PlaceMut::Node(Node::Object(members))) => {
                let Some(i) = members.iter().position(|(k, _)| key_is(src, k, last)) else {
                    return false;
                };
                if *last != new_key {
                    members[i].0 = Key::Owned(new_key.to_string());
                    let mut n = 0;
                    members.retain(|(k, _)| {
                        n += 1;
                        n - 1 == i || !key_is(src, k, new_key)
                    });
                }
                true
            }
            _ => false,
        }
    }

    /// Keep only the fields named by `paths` (an allow-list), walking through arrays, as
    /// [`super::retain`] does. Parts kept whole stay text.
    pub fn retain(&mut self, paths: &[String]) {
        let split: Vec<Vec<&str>> = paths.iter().map(|p| segments(p)).collect();
        let refs: Vec<&[&str]> = split.iter().map(Vec::as_slice).collect();
        let root = std::mem::replace(&mut self.root, Node::Value(Value::Null));
        self.root = self.retain_node(root, &refs);
    }

    /// The document as text: untouched parts as they came, the rest written compactly.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.src.len() + 64);
        self.write(&self.root, &mut out);
        out
    }

    /// The whole document as a [`Value`].
    pub fn to_value(&self) -> Value {
        self.value_of(&self.root)
    }

    fn retain_node(&self, mut node: Node, paths: &[&[&str]]) -> Node {
        if paths.iter().any(|p| p.is_empty()) {
            return node;
        }
        open(self.src, &self.index, &mut node, false);
        match node {
            Node::Value(v) => Node::Value(super::retain_inner(&v, paths)),
            Node::Array(items) => Node::Array(
                items
                    .into_iter()
                    .map(|n| self.retain_node(n, paths))
                    .collect(),
            ),
            Node::Object(members) => Node::Object(
                members
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let below: Vec<&[&str]> = paths
                            .iter()
                            .filter(|p| key_is(self.src, &k, p[0]))
                            .map(|p| &p[1..])
                            .collect();
                        (!below.is_empty()).then(|| (k, self.retain_node(v, &below)))
                    })
                    .collect(),
            ),
            Node::Raw(..) => Node::Value(Value::Null),
        }
    }

    /// Open the containers along `segs` (no inserting), down to the node at its end, or to a
    /// [`Value`] on the way with the segments still to walk in it.
    fn open_path<'s>(&'s mut self, segs: &[&'s str]) -> Option<PlaceMut<'s>> {
        let (src, index) = (self.src, &self.index);
        let mut cur = &mut self.root;
        for (n, seg) in segs.iter().enumerate() {
            open(src, index, cur, false);
            cur = match cur {
                Node::Value(v) => return Some(PlaceMut::Value(v, segs[n..].to_vec())),
                Node::Object(members) => {
                    let i = members.iter().position(|(k, _)| key_is(src, k, seg))?;
                    &mut members[i].1
                }
                Node::Array(items) => items.get_mut(seg.parse::<usize>().ok()?)?,
                Node::Raw(..) => return None,
            };
        }
        open(src, index, cur, false);
        Some(match cur {
            Node::Value(v) => PlaceMut::Value(v, Vec::new()),
            node => PlaceMut::Node(node),
        })
    }

    /// The start of the member `seg` of the raw object or array that opens at `start`.
    fn raw_child(&self, start: usize, seg: &str) -> Option<usize> {
        match self.src[start] {
            // The last of duplicate keys, as `serde_json` reads them.
            b'{' => Members::new(self.src, &self.index, start)
                .filter(|(k, _)| key_is(self.src, k, seg))
                .last()
                .map(|(_, (s, _))| s),
            b'[' => {
                let i = seg.parse::<usize>().ok()?;
                Members::new(self.src, &self.index, start)
                    .nth(i)
                    .map(|(_, (s, _))| s)
            }
            _ => None,
        }
    }

    fn parse_raw(&self, start: usize, end: usize) -> Value {
        serde_json::from_slice(&self.src[start..end]).unwrap_or(Value::Null)
    }

    fn value_of(&self, node: &Node) -> Value {
        match node {
            Node::Raw(s, e) => self.parse_raw(*s, *e),
            Node::Value(v) => v.clone(),
            Node::Array(items) => Value::Array(items.iter().map(|n| self.value_of(n)).collect()),
            Node::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (key_name(self.src, k).into_owned(), self.value_of(v)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    fn take_value(&self, node: Node) -> Value {
        match node {
            Node::Value(v) => v,
            node => self.value_of(&node),
        }
    }

    fn write(&self, node: &Node, out: &mut Vec<u8>) {
        match node {
            Node::Raw(s, e) => out.extend_from_slice(&self.src[*s..*e]),
            Node::Value(v) => serde_json::to_writer(&mut *out, v).expect("writing to a Vec"),
            Node::Array(items) => {
                out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    self.write(item, out);
                }
                out.push(b']');
            }
            Node::Object(members) => {
                out.push(b'{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    match k {
                        Key::Raw(s, e, _) => out.extend_from_slice(&self.src[*s..*e]),
                        Key::Owned(k) => {
                            serde_json::to_writer(&mut *out, k).expect("writing to a Vec")
                        }
                    }
                    out.push(b':');
                    self.write(v, out);
                }
                out.push(b'}');
            }
        }
    }
}

/// Where a read-only walk stands: at a node, or at the offset of a value inside raw text.
enum Place<'n> {
    Node(&'n Node),
    Raw(usize),
}

/// Where a walk that opens containers ends: at a node, or inside a value the filter put in.
enum PlaceMut<'n> {
    Node(&'n mut Node),
    /// A value the filter put in, and the path segments still to walk inside it.
    Value(&'n mut Value, Vec<&'n str>),
}

fn key_is(src: &[u8], key: &Key, name: &str) -> bool {
    key_name(src, key) == name
}

/// A key's text: borrowed from the source unless it holds an escape.
fn key_name<'s>(src: &'s [u8], key: &'s Key) -> Cow<'s, str> {
    match key {
        Key::Owned(k) => Cow::Borrowed(k),
        // Validated: UTF-8, so nothing is replaced.
        Key::Raw(s, e, false) => String::from_utf8_lossy(&src[s + 1..e - 1]),
        Key::Raw(s, e, true) => {
            Cow::Owned(serde_json::from_slice(&src[*s..*e]).unwrap_or_default())
        }
    }
}

fn index_mut<'n>(items: &'n mut [Node], seg: &str, path: &str) -> Result<&'n mut Node, Error> {
    let i: usize = seg
        .parse()
        .map_err(|_| Error::msg(format!("{path}: {seg:?} is not an array index")))?;
    items
        .get_mut(i)
        .ok_or_else(|| Error::msg(format!("{path}: index {i} is out of range")))
}

/// Open a raw object or array one level, in place. With `null_to_object`, a raw `null` (or a
/// `null` value) becomes an empty object, for [`Doc::set`] to create its way.
fn open(src: &[u8], index: &Index, node: &mut Node, null_to_object: bool) {
    let opened = match node {
        Node::Raw(s, e) => match src[*s] {
            b'{' => Node::Object(dedupe(
                src,
                Members::new(src, index, *s)
                    .map(|(k, (s, e))| (k, Node::Raw(s, e)))
                    .collect(),
            )),
            b'[' => Node::Array(
                Members::new(src, index, *s)
                    .map(|(_, (s, e))| Node::Raw(s, e))
                    .collect(),
            ),
            b'n' if null_to_object && &src[*s..*e] == b"null" => Node::Object(Vec::new()),
            _ => return,
        },
        Node::Value(Value::Null) if null_to_object => Node::Object(Vec::new()),
        _ => return,
    };
    *node = opened;
}

/// An object's members with each key once: the first place and the last value, as `serde_json`
/// reads duplicate keys. Without this, setting `role` in `{"role":"a","role":"a"}` would change
/// the first and leave the one the upstream reads.
fn dedupe(src: &[u8], mut members: Vec<(Key, Node)>) -> Vec<(Key, Node)> {
    let names: Vec<Cow<'_, str>> = members.iter().map(|(k, _)| key_name(src, k)).collect();
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    let mut later = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(&f) = first.get(name.as_ref()) {
            later.push((f, i));
        } else {
            first.insert(name, i);
        }
    }
    if later.is_empty() {
        return members;
    }
    for &(f, i) in &later {
        let value = std::mem::replace(&mut members[i].1, Node::Value(Value::Null));
        members[f].1 = value;
    }
    let mut n = 0;
    members.retain(|_| {
        n += 1;
        !later.iter().any(|&(_, i)| i == n - 1)
    });
    members
}

/// The members of a validated object (keys and value spans) or elements of an array (with a
/// placeholder key), in order.
struct Members<'s> {
    src: &'s [u8],
    index: &'s Index,
    object: bool,
    /// At the next member, or past the end.
    at: usize,
    end: usize,
}

impl<'s> Members<'s> {
    fn new(src: &'s [u8], index: &'s Index, start: usize) -> Self {
        let end = scan::skip(src, index, start) - 1;
        Self {
            src,
            index,
            object: src[start] == b'{',
            at: scan::skip_ws(src, start + 1),
            end,
        }
    }
}

impl Iterator for Members<'_> {
    type Item = (Key, (usize, usize));

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let key = if self.object {
            let (key_end, escaped) = scan::string_end(self.src, self.at);
            let key = Key::Raw(self.at, key_end, escaped);
            // Past the whitespace, the colon and the whitespace after it.
            self.at = scan::skip_ws(self.src, scan::skip_ws(self.src, key_end) + 1);
            key
        } else {
            Key::Owned(String::new())
        };
        let start = self.at;
        let end = scan::skip(self.src, self.index, start);
        let next = scan::skip_ws(self.src, end);
        self.at = if self.src[next] == b',' {
            scan::skip_ws(self.src, next + 1)
        } else {
            next
        };
        Some((key, (start, end)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::json;

    /// A document with the shapes the operations meet: nesting, arrays of objects, escapes in
    /// keys and strings, non-ASCII text, whitespace, a `null` and numbers of each syntax.
    const SAMPLE: &str = r#" {
        "user": {"id": 7, "name": "Ad\u00e5 \"A\"", "tags": ["a", "b"], "addr": null},
        "items": [ {"id": 1, "price": 12.5, "x": -0.5e-3}, {"id": 2, "price": 1E+2} ],
        "k\u0065y": "escaped key", "ключ": "значение", "n": null, "t": true, "f": false,
        "empty": {}, "none": []
    } "#;

    /// What the `Value` functions do to `SAMPLE`, and what `Doc` does, must be the same JSON.
    #[derive(Debug, Clone)]
    enum Op {
        Set(&'static str, Value),
        Remove(&'static str),
        Rename(&'static str, &'static str),
        Retain(&'static [&'static str]),
    }

    fn ops() -> Vec<Op> {
        use Op::*;
        vec![
            Set("meta.via", json!("gateway")),
            Set("user.id", json!({"n": 1})),
            Set("user.addr.city", json!("Oslo")),
            Set("n.deep.er", json!(1)),
            Set("items.1.price", json!(3)),
            Set("items.0.sub.x", json!([1])),
            Set("items.5", json!(1)),
            Set("items.x", json!(1)),
            Set("user.id.x", json!(1)),
            Set("t", json!(null)),
            Set("key", json!("changed")),
            Set("ключ", json!(2)),
            Set("", json!({"whole": true})),
            Remove("user.tags.0"),
            Remove("items.1"),
            Remove("key"),
            Remove("missing.path"),
            Remove("user.id.x"),
            Remove("items.9"),
            Rename("user.name", "fullName"),
            Rename("user.name", "id"),
            Rename("key", "ключ"),
            Rename("items.0.id", "itemId"),
            Rename("missing", "x"),
            Rename("user.tags", "tags"),
            Retain(&["user.id", "items.price", "ключ"]),
            Retain(&["user", "empty.x", "t.x"]),
            Retain(&["items"]),
        ]
    }

    fn apply_value(doc: &mut Value, op: &Op) -> String {
        match op {
            Op::Set(p, v) => format!(
                "{:?}",
                json::set(doc, p, v.clone()).map_err(|e| e.to_string())
            ),
            Op::Remove(p) => format!("{:?}", json::remove(doc, p)),
            Op::Rename(p, k) => format!("{:?}", json::rename(doc, p, k)),
            Op::Retain(paths) => {
                let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
                *doc = json::retain(doc, &paths);
                String::new()
            }
        }
    }

    fn apply_doc(doc: &mut Doc<'_>, op: &Op) -> String {
        match op {
            Op::Set(p, v) => format!("{:?}", doc.set(p, v.clone()).map_err(|e| e.to_string())),
            Op::Remove(p) => format!("{:?}", doc.remove(p)),
            Op::Rename(p, k) => format!("{:?}", doc.rename(p, k)),
            Op::Retain(paths) => {
                let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
                doc.retain(&paths);
                String::new()
            }
        }
    }

    /// Text as the `Value` path writes it, for comparing documents including key order.
    fn canonical(text: &[u8]) -> String {
        serde_json::from_slice::<Value>(text)
            .expect("valid JSON")
            .to_string()
    }

    #[test]
    fn each_operation_and_each_pair_matches_the_value_functions() {
        let ops = ops();
        let mut cases: Vec<Vec<Op>> = ops.iter().map(|op| vec![op.clone()]).collect();
        for a in &ops {
            for b in &ops {
                cases.push(vec![a.clone(), b.clone()]);
            }
        }
        for case in cases {
            let mut value: Value = serde_json::from_str(SAMPLE).unwrap();
            let mut doc = Doc::parse(SAMPLE.as_bytes()).unwrap();
            for op in &case {
                let (a, b) = (apply_value(&mut value, op), apply_doc(&mut doc, op));
                assert_eq!(a, b, "result of {op:?} in {case:?}");
            }
            assert_eq!(canonical(&doc.to_vec()), value.to_string(), "{case:?}");
            assert_eq!(doc.to_value(), value, "{case:?}");
            for path in [
                "user.name",
                "items.1.price",
                "key",
                "ключ",
                "user.tags.1",
                "nope",
                "",
            ] {
                assert_eq!(
                    doc.get(path),
                    json::get(&value, path).cloned(),
                    "{path} after {case:?}"
                );
            }
        }
    }

    #[test]
    fn untouched_parts_are_copied_as_they_came() {
        let mut doc = Doc::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(doc.to_vec(), SAMPLE.trim().as_bytes());
        doc.set("meta", json!(1)).unwrap();
        let out = String::from_utf8(doc.to_vec()).unwrap();
        assert!(
            out.contains(
                r#""items":[ {"id": 1, "price": 12.5, "x": -0.5e-3}, {"id": 2, "price": 1E+2} ]"#
            ),
            "{out}"
        );
        assert!(out.contains(r#""k\u0065y":"escaped key""#), "{out}");
        assert!(out.ends_with(r#","meta":1}"#), "{out}");
    }

    #[test]
    fn duplicate_keys_read_and_change_as_serde_reads_them() {
        let body = br#"{"role":"admin","x":1,"role":"root"}"#;
        let doc = Doc::parse(body).unwrap();
        assert_eq!(doc.get("role"), Some(json!("root")));
        let mut doc = Doc::parse(body).unwrap();
        doc.set("role", json!("user")).unwrap();
        assert_eq!(doc.to_vec(), br#"{"role":"user","x":1}"#);
    }

    /// Acceptance must match `serde_json`'s, on hand-picked documents and on a few thousand
    /// mutations of `SAMPLE` (a byte replaced, dropped or doubled).
    #[test]
    fn accepts_what_serde_json_accepts() {
        let hand = [
            "",
            " ",
            "1",
            "-",
            "-0",
            "01",
            "1.",
            "1.5e",
            "1e+5",
            ".5",
            "tru",
            "true ",
            "nulll",
            "\"a",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\ud800\\udc00\"",
            "\"\\udc00\"",
            "\"\t\"",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{,}",
            "{\"a\":1,}",
            "[]",
            "{}",
            "[1 2]",
            "{\"a\" 1}",
            "[[[]]]",
            "]",
            "\"\u{7f}\"",
            "1 2",
        ];
        let mut inputs: Vec<Vec<u8>> = hand.iter().map(|s| s.as_bytes().to_vec()).collect();
        inputs.push(
            [b'['; 127]
                .iter()
                .chain([b']'; 127].iter())
                .copied()
                .collect(),
        );
        inputs.push(
            [b'['; 128]
                .iter()
                .chain([b']'; 128].iter())
                .copied()
                .collect(),
        );
        inputs.push(b"\"\xff\"".to_vec());
        inputs.push(b"\"\xc3\xa5\"".to_vec());
        let alphabet = b"{}[]\",:\\u0123456789eE+-. tfnrl\x01\xc3\xa5ab";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..4000 {
            let mut text = SAMPLE.as_bytes().to_vec();
            for _ in 0..1 + next(2) {
                let at = next(text.len());
                match next(3) {
                    0 => text[at] = alphabet[next(alphabet.len())],
                    1 => {
                        text.remove(at);
                    }
                    _ => text.insert(at, text[at]),
                }
            }
            inputs.push(text);
        }
        let mut rejected = 0;
        for input in &inputs {
            let serde = serde_json::from_slice::<Value>(input);
            if serde
                .as_ref()
                .is_err_and(|e| e.to_string().contains("number out of range"))
            {
                continue;
            }
            let ours = Doc::parse(input);
            assert_eq!(
                ours.is_ok(),
                serde.is_ok(),
                "{:?}: ours {:?}, serde_json {:?}",
                String::from_utf8_lossy(input),
                ours.err().map(|e| e.to_string()),
                serde.err()
            );
            rejected += usize::from(ours.is_err());
        }
        assert!(
            rejected > 1000,
            "the mutations make invalid documents: {rejected}"
        );
    }
}
