//! lb, the product: the daemon's library and the `lb` command. Loading and programming the
//! data plane (`dataplane`), the static config and its plan (`config`), the daemon
//! (`daemon`), VIP announcement (`announce`), metrics (`metrics`), the Kubernetes control
//! plane (`kube`) and the command line (`cli`). The lab (demo, whoami backend, probe,
//! benchmark, network-namespace test beds) is `lb-lab`, in `tests/lab/`; nothing here
//! imports it.

pub mod announce;
pub mod bgp;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod ifaces;
pub mod kube;
pub mod links;
pub mod mac;
pub mod maglev;
pub mod map_batch;
pub mod metrics;
pub mod ring_pool;
