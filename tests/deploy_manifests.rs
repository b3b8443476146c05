//! The Kubernetes deployment artifacts under `deploy/`: every YAML document parses, every
//! Kubernetes object deserializes into its real API type without losing a field, the
//! DaemonSet runs `lb` with flags `lb run --help` knows, the ConfigMap holds a kube-mode
//! lb.toml, RBAC grants exactly what the daemon calls, the examples are consistent with
//! each other and with lb's QUIC-LB codec, and the Helm chart renders exactly the objects of
//! `deploy/manifests/` (with a small Go-template subset here, and with the real Helm engine
//! when `deploy/helm/install-helm-engine.sh` installed it).

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
    for crds in [deploy().join("crds"), deploy().join("helm/lb/crds")] {
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
    let tolerated: Vec<&str> = spec["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(tolerated.contains(&"node-role.kubernetes.io/control-plane"));

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

    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON", "NET_RAW"])
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
    assert_eq!(mounts["config"], "/etc/lb");
    assert_eq!(volume("config")["configMap"]["name"], "lb-config");

    // Readiness on /status at the metrics port of the config.
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/status");
    assert_eq!(probe["port"], 9100);
    assert_eq!(c["ports"][0]["containerPort"], 9100);
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
    assert_eq!(t["metrics_addr"].as_str(), Some("0.0.0.0:9100"));
    let k = t["kubernetes"].as_table().expect("[kubernetes] is a table");
    let keys: BTreeSet<&str> = k.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "load_balancer_class",
            "default_class",
            "lease_namespace",
            "lease_duration_ms",
            "lease_renew_ms"
        ])
    );
    assert_eq!(k["load_balancer_class"].as_str(), Some("lb.dev/lb"));
    assert_eq!(k["default_class"].as_bool(), Some(false));
    assert_eq!(k["lease_namespace"].as_str(), Some("lb-system"));
    let (duration, renew) = (
        k["lease_duration_ms"].as_integer().unwrap(),
        k["lease_renew_ms"].as_integer().unwrap(),
    );
    assert_eq!((duration, renew), (1200, 300));
    assert!(renew < duration);
}

/// (apiGroup, resource) -> verbs, flattened from a role's rules.
fn grants(role: &Json) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                let verbs = out
                    .entry((g.as_str().unwrap().into(), r.as_str().unwrap().into()))
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

/// What `lb run --kube` calls, and nothing else.
const CLUSTER_GRANTS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("", "services/status", &["patch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
    ("", "pods", &["get"]),
    ("", "secrets", &["get"]),
    ("lb.dev", "ippools", &["list", "watch"]),
    // The status writer keeps each pool's assigned/available counts.
    ("lb.dev", "ippools/status", &["patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];
/// e2e_kube checks these tables against the requests real daemons make.
const LEASE_GRANTS: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["list", "watch", "create", "patch", "delete"],
)];

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
    for (kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = find(&objs, kind, "lb");
        assert_eq!(b["roleRef"]["kind"], role_kind);
        assert_eq!(b["roleRef"]["name"], "lb");
        assert_eq!(
            b["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "lb", "namespace": "lb-system"}])
        );
    }
    find(&objs, "ServiceAccount", "lb");
    let ns = find(&objs, "Namespace", "lb-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    // Everything namespaced is in lb-system.
    for o in &objs {
        if let Some(ns) = o["metadata"].get("namespace") {
            assert_eq!(ns, "lb-system", "{}", o["metadata"]["name"]);
        }
    }
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
// Helm: a deliberately small Go-template subset, enough for deploy/helm/lb/templates:
//   {{ PIPELINE }}   with {{- and -}} trimming
//   PIPELINE = ARG | toYaml ARG | toJson ARG, then any of  | quote  | nindent N  | indent N
//   ARG      = .Values.a.b...  .Release.Namespace  .Release.Name  .Chart.AppVersion
//              .Chart.Version  .Chart.Name
//   {{ if ARG }} ... {{ end }}   (Go truthiness: false, 0, "", null, empty list/map)
// Anything else is an error, so a template that needs more makes this test fail rather
// than render something Helm would not.

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(src: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let (trim_left, after) = match after.strip_prefix('-') {
            Some(a) if a.starts_with([' ', '\t', '\n']) => (true, a),
            _ => (false, after),
        };
        if trim_left {
            text = text.trim_end();
        }
        tokens.push(Token::Text(text.to_string()));
        let end = after.find("}}").expect("unclosed {{");
        let mut action = &after[..end];
        trim_next = false;
        if let Some(a) = action.strip_suffix('-')
            && a.ends_with([' ', '\t', '\n'])
        {
            action = a;
            trim_next = true;
        }
        tokens.push(Token::Action(action.trim().to_string()));
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    tokens.push(Token::Text(text.to_string()));
    tokens
}

struct Scope<'a> {
    values: &'a Yaml,
    chart: &'a Yaml,
    release_name: &'a str,
    namespace: &'a str,
}

impl Scope<'_> {
    fn arg(&self, arg: &str) -> Result<Yaml, String> {
        let mut parts = arg.strip_prefix('.').ok_or(arg)?.split('.');
        let root = parts.next().unwrap();
        let rest: Vec<&str> = parts.collect();
        match (root, rest.as_slice()) {
            ("Release", ["Namespace"]) => Ok(Yaml::from(self.namespace)),
            ("Release", ["Name"]) => Ok(Yaml::from(self.release_name)),
            ("Chart", [field @ ("AppVersion" | "Version" | "Name")]) => {
                let key = match *field {
                    "AppVersion" => "appVersion",
                    "Version" => "version",
                    _ => "name",
                };
                Ok(self.chart[key].clone())
            }
            ("Values", path) => {
                let mut v = self.values;
                for p in path {
                    v = v
                        .get(*p)
                        .ok_or_else(|| format!("no value {arg} in values.yaml"))?;
                }
                Ok(v.clone())
            }
            _ => Err(format!("{arg}: outside the supported template subset")),
        }
    }
}

fn print(v: &Yaml) -> Result<String, String> {
    match v {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Bool(b) => Ok(b.to_string()),
        Yaml::Number(n) => Ok(n.to_string()),
        other => Err(format!("printing {other:?} directly: use toYaml or toJson")),
    }
}

fn truthy(v: &Yaml) -> bool {
    match v {
        Yaml::Null => false,
        Yaml::Bool(b) => *b,
        Yaml::Number(n) => n.as_f64() != Some(0.0),
        Yaml::String(s) => !s.is_empty(),
        Yaml::Sequence(s) => !s.is_empty(),
        Yaml::Mapping(m) => !m.is_empty(),
        Yaml::Tagged(_) => true,
    }
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn pipeline(scope: &Scope, action: &str) -> Result<String, String> {
    let mut stages = action.split('|').map(str::trim);
    let first: Vec<&str> = stages.next().unwrap().split_whitespace().collect();
    let mut out = match first.as_slice() {
        ["toYaml", arg] => serde_yaml::to_string(&scope.arg(arg)?)
            .unwrap()
            .trim_end_matches('\n')
            .to_string(),
        ["toJson", arg] => serde_json::to_string(&scope.arg(arg)?).unwrap(),
        [arg] => print(&scope.arg(arg)?)?,
        _ => return Err(format!("{{{{ {action} }}}}: outside the supported subset")),
    };
    for stage in stages {
        let words: Vec<&str> = stage.split_whitespace().collect();
        out = match words.as_slice() {
            ["quote"] => serde_json::to_string(&out).unwrap(),
            ["nindent", n] => format!("\n{}", indent(&out, n.parse().map_err(|_| stage)?)),
            ["indent", n] => indent(&out, n.parse().map_err(|_| stage)?),
            _ => return Err(format!("| {stage}: outside the supported subset")),
        };
    }
    Ok(out)
}

fn render_template(scope: &Scope, src: &str) -> Result<String, String> {
    let mut out = String::new();
    // One entry per open `if`: whether its body is being emitted.
    let mut active: Vec<bool> = Vec::new();
    for token in tokenize(src) {
        let on = active.iter().all(|a| *a);
        match token {
            Token::Text(t) => {
                if on {
                    out.push_str(&t)
                }
            }
            Token::Action(a) if a.starts_with("/*") => {}
            Token::Action(a) => {
                let words: Vec<&str> = a.split_whitespace().collect();
                match words.as_slice() {
                    ["if", arg] => active.push(truthy(&scope.arg(arg)?)),
                    ["end"] => {
                        active.pop().ok_or("{{ end }} without {{ if }}")?;
                    }
                    _ if on => out.push_str(&pipeline(scope, &a)?),
                    _ => {
                        pipeline(scope, &a)?;
                    }
                }
            }
        }
    }
    if !active.is_empty() {
        return Err("{{ if }} without {{ end }}".into());
    }
    Ok(out)
}

fn chart_dir() -> PathBuf {
    deploy().join("helm/lb")
}

/// The chart's templates rendered by the subset above with values.yaml, as one stream.
fn render_chart_subset(namespace: &str) -> String {
    let dir = chart_dir();
    let values: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    let chart: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
    let scope = Scope {
        values: &values,
        chart: &chart,
        release_name: "lb",
        namespace,
    };
    let mut stream = String::new();
    for path in yaml_files(&dir.join("templates")) {
        let src = std::fs::read_to_string(&path).unwrap();
        let text =
            render_template(&scope, &src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        stream.push_str("---\n");
        stream.push_str(&text);
        stream.push('\n');
    }
    stream
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

fn assert_same_objects(rendered: &str, how: &str) {
    let got = by_identity(parse_stream(rendered, how).iter().map(to_json));
    let want = by_identity(manifests().into_iter().filter(|o| o["kind"] != "Namespace"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{how}: the chart renders other objects than deploy/manifests (minus the Namespace)"
    );
    for (id, w) in &want {
        assert_eq!(
            &got[id],
            w,
            "{how}: {id} differs from deploy/manifests:\nrendered {}\nmanifest {}",
            serde_json::to_string_pretty(&got[id]).unwrap(),
            serde_json::to_string_pretty(w).unwrap()
        );
    }
}

#[test]
fn helm_chart_renders_the_manifests_subset_renderer() {
    let rendered = render_chart_subset("lb-system");
    for doc in parse_stream(&rendered, "chart") {
        check_typed(&to_json(&doc), "helm chart");
    }
    assert_same_objects(&rendered, "subset renderer");
    // The release namespace reaches every namespaced object, the bindings and lb.toml.
    let other = render_chart_subset("elsewhere");
    assert!(!other.contains("lb-system"), "{other}");
    assert!(other.contains("lease_namespace = \"elsewhere\""));
}

#[test]
fn subset_renderer_renders_and_rejects() {
    let values: Yaml = serde_yaml::from_str(
        "a: {b: x}\nl: [p, q]\nm: {k: v}\nempty: {}\nn: 1500\nt: true\nf: false\n",
    )
    .unwrap();
    let chart: Yaml = serde_yaml::from_str("appVersion: \"1.2.3\"").unwrap();
    let scope = Scope {
        values: &values,
        chart: &chart,
        release_name: "r",
        namespace: "ns",
    };
    let r = |src: &str| render_template(&scope, src);
    assert_eq!(r("x: {{ .Values.a.b }}").unwrap(), "x: x");
    assert_eq!(
        r("x: {{ .Values.n }} {{ .Values.t }}").unwrap(),
        "x: 1500 true"
    );
    assert_eq!(
        r("v: {{ .Chart.AppVersion | quote }} {{ .Release.Namespace }}").unwrap(),
        "v: \"1.2.3\" ns"
    );
    assert_eq!(
        r("i = {{ toJson .Values.l }}").unwrap(),
        "i = [\"p\",\"q\"]"
    );
    assert_eq!(
        r("m:\n  {{- toYaml .Values.m | nindent 2 }}\nz: 1").unwrap(),
        "m:\n  k: v\nz: 1"
    );
    assert_eq!(
        r("a: 1\n{{- if .Values.empty }}\nb: 2\n{{- end }}\nc: 3").unwrap(),
        "a: 1\nc: 3"
    );
    assert_eq!(
        r("a: 1\n{{- if .Values.t }}\nb: 2\n{{- end }}\nc: 3").unwrap(),
        "a: 1\nb: 2\nc: 3"
    );
    assert!(r("{{ .Values.nope }}").is_err());
    assert!(r("{{ .Values.m }}").is_err());
    assert!(r("{{ include \"x\" . }}").is_err());
    assert!(r("{{ .Values.a.b | upper }}").is_err());
    assert!(r("{{ if .Values.t }}").is_err());
}

/// The Python with the real Helm engine (helm-python-sdk), if installed.
fn helm_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("LB_TEST_PYTHON").map(PathBuf::from),
        Some(repo().join(".venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", "import helm_python"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

#[test]
fn helm_chart_renders_the_manifests_real_helm_engine() {
    let Some(py) = helm_python() else {
        let msg = "the real Helm engine is not installed (deploy/helm/install-helm-engine.sh); \
                   only the subset renderer checked the chart";
        assert!(
            std::env::var_os("LB_REQUIRE_HELM_ENGINE").is_none(),
            "LB_REQUIRE_HELM_ENGINE is set, but {msg}"
        );
        eprintln!("note: {msg}");
        return;
    };
    let out = Command::new(&py)
        .arg(deploy().join("helm/render.py"))
        .arg(chart_dir())
        .arg("lb-system")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_objects(&String::from_utf8(out.stdout).unwrap(), "real Helm engine");
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
    // The Helm chart's CRDs are the same files as deploy/crds/.
    let (a, b) = (deploy().join("crds"), chart_dir().join("crds"));
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
