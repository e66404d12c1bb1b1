//! uWSGI's pypy plugin, for the "Works with" row of the seed's runtime (uWSGI on PyPy with
//! `pypy-home` / `pypy-wsgi`): built from Debian's uwsgi-src with `uwsgi --build-plugin` against
//! Debian's pypy3 (its `libpypy3.9-c.so`), into [`DIR`].
//!
//! Debian's uwsgi-src 2.0.21 ships the plugin's setup script (`pypy_setup.py`, run inside PyPy
//! at start) as Python 2 code, and Debian ships PyPy 3 only: as shipped it stops uWSGI at start
//! with `SyntaxError: invalid syntax` on `if lib.uwsgi.async <= 1:` (`async` is a keyword since
//! Python 3.7). `pypy_setup-py3.patch` ports it: that attribute read through `getattr`, C strings
//! decoded to `str` (latin-1, as PEP 3333 wants the environ) and the status and headers encoded
//! back; with it the plugin serves. The patched script goes beside the plugin; uWSGI takes it
//! with `--pypy-setup`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use super::{needs_root, report};
use crate::command;

/// Where the plugin and the ported setup script go.
pub const DIR: &str = "/usr/local/lib/uwsgi";
/// Debian's plugin source (package uwsgi-src).
const SOURCE: &str = "/usr/src/uwsgi/plugins/pypy";
const PATCH: &str = include_str!("pypy_setup-py3.patch");

/// A scratch directory of this step.
fn scratch() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("reuselb-pypy-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Debian's setup script with the port applied, as text.
fn ported_script(scratch: &Path) -> Result<String> {
    let patch = scratch.join("pypy_setup-py3.patch");
    let out = scratch.join("pypy_setup_py3.py");
    std::fs::write(&patch, PATCH)?;
    command::stdout_of(
        Command::new("patch")
            .arg("--quiet")
            .arg("-i")
            .arg(&patch)
            .arg("-o")
            .arg(&out)
            .arg(Path::new(SOURCE).join("pypy_setup.py")),
    )
    .context("applying the Python 3 port to uwsgi-src's pypy_setup.py")?;
    Ok(std::fs::read_to_string(&out)?)
}

pub fn ensure(root: bool) -> Result<()> {
    let step = "uWSGI pypy plugin";
    let plugin = Path::new(DIR).join("pypy_plugin.so");
    let script = Path::new(DIR).join("pypy_setup_py3.py");
    let scratch = scratch()?;
    let result = (|| {
        let wanted = ported_script(&scratch)?;
        if plugin.is_file() && std::fs::read_to_string(&script).ok().as_ref() == Some(&wanted) {
            report(step, format!("present in {DIR}"));
            return Ok(());
        }
        if !root {
            return Err(needs_root(format!("building uWSGI's pypy plugin into {DIR}")));
        }
        command::run(
            Command::new("uwsgi")
                .args(["--build-plugin", &format!("{SOURCE} pypy")])
                .current_dir(&scratch),
        )?;
        std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
        std::fs::copy(scratch.join("pypy_plugin.so"), &plugin)
            .with_context(|| format!("installing {}", plugin.display()))?;
        std::fs::write(&script, wanted).with_context(|| format!("writing {}", script.display()))?;
        report(step, format!("built {} and {}", plugin.display(), script.display()));
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
