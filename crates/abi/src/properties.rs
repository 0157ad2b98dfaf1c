//! Property paths and Envoy's binary encoding of property values.

use std::fmt;

/// A property path as the guest sends it: segments joined by NUL (`request\0path`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PropertyPath(Vec<String>);

impl PropertyPath {
    pub fn from_wire(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_suffix('\0').unwrap_or(&text);
        Self(text.split('\0').map(str::to_string).collect())
    }

    /// Parses the dotted form used in configs and scenario files (`request.path`).
    pub fn from_dotted(dotted: &str) -> Self {
        Self(dotted.split('.').map(str::to_string).collect())
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    pub fn dotted(&self) -> String {
        self.0.join(".")
    }
}

impl fmt::Debug for PropertyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dotted())
    }
}

/// A property value, serialized the way Envoy hands it to plugins: strings and bytes raw, integers
/// as 8-byte little-endian, booleans as one byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    String(String),
    Bytes(Vec<u8>),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

impl PropertyValue {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::String(s) => s.as_bytes().to_vec(),
            Self::Bytes(b) => b.clone(),
            Self::Int(i) => i.to_le_bytes().to_vec(),
            Self::UInt(u) => u.to_le_bytes().to_vec(),
            Self::Bool(b) => vec![u8::from(*b)],
        }
    }
}

impl From<&str> for PropertyValue {
    fn from(value: &str) -> Self {
        Self::String(value.to_string())
    }
}

impl From<String> for PropertyValue {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_values_use_envoy_encoding() {
        let path = PropertyPath::from_wire(b"request\0path");
        assert_eq!(path.segments(), ["request", "path"]);
        assert_eq!(path, PropertyPath::from_dotted("request.path"));
        assert_eq!(PropertyValue::Int(443).encode(), 443i64.to_le_bytes());
        assert_eq!(PropertyValue::Bool(true).encode(), [1]);
    }
}
