//! Leaf paths of JSON objects and their `fieldsV1` encoding, for (simplified) field
//! ownership in server-side apply.
//!
//! A path descends through JSON objects only: lists and scalars are leaves (every list is
//! "atomic"), and so is an empty object.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// A path of object keys, e.g. `["spec", "ports"]`.
pub type Path = Vec<String>;

/// All leaf paths of `v`, below `prefix`.
pub fn leaf_paths(v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

/// Value at a path, if present.
pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path {
        cur = cur.as_object()?.get(seg)?;
    }
    Some(cur)
}

/// Remove the value at a path (no-op if absent); prunes objects left empty by it.
pub fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    fn rec(v: &mut Value, parents: &[String], last: &str) {
        let Some(m) = v.as_object_mut() else { return };
        match parents.split_first() {
            None => {
                m.remove(last);
            }
            Some((first, rest)) => {
                if let Some(child) = m.get_mut(first) {
                    rec(child, rest, last);
                    if child.as_object().is_some_and(Map::is_empty) {
                        m.remove(first);
                    }
                }
            }
        }
    }
    rec(v, parents, last);
}

/// Paths whose values differ between `a` and `b` (leaves of either side).
pub fn changed(a: &Value, b: &Value) -> BTreeSet<Path> {
    leaf_paths(a)
        .into_iter()
        .chain(leaf_paths(b))
        .filter(|p| get(a, p) != get(b, p))
        .collect()
}

/// Do two paths overlap (one is a prefix of the other)?
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Encode paths as `fieldsV1` (`{"f:spec":{"f:ports":{}}}`).
pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let mut cur = &mut root;
        for seg in p {
            cur = cur
                .as_object_mut()
                .expect("fieldsV1 nodes are objects")
                .entry(format!("f:{seg}"))
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

/// Decode `fieldsV1` into paths; keys other than `f:` (`k:`, `v:`, `.`) end a path there.
pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn rec(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let fields: Vec<(&str, &Value)> = v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, c)| k.strip_prefix("f:").map(|k| (k, c)))
                    .collect()
            })
            .unwrap_or_default();
        let other = v
            .as_object()
            .is_some_and(|m| m.keys().any(|k| !k.starts_with("f:")));
        if (fields.is_empty() || other) && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, c) in fields {
            prefix.push(k.to_string());
            rec(c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// Merge `src` into `dst`: objects recursively, everything else (lists included) replaced;
/// `null` in `src` is skipped.
pub fn merge_into(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, sv) in s {
                if sv.is_null() {
                    continue;
                }
                match d.get_mut(k) {
                    Some(dv) if dv.is_object() && sv.is_object() => merge_into(dv, sv),
                    _ => {
                        d.insert(k.clone(), sv.clone());
                    }
                }
            }
        }
        (d, s) => *d = s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roundtrip_fields_v1() {
        let v = json!({"spec": {"a": 1, "b": [1, 2], "c": {"d": "x"}, "e": {}}});
        let paths = leaf_paths(&v);
        assert_eq!(paths.len(), 4);
        let f = to_fields_v1(&paths);
        assert_eq!(f["f:spec"]["f:c"]["f:d"], json!({}));
        assert_eq!(from_fields_v1(&f), paths);
    }

    #[test]
    fn remove_prunes() {
        let mut v = json!({"spec": {"c": {"d": "x"}}, "k": 1});
        remove(&mut v, &["spec".into(), "c".into(), "d".into()]);
        assert_eq!(v, json!({"k": 1}));
    }
}
