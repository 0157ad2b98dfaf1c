//! redis-limit: a fixed-window request limit kept in Redis, so that every replica of a gateway
//! counts against one limit. It uses Higress's Redis calls (`proxy_redis_init`,
//! `proxy_redis_call`, `proxy_on_redis_call_response`), which the Rust SDK does not wrap: they
//! are imported and exported here directly.
//!
//! ```json
//! {"cluster": "outbound|6379||redis.local", "requestsPerWindow": 3, "windowSeconds": 60}
//! ```
//!
//! Each request pauses while one `EVAL` increments the window's counter
//! (`redis-limit:<prefix>:<window number>`, expiring with the window) and returns it. Up to
//! `requestsPerWindow` requests go on, with `x-redis-limit-count: N` added; the rest get a 429.
//! When Redis cannot be reached the request gets a 503, or goes on with `failOpen`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

/// Increments the window's counter, starts its expiry with the first request, returns the count.
const SCRIPT: &str = "local n = redis.call('INCR', KEYS[1]) \
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n";

/// Higress's buffer type of a Redis reply.
const REDIS_CALL_RESPONSE: u32 = 9;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    cluster: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    database: u32,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
    requests_per_window: u64,
    #[serde(default = "default_window_seconds")]
    window_seconds: u64,
    /// Names the counter, so that several limits can share one Redis.
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default)]
    fail_open: bool,
}

fn default_timeout_ms() -> u32 {
    1000
}

fn default_window_seconds() -> u64 {
    60
}

fn default_prefix() -> String {
    "default".into()
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
    /// The HTTP context waiting for each Redis call, by token.
    static WAITING: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

mod higress {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_redis_init(
            service: *const u8,
            service_size: usize,
            username: *const u8,
            username_size: usize,
            password: *const u8,
            password_size: usize,
            timeout_ms: u32,
        ) -> u32;
        pub fn proxy_redis_call(
            service: *const u8,
            service_size: usize,
            query: *const u8,
            query_size: usize,
            token: *mut u32,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
    }
}

fn redis_init(config: &Config) -> Result<(), u32> {
    let service = match config.database {
        0 => config.cluster.clone(),
        db => format!("{}?db={db}", config.cluster),
    };
    // SAFETY: each pointer and length describes a live string for the duration of the call.
    let status = unsafe {
        higress::proxy_redis_init(
            service.as_ptr(),
            service.len(),
            config.username.as_ptr(),
            config.username.len(),
            config.password.as_ptr(),
            config.password.len(),
            config.timeout_ms,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(status)
    }
}

fn redis_call(cluster: &str, query: &[u8]) -> Result<u32, u32> {
    let mut token = 0;
    // SAFETY: the pointers describe live buffers; `token` is a valid place for the host to write.
    let status = unsafe {
        higress::proxy_redis_call(
            cluster.as_ptr(),
            cluster.len(),
            query.as_ptr(),
            query.len(),
            &mut token,
        )
    };
    if status == 0 {
        Ok(token)
    } else {
        Err(status)
    }
}

fn redis_reply(size: usize) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len = 0;
    // SAFETY: the host writes a pointer it allocated with this module's allocator (the SDK's
    // `proxy_on_memory_allocate`, a Vec's) and its length; ownership passes to us.
    unsafe {
        if higress::proxy_get_buffer_bytes(REDIS_CALL_RESPONSE, 0, size, &mut data, &mut len) != 0
            || data.is_null()
        {
            return Vec::new();
        }
        Vec::from_raw_parts(data, len, len)
    }
}

/// A RESP command: an array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for arg in args {
        out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    out.into_bytes()
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let config: Config = match serde_json::from_slice(&raw) {
            Ok(config) => config,
            Err(error) => {
                log::error!("redis-limit: invalid configuration: {error}");
                return false;
            }
        };
        if config.window_seconds == 0 {
            log::error!("redis-limit: invalid configuration: `windowSeconds` must be at least 1");
            return false;
        }
        if let Err(status) = redis_init(&config) {
            log::error!(
                "redis-limit: proxy_redis_init({}) failed with status {status}",
                config.cluster
            );
            return false;
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = CONFIG.with(|c| c.borrow().clone())?;
        Some(Box::new(Limit { context_id, config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Limit {
    context_id: u32,
    config: Config,
}

impl Context for Limit {}

impl HttpContext for Limit {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let window = now / self.config.window_seconds;
        let key = format!("redis-limit:{}:{window}", self.config.prefix);
        let ttl = self.config.window_seconds.to_string();
        let query = command(&["EVAL", SCRIPT, "1", &key, &ttl]);
        match redis_call(&self.config.cluster, &query) {
            Ok(token) => {
                WAITING.with(|w| w.borrow_mut().insert(token, self.context_id));
                Action::Pause
            }
            Err(status) => {
                log::warn!("redis-limit: proxy_redis_call failed with status {status}");
                self.unavailable();
                Action::Pause
            }
        }
    }
}

impl Limit {
    fn unavailable(&self) {
        if self.config.fail_open {
            self.resume_http_request();
        } else {
            self.send_http_response(503, vec![], Some(b"rate limit store unavailable\n"));
        }
    }
}

/// Higress's callback with a Redis call's reply: status 0 with the reply in buffer 9.
#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(_root: u32, token: u32, status: u32, size: usize) {
    let Some(context_id) = WAITING.with(|w| w.borrow_mut().remove(&token)) else {
        return;
    };
    let Some(config) = CONFIG.with(|c| c.borrow().clone()) else {
        return;
    };
    if hostcalls::set_effective_context(context_id).is_err() {
        return;
    }
    let limit = Limit { context_id, config };
    if status != 0 {
        log::warn!("redis-limit: the Redis call failed (status {status})");
        limit.unavailable();
        return;
    }
    let reply = redis_reply(size);
    let count = std::str::from_utf8(&reply)
        .ok()
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|r| r.trim_end().parse::<u64>().ok());
    match count {
        Some(n) if n <= limit.config.requests_per_window => {
            limit.set_http_request_header("x-redis-limit-count", Some(&n.to_string()));
            limit.resume_http_request();
        }
        Some(n) => {
            log::info!("redis-limit: request {n} of the window is over the limit");
            limit.send_http_response(
                429,
                vec![(
                    "x-ratelimit-limit",
                    &limit.config.requests_per_window.to_string(),
                )],
                Some(b"rate limit exceeded\n"),
            );
        }
        None => {
            log::warn!(
                "redis-limit: unexpected Redis reply {:?}",
                String::from_utf8_lossy(&reply)
            );
            limit.unavailable();
        }
    }
}
