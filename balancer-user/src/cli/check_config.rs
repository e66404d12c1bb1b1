//! `reuselb check-config FILE`: the daemon's config file read and checked by the code the daemon
//! reads it with ([`Config::load`]), without running anything.
use std::path::Path;

use balancer_user::{config::Config, service};

/// 0 and `FILE: OK, N services` with the summary if the file is good; 1 and the error
/// (`FILE:LINE:COLUMN: message`) if not.
pub fn check_config(file: &Path) -> i32 {
    match Config::load(file) {
        Ok(config) => {
            println!("{}: OK, {} services", file.display(), config.services.len());
            println!("{}", service::summary(&config));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
