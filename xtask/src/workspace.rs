//! Where things are. Every command runs from the workspace root, found from xtask's own manifest
//! directory, so `cargo xtask` works from any directory of the repository.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct Workspace {
    pub root: PathBuf,
    /// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<root>/target`.
    pub target: PathBuf,
}

impl Workspace {
    pub fn locate() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask's manifest directory is inside the workspace")
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        Self { root, target }
    }

    /// A `cargo` command that runs in the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cargo = Command::new("cargo");
        cargo.current_dir(&self.root);
        cargo
    }
}
