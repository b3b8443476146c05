//! CustomResourceDefinitions register their types: lb's cluster-scoped IPPool
//! (`ippools.lb.dev/v1alpha1`) through `DynamicObject` and a small typed CustomResource.

mod common;

use common::{eventually, ippool_crd, start};
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher::{self, Event};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[kube(
    group = "lb.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools"
)]
#[serde(rename_all = "camelCase")]
struct IPPoolSpec {
    addresses: Vec<String>,
    #[serde(default)]
    auto_assign: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service_selector: Option<serde_json::Value>,
}

#[tokio::test]
async fn ippool_crd_then_custom_objects() {
    let f = start().await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("lb.dev", "v1alpha1", "IPPool"),
        "ippools",
    );
    let dynamic: Api<DynamicObject> = Api::all_with(f.client.clone(), &ar);
    // Before the CRD: the type is unknown.
    match dynamic.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404 before the CRD exists, got {other:?}"),
    }

    let crds: Api<CustomResourceDefinition> = Api::all(f.client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(ippool_crd()).unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conds = created.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    // Discovery shows the group.
    let groups = f.client.list_api_groups().await.unwrap();
    let lb = groups
        .groups
        .iter()
        .find(|g| g.name == "lb.dev")
        .expect("lb.dev in /apis");
    assert_eq!(lb.versions[0].version, "v1alpha1");
    let resources = f
        .client
        .list_api_group_resources("lb.dev/v1alpha1")
        .await
        .unwrap();
    let r = resources
        .resources
        .iter()
        .find(|r| r.name == "ippools")
        .unwrap();
    assert!(!r.namespaced);
    assert_eq!(r.kind, "IPPool");
    assert!(
        resources
            .resources
            .iter()
            .any(|r| r.name == "ippools/status")
    );

    let typed: Api<IPPool> = Api::all(f.client.clone());
    let mut events = watcher::watcher(typed.clone(), watcher::Config::default()).boxed();
    assert!(matches!(events.next().await.unwrap().unwrap(), Event::Init));
    assert!(matches!(
        events.next().await.unwrap().unwrap(),
        Event::InitDone
    ));

    let pool = DynamicObject::new("pool-a", &ar).data(json!({
        "spec": {"addresses": ["198.18.100.0/28"], "autoAssign": true,
                 "serviceSelector": {"matchLabels": {"lb.dev/pool": "a"}}}
    }));
    let p = dynamic.create(&PostParams::default(), &pool).await.unwrap();
    assert!(p.metadata.namespace.is_none(), "cluster-scoped");
    match events.next().await.unwrap().unwrap() {
        Event::Apply(p) => {
            assert_eq!(p.spec.addresses, ["198.18.100.0/28"]);
            assert!(p.spec.auto_assign);
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    let b = IPPool::new(
        "pool-b",
        IPPoolSpec {
            addresses: vec!["fd00:100::/120".into()],
            auto_assign: false,
            service_selector: None,
        },
    );
    typed
        .patch(
            "pool-b",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&b),
        )
        .await
        .unwrap();
    match events.next().await.unwrap().unwrap() {
        Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("pool-b")),
        other => panic!("expected Apply, got {other:?}"),
    }
    let names: Vec<String> = typed
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["pool-a", "pool-b"]);
    // Status subresource declared by the CRD: a status write leaves the spec alone.
    let st = dynamic
        .patch_status("pool-a", &PatchParams::apply("lb").force(), &Patch::Apply(json!({
            "apiVersion": "lb.dev/v1alpha1", "kind": "IPPool", "status": {"allocated": 3}, "spec": {"addresses": []}})))
        .await
        .unwrap();
    assert_eq!(st.data["status"]["allocated"], 3);
    assert_eq!(st.data["spec"]["addresses"], json!(["198.18.100.0/28"]));
    // Direct JSON access sees the same objects.
    assert_eq!(
        f.server
            .list_json("lb.dev/v1alpha1", "IPPool")
            .unwrap()
            .len(),
        2
    );

    // Deleting the CRD removes the type and its objects.
    crds.delete("ippools.lb.dev", &Default::default())
        .await
        .unwrap();
    eventually("type gone", || async { matches!(dynamic.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 404) }).await;
}
