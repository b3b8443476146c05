//! Direct access to the store for tests, without HTTP.
//!
//! Typed methods take any `k8s_openapi` resource type. Custom resources (kube
//! `CustomResource` types, which implement `kube::Resource` but not
//! `k8s_openapi::Resource`) go through the `*_json` variants: `serde_json::to_value` the
//! object, or build it with `serde_json::json!`. The resource type is looked up from
//! `apiVersion` and `kind`, so a CRD must have been created first.

use crate::FakeApiServer;
use crate::error::{ApiError, ApiResult};
use crate::ops::{self, DeleteOpts, ListQuery, PatchType, WriteOpts};
use crate::resources::ResourceInfo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

fn to_value<T: Serialize>(obj: &T) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::bad_request(format!("serializing: {e}")))
}

fn from_value<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::new(500, "InternalError", format!("deserializing: {e}")))
}

fn with_type<T: k8s_openapi::Resource>(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), Value::from(T::API_VERSION));
        m.insert("kind".into(), Value::from(T::KIND));
    }
    v
}

fn ns_name(v: &Value) -> (Option<String>, String) {
    (
        v["metadata"]["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

impl FakeApiServer {
    fn resource(&self, api_version: &str, kind: &str) -> ApiResult<Arc<ResourceInfo>> {
        self.inner
            .store
            .lock()
            .registry
            .find_kind(api_version, kind)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("no resource type for {api_version} {kind}"),
                )
            })
    }

    fn resource_of(&self, v: &Value) -> ApiResult<Arc<ResourceInfo>> {
        self.resource(
            v["apiVersion"].as_str().unwrap_or_default(),
            v["kind"].as_str().unwrap_or_default(),
        )
    }

    // ---- JSON variants ----

    /// Create an object (apiVersion and kind in the JSON). Unlike HTTP POST, `.status` is
    /// kept, so tests can seed objects in one call. Namespaced objects without a namespace
    /// go to `default`.
    pub fn create_json(&self, obj: Value) -> ApiResult<Value> {
        let res = self.resource_of(&obj)?;
        let (ns, _) = ns_name(&obj);
        let o = WriteOpts {
            keep_status: true,
            ..Default::default()
        };
        self.inner
            .store
            .with(|st| ops::create(st, &res, ns.as_deref(), obj, &o))
    }

    /// Get an object by apiVersion, kind, namespace (None for cluster-scoped) and name.
    pub fn get_json(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = self.resource(api_version, kind).ok()?;
        ops::get(&self.inner.store.lock(), &res, namespace, name).ok()
    }

    /// All objects of a type, all namespaces, ordered by namespace and name.
    pub fn list_json(&self, api_version: &str, kind: &str) -> ApiResult<Vec<Value>> {
        let res = self.resource(api_version, kind)?;
        let mut list = ops::list(&self.inner.store.lock(), &res, None, &ListQuery::default())?;
        Ok(match list["items"].take() {
            Value::Array(a) => a,
            _ => Vec::new(),
        })
    }

    /// Replace an object like HTTP PUT: 409 if its `metadata.resourceVersion` is set and
    /// stale; `.status` is ignored for types with a status subresource.
    pub fn replace_json(&self, obj: Value) -> ApiResult<Value> {
        let res = self.resource_of(&obj)?;
        let (ns, name) = ns_name(&obj);
        self.inner.store.with(|st| {
            ops::update(
                st,
                &res,
                ns.as_deref(),
                &name,
                obj,
                false,
                &WriteOpts::default(),
            )
        })
    }

    /// Replace only `.status`, like HTTP PUT on `/status` (resourceVersion checked if set).
    pub fn update_status_json(&self, obj: Value) -> ApiResult<Value> {
        let res = self.resource_of(&obj)?;
        let (ns, name) = ns_name(&obj);
        let sub = res.status;
        let o = WriteOpts {
            keep_status: !sub,
            ..Default::default()
        };
        self.inner
            .store
            .with(|st| ops::update(st, &res, ns.as_deref(), &name, obj, sub, &o))
    }

    /// Server-side apply (force) of the main resource by `field_manager`; creates if absent.
    pub fn apply_json(&self, obj: Value, field_manager: &str) -> ApiResult<Value> {
        self.apply_inner(obj, field_manager, false)
    }

    /// Server-side apply (force) of `.status` by `field_manager`.
    pub fn apply_status_json(&self, obj: Value, field_manager: &str) -> ApiResult<Value> {
        self.apply_inner(obj, field_manager, true)
    }

    fn apply_inner(&self, obj: Value, field_manager: &str, status: bool) -> ApiResult<Value> {
        let res = self.resource_of(&obj)?;
        let (ns, name) = ns_name(&obj);
        let body = serde_json::to_vec(&obj).expect("JSON values serialize");
        let o = WriteOpts {
            field_manager: Some(field_manager.into()),
            force: true,
            ..Default::default()
        };
        let sub = status && res.status;
        self.inner
            .store
            .with(|st| {
                ops::patch(
                    st,
                    &res,
                    ns.as_deref(),
                    &name,
                    PatchType::Apply,
                    &body,
                    sub,
                    &o,
                )
            })
            .map(|(v, _)| v)
    }

    /// Delete an object; returns its last state (or, with finalizers, the object now
    /// carrying a deletionTimestamp).
    pub fn delete_json(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Value> {
        let res = self.resource(api_version, kind)?;
        self.inner
            .store
            .with(|st| ops::delete(st, &res, namespace, name, &DeleteOpts::default()))
            .map(|(v, _)| v)
    }

    /// Load a multi-document YAML (or a JSON object / `List`) and server-side apply each
    /// object as manager `fake-apiserver` (so loading twice is idempotent).
    pub fn load_yaml(&self, text: &str) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize_yaml(doc)?;
            if v.is_null() {
                continue;
            }
            let items = if v["kind"].as_str().is_some_and(|k| k.ends_with("List"))
                && v["items"].is_array()
            {
                v["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![v]
            };
            for item in items {
                let status = item.get("status").cloned();
                let mut applied = self.apply_json(item.clone(), "fake-apiserver")?;
                if let Some(s) = status {
                    let mut with_status = applied.clone();
                    with_status["status"] = s;
                    with_status["metadata"]["resourceVersion"] = Value::Null;
                    applied = self.update_status_json(with_status)?;
                }
                out.push(applied);
            }
        }
        Ok(out)
    }

    // ---- typed ----

    /// Create a typed object (see [`create_json`](Self::create_json): `.status` is kept).
    pub fn create<T: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &T,
    ) -> ApiResult<T> {
        from_value(self.create_json(with_type::<T>(to_value(obj)?))?)
    }

    /// Get a typed object; `namespace` None for cluster-scoped types.
    pub fn get<T: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<T> {
        self.get_json(T::API_VERSION, T::KIND, namespace, name)
            .and_then(|v| from_value(v).ok())
    }

    /// All objects of a type across namespaces.
    pub fn list<T: k8s_openapi::Resource + DeserializeOwned>(&self) -> Vec<T> {
        self.list_json(T::API_VERSION, T::KIND)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| from_value(v).ok())
            .collect()
    }

    /// Replace like HTTP PUT (see [`replace_json`](Self::replace_json)).
    pub fn replace<T: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &T,
    ) -> ApiResult<T> {
        from_value(self.replace_json(with_type::<T>(to_value(obj)?))?)
    }

    /// Replace `.status` (see [`update_status_json`](Self::update_status_json)).
    pub fn update_status<T: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &T,
    ) -> ApiResult<T> {
        from_value(self.update_status_json(with_type::<T>(to_value(obj)?))?)
    }

    /// Server-side apply (force) of the main resource.
    pub fn apply<T: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &T,
        field_manager: &str,
    ) -> ApiResult<T> {
        from_value(self.apply_json(with_type::<T>(to_value(obj)?), field_manager)?)
    }

    /// Server-side apply (force) of `.status`.
    pub fn apply_status<T: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &T,
        field_manager: &str,
    ) -> ApiResult<T> {
        from_value(self.apply_status_json(with_type::<T>(to_value(obj)?), field_manager)?)
    }

    /// Delete a typed object.
    pub fn delete<T: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<T> {
        from_value(self.delete_json(T::API_VERSION, T::KIND, namespace, name)?)
    }
}

trait DeserializeYaml: Sized {
    fn deserialize_yaml(d: serde_yaml::Deserializer<'_>) -> ApiResult<Self>;
}

impl DeserializeYaml for Value {
    fn deserialize_yaml(d: serde_yaml::Deserializer<'_>) -> ApiResult<Self> {
        use serde::Deserialize;
        Value::deserialize(d).map_err(|e| ApiError::bad_request(format!("parsing YAML: {e}")))
    }
}
