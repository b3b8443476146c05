//! coordination.k8s.io/v1 Leases: create, renew with optimistic concurrency, watch.

mod common;

use common::{start, within};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn lease(holder: &str) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "lb-vip-198-18-100-1", "namespace": "kube-system"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": "2025-01-01T00:00:00.000000Z", "renewTime": "2025-01-01T00:00:00.000000Z",
                 "leaseTransitions": 0}
    }))
    .unwrap()
}

#[tokio::test]
async fn lease_create_renew_conflict_and_watch() {
    let f = start().await;
    let api: Api<Lease> = Api::namespaced(f.client.clone(), "kube-system");
    let created = api
        .create(&PostParams::default(), &lease("node-a"))
        .await
        .unwrap();
    let rv0 = created.metadata.resource_version.clone().unwrap();
    let mut w = api
        .watch(&WatchParams::default(), &rv0)
        .await
        .unwrap()
        .boxed();

    // node-a renews (replace with its resourceVersion).
    let mut renew = created.clone();
    let t1 = MicroTime("2025-01-01T00:00:05.123456Z".parse().unwrap());
    renew.spec.as_mut().unwrap().renew_time = Some(t1.clone());
    let renewed = api
        .replace("lb-vip-198-18-100-1", &PostParams::default(), &renew)
        .await
        .unwrap();
    assert_eq!(renewed.spec.as_ref().unwrap().renew_time, Some(t1.clone()));

    // node-b read the old version and tries to take over: 409, and the lease stays node-a's.
    let mut takeover = created.clone();
    takeover.spec.as_mut().unwrap().holder_identity = Some("node-b".into());
    match api
        .replace("lb-vip-198-18-100-1", &PostParams::default(), &takeover)
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected 409, got {other:?}"),
    }
    // node-b re-reads and takes over properly.
    let mut fresh = api.get("lb-vip-198-18-100-1").await.unwrap();
    let spec = fresh.spec.as_mut().unwrap();
    spec.holder_identity = Some("node-b".into());
    spec.lease_transitions = Some(1);
    api.replace("lb-vip-198-18-100-1", &PostParams::default(), &fresh)
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 2 {
        match within("lease watch", w.next()).await.unwrap().unwrap() {
            WatchEvent::Modified(l) => seen.push(l.spec.unwrap()),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[0].holder_identity.as_deref(), Some("node-a"));
    assert_eq!(seen[0].renew_time, Some(t1));
    assert_eq!(seen[1].holder_identity.as_deref(), Some("node-b"));
    assert_eq!(seen[1].lease_transitions, Some(1));
    let stored: Lease = f
        .server
        .get(Some("kube-system"), "lb-vip-198-18-100-1")
        .unwrap();
    assert_eq!(
        stored.spec.unwrap().holder_identity.as_deref(),
        Some("node-b")
    );
}
