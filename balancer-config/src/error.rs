//! What a config that cannot be used looks like: [`ConfigError`] (what callers see) and
//! [`Problem`] (a check's finding across values, before [`crate::locate`] gives it a position).
use std::path::PathBuf;

use crate::locate::Seg;

/// A config that cannot be used. `Display` is `FILE:LINE:COLUMN: message` (or `FILE: message`
/// when there is no position, such as an unreadable file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", located(file, *line, *column, message))]
    Invalid {
        /// The file as given (or `<config>` for a config built in code).
        file: String,
        /// 1-based, where known.
        line: Option<usize>,
        /// 1-based, where known.
        column: Option<usize>,
        /// What is wrong and what was expected, with the field's path (`services[1].listen[0]: ...`).
        message: String,
    },
}

fn located(file: &str, line: Option<usize>, column: Option<usize>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {message}"),
        (Some(l), None) => format!("{file}:{l}: {message}"),
        _ => format!("{file}: {message}"),
    }
}

impl ConfigError {
    /// `(line, column)`, 1-based, if the error has a position.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line: Some(l), column: Some(c), .. } => Some((*l, *c)),
            _ => None,
        }
    }
}

/// A semantic error before it is given a position.
pub(crate) struct Problem {
    pub(crate) at: Vec<Seg>,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn new(at: Vec<Seg>, message: String) -> Self {
        let message = format!("{}: {message}", path_text(&at));
        Self { at, message }
    }
}

fn path_text(at: &[Seg]) -> String {
    let mut s = String::new();
    for seg in at {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}
