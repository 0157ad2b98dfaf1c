//! One instance of a plugin: its store, its callbacks, and the guest calls the chain engine makes.
//!
//! Every guest call runs under a CPU deadline and the instance's memory cap. A call that traps,
//! overruns its deadline or hits the memory cap fails the VM: it is never re-entered, as in
//! proxy-wasm-cpp-host, and every later call reports the original failure.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use sluice_abi::{AbiVersion, Action, Attribute, HeaderMap, LogLevel, Node, PeerType};
use wasmtime::{Instance, Store, Trap, TypedFunc, Val, WasmBacktrace, WasmParams, WasmResults};

use crate::effects::{CallAnswer, Effect};
use crate::engine::{EPOCH_TICK, Engine, PluginCode};
use crate::error::{FailureKind, LoadError, PluginFailure};
use crate::shared::QueueInbox;
use crate::state::{Clock, ClusterCheck, Context, ContextMap, HostState, LogRecord, MemoryCap};
use crate::stream::SharedStream;
use crate::wasi::ProcExit;

/// Resource bounds of one plugin instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap: a `memory.grow` past it fails.
    pub memory_bytes: usize,
    /// CPU deadline of one stream, timer or callout callback.
    pub call_timeout: Duration,
    /// CPU deadline of start-up calls (`_initialize`, `main`, `proxy_on_vm_start`, `proxy_on_configure`),
    /// which legitimately do more work (parsing configuration, compiling regexes).
    pub start_timeout: Duration,
    /// The longest log line written; the rest is cut, saying how long the line was.
    pub log_line_bytes: usize,
    /// The most entries, and bytes of names and values, a header map may hold once the plugin
    /// changed it; past either the plugin fails (its failStrategy applies).
    pub header_map_entries: usize,
    pub header_map_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            call_timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(10),
            // A 64 MiB line would hold its worker while it is formatted and written.
            log_line_bytes: 16 * 1024,
            // Far above any real use, below what an HTTP header map holds.
            header_map_entries: 16384,
            // The largest header size Envoy can be configured to accept.
            header_map_bytes: 8 << 20,
        }
    }
}

/// How often guest calls are timed for [`CallbackTime`]: one call in this many, so that reading
/// the clock twice does not add to every call.
pub const CALLBACK_TIME_SAMPLE: u64 = 16;

/// Guest calls of a plugin and the time they took, shared by all its instances: every call is
/// counted, one in [`CALLBACK_TIME_SAMPLE`] is timed.
#[derive(Debug, Default)]
pub struct CallbackTime {
    pub calls: std::sync::atomic::AtomicU64,
    pub sampled_nanos: std::sync::atomic::AtomicU64,
}

impl CallbackTime {
    /// Estimated total time in guest calls.
    pub fn estimated_seconds(&self) -> f64 {
        let nanos = self
            .sampled_nanos
            .load(std::sync::atomic::Ordering::Relaxed);
        (nanos * CALLBACK_TIME_SAMPLE) as f64 / 1e9
    }
}

/// How to run one VM: identity, configuration and environment.
#[derive(Clone)]
pub struct VmConfig {
    pub plugin_name: String,
    pub vm_id: String,
    /// Passed to `proxy_on_vm_start` as `VM_CONFIGURATION`.
    pub vm_configuration: Vec<u8>,
    /// The WASI environment (Istio's `vmConfig.env`).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// The level `proxy_get_log_level` reports and below which plugin logs are dropped; shared so
    /// an admin API can change it at run time.
    pub log_level: Arc<AtomicU32>,
    /// Keep plugin log lines for [`Vm::take_logs`] (`sluice test`, the reload canary) instead of
    /// sending them to the process log.
    pub capture_logs: bool,
    /// Give the VM its own shared data, shared queues and metrics instead of the engine's, so
    /// nothing it does reaches other VMs (the reload canary).
    pub isolated: bool,
    /// Where this VM counts its guest calls and their time.
    pub callback_time: Option<Arc<CallbackTime>>,
    pub clock: Clock,
    pub clusters: ClusterCheck,
    /// Where the proxy runs (`xds.node`), as Envoy's bootstrap node; built once per
    /// configuration and shared by its VMs.
    pub node: Arc<Attribute>,
}

impl VmConfig {
    pub fn new(plugin_name: impl Into<String>) -> Self {
        Self {
            plugin_name: plugin_name.into(),
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            log_level: Arc::new(AtomicU32::new(LogLevel::Info as u32)),
            capture_logs: false,
            isolated: false,
            callback_time: None,
            clock: Clock::system(),
            clusters: Arc::new(|_| false),
            node: Arc::new(Node::default().attribute()),
        }
    }
}

/// The answer to an HTTP callout; `None` in [`Vm::http_call_response`] means the call failed or
/// timed out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

/// The status `proxy_on_redis_call_response` gets for a call that had no reply.
pub const REDIS_CALL_FAILED: u32 = 1;

/// What a gRPC call or stream delivers to the plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcEvent {
    InitialMetadata(HeaderMap),
    Message(Vec<u8>),
    TrailingMetadata(HeaderMap),
    Close { status: u32, message: Vec<u8> },
}

/// How Envoy ends a gRPC call whose timeout passed: its async client answers as its router does,
/// a 504, which is UNAVAILABLE (14) for gRPC, with this message (the reply's body and details).
pub const GRPC_TIMEOUT_MESSAGE: &str = "upstream request timeout{response_timeout}";

enum HeadersCallback {
    /// ABI 0.1.0: `(context, headers)`.
    WithoutEndOfStream(Rc<TypedFunc<(u32, u32), u32>>),
    WithEndOfStream(Rc<TypedFunc<(u32, u32, u32), u32>>),
}

#[derive(Default)]
struct Callbacks {
    context_create: Option<Rc<TypedFunc<(u32, u32), ()>>>,
    done: Option<Rc<TypedFunc<u32, u32>>>,
    log: Option<Rc<TypedFunc<u32, ()>>>,
    delete: Option<Rc<TypedFunc<u32, ()>>>,
    vm_start: Option<Rc<TypedFunc<(u32, u32), u32>>>,
    configure: Option<Rc<TypedFunc<(u32, u32), u32>>>,
    tick: Option<Rc<TypedFunc<u32, ()>>>,
    request_headers: Option<HeadersCallback>,
    request_body: Option<Rc<TypedFunc<(u32, u32, u32), u32>>>,
    request_trailers: Option<Rc<TypedFunc<(u32, u32), u32>>>,
    response_headers: Option<HeadersCallback>,
    response_body: Option<Rc<TypedFunc<(u32, u32, u32), u32>>>,
    response_trailers: Option<Rc<TypedFunc<(u32, u32), u32>>>,
    http_call_response: Option<Rc<TypedFunc<(u32, u32, u32, u32, u32), ()>>>,
    grpc_initial_metadata: Option<Rc<TypedFunc<(u32, u32, u32), ()>>>,
    grpc_message: Option<Rc<TypedFunc<(u32, u32, u32), ()>>>,
    grpc_trailing_metadata: Option<Rc<TypedFunc<(u32, u32, u32), ()>>>,
    grpc_close: Option<Rc<TypedFunc<(u32, u32, u32), ()>>>,
    queue_ready: Option<Rc<TypedFunc<(u32, u32), ()>>>,
    redis_call_response: Option<Rc<TypedFunc<(u32, u32, u32, u32), ()>>>,
    new_connection: Option<Rc<TypedFunc<u32, u32>>>,
    downstream_data: Option<Rc<TypedFunc<(u32, u32, u32), u32>>>,
    upstream_data: Option<Rc<TypedFunc<(u32, u32, u32), u32>>>,
    downstream_close: Option<Rc<TypedFunc<(u32, u32), ()>>>,
    upstream_close: Option<Rc<TypedFunc<(u32, u32), ()>>>,
}

pub struct Vm {
    /// Keeps the engine's epoch ticker running for as long as this VM may run guest code: its CPU
    /// deadlines depend on it.
    _engine: Engine,
    store: Store<HostState>,
    callbacks: Callbacks,
    failure: Option<PluginFailure>,
    next_context: u32,
    limits: Limits,
    callback_time: Option<Arc<CallbackTime>>,
}

fn ticks(deadline: Duration) -> u64 {
    // In u64 (585 years of nanoseconds): a u128 division is a library call on every guest call.
    let nanos = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
    nanos / EPOCH_TICK.as_nanos() as u64 + 1
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
    expected: &str,
) -> Result<Option<Rc<TypedFunc<P, R>>>, LoadError> {
    let Some(func) = instance.get_func(&mut *store, name) else {
        return Ok(None);
    };
    // Shared, because cloning a TypedFunc clones its registered type on every guest call.
    func.typed::<P, R>(&*store)
        .map(|f| Some(Rc::new(f)))
        .map_err(|_| LoadError::BadCallbackSignature {
            name: name.to_string(),
            expected: expected.to_string(),
            actual: func.ty(&*store).to_string(),
        })
}

fn headers_callback(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<HeadersCallback>, LoadError> {
    let Some(func) = instance.get_func(&mut *store, name) else {
        return Ok(None);
    };
    if func.ty(&*store).params().len() == 2 {
        typed(instance, store, name, "(func (param i32 i32) (result i32))")
            .map(|f| f.map(HeadersCallback::WithoutEndOfStream))
    } else {
        typed(
            instance,
            store,
            name,
            "(func (param i32 i32 i32) (result i32))",
        )
        .map(|f| f.map(HeadersCallback::WithEndOfStream))
    }
}

impl Callbacks {
    /// Forgets the callbacks a capability allow-list leaves out: they are never called.
    fn restrict(&mut self, allowed: &std::collections::BTreeSet<String>) {
        let allows = |name: &str| allowed.contains(name);
        macro_rules! keep_if_allowed {
            ($($field:ident: $name:literal),* $(,)?) => {
                $(if !allows($name) { self.$field = None; })*
            };
        }
        keep_if_allowed!(
            context_create: "proxy_on_context_create",
            done: "proxy_on_done",
            log: "proxy_on_log",
            delete: "proxy_on_delete",
            vm_start: "proxy_on_vm_start",
            configure: "proxy_on_configure",
            tick: "proxy_on_tick",
            request_headers: "proxy_on_request_headers",
            request_body: "proxy_on_request_body",
            request_trailers: "proxy_on_request_trailers",
            response_headers: "proxy_on_response_headers",
            response_body: "proxy_on_response_body",
            response_trailers: "proxy_on_response_trailers",
            http_call_response: "proxy_on_http_call_response",
            grpc_initial_metadata: "proxy_on_grpc_receive_initial_metadata",
            grpc_message: "proxy_on_grpc_receive",
            grpc_trailing_metadata: "proxy_on_grpc_receive_trailing_metadata",
            grpc_close: "proxy_on_grpc_close",
            queue_ready: "proxy_on_queue_ready",
            redis_call_response: "proxy_on_redis_call_response",
            new_connection: "proxy_on_new_connection",
            downstream_data: "proxy_on_downstream_data",
            upstream_data: "proxy_on_upstream_data",
            downstream_close: "proxy_on_downstream_connection_close",
            upstream_close: "proxy_on_upstream_connection_close",
        );
    }

    fn find(instance: &Instance, store: &mut Store<HostState>) -> Result<Self, LoadError> {
        const I2: &str = "(func (param i32 i32))";
        const I3: &str = "(func (param i32 i32 i32))";
        const I2_R: &str = "(func (param i32 i32) (result i32))";
        const I3_R: &str = "(func (param i32 i32 i32) (result i32))";
        Ok(Self {
            context_create: typed(instance, store, "proxy_on_context_create", I2)?,
            done: typed(
                instance,
                store,
                "proxy_on_done",
                "(func (param i32) (result i32))",
            )?,
            log: typed(instance, store, "proxy_on_log", "(func (param i32))")?,
            delete: typed(instance, store, "proxy_on_delete", "(func (param i32))")?,
            vm_start: typed(instance, store, "proxy_on_vm_start", I2_R)?,
            configure: typed(instance, store, "proxy_on_configure", I2_R)?,
            tick: typed(instance, store, "proxy_on_tick", "(func (param i32))")?,
            request_headers: headers_callback(instance, store, "proxy_on_request_headers")?,
            request_body: typed(instance, store, "proxy_on_request_body", I3_R)?,
            request_trailers: typed(instance, store, "proxy_on_request_trailers", I2_R)?,
            response_headers: headers_callback(instance, store, "proxy_on_response_headers")?,
            response_body: typed(instance, store, "proxy_on_response_body", I3_R)?,
            response_trailers: typed(instance, store, "proxy_on_response_trailers", I2_R)?,
            http_call_response: typed(
                instance,
                store,
                "proxy_on_http_call_response",
                "(func (param i32 i32 i32 i32 i32))",
            )?,
            grpc_initial_metadata: typed(
                instance,
                store,
                "proxy_on_grpc_receive_initial_metadata",
                I3,
            )?,
            grpc_message: typed(instance, store, "proxy_on_grpc_receive", I3)?,
            grpc_trailing_metadata: typed(
                instance,
                store,
                "proxy_on_grpc_receive_trailing_metadata",
                I3,
            )?,
            grpc_close: typed(instance, store, "proxy_on_grpc_close", I3)?,
            queue_ready: typed(instance, store, "proxy_on_queue_ready", I2)?,
            redis_call_response: typed(
                instance,
                store,
                "proxy_on_redis_call_response",
                "(func (param i32 i32 i32 i32))",
            )?,
            new_connection: typed(
                instance,
                store,
                "proxy_on_new_connection",
                "(func (param i32) (result i32))",
            )?,
            downstream_data: typed(instance, store, "proxy_on_downstream_data", I3_R)?,
            upstream_data: typed(instance, store, "proxy_on_upstream_data", I3_R)?,
            downstream_close: typed(instance, store, "proxy_on_downstream_connection_close", I2)?,
            upstream_close: typed(instance, store, "proxy_on_upstream_connection_close", I2)?,
        })
    }
}

/// Turns a failed guest call into a [`PluginFailure`] with the cause and a symbolized backtrace.
fn classify(store: &Store<HostState>, callback: &str, error: &wasmtime::Error) -> PluginFailure {
    let state = store.data();
    let trap = error.downcast_ref::<Trap>();
    let kind = if let Some(exit) = error.downcast_ref::<ProcExit>() {
        FailureKind::Exit(exit.0)
    } else if trap == Some(&Trap::Interrupt) {
        FailureKind::Deadline
    } else if state.limiter.hit {
        FailureKind::MemoryLimit
    } else {
        FailureKind::Trap
    };
    let mut message = match trap {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    if let Some(last) = &state.last_error_log {
        message = format!("{message}; the plugin's last error log: {last}");
    }
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(format_backtrace)
        .unwrap_or_default();
    PluginFailure {
        plugin: state.plugin_name.clone(),
        callback: callback.to_string(),
        kind,
        message,
        backtrace,
    }
}

fn format_backtrace(backtrace: &WasmBacktrace) -> String {
    let mut out = String::from("guest backtrace:");
    for (i, frame) in backtrace.frames().iter().enumerate() {
        let name = frame.func_name().map_or_else(
            || format!("<function #{}>", frame.func_index()),
            str::to_string,
        );
        out.push_str(&format!("\n  #{i} {name}"));
        if let Some(offset) = frame.module_offset() {
            out.push_str(&format!(" (module offset {offset:#x})"));
        }
        for symbol in frame.symbols() {
            if let (Some(file), Some(line)) = (symbol.file(), symbol.line()) {
                out.push_str(&format!(" at {file}:{line}"));
            }
        }
    }
    out
}

/// A VM's host state before its instance exists.
pub(crate) fn host_state(engine: &Engine, abi: AbiVersion, config: VmConfig) -> HostState {
    HostState {
        limits: config.limits.clone(),
        warned: HashSet::new(),
        plugin_name: config.plugin_name,
        vm_id: config.vm_id,
        abi,
        shared: if config.isolated {
            Arc::new(engine.inner.shared.empty_like())
        } else {
            engine.inner.shared.clone()
        },
        memory: None,
        allocate: None,
        limiter: MemoryCap {
            max_bytes: config.limits.memory_bytes,
            hit: false,
        },
        contexts: ContextMap::default(),
        effective_context: 0,
        effects: Vec::new(),
        scope: None,
        vm_configuration: config.vm_configuration,
        last_status: (0, Vec::new()),
        log_level: config.log_level,
        captured_logs: config.capture_logs.then(Vec::new),
        last_error_log: None,
        env: config.env,
        clock: config.clock,
        clusters: config.clusters,
        node: config.node,
        declared: HashMap::new(),
        expressions: HashMap::new(),
        next_token: 0,
        redis: HashMap::new(),
        grpc_tokens: HashMap::new(),
        tick_periods: HashMap::new(),
        pending_done: HashSet::new(),
        queue_inbox: QueueInbox::default(),
        metric_ids: Default::default(),
    }
}

impl Vm {
    /// Instantiates `code` and runs its start-up (`_initialize` then `main`, or `_start`, or the
    /// start section).
    pub fn new(engine: &Engine, code: &PluginCode, config: VmConfig) -> Result<Self, LoadError> {
        let abi = code.info.loadable()?;
        let limits = config.limits.clone();
        let callback_time = config.callback_time.clone();
        let state = host_state(engine, abi, config);
        let mut store = Store::new(&engine.inner.wasmtime, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(ticks(limits.start_timeout));
        let instance =
            code.pre
                .instantiate(&mut store)
                .map_err(|e| match e.downcast_ref::<Trap>() {
                    Some(_) => LoadError::Start(classify(&store, "start section", &e)),
                    None => LoadError::Instantiate(format!("{e:#}")),
                })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(LoadError::NoMemory)?;
        let allocate = match typed::<u32, u32>(
            &instance,
            &mut store,
            "proxy_on_memory_allocate",
            "(func (param i32) (result i32))",
        )? {
            Some(f) => f,
            None => typed(
                &instance,
                &mut store,
                "malloc",
                "(func (param i32) (result i32))",
            )?
            .ok_or(LoadError::NoAllocator)?,
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);
        let mut callbacks = Callbacks::find(&instance, &mut store)?;
        if let Some(allowed) = &code.allowed {
            callbacks.restrict(allowed);
        }
        let mut vm = Self {
            _engine: engine.clone(),
            store,
            callbacks,
            failure: None,
            next_context: 0,
            limits,
            callback_time,
        };
        vm.run_entry_points(&instance)?;
        Ok(vm)
    }

    fn run_entry_points(&mut self, instance: &Instance) -> Result<(), LoadError> {
        let initialize = instance.get_func(&mut self.store, "_initialize");
        let main = instance.get_func(&mut self.store, "main");
        let start = instance.get_func(&mut self.store, "_start");
        let deadline = self.limits.start_timeout;
        let call = |vm: &mut Self, name: &str, func: wasmtime::Func| -> Result<(), LoadError> {
            let ty = func.ty(&vm.store);
            // `main` is `(argc, argv) -> status` in C and `() -> ()` elsewhere: pass zeros either way.
            let params: Vec<Val> = ty
                .params()
                .map(|t| t.default_value().unwrap_or(Val::I32(0)))
                .collect();
            let mut results: Vec<Val> = ty
                .results()
                .map(|t| t.default_value().unwrap_or(Val::I32(0)))
                .collect();
            match vm.run(name, 0, deadline, |store| {
                func.call(store, &params, &mut results)
            }) {
                Err(PluginFailure {
                    kind: FailureKind::Exit(0),
                    ..
                }) if name == "_start" => {
                    vm.failure = None;
                    Ok(())
                }
                other => other.map_err(LoadError::Start),
            }
        };
        if let Some(initialize) = initialize {
            call(self, "_initialize", initialize)?;
            if let Some(main) = main {
                call(self, "main", main)?;
            }
        } else if let Some(start) = start {
            call(self, "_start", start)?;
        }
        Ok(())
    }

    /// Runs one guest call with the deadline armed, on behalf of `context`.
    fn run<R>(
        &mut self,
        callback: &str,
        context: u32,
        deadline: Duration,
        call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        if let Some(failure) = &self.failure {
            return Err(PluginFailure {
                kind: FailureKind::AlreadyFailed,
                callback: callback.to_string(),
                ..failure.clone()
            });
        }
        self.store.set_epoch_deadline(ticks(deadline));
        let state = self.store.data_mut();
        state.effective_context = context;
        // Tested first: assigning over a value calls its out-of-line drop even when it is None.
        if state.last_error_log.is_some() {
            state.last_error_log = None;
        }
        state.limiter.hit = false;
        let timed = self.callback_time.as_ref().and_then(|time| {
            let calls = time
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (calls % CALLBACK_TIME_SAMPLE == 0).then(std::time::Instant::now)
        });
        let result = call(&mut self.store);
        if let (Some(started), Some(time)) = (timed, &self.callback_time) {
            time.sampled_nanos.fetch_add(
                started.elapsed().as_nanos() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let state = self.store.data_mut();
        if state.scope.is_some() {
            state.scope = None;
        }
        result.map_err(|error| {
            let failure = classify(&self.store, callback, &error);
            tracing::error!(target: "plugin", plugin = %failure.plugin, "{failure}");
            self.failure = Some(failure.clone());
            failure
        })
    }

    fn new_context(&mut self, context: Context) -> u32 {
        self.next_context += 1;
        self.store
            .data_mut()
            .contexts
            .insert(self.next_context, context);
        self.next_context
    }

    /// Creates a root context for one plugin configuration and runs `proxy_on_vm_start` and
    /// `proxy_on_configure` on it. Several root contexts (per-route configurations, plugins
    /// sharing a vm_id) share the VM; `plugin_name` is the plugin this one belongs to.
    pub fn start_root(
        &mut self,
        plugin_name: &str,
        root_id: &str,
        plugin_configuration: &[u8],
    ) -> Result<u32, LoadError> {
        let root = self.new_context(Context::Root {
            root_id: root_id.to_string(),
            plugin_name: plugin_name.to_string(),
        });
        let deadline = self.limits.start_timeout;
        if let Some(create) = self.callbacks.context_create.clone() {
            self.run("proxy_on_context_create", root, deadline, |s| {
                create.call(s, (root, 0))
            })?;
        }
        if let Some(vm_start) = self.callbacks.vm_start.clone() {
            let vm_configuration = self.store.data().vm_configuration.clone();
            let size = vm_configuration.len() as u32;
            let ok = self.run("proxy_on_vm_start", root, deadline, |s| {
                s.data_mut().scope_mut().vm_configuration = Some(vm_configuration);
                vm_start.call(s, (root, size))
            })?;
            if ok == 0 {
                return Err(LoadError::VmStartRejected);
            }
        }
        if let Some(configure) = self.callbacks.configure.clone() {
            let size = plugin_configuration.len() as u32;
            let configuration = plugin_configuration.to_vec();
            let ok = self.run("proxy_on_configure", root, deadline, |s| {
                s.data_mut().scope_mut().plugin_configuration = Some(configuration);
                configure.call(s, (root, size))
            })?;
            if ok == 0 {
                return Err(LoadError::ConfigureRejected);
            }
        }
        Ok(root)
    }

    /// Creates an HTTP stream context under `root`. The stream's data is shared with the caller,
    /// which fills it before each callback and reads it after.
    pub fn create_stream(&mut self, root: u32, stream: SharedStream) -> Result<u32, PluginFailure> {
        let context = self.new_context(Context::Stream { root, stream });
        if let Some(create) = self.callbacks.context_create.clone() {
            let deadline = self.limits.call_timeout;
            self.run("proxy_on_context_create", context, deadline, |s| {
                create.call(s, (context, root))
            })?;
        }
        Ok(context)
    }

    /// Creates a network (L4) plugin's context for one TCP connection under `root`: the
    /// connection's properties and data buffers are in `stream`, shared with the caller.
    pub fn create_connection(
        &mut self,
        root: u32,
        stream: SharedStream,
    ) -> Result<u32, PluginFailure> {
        let context = self.new_context(Context::Connection { root, stream });
        if let Some(create) = self.callbacks.context_create.clone() {
            let deadline = self.limits.call_timeout;
            self.run("proxy_on_context_create", context, deadline, |s| {
                create.call(s, (context, root))
            })?;
        }
        Ok(context)
    }

    pub fn new_connection(&mut self, context: u32) -> Result<Action, PluginFailure> {
        let Some(f) = self.callbacks.new_connection.clone() else {
            return Ok(Action::Continue);
        };
        let deadline = self.limits.call_timeout;
        self.run("proxy_on_new_connection", context, deadline, |s| {
            f.call(s, context)
        })
        .map(Action::from_raw)
    }

    /// `proxy_on_downstream_data`: `size` is every byte the connection holds from the client.
    pub fn downstream_data(
        &mut self,
        context: u32,
        size: u32,
        end_of_stream: bool,
    ) -> Result<Action, PluginFailure> {
        self.action(
            "proxy_on_downstream_data",
            context,
            self.callbacks.downstream_data.clone(),
            size,
            u32::from(end_of_stream),
        )
    }

    pub fn upstream_data(
        &mut self,
        context: u32,
        size: u32,
        end_of_stream: bool,
    ) -> Result<Action, PluginFailure> {
        self.action(
            "proxy_on_upstream_data",
            context,
            self.callbacks.upstream_data.clone(),
            size,
            u32::from(end_of_stream),
        )
    }

    pub fn downstream_close(&mut self, context: u32, peer: PeerType) -> Result<(), PluginFailure> {
        self.connection_close(
            "proxy_on_downstream_connection_close",
            context,
            self.callbacks.downstream_close.clone(),
            peer,
        )
    }

    pub fn upstream_close(&mut self, context: u32, peer: PeerType) -> Result<(), PluginFailure> {
        self.connection_close(
            "proxy_on_upstream_connection_close",
            context,
            self.callbacks.upstream_close.clone(),
            peer,
        )
    }

    fn connection_close(
        &mut self,
        name: &str,
        context: u32,
        callback: Option<Rc<TypedFunc<(u32, u32), ()>>>,
        peer: PeerType,
    ) -> Result<(), PluginFailure> {
        let Some(f) = callback else {
            return Ok(());
        };
        let deadline = self.limits.call_timeout;
        self.run(name, context, deadline, |s| {
            f.call(s, (context, peer as u32))
        })
    }

    fn headers(
        &mut self,
        name: &str,
        context: u32,
        headers: u32,
        end_of_stream: bool,
        request: bool,
    ) -> Result<Action, PluginFailure> {
        let callback = if request {
            &self.callbacks.request_headers
        } else {
            &self.callbacks.response_headers
        };
        let deadline = self.limits.call_timeout;
        let raw = match callback {
            None => return Ok(Action::Continue),
            Some(HeadersCallback::WithoutEndOfStream(f)) => {
                let f = f.clone();
                self.run(name, context, deadline, |s| f.call(s, (context, headers)))?
            }
            Some(HeadersCallback::WithEndOfStream(f)) => {
                let f = f.clone();
                self.run(name, context, deadline, |s| {
                    f.call(s, (context, headers, u32::from(end_of_stream)))
                })?
            }
        };
        Ok(Action::from_raw(raw))
    }

    pub fn request_headers(
        &mut self,
        context: u32,
        headers: u32,
        end_of_stream: bool,
    ) -> Result<Action, PluginFailure> {
        self.headers(
            "proxy_on_request_headers",
            context,
            headers,
            end_of_stream,
            true,
        )
    }

    pub fn response_headers(
        &mut self,
        context: u32,
        headers: u32,
        end_of_stream: bool,
    ) -> Result<Action, PluginFailure> {
        self.headers(
            "proxy_on_response_headers",
            context,
            headers,
            end_of_stream,
            false,
        )
    }

    fn action(
        &mut self,
        name: &str,
        context: u32,
        callback: Option<Rc<TypedFunc<(u32, u32, u32), u32>>>,
        a: u32,
        b: u32,
    ) -> Result<Action, PluginFailure> {
        let Some(f) = callback else {
            return Ok(Action::Continue);
        };
        let deadline = self.limits.call_timeout;
        self.run(name, context, deadline, |s| f.call(s, (context, a, b)))
            .map(Action::from_raw)
    }

    pub fn request_body(
        &mut self,
        context: u32,
        size: u32,
        end_of_stream: bool,
    ) -> Result<Action, PluginFailure> {
        self.action(
            "proxy_on_request_body",
            context,
            self.callbacks.request_body.clone(),
            size,
            u32::from(end_of_stream),
        )
    }

    pub fn response_body(
        &mut self,
        context: u32,
        size: u32,
        end_of_stream: bool,
    ) -> Result<Action, PluginFailure> {
        self.action(
            "proxy_on_response_body",
            context,
            self.callbacks.response_body.clone(),
            size,
            u32::from(end_of_stream),
        )
    }

    fn trailers(
        &mut self,
        name: &str,
        context: u32,
        callback: Option<Rc<TypedFunc<(u32, u32), u32>>>,
        count: u32,
    ) -> Result<Action, PluginFailure> {
        let Some(f) = callback else {
            return Ok(Action::Continue);
        };
        let deadline = self.limits.call_timeout;
        self.run(name, context, deadline, |s| f.call(s, (context, count)))
            .map(Action::from_raw)
    }

    pub fn request_trailers(
        &mut self,
        context: u32,
        trailers: u32,
    ) -> Result<Action, PluginFailure> {
        self.trailers(
            "proxy_on_request_trailers",
            context,
            self.callbacks.request_trailers.clone(),
            trailers,
        )
    }

    pub fn response_trailers(
        &mut self,
        context: u32,
        trailers: u32,
    ) -> Result<Action, PluginFailure> {
        self.trailers(
            "proxy_on_response_trailers",
            context,
            self.callbacks.response_trailers.clone(),
            trailers,
        )
    }

    /// `proxy_on_done`; `false` from a root context means the plugin will call `proxy_done`
    /// later. A stream context's answer changes nothing: Envoy deletes it at once, and its
    /// `proxy_done` answers NOT_FOUND.
    pub fn done(&mut self, context: u32) -> Result<bool, PluginFailure> {
        let Some(f) = self.callbacks.done.clone() else {
            return Ok(true);
        };
        let deadline = self.limits.call_timeout;
        let finished = self.run("proxy_on_done", context, deadline, |s| f.call(s, context))? != 0;
        let state = self.store.data_mut();
        if !finished && matches!(state.contexts.get(&context), Some(Context::Root { .. })) {
            state.pending_done.insert(context);
        }
        Ok(finished)
    }

    pub fn log(&mut self, context: u32) -> Result<(), PluginFailure> {
        let Some(f) = self.callbacks.log.clone() else {
            return Ok(());
        };
        let deadline = self.limits.call_timeout;
        self.run("proxy_on_log", context, deadline, |s| f.call(s, context))
    }

    /// `proxy_on_delete`, then forgets the context. A failed VM only forgets it.
    pub fn delete(&mut self, context: u32) -> Result<(), PluginFailure> {
        let result = match self.callbacks.delete.clone() {
            Some(f) if self.failure.is_none() => {
                let deadline = self.limits.call_timeout;
                self.run("proxy_on_delete", context, deadline, |s| f.call(s, context))
            }
            _ => Ok(()),
        };
        let state = self.store.data_mut();
        state.contexts.remove(&context);
        // Hashing the id is the cost of a remove; almost no context is pending.
        if !state.pending_done.is_empty() {
            state.pending_done.remove(&context);
        }
        if !state.declared.is_empty() {
            state.declared.remove(&context);
        }
        if !state.expressions.is_empty() {
            state.expressions.remove(&context);
        }
        result
    }

    pub fn tick(&mut self, root: u32) -> Result<(), PluginFailure> {
        let Some(f) = self.callbacks.tick.clone() else {
            return Ok(());
        };
        let deadline = self.limits.call_timeout;
        self.run("proxy_on_tick", root, deadline, |s| f.call(s, root))
    }

    pub fn queue_ready(&mut self, root: u32, queue_id: u32) -> Result<(), PluginFailure> {
        let Some(f) = self.callbacks.queue_ready.clone() else {
            return Ok(());
        };
        let deadline = self.limits.call_timeout;
        self.run("proxy_on_queue_ready", root, deadline, |s| {
            f.call(s, (root, queue_id))
        })
    }

    /// Delivers what came back from call `token` (an HTTP callout's answer, a gRPC event or a
    /// Redis reply) to `root`, the root context that made it.
    pub fn call_answer(
        &mut self,
        root: u32,
        token: u32,
        answer: CallAnswer,
    ) -> Result<(), PluginFailure> {
        match answer {
            CallAnswer::Http(response) => self.http_call_response(root, token, response),
            CallAnswer::Grpc(event) => self.grpc_event(root, token, event),
            CallAnswer::Redis(reply) => self.redis_call_response(root, token, reply),
        }
    }

    /// Delivers the reply (or, with `None`, the failure) of the Redis call `token` to `root`:
    /// status 0 with the reply's RESP bytes in buffer 9, or a non-zero status and no bytes.
    pub fn redis_call_response(
        &mut self,
        root: u32,
        token: u32,
        reply: Option<Vec<u8>>,
    ) -> Result<(), PluginFailure> {
        let Some(f) = self.callbacks.redis_call_response.clone() else {
            return Ok(());
        };
        let deadline = self.limits.call_timeout;
        let status = u32::from(reply.is_none()) * REDIS_CALL_FAILED;
        let reply = reply.unwrap_or_default();
        let size = reply.len() as u32;
        self.run("proxy_on_redis_call_response", root, deadline, |s| {
            s.data_mut().scope_mut().redis_reply = Some(reply);
            f.call(s, (root, token, status, size))
        })
    }

    /// Delivers the answer (or, with `None`, the failure) of the callout `token` to `root`.
    pub fn http_call_response(
        &mut self,
        root: u32,
        token: u32,
        response: Option<CallResponse>,
    ) -> Result<(), PluginFailure> {
        let Some(f) = self.callbacks.http_call_response.clone() else {
            return Ok(());
        };
        let deadline = self.limits.call_timeout;
        let response = response.unwrap_or_default();
        let counts = (
            response.headers.len() as u32,
            response.body.len() as u32,
            response.trailers.len() as u32,
        );
        let status = response
            .headers
            .get(":status")
            .map_or(0, |s| String::from_utf8_lossy(s).parse().unwrap_or(0));
        self.run("proxy_on_http_call_response", root, deadline, |s| {
            s.data_mut().last_status = (status, Vec::new());
            let scope = s.data_mut().scope_mut();
            scope.call_headers = Some(response.headers);
            scope.call_body = Some(response.body);
            scope.call_trailers = Some(response.trailers);
            f.call(s, (root, token, counts.0, counts.1, counts.2))
        })
    }

    /// Delivers one event of the gRPC call or stream `token` to `root`.
    pub fn grpc_event(
        &mut self,
        root: u32,
        token: u32,
        event: GrpcEvent,
    ) -> Result<(), PluginFailure> {
        let deadline = self.limits.call_timeout;
        let c = &self.callbacks;
        let (name, f, arg) = match &event {
            GrpcEvent::InitialMetadata(m) => (
                "proxy_on_grpc_receive_initial_metadata",
                c.grpc_initial_metadata.clone(),
                m.len() as u32,
            ),
            GrpcEvent::Message(m) => (
                "proxy_on_grpc_receive",
                c.grpc_message.clone(),
                m.len() as u32,
            ),
            GrpcEvent::TrailingMetadata(m) => (
                "proxy_on_grpc_receive_trailing_metadata",
                c.grpc_trailing_metadata.clone(),
                m.len() as u32,
            ),
            GrpcEvent::Close { status, .. } => {
                ("proxy_on_grpc_close", c.grpc_close.clone(), *status)
            }
        };
        let tokens = &mut self.store.data_mut().grpc_tokens;
        let unary = tokens.get(&token).copied().unwrap_or(false);
        if matches!(event, GrpcEvent::Close { .. })
            || (unary && matches!(event, GrpcEvent::Message(_)))
        {
            tokens.remove(&token);
        }
        let Some(f) = f else { return Ok(()) };
        self.run(name, root, deadline, |s| {
            let state = s.data_mut();
            match event {
                GrpcEvent::InitialMetadata(m) => state.scope_mut().grpc_initial_metadata = Some(m),
                GrpcEvent::Message(m) => state.scope_mut().grpc_message = Some(m),
                GrpcEvent::TrailingMetadata(m) => {
                    state.scope_mut().grpc_trailing_metadata = Some(m);
                }
                GrpcEvent::Close { status, message } => state.last_status = (status, message),
            }
            f.call(s, (root, token, arg))
        })
    }

    /// The effects recorded since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.store.data_mut().effects)
    }

    /// Captured log lines (with [`VmConfig::capture_logs`]) since the last call.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        self.store
            .data_mut()
            .captured_logs
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The tick period `root` asked for, if any, and the monotonic time (nanoseconds) it asked.
    pub fn tick_period(&self, root: u32) -> Option<(Duration, u64)> {
        self.store
            .data()
            .tick_periods
            .get(&root)
            .map(|(ms, since)| (Duration::from_millis((*ms).into()), *since))
    }

    /// Where `proxy_on_queue_ready` notifications for queues this VM registered arrive.
    pub fn queue_inbox(&self) -> QueueInbox {
        self.store.data().queue_inbox.clone()
    }

    pub fn failure(&self) -> Option<&PluginFailure> {
        self.failure.as_ref()
    }

    pub fn abi(&self) -> AbiVersion {
        self.store.data().abi
    }

    pub fn plugin_name(&self) -> &str {
        &self.store.data().plugin_name
    }

    pub fn vm_id(&self) -> &str {
        &self.store.data().vm_id
    }

    /// Current linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }

    /// Live contexts (roots and streams), for leak checks.
    pub fn context_count(&self) -> usize {
        self.store.data().contexts.len()
    }
}
