//! Constructors shared by the kube modules' unit tests.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

pub fn spec(s: &mut Service) -> &mut ServiceSpec {
    s.spec.as_mut().unwrap()
}

pub fn annotate(mut s: Service, key: &str, value: &str) -> Service {
    s.metadata
        .annotations
        .get_or_insert_default()
        .insert(key.into(), value.into());
    s
}
