//! The real kubectl against the fake: get, server-side and client-side apply, CRDs.
//!
//! kubectl is found as `$KUBECTL`, else `/usr/bin/kubectl`, else `kubectl` on PATH; the
//! test fails with a clear message when it is missing. Client-side validation needs the
//! OpenAPI documents, which the fake does not serve, so applies pass `--validate=false`.

mod common;

use common::{ippool_crd, service, start, within};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

fn kubectl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECTL") {
        return p.into();
    }
    let usr = PathBuf::from("/usr/bin/kubectl");
    if usr.exists() {
        return usr;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("kubectl")).find(|p| p.exists()))
        .unwrap_or_else(|| panic!("kubectl not found (looked at $KUBECTL, /usr/bin/kubectl and PATH); this test needs the real kubectl"))
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "fake-apiserver-kubectl-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Kubectl {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(url: &str) -> Self {
        let dir = scratch_dir();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, fake_apiserver::FakeApiServer::kubeconfig(url)).unwrap();
        Kubectl { dir, kubeconfig }
    }

    /// Run kubectl (asynchronously: the server runs on this test's runtime); panic on failure.
    async fn run(&self, args: &[&str]) -> String {
        let out = within(
            &format!("kubectl {args:?}"),
            tokio::process::Command::new(kubectl_path())
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .arg("--cache-dir")
                .arg(self.dir.join("cache"))
                .args(args)
                .env_remove("KUBECONFIG")
                .output(),
        )
        .await
        .expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        stdout
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap_or(""),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_apply_and_crds() {
    let f = start().await;
    let k = Kubectl::new(&f.url);
    f.server
        .create(&service("default", "a", json!({"app": "a"})))
        .unwrap();
    f.server.create(&service("other", "b", json!({}))).unwrap();

    let version = k.run(&["version", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "33");

    let list: Value =
        serde_json::from_str(&k.run(&["get", "svc", "-A", "-o", "json"]).await).unwrap();
    assert_eq!(names(&list), ["default/a", "other/b"]);
    let list: Value = serde_json::from_str(
        &k.run(&[
            "get", "services", "-l", "app=a", "-n", "default", "-o", "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(names(&list), ["default/a"]);

    let manifest = k.write(
        "app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  namespace: default\ndata:\n  a: \"1\"\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  labels:\n    app: web\n\
         spec:\n  type: LoadBalancer\n  ports:\n  - name: h3\n    port: 443\n    protocol: UDP\n",
    );
    let out = k
        .run(&[
            "apply",
            "--server-side",
            "--validate=false",
            "-f",
            path(&manifest),
        ])
        .await;
    assert!(
        out.contains("configmap/cfg serverside-applied")
            && out.contains("service/web serverside-applied"),
        "{out}"
    );
    let cm = f
        .server
        .get_json("v1", "ConfigMap", Some("default"), "cfg")
        .expect("ConfigMap created");
    assert_eq!(cm["data"]["a"], "1");
    assert_eq!(cm["metadata"]["managedFields"][0]["manager"], "kubectl");
    let svc = f
        .server
        .get_json("v1", "Service", Some("default"), "web")
        .expect("Service created");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);

    // Client-side apply of a changed manifest (a strategic merge patch).
    let changed = k.write("cfg.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg2\n  namespace: default\ndata:\n  b: \"2\"\n");
    k.run(&["apply", "--validate=false", "-f", path(&changed)])
        .await;
    let changed = k.write("cfg.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg2\n  namespace: default\ndata:\n  b: \"3\"\n");
    let out = k
        .run(&["apply", "--validate=false", "-f", path(&changed)])
        .await;
    assert!(out.contains("configmap/cfg2 configured"), "{out}");
    assert_eq!(
        f.server
            .get_json("v1", "ConfigMap", Some("default"), "cfg2")
            .unwrap()["data"]["b"],
        "3"
    );

    // A CRD, then its objects by plural and short name.
    let crd = k.write("crd.json", &ippool_crd().to_string());
    k.run(&[
        "apply",
        "--server-side",
        "--validate=false",
        "-f",
        path(&crd),
    ])
    .await;
    k.run(&[
        "wait",
        "--for",
        "condition=established",
        "crd/ippools.lb.dev",
        "--timeout=10s",
    ])
    .await;
    f.server
        .create_json(json!({"apiVersion": "lb.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "pool-a"},
            "spec": {"addresses": ["198.18.100.0/28"]}}))
        .unwrap();
    let out = k.run(&["get", "ippools"]).await;
    assert!(out.lines().any(|l| l.starts_with("pool-a")), "{out}");
    let list: Value = serde_json::from_str(&k.run(&["get", "lbpool", "-o", "json"]).await).unwrap();
    assert_eq!(names(&list), ["/pool-a"]);

    k.run(&["delete", "svc", "web", "-n", "default"]).await;
    assert!(
        f.server
            .get_json("v1", "Service", Some("default"), "web")
            .is_none()
    );
}
