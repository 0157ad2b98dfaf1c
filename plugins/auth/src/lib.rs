//! auth: bearer-token authentication with local replies.
//!
//! ```json
//! {"header": "authorization", "tokens": {"secret-a": "alice"}, "realm": "sluice"}
//! ```
//!
//! * no (or empty) credential header → 401 `missing credentials`, with
//!   `www-authenticate: Bearer realm="<realm>"`
//! * a token (the header value, minus an optional `Bearer ` prefix) not in `tokens` → 403 `forbidden`
//! * a known token → the request continues with `x-user: <user>` set (overwriting any value the
//!   client sent) and the credential header removed.

use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: None })
    });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    /// token → user name
    tokens: HashMap<String, String>,
    #[serde(default = "default_realm")]
    realm: String,
}

fn default_header() -> String {
    "authorization".to_string()
}

fn default_realm() -> String {
    "sluice".to_string()
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        if raw.iter().all(u8::is_ascii_whitespace) {
            log::error!("auth: missing pluginConfig: `tokens` is required");
            return false;
        }
        match serde_json::from_slice::<Config>(&raw) {
            Ok(mut config) => {
                config.header = config.header.trim().to_ascii_lowercase();
                if config.header.is_empty() {
                    log::error!("auth: invalid pluginConfig: `header` must not be empty");
                    return false;
                }
                log::info!(
                    "auth: configured {} token(s), credentials in `{}`",
                    config.tokens.len(),
                    config.header
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(err) => {
                log::error!("auth: invalid pluginConfig: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // on_configure succeeded before any stream exists, so the config is present.
        let config = Rc::clone(self.config.as_ref()?);
        Some(Box::new(Filter { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
}

impl Filter {
    /// A request header as text; invalid UTF-8 is replaced rather than trapping the plugin.
    fn header(&self, name: &str) -> String {
        self.get_http_request_header_bytes(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }

    fn deny(&self, status: u32, body: &str, reason: &str) -> Action {
        let path = self.header(":path");
        log::info!("auth: denied {path}: {reason} ({status})");
        let challenge = format!("Bearer realm=\"{}\"", self.config.realm);
        let mut headers = vec![("content-type", "text/plain")];
        if status == 401 {
            headers.push(("www-authenticate", challenge.as_str()));
        }
        self.send_http_response(status, headers, Some(body.as_bytes()));
        Action::Pause
    }
}

/// The token in a credential header value: the value without an optional (case-insensitive)
/// `Bearer` scheme, trimmed. `Bearer` alone yields an empty token.
fn token(value: &str) -> &str {
    let value = value.trim();
    if value.eq_ignore_ascii_case("bearer") {
        return "";
    }
    match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
        _ => value,
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let value = self.header(&self.config.header);
        let token = token(&value);
        if token.is_empty() {
            return self.deny(401, "missing credentials", "missing credentials");
        }
        let Some(user) = self.config.tokens.get(token) else {
            return self.deny(403, "forbidden", "unknown token");
        };
        let method = self.header(":method");
        let path = self.header(":path");
        log::info!("auth: authorized {user} for {method} {path}");
        self.set_http_request_header("x-user", Some(user));
        self.remove_http_request_header(&self.config.header);
        Action::Continue
    }
}
