//! The committed benchmark reports: each `bench compare` report under docs/benchmarks/ is a
//! function of its raw samples file alone, so each must regenerate byte for byte (report and
//! charts) from that file with today's code. No load: the raw samples are only read.
use std::path::Path;

use integration_tests::apps::workspace_root;
use reuselb_bench::compare::render_to;

/// Every `compare-raw.json.gz` under docs/benchmarks/, at any depth.
fn raw_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            raw_files(&path, out);
        } else if path.file_name().is_some_and(|n| n == "compare-raw.json.gz") {
            out.push(path);
        }
    }
}

#[test]
fn reports_regenerate_from_their_raw_samples() {
    let mut raws = Vec::new();
    raw_files(&workspace_root().join("docs/benchmarks"), &mut raws);
    assert!(raws.len() >= 2, "the committed raw samples files are gone: {raws:?}");
    for raw in raws {
        let committed = raw.parent().unwrap();
        let out = integration_tests::apps::TempDir::new("bench-report");
        let markdown = render_to(&raw, out.path())
            .unwrap_or_else(|e| panic!("{}: cannot render: {e:#}", raw.display()));
        std::fs::write(out.path().join("compare.md"), &markdown).unwrap();
        let mut files = 0;
        for entry in std::fs::read_dir(out.path()).unwrap() {
            let made = entry.unwrap().path();
            let name = made.file_name().unwrap();
            let kept = committed.join(name);
            let old = std::fs::read(&kept).unwrap_or_else(|e| {
                panic!("{} is made from {} but not committed: {e}", kept.display(), raw.display())
            });
            let new = std::fs::read(&made).unwrap();
            if old != new {
                let line = String::from_utf8_lossy(&old)
                    .lines()
                    .zip(String::from_utf8_lossy(&new).lines())
                    .position(|(a, b)| a != b)
                    .map_or("its length".to_string(), |i| format!("line {}", i + 1));
                panic!(
                    "{} does not regenerate from {} (first difference: {line}): `cargo xtask bench report -- {}` makes it again",
                    kept.display(),
                    raw.display(),
                    raw.display()
                );
            }
            files += 1;
        }
        println!("{}: {files} files regenerate byte for byte", committed.display());
        assert!(
            files >= 2,
            "{}: only {files} files made (the report and a chart per variant)",
            raw.display()
        );
    }
}
