//! add-header: sets, adds and removes request and response headers, configured by a JSON
//! pluginConfig:
//!
//! ```json
//! {"request":  {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
//!  "response": {"set": {"x-d": "4"}, "add": {"x-e": "5"}, "remove": ["server"]}}
//! ```
//!
//! Per direction the operations run in the order remove, set, add. A missing or empty
//! configuration is a no-op; an invalid one makes `on_configure` log an error and return false.

use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new(Config::default()) })
    });
}}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Ops,
    #[serde(default)]
    response: Ops,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ops {
    /// Replace (or create) the header with this single value.
    #[serde(default, deserialize_with = "header_map")]
    set: Vec<(String, String)>,
    /// Append a value, keeping any existing values.
    #[serde(default, deserialize_with = "header_map")]
    add: Vec<(String, String)>,
    /// Remove every value of the header.
    #[serde(default, deserialize_with = "header_names")]
    remove: Vec<String>,
}

impl Ops {
    fn len(&self) -> usize {
        self.set.len() + self.add.len() + self.remove.len()
    }
}

/// `{"name": value}` where value is a string, number or boolean (YAML scenario files turn
/// `x-a: 1` into a JSON number, so scalars are accepted and rendered as text).
fn header_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    let map = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    map.into_iter()
        .map(|(name, value)| {
            let name = header_name::<D::Error>(name)?;
            let value = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(D::Error::custom(format!(
                        "header `{name}`: value must be a string, number or boolean, got {other}"
                    )))
                }
            };
            Ok((name, value))
        })
        .collect()
}

fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(header_name::<D::Error>)
        .collect()
}

fn header_name<E: serde::de::Error>(name: String) -> Result<String, E> {
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err(E::custom("header name must not be empty"));
    }
    Ok(name)
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        if raw.iter().all(u8::is_ascii_whitespace) {
            log::info!("add-header: no pluginConfig, nothing to do");
            self.config = Rc::new(Config::default());
            return true;
        }
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) => {
                log::info!(
                    "add-header: configured {} request and {} response header operation(s)",
                    config.request.len(),
                    config.response.len()
                );
                self.config = Rc::new(config);
                true
            }
            Err(err) => {
                log::error!("add-header: invalid pluginConfig: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            config: Rc::clone(&self.config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ops = &self.config.request;
        for name in &ops.remove {
            self.remove_http_request_header(name);
        }
        for (name, value) in &ops.set {
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in &ops.add {
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ops = &self.config.response;
        for name in &ops.remove {
            self.remove_http_response_header(name);
        }
        for (name, value) in &ops.set {
            self.set_http_response_header(name, Some(value));
        }
        for (name, value) in &ops.add {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}
