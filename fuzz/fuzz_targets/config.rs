//! The daemon's config parser on arbitrary text: `Config::parse` never panics; an error's Display
//! is `FILE:LINE:COLUMN: message` when it has a position (and `FILE: message` otherwise), with a
//! position inside the text; a config it accepts passes `validate`, has every default filled in,
//! and diffs as unchanged against itself.
//!
//! With `REUSELB_FUZZ_STRICT=1` in the environment, an error without a position is a finding too
//! (every error of a parsed text is meant to point at a line and column); with
//! `REUSELB_FUZZ_STRICT=log`, each new kind of such error is printed instead.
#![no_main]

use std::sync::{Mutex, OnceLock};

use balancer_common::MAX_SLOTS;
use balancer_config::{Config, ConfigError, MAX_NAME_LEN, MAX_WEIGHT};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    // Arbitrary UTF-8: invalid sequences become U+FFFD rather than being thrown away.
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, FILE) {
        Ok(config) => check_config(&config),
        Err(err) => check_error(&err, &text),
    }
});

fn strict() -> Option<String> {
    static STRICT: OnceLock<Option<String>> = OnceLock::new();
    STRICT
        .get_or_init(|| {
            std::env::var("REUSELB_FUZZ_STRICT").ok().filter(|v| v == "1" || v == "log")
        })
        .clone()
}

/// An error without a position, under `REUSELB_FUZZ_STRICT`.
fn unlocated(shown: &str, text: &str) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    match strict().as_deref() {
        Some("1") => panic!("an error without a position: {shown:?}\n--- text ---\n{text}"),
        Some(_) => {
            // One line per kind: the message up to its first quoted value.
            let kind: String = shown.chars().take_while(|&c| c != '`').collect();
            let mut seen = SEEN.lock().unwrap();
            if !seen.contains(&kind) {
                eprintln!("UNLOCATED {shown:?} from {text:?}");
                seen.push(kind);
            }
        }
        None => {}
    }
}

fn check_error(err: &ConfigError, text: &str) {
    let shown = err.to_string();
    assert!(matches!(err, ConfigError::Invalid { .. }), "parse of a text gave {err:?}");
    assert!(shown.starts_with(&format!("{FILE}:")), "error without the file name: {shown:?}");
    let ConfigError::Invalid { line, column, message, .. } = err else { unreachable!() };
    assert!(!message.trim().is_empty(), "empty message: {err:?}");
    match (line, column) {
        (Some(l), Some(c)) => {
            assert!(
                shown.starts_with(&format!("{FILE}:{l}:{c}: ")),
                "position not shown: {shown:?}"
            );
            assert_eq!(err.location(), Some((*l, *c)));
            // 1-based, and inside the text (one past the last line: an error at the end).
            let lines = yaml_lines(text);
            assert!(*l >= 1 && *l <= lines + 1, "line {l} of a text of {lines} lines: {shown:?}");
            assert!(*c >= 1, "column {c}: {shown:?}");
        }
        (Some(l), None) => assert!(shown.starts_with(&format!("{FILE}:{l}: ")), "{shown:?}"),
        (None, Some(_)) => panic!("a column without a line: {err:?}"),
        (None, None) => {
            assert!(shown.starts_with(&format!("{FILE}: ")), "{shown:?}");
            unlocated(&shown, text);
        }
    }
}

/// Lines as YAML counts them: CR, LF, CRLF, NEL, LS and PS all end one.
fn yaml_lines(text: &str) -> usize {
    let mut lines = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                lines += 1;
            }
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => lines += 1,
            _ => {}
        }
    }
    lines
}

fn check_config(config: &Config) {
    if let Err(e) = config.validate() {
        panic!("parse accepted what validate refuses: {e}\n{config:#?}");
    }
    assert!(!config.services.is_empty() || config.pods.is_some());
    if let Some(p) = &config.pods {
        assert!(p.shim_socket().is_absolute());
        assert!(p.template(&p.default_template).is_some());
        assert!((1..=balancer_config::pods::MAX_GROUPS).contains(&p.max_groups));
        assert!((1..=balancer_config::pods::MAX_GROUPS).contains(&p.max_groups_per_pod));
        let most_workers = balancer_config::pods::MAX_WORKERS_PER_POD;
        assert!((1..=most_workers).contains(&p.max_workers_per_pod));
        for t in &p.templates {
            assert!(
                (1..=MAX_SLOTS).contains(&t.max_workers) && (1..=MAX_WEIGHT).contains(&t.weight)
            );
            assert!(t.allowed_uids.as_ref().is_none_or(|u| !u.is_empty()));
        }
    }
    assert!(config.shim_socket_dir.is_absolute() && config.pin_path.is_absolute());
    for s in &config.services {
        assert!(!s.name.is_empty() && s.name.len() <= MAX_NAME_LEN, "{:?}", s.name);
        assert!(s
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
        assert!(!s.listen.is_empty() && s.listen.iter().all(|a| a.port() != 0));
        assert!((1..=MAX_SLOTS).contains(&s.max_workers));
        assert!((1..=MAX_WEIGHT).contains(&s.weight));
        assert!(s.shim_socket.is_some(), "shim_socket not filled in for {}", s.name);
        assert!(s.shim_socket().is_absolute());
        assert!(s.allowed_uids.as_ref().is_none_or(|u| !u.is_empty() && !u.contains(&u32::MAX)));
        assert!(s.netns.as_ref().is_none_or(|p| p.is_absolute()));
    }
    assert!(config.diff(config).is_empty());
}
