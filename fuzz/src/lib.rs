//! What the fuzz targets test that is not in a light crate of its own: balancer-user's config
//! parser, compiled here from its own source file (`balancer-user/src/config.rs`, unchanged), so
//! the fuzz build does not build balancer-user's eBPF programs. The parser needs one thing from
//! the rest of balancer-user, `group::Mode`, which this crate mirrors: should config.rs ever use
//! more of balancer-user, or Mode change, this stops compiling and says so.

pub mod group {
    /// Mirror of `balancer_user::group::Mode` (see the crate docs).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub enum Mode {
        #[default]
        Auto,
        Select,
        SelectOrMigrate,
    }
}

#[path = "../../balancer-user/src/config.rs"]
pub mod config;
