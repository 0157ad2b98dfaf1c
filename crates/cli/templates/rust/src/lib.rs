//! {{name}}: sets request and response headers from its JSON pluginConfig.
//!
//! ```json
//! {"request": {"x-hello": "world"}, "response": {"x-served-by": "{{name}}"}}
//! ```
//!
//! A configuration that is not that shape is refused at start (the plugin logs why and
//! `proxy_on_configure` returns false), so a typo never reaches traffic.

use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Headers set on the request before it goes upstream.
    #[serde(default)]
    request: BTreeMap<String, String>,
    /// Headers set on the response before it goes to the client.
    #[serde(default)]
    response: BTreeMap<String, String>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new(Config::default()) })
    });
}}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        if bytes.is_empty() {
            return true;
        }
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(error) => {
                log::error!("{{name}}: invalid pluginConfig: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    config: Rc<Config>,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.request {
            self.set_http_request_header(name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.response {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }
}
