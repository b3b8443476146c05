//! The table of known resource types: built-in ones plus those registered by
//! CustomResourceDefinitions.

use serde_json::Value;
use std::sync::Arc;

/// One served resource type at one group/version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, `""` for core.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Plural (the URL segment), e.g. `services`.
    pub plural: String,
    /// Singular name, e.g. `service`.
    pub singular: String,
    /// Kind, e.g. `Service`.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `/status` subresource.
    pub status: bool,
    /// Short names for kubectl (`svc`).
    pub short_names: Vec<String>,
    /// The storage version of a CRD (first listed for built-ins); shown as preferred.
    pub preferred: bool,
}

impl ResourceInfo {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key shared by all versions: `plural` or `plural.group` (kubectl's spelling).
    pub fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `<Kind>List`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    status: bool,
    short: &[&str],
) -> Arc<ResourceInfo> {
    Arc::new(ResourceInfo {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        status,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        preferred: true,
    })
}

/// The built-in resources this fake serves.
pub fn builtins() -> Vec<Arc<ResourceInfo>> {
    vec![
        builtin("", "v1", "services", "Service", true, true, &["svc"]),
        builtin("", "v1", "nodes", "Node", false, true, &["no"]),
        builtin("", "v1", "pods", "Pod", true, true, &["po"]),
        builtin("", "v1", "secrets", "Secret", true, false, &[]),
        builtin("", "v1", "configmaps", "ConfigMap", true, false, &["cm"]),
        builtin("", "v1", "namespaces", "Namespace", false, true, &["ns"]),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            false,
            &["sa"],
        ),
        builtin("", "v1", "events", "Event", true, false, &["ev"]),
        builtin("", "v1", "endpoints", "Endpoints", true, false, &["ep"]),
        builtin(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            false,
            &[],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            false,
            &[],
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            false,
            &["ev"],
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
            &["crd", "crds"],
        ),
        builtin("apps", "v1", "daemonsets", "DaemonSet", true, true, &["ds"]),
        builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            true,
            &["deploy"],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            false,
            &[],
        ),
    ]
}

/// The resource types a CRD object (JSON) declares: one per served version.
pub fn from_crd(crd: &Value) -> Vec<Arc<ResourceInfo>> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let short_names: Vec<String> = names["shortNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        out.push(Arc::new(ResourceInfo {
            group: group.into(),
            version: name.into(),
            plural: plural.into(),
            singular: singular.clone(),
            kind: kind.into(),
            namespaced,
            status: v["subresources"].get("status").is_some(),
            short_names: short_names.clone(),
            preferred: v["storage"].as_bool().unwrap_or(false),
        }));
    }
    out
}

/// The registry: built-ins plus CRD-registered types.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    builtins: Vec<Arc<ResourceInfo>>,
    /// CRD name → its resource types.
    custom: Vec<(String, Vec<Arc<ResourceInfo>>)>,
}

impl Registry {
    /// A registry with the built-in types.
    pub fn new() -> Self {
        Registry {
            builtins: builtins(),
            custom: Vec::new(),
        }
    }

    /// All served resource types.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceInfo>> {
        self.builtins
            .iter()
            .chain(self.custom.iter().flat_map(|(_, v)| v.iter()))
    }

    /// Look up by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.all()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Look up by apiVersion (`group/version` or `v1`) and kind.
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        let (group, version) = split_api_version(api_version);
        self.all()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    /// Register (or re-register) the types of a CRD object.
    pub fn register_crd(&mut self, crd: &Value) {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let infos = from_crd(crd);
        self.custom.retain(|(n, _)| *n != name);
        if !infos.is_empty() {
            self.custom.push((name, infos));
        }
    }

    /// Forget the types of a deleted CRD; returns them.
    pub fn unregister_crd(&mut self, name: &str) -> Vec<Arc<ResourceInfo>> {
        let mut removed = Vec::new();
        self.custom.retain(|(n, v)| {
            if n == name {
                removed.extend(v.iter().cloned());
                false
            } else {
                true
            }
        });
        removed
    }

    /// API groups other than core, in registration order, each with its versions
    /// (preferred first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.all().filter(|r| !r.group.is_empty()) {
            let entry = match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some(e) => e,
                None => {
                    out.push((r.group.clone(), Vec::new()));
                    out.last_mut().expect("just pushed")
                }
            };
            if !entry.1.contains(&r.version) {
                if r.preferred {
                    entry.1.insert(0, r.version.clone());
                } else {
                    entry.1.push(r.version.clone());
                }
            }
        }
        out
    }
}

/// `"lb.dev/v1alpha1"` → `("lb.dev", "v1alpha1")`, `"v1"` → `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}
