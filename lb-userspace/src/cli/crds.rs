//! `lb crds`: the CustomResourceDefinitions lb uses, generated from its types (the source
//! of `deploy/crds/`).

use anyhow::{Context, Result};

pub fn crds() -> Result<()> {
    let yaml = crate::kube::crd::crds_yaml().context("serialising the CRDs to YAML")?;
    print!("{yaml}");
    Ok(())
}
