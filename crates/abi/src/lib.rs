//! The Proxy-Wasm ABI as plain data: status codes and enums, ABI version detection, the header-map
//! wire format and property encodings. It must never do I/O or know about wasmtime: both the host
//! and the tools (`sluice inspect`) read the ABI through this crate.

// Nothing a plugin, a client or a config sends may panic this crate: no `unwrap`, `expect` or
// `panic!` outside tests (clippy.toml lets tests use them). Indexing and arithmetic are left to
// the fuzz targets in fuzz/.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]
#![forbid(unsafe_code)]

mod attribute;
mod enums;
mod headers;
mod properties;
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
