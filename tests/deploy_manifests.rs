//! The Kubernetes deployment artifacts under `deploy/`: every YAML document parses, every
//! Kubernetes object deserializes into its real API type without losing a field, the
//! DaemonSet runs `lb` with flags `lb run --help` knows, the ConfigMap holds a kube-mode
//! lb.toml, RBAC grants exactly what the daemon calls, the examples are consistent with
//! each other and with lb's QUIC-LB codec, the Helm chart renders (through Helm's own template
//! engine) exactly the objects of `deploy/manifests/` and the CRD, and its values do what
//! they say; then the checks operators run: `kubernetes-validate` against several Kubernetes
//! versions' schemas, the custom resources against lb's own CRD schema, and `checkov` with
//! a short list of justified skips. The tools come from `.venv` (`cargo xtask setup`); a
//! missing one fails the test, saying so.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

mod support;

use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// The `*.yaml` files directly in `dir`, sorted (apply order).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    files
}

/// The `*.yaml` files in `dir` if it exists (the CRD directories are filled by `lb crds`).
fn optional_yaml_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_dir() && std::fs::read_dir(dir).unwrap().next().is_some() {
        yaml_files(dir)
    } else {
        Vec::new()
    }
}

/// Every non-empty document of a YAML stream.
fn parse_stream(text: &str, origin: &str) -> Vec<Yaml> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = <Yaml as serde::Deserialize>::deserialize(de)
            .unwrap_or_else(|e| panic!("{origin}: document {i} is not valid YAML: {e}"));
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    docs
}

fn docs(path: &Path) -> Vec<Yaml> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_stream(&text, &path.display().to_string())
}

fn to_json(y: &Yaml) -> Json {
    serde_json::to_value(y).expect("YAML with string keys converts to JSON")
}

/// Every manifest and example file with its documents.
fn kube_files() -> Vec<(PathBuf, Vec<Yaml>)> {
    let mut files = yaml_files(&deploy().join("manifests"));
    files.extend(yaml_files(&deploy().join("examples")));
    // Not values.yaml there: Helm values for Traefik's chart, not a Kubernetes object.
    files.extend(
        yaml_files(&deploy().join("examples/traefik"))
            .into_iter()
            .filter(|p| !p.ends_with("values.yaml")),
    );
    for crds in [deploy().join("crds"), deploy().join("helm/lb/files")] {
        files.extend(optional_yaml_files(&crds));
    }
    files.into_iter().map(|p| (p.clone(), docs(&p))).collect()
}

fn str_at<'a>(v: &'a Json, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// `orig` must survive a round trip through the typed struct: every field it has is still
/// there with the same value (defaults may be added). A misspelt or misplaced field is
/// dropped by the typed deserializer and fails here.
fn assert_kept(orig: &Json, typed: &Json, path: &str) {
    match (orig, typed) {
        (Json::Object(o), Json::Object(t)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                let Some(tv) = t.get(k) else {
                    panic!("{path}.{k}: not a field of this Kubernetes type (dropped: {v})");
                };
                assert_kept(v, tv, &format!("{path}.{k}"));
            }
        }
        (Json::Array(o), Json::Array(t)) => {
            assert_eq!(o.len(), t.len(), "{path}: list length changed");
            for (i, (a, b)) in o.iter().zip(t).enumerate() {
                assert_kept(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(orig, typed, "{path}: value changed by the typed round trip"),
    }
}

fn round_trip<T: DeserializeOwned + serde::Serialize>(doc: &Json, origin: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not deserialize: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_kept(doc, &back, origin);
    typed
}

/// Deserializes one Kubernetes object into its k8s-openapi (or lb) type; unknown kinds fail.
fn check_typed(doc: &Json, origin: &str) {
    use k8s_openapi::{
        api::{
            apps::v1::{DaemonSet, Deployment},
            core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
            networking::v1::IngressClass,
            rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
        },
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    };
    let api_version = str_at(doc, "/apiVersion");
    let kind = str_at(doc, "/kind");
    let origin = format!("{origin}: {kind} {}", str_at(doc, "/metadata/name"));
    match (api_version, kind) {
        ("v1", "Namespace") => drop(round_trip::<Namespace>(doc, &origin)),
        ("v1", "ServiceAccount") => drop(round_trip::<ServiceAccount>(doc, &origin)),
        ("v1", "ConfigMap") => drop(round_trip::<ConfigMap>(doc, &origin)),
        ("v1", "Secret") => drop(round_trip::<Secret>(doc, &origin)),
        ("v1", "Service") => drop(round_trip::<Service>(doc, &origin)),
        ("apps/v1", "DaemonSet") => drop(round_trip::<DaemonSet>(doc, &origin)),
        ("apps/v1", "Deployment") => drop(round_trip::<Deployment>(doc, &origin)),
        ("networking.k8s.io/v1", "IngressClass") => drop(round_trip::<IngressClass>(doc, &origin)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            drop(round_trip::<ClusterRole>(doc, &origin))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            drop(round_trip::<ClusterRoleBinding>(doc, &origin))
        }
        ("rbac.authorization.k8s.io/v1", "Role") => drop(round_trip::<Role>(doc, &origin)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            drop(round_trip::<RoleBinding>(doc, &origin))
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            drop(round_trip::<CustomResourceDefinition>(doc, &origin))
        }
        ("lb.dev/v1alpha1", "IPPool") => {
            drop(round_trip::<lb_userspace::kube::crd::IPPool>(doc, &origin))
        }
        _ => panic!("{origin}: unknown apiVersion/kind {api_version}/{kind}"),
    }
}

#[test]
fn every_document_parses_into_its_kubernetes_type() {
    let mut kinds = BTreeSet::new();
    for (path, docs) in kube_files() {
        assert!(!docs.is_empty(), "{}: no documents", path.display());
        for doc in docs {
            let doc = to_json(&doc);
            check_typed(&doc, &path.display().to_string());
            kinds.insert(str_at(&doc, "/kind").to_string());
        }
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Service",
        "Secret",
        "IPPool",
    ] {
        assert!(kinds.contains(kind), "no {kind} anywhere under deploy/");
    }
}

#[test]
fn typed_check_rejects_a_misspelt_field_and_an_unknown_kind() {
    let bad: Json = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "x", "namespce": "lb-system"}
    });
    let err = std::panic::catch_unwind(|| check_typed(&bad, "test")).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("metadata.namespce"), "{msg}");
    let unknown: Json = serde_json::json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": {"name": "x"}
    });
    assert!(std::panic::catch_unwind(|| check_typed(&unknown, "test")).is_err());
}

fn objects(dir: &Path) -> Vec<Json> {
    yaml_files(dir)
        .iter()
        .flat_map(|p| docs(p))
        .map(|d| to_json(&d))
        .collect()
}

fn find<'a>(objs: &'a [Json], kind: &str, name: &str) -> &'a Json {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn manifests() -> Vec<Json> {
    objects(&deploy().join("manifests"))
}

/// `PROGRAM ARGS... --help`'s text.
fn help_of(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .arg("--help")
        .env("RUST_LOG", "off")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

fn lb_help(args: &[&str]) -> String {
    help_of(support::lb(), args)
}

fn lab_help(args: &[&str]) -> String {
    help_of(support::lab(), args)
}

/// The `--long` flags a help text lists.
fn help_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        if let Some(rest) = word.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

fn container<'a>(obj: &'a Json, name: &str) -> &'a Json {
    obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_names(c: &Json) -> BTreeSet<String> {
    c["env"]
        .as_array()
        .map(|e| e.iter().map(|v| str_at(v, "/name").to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn daemonset_runs_lb_run_with_flags_it_knows() {
    let objs = manifests();
    let ds = find(&objs, "DaemonSet", "lb");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["serviceAccountName"], "lb");
    // A load balancer must run where traffic lands: every taint tolerated.
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(ds, "lb");
    assert_eq!(c["command"], serde_json::json!(["/usr/local/bin/lb"]));
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run", "{args:?}");
    let known = help_flags(&lb_help(&["run"]));
    let used: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap())
        .collect();
    for flag in ["--kube", "--config", "--node-name"] {
        assert!(used.contains(&flag), "the DaemonSet does not pass {flag}");
    }
    let unknown: Vec<&&str> = used.iter().filter(|f| !known.contains(**f)).collect();
    assert!(
        unknown.is_empty(),
        "the DaemonSet passes {unknown:?}, which `lb run --help` does not list (it lists {known:?})"
    );
    let at = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(at("--config"), "/etc/lb/lb.toml");
    assert_eq!(at("--node-name"), "$(NODE_NAME)");
    assert_eq!(at("--control-socket"), "/run/lb/lb.sock");

    let env = &c["env"];
    let field = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e.pointer("/valueFrom/fieldRef/fieldPath"))
            .and_then(Json::as_str)
            .unwrap_or_else(|| panic!("no downward-API env {name}"))
    };
    assert_eq!(field("NODE_NAME"), "spec.nodeName");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");

    assert_eq!(
        c["image"],
        format!("localhost/lb:{}", env!("CARGO_PKG_VERSION")),
        "the image tag is the version (the chart's appVersion)"
    );
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["seLinuxOptions"]["type"], "spc_t");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON", "NET_RAW", "NET_BIND_SERVICE"]),
        "NET_BIND_SERVICE: BIRD, lb's BGP speaker, listens on port 179"
    );

    // Volumes: bpffs from the host, the config, an emptyDir for the control socket.
    let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (str_at(m, "/name"), str_at(m, "/mountPath")))
        .collect();
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(mounts["bpffs"], "/sys/fs/bpf");
    assert_eq!(volume("bpffs")["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(mounts["run"], "/run/lb");
    assert!(volume("run")["emptyDir"].is_object());
    // BIRD's run directory (lb's default bgp run_dir): its config and control socket.
    assert_eq!(mounts["bird"], "/run/lb/bird");
    assert_eq!(volume("bird")["emptyDir"]["medium"], "Memory");
    assert_eq!(mounts["config"], "/etc/lb");
    assert_eq!(volume("config")["configMap"]["name"], "lb-config");

    // Liveness on /healthz, readiness on /readyz, at the metrics port of the config.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["ports"][0]["containerPort"], 7472);
    assert!(c["resources"]["requests"].is_object());
    assert_eq!(
        ds["metadata"]["labels"]["app.kubernetes.io/version"],
        env!("CARGO_PKG_VERSION")
    );
}

fn lb_toml(cm: &Json) -> toml::Table {
    str_at(cm, "/data/lb.toml")
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("lb.toml in the ConfigMap is not TOML: {e}"))
}

#[test]
fn configmap_holds_a_kube_mode_lb_toml() {
    let objs = manifests();
    let t = lb_toml(find(&objs, "ConfigMap", "lb-config"));
    let keys: BTreeSet<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "interfaces",
            "xdp_mode",
            "backend_interfaces",
            "metrics_addr",
            "kubernetes"
        ]),
        "kube mode: node settings and [kubernetes], no [[vips]]"
    );
    assert_eq!(t["interfaces"], toml::Value::from(vec!["eth0"]));
    assert_eq!(
        t["xdp_mode"].as_str(),
        Some("generic"),
        "kind's veths need generic XDP"
    );
    assert_eq!(t["backend_interfaces"], toml::Value::from(vec!["veth*"]));
    assert_eq!(
        t["metrics_addr"].as_str(),
        Some(format!("0.0.0.0:{}", lb_userspace::config::DEFAULT_METRICS_PORT).as_str()),
        "the default port (MetalLB's 7472, not node-exporter's 9100)"
    );
    let k = t["kubernetes"].as_table().expect("[kubernetes] is a table");
    let keys: BTreeSet<&str> = k.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "load_balancer_class",
            "default_class",
            "lease_namespace",
            "lease_duration_ms",
            "lease_renew_ms",
            "gossip_port"
        ])
    );
    assert_eq!(k["load_balancer_class"].as_str(), Some("lb.dev/lb"));
    assert_eq!(k["default_class"].as_bool(), Some(false));
    assert_eq!(k["lease_namespace"].as_str(), Some("lb-system"));
    let (duration, renew) = (
        k["lease_duration_ms"].as_integer().unwrap(),
        k["lease_renew_ms"].as_integer().unwrap(),
    );
    // The daemon's defaults, written out for the operator to see: kubelet's Lease cadence
    // (membership) and the gossip port (failure detection).
    let defaults = lb_userspace::config::KubeSettings::default();
    assert_eq!(
        (duration, renew),
        (
            defaults.lease_duration.as_millis() as i64,
            defaults.lease_renew.as_millis() as i64
        )
    );
    assert_eq!(
        k["gossip_port"].as_integer(),
        Some(i64::from(defaults.gossip_port))
    );
}

/// (apiGroup, resource) -> verbs, flattened from a role's rules. A rule limited to
/// `resourceNames` shows as `resource[name,...]`.
fn grants(role: &Json) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(rule.get("nonResourceURLs").is_none());
        let names = rule.get("resourceNames").map(|n| {
            let n: Vec<&str> = n
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            format!("[{}]", n.join(","))
        });
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                let resource = format!("{}{}", r.as_str().unwrap(), names.as_deref().unwrap_or(""));
                let verbs = out
                    .entry((g.as_str().unwrap().into(), resource))
                    .or_default();
                for v in rule["verbs"].as_array().unwrap() {
                    assert_ne!(v, "*", "no wildcard verbs");
                    verbs.insert(v.as_str().unwrap().into());
                }
            }
        }
    }
    out
}

fn table(rows: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    rows.iter()
        .map(|(g, r, v)| {
            (
                (g.to_string(), r.to_string()),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

/// What `lb run --kube` calls cluster-wide, and nothing else. No Secrets, no pods: those
/// only in the namespaces of QUIC-LB Services ([`QUIC_LB_GRANTS`]).
const CLUSTER_GRANTS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("", "services/status", &["patch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
    ("lb.dev", "ippools", &["list", "watch"]),
    // The status writer keeps each pool's assigned/available counts.
    ("lb.dev", "ippools/status", &["patch"]),
    ("lb.dev", "bgppeers", &["list", "watch"]),
    ("lb.dev", "bgpadvertisements", &["list", "watch"]),
    ("lb.dev", "bfdprofiles", &["list", "watch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];
/// e2e_kube checks these tables against the requests real daemons make.
const LEASE_GRANTS: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["list", "watch", "create", "patch", "delete"],
)];
/// In a namespace with QUIC-LB Services: their Secrets and the backend pods, by name.
const QUIC_LB_GRANTS: &[(&str, &str, &[&str])] =
    &[("", "secrets", &["get"]), ("", "pods", &["get"])];

/// The binding `name` of `kind` binds `role_kind`/`name` to lb's ServiceAccount.
fn assert_binds_lb(objs: &[Json], kind: &str, role_kind: &str, name: &str, ns: Option<&str>) {
    let b = objs
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && ns.is_none_or(|ns| o["metadata"]["namespace"] == ns)
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in {ns:?}"));
    assert_eq!(b["roleRef"]["kind"], role_kind);
    assert_eq!(b["roleRef"]["name"], name);
    assert_eq!(
        b["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "lb", "namespace": "lb-system"}])
    );
}

#[test]
fn rbac_grants_exactly_what_the_daemon_calls() {
    let objs = manifests();
    assert_eq!(
        grants(find(&objs, "ClusterRole", "lb")),
        table(CLUSTER_GRANTS)
    );
    let role = find(&objs, "Role", "lb");
    assert_eq!(role["metadata"]["namespace"], "lb-system");
    assert_eq!(grants(role), table(LEASE_GRANTS));
    assert_binds_lb(&objs, "ClusterRoleBinding", "ClusterRole", "lb", None);
    assert_binds_lb(&objs, "RoleBinding", "Role", "lb", Some("lb-system"));
    find(&objs, "ServiceAccount", "lb");
    let ns = find(&objs, "Namespace", "lb-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    // Everything namespaced is in lb-system: no Role elsewhere until an operator asks.
    for o in &objs {
        if let Some(ns) = o["metadata"].get("namespace") {
            assert_eq!(ns, "lb-system", "{}", o["metadata"]["name"]);
        }
    }

    // The HTTP/3 example carries the Role its QUIC-LB Service needs: its one Secret by
    // name, and the pods.
    let example = example("h3-whoami.yaml");
    let role = find(&example, "Role", "lb-quic-lb");
    assert_eq!(role["metadata"]["namespace"], "default");
    let secret = str_at(
        find(&example, "Service", "h3-whoami"),
        "/metadata/annotations/lb.dev~1quic-lb-secret",
    );
    assert_eq!(
        grants(role),
        table(&[
            ("", &format!("secrets[{secret}]"), &["get"]),
            ("", "pods", &["get"]),
        ])
    );
    assert_binds_lb(
        &example,
        "RoleBinding",
        "Role",
        "lb-quic-lb",
        Some("default"),
    );
}

#[test]
fn chart_grants_quic_lb_secrets_only_in_the_namespaces_listed() {
    let objs = objects_of(&render_chart(Some("quicLb: {namespaces: [shop, media]}\n")));
    assert_eq!(
        grants(find(&objs, "ClusterRole", "lb")),
        table(CLUSTER_GRANTS),
        "nothing more cluster-wide"
    );
    for ns in ["shop", "media"] {
        let role = objs
            .iter()
            .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        assert_eq!(role["metadata"]["name"], "lb-quic-lb");
        assert_eq!(grants(role), table(QUIC_LB_GRANTS));
        assert_binds_lb(&objs, "RoleBinding", "Role", "lb-quic-lb", Some(ns));
    }
    let roles = objs.iter().filter(|o| o["kind"] == "Role").count();
    assert_eq!(roles, 3, "the Lease Role and one per namespace listed");

    // secretNames: only those Secrets (resourceNames), pods still by any name.
    let objs = objects_of(&render_chart(Some(
        "quicLb: {namespaces: [shop], secretNames: [web-quic-lb, web-quic-lb-next]}\n",
    )));
    let role = find(&objs, "Role", "lb-quic-lb");
    assert_eq!(
        grants(role),
        table(&[
            ("", "secrets[web-quic-lb,web-quic-lb-next]", &["get"]),
            ("", "pods", &["get"]),
        ])
    );

    // allNamespaces: the same grants in the ClusterRole, no namespaced ones.
    let objs = objects_of(&render_chart(Some(
        "quicLb: {namespaces: [shop], allNamespaces: true}\n",
    )));
    let mut want = CLUSTER_GRANTS.to_vec();
    want.extend_from_slice(QUIC_LB_GRANTS);
    assert_eq!(grants(find(&objs, "ClusterRole", "lb")), table(&want));
    assert_eq!(objs.iter().filter(|o| o["kind"] == "Role").count(), 1);
}

#[test]
fn chart_grants_bgp_password_secrets_only_by_the_names_listed() {
    let objs = objects_of(&render_chart(None));
    assert!(
        !objs
            .iter()
            .any(|o| o["metadata"]["name"] == "lb-bgp-passwords"),
        "no Secret of lb's namespace readable by default"
    );
    let objs = objects_of(&render_chart(Some(
        "bgp: {passwordSecretNames: [tor-a, tor-b]}\n",
    )));
    let role = find(&objs, "Role", "lb-bgp-passwords");
    assert_eq!(role["metadata"]["namespace"], "lb-system");
    assert_eq!(
        grants(role),
        table(&[("", "secrets[tor-a,tor-b]", &["get"])])
    );
    assert_binds_lb(
        &objs,
        "RoleBinding",
        "Role",
        "lb-bgp-passwords",
        Some("lb-system"),
    );
    assert_eq!(
        grants(find(&objs, "ClusterRole", "lb")),
        table(CLUSTER_GRANTS),
        "nothing more cluster-wide"
    );
}

fn example(name: &str) -> Vec<Json> {
    docs(&deploy().join("examples").join(name))
        .iter()
        .map(to_json)
        .collect()
}

fn service_ports(svc: &Json) -> BTreeSet<(i64, String)> {
    svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
            )
        })
        .collect()
}

#[test]
fn h3_example_is_one_service_with_443_tcp_and_udp_and_a_usable_quic_lb_secret() {
    let objs = example("h3-whoami.yaml");
    let services: Vec<&Json> = objs.iter().filter(|o| o["kind"] == "Service").collect();
    assert_eq!(services.len(), 1, "one Service for HTTPS and HTTP/3");
    let svc = services[0];
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["loadBalancerClass"], "lb.dev/lb");
    assert_eq!(
        service_ports(svc),
        BTreeSet::from([(443, "TCP".to_string()), (443, "UDP".to_string())])
    );

    let dep = find(&objs, "Deployment", "h3-whoami");
    assert_eq!(dep["spec"]["replicas"], 3);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"], "localhost/lb-lab:dev",
        "the lab image has `lb-lab backend`"
    );
    assert_eq!(c["command"], serde_json::json!(["/usr/local/bin/lb-lab"]));
    assert_eq!(c["args"], serde_json::json!(["backend"]));
    // Every Service port targets a named container port of the same protocol.
    for p in svc["spec"]["ports"].as_array().unwrap() {
        let target = str_at(p, "/targetPort");
        let cp = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|cp| cp["name"] == target)
            .unwrap_or_else(|| panic!("no container port named {target}"));
        assert_eq!(cp["protocol"], p["protocol"], "{target}");
    }
    let selector = svc["spec"]["selector"].as_object().unwrap();
    for (k, v) in selector {
        assert_eq!(&dep["spec"]["template"]["metadata"]["labels"][k], v);
    }

    // The env the backend reads, all of which `lb-lab backend --help` must list.
    let env = c["env"].as_array().unwrap();
    let pod_ip = env.iter().find(|e| e["name"] == "LB_POD_IP").unwrap();
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let dir = env
        .iter()
        .find(|e| e["name"] == "LB_QUIC_LB_SECRET_DIR")
        .unwrap();
    let dir = str_at(dir, "/value");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("LB_QUIC_LB_SECRET_DIR is a mounted volume");
    let vol = dep["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret_name = str_at(vol, "/secret/secretName");
    assert_eq!(
        svc["metadata"]["annotations"]["lb.dev/quic-lb-secret"], secret_name,
        "the Service routes by the Secret the backends mount"
    );
    let backend_env: BTreeSet<String> = lab_help(&["backend"])
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("LB_"))
        .map(String::from)
        .collect();
    let unknown: Vec<String> = env_names(c)
        .into_iter()
        .filter(|n| !backend_env.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "the example sets {unknown:?}, which `lb-lab backend --help` does not list"
    );

    // The Secret is a QUIC-LB configuration lb's own codec accepts.
    let secret = find(&objs, "Secret", secret_name);
    let data = secret["stringData"].as_object().unwrap();
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    let allowed = BTreeSet::from([
        "config-id",
        "server-id-len",
        "nonce-len",
        "key",
        "encode-length",
    ]);
    assert!(keys.is_subset(&allowed), "{keys:?}");
    let get = |k: &str| data[k].as_str().unwrap();
    let cr: u8 = get("config-id").parse().unwrap();
    let sid_len: usize = get("server-id-len").parse().unwrap();
    let nonce_len: usize = get("nonce-len").parse().unwrap();
    assert!(cr <= 6);
    assert!(matches!(get("encode-length"), "true" | "false"));
    let (sid, nonce) = ("07".repeat(sid_len), "a5".repeat(nonce_len));
    let mut args = vec![
        "cid".to_string(),
        "encode".into(),
        "--cr-bits".into(),
        cr.to_string(),
        "--server-id-len".into(),
        sid_len.to_string(),
        "--nonce-len".into(),
        nonce_len.to_string(),
        "--server-id".into(),
        sid,
        "--nonce".into(),
        nonce,
    ];
    if let Some(key) = data.get("key") {
        args.extend(["--key".into(), key.as_str().unwrap().into()]);
    }
    let out = Command::new(support::lb())
        .args(&args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Traefik (deploy/examples/traefik): HTTPS and HTTP/3 on one address through one Service
/// with lb's class, in learned-CID mode with the Local policy it needs; the rendered
/// manifests agree with the chart values they came from.
#[test]
fn traefik_example_serves_https_and_http3_on_one_learned_cid_service() {
    let objs: Vec<Json> = docs(&deploy().join("examples/traefik/traefik.yaml"))
        .iter()
        .map(to_json)
        .collect();
    let services: Vec<&Json> = objs.iter().filter(|o| o["kind"] == "Service").collect();
    assert_eq!(services.len(), 1, "one Service for HTTPS and HTTP/3");
    let svc = services[0];
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["loadBalancerClass"], "lb.dev/lb");
    assert_eq!(
        svc["spec"]["externalTrafficPolicy"], "Local",
        "learned-CID needs Local"
    );
    assert_eq!(
        svc["metadata"]["annotations"]["lb.dev/learned-cid-len"], "4",
        "quic-go's CID length"
    );
    assert_eq!(
        service_ports(svc),
        BTreeSet::from([(443, "TCP".to_string()), (443, "UDP".to_string())])
    );
    // Each Service port targets a named container port of Traefik with the same protocol.
    let dep = find(&objs, "Deployment", "traefik");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert!(
        str_at(c, "/image").starts_with("docker.io/traefik:v3."),
        "{}",
        c["image"]
    );
    for p in svc["spec"]["ports"].as_array().unwrap() {
        let target = str_at(p, "/targetPort");
        let cp = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|cp| cp["name"] == target)
            .unwrap_or_else(|| panic!("Traefik has no container port named {target}"));
        assert_eq!(cp["protocol"], p["protocol"], "{target}");
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.iter()
            .any(|a| a.starts_with("--entryPoints.websecure.http3")),
        "HTTP/3 is on for websecure: {args:?}"
    );
    assert!(
        args.contains(&"--entryPoints.websecure.http3.advertisedPort=443"),
        "Alt-Svc advertises the Service's port 443: {args:?}"
    );
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&dep["spec"]["template"]["metadata"]["labels"][k], v);
    }

    // The values file says what the rendering shows.
    let values = to_json(&docs(&deploy().join("examples/traefik/values.yaml"))[0]);
    assert_eq!(values["service"]["single"], true);
    for (k, v) in values["service"]["spec"].as_object().unwrap() {
        assert_eq!(&svc["spec"][k], v, "service.spec.{k}");
    }
    for (k, v) in values["service"]["annotations"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["annotations"][k], v,
            "service.annotations.{k}"
        );
    }
    assert_eq!(dep["spec"]["replicas"], values["deployment"]["replicas"]);
}

/// Parses "a-b", "a/len" or "a" (IPv4) into an inclusive range.
fn v4_range(s: &str) -> (u32, u32) {
    let ip = |s: &str| u32::from(s.trim().parse::<std::net::Ipv4Addr>().unwrap());
    if let Some((a, b)) = s.split_once('-') {
        (ip(a), ip(b))
    } else if let Some((a, len)) = s.split_once('/') {
        let len: u32 = len.parse().unwrap();
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        (ip(a) & mask, (ip(a) & mask) | !mask)
    } else {
        (ip(s), ip(s))
    }
}

#[test]
fn pool_and_metallb_example_agree() {
    let pool = example("ippool.yaml");
    assert_eq!(pool.len(), 1);
    let pool = &pool[0];
    let pool_name = str_at(pool, "/metadata/name");
    let ranges: Vec<(u32, u32)> = pool["spec"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| v4_range(a.as_str().unwrap()))
        .collect();
    let kind_net = v4_range("172.18.0.0/16");
    for r in &ranges {
        assert!(r.0 <= r.1 && r.0 >= kind_net.0 && r.1 <= kind_net.1);
    }

    let objs = example("metallb-migration.yaml");
    let services: Vec<&Json> = objs.iter().filter(|o| o["kind"] == "Service").collect();
    assert!(services.len() >= 2);
    let mut shared = BTreeMap::new();
    for svc in &services {
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert!(
            svc["spec"].get("loadBalancerClass").is_none(),
            "MetalLB-style Services have no class (served with default_class = true)"
        );
        let ann = svc["metadata"]["annotations"].as_object().unwrap();
        let get = |key: &str| {
            ["metallb.io/", "metallb.universe.tf/"]
                .iter()
                .find_map(|p| ann.get(&format!("{p}{key}")))
                .and_then(Json::as_str)
                .unwrap_or_else(|| panic!("no metallb {key} annotation"))
        };
        assert_eq!(get("address-pool"), pool_name);
        let ip = v4_range(get("loadBalancerIPs")).0;
        assert!(ranges.iter().any(|r| r.0 <= ip && ip <= r.1));
        let ports = service_ports(svc);
        let entry = shared
            .entry((get("allow-shared-ip").to_string(), ip))
            .or_insert_with(BTreeSet::new);
        for p in ports {
            assert!(
                entry.insert(p),
                "two shared Services overlap in port and protocol"
            );
        }
    }
    assert_eq!(shared.len(), 1, "the Services share one IP");
}

#[test]
fn kind_cluster_has_a_control_plane_and_two_workers() {
    let files = yaml_files(&deploy().join("kind"));
    let cfg = to_json(&docs(&files[0])[0]);
    assert_eq!(cfg["kind"], "Cluster");
    assert_eq!(cfg["apiVersion"], "kind.x-k8s.io/v1alpha4");
    let roles: Vec<&str> = cfg["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
}

// ----------------------------------------------------------------------------------------
// Helm: the chart through Helm's own template engine (helm-python-sdk, Helm v4's Go library;
// no `helm` binary is published on the registries this machine reaches).

fn chart_dir() -> PathBuf {
    deploy().join("helm/lb")
}

/// A scratch file of this test process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("lb-deploy-test-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `deploy/helm/render.py` with `args` (chart dir and namespace first): its stdout.
fn helm_render(args: &[&std::ffi::OsStr]) -> String {
    let py = support::python_with("helm_python");
    let out = Command::new(&py)
        .arg(deploy().join("helm/render.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rendering the chart with Helm's engine: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The chart as `helm template lb deploy/helm/lb -n lb-system [-f values]` renders it.
fn render_chart(values: Option<&str>) -> String {
    render_chart_in("lb-system", values)
}

fn render_chart_in(namespace: &str, values: Option<&str>) -> String {
    let file = values.map(|v| Scratch::new("values.yaml", v));
    let mut args = vec![chart_dir().into_os_string(), namespace.into()];
    if let Some(f) = &file {
        args.push(f.0.clone().into_os_string());
    }
    helm_render(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>())
}

fn objects_of(stream: &str) -> Vec<Json> {
    parse_stream(stream, "rendered chart")
        .iter()
        .map(to_json)
        .collect()
}

/// The DaemonSet pod template's config checksum, taken out of the object.
fn take_checksum(objs: &mut [Json]) -> String {
    let ds = objs
        .iter_mut()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("the chart renders a DaemonSet");
    let annotations = ds["spec"]["template"]["metadata"]["annotations"]
        .as_object_mut()
        .expect("pod annotations");
    let sum = annotations
        .remove("checksum/config")
        .expect("a checksum/config annotation");
    if annotations.is_empty() {
        ds["spec"]["template"]["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
    }
    sum.as_str().unwrap().to_owned()
}

/// Objects by (apiVersion, kind, namespace, name), with lb.toml compared as TOML (so the
/// comments in deploy/manifests may differ from the template's).
fn by_identity(objs: impl IntoIterator<Item = Json>) -> BTreeMap<String, Json> {
    let mut map = BTreeMap::new();
    for mut o in objs {
        let id = format!(
            "{} {} {}/{}",
            str_at(&o, "/apiVersion"),
            str_at(&o, "/kind"),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            str_at(&o, "/metadata/name")
        );
        if o["kind"] == "ConfigMap"
            && let Some(data) = o.get_mut("data").and_then(Json::as_object_mut)
        {
            for (k, v) in data.iter_mut() {
                if k.ends_with(".toml") {
                    let t: toml::Table = v.as_str().unwrap().parse().unwrap();
                    *v = serde_json::to_value(t).unwrap();
                }
            }
        }
        assert!(map.insert(id.clone(), o).is_none(), "{id} twice");
    }
    map
}

#[test]
fn helm_chart_renders_the_manifests_and_the_crd() {
    let rendered = render_chart(None);
    let mut got = objects_of(&rendered);
    for o in &got {
        check_typed(o, "helm chart");
    }
    let sum = take_checksum(&mut got);
    assert_eq!(sum.len(), 64, "a SHA-256 in hex: {sum}");
    let got = by_identity(got);
    let mut want: Vec<Json> = manifests()
        .into_iter()
        .filter(|o| o["kind"] != "Namespace")
        .collect();
    want.extend(objects(&deploy().join("crds")));
    let want = by_identity(want);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the chart renders other objects than deploy/manifests (minus the Namespace) and deploy/crds"
    );
    for (id, w) in &want {
        assert_eq!(
            &got[id],
            w,
            "{id} differs from deploy/:\nrendered {}\nmanifest {}",
            serde_json::to_string_pretty(&got[id]).unwrap(),
            serde_json::to_string_pretty(w).unwrap()
        );
    }
    // The release namespace reaches every namespaced object, the bindings and lb.toml.
    let other = render_chart_in("elsewhere", None);
    assert!(!other.contains("lb-system"), "{other}");
    assert!(other.contains("lease_namespace = \"elsewhere\""));
}

#[test]
fn config_checksum_rolls_the_pods_exactly_when_lb_toml_changes() {
    let sum = |values: Option<&str>| take_checksum(&mut objects_of(&render_chart(values)));
    let base = sum(None);
    assert_ne!(base, sum(Some("xdpMode: native\n")), "lb.toml changed");
    assert_ne!(
        base,
        sum(Some("lease: {durationMs: 5000, renewMs: 1000}\n"))
    );
    assert_eq!(
        base,
        sum(Some("podAnnotations: {team: net}\nlogLevel: debug\n")),
        "lb.toml unchanged: no roll for the config (the pod spec rolls by itself)"
    );
    // rollOnConfigChange=false: no checksum; the daemons reload the mounted file themselves.
    let objs = objects_of(&render_chart(Some("rollOnConfigChange: false\n")));
    let ds = find(&objs, "DaemonSet", "lb");
    assert!(
        ds["spec"]["template"]["metadata"]["annotations"]
            .get("checksum/config")
            .is_none(),
        "{}",
        ds["spec"]["template"]["metadata"]
    );
}

fn rendered_lb_toml(objs: &[Json]) -> String {
    str_at(find(objs, "ConfigMap", "lb-config"), "/data/lb.toml").to_owned()
}

#[test]
fn chart_values_reach_the_objects() {
    let values = r#"
interfaces: [eth0, {name: bond0, xdp_mode: native}]
backendInterfaces: ["cali*", "lxc*"]
image: {repository: registry.example.com/net/lb, tag: "9.9.9"}
imagePullSecrets: [{name: regcred}]
podAnnotations: {team: net}
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: edge, operator: Exists}]}]}}}
nodeSelector: {edge: "true"}
tolerateAllTaints: false
tolerations: [{key: dedicated, operator: Equal, value: lb, effect: NoSchedule}]
priorityClassName: ""
podSecurityContext: {seccompProfile: {type: Unconfined}}
metrics: {port: 7473, serviceMonitor: {enabled: true, interval: 15s, labels: {release: kps}}}
installCRDs: false
capacity: {conn_table_size: 4194304, vips: 65536}
"#;
    let objs = objects_of(&render_chart(Some(values)));
    // lb's own config parser accepts the rendered lb.toml, with the table form kept (a
    // toJson of it would have written {"name":...}, which is not TOML).
    let toml = rendered_lb_toml(&objs);
    let config = lb_userspace::config::Config::parse(&toml, "lb.toml", Path::new("/"))
        .unwrap_or_else(|e| panic!("the rendered lb.toml does not validate:\n{toml}\n{e}"));
    let ifaces: Vec<(String, lb_userspace::config::XdpMode)> = config
        .interfaces
        .iter()
        .map(|i| (i.name.clone(), i.xdp_mode))
        .collect();
    assert_eq!(
        ifaces,
        [
            ("eth0".to_owned(), lb_userspace::config::XdpMode::Generic),
            ("bond0".to_owned(), lb_userspace::config::XdpMode::Native)
        ]
    );
    assert_eq!(config.backend_interfaces, ["cali*", "lxc*"]);
    assert_eq!(config.metrics_addr, Some("0.0.0.0:7473".parse().unwrap()));
    assert_eq!(
        (config.capacity.conn_table_size, config.capacity.vips),
        (4_194_304, 65_536),
        "capacity values become [capacity]"
    );
    assert_eq!(
        config.capacity.backends,
        lb_userspace::capacity::Capacity::default().backends,
        "the rest keep lb's defaults"
    );

    let ds = find(&objs, "DaemonSet", "lb");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    let c = container(ds, "lb");
    assert_eq!(c["image"], "registry.example.com/net/lb:9.9.9");
    assert_eq!(
        spec["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert_eq!(pod["metadata"]["annotations"]["team"], "net");
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "edge"
    );
    assert_eq!(
        spec["nodeSelector"],
        serde_json::json!({"edge": "true", "kubernetes.io/os": "linux"})
    );
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"key": "dedicated", "operator": "Equal", "value": "lb", "effect": "NoSchedule"}])
    );
    assert!(spec.get("priorityClassName").is_none());
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "Unconfined"
    );
    assert_eq!(c["ports"][0]["containerPort"], 7473);

    // The ServiceMonitor selects the headless Service over the daemons' metrics port.
    let svc = find(&objs, "Service", "lb-metrics");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], 7473);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "the Service selects the daemons"
        );
    }
    let sm = find(&objs, "ServiceMonitor", "lb");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "kps");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    assert!(
        !objs.iter().any(|o| o["kind"] == "CustomResourceDefinition"),
        "installCRDs: false"
    );

    // Defaults: the image tag is the appVersion, every taint tolerated, no ServiceMonitor.
    let objs = objects_of(&render_chart(None));
    let c = container(find(&objs, "DaemonSet", "lb"), "lb");
    assert_eq!(
        c["image"],
        format!("localhost/lb:{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(!objs.iter().any(|o| o["kind"] == "ServiceMonitor"));
}

#[test]
fn chart_notes_name_no_repository_path() {
    let notes = helm_render(&[
        chart_dir().as_os_str(),
        "lb-system".as_ref(),
        "--notes".as_ref(),
    ]);
    assert!(notes.contains("rollout status ds/lb"), "{notes}");
    assert!(notes.contains("7472"), "{notes}");
    for path in ["deploy/", "examples/", ".yaml"] {
        assert!(
            !notes.contains(path),
            "NOTES.txt names {path}, which an installed chart does not have:\n{notes}"
        );
    }
}

#[test]
fn chart_metadata_matches_the_crate() {
    let chart: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("lb"));
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // The chart's CRD (templates/crds.yaml reads files/) is the same file as deploy/crds/.
    let (a, b) = (deploy().join("crds"), chart_dir().join("files"));
    {
        for f in optional_yaml_files(&a) {
            let other = b.join(f.file_name().unwrap());
            assert_eq!(
                std::fs::read_to_string(&f).unwrap(),
                std::fs::read_to_string(&other).unwrap_or_default(),
                "{} and {} differ",
                f.display(),
                other.display()
            );
        }
    }
}

// ----------------------------------------------------------------------------------------
// The checks operators run, from .venv (`cargo xtask setup` installs them; a missing one
// fails here, saying so).

/// Kubernetes versions the manifests are validated against: kubernetes-validate 1.37.0
/// bundles the schemas of 1.25 to 1.37 (offline); these are the oldest of the last four
/// supported-ish minors, one in the middle and the newest.
const KUBE_VERSIONS: [&str; 3] = ["1.31.0", "1.34.0", "1.37.0"];

/// Kinds kubernetes-validate has no schema for, each checked some other way.
const CUSTOM_KINDS: [(&str, &str); 2] = [
    // Against lb's own CRD: custom_resources_validate_against_the_crd.
    ("IPPool", "lb.dev/v1alpha1"),
    // prometheus-operator's; the chart test checks what it selects (no schema offline).
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
];

/// Every Kubernetes manifest under deploy/ (not Helm values, not kind's config), plus the
/// chart rendered with its defaults and with every optional object on.
fn validation_targets() -> (Vec<PathBuf>, Vec<Scratch>) {
    let files: Vec<PathBuf> = kube_files().into_iter().map(|(p, _)| p).collect();
    let rendered = vec![
        Scratch::new("chart-default.yaml", &render_chart(None)),
        Scratch::new(
            "chart-all-on.yaml",
            &render_chart(Some(
                "quicLb: {namespaces: [shop], secretNames: [web-quic-lb]}\n\
                 metrics: {serviceMonitor: {enabled: true}}\n\
                 imagePullSecrets: [{name: regcred}]\npodAnnotations: {a: b}\n\
                 gossip: {keySecret: lb-gossip}\n",
            )),
        ),
    ];
    (files, rendered)
}

#[test]
fn kubernetes_validate_accepts_every_manifest_for_three_kubernetes_versions() {
    let py = support::python_with("kubernetes_validate");
    let (mut files, rendered) = validation_targets();
    files.extend(rendered.iter().map(|s| s.0.clone()));
    for version in KUBE_VERSIONS {
        let out = Command::new(&py)
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(&files)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {version} failed:\n{text}"
        );
        let mut passed = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let custom = CUSTOM_KINDS.iter().any(|(kind, api)| {
                line.starts_with("WARN ")
                    && line.contains(&format!(
                        "Couldn't find schema for kind {kind} with api version {api}"
                    ))
            });
            if line.starts_with("INFO ") && line.contains(" passed for resource ") {
                passed += 1;
            } else {
                assert!(custom, "kubernetes-validate -k {version}: {line}\n{text}");
            }
        }
        // Every built-in object of every file was validated (none silently left out).
        let builtin: usize = files
            .iter()
            .flat_map(|f| docs(f))
            .filter(|d| !CUSTOM_KINDS.iter().any(|(kind, _)| d["kind"] == *kind))
            .count();
        assert_eq!(passed, builtin, "-k {version}:\n{text}");
        eprintln!("kubernetes-validate --strict -k {version}: {passed} objects passed");
    }
}

#[test]
fn custom_resources_validate_against_the_crd() {
    let py = support::python_with("jsonschema");
    let run = |files: &[PathBuf]| {
        let out = Command::new(&py)
            .arg(repo().join("tests/python/validate_custom_resources.py"))
            .arg(deploy().join("crds/ippools.lb.dev.yaml"))
            .args(files)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let files: Vec<PathBuf> = kube_files().into_iter().map(|(p, _)| p).collect();
    let (ok, text) = run(&files);
    assert!(ok, "{text}");
    assert!(text.contains("ok IPPool kind-pool"), "{text}");

    // The schema's validation is real: each of these is refused, for its reason.
    let bad = Scratch::new(
        "bad-pools.yaml",
        "apiVersion: lb.dev/v1alpha1\nkind: IPPool\nmetadata: {name: empty}\nspec: {addresses: []}\n\
         ---\napiVersion: lb.dev/v1alpha1\nkind: IPPool\nmetadata: {name: word}\nspec: {addresses: [eth0]}\n\
         ---\napiVersion: lb.dev/v1alpha1\nkind: IPPool\nmetadata: {name: op}\n\
         spec: {addresses: [198.18.0.0/24], serviceSelector: {matchExpressions: [{key: a, operator: Equals}]}}\n",
    );
    let (ok, text) = run(std::slice::from_ref(&bad.0));
    assert!(!ok, "{text}");
    for (name, why) in [
        ("empty", "should be non-empty"),
        ("word", "'eth0' does not match"),
        ("op", "'Equals' is not one of"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("invalid IPPool {name}:")) && l.contains(why)),
            "{name}: {text}"
        );
    }
}

/// MetalLB's BGP objects with only `apiVersion` changed validate against lb's BGP CRDs, and
/// the schemas refuse what the daemon could not use (a zero ASN, an address or duration
/// that is none, a community of no known shape, out-of-range lengths and timers, a missing
/// required field, a selector operator that does not exist).
#[test]
fn bgp_resources_validate_against_their_crds() {
    let py = support::python_with("jsonschema");
    let crds: String = [
        "bgppeers.lb.dev.yaml",
        "bgpadvertisements.lb.dev.yaml",
        "bfdprofiles.lb.dev.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(deploy().join("crds").join(f)).unwrap())
    .collect::<Vec<_>>()
    .join("\n---\n");
    let crds = Scratch::new("bgp-crds.yaml", &crds);
    let run = |yaml: &str| {
        let file = Scratch::new("bgp-objects.yaml", yaml);
        let out = Command::new(&py)
            .arg(repo().join("tests/python/validate_custom_resources.py"))
            .arg(&crds.0)
            .arg(&file.0)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // MetalLB's documentation examples (metallb.io/v1beta2 and v1beta1), apiVersion changed.
    let (ok, text) = run(
        "apiVersion: lb.dev/v1beta2\nkind: BGPPeer\nmetadata: {name: example, namespace: metallb-system}\n\
         spec:\n  myASN: 64500\n  peerASN: 64501\n  peerAddress: 10.0.0.1\n  peerPort: 179\n\
         \x20 sourceAddress: 10.0.0.2\n  routerID: 10.10.10.10\n  holdTime: 90s\n  keepaliveTime: 30s\n\
         \x20 passwordSecret: {name: secretname, namespace: metallb-system}\n  bfdProfile: full\n\
         \x20 ebgpMultiHop: true\n  enableGracefulRestart: true\n\
         \x20 nodeSelectors:\n  - matchLabels: {kubernetes.io/hostname: kind-worker}\n\
         ---\napiVersion: lb.dev/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: local, namespace: metallb-system}\n\
         spec:\n  ipAddressPools: [bgp-pool]\n  aggregationLength: 32\n  aggregationLengthV6: 128\n\
         \x20 localPref: 100\n  communities: [\"65535:65282\", \"large:1:2:3\", no-advertise]\n\
         \x20 peers: [example]\n\
         ---\napiVersion: lb.dev/v1beta1\nkind: BFDProfile\nmetadata: {name: full, namespace: metallb-system}\n\
         spec: {receiveInterval: 380, transmitInterval: 270, detectMultiplier: 37, echoInterval: 62, \
         echoMode: true, passiveMode: true, minimumTtl: 254}\n",
    );
    assert!(ok, "{text}");
    for want in [
        "ok BGPPeer example",
        "ok BGPAdvertisement local",
        "ok BFDProfile full",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }

    let (ok, text) = run(
        "apiVersion: lb.dev/v1beta2\nkind: BGPPeer\nmetadata: {name: asn0}\n\
         spec: {myASN: 0, peerASN: 64500, peerAddress: 10.0.0.1}\n\
         ---\napiVersion: lb.dev/v1beta2\nkind: BGPPeer\nmetadata: {name: noaddr}\n\
         spec: {myASN: 64512, peerASN: 64500}\n\
         ---\napiVersion: lb.dev/v1beta2\nkind: BGPPeer\nmetadata: {name: host}\n\
         spec: {myASN: 64512, peerASN: 64500, peerAddress: router.example}\n\
         ---\napiVersion: lb.dev/v1beta2\nkind: BGPPeer\nmetadata: {name: hold}\n\
         spec: {myASN: 64512, peerASN: 64500, peerAddress: 10.0.0.1, holdTime: ninety}\n\
         ---\napiVersion: lb.dev/v1beta2\nkind: BGPPeer\nmetadata: {name: op}\n\
         spec: {myASN: 64512, peerASN: 64500, peerAddress: 10.0.0.1, \
         nodeSelectors: [{matchExpressions: [{key: a, operator: Equals}]}]}\n\
         ---\napiVersion: lb.dev/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: community}\n\
         spec: {communities: [my-alias]}\n\
         ---\napiVersion: lb.dev/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: wide}\n\
         spec: {communities: [\"65536:1\"]}\n\
         ---\napiVersion: lb.dev/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: agg}\n\
         spec: {aggregationLength: 33}\n\
         ---\napiVersion: lb.dev/v1beta1\nkind: BFDProfile\nmetadata: {name: mult}\n\
         spec: {detectMultiplier: 1}\n",
    );
    assert!(!ok, "{text}");
    for (kind, name, why) in [
        ("BGPPeer", "asn0", "less than the minimum of 1"),
        ("BGPPeer", "noaddr", "'peerAddress' is a required property"),
        ("BGPPeer", "host", "'router.example' does not match"),
        ("BGPPeer", "hold", "'ninety' does not match"),
        ("BGPPeer", "op", "'Equals' is not one of"),
        ("BGPAdvertisement", "community", "'my-alias' does not match"),
        ("BGPAdvertisement", "wide", "'65536:1' does not match"),
        ("BGPAdvertisement", "agg", "greater than the maximum of 32"),
        ("BFDProfile", "mult", "less than the minimum of 2"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("invalid {kind} {name}:")) && l.contains(why)),
            "{kind} {name}: {text}"
        );
    }
}

/// checkov's findings that deploy/ accepts everywhere, each with its reason. The ones that
/// concern one object only are skipped on that object instead (`checkov.io/skipN`
/// annotations, with their reasons: lb's DaemonSet, the h3-whoami and Traefik Deployments),
/// so the same finding anywhere else still fails.
const CHECKOV_SKIPS: [(&str, &str); 4] = [
    (
        "CKV_K8S_43",
        "image digests: the project publishes no image, so the digest exists only once you \
         build and push it; pin it in your copy (image.tag / the manifest)",
    ),
    (
        "CKV_K8S_15",
        "imagePullPolicy Always: images are tagged with their version (immutable), and \
         IfNotPresent is what lets kind use an image loaded with `kind load`",
    ),
    (
        "CKV_K8S_21",
        "the default namespace: the examples are user workloads and go where users put them; \
         lb's own objects are in lb-system",
    ),
    (
        "CKV2_K8S_6",
        "a NetworkPolicy per pod: NetworkPolicy does not apply to lb's hostNetwork pods, and \
         the examples' pods serve any client through the VIP",
    ),
];

/// `checkov --framework kubernetes` with [`CHECKOV_SKIPS`] on `target` (`-d DIR` or
/// `-f FILE`): its JSON summary (passed, failed, skipped, parsing_errors).
fn checkov(flag: &str, target: &Path) -> Json {
    let py = support::python_with("checkov");
    let skips: Vec<&str> = CHECKOV_SKIPS.iter().map(|(id, _)| *id).collect();
    let out = Command::new(&py)
        .args([
            "-m",
            "checkov.main",
            "--framework",
            "kubernetes",
            "--skip-download",
        ])
        .args([
            "--skip-check",
            &skips.join(","),
            "--output",
            "json",
            "--compact",
        ])
        .arg(flag)
        .arg(target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Json = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|c| {
                    format!(
                        "{} {} ({})",
                        str_at(c, "/check_id"),
                        str_at(c, "/resource"),
                        str_at(c, "/file_path")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        failed.is_empty() && out.status.success(),
        "checkov {flag} {}: failed checks: {failed:#?}",
        target.display()
    );
    report["summary"].clone()
}

#[test]
fn checkov_finds_nothing_but_the_justified_skips() {
    let summary = checkov("-d", &deploy());
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert!(summary["passed"].as_u64().unwrap() > 300, "{summary}");
    // The per-object skips are exactly the annotated ones: 6 on lb's DaemonSet, 1 on the
    // h3-whoami Deployment, 1 on Traefik's.
    assert_eq!(summary["skipped"], 8, "{summary}");
    eprintln!("checkov -d deploy: {summary}");

    let (_, rendered) = validation_targets();
    for chart in &rendered {
        let summary = checkov("-f", &chart.0);
        assert!(summary["passed"].as_u64().unwrap() > 50, "{summary}");
        assert_eq!(
            summary["skipped"], 6,
            "the DaemonSet's annotated skips: {summary}"
        );
        eprintln!("checkov -f {}: {summary}", chart.0.display());
    }
}
