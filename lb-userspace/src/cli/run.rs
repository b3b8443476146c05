//! `lb run`: the daemon (`crate::daemon`), in static or Kubernetes mode.

use std::path::PathBuf;

use anyhow::Result;

use crate::{daemon, kube::controller::KubeOptions};

use super::enter_netns;

/// What `lb run` was given on the command line.
pub struct RunArgs {
    pub config: PathBuf,
    pub kube: bool,
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub control_socket: PathBuf,
    pub netns: Option<String>,
}

pub fn run(a: RunArgs) -> Result<()> {
    if let Some(name) = &a.netns {
        enter_netns(name)?;
    }
    let kube = a.kube.then(|| KubeOptions {
        kubeconfig: a.kubeconfig,
        node_name: a.node_name.unwrap_or_default(),
    });
    daemon::run(daemon::RunOptions {
        config: a.config,
        metrics_addr: a.metrics_addr,
        control_socket: a.control_socket,
        kube,
    })
}
