//! The Proxy-Wasm ABI as plain data: status codes and enums, ABI version detection, the header-map
//! wire format, property encodings and the RESP framing of Higress's Redis calls. It must never
//! do I/O or know about wasmtime: both the host and the tools (`sluice inspect`) read the ABI
//! through this crate.

#![forbid(unsafe_code)]

mod attribute;
mod enums;
mod headers;
mod properties;
pub mod resp;
mod version;

pub use attribute::{Attribute, ENVOY_VERSION, Node};
pub use enums::{
    Action, BufferType, LogLevel, MapType, MetricType, PeerType, Status, StreamType, wasi_errno,
};
pub use headers::{
    DecodeError, HeaderMap, MAX_DECODED_PAIRS, MAX_DECODED_SIZE, decode_pairs, encode_pairs,
};
pub use properties::{PropertyPath, PropertyValue};
pub use version::{AbiVersion, CALLBACKS, VERSION_MARKER_PREFIX};
