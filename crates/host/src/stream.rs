//! The data of one HTTP stream that plugins read and write through host calls.
//!
//! A stream is owned by the chain engine and shared with every plugin VM of the chain, because each
//! plugin must see the headers as the plugins before it left them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use sluice_abi::{Attribute, HeaderMap, PropertyValue};

/// Headers, bodies and trailers of both directions, plus the stream's property values.
#[derive(Debug, Default)]
pub struct HttpStream {
    pub request_headers: HeaderMap,
    /// The request body a body callback is looking at: the data buffered at that plugin
    /// (shared with the codec's buffer until a plugin changes it).
    pub request_body: bytes::Bytes,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_body: bytes::Bytes,
    pub response_trailers: HeaderMap,
    /// Values the embedder supplies for this stream (`request.protocol`,
    /// `response.code_details`, ...), by dotted path.
    pub properties: HashMap<String, PropertyValue>,
    /// Values shared by every stream of a connection (`source.address`, `connection.*`, ...),
    /// consulted after `properties`; shared so a stream does not copy them.
    pub connection: Rc<HashMap<String, PropertyValue>>,
    /// Envoy's filter state of the stream, by key: the plugins' own properties (`wasm.NAME`)
    /// and objects set with `set_envoy_filter_state`. Every plugin of the stream sees it.
    pub filter_state: HashMap<String, FilterStateEntry>,
    /// The route the request takes, once routed.
    pub route: Option<RouteInfo>,
    /// A TCP connection's bytes from the client and from the upstream (`DOWNSTREAM_DATA`,
    /// `UPSTREAM_DATA`) while a network plugin's data callback runs or a plugin holds them
    /// paused; `None` otherwise (Envoy's buffer is then empty and cannot be set).
    pub downstream_data: Option<Vec<u8>>,
    pub upstream_data: Option<Vec<u8>>,
}

pub type SharedStream = Rc<RefCell<HttpStream>>;

impl HttpStream {
    pub fn shared(self) -> SharedStream {
        Rc::new(RefCell::new(self))
    }

    /// The route the request takes, as plugins read it under `xds.`.
    pub fn set_route(&mut self, virtual_host: &str, route: &str, cluster: &str) {
        self.route = Some(RouteInfo {
            virtual_host: virtual_host.to_string(),
            route: route.to_string(),
            cluster: cluster.to_string(),
        });
    }

    /// The route-level attributes Envoy 1.40 gives a stream under `xds.`: the route's name and
    /// cluster, its virtual host (a sluice listener holds its routes as Envoy's one virtual host
    /// does), empty metadata (sluice's config has none), the listener's direction (unspecified)
    /// and an unnamed filter chain.
    fn route_attribute(&self, key: &str) -> Option<Attribute> {
        let route = self.route.as_ref()?;
        Some(match key {
            "virtual_host_name" => Attribute::String(route.virtual_host.clone()),
            "route_name" => Attribute::String(route.route.clone()),
            "cluster_name" => Attribute::String(route.cluster.clone()),
            "filter_chain_name" => Attribute::String(String::new()),
            "listener_direction" => Attribute::Int(0),
            "virtual_host_metadata"
            | "route_metadata"
            | "cluster_metadata"
            | "listener_metadata" => Attribute::Bytes(Vec::new()),
            _ => return None,
        })
    }

    /// Resolves an Envoy attribute of this stream, typed: the computed `request.*`/`response.*`
    /// ones from the headers, then the supplied values (`properties`, then `connection`), then
    /// the filter state (`filter_state.KEY`, and a plugin's own property `NAME`, kept as Envoy
    /// keeps it under `wasm.NAME`). Paths below a value name nothing.
    pub fn attribute(&self, path: &[String]) -> Option<Attribute> {
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        let computed = match segments.as_slice() {
            ["request", key] => self.request_attribute(key),
            ["request", "headers", name] => self.request_headers.get(name).map(text),
            ["response", key] => self.response_attribute(key),
            ["xds", key] => self.route_attribute(key),
            ["response", "headers", name] => self.response_headers.get(name).map(text),
            ["filter_state", key] => self.filter_state.get(*key).map(|s| s.value.clone()),
            [name] => self
                .filter_state
                .get(&format!("{WASM_STATE_PREFIX}{name}"))
                .map(|s| s.value.clone()),
            _ => None,
        };
        computed.or_else(|| {
            let key = path.join(".");
            self.properties
                .get(&key)
                .or_else(|| self.connection.get(&key))
                .map(Attribute::from)
        })
    }

    fn request_attribute(&self, key: &str) -> Option<Attribute> {
        let headers = &self.request_headers;
        let path = || headers.get(":path");
        match key {
            "path" => path().map(text),
            "url_path" => path().map(|p| text(p.split(|b| *b == b'?').next().unwrap_or_default())),
            "query" => path().map(|p| {
                text(
                    p.iter()
                        .position(|b| *b == b'?')
                        .map_or(&[][..], |i| &p[i + 1..]),
                )
            }),
            "host" => headers.get(":authority").map(text),
            "scheme" => headers.get(":scheme").map(text),
            "method" => headers.get(":method").map(text),
            "useragent" => headers.get("user-agent").map(text),
            "referer" => headers.get("referer").map(text),
            "id" => headers.get("x-request-id").map(text),
            "headers" => Some(map_attribute(headers)),
            "trailers" => Some(map_attribute(&self.request_trailers)),
            _ => None,
        }
    }

    fn response_attribute(&self, key: &str) -> Option<Attribute> {
        match key {
            "headers" => Some(map_attribute(&self.response_headers)),
            "trailers" => Some(map_attribute(&self.response_trailers)),
            "code" => self
                .response_headers
                .get(":status")
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<i64>().ok())
                .map(Attribute::Int),
            // Envoy's router sets `via_upstream` as the upstream's response head arrives; a
            // local reply's details were set as a property when it was sent.
            "code_details" => self
                .properties
                .get("response.code_details")
                .map(Attribute::from)
                .or_else(|| {
                    self.response_headers
                        .get(":status")
                        .map(|_| Attribute::String("via_upstream".into()))
                }),
            _ => None,
        }
    }

    /// A top-level attribute as a whole, as a CEL expression sees the name: the
    /// [`WRAPPERS`] are maps of what this stream has under them (`xds` without the node, which
    /// the VM has); `metadata` is empty; any other name is a plugin's own property.
    pub fn top_level(&self, name: &str) -> Option<Attribute> {
        let computed: &[&str] = match name {
            "request" => &REQUEST_KEYS,
            "response" => &["headers", "trailers", "code", "code_details"],
            "xds" => &XDS_KEYS,
            "source" | "destination" | "connection" | "upstream" => &[],
            // Envoy's dynamic metadata: sluice sets none, an empty message.
            "metadata" => {
                return Some(Attribute::Message {
                    serialized: Vec::new(),
                    fields: Vec::new(),
                });
            }
            "filter_state" => {
                return Some(Attribute::map(
                    self.filter_state
                        .iter()
                        .map(|(k, s)| (k.clone(), s.value.clone())),
                ));
            }
            _ => return self.attribute(&[name.to_string()]),
        };
        let mut entries: Vec<(String, Attribute)> = computed
            .iter()
            .filter_map(|key| {
                Some((
                    key.to_string(),
                    self.attribute(&[name.into(), key.to_string()])?,
                ))
            })
            .collect();
        let prefix = format!("{name}.");
        for (key, value) in self.connection.iter().chain(self.properties.iter()) {
            if let Some(rest) = key.strip_prefix(&prefix)
                && !entries.iter().any(|(k, _)| k == rest)
            {
                entries.push((rest.to_string(), Attribute::from(value)));
            }
        }
        Some(Attribute::map(entries))
    }
}

/// Top-level names Envoy gives every stream as a map it builds on demand. CEL reads into them,
/// but Envoy cannot serialize one as a whole (`SERIALIZATION_FAILURE`).
pub const WRAPPERS: [&str; 8] = [
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
    "filter_state",
    "xds",
];

/// The `xds.*` attributes of a routed stream.
const XDS_KEYS: [&str; 9] = [
    "virtual_host_name",
    "virtual_host_metadata",
    "route_name",
    "route_metadata",
    "cluster_name",
    "cluster_metadata",
    "listener_direction",
    "listener_metadata",
    "filter_chain_name",
];

/// The route a stream takes, for its `xds.*` attributes.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub virtual_host: String,
    pub route: String,
    pub cluster: String,
}

/// The `request.*` attributes computed from the request headers.
const REQUEST_KEYS: [&str; 12] = [
    "path",
    "url_path",
    "query",
    "host",
    "scheme",
    "method",
    "useragent",
    "referer",
    "id",
    "headers",
    "trailers",
    "protocol",
];

/// Where Envoy keeps a property a plugin set (`proxy_set_property`): filter state `wasm.NAME`.
pub const WASM_STATE_PREFIX: &str = "wasm.";

/// A value in a stream's filter state: a plugin's property, or an object set with the
/// `set_envoy_filter_state` foreign function.
#[derive(Debug, Clone)]
pub struct FilterStateEntry {
    pub value: Attribute,
    /// Declared read-only: set once.
    pub readonly: bool,
}

/// Header values are text to CEL when they are UTF-8, bytes otherwise.
fn text(bytes: &[u8]) -> Attribute {
    match std::str::from_utf8(bytes) {
        Ok(s) => Attribute::String(s.to_string()),
        Err(_) => Attribute::Bytes(bytes.to_vec()),
    }
}

/// A header map as a map attribute, in the map's order (duplicates stay separate entries, and
/// serialize as the spec's header-map pairs).
fn map_attribute(map: &HeaderMap) -> Attribute {
    Attribute::Map(map.iter().map(|(k, v)| (text(k), text(v))).collect())
}
