//! The daemon's config file: good files parse to the expected values, and each bad file is
//! refused with a message that names the file, line and column, and says what was expected.
use std::{net::SocketAddr, path::Path};

use balancer_common::Policy;
use balancer_config::{Config, ConfigError, Mode, DEFAULT_PIN_PATH};

const FILE: &str = "test.yaml";

/// A bad config: its text, the fragments its message must contain, and the expected
/// `FILE:LINE:COLUMN: ` prefix.
struct Bad {
    what: &'static str,
    text: &'static str,
    prefix: &'static str,
    fragments: &'static [&'static str],
}

const BAD: &[Bad] = &[
    Bad {
        what: "unknown top-level field",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\nmetrics_adr: 127.0.0.1:9464\n",
        prefix: "test.yaml:4:1: ",
        fragments: &["unknown field `metrics_adr`", "expected one of `shim_socket_dir`, `metrics_addr`, `pin_path`, `services`"],
    },
    Bad {
        what: "unknown service field",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    polcy: p2c\n",
        prefix: "test.yaml:4:5: ",
        fragments: &["services[0]: unknown field `polcy`", "expected one of `name`, `listen`, `policy`"],
    },
    Bad {
        what: "bad policy",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    policy: fastest\n",
        prefix: "test.yaml:4:13: ",
        fragments: &["services[0].policy: unknown policy `fastest`: expected one of least-loaded, work-left, speed-aware, p2c, round-robin, hash, pack"],
    },
    Bad {
        what: "retired policy",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    policy: peak-ewma\n",
        prefix: "test.yaml:4:13: ",
        fragments: &["services[0].policy: policy `peak-ewma` was retired (", "): use `speed-aware`, or one of least-loaded, work-left, speed-aware"],
    },
    Bad {
        what: "bad address",
        text: "services:\n  - name: web\n    listen:\n      - 127.0.0.1:8000\n      - localhost:8000\n",
        prefix: "test.yaml:5:9: ",
        fragments: &["services[0].listen[1]: invalid listen address `localhost:8000`", "expected IP:PORT such as 127.0.0.1:8000"],
    },
    Bad {
        what: "port 0",
        text: "services:\n  - name: web\n    listen: [\"127.0.0.1:0\"]\n",
        prefix: "test.yaml:3:14: ",
        fragments: &["services[0].listen[0]: invalid listen address `127.0.0.1:0`", "port of 1..=65535"],
    },
    Bad {
        what: "empty listen",
        text: "services:\n  - name: web\n    listen: []\n",
        prefix: "test.yaml:3:13: ",
        fragments: &["services[0].listen: no listen address: expected at least one IP:PORT"],
    },
    Bad {
        what: "no listen field",
        text: "services:\n  - name: web\n    policy: p2c\n",
        prefix: "test.yaml:2:5: ",
        fragments: &["services[0]: missing field `listen`"],
    },
    Bad {
        what: "duplicate service name",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n  - name: web\n    listen: 127.0.0.1:8001\n",
        prefix: "test.yaml:4:11: ",
        fragments: &["services[1].name: duplicate service name `web`: services[0] has it already; expected unique names"],
    },
    Bad {
        what: "duplicate listen across services",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n  - name: api\n    listen: [\"[::1]:9000\", \"127.0.0.1:8000\"]\n",
        prefix: "test.yaml:5:28: ",
        fragments: &["services[1].listen[1]: listen address 127.0.0.1:8000 is already used by service `web`; expected every listen address once per network namespace"],
    },
    Bad {
        what: "wildcard overlaps a specific address",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n  - name: api\n    listen:\n      - 0.0.0.0:8000\n",
        prefix: "test.yaml:6:9: ",
        fragments: &["services[1].listen[0]: listen address 0.0.0.0:8000 overlaps 127.0.0.1:8000, which is used by service `web`"],
    },
    Bad {
        what: "duplicate listen within one service",
        text: "services:\n  - name: web\n    listen: [\"127.0.0.1:8000\", \"127.0.0.1:8000\"]\n",
        prefix: "test.yaml:3:32: ",
        fragments: &["services[0].listen[1]: listen address 127.0.0.1:8000 is already used by this service"],
    },
    Bad {
        what: "max_workers 0",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    max_workers: 0\n",
        prefix: "test.yaml:4:18: ",
        fragments: &["services[0].max_workers: max_workers must be 1..=256, got 0"],
    },
    Bad {
        what: "max_workers 257",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    max_workers: 257\n",
        prefix: "test.yaml:4:18: ",
        fragments: &["max_workers must be 1..=256, got 257"],
    },
    Bad {
        what: "blocked_after_ms over ten minutes",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    blocked_after_ms: 600001\n",
        prefix: "test.yaml:4:23: ",
        fragments: &["blocked_after_ms must be 0..=600000, got 600001"],
    },
    Bad {
        what: "pack_depth over 65535",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    pack_depth: 65536\n",
        prefix: "test.yaml:4:17: ",
        fragments: &["pack_depth must be 0..=65535, got 65536"],
    },
    Bad {
        what: "pack_depth negative",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    policy: pack\n    pack_depth: -1\n",
        prefix: "test.yaml:5:17: ",
        fragments: &["pack_depth"],
    },
    Bad {
        what: "bad name",
        text: "services:\n  - name: Web.App\n    listen: 127.0.0.1:8000\n",
        prefix: "test.yaml:2:11: ",
        fragments: &["services[0].name: invalid service name `Web.App`: expected 1 to 32 characters of a-z, 0-9, `_` and `-`"],
    },
    Bad {
        what: "name too long",
        text: "services:\n  - name: abcdefghijabcdefghijabcdefghijabc\n    listen: 127.0.0.1:8000\n",
        prefix: "test.yaml:2:11: ",
        fragments: &["invalid service name `abcdefghijabcdefghijabcdefghijabc`"],
    },
    Bad {
        what: "string for max_workers",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    max_workers: lots\n",
        prefix: "test.yaml:4:18: ",
        fragments: &["services[0].max_workers: invalid type: string \"lots\", expected an integer 1..=256"],
    },
    Bad {
        what: "tab indentation",
        text: "services:\n  - name: web\n\tlisten: 127.0.0.1:8000\n",
        prefix: "test.yaml:3:1: ",
        fragments: &["found a tab character that violates indentation", "a tab is indenting this line: YAML indentation must be spaces"],
    },
    Bad {
        what: "bad indentation",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n   policy: p2c\n",
        prefix: "test.yaml:4:4: ",
        fragments: &["did not find expected"],
    },
    Bad {
        what: "empty file",
        text: "",
        prefix: "test.yaml:1:1: ",
        fragments: &["the file is empty: expected a mapping with at least a `services:` list"],
    },
    Bad {
        what: "only comments",
        text: "# nothing yet\n\n",
        prefix: "test.yaml:1:1: ",
        fragments: &["the file is empty"],
    },
    Bad {
        what: "allowed_uids negative",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    allowed_uids: [33, -1]\n",
        prefix: "test.yaml:4:24: ",
        fragments: &["services[0].allowed_uids[1]: uid must be 0..=4294967294, got -1"],
    },
    Bad {
        what: "allowed_uids empty",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    allowed_uids: []\n",
        prefix: "test.yaml:4:19: ",
        fragments: &["services[0].allowed_uids: allowed_uids is empty", "omit it to allow the daemon's own uid"],
    },
    Bad {
        what: "no services",
        text: "services: []\n",
        prefix: "test.yaml:1:11: ",
        fragments: &["services: no services: expected at least one"],
    },
    Bad {
        what: "missing services",
        text: "pin_path: /sys/fs/bpf/reuselb\n",
        prefix: "test.yaml:",
        fragments: &["no services: expected at least one, or a `pods:` section"],
    },
    Bad {
        what: "relative path",
        text: "pin_path: sys/fs/bpf\nservices:\n  - name: web\n    listen: 127.0.0.1:8000\n",
        prefix: "test.yaml:1:11: ",
        fragments: &["pin_path: expected an absolute path (starting with /), got `sys/fs/bpf`"],
    },
    Bad {
        what: "shared shim socket",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n  - name: api\n    listen: 127.0.0.1:9000\n    shim_socket: /run/reuselb/web.sock\n",
        prefix: "test.yaml:6:18: ",
        fragments: &["services[1].shim_socket: shim socket /run/reuselb/web.sock is also the socket of service `web`"],
    },
    Bad {
        what: "bad mode",
        text: "services:\n  - name: web\n    listen: 127.0.0.1:8000\n    mode: migrate\n",
        prefix: "test.yaml:4:11: ",
        fragments: &["unknown mode `migrate`: expected one of auto, select, select-or-migrate"],
    },
    Bad {
        what: "services is not a list",
        text: "services:\n  name: web\n",
        prefix: "test.yaml:2:3: ",
        fragments: &["services: invalid type: map, expected a sequence"],
    },
    Bad {
        what: "flow style, duplicate name",
        text: "services: [{name: a, listen: 127.0.0.1:1}, {name: a, listen: 127.0.0.1:2}]\n",
        prefix: "test.yaml:1:51: ",
        fragments: &["services[1].name: duplicate service name `a`"],
    },
];

#[test]
fn bad_configs_name_file_line_column_and_what_was_expected() {
    let mut failures = Vec::new();
    for bad in BAD {
        match Config::parse(bad.text, FILE) {
            Ok(config) => failures.push(format!("{}: accepted: {config:?}", bad.what)),
            Err(err) => {
                let msg = err.to_string();
                eprintln!("{:<40} {msg}", bad.what);
                let mut wrong = Vec::new();
                if !msg.starts_with(bad.prefix) {
                    wrong.push(format!("prefix {:?}", bad.prefix));
                }
                for f in bad.fragments {
                    if !msg.contains(f) {
                        wrong.push(format!("fragment {f:?}"));
                    }
                }
                if !wrong.is_empty() {
                    failures.push(format!(
                        "{}: got {msg:?}, missing {}",
                        bad.what,
                        wrong.join(", ")
                    ));
                }
            }
        }
    }
    assert!(BAD.len() >= 12);
    assert!(
        failures.is_empty(),
        "{} of {} bad configs:\n{}",
        failures.len(),
        BAD.len(),
        failures.join("\n")
    );
}

#[test]
fn minimal_config_takes_the_defaults() {
    let c = Config::parse("services:\n  - name: web\n    listen: 127.0.0.1:8000\n", FILE).unwrap();
    assert_eq!(c.shim_socket_dir, Path::new("/run/reuselb"));
    assert_eq!(c.pin_path, Path::new(DEFAULT_PIN_PATH));
    assert_eq!(c.metrics_addr, None);
    let s = &c.services[0];
    assert_eq!(s.name, "web");
    assert_eq!(s.listen, vec!["127.0.0.1:8000".parse::<SocketAddr>().unwrap()]);
    assert_eq!(s.policy, Policy::SpeedAware);
    assert_eq!(s.mode, Mode::Auto);
    assert_eq!(s.weight, 1);
    assert_eq!(s.max_workers, 256);
    assert_eq!(s.allowed_uids, None);
    assert_eq!(s.allowed_uids_or(1234), vec![1234]);
    assert_eq!(s.shim_socket(), Path::new("/run/reuselb/web.sock"));
    assert_eq!(s.netns, None);
    c.validate().unwrap();
}

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/reuselb.yaml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(c.services.len(), 2);
    let web = c.service("web").unwrap();
    assert_eq!(
        web.listen,
        vec!["127.0.0.1:8000".parse::<SocketAddr>().unwrap(), "[::1]:8000".parse().unwrap()]
    );
    assert_eq!(web.max_workers, 64);
    assert_eq!(web.allowed_uids, Some(vec![33, 1000]));
    let api = c.service("api").unwrap();
    assert_eq!(api.policy, Policy::PowerOfTwo);
    assert_eq!(api.shim_socket(), Path::new("/run/reuselb/api.sock"));
    assert_eq!(api.netns.as_deref(), Some(Path::new("/var/run/netns/pod1")));
    let pods = c.pods.as_ref().expect("the example documents the pods section");
    assert_eq!(pods.shim_socket(), Path::new("/run/reuselb/pods.sock"));
    assert_eq!(pods.template("web").unwrap().allowed_uids, Some(vec![33, 1000]));
    assert_eq!(pods.template("batch").unwrap().policy, Policy::PowerOfTwo);
}

#[test]
fn fixture_files_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs");
    let good = Config::load(dir.join("two-services.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        good.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["web", "web-v6"]
    );
    let err = Config::load(dir.join("bad-policy.yaml")).unwrap_err().to_string();
    assert!(err.ends_with("tests/configs/bad-policy.yaml:6:13: services[0].policy: unknown policy `least_busy`: expected one of least-loaded, work-left, speed-aware, p2c, round-robin, hash, pack"), "{err}");
    let err = Config::load(dir.join("does-not-exist.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist.yaml: cannot read the config"), "{err}");
}

#[test]
fn same_address_in_two_network_namespaces_is_fine() {
    let text = "services:\n  - name: a\n    listen: 0.0.0.0:8000\n    netns: /var/run/netns/pod1\n  - name: b\n    listen: 0.0.0.0:8000\n    netns: /var/run/netns/pod2\n  - name: c\n    listen: \"[::]:8000\"\n";
    let c = Config::parse(text, FILE).unwrap();
    assert_eq!(c.services.len(), 3);
}

#[test]
fn policy_aliases_and_flow_style() {
    let c = Config::parse("services: [{name: a, listen: [\"[::1]:1\"], policy: rr}, {name: b, listen: 127.0.0.1:2, policy: hash}]", FILE).unwrap();
    assert_eq!(c.services[0].policy, Policy::RoundRobin);
    assert_eq!(c.services[1].policy, Policy::Hash);
}

#[test]
fn diff_sorts_reload_changes() {
    let old = Config::parse(
        "services:\n  - {name: a, listen: 127.0.0.1:1}\n  - {name: b, listen: 127.0.0.1:2}\n  - {name: c, listen: 127.0.0.1:3}\n",
        FILE,
    )
    .unwrap();
    let new = Config::parse(
        "services:\n  - {name: a, listen: 127.0.0.1:1, policy: p2c}\n  - {name: b, listen: 127.0.0.1:22}\n  - {name: d, listen: 127.0.0.1:4}\n",
        FILE,
    )
    .unwrap();
    let d = old.diff(&new);
    assert_eq!(d.added, ["d"]);
    assert_eq!(d.removed, ["c"]);
    assert_eq!(d.updated, ["a"]);
    assert_eq!(d.recreated, ["b"]);
    assert!(!d.globals_changed);
    assert!(old.diff(&old).is_empty());
}

#[test]
fn validate_checks_a_config_built_in_code() {
    let mut c =
        Config::parse("services:\n  - name: web\n    listen: 127.0.0.1:8000\n", FILE).unwrap();
    let mut twin = c.services[0].clone();
    twin.shim_socket = None;
    c.services.push(twin);
    let err = c.validate().unwrap_err().to_string();
    assert_eq!(err, "<config>: services[1].name: duplicate service name `web`: services[0] has it already; expected unique names");
}

#[test]
fn pods_section_takes_its_defaults_and_needs_no_services() {
    let text = "shim_socket_dir: /run/reuselb\npods:\n  templates:\n    - name: default\n      policy: least-loaded\n      max_workers: 64\n      allowed_uids: [33]\n    - name: batch\n      policy: p2c\n      mode: select\n    - name: warm\n      policy: pack\n      pack_depth: 4\n";
    let c = Config::parse(text, FILE).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.services.is_empty());
    let p = c.pods.as_ref().unwrap();
    assert_eq!(p.shim_socket(), Path::new("/run/reuselb/pods.sock"));
    assert_eq!(p.default_template, "default");
    assert_eq!(p.max_groups, balancer_config::pods::DEFAULT_MAX_GROUPS);
    assert_eq!(p.max_groups_per_pod, balancer_config::pods::DEFAULT_MAX_GROUPS_PER_POD);
    assert_eq!(p.max_workers_per_pod, balancer_config::pods::DEFAULT_MAX_WORKERS_PER_POD);
    assert_eq!(p.removal_grace_ms, balancer_config::pods::DEFAULT_REMOVAL_GRACE_MS);
    let batch = p.template("batch").unwrap();
    assert_eq!((batch.policy, batch.mode, batch.weight), (Policy::PowerOfTwo, Mode::Select, 1));
    assert_eq!(p.template("default").unwrap().allowed_uids, Some(vec![33]));
    let warm = p.template("warm").unwrap();
    assert_eq!((warm.policy, warm.pack_depth), (Policy::Pack, 4));
    assert_eq!(p.template("default").unwrap().pack_depth, 0);
    assert!(c.validate().is_ok());
    let mut other = c.clone();
    other.pods.as_mut().unwrap().templates[1].policy = Policy::Hash;
    let d = c.diff(&other);
    assert!(d.pods_changed && d.added.is_empty() && d.updated.is_empty(), "{d:?}");
    assert!(c.diff(&c).is_empty());
}

#[test]
fn bad_pods_sections_are_refused_with_their_position() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "pods:\n  default_template: web\n  templates:\n    - name: default\n",
            "test.yaml:2:21: ",
            "pods.default_template: default_template `web` is not a template: expected one of default",
        ),
        (
            "pods:\n  templates:\n    - name: default\n    - name: default\n",
            "test.yaml:4:13: ",
            "pods.templates[1].name: duplicate template name `default`",
        ),
        ("pods:\n  templates: []\n", "test.yaml:2:14: ", "pods.templates: no templates"),
        (
            "pods:\n  max_groups: 0\n  templates: [{name: default}]\n",
            "test.yaml:2:15: ",
            "max_groups must be 1..=1024, got 0",
        ),
        (
            "pods:\n  max_groups_per_pod: 0\n  templates: [{name: default}]\n",
            "test.yaml:2:23: ",
            "max_groups_per_pod must be 1..=1024, got 0",
        ),
        (
            "pods:\n  max_workers_per_pod: 65537\n  templates: [{name: default}]\n",
            "test.yaml:2:24: ",
            "max_workers_per_pod must be 1..=65536, got 65537",
        ),
        (
            "pods:\n  templates: [{name: default, polcy: p2c}]\n",
            "test.yaml:2:31: ",
            "unknown field `polcy`",
        ),
        (
            "services:\n  - name: pods\n    listen: 127.0.0.1:1\npods:\n  templates: [{name: default}]\n",
            "test.yaml:2:11: ",
            "services[0].name: the service name `pods` is taken by the pods section",
        ),
        (
            "services:\n  - name: web\n    listen: 127.0.0.1:1\n    shim_socket: /run/reuselb/pods.sock\npods:\n  templates: [{name: default}]\n",
            "",
            "pods.shim_socket: shim socket /run/reuselb/pods.sock is also the socket of service `web`",
        ),
        ("pin_path: /x\n", "test.yaml:", "no services: expected at least one, or a `pods:` section"),
    ];
    for (text, prefix, fragment) in cases {
        let err = Config::parse(text, FILE).unwrap_err().to_string();
        assert!(err.starts_with(prefix), "{text:?}: {err}");
        assert!(err.contains(fragment), "{text:?}: {err}");
    }
}
