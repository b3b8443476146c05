//! Kubernetes as a source of truth (`lb run --kube`): IP pools, Services of type
//! LoadBalancer with our `loadBalancerClass`, their EndpointSlices, Nodes, and the Leases
//! that elect one announcing node per VIP. Everything feeds the same [`crate::config::Config`]
//! model, plan and map writer as the static config file.

pub mod controller;
pub mod crd;
pub mod election;
pub mod ipam;
pub mod status;
#[cfg(test)]
mod test_support;
pub mod translate;
