//! A test plugin that records what a host does to it, for comparing hosts (sluice and Envoy).
//!
//! Written against the raw Proxy-Wasm ABI 0.2.1 rather than an SDK, because an SDK hides part of
//! what a host does (the order of `proxy_on_log`, `proxy_on_done` and `proxy_on_delete`, body
//! callbacks of size 0, the exact order of a header map) and that is what this plugin is for.
//!
//! Every stream callback appends one line to a trace kept in shared data (`probe.trace`), so the
//! trace holds every probe of a chain in the order the host called them. A request carrying the
//! header `x-probe-dump` is answered by the first probe with the trace (which it then empties) and
//! leaves no trace itself. The probes of a chain must share one VM (one vm_id) for that.
//!
//! What a probe does besides recording comes from its JSON plugin configuration:
//! - `name`: the label of its lines (default `probe`);
//! - `pause`: callbacks that return Pause (`request_headers`, `request_body`, `request_trailers`,
//!   `response_headers`, `response_body`, `response_trailers`); a body callback pauses only
//!   until the end of the stream, as a plugin that buffers a whole body does;
//! - `reply`: `{"on": <callback>, "status": 403, "body": "...", "headers": {"x": "y"}}`, a local
//!   reply sent from that callback (which then returns Pause);
//! - `stamp`: in `response_headers`, add `x-probe-<name>: <:status>` to the response;
//! - `tick_resume_ms`: the root context ticks at this period and, on each tick, resumes every
//!   request this probe paused in `request_headers` (`proxy_set_effective_context` then
//!   `proxy_continue_stream`), and the connections it paused (see `net_pause`);
//! - `callout`: `{"cluster": "...", "authority": "..."}`: a GET callout from `request_headers`,
//!   which pauses until the answer arrives and resumes the request from the callout callback;
//! - `metric`: a counter name: in `request_headers` the probe defines it, defines the same name as
//!   a gauge, increments the counter and records what each call returned and the value it reads;
//! - `trap`: a callback in which the probe traps (`unreachable`), an HTTP one or a network one
//!   (`new_connection`, `downstream_data`, `upstream_data`, `downstream_close`,
//!   `upstream_close`);
//! - `spin`, `grow`: a network callback in which the probe loops for ever, or allocates until
//!   memory runs out (so the host's CPU deadline, or its memory cap, has to stop it);
//! - `grpc`: `{"cluster": "...", "timeout_ms": 1000, "method": "Check"}`: a unary gRPC call
//!   (`probe.Probe/<method>`)
//!   from `request_headers`, which pauses until the call ends and records how it ended (status
//!   and `proxy_get_status` message);
//! - `tick_metric`: a counter name the root context increments on every tick (with
//!   `tick_resume_ms` for the period), to see from outside whether a VM still ticks;
//! - `properties`: property paths read at configure time, in `request_headers` and in
//!   `new_connection` (after the `set` and `foreign` calls there), dotted, or split at `|` when a
//!   segment holds a dot;
//! - `set`: `[{"on": "configure"|"request_headers"|"new_connection", "path": "...", "value":
//!   "..."}]`: `proxy_set_property` calls and what they returned;
//! - `foreign`: `[{"on": "configure"|"request_headers"|"new_connection", "name": "...", "args":
//!   "..."}]` (or `"hex"` for binary arguments): foreign function calls and what they returned;
//! - `expressions`: CEL expressions evaluated in `request_headers` through `expr_create`,
//!   `expr_evaluate` and `expr_delete`.
//!
//! What is read at configure time is reported on every `request_headers` and `new_connection`
//! line.
//!
//! The network (L4) side, for a probe running as a network filter:
//! - `net_pause`: network callbacks that return Pause (`new_connection`, `downstream_data`,
//!   `upstream_data`). With `tick_resume_ms`, each tick resumes every connection this probe
//!   paused on its downstream side (`new_connection`, `downstream_data`):
//!   `proxy_set_effective_context`, then `proxy_continue_stream(2)`;
//! - `net_resume_upstream`: with `tick_resume_ms`, the tick also tries to resume connections
//!   paused in `upstream_data`, with `proxy_continue_stream(3)` (Envoy: 12, unimplemented);
//! - `net_prefix`: `{"downstream": "...", "upstream": "..."}`: on the first data callback of a
//!   direction with size > 0, the string is prepended (`proxy_set_buffer_bytes(type, 0, 0, ..)`);
//! - `net_replace`: `{"downstream": "...", "upstream": "..."}`: on every data callback of a
//!   direction with size > 0, the whole buffer is replaced by the string
//!   (`proxy_set_buffer_bytes(type, 0, size, ..)`); before `net_prefix` when both apply;
//! - `net_close_on`: when the downstream data (as received) contains this string, the probe
//!   calls `proxy_close_stream(2)`; `net_close_upstream_on`: the same for upstream data, with
//!   `proxy_close_stream(3)`;
//! - `net_calls`: calls that mean nothing or fail on a connection: in `new_connection`,
//!   `proxy_get_header_map_value(0, ":path")`, `proxy_get_header_map_pairs(0)`,
//!   `proxy_send_local_response(403)`, `proxy_set_buffer_bytes(2, 0, 0, "x")` and
//!   `proxy_get_buffer_bytes(2, 0, 10)` outside a data callback; in the first downstream data
//!   callback of size 2 or more, the mid-buffer `proxy_set_buffer_bytes(2, 1, 0, "x")`.
//!
//! Network trace lines (after `<context> <name> `; `[..]` only when configured):
//! - `new_connection[ configure:..][ set ..][ foreign ..][ <path>=<status>:<value>..]`
//!   `[ header_value=<s> header_pairs=<s>:<size> local_response=<s> set_outside=<s>`
//!   `get_outside=<s>:<len>]`;
//! - `downstream_data size=<n> end=<bool> get=<s> data="<bytes>" status=<s> len=<n> flags=<f>`
//!   `[ set_mid=<s>][ replace=<s>][ prefix=<s>][ now="<bytes>"][ close_downstream=<s>]`, where
//!   `get` and `data` are what `proxy_get_buffer_bytes(2, 0, size)` gave, `status`, `len` and
//!   `flags` what `proxy_get_buffer_status(2)` gave, and `now` the whole buffer read back after
//!   a write; bytes are escaped with Rust's `escape_ascii`;
//! - `upstream_data ...`: the same with buffer 3, and `close_upstream=<s>`;
//! - `downstream_close peer=<p>`, `upstream_close peer=<p>`;
//! - from the tick: `tick set_effective_context=<s>[ continue_downstream status=<s>]`
//!   `[ continue_upstream status=<s>]`;
//! - then `done`, `log` and `delete` as for HTTP streams.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(kind: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        kind: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        kind: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        kind: u32,
        start: usize,
        length: usize,
        data: *const u8,
        size: usize,
    ) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_close_stream(stream: u32) -> u32;
    fn proxy_get_buffer_status(kind: u32, length: *mut usize, flags: *mut u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_grpc_call(
        upstream: *const u8,
        upstream_size: usize,
        service: *const u8,
        service_size: usize,
        method: *const u8,
        method_size: usize,
        metadata: *const u8,
        metadata_size: usize,
        message: *const u8,
        message_size: usize,
        timeout: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_get_status(code: *mut u32, message: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_get_metric(id: u32, value: *mut u64) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        results: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

const REQUEST_HEADERS: u32 = 0;
const REQUEST_TRAILERS: u32 = 1;
const RESPONSE_HEADERS: u32 = 2;
const RESPONSE_TRAILERS: u32 = 3;
const CALL_RESPONSE_HEADERS: u32 = 6;
const PLUGIN_CONFIGURATION: u32 = 7;
const STREAM_REQUEST: u32 = 0;
/// Stream types (of `proxy_continue_stream` and `proxy_close_stream`) and buffer types of a
/// network connection: the same numbers for both.
const DOWNSTREAM: u32 = 2;
const UPSTREAM: u32 = 3;
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;
const TRACE_KEY: &[u8] = b"probe.trace";
const DUMP_HEADER: &[u8] = b"x-probe-dump";

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(size.max(1));
    let pointer = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    pointer
}

/// Takes ownership of bytes the host wrote through `proxy_on_memory_allocate`.
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes (capacity `size.max(1)`) with
    // `proxy_on_memory_allocate` and filled them; ownership passes to us.
    unsafe { Vec::from_raw_parts(data, size, size.max(1)) }
}

#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct Config {
    name: Option<String>,
    pause: Vec<String>,
    reply: Option<Reply>,
    stamp: bool,
    tick_resume_ms: Option<u32>,
    callout: Option<Callout>,
    metric: Option<String>,
    trap: Option<String>,
    spin: Option<String>,
    grow: Option<String>,
    tick_metric: Option<String>,
    grpc: Option<Grpc>,
    properties: Vec<String>,
    foreign: Vec<Foreign>,
    expressions: Vec<String>,
    set: Vec<SetProperty>,
    replace_body: Option<ReplaceBody>,
    net_pause: Vec<String>,
    net_resume_upstream: bool,
    net_prefix: Directions,
    net_replace: Directions,
    net_close_on: Option<String>,
    net_close_upstream_on: Option<String>,
    net_calls: bool,
}

/// A string for each direction of a network connection.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct Directions {
    downstream: Option<String>,
    upstream: Option<String>,
}

impl Directions {
    fn get(&self, kind: u32) -> Option<&str> {
        if kind == DOWNSTREAM {
            self.downstream.as_deref()
        } else {
            self.upstream.as_deref()
        }
    }
}

/// A body replaced by `size` bytes at the end of the `on` body callback.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct ReplaceBody {
    on: String,
    size: usize,
}

/// A `proxy_set_property` call made from `on` (`configure` or `request_headers`).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct SetProperty {
    on: String,
    path: String,
    value: String,
}

/// A foreign function call: its name and arguments (text, or hex in `hex`), made from `on`
/// (`configure` or `request_headers`).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct Foreign {
    on: String,
    name: String,
    args: String,
    hex: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct Grpc {
    cluster: String,
    timeout_ms: u32,
    /// `Check` when absent.
    method: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct Reply {
    on: String,
    status: u32,
    body: String,
    headers: BTreeMap<String, String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct Callout {
    cluster: String,
    authority: String,
}

struct Root {
    config: Config,
    /// What the properties and foreign functions read at configure time gave, reported with
    /// every request (a line of its own would be written once per VM, and Envoy has a VM on its
    /// main thread as well as one per worker).
    configured: String,
    /// Streams paused in `request_headers`, for the tick to resume.
    parked: Vec<u32>,
    /// Connections paused in a network callback, for the tick to resume (what to resume is in
    /// their [`StreamState`]).
    net_parked: Vec<u32>,
}

#[derive(Default)]
struct StreamState {
    root: u32,
    /// Whether this stream is a dump request (`None`: not known yet). A network connection is
    /// never one.
    dump: Option<bool>,
    /// Whether a downstream (upstream) data callback of size > 0 came already (for `net_prefix`).
    downstream_seen: bool,
    upstream_seen: bool,
    /// Whether the mid-buffer `proxy_set_buffer_bytes` of `net_calls` was tried already.
    mid_tried: bool,
    /// Whether the connection is paused on its downstream side (`new_connection` or
    /// `downstream_data`) or on its upstream side (`upstream_data`) waiting for the tick.
    paused_downstream: bool,
    paused_upstream: bool,
}

#[derive(Default)]
struct Probe {
    roots: HashMap<u32, Root>,
    streams: HashMap<u32, StreamState>,
    /// Callout token → the stream that made it.
    callouts: HashMap<u32, u32>,
    /// Contexts of dump requests, whose lines a dump leaves out.
    dumps: HashSet<u32>,
}

thread_local! {
    static PROBE: RefCell<Probe> = RefCell::new(Probe::default());
}

fn log(message: &str) {
    // SAFETY: a valid pointer and length for the duration of the call.
    unsafe { proxy_log(2, message.as_ptr(), message.len()) };
}

fn header(kind: u32, name: &[u8]) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    let status = unsafe {
        proxy_get_header_map_value(kind, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    (status == 0).then(|| owned(data, size))
}

fn add_header(kind: u32, name: &str, value: &str) {
    // SAFETY: valid pointers for the duration of the call.
    unsafe {
        proxy_add_header_map_value(kind, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    };
}

/// The spec's header-map pairs: a count, the sizes, then each name and value NUL-terminated.
fn pairs(kind: u32) -> Vec<(String, String)> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    if unsafe { proxy_get_header_map_pairs(kind, &mut data, &mut size) } != 0 {
        return Vec::new();
    }
    decode_pairs(&owned(data, size))
}

fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> usize {
        bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0);
    let mut sizes = Vec::new();
    for index in 0..count {
        sizes.push((word(4 + index * 8), word(8 + index * 8)));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::new();
    for (name, value) in sizes {
        let text = |from: usize, len: usize| {
            String::from_utf8_lossy(bytes.get(from..from + len).unwrap_or_default()).into_owned()
        };
        let key = text(at, name);
        at += name + 1;
        out.push((key, text(at, value)));
        at += value + 1;
    }
    out
}

fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (name, value) in pairs {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(value.as_bytes());
        out.push(0);
    }
    out
}

/// A header map as `n=<count> name=value ...`, in the host's order. Values that differ by nature
/// are elided, and Envoy's own `x-envoy-*` headers (which sluice does not add) are left out of
/// both the list and the count.
fn describe(kind: u32) -> String {
    let pairs: Vec<(String, String)> = pairs(kind)
        .into_iter()
        .filter(|(name, _)| !name.starts_with("x-envoy-"))
        .collect();
    let mut out = format!("n={}", pairs.len());
    for (name, value) in &pairs {
        let volatile = matches!(name.as_str(), "x-request-id" | "date");
        if volatile {
            out.push_str(&format!(" {name}=*"));
        } else {
            out.push_str(&format!(" {name}={value}"));
        }
    }
    out
}

fn shared_trace() -> (Vec<u8>, u32) {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0, 0);
    // SAFETY: valid pointers for the duration of the call.
    let status = unsafe {
        proxy_get_shared_data(
            TRACE_KEY.as_ptr(),
            TRACE_KEY.len(),
            &mut data,
            &mut size,
            &mut cas,
        )
    };
    if status == 0 {
        (owned(data, size), cas)
    } else {
        (Vec::new(), 0)
    }
}

fn set_trace(value: &[u8], cas: u32) -> bool {
    // SAFETY: valid pointers for the duration of the call.
    let status = unsafe {
        proxy_set_shared_data(
            TRACE_KEY.as_ptr(),
            TRACE_KEY.len(),
            value.as_ptr(),
            value.len(),
            cas,
        )
    };
    status == 0
}

fn append_trace(lines: &[String]) {
    for _ in 0..16 {
        let (mut trace, cas) = shared_trace();
        for line in lines {
            trace.extend(line.as_bytes());
            trace.push(b'\n');
        }
        if set_trace(&trace, cas) {
            return;
        }
    }
    log("probe: could not append to the trace");
}

impl Probe {
    fn config(&self, context: u32) -> Config {
        let root = self.streams.get(&context).map_or(context, |s| s.root);
        self.roots
            .get(&root)
            .map(|r| r.config.clone())
            .unwrap_or_default()
    }

    /// Records a line for a stream. Lines carry their context id until a dump strips them, so
    /// that the lines of dump requests can be left out even when they were written before the
    /// probe could tell (`context_create` comes before the request headers).
    fn record(&mut self, context: u32, line: String) {
        let name = self.config(context).name.unwrap_or_else(|| "probe".into());
        if let Some(stream) = self.streams.get_mut(&context) {
            if stream.dump.is_none() {
                // Request headers are readable in every stream callback once they arrived.
                stream.dump = header(REQUEST_HEADERS, b":method")
                    .map(|_| header(REQUEST_HEADERS, DUMP_HEADER).is_some());
                if stream.dump == Some(true) {
                    self.dumps.insert(context);
                }
            }
            if stream.dump == Some(true) {
                return;
            }
        }
        append_trace(&[format!("{context} {name} {line}")]);
    }

    fn is_dump(&self, context: u32) -> bool {
        self.streams.get(&context).and_then(|s| s.dump) == Some(true)
    }
}

fn with<R>(f: impl FnOnce(&mut Probe) -> R) -> R {
    PROBE.with(|probe| f(&mut probe.borrow_mut()))
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context: u32, parent: u32) {
    with(|probe| {
        if parent == 0 {
            probe.roots.insert(
                context,
                Root {
                    config: Config::default(),
                    configured: String::new(),
                    parked: Vec::new(),
                    net_parked: Vec::new(),
                },
            );
        } else {
            probe.streams.insert(
                context,
                StreamState {
                    root: parent,
                    ..StreamState::default()
                },
            );
            probe.record(context, "context_create".into());
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> bool {
    let (mut data, mut length) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    let status =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut length) };
    let bytes = if status == 0 {
        owned(data, length)
    } else {
        Vec::new()
    };
    let config: Config = if bytes.is_empty() {
        Config::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log(&format!("probe: bad configuration: {error}"));
                return false;
            }
        }
    };
    if let Some(period) = config.tick_resume_ms {
        // SAFETY: no pointers.
        unsafe { proxy_set_tick_period_milliseconds(period) };
    }
    let mut configured = set_properties(&config.set, "configure");
    configured.push_str(&properties(&config.properties));
    for foreign in config.foreign.iter().filter(|f| f.on == "configure") {
        configured.push_str(&call_foreign(foreign));
    }
    with(|probe| {
        if let Some(root) = probe.roots.get_mut(&root) {
            root.config = config;
            root.configured = configured;
        }
    });
    true
}

/// Bytes as text, with anything but printable ASCII as `\xNN`.
fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A property path on the wire: segments split at `|` if there is one (for segments holding a
/// dot, such as a filter state key), else at dots, and joined by NUL.
fn wire_path(path: &str) -> String {
    let separator = if path.contains('|') { '|' } else { '.' };
    path.replace(separator, "\0")
}

/// ` set PATH=<status>` for each property set from `on`.
fn set_properties(sets: &[SetProperty], on: &str) -> String {
    let mut out = String::new();
    for set in sets.iter().filter(|s| s.on == on) {
        let wire = wire_path(&set.path);
        // SAFETY: valid pointers for the duration of the call.
        let status = unsafe {
            proxy_set_property(
                wire.as_ptr(),
                wire.len(),
                set.value.as_ptr(),
                set.value.len(),
            )
        };
        out.push_str(&format!(" set {}={status}", set.path));
    }
    out
}

/// ` PATH=<status>:<value>` for each property path (see [`wire_path`]).
fn properties(paths: &[String]) -> String {
    let mut out = String::new();
    for path in paths {
        let wire = wire_path(path);
        let (mut data, mut size) = (std::ptr::null_mut(), 0);
        // SAFETY: valid pointers for the duration of the call.
        let status = unsafe { proxy_get_property(wire.as_ptr(), wire.len(), &mut data, &mut size) };
        let value = if status == 0 {
            show(&owned(data, size))
        } else {
            String::new()
        };
        out.push_str(&format!(" {path}={status}:{value}"));
    }
    out
}

fn foreign_function(name: &str, arguments: &[u8]) -> (u32, Vec<u8>) {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    };
    (status, owned(data, size))
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// ` foreign NAME=<status>:<result>`.
fn call_foreign(foreign: &Foreign) -> String {
    let arguments = match &foreign.hex {
        Some(hex) => unhex(hex),
        None => foreign.args.as_bytes().to_vec(),
    };
    let (status, result) = foreign_function(&foreign.name, &arguments);
    format!(" foreign {}={status}:{}", foreign.name, show(&result))
}

/// ` expr=<create status>/<evaluate status>:<result>/<delete status>` for a CEL expression,
/// through Envoy's `expr_create`, `expr_evaluate` and `expr_delete`.
fn expression(text: &str) -> String {
    let (created, token) = foreign_function("expr_create", text.as_bytes());
    let (evaluated, result) = foreign_function("expr_evaluate", &token);
    let (deleted, _) = foreign_function("expr_delete", &token);
    format!(" expr={created}/{evaluated}:{}/{deleted}", show(&result))
}

/// What a stream callback returns after recording `line`: the configured reply, pause or trap.
fn stream_callback(context: u32, callback: &str, line: String) -> u32 {
    let (config, dump) = with(|probe| {
        probe.record(context, format!("{callback} {line}"));
        (probe.config(context), probe.is_dump(context))
    });
    if dump {
        return CONTINUE;
    }
    if config.trap.as_deref() == Some(callback) {
        core::arch::wasm32::unreachable();
    }
    if let Some(reply) = config.reply.as_ref().filter(|r| r.on == callback) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let headers = encode_pairs(&headers);
        let details = "probe_reply";
        // SAFETY: valid pointers for the duration of the call.
        let status = unsafe {
            proxy_send_local_response(
                reply.status,
                details.as_ptr(),
                details.len(),
                reply.body.as_ptr(),
                reply.body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
        with(|probe| probe.record(context, format!("reply status={status}")));
        return PAUSE;
    }
    if config.pause.iter().any(|p| p == callback) {
        return PAUSE;
    }
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context: u32, _count: usize, end: bool) -> u32 {
    if header(REQUEST_HEADERS, DUMP_HEADER).is_some() {
        let trace = with(|probe| {
            if let Some(stream) = probe.streams.get_mut(&context) {
                stream.dump = Some(true);
            }
            probe.dumps.insert(context);
            let (trace, cas) = shared_trace();
            set_trace(b"", cas);
            let trace = String::from_utf8_lossy(&trace);
            let mut lines: Vec<&str> = trace.lines().collect();
            // Contexts created after the last event are the dump request's, made before any
            // probe could know it is one.
            while lines.last().is_some_and(|l| l.ends_with(" context_create")) {
                lines.pop();
            }
            let mut out = String::new();
            for line in lines {
                let (id, rest) = line.split_once(' ').unwrap_or(("", line));
                if !id.parse().is_ok_and(|id| probe.dumps.contains(&id)) {
                    out.push_str(rest);
                    out.push('\n');
                }
            }
            out
        });
        let details = "probe_dump";
        // SAFETY: valid pointers for the duration of the call.
        unsafe {
            proxy_send_local_response(
                200,
                details.as_ptr(),
                details.len(),
                trace.as_ptr(),
                trace.len(),
                std::ptr::null(),
                0,
                -1,
            )
        };
        return PAUSE;
    }
    let (config, configured) = with(|probe| {
        let root = probe.streams.get(&context).map_or(0, |s| s.root);
        let configured = probe.roots.get(&root).map(|r| r.configured.clone());
        (probe.config(context), configured.unwrap_or_default())
    });
    let mut line = format!("eos={end} {}", describe(REQUEST_HEADERS));
    if !configured.is_empty() {
        line.push_str(&format!(" configure:{configured}"));
    }
    line.push_str(&set_properties(&config.set, "request_headers"));
    for foreign in config.foreign.iter().filter(|f| f.on == "request_headers") {
        line.push_str(&call_foreign(foreign));
    }
    line.push_str(&properties(&config.properties));
    for text in &config.expressions {
        line.push_str(&expression(text));
    }
    if let Some(name) = &config.metric {
        line.push_str(&metric(name));
    }
    if let Some(grpc) = &config.grpc {
        let (service, message) = ("probe.Probe", "hi");
        let method = grpc.method.as_deref().unwrap_or("Check");
        let mut token = 0;
        // SAFETY: valid pointers for the duration of the call.
        let status = unsafe {
            proxy_grpc_call(
                grpc.cluster.as_ptr(),
                grpc.cluster.len(),
                service.as_ptr(),
                service.len(),
                method.as_ptr(),
                method.len(),
                std::ptr::null(),
                0,
                message.as_ptr(),
                message.len(),
                grpc.timeout_ms,
                &mut token,
            )
        };
        line.push_str(&format!(" grpc_call={status}"));
        if status == 0 {
            with(|probe| probe.callouts.insert(token, context));
            with(|probe| probe.record(context, format!("request_headers {line}")));
            return PAUSE;
        }
    }
    if let Some(callout) = &config.callout {
        let authority = callout.authority.as_str();
        let headers = encode_pairs(&[
            (":method", "GET"),
            (":path", "/probe"),
            (":authority", authority),
        ]);
        let mut token = 0;
        // SAFETY: valid pointers for the duration of the call.
        let status = unsafe {
            proxy_http_call(
                callout.cluster.as_ptr(),
                callout.cluster.len(),
                headers.as_ptr(),
                headers.len(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                5000,
                &mut token,
            )
        };
        line.push_str(&format!(" callout={status}"));
        if status == 0 {
            with(|probe| probe.callouts.insert(token, context));
            with(|probe| probe.record(context, format!("request_headers {line}")));
            return PAUSE;
        }
    }
    let action = stream_callback(context, "request_headers", line);
    if action == PAUSE && config.tick_resume_ms.is_some() && config.reply.is_none() {
        with(|probe| {
            let root = probe.streams.get(&context).map_or(0, |s| s.root);
            if let Some(root) = probe.roots.get_mut(&root) {
                root.parked.push(context);
            }
        });
    }
    action
}

/// Defines `name` as a counter and as a gauge, increments the counter and reads it back.
fn metric(name: &str) -> String {
    let (mut counter, mut gauge, mut value) = (0, 0, 0u64);
    // SAFETY: valid pointers for the duration of each call.
    let (defined, redefined, incremented, read) = unsafe {
        (
            proxy_define_metric(0, name.as_ptr(), name.len(), &mut counter),
            proxy_define_metric(1, name.as_ptr(), name.len(), &mut gauge),
            proxy_increment_metric(counter, 1),
            proxy_get_metric(counter, &mut value),
        )
    };
    format!(
        " metric: define={defined} redefine={redefined} same_id={} increment={incremented} get={read} value={value}",
        counter == gauge
    )
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context: u32, size: usize, end: bool) -> u32 {
    body_callback(context, "request_body", size, end)
}

/// A body callback: `pause` here means buffering until the end of the stream.
fn body_callback(context: u32, callback: &str, size: usize, end: bool) -> u32 {
    let action = stream_callback(context, callback, format!("size={size} eos={end}"));
    let replace = with(|probe| probe.config(context)).replace_body;
    let dump = with(|probe| probe.is_dump(context));
    if let Some(replace) = replace.filter(|r| end && !dump && r.on == callback) {
        let kind = if callback == "request_body" { 0 } else { 1 };
        let body = vec![b'x'; replace.size];
        // SAFETY: `body` lives across the call; the host copies it.
        let status = unsafe { proxy_set_buffer_bytes(kind, 0, size, body.as_ptr(), body.len()) };
        with(|probe| {
            probe.record(
                context,
                format!("{callback} replaced with {} bytes: {status}", replace.size),
            )
        });
    }
    let replied = with(|probe| probe.config(context))
        .reply
        .is_some_and(|r| r.on == callback);
    if end && !replied {
        CONTINUE
    } else {
        action
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context: u32, _count: usize) -> u32 {
    let line = describe(REQUEST_TRAILERS);
    stream_callback(context, "request_trailers", line)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context: u32, _count: usize, end: bool) -> u32 {
    let line = format!("eos={end} {}", describe(RESPONSE_HEADERS));
    let config = with(|probe| probe.config(context));
    if config.stamp && !with(|probe| probe.is_dump(context)) {
        let status = header(RESPONSE_HEADERS, b":status").unwrap_or_default();
        let name = format!("x-probe-{}", config.name.as_deref().unwrap_or("probe"));
        add_header(RESPONSE_HEADERS, &name, &String::from_utf8_lossy(&status));
    }
    stream_callback(context, "response_headers", line)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context: u32, size: usize, end: bool) -> u32 {
    body_callback(context, "response_body", size, end)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context: u32, _count: usize) -> u32 {
    let line = describe(RESPONSE_TRAILERS);
    stream_callback(context, "response_trailers", line)
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context: u32) {
    with(|probe| probe.record(context, "log".into()));
}

#[no_mangle]
pub extern "C" fn proxy_on_done(context: u32) -> bool {
    with(|probe| {
        let line = if probe.streams.contains_key(&context) {
            "done"
        } else {
            "root done"
        };
        probe.record(context, line.into());
    });
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context: u32) {
    with(|probe| {
        if probe.streams.contains_key(&context) {
            probe.record(context, "delete".into());
            probe.streams.remove(&context);
            for root in probe.roots.values_mut() {
                root.parked.retain(|&c| c != context);
                root.net_parked.retain(|&c| c != context);
            }
        } else {
            probe.record(context, "root delete".into());
            probe.roots.remove(&context);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    if let Some(name) = with(|probe| probe.config(root).tick_metric) {
        let mut id = 0;
        // SAFETY: valid pointers for the duration of each call.
        unsafe {
            proxy_define_metric(0, name.as_ptr(), name.len(), &mut id);
            proxy_increment_metric(id, 1);
        }
    }
    let parked = with(|probe| {
        probe
            .roots
            .get_mut(&root)
            .map(|r| std::mem::take(&mut r.parked))
            .unwrap_or_default()
    });
    for context in parked {
        resume(context, "tick".into());
    }
    let net_parked = with(|probe| {
        probe
            .roots
            .get_mut(&root)
            .map(|r| std::mem::take(&mut r.net_parked))
            .unwrap_or_default()
    });
    for context in net_parked {
        resume_connection(context);
    }
}

/// Resumes a connection paused on the probe, from the tick: `proxy_set_effective_context`, then
/// `proxy_continue_stream(2)` if it paused on its downstream side and `proxy_continue_stream(3)`
/// if it paused on its upstream side (only parked with `net_resume_upstream`). Records
/// `tick set_effective_context=<e>[ continue_downstream status=<c>][ continue_upstream status=<c>]`.
fn resume_connection(context: u32) {
    let (downstream, upstream) = with(|probe| {
        probe.streams.get_mut(&context).map_or((false, false), |s| {
            (
                std::mem::take(&mut s.paused_downstream),
                std::mem::take(&mut s.paused_upstream),
            )
        })
    });
    // SAFETY: no pointers.
    let effective = unsafe { proxy_set_effective_context(context) };
    let mut line = format!("tick set_effective_context={effective}");
    if downstream {
        // SAFETY: no pointers.
        let status = unsafe { proxy_continue_stream(DOWNSTREAM) };
        line.push_str(&format!(" continue_downstream status={status}"));
    }
    if upstream {
        // SAFETY: no pointers.
        let status = unsafe { proxy_continue_stream(UPSTREAM) };
        line.push_str(&format!(" continue_upstream status={status}"));
    }
    with(|probe| probe.record(context, line));
}

/// Resumes a request paused on the probe from a root callback, as the SDKs do
/// (`proxy_set_effective_context`, then `proxy_continue_stream`), and records `line` on it with
/// what both calls returned.
fn resume(context: u32, line: String) {
    // SAFETY: no pointers.
    let (effective, resumed) = unsafe {
        (
            proxy_set_effective_context(context),
            proxy_continue_stream(STREAM_REQUEST),
        )
    };
    with(|probe| {
        probe.record(
            context,
            format!("{line} set_effective_context={effective} continue={resumed}"),
        )
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _root: u32,
    token: u32,
    _headers: usize,
    body: usize,
    trailers: usize,
) {
    let Some(context) = with(|probe| probe.callouts.remove(&token)) else {
        return;
    };
    let answer = describe(CALL_RESPONSE_HEADERS);
    resume(
        context,
        format!("http_call_response body={body} trailers={trailers} headers: {answer}"),
    );
}

/// The status and message of the last gRPC call that ended, as `proxy_get_status` gives them.
fn status() -> String {
    let (mut code, mut data, mut size) = (0, std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    let result = unsafe { proxy_get_status(&mut code, &mut data, &mut size) };
    let message = String::from_utf8_lossy(&owned(data, size)).into_owned();
    format!("get_status={result} code={code} message={message:?}")
}

/// Ends a gRPC call of the probe: records `line` on the stream that made it and resumes it.
fn grpc_ended(token: u32, line: String) {
    if let Some(context) = with(|probe| probe.callouts.remove(&token)) {
        resume(context, line);
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(_root: u32, token: u32, size: usize) {
    grpc_ended(token, format!("grpc_receive size={size}"));
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(_root: u32, token: u32, code: u32) {
    grpc_ended(token, format!("grpc_close code={code} {}", status()));
}

// The network (L4) side: a connection's stream context gets `proxy_on_new_connection`, data
// callbacks for each direction and close callbacks, then `proxy_on_done`, `proxy_on_log` and
// `proxy_on_delete` as an HTTP stream does.

/// Marks a context as a network connection: not a dump request, so that recording its lines
/// does not look for request headers (which a connection does not have) on every line.
fn mark_connection(context: u32) {
    with(|probe| {
        if let Some(stream) = probe.streams.get_mut(&context) {
            stream.dump = Some(false);
        }
    });
}

/// What a network callback returns after recording `{callback}{line}`: trap or pause as
/// configured. A connection paused with `tick_resume_ms` set is parked for the tick: on its
/// downstream side from `new_connection` or `downstream_data`, on its upstream side from
/// `upstream_data` (only with `net_resume_upstream`).
fn net_callback(context: u32, callback: &str, line: String) -> u32 {
    let config = with(|probe| {
        probe.record(context, format!("{callback}{line}"));
        probe.config(context)
    });
    if config.trap.as_deref() == Some(callback) {
        core::arch::wasm32::unreachable();
    }
    if config.spin.as_deref() == Some(callback) {
        let mut turns = 0u64;
        loop {
            turns = core::hint::black_box(turns.wrapping_add(1));
        }
    }
    if config.grow.as_deref() == Some(callback) {
        let mut kept: Vec<Vec<u8>> = Vec::new();
        loop {
            kept.push(core::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
    let pausable = matches!(
        callback,
        "new_connection" | "downstream_data" | "upstream_data"
    );
    if !pausable || !config.net_pause.iter().any(|p| p == callback) {
        return CONTINUE;
    }
    let upstream = callback == "upstream_data";
    if config.tick_resume_ms.is_some() && (!upstream || config.net_resume_upstream) {
        with(|probe| {
            let Some(stream) = probe.streams.get_mut(&context) else {
                return;
            };
            if upstream {
                stream.paused_upstream = true;
            } else {
                stream.paused_downstream = true;
            }
            let root = stream.root;
            if let Some(root) = probe.roots.get_mut(&root) {
                if !root.net_parked.contains(&context) {
                    root.net_parked.push(context);
                }
            }
        });
    }
    PAUSE
}

/// `proxy_get_buffer_bytes(kind, start, max)`: its status and the bytes.
fn buffer(kind: u32, start: usize, max: usize) -> (u32, Vec<u8>) {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    let status = unsafe { proxy_get_buffer_bytes(kind, start, max, &mut data, &mut size) };
    (status, owned(data, size))
}

/// `proxy_get_buffer_status(kind)`: its status, the length and the flags.
fn buffer_status(kind: u32) -> (u32, usize, u32) {
    let (mut length, mut flags) = (0, 0);
    // SAFETY: valid pointers for the duration of the call.
    let status = unsafe { proxy_get_buffer_status(kind, &mut length, &mut flags) };
    (status, length, flags)
}

/// `proxy_set_buffer_bytes(kind, start, length, value)`'s status.
fn set_buffer(kind: u32, start: usize, length: usize, value: &[u8]) -> u32 {
    // SAFETY: `value` lives across the call; the host copies it.
    unsafe { proxy_set_buffer_bytes(kind, start, length, value.as_ptr(), value.len()) }
}

/// Bytes escaped so that a trace line stays one line (Rust's `escape_ascii`: `\n`, `\"`,
/// `\xNN`, ...).
fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// What the `net_calls` option records in `new_connection`: host calls that mean nothing on a
/// connection (header maps, a local reply) and buffer calls outside a data callback.
fn net_calls() -> String {
    let path = b":path";
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    let value = unsafe {
        proxy_get_header_map_value(
            REQUEST_HEADERS,
            path.as_ptr(),
            path.len(),
            &mut data,
            &mut size,
        )
    };
    drop(owned(data, size));
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers for the duration of the call.
    let pairs = unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) };
    drop(owned(data, size));
    let (details, body) = ("probe_net", "denied by probe");
    // SAFETY: valid pointers for the duration of the call.
    let reply = unsafe {
        proxy_send_local_response(
            403,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            std::ptr::null(),
            0,
            -1,
        )
    };
    let set = set_buffer(DOWNSTREAM, 0, 0, b"x");
    let (get, bytes) = buffer(DOWNSTREAM, 0, 10);
    format!(
        " header_value={value} header_pairs={pairs}:{size} local_response={reply} set_outside={set} get_outside={get}:{}",
        bytes.len()
    )
}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(context: u32) -> u32 {
    mark_connection(context);
    let (config, configured) = with(|probe| {
        let root = probe.streams.get(&context).map_or(0, |s| s.root);
        let configured = probe.roots.get(&root).map(|r| r.configured.clone());
        (probe.config(context), configured.unwrap_or_default())
    });
    let mut line = String::new();
    if !configured.is_empty() {
        line.push_str(&format!(" configure:{configured}"));
    }
    line.push_str(&set_properties(&config.set, "new_connection"));
    for foreign in config.foreign.iter().filter(|f| f.on == "new_connection") {
        line.push_str(&call_foreign(foreign));
    }
    line.push_str(&properties(&config.properties));
    if config.net_calls {
        line.push_str(&net_calls());
    }
    net_callback(context, "new_connection", line)
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_data(context: u32, size: usize, end: bool) -> u32 {
    data_callback(context, DOWNSTREAM, size, end)
}

#[no_mangle]
pub extern "C" fn proxy_on_upstream_data(context: u32, size: usize, end: bool) -> u32 {
    data_callback(context, UPSTREAM, size, end)
}

/// A data callback of either direction (`kind`, the buffer type and stream type: 2 downstream,
/// 3 upstream). Records
/// `<dir>_data size=N end=B get=<status> data="<bytes>" status=<s> len=<n> flags=<f>`, the
/// bytes read with `proxy_get_buffer_bytes(kind, 0, size)` and what `proxy_get_buffer_status`
/// gives, then what the configured actions returned, in this order: ` set_mid=<s>` (`net_calls`),
/// ` replace=<s>` (`net_replace`), ` prefix=<s>` (`net_prefix`), ` now="<bytes>"` (the whole buffer
/// read back after any of those), ` close_downstream=<s>` / ` close_upstream=<s>`
/// (`net_close_on` / `net_close_upstream_on`).
fn data_callback(context: u32, kind: u32, size: usize, end: bool) -> u32 {
    mark_connection(context);
    let downstream = kind == DOWNSTREAM;
    let callback = if downstream {
        "downstream_data"
    } else {
        "upstream_data"
    };
    let config = with(|probe| probe.config(context));
    let (got, data) = buffer(kind, 0, size);
    let (status, length, flags) = buffer_status(kind);
    let mut line = format!(
        " size={size} end={end} get={got} data=\"{}\" status={status} len={length} flags={flags}",
        escaped(&data)
    );
    // Whether this is the first callback of this direction with data, and whether to try a
    // mid-buffer write (`net_calls`, the first downstream callback with 2 bytes or more).
    let (first, mid) = with(|probe| {
        let Some(stream) = probe.streams.get_mut(&context) else {
            return (false, false);
        };
        let seen = if downstream {
            &mut stream.downstream_seen
        } else {
            &mut stream.upstream_seen
        };
        let first = size > 0 && !std::mem::replace(seen, true);
        let mid = config.net_calls && downstream && size >= 2 && !stream.mid_tried;
        if mid {
            stream.mid_tried = true;
        }
        (first, mid)
    });
    let mut changed = false;
    if mid {
        line.push_str(&format!(" set_mid={}", set_buffer(kind, 1, 0, b"x")));
        changed = true;
    }
    if let Some(replacement) = config.net_replace.get(kind).filter(|_| size > 0) {
        let status = set_buffer(kind, 0, size, replacement.as_bytes());
        line.push_str(&format!(" replace={status}"));
        changed = true;
    }
    if let Some(prefix) = config.net_prefix.get(kind).filter(|_| first) {
        let status = set_buffer(kind, 0, 0, prefix.as_bytes());
        line.push_str(&format!(" prefix={status}"));
        changed = true;
    }
    if changed {
        let (_, length, _) = buffer_status(kind);
        let (_, now) = buffer(kind, 0, length);
        line.push_str(&format!(" now=\"{}\"", escaped(&now)));
    }
    let close_on = if downstream {
        config.net_close_on.as_deref()
    } else {
        config.net_close_upstream_on.as_deref()
    };
    let needle = close_on.unwrap_or_default().as_bytes();
    if !needle.is_empty() && data.windows(needle.len()).any(|w| w == needle) {
        // SAFETY: no pointers.
        let status = unsafe { proxy_close_stream(kind) };
        let name = if downstream {
            "close_downstream"
        } else {
            "close_upstream"
        };
        line.push_str(&format!(" {name}={status}"));
    }
    net_callback(context, callback, line)
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_connection_close(context: u32, peer: u32) {
    mark_connection(context);
    net_callback(context, "downstream_close", format!(" peer={peer}"));
}

#[no_mangle]
pub extern "C" fn proxy_on_upstream_connection_close(context: u32, peer: u32) {
    mark_connection(context);
    net_callback(context, "upstream_close", format!(" peer={peer}"));
}
