//! The data of one HTTP stream that plugins read and write through host calls.
//!
//! A stream is owned by the chain engine and shared with every plugin VM of the chain, because each
//! plugin must see the headers as the plugins before it left them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use sluice_abi::{HeaderMap, PropertyValue};

/// Headers, bodies and trailers of both directions, plus the stream's property values.
#[derive(Debug, Default)]
pub struct HttpStream {
    pub request_headers: HeaderMap,
    /// The request body a body callback is looking at: the data buffered at that plugin.
    pub request_body: Vec<u8>,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_body: Vec<u8>,
    pub response_trailers: HeaderMap,
    /// Values the embedder supplies for this stream (`xds.route_name`, ...) and the ones plugins set
    /// with `proxy_set_property`, by dotted path.
    pub properties: HashMap<String, PropertyValue>,
    /// Values shared by every stream of a connection (`source.address`, `connection.*`, ...),
    /// consulted after `properties`; shared so a stream does not copy them.
    pub connection: Rc<HashMap<String, PropertyValue>>,
}

pub type SharedStream = Rc<RefCell<HttpStream>>;

impl HttpStream {
    pub fn shared(self) -> SharedStream {
        Rc::new(RefCell::new(self))
    }

    /// The route-level attributes Envoy 1.40 gives a stream under `xds.`: the route's name and
    /// cluster, its virtual host (a sluice listener holds its routes as Envoy's one virtual host
    /// does), empty metadata (sluice's config has none), the listener's direction (unspecified)
    /// and an unnamed filter chain.
    pub fn set_route(&mut self, virtual_host: &str, route: &str, cluster: &str) {
        let values: [(&str, PropertyValue); 9] = [
            ("xds.virtual_host_name", virtual_host.into()),
            (
                "xds.virtual_host_metadata",
                PropertyValue::Bytes(Vec::new()),
            ),
            ("xds.route_name", route.into()),
            ("xds.cluster_name", cluster.into()),
            ("xds.route_metadata", PropertyValue::Bytes(Vec::new())),
            ("xds.cluster_metadata", PropertyValue::Bytes(Vec::new())),
            ("xds.listener_metadata", PropertyValue::Bytes(Vec::new())),
            ("xds.listener_direction", PropertyValue::Int(0)),
            ("xds.filter_chain_name", "".into()),
        ];
        for (key, value) in values {
            self.properties.insert(key.to_string(), value);
        }
    }

    /// Resolves an Envoy attribute of this stream: the computed `request.*`/`response.*` ones from
    /// the headers, then the explicitly supplied or plugin-set values.
    pub fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        let header = |map: &HeaderMap, name: &str| map.get(name).map(<[u8]>::to_vec);
        let computed = match segments.as_slice() {
            ["request", "path"] => header(&self.request_headers, ":path"),
            ["request", "url_path"] => self
                .request_headers
                .get(":path")
                .map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec()),
            ["request", "query"] => self.request_headers.get(":path").map(|p| {
                p.iter()
                    .position(|b| *b == b'?')
                    .map(|i| p[i + 1..].to_vec())
                    .unwrap_or_default()
            }),
            ["request", "host"] => header(&self.request_headers, ":authority"),
            ["request", "scheme"] => header(&self.request_headers, ":scheme"),
            ["request", "method"] => header(&self.request_headers, ":method"),
            ["request", "useragent"] => header(&self.request_headers, "user-agent"),
            ["request", "referer"] => header(&self.request_headers, "referer"),
            ["request", "id"] => header(&self.request_headers, "x-request-id"),
            ["request", "headers", name] => header(&self.request_headers, name),
            ["request", "headers"] => Some(self.request_headers.encode()),
            ["request", "trailers"] => Some(self.request_trailers.encode()),
            ["response", "headers", name] => header(&self.response_headers, name),
            ["response", "headers"] => Some(self.response_headers.encode()),
            ["response", "trailers"] => Some(self.response_trailers.encode()),
            ["response", "code"] => self
                .response_headers
                .get(":status")
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<i64>().ok())
                .map(|code| PropertyValue::Int(code).encode()),
            _ => None,
        };
        computed.or_else(|| {
            let key = path.join(".");
            self.properties
                .get(&key)
                .or_else(|| self.connection.get(&key))
                .map(PropertyValue::encode)
        })
    }
}
