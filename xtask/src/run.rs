//! `cargo xtask run`: builds, then becomes the demo.

use std::process::Command;

use anyhow::Result;

use crate::{
    build::{self, Artifacts},
    command,
    workspace::Workspace,
};

/// The demo `cargo xtask run` starts: the one place to change when it becomes the uWSGI demo.
fn demo(artifacts: &Artifacts) -> Command {
    let mut cmd = Command::new(&artifacts.reuselb);
    cmd.arg("demo");
    artifacts.export_to(&mut cmd);
    cmd
}

pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let artifacts = build::run(ws)?;
    let mut cmd = demo(&artifacts);
    cmd.args(args).current_dir(&ws.root);
    Err(command::exec(&mut cmd))
}
