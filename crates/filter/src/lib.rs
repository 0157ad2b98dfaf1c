//! The sans-I/O Proxy-Wasm chain engine: runs an ordered chain of plugins over the events of one
//! HTTP stream with Envoy's semantics, plus the scenario runner behind `sluice test`. The engine
//! (`chain`, `stream`) must never touch a socket, a file or a clock of its own: the embedder feeds
//! events in and executes the steps that come out. Only `scenario` reads files: the scenario and
//! the plugins it names.

#![forbid(unsafe_code)]

mod chain;
mod node;
pub mod scenario;
mod stream;

pub use chain::{
    Chain, ChainError, DEFAULT_BUFFER_LIMIT, InstanceReport, PluginSpec, RELOAD_BACKOFF_BASE,
    RELOAD_BACKOFF_MAX, RootCall, VmPool,
};
pub use node::node_attribute;
pub use stream::{Outcome, Step, Stream};
