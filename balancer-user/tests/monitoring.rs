//! deploy/monitoring: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`, synthetic series), the dashboard's queries parse as PromQL (promtool
//! again), the metrics a full report produces pass `promtool check metrics`, and every metric
//! that an alert rule or a dashboard query names is one that reuselb registers
//! ([`Metrics::metric_names`]).
//!
//! promtool comes from Debian's `prometheus` package (`cargo xtask setup` installs it); without
//! it these tests fail, saying so.
use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use balancer_common::{protocol::Status, Event, Policy};
use balancer_user::{
    loader::Program,
    metrics::Metrics,
    report::{
        Counts, GroupReport, Mode, PodReport, RegistryReport, Report, ServiceReport, WorkerReport,
    },
};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// Runs promtool with `args` (in deploy/monitoring) and `stdin`; fails the test unless it
/// succeeds, with its output.
fn promtool(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): it comes with Debian's `prometheus` package; \
                 `cargo xtask setup` installs it (or: apt-get install prometheus)"
            )
        });
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed ({}):\n{text}", args.join(" "), out.status);
    text
}

/// The metric names a PromQL expression (or a Grafana `label_values(metric, label)` query)
/// reads: identifiers that are not functions, keywords, label names (in `{...}`, `by (...)`
/// and the like), durations, numbers or `$variables`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "group_left",
        "group_right",
        // Aggregation operators, which may take `by (...)` before their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    // The index after the `close` that ends what starts at `i`, quoted strings skipped whole.
    fn skip_to(b: &[u8], mut i: usize, close: u8) -> usize {
        let quote = |c: u8| matches!(c, b'"' | b'\'' | b'`');
        while i < b.len() && b[i] != close {
            if quote(b[i]) && !quote(close) {
                i = skip_to(b, i + 1, b[i]);
                continue;
            }
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    }
    let skip_to = |i: usize, close: u8| skip_to(b, i, close);
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_to(i + 1, c),
            b'{' => i = skip_to(i + 1, b'}'),
            b'[' => i = skip_to(i + 1, b']'),
            b'$' | b'0'..=b'9' | b'.' => {
                i += 1;
                while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut next = i;
                while next < b.len() && b[next].is_ascii_whitespace() {
                    next += 1;
                }
                let call = next < b.len() && b[next] == b'(';
                if call && LABEL_LISTS.contains(&word) {
                    i = skip_to(next + 1, b')');
                } else if call && word == "label_values" {
                    // Grafana's: the first argument is a metric, the second a label.
                    let end = skip_to(next + 1, b')');
                    let args = &expr[next + 1..end - 1];
                    names.extend(metric_names(args.split(',').next().unwrap_or("")));
                    i = end;
                } else if !call && !KEYWORDS.contains(&word) {
                    names.insert(word.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_extractor_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"sum by (service, reason) (rate(a_total{x="y}",z=~"$v"}[$__rate_interval])) / on (pid)
           group_left (slot) b_seconds > 0.5 and c offset 5m unless time() - d{e="1"} > bool 1e3"#,
    );
    let want: BTreeSet<String> = ["a_total", "b_seconds", "c", "d"].map(String::from).into();
    assert_eq!(names, want);
    assert_eq!(
        metric_names("label_values(reuselb_workers, service)"),
        ["reuselb_workers".to_owned()].into()
    );
}

/// Every `expr` of the alert rules, with its alert's name.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("reuselb-alerts.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name").to_owned();
            let expr = rule["expr"].as_str().expect("an expr").to_owned();
            assert!(
                rule["annotations"]["runbook"].as_str().is_some_and(|r| !r.is_empty()),
                "alert {name} has no runbook line"
            );
            out.push((name, expr));
        }
    }
    out
}

/// Every query of the dashboard (panel targets and template variables), with where it is.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("reuselb-dashboard.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            out.push((format!("panel {title}"), t["expr"].as_str().expect("expr").to_owned()));
        }
    }
    for var in doc["templating"]["list"].as_array().expect("templating") {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().expect("a variable's query");
            out.push((format!("variable {}", var["name"]), q.to_owned()));
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let out = promtool(&["check", "rules", "reuselb-alerts.yml"], "");
    let rules = alert_exprs().len();
    assert!(out.contains(&format!("SUCCESS: {rules} rules found")), "{out}");
    let out = promtool(&["test", "rules", "reuselb-alerts.test.yml"], "");
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a test that expects it to fire.
    let tests = std::fs::read_to_string(monitoring_dir().join("reuselb-alerts.test.yml")).unwrap();
    for (name, _) in alert_exprs() {
        assert!(tests.contains(&format!("alertname: {name}")), "alert {name} has no unit test");
    }
}

#[test]
fn every_metric_of_the_rules_and_the_dashboard_is_registered() {
    let registered: BTreeSet<String> = Metrics::new().metric_names().iter().cloned().collect();
    assert!(registered.contains("reuselb_worker_inflight"), "{registered:?}");
    let mut checked = 0;
    let mut unknown = Vec::new();
    for (place, expr) in alert_exprs().into_iter().chain(dashboard_queries()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place} names no metric: {expr}");
        for name in names {
            checked += 1;
            if !registered.contains(&name) {
                unknown.push(format!("{place}: {name} (in {expr})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics reuselb does not register: {unknown:#?}\nregistered: {registered:#?}"
    );
    println!("{checked} metric references checked against {} registered names", registered.len());
}

/// Every panel query of the dashboard is valid PromQL: promtool parses each as the expression of
/// a recording rule, with Grafana's range variables given a duration (`$service` stays, as the
/// regex text it is in its matcher).
#[test]
fn dashboard_queries_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for (place, expr) in dashboard_queries() {
        if !place.starts_with("panel ") {
            continue; // label_values(...) is Grafana's, not PromQL
        }
        let expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h");
        n += 1;
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!("      - record: dashboard:query{n}\n        expr: {quoted}\n"));
    }
    /// Removes the directory when dropped, the test failing or not.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir =
        Scratch(std::env::temp_dir().join(format!("reuselb-dashboard-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("dashboard-queries.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()], "");
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}\n{rules}");
    assert!(n >= 12, "only {n} panel queries");
}

/// A report that gives every family series: a worker with every figure, a pod group.
fn full_report() -> Report {
    let worker = WorkerReport {
        slot: 0,
        pid: 42,
        weight: 1,
        epoch: 1,
        inflight: 2,
        selected: 10,
        accepted: 9,
        completed: 7,
        response_us: 70_000,
        avg_response_us: Some(10_000),
        busy: true,
        since_last_answer_ms: Some(20),
        rss_bytes: Some(30 << 20),
        pace_us: Some(30_000),
        slowness: Some(3),
    };
    let mut events = Counts::default();
    events.set(Event::FallbackSelectFailed, 1);
    let group = |pod| GroupReport {
        addr: "127.0.0.1:8000".parse().unwrap(),
        policy: Policy::LeastLoaded,
        pack_depth: None,
        program: Program::SelectOrMigrate,
        adopted: false,
        pod,
        mean_response_us: Some(10_000),
        workers: vec![worker],
        events: events.clone(),
    };
    let mut registrations = Counts::default();
    registrations.set(Status::Ok, 1);
    let pod = PodReport { netns: 7, template: "web".into(), label: "ns/pod".into() };
    Report::new(
        Mode::Daemon,
        Instant::now(),
        vec![ServiceReport {
            name: "web".into(),
            registrations,
            groups: vec![group(None), group(Some(pod))],
            registry: RegistryReport { closing_backlog: 1, ..Default::default() },
        }],
    )
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let m = Metrics::new();
    m.update(full_report());
    let text = m.encode_text();
    promtool(&["check", "metrics"], &text);
    // Every registered family has series here, so promtool saw them all.
    for name in m.metric_names() {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no series in:\n{text}");
    }
}
