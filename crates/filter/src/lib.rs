//! The sans-I/O Proxy-Wasm chain engine: runs an ordered chain of plugins over the events of one
//! HTTP stream, or one TCP connection, with Envoy's semantics. It must never touch a socket, a file or a clock of its own,
//! nor parse YAML or JSON: the embedder (the proxy, or `sluice-scenario`) feeds events in and
//! executes the steps that come out.

#![forbid(unsafe_code)]

mod chain;
mod connection;
mod node;
mod stream;

pub use chain::{
    Chain, ChainError, DEFAULT_BUFFER_LIMIT, InstanceReport, PluginSpec, RELOAD_BACKOFF_BASE,
    RELOAD_BACKOFF_MAX, RootCall, VmPool,
};
pub use connection::{Connection, ConnectionStep};
pub use node::node_attribute;
pub use stream::{Outcome, Step, Stream, failed_plugins};
