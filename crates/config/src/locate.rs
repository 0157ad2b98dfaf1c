//! Where a field is in the YAML a user wrote, for error messages. `yaml_serde` keeps no spans,
//! but an error raised while a node is deserialized carries that node's line and column: seeking
//! a field path and failing on arrival finds it.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A line and column in the config file, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub(crate) fn of(error: &yaml_serde::Error) -> Option<Self> {
        error.location().map(|l| Self {
            line: l.line(),
            column: l.column(),
        })
    }
}

/// The marker the seek fails with on arrival.
const ARRIVED: &str = "\u{0}sluice: arrived";

/// The line and column of `path` (`spec.url`, `spec.listeners[0].routes`, `` for the document
/// itself) in the `document`th (from 0) YAML document of `text`; `None` when it is not there.
pub fn locate(text: &str, document: usize, path: &str) -> Option<Location> {
    let segments = segments(path)?;
    let deserializer = yaml_serde::Deserializer::from_str(text).nth(document)?;
    match (Seek { path: &segments }).deserialize(deserializer) {
        Err(error) if error.to_string().contains(ARRIVED) => Location::of(&error),
        _ => None,
    }
}

/// Takes the map entry at `path` out of `value`; false when there is none (or the path ends in a
/// list index, whose removal would renumber its neighbours).
pub(crate) fn remove(value: &mut serde_json::Value, path: &str) -> bool {
    let Some(segments) = segments(path) else {
        return false;
    };
    let Some((Segment::Key(last), parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        let next = match segment {
            Segment::Key(key) => node.get_mut(*key),
            Segment::Index(index) => node.get_mut(*index),
        };
        let Some(next) = next else { return false };
        node = next;
    }
    node.as_object_mut()
        .is_some_and(|map| map.remove(*last).is_some())
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` as segments; `None` for a path that is not one (`apiVersion/kind`).
fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        if key.contains(['/', ' ', ']']) {
            return None;
        }
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(rest) = indices.strip_prefix('[') {
            let (index, after) = rest.split_once(']')?;
            out.push(Segment::Index(index.parse().ok()?));
            indices = after;
        }
        if !indices.is_empty() {
            return None;
        }
    }
    Some(out)
}

struct Seek<'p, 'a> {
    path: &'p [Segment<'a>],
}

impl<'de> DeserializeSeed<'de> for Seek<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Key(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(ARRIVED));
        };
        while let Some(key) = map.next_key::<KeyText>()? {
            if key.0 == *wanted {
                return map.next_value_seed(Seek { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Segment::Index(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(ARRIVED));
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek { path: rest }).map(drop)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.scalar()
    }
}

impl Seek<'_, '_> {
    /// A scalar is the place only when the path ends here.
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(ARRIVED))
        } else {
            Ok(())
        }
    }
}

/// A mapping key of any scalar type, as text.
struct KeyText(String);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        deserializer.deserialize_any(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
kind: WasmPlugin
metadata: {name: a}
spec:
  url: file:///a.wasm
  priority: high
---
kind: Proxy
spec:
  listeners:
  - name: main
    routes:
    - cluster: echo
    - cluster: other
";

    #[test]
    fn finds_keys_scalars_and_list_elements_in_the_right_document() {
        let at = |document, path| locate(TEXT, document, path).map(|l| (l.line, l.column));
        assert_eq!(at(0, "spec.priority"), Some((5, 13)));
        assert_eq!(at(0, "spec.url"), Some((4, 8)));
        assert_eq!(at(0, "metadata.name"), Some((2, 18)));
        assert_eq!(at(1, "spec.listeners[0].routes[1].cluster"), Some((13, 16)));
        assert_eq!(at(1, "spec.listeners[0].routes[1]"), Some((13, 7)));
        assert_eq!(at(0, ""), Some((1, 1)));
    }

    #[test]
    fn a_path_that_is_not_there_has_no_place() {
        assert_eq!(locate(TEXT, 0, "spec.sha256"), None);
        assert_eq!(locate(TEXT, 1, "spec.listeners[3]"), None);
        assert_eq!(locate(TEXT, 2, "spec"), None);
        assert_eq!(locate(TEXT, 0, "apiVersion/kind"), None);
    }
}
