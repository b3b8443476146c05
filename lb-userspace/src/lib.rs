//! lb's userspace: loading and programming the XDP data plane, and the pieces the `lb`
//! binary and the tests are built from.

pub mod announce;
pub mod backend;
pub mod bench;
pub mod cid_cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod kube;
pub mod kube_proxy_standin;
pub mod maglev;
pub mod map_batch;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod probe;
pub mod prober;
pub mod quic_lb;
pub mod testbed;
pub mod topology;
