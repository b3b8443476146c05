//! The `IPPool` custom resource (`ippools.lb.dev`), and the CRD manifests generated from it.
//!
//! `deploy/crds/` holds the output of `lb crds`; a test fails when it is stale.

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of lb's own resources and annotations.
pub const GROUP: &str = "lb.dev";

/// A cluster-wide set of addresses that Services of type LoadBalancer get their VIPs from.
// Printer columns: `Addresses` is typed string because a column has no list type; the API
// server prints the list as JSON (`["198.18.100.0/28"]`). The counts come from the status
// the elected status writer keeps; the IPv6 ones show with `-o wide`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lb.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "lbpool",
    status = "IPPoolStatus",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses","description":"CIDRs, ranges and addresses of the pool"}"#,
    printcolumn = r#"{"name":"Auto Assign","type":"boolean","jsonPath":".spec.autoAssign","description":"Whether Services that name no pool get addresses from it"}"#,
    printcolumn = r#"{"name":"Assigned IPv4","type":"integer","jsonPath":".status.assignedIPv4","description":"IPv4 addresses of the pool held by Services"}"#,
    printcolumn = r#"{"name":"Available IPv4","type":"integer","jsonPath":".status.availableIPv4","description":"IPv4 addresses of the pool still free"}"#,
    printcolumn = r#"{"name":"Assigned IPv6","type":"integer","jsonPath":".status.assignedIPv6","priority":1,"description":"IPv6 addresses of the pool held by Services"}"#,
    printcolumn = r#"{"name":"Available IPv6","type":"integer","jsonPath":".status.availableIPv6","priority":1,"description":"IPv6 addresses of the pool still free (at most 2^63-1)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's addresses: CIDRs (`198.18.100.0/28`, `fd00:100::/120`), inclusive ranges
    /// (`198.18.100.10-198.18.100.20`) or single addresses, IPv4 or IPv6. Every address of
    /// a CIDR is usable, the network and broadcast addresses included. At least one entry;
    /// to drain a pool, delete it (its Services then get addresses from other pools, or none).
    pub addresses: Vec<String>,
    /// Hand out addresses to Services that name no pool. When false, only Services that
    /// name this pool (`metallb.io/address-pool`) or request one of its addresses get one.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Only Services whose labels match get addresses from this pool; all when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
}

fn default_true() -> bool {
    true
}

/// What the pool holds, kept by the elected status writer (the node that allocates): the
/// same four counts as MetalLB's `IPAddressPool` status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct IPPoolStatus {
    /// IPv4 addresses of this pool assigned to Services (a shared address counts once).
    #[serde(rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    /// IPv6 addresses of this pool assigned to Services (a shared address counts once).
    #[serde(rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    /// IPv4 addresses of this pool not assigned to any Service.
    #[serde(rename = "availableIPv4")]
    pub available_ipv4: i64,
    /// IPv6 addresses of this pool not assigned to any Service, at most 2^63-1 (a /64 has
    /// more than an int64 holds).
    #[serde(rename = "availableIPv6")]
    pub available_ipv6: i64,
}

/// The CRD's top-level description (kube's derive writes a placeholder).
const DESCRIPTION: &str = "IPPool is a cluster-wide pool of addresses that lb assigns to \
Services of type LoadBalancer (its loadBalancerClass, or none with default_class). A Service \
names a pool with the annotation metallb.io/address-pool, requests addresses with \
metallb.io/loadBalancerIPs or spec.loadBalancerIP, or gets one from a pool with autoAssign \
whose serviceSelector matches its labels.";

/// An address entry: an IPv4 or IPv6 address, optionally `/prefix` or `-last address`. The
/// daemon parses each one fully (and reports a bad pool in its log); this catches typos at
/// `kubectl apply`.
const ADDRESS_PATTERN: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)(/[0-9]{1,3}|-([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*))?$";

/// [`IPPool::crd`] with what the derive cannot express: the description, validation
/// (at least one address, each shaped like an address, range or CIDR; selector operators
/// from their enum) and `helm.sh/resource-policy: keep` (the chart installs the CRD as a
/// template, and `helm uninstall` must not delete every IPPool with it).
pub fn crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    let mut v = serde_json::to_value(IPPool::crd())?;
    v["metadata"]["annotations"] = serde_json::json!({"helm.sh/resource-policy": "keep"});
    let schema = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    schema["description"] = DESCRIPTION.into();
    let spec = &mut schema["properties"]["spec"]["properties"];
    let addresses = &mut spec["addresses"];
    addresses["minItems"] = 1.into();
    addresses["items"]["pattern"] = ADDRESS_PATTERN.into();
    addresses["items"]["maxLength"] = 91.into(); // two IPv6 addresses with a dash
    spec["serviceSelector"]["properties"]["matchExpressions"]["items"]["properties"]["operator"]
        ["enum"] = serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]);
    let status = &mut schema["properties"]["status"];
    status["description"] =
        "Kept by lb's status writer; counts of the pool's addresses per family.".into();
    for count in [
        "assignedIPv4",
        "assignedIPv6",
        "availableIPv4",
        "availableIPv6",
    ] {
        status["properties"][count]["minimum"] = 0.into();
    }
    serde_json::from_value(v)
}

/// Every CRD lb defines, as one multi-document YAML stream (what `lb crds` prints).
pub fn crds_yaml() -> anyhow::Result<String> {
    let body = serde_yaml::to_string(&crd()?)?;
    Ok(format!(
        "# Generated by `lb crds` from lb-userspace/src/kube/crd.rs; do not edit.\n---\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_assign_defaults_to_true() {
        let spec: IPPoolSpec =
            serde_json::from_str(r#"{"addresses":["198.18.100.0/28"]}"#).unwrap();
        assert!(spec.auto_assign);
        assert_eq!(spec.service_selector, None);
    }

    #[test]
    fn crd_is_cluster_scoped_with_a_status_subresource_and_validation() {
        let crd = crd().unwrap();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.plural, "ippools");
        assert_eq!(crd.metadata.name.as_deref(), Some("ippools.lb.dev"));
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some())
        );
        let v = serde_json::to_value(version).unwrap();
        let schema = &v["schema"]["openAPIV3Schema"];
        assert!(
            schema["description"]
                .as_str()
                .unwrap()
                .starts_with("IPPool is")
        );
        let addresses = &schema["properties"]["spec"]["properties"]["addresses"];
        assert_eq!(addresses["minItems"], 1);
        let columns: Vec<(String, String)> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            columns.contains(&("Age".into(), "date".into())),
            "{columns:?}"
        );
        assert!(columns.contains(&("Assigned IPv4".into(), "integer".into())));
        assert!(
            crd.metadata.annotations.unwrap()["helm.sh/resource-policy"] == "keep",
            "helm uninstall must not delete the IPPools"
        );
    }

    #[test]
    fn the_address_pattern_takes_what_the_daemon_parses() {
        let re = regex_lite(super::ADDRESS_PATTERN);
        for ok in [
            "198.18.100.0/28",
            "198.18.100.10-198.18.100.20",
            "198.18.100.7",
            "fd00:100::/120",
            "fd00::1-fd00::9",
            "::ffff:198.18.0.1",
        ] {
            assert!(re(ok), "{ok} should match");
        }
        for bad in [
            "",
            "eth0",
            "198.18.100.0/28 ",
            "198.18.100",
            "10.0.0.1/",
            "a-b",
        ] {
            assert!(!re(bad), "{bad:?} should not match");
        }
    }

    /// The pattern through a real regex engine (the API server uses Go's RE2; this one
    /// accepts the same syntax for these constructs).
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let re = regex::Regex::new(pattern).unwrap();
        move |s| re.is_match(s)
    }
}

/// The checked-in copies of [`crds_yaml`]: plain manifests and the Helm chart's `crds/`.
#[cfg(test)]
mod checked_in {
    use super::crds_yaml;

    const COPIES: [&str; 2] = [
        "deploy/crds/ippools.lb.dev.yaml",
        // Read by templates/crds.yaml (.Files.Get): a template, so `helm upgrade` upgrades it.
        "deploy/helm/lb/files/ippools.lb.dev.yaml",
    ];

    /// Fails when a copy is stale; `LB_UPDATE_CRDS=1` rewrites them instead.
    #[test]
    fn deploy_crds_match_the_rust_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let want = crds_yaml().unwrap();
        for rel in COPIES {
            let path = root.join(rel);
            if std::env::var_os("LB_UPDATE_CRDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &want).unwrap();
                continue;
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{rel} is stale (or missing): regenerate it with \
                 `cargo run -p lb-userspace --bin lb -- crds > {rel}` \
                 (or LB_UPDATE_CRDS=1 cargo test -p lb-userspace --lib checked_in)"
            );
        }
    }
}
