//! What a reload changes: [`ConfigDiff`], from [`Config::diff`]. The daemon applies it service by
//! service: an update where a running group can take it, a new group where it cannot.
use crate::Config;

/// Which services a reload adds, removes and changes (see [`Config::diff`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// In the new config only.
    pub added: Vec<String>,
    /// In the old config only.
    pub removed: Vec<String>,
    /// Changed in what applies to a running group: policy, blocked_after_ms, pack_depth, weight,
    /// max_workers, allowed_uids.
    pub updated: Vec<String>,
    /// Changed in what needs a new group: listen, netns, mode or shim_socket.
    pub recreated: Vec<String>,
    /// `shim_socket_dir`, `metrics_addr` or `pin_path` changed.
    pub globals_changed: bool,
    /// The `pods` section changed (added, removed, or any of its values).
    pub pods_changed: bool,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

impl Config {
    /// What a reload from `self` to `new` changes.
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        let mut d = ConfigDiff {
            globals_changed: self.shim_socket_dir != new.shim_socket_dir
                || self.metrics_addr != new.metrics_addr
                || self.pin_path != new.pin_path,
            pods_changed: self.pods != new.pods,
            ..ConfigDiff::default()
        };
        for s in &new.services {
            match self.service(&s.name) {
                None => d.added.push(s.name.clone()),
                Some(old) if old == s => {}
                Some(old) => {
                    if old.listen != s.listen
                        || old.netns != s.netns
                        || old.mode != s.mode
                        || old.shim_socket() != s.shim_socket()
                    {
                        d.recreated.push(s.name.clone());
                    } else {
                        d.updated.push(s.name.clone());
                    }
                }
            }
        }
        for s in &self.services {
            if new.service(&s.name).is_none() {
                d.removed.push(s.name.clone());
            }
        }
        d
    }
}
