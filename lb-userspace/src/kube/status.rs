//! Service status: `status.loadBalancer.ingress` and lb's conditions, written with
//! server-side apply on the status subresource, plus Events when a condition changes.
//!
//! Two conditions, so `kubectl describe svc` says what is wrong without reading lb's logs:
//! - `lb.dev/AddressAllocated`: whether the Service got its address(es), and if not why
//!   (reason `PoolExhausted`, `AddressInUse`, `PortConflict`, ...).
//! - `lb.dev/ConfigValid`: whether everything the Service asks for is programmable (reason
//!   `UnsupportedProtocol`, `InvalidQuicLbSecret`, `ServerIdCollision`, ...).
//! - `lb.dev/BGPAdvertised`, only on Services whose address BGP carries (a
//!   BGPAdvertisement selects its pool): `Advertised`, or `SpeakerConfigRejected` while
//!   the status writer's BGP speaker refuses the configuration lb rendered.

use std::net::IpAddr;

use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use serde_json::json;

/// Field manager of every write lb makes.
pub const FIELD_MANAGER: &str = "lb";
pub const COND_ALLOCATED: &str = "lb.dev/AddressAllocated";
pub const COND_VALID: &str = "lb.dev/ConfigValid";
pub const COND_BGP: &str = "lb.dev/BGPAdvertised";

/// One condition as lb wants it (the transition time is filled in on write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

/// What lb wants a Service's status to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedStatus {
    pub ingress: Vec<IpAddr>,
    pub conditions: Vec<Want>,
}

/// The addresses in a Service's `status.loadBalancer.ingress` (hostnames skipped).
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn current_condition<'a>(svc: &'a Service, type_: &str) -> Option<&'a Condition> {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
}

fn status_word(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// Whether the Service's status already is what lb wants (then nothing is written).
pub fn up_to_date(svc: &Service, want: &WantedStatus) -> bool {
    ingress_ips(svc) == want.ingress
        && want.conditions.iter().all(|w| {
            current_condition(svc, w.type_).is_some_and(|c| {
                c.status == status_word(w.ok) && c.reason == w.reason && c.message == w.message
            })
        })
}

/// The conditions that change status or reason with this write (what Events report).
pub fn transitions<'a>(svc: &Service, want: &'a WantedStatus) -> Vec<&'a Want> {
    want.conditions
        .iter()
        .filter(|w| {
            current_condition(svc, w.type_)
                .is_none_or(|c| c.status != status_word(w.ok) || c.reason != w.reason)
        })
        .collect()
}

/// Apply `want` to the status subresource (server-side apply, field manager `lb`).
pub async fn write(client: &Client, svc: &Service, want: &WantedStatus) -> kube::Result<()> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions: Vec<Condition> = want
        .conditions
        .iter()
        .map(|w| {
            // Keep the transition time while the status does not flip.
            let since = current_condition(svc, w.type_)
                .filter(|c| c.status == status_word(w.ok))
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: w.type_.to_owned(),
                status: status_word(w.ok).to_owned(),
                reason: w.reason.clone(),
                message: w.message.clone(),
                last_transition_time: since,
                observed_generation: svc.metadata.generation,
            }
        })
        .collect();
    let ingress: Vec<_> = want
        .ingress
        .iter()
        .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
        .collect();
    apply_status(
        client,
        svc,
        json!({"loadBalancer": {"ingress": ingress}, "conditions": conditions}),
    )
    .await
}

/// Server-side apply (field manager `lb`, forced) of `status` to the Service's status:
/// what lb applied before and leaves out now is removed.
async fn apply_status(
    client: &Client,
    svc: &Service,
    status: serde_json::Value,
) -> kube::Result<()> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "status": status,
    });
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Write an IPPool's counts on its `/status` subresource, by server-side apply (the status
/// writer owns these fields; nothing else writes them).
pub async fn write_pool(
    client: &Client,
    pool: &str,
    status: &super::crd::IPPoolStatus,
) -> kube::Result<()> {
    let patch = json!({
        "apiVersion": "lb.dev/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": pool},
        "status": status,
    });
    let api: Api<super::crd::IPPool> = Api::all(client.clone());
    api.patch_status(
        pool,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Record an Event on the Service for a condition change.
pub async fn event(recorder: &Recorder, svc: &Service, w: &Want) -> kube::Result<()> {
    let ev = Event {
        type_: if w.ok {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: w.reason.clone(),
        note: Some(w.message.clone()),
        action: match w.type_ {
            COND_ALLOCATED => "AllocateAddress".into(),
            COND_BGP => "AdvertiseBGP".into(),
            _ => "Program".into(),
        },
        secondary: None,
    };
    recorder.publish(&ev, &svc.object_ref(&())).await
}

/// Whether lb wrote this Service's status (it carries lb's condition).
pub fn written_by_lb(svc: &Service) -> bool {
    current_condition(svc, COND_ALLOCATED).is_some()
}

/// Take lb's address and conditions off a Service that is no longer lb's (its type or
/// loadBalancerClass changed): the address goes back to the pool.
pub async fn release(client: &Client, svc: &Service) -> kube::Result<()> {
    apply_status(
        client,
        svc,
        json!({"loadBalancer": {"ingress": []}, "conditions": []}),
    )
    .await
}
