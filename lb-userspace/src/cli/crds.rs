//! `lb crds`: the CustomResourceDefinitions lb uses, generated from its types (the source
//! of `deploy/crds/`).

pub fn crds() {
    print!("{}", crate::kube::crd::crds_yaml());
}
