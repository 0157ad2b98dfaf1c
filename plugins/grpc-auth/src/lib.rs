//! grpc-auth: external authorization through a unary gRPC callout.
//!
//! ```json
//! {"cluster": "grpc-authz", "service": "authz.v1.Authorizer", "method": "Check", "timeoutMs": 500}
//! ```
//!
//! On request headers the plugin sends the request path as the message of a unary gRPC call to
//! `service/method` on `cluster` (with the request's `authorization` header as `authorization`
//! metadata) and pauses the request until the answer:
//!
//! * the call failed, timed out or ended with a non-OK gRPC status → 503
//!   `authorization service unavailable`
//! * the answer message is `allow` → request header `x-grpc-auth: allowed` and the request resumes
//! * any other answer → 403 `forbidden: <answer>`.
//!
//! The message is raw bytes rather than protobuf so that the example stays dependency-free; the
//! host frames it as gRPC either way.

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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    cluster: String,
    #[serde(default = "default_service")]
    service: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_service() -> String {
    "authz.v1.Authorizer".to_string()
}

fn default_method() -> String {
    "Check".to_string()
}

fn default_timeout_ms() -> u64 {
    500
}

struct Root {
    config: Option<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) if !config.cluster.trim().is_empty() && config.timeout_ms > 0 => {
                self.config = Some(config);
                true
            }
            Ok(_) => {
                log::error!("grpc-auth: invalid pluginConfig: `cluster` must not be empty and `timeoutMs` must be > 0");
                false
            }
            Err(error) => {
                log::error!("grpc-auth: invalid pluginConfig: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Check { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Check {
    config: Config,
}

impl Check {
    fn deny(&self, status: u32, body: &str) {
        self.send_http_response(
            status,
            vec![("content-type", "text/plain")],
            Some(body.as_bytes()),
        );
    }
}

impl Context for Check {
    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if status_code != 0 {
            log::warn!(
                "grpc-auth: {}/{} failed with gRPC status {status_code}",
                self.config.service,
                self.config.method
            );
            return self.deny(503, UNAVAILABLE);
        }
        let answer = self
            .get_grpc_call_response_body(0, response_size)
            .unwrap_or_default();
        if answer == b"allow" {
            self.set_http_request_header("x-grpc-auth", Some("allowed"));
            self.resume_http_request();
        } else {
            let answer = String::from_utf8_lossy(&answer);
            log::info!("grpc-auth: denied: {answer}");
            self.deny(403, &format!("forbidden: {answer}"));
        }
    }
}

impl HttpContext for Check {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let authorization = self.get_http_request_header_bytes("authorization");
        let metadata: Vec<(&str, &[u8])> = authorization
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let call = self.dispatch_grpc_call(
            &self.config.cluster,
            &self.config.service,
            &self.config.method,
            metadata,
            Some(path.as_bytes()),
            timeout,
        );
        if let Err(status) = call {
            log::warn!(
                "grpc-auth: cannot call cluster {}: {status:?}",
                self.config.cluster
            );
            self.deny(503, UNAVAILABLE);
        }
        Action::Pause
    }
}
