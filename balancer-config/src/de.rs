//! The checks of one value (names, policies, modes, addresses, ranges, uids, paths), made while
//! the file is read: each error is made inside a visitor, so serde_yaml gives it the position of
//! the value. The structs of [`crate::model`] and [`crate::pods`] name these in their
//! `deserialize_with` attributes.
use std::{fmt, net::SocketAddr, path::PathBuf};

use balancer_common::{Policy, PolicyNames, UnknownPolicy, MAX_SLOTS};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use crate::{
    values::{check_listen, name_message, valid_name},
    Mode, MAX_BLOCKED_AFTER_MS, MAX_NAME_LEN, MAX_PACK_DEPTH, MAX_WEIGHT,
};

/// Visitor of one string value, checked by `parse`: its error (a message) becomes the value's.
struct StrV<T> {
    expecting: String,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for StrV<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

/// One string value, `expecting` a kind of string, checked by `parse`.
pub(crate) fn de_str<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: impl Into<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_str(StrV { expecting: expecting.into(), parse })
}

pub(crate) fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    de_str(
        d,
        format!("a service name of 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `_` and `-`"),
        |v| if valid_name(v) { Ok(v.to_owned()) } else { Err(name_message(v)) },
    )
}

pub(crate) fn de_policy<'de, D: Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
    de_str(d, format!("one of {PolicyNames}"), |v| {
        v.parse().map_err(|e| match e {
            UnknownPolicy::Unknown => {
                format!("unknown policy `{v}`: expected one of {PolicyNames}")
            }
            retired => retired.to_string(),
        })
    })
}

pub(crate) fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    de_str(d, "one of auto, select, select-or-migrate", |v| match v {
        "auto" => Ok(Mode::Auto),
        "select" => Ok(Mode::Select),
        "select-or-migrate" => Ok(Mode::SelectOrMigrate),
        _ => Err(format!("unknown mode `{v}`: expected one of auto, select, select-or-migrate")),
    })
}

/// Visitor of one `IP:PORT`.
struct AddrV {
    what: &'static str,
    port_zero_ok: bool,
}

impl Visitor<'_> for AddrV {
    type Value = SocketAddr;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an IP:PORT address such as 127.0.0.1:8000 or [::1]:8000")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        let addr: SocketAddr = v.trim().parse().map_err(|_| {
            E::custom(format!("invalid {} `{v}`: expected IP:PORT such as 127.0.0.1:8000 or [::1]:8000 (an IP, not a host name)", self.what))
        })?;
        if !self.port_zero_ok {
            check_listen(&addr).map_err(E::custom)?;
        }
        Ok(addr)
    }
}

impl<'de> DeserializeSeed<'de> for AddrV {
    type Value = SocketAddr;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SocketAddr, D::Error> {
        d.deserialize_str(self)
    }
}

pub(crate) fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<SocketAddr>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of IP:PORT addresses such as [\"127.0.0.1:8000\", \"[::1]:8000\"]")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<SocketAddr>, E> {
            Ok(vec![AddrV { what: "listen address", port_zero_ok: false }.visit_str(v)?])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<SocketAddr>, A::Error> {
            let mut out = Vec::new();
            while let Some(a) =
                seq.next_element_seed(AddrV { what: "listen address", port_zero_ok: false })?
            {
                out.push(a);
            }
            if out.is_empty() {
                return Err(de::Error::custom("no listen address: expected at least one IP:PORT"));
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

pub(crate) fn de_opt_metrics_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    d.deserialize_str(AddrV { what: "metrics address", port_zero_ok: true }).map(Some)
}

/// Visitor of one integer `min..=max`, named `field` in the error; `expected` says what kind of
/// integer (for a value of another type).
pub(crate) struct RangedV {
    pub(crate) field: &'static str,
    pub(crate) expected: &'static str,
    pub(crate) min: u64,
    pub(crate) max: u64,
}

impl RangedV {
    fn bad<E: de::Error>(&self, got: impl fmt::Display) -> E {
        E::custom(format!("{} must be {}..={}, got {got}", self.field, self.min, self.max))
    }
}

impl Visitor<'_> for RangedV {
    type Value = u32;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {}..={}", self.expected, self.min, self.max)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v as u32)
        } else {
            Err(self.bad(v))
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        if v < 0 {
            Err(self.bad(v))
        } else {
            self.visit_u64(v as u64)
        }
    }
}

impl<'de> DeserializeSeed<'de> for RangedV {
    type Value = u32;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_any(self)
    }
}

pub(crate) fn de_max_workers<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV { field: "max_workers", expected: "an integer", min: 1, max: MAX_SLOTS as u64 }
        .deserialize(d)
}

pub(crate) fn de_blocked_after_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV {
        field: "blocked_after_ms",
        expected: "milliseconds (0 turns the check off)",
        min: 0,
        max: MAX_BLOCKED_AFTER_MS as u64,
    }
    .deserialize(d)
}

pub(crate) fn de_pack_depth<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV {
        field: "pack_depth",
        expected: "connections in flight per unit of weight (0 counts as 1)",
        min: 0,
        max: MAX_PACK_DEPTH as u64,
    }
    .deserialize(d)
}

pub(crate) fn de_weight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    RangedV { field: "weight", expected: "an integer", min: 1, max: MAX_WEIGHT as u64 }
        .deserialize(d)
}

/// Uids: 0..=4294967294 (u32::MAX is "no uid" to the kernel).
const UID: RangedV =
    RangedV { field: "uid", expected: "a numeric uid", min: 0, max: u32::MAX as u64 - 1 };

pub(crate) fn de_opt_uids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<u32>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of numeric uids such as [33, 1000]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u32>, A::Error> {
            let mut out = Vec::new();
            while let Some(uid) = seq.next_element_seed(UID)? {
                out.push(uid);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V).map(Some)
}

pub(crate) fn de_abs_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    de_str(d, "an absolute path", |v| {
        if v.starts_with('/') {
            Ok(PathBuf::from(v))
        } else {
            Err(format!("expected an absolute path (starting with /), got `{v}`"))
        }
    })
}

pub(crate) fn de_opt_abs_path<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<PathBuf>, D::Error> {
    de_abs_path(d).map(Some)
}
