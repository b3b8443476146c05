//! API semantics on top of the store: get, list, create, update (PUT), patch, server-side
//! apply, delete. Shared by the HTTP front end and the direct (typed) API.

use crate::error::{ApiError, ApiResult};
use crate::fieldpath::{self, Path};
use crate::resources::ResourceInfo;
use crate::selectors::Selectors;
use crate::store::State;
use crate::util;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    /// `dryRun=All`: validate and compute, do not persist.
    pub dry_run: bool,
    /// `fieldManager` (or one derived from the User-Agent).
    pub field_manager: Option<String>,
    /// `force=true` (apply only).
    pub force: bool,
    /// Direct-API convenience: keep `.status` on create/update of the main resource.
    pub keep_status: bool,
}

/// Parameters of a list.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Label and field selectors.
    pub selectors: Selectors,
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub version_match: Option<String>,
}

/// Patch content types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (treated as a JSON merge patch).
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// From a Content-Type header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

fn ns_of(res: &ResourceInfo, ns: Option<&str>) -> String {
    if res.namespaced {
        ns.unwrap_or("default").to_string()
    } else {
        String::new()
    }
}

/// The object as served at `res`'s version (apiVersion/kind set).
pub fn present(res: &ResourceInfo, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(res.api_version()));
        m.insert("kind".into(), json!(res.kind));
    }
    obj
}

/// GET one object.
pub fn get(st: &State, res: &ResourceInfo, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    st.get(&res.key(), &ns_of(res, ns), name)
        .cloned()
        .map(|o| present(res, o))
        .ok_or_else(|| ApiError::not_found(&res.plural, &res.group, name))
}

fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let raw = json!({"rv": rv, "ns": ns, "name": name}).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(tok: &str) -> ApiResult<(u64, String, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    if !tok.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..tok.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&tok[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((
        v["rv"].as_u64().ok_or_else(bad)?,
        v["ns"].as_str().ok_or_else(bad)?.to_string(),
        v["name"].as_str().ok_or_else(bad)?.to_string(),
    ))
}

/// LIST, in one namespace or across all (`ns` None for cluster-wide or cluster-scoped).
pub fn list(st: &State, res: &ResourceInfo, ns: Option<&str>, q: &ListQuery) -> ApiResult<Value> {
    let key = res.key();
    let (snap_rv, start_after) = if let Some(tok) =
        q.continue_token.as_deref().filter(|t| !t.is_empty())
    {
        let (rv, ns, name) = decode_continue(tok)?;
        if rv < st.floor {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ));
        }
        (rv, Some((ns, name)))
    } else {
        match (q.version_match.as_deref(), q.resource_version.as_deref()) {
            (Some("Exact"), Some(rv)) => {
                let rv = parse_rv(rv)?;
                if rv > st.rv {
                    return Err(ApiError::new(
                        504,
                        "Timeout",
                        format!("Too large resource version: {rv}, current: {}", st.rv),
                    ));
                }
                (rv, None)
            }
            (Some("Exact" | "NotOlderThan"), None | Some("")) => {
                return Err(ApiError::invalid(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (Some("NotOlderThan") | None, Some(rv)) if !rv.is_empty() => {
                parse_rv(rv)?;
                (st.rv, None)
            }
            (Some(other), _) if other != "NotOlderThan" && other != "Exact" => {
                return Err(ApiError::invalid(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}"
                )));
            }
            _ => (st.rv, None),
        }
    };
    let mut items = Vec::new();
    let mut cont = None;
    let scope = ns.map(|n| ns_of(res, Some(n)));
    let start_after = start_after.as_ref().map(|(n, o)| (n.as_str(), o.as_str()));
    st.visit_at(&key, snap_rv, start_after, |(ons, _), obj| {
        if scope.as_deref().is_some_and(|s| s != ons) || !q.selectors.matches(obj) {
            return true;
        }
        if q.limit.is_some_and(|l| l > 0 && items.len() >= l) {
            // There is at least one more matching object: hand out a token after the last.
            let last: &Value = items.last().expect("limit > 0");
            let lns = last["metadata"]["namespace"].as_str().unwrap_or_default();
            let lname = last["metadata"]["name"].as_str().unwrap_or_default();
            cont = Some(encode_continue(snap_rv, lns, lname));
            return false;
        }
        items.push(present(res, obj.clone()));
        true
    })?;
    let mut meta = json!({"resourceVersion": snap_rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    Ok(json!({
        "kind": res.list_kind(),
        "apiVersion": res.api_version(),
        "metadata": meta,
        "items": items,
    }))
}

fn check_kind(res: &ResourceInfo, body: &Value) -> ApiResult<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    if let Some(k) = body.get("kind").and_then(Value::as_str)
        && !k.is_empty()
        && k != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            res.kind
        )));
    }
    if let Some(av) = body.get("apiVersion").and_then(Value::as_str)
        && !av.is_empty()
    {
        let (g, _) = crate::resources::split_api_version(av);
        if g != res.group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
    }
    Ok(())
}

/// The part of an object that field ownership tracks: everything except apiVersion, kind
/// and metadata, plus metadata.labels/annotations.
fn owned_part(obj: &Value) -> Value {
    let mut out = Map::new();
    for (k, v) in obj.as_object().into_iter().flatten() {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                let mut m = Map::new();
                for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(x) = v.get(mk) {
                        m.insert(mk.into(), x.clone());
                    }
                }
                if !m.is_empty() {
                    out.insert(k.clone(), Value::Object(m));
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// One `metadata.managedFields` entry, decoded.
#[derive(Clone, Debug)]
struct Managed {
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    time: String,
    paths: BTreeSet<Path>,
}

impl Managed {
    fn decode(obj: &Value) -> Vec<Managed> {
        obj["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| Managed {
                manager: e["manager"].as_str().unwrap_or_default().into(),
                operation: e["operation"].as_str().unwrap_or_default().into(),
                subresource: e["subresource"].as_str().unwrap_or_default().into(),
                api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                time: e["time"].as_str().unwrap_or_default().into(),
                paths: fieldpath::from_fields_v1(&e["fieldsV1"]),
            })
            .collect()
    }

    fn encode(entries: &[Managed]) -> Value {
        Value::Array(
            entries
                .iter()
                .filter(|e| !e.paths.is_empty())
                .map(|e| {
                    let mut v = json!({
                        "manager": e.manager,
                        "operation": e.operation,
                        "apiVersion": e.api_version,
                        "time": e.time,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": fieldpath::to_fields_v1(&e.paths),
                    });
                    if !e.subresource.is_empty() {
                        v["subresource"] = json!(e.subresource);
                    }
                    v
                })
                .collect(),
        )
    }
}

fn set_managed(obj: &mut Value, entries: &[Managed]) {
    let enc = Managed::encode(entries);
    if enc.as_array().is_some_and(Vec::is_empty) {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = enc;
    }
}

/// Record an `Update` operation by `manager` that changed `changed` paths: they move to it.
fn record_update(
    obj: &mut Value,
    res: &ResourceInfo,
    manager: &str,
    subresource: &str,
    changed: &BTreeSet<Path>,
) {
    if changed.is_empty() {
        return;
    }
    let mut entries = Managed::decode(obj);
    for e in entries.iter_mut() {
        e.paths.retain(|p| !changed.contains(p));
    }
    let now = util::now_rfc3339();
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
    {
        Some(e) => {
            e.paths.extend(changed.iter().cloned());
            e.time = now;
        }
        None => entries.push(Managed {
            manager: manager.into(),
            operation: "Update".into(),
            subresource: subresource.into(),
            api_version: res.api_version(),
            time: now,
            paths: changed.clone(),
        }),
    }
    set_managed(obj, &entries);
}

fn crd_status(obj: &mut Value) {
    let names = obj["spec"]["names"].clone();
    let now = util::now_rfc3339();
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": obj["spec"]["versions"].as_array().into_iter().flatten()
            .filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
}

const CRD_KEY: &str = "customresourcedefinitions.apiextensions.k8s.io";

fn after_write(st: &mut State, res: &ResourceInfo, obj: &Value) {
    if res.key() == CRD_KEY {
        st.registry.register_crd(obj);
    }
}

/// POST: create an object.
pub fn create(
    st: &mut State,
    res: &ResourceInfo,
    ns: Option<&str>,
    mut body: Value,
    o: &WriteOpts,
) -> ApiResult<Value> {
    check_kind(res, &body)?;
    let ns = ns_of(res, ns);
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    let meta = &mut body["metadata"];
    if res.namespaced {
        match meta["namespace"].as_str() {
            Some(b) if !b.is_empty() && b != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    let mut name = meta["name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() {
        let gen_name = meta["generateName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if gen_name.is_empty() {
            return Err(ApiError::invalid(format!(
                "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                res.kind
            )));
        }
        loop {
            name = format!("{gen_name}{}", util::name_suffix());
            if st.get(&res.key(), &ns, &name).is_none() {
                break;
            }
        }
        meta["name"] = json!(name);
    }
    if st.get(&res.key(), &ns, &name).is_some() {
        return Err(ApiError::already_exists(&res.plural, &res.group, &name));
    }
    if let Some(m) = meta.as_object_mut() {
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(k);
        }
        m.insert("uid".into(), json!(util::uid()));
        m.insert("creationTimestamp".into(), json!(util::now_rfc3339()));
        m.insert("generation".into(), json!(1));
    }
    if res.status
        && !o.keep_status
        && let Some(m) = body.as_object_mut()
    {
        m.remove("status");
    }
    if res.key() == CRD_KEY {
        crd_status(&mut body);
    }
    if let Some(mgr) = &o.field_manager
        && body["metadata"].get("managedFields").is_none()
    {
        let paths = fieldpath::leaf_paths(&owned_part(&body));
        record_update(&mut body, res, mgr, "", &paths);
    }
    let body = present(res, body);
    if o.dry_run {
        return Ok(body);
    }
    let stored = st.put(res, body, None);
    after_write(st, res, &stored);
    Ok(present(res, stored))
}

/// Compare two objects ignoring resourceVersion and managedFields timestamps.
fn same(a: &Value, b: &Value) -> bool {
    fn norm(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
                for e in mf {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("time");
                    }
                }
            }
        }
        if let Some(m) = v.as_object_mut() {
            m.remove("apiVersion");
        }
        v
    }
    norm(a) == norm(b)
}

fn spec_part(res: &ResourceInfo, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if res.status {
            m.remove("status");
        }
    }
    v
}

/// Turn a requested new state (`body`, a full object) into the candidate object: identity
/// from `old`, `.status` only via the status subresource, resourceVersion precondition.
fn prepare_update(
    res: &ResourceInfo,
    old: &Value,
    body: Value,
    sub_status: bool,
    o: &WriteOpts,
) -> ApiResult<Value> {
    check_kind(res, &body)?;
    let name = old["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(&res.plural, &res.group, name));
    }
    if let Some(bn) = body["metadata"]["name"].as_str()
        && !bn.is_empty()
        && bn != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({bn}) does not match the name on the URL ({name})"
        )));
    }
    if sub_status {
        let mut cand = old.clone();
        match body.get("status") {
            Some(s) if !s.is_null() => cand["status"] = s.clone(),
            _ => {
                if let Some(m) = cand.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        return Ok(cand);
    }
    let mut cand = body;
    if !cand["metadata"].is_object() {
        cand["metadata"] = json!({});
    }
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old["metadata"].get(k) {
            Some(v) => cand["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = cand["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if cand["metadata"].get("managedFields").is_none()
        && let Some(mf) = old["metadata"].get("managedFields")
    {
        cand["metadata"]["managedFields"] = mf.clone();
    }
    if res.status
        && !o.keep_status
        && let Some(m) = cand.as_object_mut()
    {
        match old.get("status") {
            Some(s) => {
                m.insert("status".into(), s.clone());
            }
            None => {
                m.remove("status");
            }
        }
    }
    Ok(cand)
}

/// Commit a candidate: generation, managed fields of an Update, finalizer-driven deletion,
/// no-op detection, store, CRD registration.
fn finish_update(
    st: &mut State,
    res: &ResourceInfo,
    old: Value,
    mut cand: Value,
    update_manager: Option<(&str, &str)>,
    o: &WriteOpts,
) -> ApiResult<Value> {
    if spec_part(res, &old) != spec_part(res, &cand) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        cand["metadata"]["generation"] = json!(g);
    }
    if let Some((mgr, sub)) = update_manager {
        let changed = fieldpath::changed(&owned_part(&old), &owned_part(&cand));
        record_update(&mut cand, res, mgr, sub, &changed);
    }
    if res.key() == CRD_KEY {
        let status = old.get("status").cloned();
        crd_status(&mut cand);
        if let Some(s) = status
            && s["acceptedNames"] == cand["spec"]["names"]
        {
            cand["status"] = s;
        }
    }
    let cand = present(res, cand);
    let ns = old["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = old["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let finalized = cand["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|d| !d.is_null())
        && cand["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
    if same(&old, &cand) && !finalized {
        return Ok(present(res, old));
    }
    if o.dry_run {
        return Ok(cand);
    }
    if finalized {
        st.put(res, cand, Some(old));
        let gone = st.remove(&res.key(), &ns, &name).expect("just written");
        return Ok(present(res, gone));
    }
    let stored = st.put(res, cand, Some(old));
    after_write(st, res, &stored);
    Ok(present(res, stored))
}

fn existing(st: &State, res: &ResourceInfo, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    st.get(&res.key(), &ns_of(res, ns), name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&res.plural, &res.group, name))
}

/// PUT: replace an object (or its status with `sub_status`).
pub fn update(
    st: &mut State,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    body: Value,
    sub_status: bool,
    o: &WriteOpts,
) -> ApiResult<Value> {
    let old = existing(st, res, ns, name)?;
    if body["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "name is required in the body of a PUT",
        ));
    }
    let cand = prepare_update(res, &old, body, sub_status, o)?;
    let sub = if sub_status { "status" } else { "" };
    finish_update(
        st,
        res,
        old,
        cand,
        o.field_manager.as_deref().map(|m| (m, sub)),
        o,
    )
}

fn parse_body(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).or_else(|_| {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))
    })
}

/// PATCH (merge, strategic-as-merge, JSON patch, or server-side apply). Returns the object
/// and whether it was created (apply only).
#[allow(clippy::too_many_arguments)]
pub fn patch(
    st: &mut State,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    ptype: PatchType,
    body: &[u8],
    sub_status: bool,
    o: &WriteOpts,
) -> ApiResult<(Value, bool)> {
    if ptype == PatchType::Apply {
        let cfg = parse_body(body)?;
        return apply(st, res, ns, name, cfg, sub_status, o);
    }
    let old = existing(st, res, ns, name)?;
    let mut doc = old.clone();
    match ptype {
        PatchType::Merge | PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, &p);
        }
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::invalid(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        PatchType::Apply => unreachable!("handled above"),
    }
    let cand = prepare_update(res, &old, doc, sub_status, o)?;
    let sub = if sub_status { "status" } else { "" };
    Ok((
        finish_update(
            st,
            res,
            old,
            cand,
            o.field_manager.as_deref().map(|m| (m, sub)),
            o,
        )?,
        false,
    ))
}

/// Server-side apply, simplified: every list is atomic (an applied list replaces the whole
/// list), maps merge key by key, ownership is tracked per leaf path in managedFields,
/// conflicts with other managers → 409 unless `force`.
fn apply(
    st: &mut State,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    cfg: Value,
    sub_status: bool,
    o: &WriteOpts,
) -> ApiResult<(Value, bool)> {
    let Some(manager) = o.field_manager.clone().filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    if !cfg.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    for f in ["apiVersion", "kind"] {
        if cfg.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "{f} must be set in an applied configuration"
            )));
        }
    }
    check_kind(res, &cfg)?;
    if let Some(n) = cfg["metadata"]["name"].as_str()
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let mut applied = owned_part(&cfg);
    if res.status
        && let Some(m) = applied.as_object_mut()
    {
        if sub_status {
            m.retain(|k, _| k == "status");
        } else {
            m.remove("status");
        }
    }
    let new_paths = fieldpath::leaf_paths(&applied);
    let sub = if sub_status { "status" } else { "" };
    let now = util::now_rfc3339();
    let mine = |e: &Managed| e.manager == manager && e.operation == "Apply" && e.subresource == sub;
    let Some(old) = st.get(&res.key(), &ns_of(res, ns), name).cloned() else {
        if sub_status {
            return Err(ApiError::not_found(&res.plural, &res.group, name));
        }
        let mut obj = applied.clone();
        obj["metadata"] = cfg["metadata"].clone();
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["name"] = json!(name);
        let entry = Managed {
            manager: manager.clone(),
            operation: "Apply".into(),
            subresource: String::new(),
            api_version: res.api_version(),
            time: now,
            paths: new_paths,
        };
        set_managed(&mut obj, &[entry]);
        let o2 = WriteOpts {
            field_manager: None,
            ..o.clone()
        };
        return Ok((create(st, res, ns, obj, &o2)?, true));
    };
    if let Some(rv) = cfg["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(&res.plural, &res.group, name));
    }
    let mut entries = Managed::decode(&old);
    let old_mine: BTreeSet<Path> = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.paths.iter().cloned())
        .collect();
    let mut cand = old.clone();
    for p in old_mine.difference(&new_paths) {
        let owned_by_other = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.paths.iter().any(|q| fieldpath::overlaps(p, q)));
        if !owned_by_other {
            fieldpath::remove(&mut cand, p);
        }
    }
    fieldpath::merge_into(&mut cand, &applied);
    // Conflicts: another manager's field that overlaps an applied one and changes value.
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        for q in &e.paths {
            if new_paths.iter().any(|p| fieldpath::overlaps(p, q))
                && fieldpath::get(&old, q) != fieldpath::get(&cand, q)
            {
                conflicts.push((e.manager.clone(), q.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !o.force {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": format!(".{}", p.join("."))}))
            .collect();
        let msg = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
            .collect::<Vec<_>>()
            .join("\n- ");
        let mut err = ApiError::new(
            409,
            "Conflict",
            format!("Apply failed with {} conflict(s): {msg}", conflicts.len()),
        );
        err.details =
            Some(json!({"name": name, "kind": res.plural, "group": res.group, "causes": causes}));
        return Err(err);
    }
    for e in entries.iter_mut().filter(|e| !mine(e)) {
        e.paths
            .retain(|q| !conflicts.iter().any(|(m, c)| *m == e.manager && c == q));
    }
    entries.retain(|e| !mine(e));
    entries.push(Managed {
        manager: manager.clone(),
        operation: "Apply".into(),
        subresource: sub.into(),
        api_version: res.api_version(),
        time: now,
        paths: new_paths,
    });
    set_managed(&mut cand, &entries);
    Ok((finish_update(st, res, old, cand, None, o)?, false))
}

/// `DeleteOptions` preconditions.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    /// `preconditions.resourceVersion`.
    pub rv: Option<String>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

impl DeleteOpts {
    /// From a DeleteOptions body (may be empty).
    pub fn from_body(body: &[u8], dry_run: bool) -> ApiResult<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DeleteOpts {
                dry_run,
                ..Default::default()
            });
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        let dry = dry_run || v["dryRun"].as_array().is_some_and(|a| !a.is_empty());
        Ok(DeleteOpts {
            rv: v["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
            uid: v["preconditions"]["uid"].as_str().map(str::to_string),
            dry_run: dry,
        })
    }
}

/// DELETE. Returns the object and whether deletion is pending on finalizers (HTTP 202).
pub fn delete(
    st: &mut State,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    d: &DeleteOpts,
) -> ApiResult<(Value, bool)> {
    let old = existing(st, res, ns, name)?;
    if d.rv
        .as_deref()
        .is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str())
    {
        return Err(ApiError::conflict(&res.plural, &res.group, name));
    }
    if d.uid
        .as_deref()
        .is_some_and(|u| Some(u) != old["metadata"]["uid"].as_str())
    {
        return Err(ApiError::conflict(&res.plural, &res.group, name));
    }
    if d.dry_run {
        return Ok((present(res, old), false));
    }
    if old["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        if old["metadata"].get("deletionTimestamp").is_some() {
            return Ok((present(res, old), true));
        }
        let mut cand = old.clone();
        cand["metadata"]["deletionTimestamp"] = json!(util::now_rfc3339());
        cand["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let stored = st.put(res, present(res, cand), Some(old));
        return Ok((present(res, stored), true));
    }
    let ns = ns_of(res, ns);
    let gone = st.remove(&res.key(), &ns, name).expect("exists");
    if res.key() == CRD_KEY {
        for r in st.registry.unregister_crd(name) {
            let keys: Vec<(String, String)> = st
                .objects
                .keys()
                .filter(|(k, _, _)| *k == r.key())
                .map(|(_, n, m)| (n.clone(), m.clone()))
                .collect();
            for (n, m) in keys {
                st.remove(&r.key(), &n, &m);
            }
        }
    }
    Ok((present(res, gone), false))
}

/// Resolve a resource type by group/version/plural.
pub fn resolve(st: &State, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
    st.registry.find(group, version, plural)
}
