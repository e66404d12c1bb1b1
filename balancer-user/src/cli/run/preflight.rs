//! `reuselb run`'s look at the app server's settings before it starts it: the uWSGI and gunicorn
//! settings reuselb cannot balance, each said at start with what to do instead, so that a run is
//! never silently unbalanced.
//!
//! Why it lives under `run` and nowhere else: it reads an app server's command line, and only
//! `reuselb run` has one (it starts the app). `reuselb doctor` checks this kernel and this
//! process, with no app in view; the daemon's services name addresses, not commands, and their
//! app servers are started by others (the shim reports what it sees there). Nothing in the
//! library needs it, so it stays in the binary, a child of the one subcommand that uses it. It reads the command line and the ini files it names (`--ini
//! FILE[:section]`, or a lone `FILE.ini`); what it cannot read (Emperor vassals, Python config
//! files) it leaves to the shim, which says at listen time what it sees (a unix socket).
//!
//! - A unix socket (`socket = /run/app.sock`, gunicorn `--bind unix:PATH`): SO_REUSEPORT groups
//!   are TCP/UDP only.
//! - uWSGI's `http` router: a process of its own listens and forwards to the workers over a
//!   socket of theirs, so the router is all reuselb would balance.
//! - uWSGI's `thunder-lock`: one lock serializes the workers' waits (only its holder waits on its
//!   socket). With a socket per worker, a connection the program gives another worker waits until
//!   the holder gets one of its own: under light load, indefinitely. So the app is started
//!   without the shim, unbalanced but as it would run without reuselb.
use std::{ffi::OsString, path::Path};

/// A setting reuselb cannot balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// `option` names a unix socket, `path`.
    UnixSocket { option: String, path: String },
    /// uWSGI's HTTP router on `addr`.
    HttpRouter { addr: String },
    /// uWSGI's thunder-lock.
    ThunderLock,
}

impl Finding {
    /// The message of the finding, with what to do instead.
    pub fn message(&self) -> String {
        match self {
            Finding::UnixSocket { option, path } => format!(
                "{option} {path} is a unix socket: reuselb cannot balance it (SO_REUSEPORT groups \
                 are TCP/UDP only). Serve a loopback port instead (uWSGI `socket = \
                 127.0.0.1:PORT`, gunicorn `--bind 127.0.0.1:PORT`), point nginx at it \
                 (`uwsgi_pass 127.0.0.1:PORT;` or `proxy_pass http://127.0.0.1:PORT;`) and run \
                 `reuselb run --listen 127.0.0.1:PORT`"
            ),
            Finding::HttpRouter { addr } => format!(
                "uWSGI's http router ({addr}) is a proxy hop of its own: its one process listens \
                 there and forwards to the workers over a socket of theirs, so reuselb can only \
                 balance the router, not the workers. Serve `http-socket = ADDR` from the \
                 workers instead (behind nginx if you need a proxy) and run `reuselb run \
                 --listen ADDR`"
            ),
            Finding::ThunderLock => "uWSGI's thunder-lock is set: it lets one worker at a time \
                 wait for connections, on its own socket under reuselb, so a connection reuselb \
                 gives another worker waits until the lock holder gets one of its own (under \
                 light load, indefinitely). Starting the app WITHOUT balancing; remove \
                 thunder-lock to balance it (with a socket per worker there is no thundering \
                 herd left to prevent)"
                .to_owned(),
        }
    }

    /// Whether the app must run without the shim (it would lose connections with it).
    pub fn disables_shim(&self) -> bool {
        matches!(self, Finding::ThunderLock)
    }
}

/// Logs each finding of [`inspect`] (an error if it disables the shim, else a warning); whether
/// the app may start with the shim preloaded.
pub fn announce(command: &[OsString]) -> bool {
    let findings = inspect(command);
    for finding in &findings {
        if finding.disables_shim() {
            log::error!("{}", finding.message());
        } else {
            log::warn!("{}", finding.message());
        }
    }
    !findings.iter().any(Finding::disables_shim)
}

/// What the app server's command line (and the ini files it names) sets that reuselb cannot
/// balance. Unreadable ini files are skipped (the app server will say so itself).
pub fn inspect(command: &[OsString]) -> Vec<Finding> {
    let args: Vec<String> = command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let program = |name: &str| {
        args.iter().take(3).any(|a| Path::new(a).file_name().is_some_and(|f| f == name))
    };
    let options = if program("uwsgi") {
        uwsgi_options(&args[1..])
    } else if program("gunicorn") {
        gunicorn_options(&args[1..])
    } else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for (key, value) in options {
        match key.as_str() {
            "socket" | "uwsgi-socket" | "http-socket" | "shared-socket" | "fastcgi-socket"
            | "scgi-socket" | "bind"
                if is_unix(&value) =>
            {
                let path = value.strip_prefix("unix:").unwrap_or(&value).to_owned();
                findings.push(Finding::UnixSocket { option: key, path });
            }
            "http" | "https" => findings.push(Finding::HttpRouter { addr: value }),
            "thunder-lock" if is_true(&value) => findings.push(Finding::ThunderLock),
            _ => {}
        }
    }
    findings.dedup();
    findings
}

/// A socket value that names a unix socket: a path (`/run/app.sock`, `unix:...`, `@abstract`),
/// not `HOST:PORT` or `:PORT`.
fn is_unix(value: &str) -> bool {
    let v = value.trim();
    v.starts_with("unix:")
        || v.starts_with('/')
        || v.starts_with('.')
        || v.starts_with('@')
        || !v.contains(':')
}

fn is_true(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "" | "1" | "true" | "yes" | "on" | "y")
}

/// uWSGI's options as `(name, value)`, from `--name value`, `--name=value`, `-s value` and the ini
/// files named by `--ini FILE[:section]` or a lone `FILE.ini` (the `uwsgi` section by default).
/// A flag without a value (the next argument is an option) has the value "".
fn uwsgi_options(args: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (name, inline) = match arg.strip_prefix("--") {
            Some(rest) => match rest.split_once('=') {
                Some((n, v)) => (n.replace('_', "-"), Some(v.to_owned())),
                None => (rest.replace('_', "-"), None),
            },
            None if arg == "-s" => ("socket".to_owned(), None),
            None if arg.ends_with(".ini") || arg.contains(".ini:") => {
                out.extend(ini_options(arg));
                i += 1;
                continue;
            }
            None => {
                i += 1;
                continue;
            }
        };
        let value = match inline {
            Some(v) => v,
            None => match args.get(i + 1) {
                Some(next) if !next.starts_with('-') => {
                    i += 1;
                    next.clone()
                }
                _ => String::new(),
            },
        };
        if name == "ini" {
            out.extend(ini_options(&value));
        } else {
            out.push((name, value));
        }
        i += 1;
    }
    out
}

/// The options of one section of an ini file (`FILE[:section]`, `uwsgi` by default).
fn ini_options(spec: &str) -> Vec<(String, String)> {
    let (file, section) = match spec.rsplit_once(':') {
        Some((f, s)) if !s.contains('/') => (f, s),
        _ => (spec, "uwsgi"),
    };
    let Ok(text) = std::fs::read_to_string(file) else { return Vec::new() };
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == section {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            out.push((k.trim().replace('_', "-"), v.trim().to_owned()));
        }
    }
    out
}

/// gunicorn's `--bind`/`-b` values as `("bind", value)`.
fn gunicorn_options(args: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if let Some(v) = arg.strip_prefix("--bind=") {
            out.push(("bind".to_owned(), v.to_owned()));
        } else if let Some(v) = arg.strip_prefix("-b").filter(|v| !v.is_empty()) {
            out.push(("bind".to_owned(), v.to_owned()));
        } else if arg == "--bind" || arg == "-b" {
            if let Some(v) = args.get(i + 1) {
                out.push(("bind".to_owned(), v.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn uwsgi_command_line() {
        let found = inspect(&cmd(&[
            "uwsgi",
            "--socket",
            "/run/app.sock",
            "--http=:8080",
            "--thunder-lock",
            "--master",
            "--http-socket",
            "127.0.0.1:8000",
        ]));
        assert_eq!(
            found,
            vec![
                Finding::UnixSocket { option: "socket".into(), path: "/run/app.sock".into() },
                Finding::HttpRouter { addr: ":8080".into() },
                Finding::ThunderLock,
            ]
        );
        assert!(found[2].disables_shim() && !found[0].disables_shim());
        assert!(inspect(&cmd(&["uwsgi", "--http-socket", "0.0.0.0:80", "-s", "[::]:9"])).is_empty());
    }

    #[test]
    fn uwsgi_ini_section() {
        let ini =
            std::env::temp_dir().join(format!("reuselb-preflight-{}.ini", std::process::id()));
        std::fs::write(
            &ini,
            "[uwsgi]\nthunder-lock = true\n[app]\n; a comment\nsocket = /run/app.sock\nthunder_lock = false\n",
        )
        .unwrap();
        let spec = format!("{}:app", ini.display());
        assert_eq!(
            inspect(&cmd(&["/usr/bin/uwsgi", "--ini", &spec])),
            vec![Finding::UnixSocket { option: "socket".into(), path: "/run/app.sock".into() }]
        );
        assert_eq!(
            inspect(&cmd(&["uwsgi", &ini.display().to_string()])),
            vec![Finding::ThunderLock]
        );
        std::fs::remove_file(&ini).unwrap();
    }

    #[test]
    fn gunicorn_bind() {
        assert_eq!(
            inspect(&cmd(&["gunicorn", "-b", "unix:/run/g.sock", "--bind=127.0.0.1:8000", "app"])),
            vec![Finding::UnixSocket { option: "bind".into(), path: "/run/g.sock".into() }]
        );
        assert!(inspect(&cmd(&["gunicorn", "--bind", "127.0.0.1:8000", "app:app"])).is_empty());
    }
}
