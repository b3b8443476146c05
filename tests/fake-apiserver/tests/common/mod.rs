//! Shared test helpers: start a fake server on 127.0.0.1, build a kube-rs client for it,
//! poll with a deadline.
#![allow(dead_code)]

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Fixture {
    pub server: FakeApiServer,
    pub url: String,
    pub client: kube::Client,
}

pub async fn client_for(url: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&FakeApiServer::kubeconfig(url))
        .expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube-rs accepts the kubeconfig");
    kube::Client::try_from(cfg).expect("client")
}

pub async fn start() -> Fixture {
    let server = FakeApiServer::new();
    server.set_bookmark_interval(Duration::from_millis(200));
    let addr = server
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{addr}");
    let client = client_for(&url).await;
    Fixture {
        server,
        url,
        client,
    }
}

/// Poll `f` until it returns true; panic with `what` after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Await a future with [`DEADLINE`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub fn service(ns: &str, name: &str, labels: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "lb.dev/lb",
                 "ports": [{"name": "h3", "port": 443, "protocol": "UDP"}]},
    }))
    .unwrap()
}

/// The IPPool CRD (cluster-scoped, lb.dev/v1alpha1), as lb defines it.
pub fn ippool_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ippools.lb.dev"},
        "spec": {
            "group": "lb.dev",
            "names": {"kind": "IPPool", "plural": "ippools", "singular": "ippool",
                      "shortNames": ["lbpool"], "listKind": "IPPoolList"},
            "scope": "Cluster",
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["addresses"], "properties": {
                        "addresses": {"type": "array", "items": {"type": "string"}},
                        "autoAssign": {"type": "boolean", "default": true},
                        "serviceSelector": {"type": "object", "nullable": true,
                            "x-kubernetes-preserve-unknown-fields": true}
                    }},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}}
            }]
        }
    })
}
