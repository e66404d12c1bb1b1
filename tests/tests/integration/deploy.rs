//! The deployment files: the Kubernetes manifests render with kustomize and validate offline
//! against a current Kubernetes, every reuselb config they carry parses, and the rendered objects
//! keep their privileges where the design puts them: CAP_BPF + CAP_PERFMON and the seccomp
//! profile that allows bpf() on the reuselb container only, app containers unprivileged with the
//! socket directory read-only, the daemon's /status reachable only from the monitoring namespace.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use balancer_common::protocol;

use balancer_user::config::Config;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kubernetes version the manifests must validate against.
const KUBERNETES: &str = "1.34.0";

fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", &repo().join(dir).to_string_lossy()])
        .output()
        .expect("running kubectl (cargo xtask setup installs Debian's kubernetes-client)");
    assert!(out.status.success(), "kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

fn validate(dir: &str, rendered: &str) {
    let file = std::env::temp_dir().join(format!(
        "reuselb-{}-{}.yaml",
        std::process::id(),
        dir.replace('/', "-")
    ));
    std::fs::write(&file, rendered).unwrap();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", KUBERNETES])
        .arg(&file)
        .output()
        .expect("running kubernetes-validate (cargo xtask setup installs it from PyPI)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{dir} does not validate against Kubernetes {KUBERNETES}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifests_render_and_validate() {
    let _machine = integration_tests::apps::shared();
    for dir in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/overlays/bpffs-bidirectional",
        "deploy/kubernetes/example-uwsgi",
        "deploy/kubernetes/sidecar",
    ] {
        let rendered = render(dir);
        assert!(rendered.contains("kind:"), "{dir} rendered nothing");
        validate(dir, &rendered);
    }
}

#[test]
fn the_daemonset_runs_with_two_capabilities_and_probes_healthz() {
    let _machine = integration_tests::apps::shared();
    let rendered = render("deploy/kubernetes/base");
    for needle in [
        "kind: DaemonSet",
        "- BPF",
        "- PERFMON",
        "- ALL",
        "path: /healthz",
        "maxUnavailable: 1",
        "prometheus.io/scrape",
        "path: /sys/fs/bpf",
        "path: /run/reuselb",
        "type: Localhost",
        "localhostProfile: reuselb/reuselb.json",
    ] {
        assert!(rendered.contains(needle), "the DaemonSet lacks `{needle}`");
    }
    assert!(!rendered.contains("privileged: true"), "the base DaemonSet must not be privileged");
}

#[test]
fn shipped_reuselb_configs_parse() {
    for file in [
        "deploy/kubernetes/base/reuselb.yaml",
        "deploy/kubernetes/sidecar/reuselb.yaml",
        "deploy/examples/reuselb.yaml",
    ] {
        let path = repo().join(file);
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The objects of a rendered kustomization (kustomize puts each after a `---` line).
fn objects(dir: &str) -> Vec<Value> {
    render(dir)
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).expect("rendered YAML parses"))
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"].as_str() == Some(kind)).collect()
}

/// Every container (init containers included) of every pod template, with its pod spec.
fn containers(objects: &[Value]) -> Vec<(&Value, &Value)> {
    let mut all = Vec::new();
    for o in objects {
        let pod = &o["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_sequence().into_iter().flatten() {
                all.push((pod, c));
            }
        }
    }
    all
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// The profile the manifests name, as installed on the nodes (deploy/README.md).
const PROFILE: &str = "reuselb/reuselb.json";

#[test]
fn only_the_reuselb_container_gets_bpf_capabilities_and_the_bpf_seccomp_profile() {
    let _machine = integration_tests::apps::shared();
    for dir in ["deploy/kubernetes/base", "deploy/kubernetes/sidecar"] {
        let objects = objects(dir);
        let all = containers(&objects);
        assert!(all.iter().any(|(_, c)| c["name"].as_str() == Some("reuselb")), "{dir}");
        for (pod, c) in all {
            let name = c["name"].as_str().unwrap_or("?");
            let sc = &c["securityContext"];
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{dir}: {name} drops ALL");
            assert_ne!(sc["privileged"].as_bool(), Some(true), "{dir}: {name} is privileged");
            assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false), "{dir}: {name}");
            let seccomp = if sc["seccompProfile"].is_mapping() {
                &sc["seccompProfile"]
            } else {
                &pod["securityContext"]["seccompProfile"]
            };
            if name == "reuselb" {
                assert_eq!(strings(&sc["capabilities"]["add"]), ["BPF", "PERFMON"], "{dir}");
                assert_eq!(seccomp["type"].as_str(), Some("Localhost"), "{dir}: {name}");
                assert_eq!(seccomp["localhostProfile"].as_str(), Some(PROFILE), "{dir}");
            } else {
                assert!(sc["capabilities"]["add"].is_null(), "{dir}: {name} adds capabilities");
                assert_eq!(seccomp["type"].as_str(), Some("RuntimeDefault"), "{dir}: {name}");
            }
        }
    }
}

#[test]
fn app_pods_mount_the_socket_directory_read_only_and_no_host_path_in_the_sidecar_form() {
    let _machine = integration_tests::apps::shared();
    for dir in ["deploy/kubernetes/example-uwsgi", "deploy/kubernetes/sidecar"] {
        let objects = objects(dir);
        let all = containers(&objects);
        let (pod, app) = all
            .iter()
            .find(|(_, c)| c["name"].as_str() == Some("uwsgi"))
            .unwrap_or_else(|| panic!("{dir}: no uwsgi container"));
        let mounts = app["volumeMounts"].as_sequence().expect("the app mounts volumes");
        let sockets = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some("/run/reuselb"))
            .unwrap_or_else(|| panic!("{dir}: the app does not mount /run/reuselb"));
        assert_eq!(sockets["readOnly"].as_bool(), Some(true), "{dir}: /run/reuselb is writable");
        if dir.ends_with("sidecar") {
            for v in pod["volumes"].as_sequence().into_iter().flatten() {
                assert!(v["hostPath"].is_null(), "{dir}: hostPath volume {:?}", v["name"]);
            }
            let reuselb = all
                .iter()
                .find(|(_, c)| c["name"].as_str() == Some("reuselb"))
                .map(|(_, c)| *c)
                .expect("the sidecar");
            assert_eq!(reuselb["restartPolicy"].as_str(), Some("Always"), "a native sidecar");
            // The daemon tracks workers it cannot see by their connections
            // (tests/tests/integration/container.rs): the app does not see or signal it.
            assert!(pod["shareProcessNamespace"].is_null(), "{dir}: shares the pid namespace");
            assert!(reuselb["startupProbe"].is_mapping(), "the app waits for the daemon");
        }
    }
}

/// The DaemonSet balances pods nobody lists: its ConfigMap has a pods section (no per-pod
/// service, no `netns:`), the example app registers on that section's socket with its label from
/// the downward API and its template from an annotation, and neither needs the host's pids.
#[test]
fn the_daemonset_balances_pods_nobody_lists() {
    let _machine = integration_tests::apps::shared();
    let config = Config::load(repo().join("deploy/kubernetes/base/reuselb.yaml")).unwrap();
    assert!(config.services.iter().all(|s| s.netns.is_none()), "a netns: entry");
    let pods = config.pods.as_ref().expect("the ConfigMap has a pods section");
    let base = objects("deploy/kubernetes/base");
    for (pod, _) in containers(&base) {
        assert!(pod["hostPID"].is_null() && pod["hostNetwork"].is_null(), "{pod:?}");
    }
    let app_objects = objects("deploy/kubernetes/example-uwsgi");
    let all = containers(&app_objects);
    let (pod, app) = all.iter().find(|(_, c)| c["name"].as_str() == Some("uwsgi")).unwrap();
    assert!(pod["hostPID"].is_null() && pod["shareProcessNamespace"].is_null());
    let env = app["env"].as_sequence().expect("the app's environment");
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in the app's environment"))
    };
    assert_eq!(
        var(protocol::ENV_SOCKET)["value"].as_str().map(Path::new),
        Some(pods.shim_socket()),
        "the app registers elsewhere than the pods socket"
    );
    let template = &var(protocol::ENV_TEMPLATE)["valueFrom"]["fieldRef"]["fieldPath"];
    let annotation = template.as_str().expect("the template comes from the pod's annotation");
    let key = annotation
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
        .expect("an annotation");
    let template_meta =
        &app_objects.iter().find(|o| o["kind"].as_str() == Some("Deployment")).unwrap()["spec"]
            ["template"]["metadata"]["annotations"][key];
    let name = template_meta.as_str().expect("the example sets the annotation");
    assert!(pods.template(name).is_some(), "template `{name}` is not in the ConfigMap");
    assert!(var(protocol::ENV_POD)["value"].as_str().is_some_and(|v| v.contains("$(POD_NAME)")));
}

#[test]
fn the_daemon_status_is_open_only_to_the_monitoring_namespace() {
    let _machine = integration_tests::apps::shared();
    let objects = objects("deploy/kubernetes/base");
    let policies = of_kind(&objects, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "the DaemonSet's NetworkPolicy");
    let spec = &policies[0]["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("reuselb")
    );
    assert_eq!(strings(&spec["policyTypes"]), ["Ingress", "Egress"]);
    assert_eq!(spec["egress"].as_sequence().map(Vec::len), Some(0), "no egress");
    let ingress = spec["ingress"].as_sequence().expect("ingress rules");
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["ports"][0]["port"].as_u64(), Some(9464));
    let from = ingress[0]["from"].as_sequence().expect("from");
    assert_eq!(from.len(), 1, "one source only");
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
        Some("monitoring")
    );
    // The sidecar's daemon serves /status on the pod's loopback only.
    let sidecar = Config::load(repo().join("deploy/kubernetes/sidecar/reuselb.yaml")).unwrap();
    let addr = sidecar.metrics_addr.expect("the sidecar sets metrics_addr");
    assert!(addr.ip().is_loopback(), "sidecar metrics_addr {addr}");
}

#[test]
fn the_seccomp_profile_allows_bpf_and_keeps_what_the_default_denies_denied() {
    let _machine = integration_tests::apps::shared();
    let path = repo().join("deploy/seccomp/reuselb.json");
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("profile is JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let rules = profile["syscalls"].as_array().expect("syscalls");
    let allowed = |name: &str| {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["args"].as_array().is_none_or(Vec::is_empty)
                && r["names"].as_array().is_some_and(|n| n.iter().any(|x| x == name))
        })
    };
    assert!(allowed("bpf"), "the profile must allow bpf()");
    // Denied by the runtime default to a container without CAP_SYS_ADMIN and friends (or
    // allowed nowhere): still denied. perf_event_open included: reuselb does not need it.
    for denied in [
        "perf_event_open",
        "fanotify_init",
        "init_module",
        "finit_module",
        "kexec_load",
        "open_by_handle_at",
        "swapon",
        "acct",
        "iopl",
        "chroot",
        "clock_settime",
        "userfaultfd",
        "add_key",
    ] {
        assert!(!allowed(denied), "the profile allows {denied}");
    }
}
