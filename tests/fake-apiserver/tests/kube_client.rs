//! kube-rs client against the fake over real TCP: CRUD, selectors, paging, status apply,
//! optimistic concurrency.

mod common;

use common::{service, start};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch};
use serde_json::json;
use std::collections::BTreeSet;

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn services_create_list_get_patch_delete() {
    let f = start().await;
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    let created = api
        .create(
            &PostParams::default(),
            &service("default", "web", json!({"app": "web"})),
        )
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();

    let dup = api
        .create(
            &PostParams::default(),
            &service("default", "web", json!({})),
        )
        .await
        .unwrap_err();
    let s = api_err(dup);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));

    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let list_rv: u64 = list
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(list_rv >= rv1);

    let got = api.get("web").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);

    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "edge"}}})),
        )
        .await
        .unwrap();
    let rv2: u64 = patched
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);
    assert_eq!(patched.metadata.labels.as_ref().unwrap()["tier"], "edge");
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "a label change does not bump generation"
    );

    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/spec/ports/0/port", "value": 8443}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        8443
    );
    assert_eq!(
        patched.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );

    // A no-op patch writes nothing.
    let same = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "edge"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        patched.metadata.resource_version
    );

    api.delete("web", &DeleteParams::default()).await.unwrap();
    let s = api_err(api.get("web").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert!(f.server.get::<Service>(Some("default"), "web").is_none());
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let f = start().await;
    for (ns, name, labels) in [
        ("default", "a", json!({"app": "a", "env": "prod"})),
        ("default", "b", json!({"app": "b"})),
        ("other", "c", json!({"env": "dev"})),
    ] {
        f.server.create(&service(ns, name, labels)).unwrap();
    }
    let all: Api<Service> = Api::all(f.client.clone());
    let names = |l: kube::core::ObjectList<Service>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect()
    };
    let q = |sel: &str| ListParams::default().labels(sel);
    assert_eq!(
        names(all.list(&ListParams::default()).await.unwrap()),
        ["a", "b", "c"]
    );
    assert_eq!(names(all.list(&q("app=a")).await.unwrap()), ["a"]);
    assert_eq!(
        names(all.list(&q("app in (a,b)")).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(all.list(&q("app notin (a)")).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(names(all.list(&q("!app")).await.unwrap()), ["c"]);
    assert_eq!(names(all.list(&q("app,env!=prod")).await.unwrap()), ["b"]);
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.namespace=other"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.name!=a"))
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    let default: Api<Service> = Api::namespaced(f.client.clone(), "default");
    assert_eq!(
        names(default.list(&ListParams::default()).await.unwrap()),
        ["a", "b"]
    );
    let bad = default.list(&q("app in a")).await.unwrap_err();
    assert_eq!(api_err(bad).code, 400);
}

#[tokio::test]
async fn paging_returns_every_object_exactly_once() {
    let f = start().await;
    let mut want = BTreeSet::new();
    for i in 0..23 {
        let ns = if i % 2 == 0 { "default" } else { "other" };
        f.server
            .create(&service(ns, &format!("svc-{i:02}"), json!({"page": "yes"})))
            .unwrap();
        want.insert(format!("{ns}/svc-{i:02}"));
    }
    let api: Api<Service> = Api::all(f.client.clone());
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(5).labels("page=yes");
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 5);
        first_rv.get_or_insert(page.metadata.resource_version.clone());
        assert_eq!(
            Some(page.metadata.resource_version.clone()),
            first_rv,
            "every page is the same snapshot"
        );
        seen.extend(page.items.iter().map(|s| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap(),
                s.metadata.name.as_deref().unwrap()
            )
        }));
        // Writes between pages do not leak into the paged snapshot.
        // ("zz-" sorts after every paged object, so without a snapshot it would show up,
        // and the deleted object, not yet returned, would be missing.)
        f.server
            .create(&service(
                "other",
                &format!("zz-late-{pages}"),
                json!({"page": "yes"}),
            ))
            .unwrap();
        if pages == 1 {
            f.server.delete::<Service>(Some("other"), "svc-21").unwrap();
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), want.len(), "no duplicates: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), want);
}

#[tokio::test]
async fn apply_status_writes_and_replaces_load_balancer_ingress() {
    let f = start().await;
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &service("default", "web", json!({})),
    )
    .await
    .unwrap();
    let pp = PatchParams::apply("lb").force();
    let apply = |ip: &str| {
        Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
            "status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}}))
    };
    let s1 = api
        .patch_status("web", &pp, &apply("192.0.2.10"))
        .await
        .unwrap();
    let ingress = |s: &Service| -> Vec<String> {
        s.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip.unwrap())
            .collect()
    };
    assert_eq!(ingress(&s1), ["192.0.2.10"]);
    let s2 = api
        .patch_status("web", &pp, &apply("192.0.2.20"))
        .await
        .unwrap();
    assert_eq!(
        ingress(&s2),
        ["192.0.2.20"],
        "a second apply replaces the list"
    );
    assert_eq!(s2.spec, s1.spec, "a status apply leaves the spec alone");
    let mf = s2.metadata.managed_fields.unwrap();
    let lb = mf
        .iter()
        .find(|m| m.manager.as_deref() == Some("lb"))
        .expect("lb's managedFields entry");
    assert_eq!(lb.operation.as_deref(), Some("Apply"));
    assert_eq!(lb.subresource.as_deref(), Some("status"));
    assert!(
        lb.fields_v1.as_ref().unwrap().0["f:status"]["f:loadBalancer"]["f:ingress"].is_object()
    );
    assert_eq!(
        ingress(&api.get_status("web").await.unwrap()),
        ["192.0.2.20"]
    );

    // Without fieldManager an apply is rejected; on the main resource .status is ignored.
    let s = api_err(
        api.patch_status("web", &PatchParams::default(), &apply("192.0.2.30"))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 400);
    let main = api
        .patch("web", &PatchParams::apply("other").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"labels": {"x": "y"}}, "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}})))
        .await
        .unwrap();
    assert_eq!(ingress(&main), ["192.0.2.20"]);
    assert_eq!(main.metadata.labels.unwrap()["x"], "y");

    // Apply creates when absent, and dropping a field from the applied config removes it.
    let cfg = |labels: serde_json::Value| {
        Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "new", "labels": labels}, "spec": {"ports": [{"port": 80}]}}))
    };
    let created = api
        .patch(
            "new",
            &PatchParams::apply("mgr"),
            &cfg(json!({"a": "1", "b": "2"})),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.labels.unwrap().len(), 2);
    let updated = api
        .patch("new", &PatchParams::apply("mgr"), &cfg(json!({"a": "1"})))
        .await
        .unwrap();
    assert_eq!(
        updated.metadata.labels.unwrap().keys().collect::<Vec<_>>(),
        ["a"]
    );
    // Another manager changing mgr's field conflicts unless forced.
    let other = Patch::Apply(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "new", "labels": {"a": "9"}}}),
    );
    let s = api_err(
        api.patch("new", &PatchParams::apply("intruder"), &other)
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    let forced = api
        .patch("new", &PatchParams::apply("intruder").force(), &other)
        .await
        .unwrap();
    assert_eq!(forced.metadata.labels.unwrap()["a"], "9");
}

#[tokio::test]
async fn replace_with_stale_resource_version_conflicts() {
    let f = start().await;
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    let v1 = api
        .create(
            &PostParams::default(),
            &service("default", "web", json!({})),
        )
        .await
        .unwrap();
    let mut a = v1.clone();
    a.metadata.labels = Some([("who".to_string(), "a".to_string())].into());
    let v2 = api
        .replace("web", &PostParams::default(), &a)
        .await
        .unwrap();
    assert_ne!(v2.metadata.resource_version, v1.metadata.resource_version);
    let mut b = v1.clone();
    b.metadata.labels = Some([("who".to_string(), "b".to_string())].into());
    let s = api_err(
        api.replace("web", &PostParams::default(), &b)
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );
    assert_eq!(
        api.get("web").await.unwrap().metadata.labels.unwrap()["who"],
        "a"
    );
}

#[tokio::test]
async fn exact_list_from_history_and_410_after_compaction() {
    let f = start().await;
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    let a = api
        .create(&PostParams::default(), &service("default", "a", json!({})))
        .await
        .unwrap();
    let rv_a = a.metadata.resource_version.clone().unwrap();
    api.create(&PostParams::default(), &service("default", "b", json!({})))
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let exact = ListParams::default()
        .at(&rv_a)
        .matching(VersionMatch::Exact);
    let old = api.list(&exact).await.unwrap();
    assert_eq!(
        old.items
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(
        old.metadata.resource_version.as_deref(),
        Some(rv_a.as_str())
    );
    f.server.compact();
    let s = api_err(api.list(&exact).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}
