//! Positions of the checks' findings across values: [`locate`] reads the text again and stops at
//! the offending node, so a duplicate name or an overlapping address is reported at its own line
//! and column, like a bad value is.
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the document, for positions of semantic errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// Line and column (1-based) of the node at `path` in `text`, found by reading the text again
/// with serde_yaml and failing on purpose at that node: serde_yaml then reports the node's
/// position. Works for block and flow style alike; `None` if the path is not in the text.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    const MARK: &str = "\u{0}reuselb-probe";
    let de = serde_yaml::Deserializer::from_str(text);
    match (Probe { path }).deserialize(de) {
        Err(err) if err.to_string().contains(MARK) => {
            err.location().map(|l| (l.line(), l.column()))
        }
        _ => None,
    }
}

struct Probe<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.first() {
            None => d.deserialize_any(Hit),
            Some(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(Seg::Key(want)) = self.path.first() else { return Ok(()) };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if key.as_str() == Some(*want) {
                return map.next_value_seed(Probe { path: &self.path[1..] });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(Seg::Index(want)) = self.path.first() else { return Ok(()) };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe { path: &self.path[1..] }).map(|_| ())
    }
    // A scalar where a list or mapping was expected: the path is not there, except that a
    // single scalar stands for a list of one (`listen: 127.0.0.1:8000`).
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        if self.path == [Seg::Index(0)] {
            return Err(E::custom("\u{0}reuselb-probe"));
        }
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Fails on whatever node it is given, so that serde_yaml stamps the node's position.
struct Hit;

impl<'de> Visitor<'de> for Hit {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\u{0}reuselb-probe")
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom("\u{0}reuselb-probe"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom("\u{0}reuselb-probe"))
    }
}
