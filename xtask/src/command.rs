//! Child commands, run the same way everywhere: echoed before they run, with inherited stdio, and
//! a failure is an error naming the command and its exit status.
//!
//! Probes (commands that only look, e.g. `rustup toolchain list`) are captured and not echoed:
//! setup prints one line per step instead.

use std::{
    ffi::OsStr,
    process::{Command, Output, Stdio},
};

use anyhow::{ensure, Context as _, Result};

/// Echoes `cmd`, runs it with inherited stdio and fails unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = echo(cmd);
    let status = cmd.status().with_context(|| format!("starting `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed: {status}");
    Ok(())
}

/// Runs a probe quietly (no stdin) and returns what it printed and how it exited.
pub fn probe(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("running `{}`", shown(cmd)))
}

/// Stdout of a probe that must succeed.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = probe(cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "`{}` failed: {}: {}", shown(cmd), out.status, stderr.trim());
    String::from_utf8(out.stdout)
        .with_context(|| format!("output of `{}` is not UTF-8", shown(cmd)))
}

fn echo(cmd: &Command) -> String {
    let shown = shown(cmd);
    println!("xtask: $ {shown}");
    shown
}

/// `cmd` as a shell line: the variables it sets, the program and its arguments.
pub fn shown(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))));
    let words = std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Single-quotes a word unless the shell would read it as it is.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
