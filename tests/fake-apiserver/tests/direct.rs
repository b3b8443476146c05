//! The direct (no HTTP) API and store semantics: generateName, status handling,
//! finalizers, no-op writes, CRD-typed JSON access, YAML loading.

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use serde_json::json;

#[test]
fn generate_name_status_finalizers_and_noops() {
    let s = FakeApiServer::new();
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"generateName": "cfg-", "namespace": "kube-system"}}),
    )
    .unwrap();
    let made = s.create(&cm).unwrap();
    let name = made.metadata.name.clone().unwrap();
    assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");

    // Direct create keeps status; replace (like PUT) ignores it; update_status changes only it.
    let node: Node = serde_json::from_value(
        json!({"metadata": {"name": "n1", "finalizers": ["lb.dev/test"]},
        "spec": {"podCIDR": "10.0.0.0/24"}, "status": {"phase": "Running"}}),
    )
    .unwrap();
    let n = s.create(&node).unwrap();
    assert_eq!(n.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    let mut changed = n.clone();
    changed.status.as_mut().unwrap().phase = Some("Terminated".into());
    changed.spec.as_mut().unwrap().pod_cidr = Some("10.0.1.0/24".into());
    let r = s.replace(&changed).unwrap();
    assert_eq!(
        r.status.as_ref().unwrap().phase.as_deref(),
        Some("Running"),
        "PUT ignores status"
    );
    assert_eq!(r.metadata.generation, Some(2));
    let mut st = r.clone();
    st.status.as_mut().unwrap().phase = Some("Terminated".into());
    st.spec.as_mut().unwrap().pod_cidr = Some("192.0.2.0/24".into());
    let u = s.update_status(&st).unwrap();
    assert_eq!(
        u.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminated")
    );
    assert_eq!(
        u.spec.as_ref().unwrap().pod_cidr.as_deref(),
        Some("10.0.1.0/24"),
        "status write ignores spec"
    );
    // A stale resourceVersion conflicts.
    let err = s.update_status(&st).unwrap_err();
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    // A no-op replace writes nothing.
    let rv = s.resource_version();
    let same = s.replace(&u).unwrap();
    assert_eq!(same.metadata.resource_version, u.metadata.resource_version);
    assert_eq!(s.resource_version(), rv);

    // Finalizers: delete marks, removing the last finalizer deletes.
    let marked: Node = s.delete(None, "n1").unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(s.get::<Node>(None, "n1").is_some());
    let mut fin = s.get::<Node>(None, "n1").unwrap();
    fin.metadata.finalizers = None;
    s.replace(&fin).unwrap();
    assert!(s.get::<Node>(None, "n1").is_none());
}

#[test]
fn custom_resources_via_json_and_yaml_loading() {
    let s = FakeApiServer::new();
    let err = s
        .create_json(
            json!({"apiVersion": "lb.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "p"}}),
        )
        .unwrap_err();
    assert_eq!(err.code, 404, "unknown type before the CRD");
    let loaded = s
        .load_yaml(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: ippools.lb.dev}\n\
             spec:\n  group: lb.dev\n  scope: Cluster\n  names: {kind: IPPool, plural: ippools}\n\
             \x20 versions: [{name: v1alpha1, served: true, storage: true}]\n---\n\
             apiVersion: lb.dev/v1alpha1\nkind: IPPool\nmetadata: {name: p}\nspec: {addresses: [198.18.0.0/24]}\n",
        )
        .unwrap();
    assert_eq!(loaded.len(), 2);
    let p = s.get_json("lb.dev/v1alpha1", "IPPool", None, "p").unwrap();
    assert_eq!(p["spec"]["addresses"][0], "198.18.0.0/24");
    assert!(p["metadata"].get("namespace").is_none());
    // Applying again by the same manager with a field dropped removes it.
    let p2 = s
        .apply_json(json!({"apiVersion": "lb.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"autoAssign": false}}), "fake-apiserver")
        .unwrap();
    assert_eq!(p2["spec"], json!({"autoAssign": false}));
    assert_eq!(s.list_json("lb.dev/v1alpha1", "IPPool").unwrap().len(), 1);
    s.delete_json("lb.dev/v1alpha1", "IPPool", None, "p")
        .unwrap();
    assert!(s.list_json("lb.dev/v1alpha1", "IPPool").unwrap().is_empty());
}
