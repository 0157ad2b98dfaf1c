//! The per-VM host state that host functions read and write (wasmtime's store data).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sluice_abi::{AbiVersion, Attribute, HeaderMap, LogLevel};
use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use crate::effects::Effect;
use crate::engine::Shared;
use crate::shared::QueueInbox;
use crate::stream::SharedStream;

/// A log line a plugin wrote with `proxy_log` or to stdout/stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub plugin: String,
    pub level: LogLevel,
    pub message: String,
}

/// Wall and monotonic time as plugins see it: the system clock, or a manual clock that
/// `sluice test` advances step by step.
#[derive(Clone, Debug)]
pub struct Clock {
    manual_nanos: Option<Arc<AtomicU64>>,
    started: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    pub fn system() -> Self {
        Self {
            manual_nanos: None,
            started: Instant::now(),
        }
    }

    /// A clock that stands still until [`Clock::advance`] moves it.
    pub fn manual(start_unix_nanos: u64) -> Self {
        Self {
            manual_nanos: Some(Arc::new(AtomicU64::new(start_unix_nanos))),
            started: Instant::now(),
        }
    }

    pub fn advance(&self, nanos: u64) {
        if let Some(manual) = &self.manual_nanos {
            manual.fetch_add(nanos, Ordering::SeqCst);
        }
    }

    pub fn now_unix_nanos(&self) -> u64 {
        match &self.manual_nanos {
            Some(manual) => manual.load(Ordering::SeqCst),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }

    pub fn monotonic_nanos(&self) -> u64 {
        match &self.manual_nanos {
            Some(manual) => manual.load(Ordering::SeqCst),
            None => self.started.elapsed().as_nanos() as u64,
        }
    }
}

/// Decides whether a callout target names a known cluster (`proxy_http_call` and `proxy_grpc_*`
/// return an error status for unknown ones, as in Envoy).
pub type ClusterCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub(crate) enum Context {
    /// One plugin configuration's root context: `plugin_name` is the plugin's (Envoy's
    /// `plugin_name` property), which differs from the VM's when plugins share a VM.
    Root {
        root_id: String,
        plugin_name: String,
    },
    Stream {
        root: u32,
        stream: SharedStream,
    },
    /// A network (L4) plugin's context on one TCP connection. Its `HttpStream` holds the
    /// connection's properties, filter state and data buffers; it has no header maps.
    Connection {
        root: u32,
        stream: SharedStream,
    },
}

pub(crate) type ContextMap = HashMap<u32, Context, BuildHasherDefault<ContextIdHasher>>;

/// Hashes a context id with one multiply. Ids are host-chosen and sequential, so there is no
/// flooding to defend against, and SipHash (or a B-tree walk) costs more than the lookup itself.
#[derive(Default)]
pub(crate) struct ContextIdHasher(u64);

/// 2^64 divided by the golden ratio, odd: multiplying by it spreads sequential ids over both the
/// low bits (the bucket) and the high bits (the control byte) that the map uses.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for ContextIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    /// Only reached by keys other than a `u32`, which the map does not have.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(FIBONACCI);
    }
}

/// Data that only exists while one callback runs (the access windows of spec v0.2.1).
#[derive(Default)]
pub(crate) struct CallbackScope {
    pub vm_configuration: Option<Vec<u8>>,
    pub plugin_configuration: Option<Vec<u8>>,
    pub call_headers: Option<HeaderMap>,
    pub call_body: Option<Vec<u8>>,
    pub call_trailers: Option<HeaderMap>,
    pub grpc_initial_metadata: Option<HeaderMap>,
    pub grpc_trailing_metadata: Option<HeaderMap>,
    pub grpc_message: Option<Vec<u8>>,
    pub redis_reply: Option<Vec<u8>>,
}

/// Linear-memory cap of one instance; remembers that it refused a grow so a following trap is
/// reported as a memory-limit failure.
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        if !allowed {
            self.hit = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

pub(crate) struct HostState {
    /// The VM's limits, for the host calls that apply them (log lines, header maps).
    pub limits: crate::Limits,
    pub plugin_name: String,
    /// What this VM was warned about already (restricted capabilities it tried to use, ...):
    /// each warning is written once.
    pub warned: std::collections::HashSet<String>,
    pub vm_id: String,
    pub abi: AbiVersion,
    pub shared: Arc<Shared>,
    pub memory: Option<Memory>,
    /// Shared, because cloning a TypedFunc clones its registered type (on every host call that
    /// returns bytes).
    pub allocate: Option<std::rc::Rc<TypedFunc<u32, u32>>>,
    pub limiter: MemoryCap,
    /// By id; looked up on every callback and most host calls, inserted and removed per stream.
    pub contexts: ContextMap,
    /// The context host calls act on: the one being called back, or the one chosen with
    /// `proxy_set_effective_context`.
    pub effective_context: u32,
    pub effects: Vec<Effect>,
    /// Boxed and usually absent: most callbacks fill no scope, and emptying an absent one after
    /// each of a stream's guest calls costs nothing.
    pub scope: Option<Box<CallbackScope>>,
    /// Passed to every `proxy_on_vm_start` (one per root context).
    pub vm_configuration: Vec<u8>,
    /// Status of the last callout or gRPC call delivered, for `proxy_get_status`.
    pub last_status: (u32, Vec<u8>),
    pub log_level: Arc<AtomicU32>,
    pub captured_logs: Option<Vec<LogRecord>>,
    /// The last error-level line of the current call: a Rust SDK panic message, for failure reports.
    pub last_error_log: Option<String>,
    pub env: Vec<(String, String)>,
    pub clock: Clock,
    pub clusters: ClusterCheck,
    /// `xds.node`.
    pub node: Arc<Attribute>,
    /// Properties declared with the `declare_property` foreign function, by the context that
    /// declared them (a stream's properties follow its root context's declarations).
    pub declared: HashMap<u32, HashMap<String, crate::foreign::Declared>>,
    /// CEL expressions of `expr_create`, per root context, as Envoy keeps them.
    pub expressions: HashMap<u32, crate::foreign::Expressions>,
    pub next_token: u32,
    /// How to reach each Redis cluster a root context set up with `proxy_redis_init`, by root
    /// context and cluster name (as Envoy keeps them per root context).
    pub redis: HashMap<(u32, String), crate::effects::RedisSettings>,
    /// Open gRPC calls and streams, and whether each is a unary call (ended by its message).
    pub grpc_tokens: HashMap<u32, bool>,
    /// Tick period (ms) per root context, and the monotonic time it was set: ticks fall due at
    /// whole periods from then.
    pub tick_periods: HashMap<u32, (u32, u64)>,
    pub pending_done: HashSet<u32>,
    pub queue_inbox: QueueInbox,
    pub metric_ids: crate::metrics::MetricIds,
}

impl HostState {
    /// The root context of the effective context (itself when it is a root).
    pub fn effective_root(&self) -> u32 {
        match self.contexts.get(&self.effective_context) {
            Some(Context::Stream { root, .. } | Context::Connection { root, .. }) => *root,
            _ => self.effective_context,
        }
    }

    /// The scope of the running callback, created when first filled or asked for.
    pub fn scope_mut(&mut self) -> &mut CallbackScope {
        self.scope.get_or_insert_with(Box::default)
    }

    /// The data of the effective HTTP stream or TCP connection: properties and filter state.
    pub fn effective_stream(&self) -> Option<&SharedStream> {
        match self.contexts.get(&self.effective_context) {
            Some(Context::Stream { stream, .. } | Context::Connection { stream, .. }) => {
                Some(stream)
            }
            _ => None,
        }
    }

    /// The data of the effective HTTP stream: its header maps and bodies.
    pub fn effective_http_stream(&self) -> Option<&SharedStream> {
        match self.contexts.get(&self.effective_context) {
            Some(Context::Stream { stream, .. }) => Some(stream),
            _ => None,
        }
    }

    /// The data of the effective TCP connection (a network plugin's context): its data buffers.
    pub fn effective_connection(&self) -> Option<&SharedStream> {
        match self.contexts.get(&self.effective_context) {
            Some(Context::Connection { stream, .. }) => Some(stream),
            _ => None,
        }
    }

    pub fn root_id(&self, root: u32) -> &str {
        match self.contexts.get(&root) {
            Some(Context::Root { root_id, .. }) => root_id,
            _ => "",
        }
    }

    /// The name of the plugin whose root context `root` is.
    pub fn plugin_name_of(&self, root: u32) -> &str {
        match self.contexts.get(&root) {
            Some(Context::Root { plugin_name, .. }) => plugin_name,
            _ => &self.plugin_name,
        }
    }

    pub fn next_token(&mut self) -> u32 {
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.next_token
    }

    /// A call to a capability the plugin is not allowed: logged once per VM and capability.
    pub fn capability_denied(&mut self, call: &str) {
        self.warn_once(
            call,
            format_args!(
                "{call} denied: not in the plugin's allowed capabilities (it gets an error status)"
            ),
        );
    }

    /// A warning about this VM's use of the host, written the first time only per `what`.
    pub fn warn_once(&mut self, what: &str, message: std::fmt::Arguments<'_>) {
        if self.warned.insert(what.to_string()) {
            tracing::warn!(plugin = %self.plugin_name, "{message}");
        }
    }

    pub fn log(&mut self, level: LogLevel, message: String) {
        let length = message.len();
        self.log_line(level, message, length);
    }

    /// Logs a plugin's line of `length` bytes, of which `message` holds at least the first
    /// `limits.log_line_bytes`: longer lines are cut there, saying so.
    pub fn log_line(&mut self, level: LogLevel, mut message: String, length: usize) {
        if (level as u32) < self.log_level.load(Ordering::Relaxed) {
            return;
        }
        let most = self.limits.log_line_bytes;
        if length > most {
            let mut cut = most.min(message.len());
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(&format!("... [cut: the line has {length} bytes]"));
        }
        if level >= LogLevel::Error {
            self.last_error_log = Some(message.clone());
        }
        // Captured lines are for whoever captures them (`sluice test`, the reload canary), not
        // for the process log.
        if let Some(logs) = &mut self.captured_logs {
            logs.push(LogRecord {
                plugin: self.plugin_name.clone(),
                level,
                message,
            });
            return;
        }
        let plugin = self.plugin_name.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            LogLevel::Error | LogLevel::Critical => {
                tracing::error!(target: "plugin", plugin, "{message}");
            }
        }
    }
}
