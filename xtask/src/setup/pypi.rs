//! The Python tools the tests use, from PyPI: kubernetes-validate checks the Kubernetes
//! manifests offline. Pinned, so a new release cannot change what CI accepts.

use std::process::Command;

use anyhow::Result;

use super::report;
use crate::command;

const PACKAGES: &[(&str, &str, &str)] = &[("kubernetes-validate", "kubernetes_validate", "1.37.0")];

pub fn ensure() -> Result<()> {
    for &(package, module, version) in PACKAGES {
        let step = format!("PyPI {package}");
        let probe = command::probe(Command::new("python3").args(["-m", module, "--version"]))?;
        if probe.status.success() && String::from_utf8_lossy(&probe.stdout).trim() == version {
            report(&step, format!("{version} present"));
            continue;
        }
        command::run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("{package}=={version}"),
        ]))?;
        report(&step, format!("installed {version}"));
    }
    Ok(())
}
