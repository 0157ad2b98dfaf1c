//! Runs Proxy-Wasm plugins on wasmtime: module loading and ABI detection, every `proxy_*` host
//! call, the WASI subset, per-plugin memory caps and CPU deadlines. It must never perform I/O or
//! wait: host calls whose effect is I/O are validated and recorded as [`Effect`]s for the caller.

mod effects;
mod engine;
mod error;
mod foreign;
mod imports;
mod inspect;
mod memory;
mod metrics;
mod shared;
mod state;
mod stream;
mod vm;
mod wasi;

pub use effects::{
    CallAnswer, CallOp, Effect, GrpcCallRequest, HttpCallRequest, LocalResponse, RedisCallRequest,
    RedisSettings,
};
pub use engine::{Engine, EngineOptions, HostFunction, PluginCode, WasmType};
pub use error::{FailureKind, LoadError, PluginFailure};
pub use foreign::TCP_PROXY_CLUSTER;
pub use inspect::{ImportInfo, ModuleInfo};
pub use metrics::{HISTOGRAM_BOUNDS, Metric, Metrics};
pub use shared::{
    MAX_QUEUE_BYTES, MAX_QUEUE_ITEMS, MAX_QUEUES, MAX_SHARED_DATA_BYTES, QueueInbox, SharedData,
    SharedLimits, SharedQueues,
};
pub use state::{Clock, ClusterCheck, LogRecord};
pub use stream::{HttpStream, SharedStream};
pub use vm::{
    CALLBACK_TIME_SAMPLE, CallResponse, CallbackTime, GRPC_TIMEOUT_MESSAGE, GrpcEvent, Limits, Vm,
    VmConfig,
};
