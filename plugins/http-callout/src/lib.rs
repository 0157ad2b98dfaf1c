//! http-callout: external authorization through an HTTP callout.
//!
//! ```json
//! {"cluster": "authz", "path": "/check", "timeoutMs": 500, "authority": "authz.local"}
//! ```
//!
//! On request headers the plugin calls `GET <path>` on `cluster` (forwarding the request's
//! `authorization` header, if any) and pauses the request until the answer:
//!
//! * the call failed or timed out (no response headers) → 503 `authorization service unavailable`
//! * `:status` 200 → the answer's `x-user` header (if present) is copied to the request's
//!   `x-user` header and the request resumes
//! * any other status → 403 with the answer's body.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: None })
    });
}}

const UNAVAILABLE: &str = "authorization service unavailable";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    cluster: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    /// `:authority` of the callout; defaults to the cluster name.
    #[serde(default)]
    authority: Option<String>,
}

fn default_path() -> String {
    "/check".to_string()
}

fn default_timeout_ms() -> u64 {
    500
}

impl Config {
    fn validate(self) -> Result<Self, String> {
        if self.cluster.trim().is_empty() {
            return Err("`cluster` must not be empty".into());
        }
        if !self.path.starts_with('/') {
            return Err(format!("`path` must start with '/', got {:?}", self.path));
        }
        if self.timeout_ms == 0 {
            return Err("`timeoutMs` must be greater than 0".into());
        }
        Ok(self)
    }

    fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        if raw.iter().all(u8::is_ascii_whitespace) {
            log::error!("http-callout: missing pluginConfig: `cluster` is required");
            return false;
        }
        let parsed = serde_json::from_slice::<Config>(&raw)
            .map_err(|e| e.to_string())
            .and_then(Config::validate);
        match parsed {
            Ok(config) => {
                log::info!(
                    "http-callout: checking requests with GET {} on cluster {} (timeout {}ms)",
                    config.path,
                    config.cluster,
                    config.timeout_ms
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(err) => {
                log::error!("http-callout: invalid pluginConfig: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = Rc::clone(self.config.as_ref()?);
        Some(Box::new(Filter {
            config,
            token: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
    /// The pending callout.
    token: Option<u32>,
}

impl Filter {
    fn unavailable(&self, why: &str) {
        log::warn!(
            "http-callout: call to cluster {} failed: {why}",
            self.config.cluster
        );
        self.send_http_response(
            503,
            vec![("content-type", "text/plain")],
            Some(UNAVAILABLE.as_bytes()),
        );
    }
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if self.token != Some(token_id) {
            log::warn!("http-callout: ignoring answer to unknown call {token_id}");
            return;
        }
        self.token = None;

        let status = if num_headers == 0 {
            None
        } else {
            self.get_http_call_response_header(":status")
        };
        let Some(status) = status else {
            self.unavailable("no response (connection failure or timeout)");
            return;
        };

        if status.trim() == "200" {
            match self.get_http_call_response_header("x-user") {
                Some(user) => {
                    log::info!("http-callout: allowed, x-user={user}");
                    self.set_http_request_header("x-user", Some(&user));
                }
                None => log::info!("http-callout: allowed"),
            }
            self.resume_http_request();
        } else {
            log::info!("http-callout: denied (authorization service answered {status})");
            let body = if body_size > 0 {
                self.get_http_call_response_body(0, body_size)
            } else {
                None
            };
            let mut headers = Vec::new();
            let content_type = self.get_http_call_response_header("content-type");
            if let Some(ct) = content_type.as_deref() {
                headers.push(("content-type", ct));
            }
            self.send_http_response(403, headers, body.as_deref());
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let authorization = self
            .get_http_request_header_bytes("authorization")
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", self.config.authority()),
        ];
        if let Some(value) = authorization.as_deref() {
            headers.push(("authorization", value));
        }
        match self.dispatch_http_call(
            &self.config.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(self.config.timeout_ms),
        ) {
            Ok(token) => {
                self.token = Some(token);
            }
            Err(status) => {
                self.unavailable(&format!("dispatch failed: {status:?}"));
            }
        }
        Action::Pause
    }
}
