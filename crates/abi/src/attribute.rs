//! Attribute values as Envoy's property reads see them (CEL values), with Envoy's serialization
//! of a value for `proxy_get_property`, and the node (`xds.node`) as one.

use prost::Message;

use crate::{PropertyValue, Status, encode_pairs};

/// A value of Envoy's attribute tree (a CEL value).
#[derive(Clone, Debug, PartialEq)]
pub enum Attribute {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    List(Vec<Attribute>),
    /// A map (a `google.protobuf.Struct`, a header map, a CEL map), in its order.
    Map(Vec<(Attribute, Attribute)>),
    /// A protobuf message: its serialization, and its fields by name for paths that go further.
    Message {
        serialized: Vec<u8>,
        fields: Vec<(&'static str, Attribute)>,
    },
}

impl Attribute {
    /// The value at `path` below this one: map keys, message fields, list indices.
    pub fn at(&self, path: &[String]) -> Result<&Attribute, Status> {
        let mut value = self;
        for part in path {
            value = match value {
                Attribute::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| matches!(k, Attribute::String(k) if k == part))
                    .map(|(_, v)| v),
                Attribute::Message { fields, .. } => {
                    fields.iter().find(|(k, _)| k == part).map(|(_, v)| v)
                }
                Attribute::List(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            }
            .ok_or(Status::NotFound)?;
        }
        Ok(value)
    }

    /// Envoy's serialization (`serializeValue`): strings and bytes raw, numbers 8 bytes
    /// little-endian, booleans one byte, messages as protobuf, maps as pairs of serialized keys
    /// and values, lists as pairs of serialized elements and empty values. Null, or a map or list
    /// holding one, is a serialization failure.
    pub fn serialize(&self) -> Result<Vec<u8>, Status> {
        Ok(match self {
            Attribute::Null => return Err(Status::SerializationFailure),
            Attribute::Bool(b) => vec![u8::from(*b)],
            Attribute::Int(i) => i.to_le_bytes().to_vec(),
            Attribute::UInt(u) => u.to_le_bytes().to_vec(),
            Attribute::Double(d) => d.to_le_bytes().to_vec(),
            Attribute::String(s) => s.as_bytes().to_vec(),
            Attribute::Bytes(b) => b.clone(),
            Attribute::Message { serialized, .. } => serialized.clone(),
            Attribute::Map(entries) => {
                let pairs = entries
                    .iter()
                    .map(|(k, v)| Ok((k.serialize()?, v.serialize()?)))
                    .collect::<Result<Vec<_>, Status>>()?;
                encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            }
            Attribute::List(items) => {
                let keys = items
                    .iter()
                    .map(Attribute::serialize)
                    .collect::<Result<Vec<_>, Status>>()?;
                encode_pairs(keys.iter().map(|k| (k.as_slice(), &[][..])))
            }
        })
    }

    /// As a `google.protobuf.Value` (integers become numbers, bytes and messages are not JSON and
    /// become null).
    fn to_protobuf(&self) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match self {
            Attribute::Null | Attribute::Bytes(_) | Attribute::Message { .. } => Kind::NullValue(0),
            Attribute::Bool(b) => Kind::BoolValue(*b),
            Attribute::Int(i) => Kind::NumberValue(*i as f64),
            Attribute::UInt(u) => Kind::NumberValue(*u as f64),
            Attribute::Double(d) => Kind::NumberValue(*d),
            Attribute::String(s) => Kind::StringValue(s.clone()),
            Attribute::List(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(Attribute::to_protobuf).collect(),
            }),
            Attribute::Map(entries) => Kind::StructValue(protobuf_struct(entries)),
        };
        prost_types::Value { kind: Some(kind) }
    }
}

impl Attribute {
    /// A map with string keys.
    pub fn map(entries: impl IntoIterator<Item = (String, Attribute)>) -> Attribute {
        Attribute::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Attribute::String(k), v))
                .collect(),
        )
    }
}

impl From<&str> for Attribute {
    fn from(value: &str) -> Attribute {
        Attribute::String(value.to_string())
    }
}

impl From<&PropertyValue> for Attribute {
    fn from(value: &PropertyValue) -> Attribute {
        match value {
            PropertyValue::String(s) => Attribute::String(s.clone()),
            PropertyValue::Bytes(b) => Attribute::Bytes(b.clone()),
            PropertyValue::Int(i) => Attribute::Int(*i),
            PropertyValue::UInt(u) => Attribute::UInt(*u),
            PropertyValue::Bool(b) => Attribute::Bool(*b),
        }
    }
}

/// A `google.protobuf.Struct` holds string keys only; other keys are left out.
fn protobuf_struct(entries: &[(Attribute, Attribute)]) -> prost_types::Struct {
    prost_types::Struct {
        fields: entries
            .iter()
            .filter_map(|(k, v)| match k {
                Attribute::String(k) => Some((k.clone(), v.to_protobuf())),
                _ => None,
            })
            .collect(),
    }
}

/// Where this proxy runs, as Envoy's bootstrap `node` (`envoy.config.core.v3.Node`) says it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    /// A `google.protobuf.Struct`: string keys, any JSON value.
    pub metadata: Vec<(Attribute, Attribute)>,
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
    pub user_agent_name: String,
    /// `(major, minor, patch)` of `user_agent_build_version.version`.
    pub user_agent_version: (u32, u32, u32),
}

/// The Envoy release whose behaviour sluice matches, reported as the node's build version.
pub const ENVOY_VERSION: (u32, u32, u32) = (1, 40, 0);

impl Default for Node {
    /// Envoy's node when its bootstrap names none: no id, cluster, metadata or locality.
    fn default() -> Node {
        Node {
            id: String::new(),
            cluster: String::new(),
            metadata: Vec::new(),
            region: String::new(),
            zone: String::new(),
            sub_zone: String::new(),
            user_agent_name: "envoy".into(),
            user_agent_version: ENVOY_VERSION,
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    cluster: String,
    #[prost(message, optional, tag = "3")]
    metadata: Option<prost_types::Struct>,
    #[prost(message, optional, tag = "4")]
    locality: Option<LocalityProto>,
    #[prost(string, tag = "6")]
    user_agent_name: String,
    #[prost(message, optional, tag = "8")]
    user_agent_build_version: Option<BuildVersionProto>,
}

#[derive(Clone, PartialEq, Message)]
struct LocalityProto {
    #[prost(string, tag = "1")]
    region: String,
    #[prost(string, tag = "2")]
    zone: String,
    #[prost(string, tag = "3")]
    sub_zone: String,
}

#[derive(Clone, PartialEq, Message)]
struct BuildVersionProto {
    #[prost(message, optional, tag = "1")]
    version: Option<SemanticVersionProto>,
}

#[derive(Clone, PartialEq, Message)]
struct SemanticVersionProto {
    #[prost(uint32, tag = "1")]
    major_number: u32,
    #[prost(uint32, tag = "2")]
    minor_number: u32,
    #[prost(uint32, tag = "3")]
    patch: u32,
}

fn message(serialized: Vec<u8>, fields: Vec<(&'static str, Attribute)>) -> Attribute {
    Attribute::Message { serialized, fields }
}

impl Node {
    /// The node as Envoy exposes it under `xds.node`: a message whose fields paths can reach.
    pub fn attribute(&self) -> Attribute {
        let text = |s: &str| Attribute::String(s.to_string());
        let locality = LocalityProto {
            region: self.region.clone(),
            zone: self.zone.clone(),
            sub_zone: self.sub_zone.clone(),
        };
        let (major_number, minor_number, patch) = self.user_agent_version;
        let version = SemanticVersionProto {
            major_number,
            minor_number,
            patch,
        };
        let build = BuildVersionProto {
            version: Some(version.clone()),
        };
        let node = NodeProto {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: (!self.metadata.is_empty()).then(|| protobuf_struct(&self.metadata)),
            locality: (locality != LocalityProto::default()).then(|| locality.clone()),
            user_agent_name: self.user_agent_name.clone(),
            user_agent_build_version: Some(build.clone()),
        };
        let version = message(
            version.encode_to_vec(),
            vec![
                ("major_number", Attribute::UInt(major_number.into())),
                ("minor_number", Attribute::UInt(minor_number.into())),
                ("patch", Attribute::UInt(patch.into())),
            ],
        );
        message(
            node.encode_to_vec(),
            vec![
                ("id", text(&self.id)),
                ("cluster", text(&self.cluster)),
                ("metadata", Attribute::Map(self.metadata.clone())),
                (
                    "locality",
                    message(
                        locality.encode_to_vec(),
                        vec![
                            ("region", text(&self.region)),
                            ("zone", text(&self.zone)),
                            ("sub_zone", text(&self.sub_zone)),
                        ],
                    ),
                ),
                ("user_agent_name", text(&self.user_agent_name)),
                ("user_agent_version", text("")),
                (
                    "user_agent_build_version",
                    message(
                        build.encode_to_vec(),
                        vec![
                            ("version", version),
                            ("metadata", Attribute::Map(Vec::new())),
                        ],
                    ),
                ),
                ("extensions", Attribute::List(Vec::new())),
                ("client_features", Attribute::List(Vec::new())),
                ("listening_addresses", Attribute::List(Vec::new())),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(dotted: &str) -> Vec<String> {
        dotted.split('.').map(String::from).collect()
    }

    fn node() -> Attribute {
        Node {
            id: "node-1".into(),
            cluster: "web".into(),
            metadata: vec![
                (
                    "LABELS".into(),
                    Attribute::Map(vec![("app".into(), Attribute::String("shop".into()))]),
                ),
                ("n".into(), Attribute::Double(3.0)),
                ("b".into(), Attribute::Bool(true)),
                (
                    "l".into(),
                    Attribute::List(vec![Attribute::String("x".into()), Attribute::Double(2.0)]),
                ),
                ("z".into(), Attribute::Null),
            ],
            region: "eu".into(),
            zone: "eu-1a".into(),
            sub_zone: "r1".into(),
            ..Node::default()
        }
        .attribute()
    }

    fn get(dotted: &str) -> Result<Vec<u8>, Status> {
        node().at(&path(dotted))?.serialize()
    }

    /// Byte for byte what Envoy 1.40 answered for the same node (measured with plugins/probe).
    #[test]
    fn node_paths_serialize_as_envoy_does() {
        assert_eq!(get("id").unwrap(), b"node-1");
        assert_eq!(get("user_agent_name").unwrap(), b"envoy");
        assert_eq!(get("user_agent_version").unwrap(), b"");
        assert_eq!(
            get("user_agent_build_version.version").unwrap(),
            b"\x08\x01\x10\x28"
        );
        assert_eq!(
            get("locality").unwrap(),
            b"\x0a\x02eu\x12\x05eu-1a\x1a\x02r1"
        );
        assert_eq!(get("locality.zone").unwrap(), b"eu-1a");
        assert_eq!(get("metadata"), Err(Status::SerializationFailure));
        assert_eq!(get("metadata.z"), Err(Status::SerializationFailure));
        assert_eq!(get("metadata.missing"), Err(Status::NotFound));
        assert_eq!(get("metadata.LABELS.app").unwrap(), b"shop");
        assert_eq!(
            get("metadata.LABELS").unwrap(),
            b"\x01\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00app\x00shop\x00"
        );
        assert_eq!(get("metadata.n").unwrap(), 3f64.to_le_bytes());
        assert_eq!(get("metadata.b").unwrap(), b"\x01");
        assert_eq!(
            get("metadata.l").unwrap(),
            b"\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00x\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00"
        );
        assert_eq!(get("metadata.l.0").unwrap(), b"x");
        assert_eq!(get("client_features").unwrap(), b"\x00\x00\x00\x00");
        assert_eq!(get("nope"), Err(Status::NotFound));
        assert_eq!(get("id.deeper"), Err(Status::NotFound));
        let whole = get("").err();
        assert_eq!(
            whole,
            Some(Status::NotFound),
            "an empty segment names no field"
        );
    }

    #[test]
    fn the_whole_node_is_its_protobuf() {
        let serialized = node().serialize().unwrap();
        assert!(serialized.starts_with(b"\x0a\x06node-1\x12\x03web\x1a"));
        let decoded = NodeProto::decode(serialized.as_slice()).unwrap();
        assert_eq!(decoded.user_agent_name, "envoy");
        assert_eq!(decoded.metadata.unwrap().fields.len(), 5);
    }
}
