//! Fault injection seen through kube-rs: injected 429/500, the server going down and
//! coming back with the same state, the request log.

mod common;

use common::{client_for, eventually, service, start};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde_json::json;

#[tokio::test]
async fn injected_429_is_retried_by_kube_rs_and_500_is_surfaced() {
    let f = start().await;
    f.server
        .create(&service("default", "a", json!({})))
        .unwrap();
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");

    // kube-rs 5's default client retries 429 (honouring Retry-After): the call succeeds.
    f.server.fail_next(2, 429);
    let got = api.get("a").await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("a"));
    let codes: Vec<u16> = f
        .server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/services/a"))
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [429, 429, 200]);

    // 500 is not retried: the error reaches the caller as a Status.
    f.server.fail_next(1, 500);
    match api.get("a").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
        other => panic!("expected a 500 Status, got {other:?}"),
    }
    assert!(api.get("a").await.is_ok(), "only one failure was injected");
}

#[tokio::test]
async fn down_then_up_serves_the_same_state() {
    let f = start().await;
    f.server
        .create(&service("default", "a", json!({})))
        .unwrap();
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    f.server.set_down(true);
    assert!(
        api.list(&ListParams::default()).await.is_err(),
        "requests fail while down"
    );
    let fresh = client_for(&f.url).await;
    let fresh_api: Api<Service> = Api::namespaced(fresh, "default");
    assert!(
        fresh_api.get("a").await.is_err(),
        "new connections fail while down"
    );
    // The store is still writable directly while down.
    f.server
        .create(&service("default", "b", json!({})))
        .unwrap();

    f.server.set_down(false);
    eventually("back up", || async {
        api.list(&ListParams::default()).await.is_ok()
    })
    .await;
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
}
