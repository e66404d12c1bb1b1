//! `reuselb run`: one app server with its workers balanced, the controller in-process.
//!
//! Its flags become one config [`Service`], checked by the daemon's own [`Config::validate`], and
//! it starts as a one-service [`Services`] in [`Mode::Run`], the daemon's way of starting a
//! service: unpinned, and admitting any uid unless `--allow-uid` names some. This file owns the
//! flags and that translation, and the order of a run (start, serve, wait for the app, stop);
//! [`app`] owns the app server's process, [`watch`] what a run shows while it waits (status
//! lines or the live view, and the metrics server), [`preflight`] the look at the app's settings.
use std::{ffi::OsString, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use balancer_common::{protocol, Policy, MAX_SLOTS};
use balancer_user::{
    config::{self, Config, Service},
    http,
    report::Mode,
    service::Services,
};

mod app;
mod preflight;
mod watch;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Balanced address (ADDR:PORT) the app server binds; repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", required = true)]
    listen: Vec<SocketAddr>,
    /// Selection policy: speed-aware, least-loaded, work-left, p2c, round-robin, hash or pack.
    #[arg(long, default_value = "speed-aware", value_parser = parse_policy)]
    policy: Policy,
    /// Pass over a worker that has had connections in flight and made no progress (no
    /// completion) for this many milliseconds, while another worker has not (least-loaded and
    /// p2c); 0 turns the check off. Speed-aware: replaces its adaptive limit (8 x the group's mean
    /// time to answer); 0 keeps that.
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=balancer_config::MAX_BLOCKED_AFTER_MS as i64))]
    blocked_after_ms: u32,
    /// With `--policy pack`: connections in flight per unit of weight that fill a worker before
    /// the next one gets new connections (0 counts as 1).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=balancer_config::MAX_PACK_DEPTH as i64))]
    pack_depth: u32,
    /// Path of the registration socket the workers' shim connects to.
    #[arg(long, value_name = "PATH", default_value = protocol::DEFAULT_SOCKET_PATH)]
    socket: PathBuf,
    /// The shim library (default: libbalancer_shim.so next to this binary).
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    /// Seconds between per-worker status lines (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    status_every: u64,
    /// Redraw a live per-worker table every second instead of the status lines.
    #[arg(long)]
    view: bool,
    /// Serve /metrics, /healthz and /status here (`reuselb status` and `reuselb top` read it).
    /// If the address is taken, the app runs anyway, without them.
    #[arg(long, value_name = "ADDR:PORT", default_value = http::DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    /// Serve no metrics at all.
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// Only workers of this uid (and root) may register; repeat for several. Default: any uid,
    /// so that workers that drop privileges (uWSGI `uid`, gunicorn `--user`) register: admission
    /// then rests on the listener each worker must hand over, a socket on the balanced address
    /// that only the app's own uid can bind (docs/SECURITY.md).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Service name in the metrics and the status (default: the command's file name, in the
    /// characters a service name may hold).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The app server and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse::<Policy>().map_err(|e| e.to_string())
}

/// Runs the command under the controller; returns its exit status (128 + signal if killed).
pub fn run(args: RunArgs) -> Result<i32> {
    // About three descriptors per registered worker: a soft limit of 1024 is too few. The app
    // gets the limit we started with (see `nofile`).
    let starting_limit = crate::cli::nofile::raise_soft_limit();
    let shim = app::find_shim(args.shim.as_deref())?;
    // What the app's settings ask that reuselb cannot balance, said before anything starts.
    let with_shim = preflight::announce(&args.command);
    let config = as_config(&args)?;
    let services = Arc::new(Services::start(&config, Mode::Run)?);
    let app = match app::App::start(&args, &shim, with_shim, starting_limit) {
        Ok(app) => app,
        Err(e) => {
            services.stop();
            return Err(e);
        }
    };
    let metrics =
        (!args.no_metrics).then(|| watch::serve_metrics(args.metrics_addr, &services)).flatten();
    let shown = watch::Shown::start(&args, &services);
    let code = app.wait();
    drop(shown);
    drop(metrics);
    services.stop();
    code
}

/// The flags as the config of one service, checked as the daemon checks its file.
fn as_config(args: &RunArgs) -> Result<Config> {
    let service = Service {
        name: args.name.clone().unwrap_or_else(|| default_name(&args.command[0])),
        listen: args.listen.clone(),
        policy: args.policy,
        mode: config::Mode::Auto,
        weight: 1,
        max_workers: MAX_SLOTS,
        blocked_after_ms: args.blocked_after_ms,
        pack_depth: args.pack_depth,
        allowed_uids: (!args.allow_uid.is_empty()).then(|| args.allow_uid.clone()),
        shim_socket: Some(args.socket.clone()),
        netns: None,
    };
    let config = Config {
        shim_socket_dir: config::DEFAULT_SHIM_SOCKET_DIR.into(),
        metrics_addr: (!args.no_metrics).then_some(args.metrics_addr),
        pin_path: config::DEFAULT_PIN_PATH.into(),
        services: vec![service],
        pods: None,
    };
    config.validate().context("the flags of `reuselb run` do not make a service")?;
    Ok(config)
}

/// The service name of `command`: its file name, lowercased, with every character a service
/// name may not hold (`[a-z0-9_-]`) as `-`, at most [`config::MAX_NAME_LEN`] long; `app` if
/// nothing is left.
fn default_name(command: &OsString) -> String {
    let file = std::path::Path::new(command)
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = file
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '-' })
        .take(config::MAX_NAME_LEN)
        .collect();
    if name.is_empty() {
        "app".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use balancer_user::service::Admission;
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["reuselb"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn the_flags_become_one_service() {
        let a = args(&[
            "--listen",
            "127.0.0.1:8000",
            "--listen",
            "[::1]:8000",
            "--policy",
            "pack",
            "--pack-depth",
            "3",
            "--blocked-after-ms",
            "500",
            "--socket",
            "/tmp/app.sock",
            "--",
            "/usr/bin/uwsgi",
            "--ini",
            "app.ini",
        ]);
        let config = as_config(&a).unwrap();
        let [svc] = config.services.as_slice() else { panic!("{config:?}") };
        assert_eq!(svc.name, "uwsgi");
        assert_eq!(svc.listen.len(), 2);
        assert_eq!((svc.policy, svc.pack_depth, svc.blocked_after_ms), (Policy::Pack, 3, 500));
        assert_eq!(svc.shim_socket(), std::path::Path::new("/tmp/app.sock"));
        // No --allow-uid: any uid, as the README says of `reuselb run`.
        assert_eq!(Admission::of(svc, Mode::Run), Admission::AnyUid);
    }

    #[test]
    fn without_a_policy_flag_the_service_gets_the_default_of_a_config_file() {
        let a = args(&["--listen", "127.0.0.1:8000", "--", "uwsgi"]);
        let config = as_config(&a).unwrap();
        assert_eq!(config.services[0].policy, Policy::SpeedAware);
        assert_eq!(config.services[0].policy, Policy::default());
    }

    #[test]
    fn allowed_uids_are_the_only_ones() {
        let a = args(&["--listen", "127.0.0.1:8000", "--allow-uid", "33", "--", "gunicorn"]);
        let config = as_config(&a).unwrap();
        assert_eq!(Admission::of(&config.services[0], Mode::Run), Admission::Uids(vec![33]));
    }

    #[test]
    fn the_flags_are_checked_as_the_daemon_checks_its_file() {
        let bad_name = args(&["--listen", "127.0.0.1:8000", "--name", "My App", "--", "uwsgi"]);
        let e = format!("{:#}", as_config(&bad_name).unwrap_err());
        assert!(e.contains("invalid service name `My App`"), "{e}");
        let overlap =
            args(&["--listen", "0.0.0.0:8000", "--listen", "127.0.0.1:8000", "--", "uwsgi"]);
        let e = format!("{:#}", as_config(&overlap).unwrap_err());
        assert!(e.contains("overlaps 0.0.0.0:8000"), "{e}");
    }

    #[test]
    fn a_command_names_a_valid_service() {
        assert_eq!(default_name(&"/usr/bin/python3.11".into()), "python3-11");
        assert_eq!(default_name(&"uWSGI".into()), "uwsgi");
        assert_eq!(default_name(&"/".into()), "app");
        let long = default_name(&"x".repeat(40).into());
        assert_eq!(long.len(), config::MAX_NAME_LEN);
    }
}
