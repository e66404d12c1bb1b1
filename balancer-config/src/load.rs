//! Reading the file: [`Config::load`] and [`Config::parse`] (serde_yaml's errors made into
//! `FILE:LINE:COLUMN: message`), the defaults filled in after reading, and the checks across
//! values ([`crate::check`]) given positions by [`crate::locate`].
use std::path::Path;

use crate::{error::ConfigError, locate::locate, Config, Service};

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks `text`; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let invalid = |line: Option<usize>, column: Option<usize>, message: String| {
            ConfigError::Invalid { file: file.to_owned(), line, column, message }
        };
        if text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
        }) {
            return Err(invalid(
                Some(1),
                Some(1),
                "the file is empty: expected a mapping with at least a `services:` list".to_owned(),
            ));
        }
        let mut config: Config = serde_yaml::from_str(text).map_err(|err| {
            let (line, column) = match err.location() {
                Some(loc) => (Some(loc.line()), Some(loc.column())),
                None => (None, None),
            };
            let mut message = err.to_string();
            if let (Some(l), Some(c)) = (line, column) {
                if let Some(pos) = message.find(&format!(" at line {l} column {c}")) {
                    let end = pos + format!(" at line {l} column {c}").len();
                    message.replace_range(pos..end, "");
                }
            }
            if let Some(l) = line {
                let bad_line = text.lines().nth(l.saturating_sub(1)).unwrap_or("");
                if bad_line.chars().take_while(|c| c.is_whitespace()).any(|c| c == '\t') {
                    message.push_str(
                        " (a tab is indenting this line: YAML indentation must be spaces)",
                    );
                }
            }
            invalid(line, column, message)
        })?;
        config.fill_defaults();
        if let Err(problem) = config.check() {
            let (line, column) = match locate(text, &problem.at) {
                Some((l, c)) => (Some(l), Some(c)),
                None => (None, None),
            };
            return Err(invalid(line, column, problem.message));
        }
        Ok(config)
    }

    /// The checks across values (unique names, non-overlapping addresses, distinct sockets), for
    /// a config built in code; [`Config::parse`] runs them too, with positions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut filled = self.clone();
        filled.fill_defaults();
        filled.check().map_err(|p| ConfigError::Invalid {
            file: "<config>".to_owned(),
            line: None,
            column: None,
            message: p.message,
        })
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Gives every service without a `shim_socket` its default, `<shim_socket_dir>/<name>.sock`.
    /// [`Config::parse`] does it; a config built in code may need it.
    pub fn fill_defaults(&mut self) {
        for s in &mut self.services {
            if s.shim_socket.is_none() {
                s.shim_socket = Some(self.shim_socket_dir.join(format!("{}.sock", s.name)));
            }
        }
        if let Some(p) = &mut self.pods {
            if p.shim_socket.is_none() {
                p.shim_socket = Some(self.shim_socket_dir.join("pods.sock"));
            }
        }
    }
}
