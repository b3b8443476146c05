//! lb's lab: everything that exercises lb without being part of it. The demo (`lb-lab demo`),
//! a whoami HTTP/3 + HTTP/1.1 backend that issues QUIC-LB connection IDs (`lb-lab backend`,
//! also the pod of the Kubernetes examples), a probe client (`lb-lab probe`), the data-plane
//! benchmark (`lb-lab bench`), and the test beds the kernel and end-to-end tests run in:
//! network namespaces (`netns`), the BGP/ECMP lab (`bgp_lab`, its client `ecmp_client`, its
//! measurements `bgp_scenarios`, and `lb-lab demo-bgp`: `demo_bgp`), the one-node BPF_PROG_TEST_RUN bed (`testbed`), the
//! end-to-end network (`topology`) with a kube-proxy stand-in (`kube_proxy_standin`) and
//! kubelet-style probes (`prober`), and a packet builder and parser (`packet`).
//!
//! It depends on `lb-userspace` (the product); the product never depends on it.

pub mod backend;
pub mod bench;
pub mod bgp_lab;
pub mod bgp_scenarios;
pub mod children;
pub mod cli;
pub mod control_plane_bench;
pub mod demo;
pub mod demo_bgp;
pub mod ecmp_client;
pub mod kube_proxy_standin;
pub mod membership_bench;
pub mod netns;
pub mod packet;
pub mod probe;
pub mod prober;
pub mod quic_lb;
pub mod testbed;
pub mod topology;
