//! The configured node (`spec.node`) as the attribute tree plugins read under `xds.node`.

use std::sync::Arc;

use sluice_abi::{Attribute, Node};

/// Built once per configuration; every VM of it shares the tree.
pub fn node_attribute(node: &sluice_config::Node) -> Arc<Attribute> {
    let metadata = node
        .metadata
        .iter()
        .map(|(key, value)| (Attribute::String(key.clone()), json_attribute(value)))
        .collect();
    Arc::new(
        Node {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            metadata,
            region: node.locality.region.clone(),
            zone: node.locality.zone.clone(),
            sub_zone: node.locality.sub_zone.clone(),
            ..Node::default()
        }
        .attribute(),
    )
}

/// A JSON value as a `google.protobuf.Value` reads in CEL: every number a double.
fn json_attribute(value: &serde_json::Value) -> Attribute {
    use serde_json::Value;
    match value {
        Value::Null => Attribute::Null,
        Value::Bool(b) => Attribute::Bool(*b),
        Value::Number(n) => Attribute::Double(n.as_f64().unwrap_or_default()),
        Value::String(s) => Attribute::String(s.clone()),
        Value::Array(items) => Attribute::List(items.iter().map(json_attribute).collect()),
        Value::Object(entries) => {
            Attribute::map(entries.iter().map(|(k, v)| (k.clone(), json_attribute(v))))
        }
    }
}
