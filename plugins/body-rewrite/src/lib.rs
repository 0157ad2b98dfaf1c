//! body-rewrite: literal find/replace on response bodies (and optionally request bodies).
//!
//! ```json
//! {"response": [{"from": "foo", "to": "bar"}],
//!  "request":  [{"from": "secret", "to": "*****"}],
//!  "contentTypes": ["text/", "application/json"]}
//! ```
//!
//! A body is rewritten only when its `content-type` starts with one of `contentTypes`
//! (case-insensitive; default `["text/", "application/json"]`, `[]` = any content type, even none)
//! and it has no `content-encoding` other than `identity`. Such a body is buffered (the body
//! callback returns `Pause` until end of stream), the rules are applied in order, and the
//! whole buffer is replaced. `content-length` is removed in the headers phase, as Envoy plugins
//! do, because the rewritten length is not known yet.

use std::rc::Rc;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new(Config::default()) })
    });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    response: Vec<Rule>,
    #[serde(default)]
    request: Vec<Rule>,
    #[serde(default = "default_content_types")]
    content_types: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            response: Vec::new(),
            request: Vec::new(),
            content_types: default_content_types(),
        }
    }
}

fn default_content_types() -> Vec<String> {
    vec!["text/".to_string(), "application/json".to_string()]
}

impl Config {
    fn validate(mut self) -> Result<Self, String> {
        for (dir, rules) in [("request", &self.request), ("response", &self.response)] {
            if let Some(i) = rules.iter().position(|r| r.from.is_empty()) {
                return Err(format!("{dir}[{i}].from must not be empty"));
            }
        }
        for ct in &mut self.content_types {
            *ct = ct.trim().to_ascii_lowercase();
        }
        Ok(self)
    }

    /// Whether a body with these headers is eligible for rewriting.
    fn matches(&self, content_type: Option<&str>, content_encoding: Option<&str>) -> bool {
        if let Some(enc) = content_encoding {
            let enc = enc.trim();
            if !enc.is_empty() && !enc.eq_ignore_ascii_case("identity") {
                return false;
            }
        }
        if self.content_types.is_empty() {
            return true;
        }
        let Some(ct) = content_type else {
            return false;
        };
        let ct = ct.trim().to_ascii_lowercase();
        self.content_types
            .iter()
            .any(|prefix| ct.starts_with(prefix.as_str()))
    }
}

/// Applies `rules` in order; returns the new body and the number of replacements made.
fn rewrite(body: &[u8], rules: &[Rule]) -> (Vec<u8>, usize) {
    let mut current = body.to_vec();
    let mut total = 0;
    for rule in rules {
        let (next, n) = replace_all(&current, rule.from.as_bytes(), rule.to.as_bytes());
        if n > 0 {
            current = next;
            total += n;
        }
    }
    (current, total)
}

/// `haystack` with every (non-overlapping, leftmost-first) `from` replaced by `to`, and how many
/// were replaced. The text between matches is copied a run at a time, not a byte at a time:
/// a body is often large and the rule rare in it.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(haystack.len());
    let mut count = 0;
    let mut rest = haystack;
    while let Some(at) = find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
        count += 1;
    }
    out.extend_from_slice(rest);
    (out, count)
}

/// Where `needle` (not empty) first occurs in `haystack`: candidates are found by its first byte.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut start = 0;
    while let Some(offset) = haystack.get(start..)?.iter().position(|&b| b == first) {
        let at = start + offset;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        if raw.iter().all(u8::is_ascii_whitespace) {
            log::info!("body-rewrite: no pluginConfig, nothing to do");
            self.config = Rc::new(Config::default());
            return true;
        }
        let parsed = serde_json::from_slice::<Config>(&raw)
            .map_err(|e| e.to_string())
            .and_then(Config::validate);
        match parsed {
            Ok(config) => {
                log::info!(
                    "body-rewrite: configured {} request and {} response rule(s) for content types {:?}",
                    config.request.len(),
                    config.response.len(),
                    config.content_types
                );
                self.config = Rc::new(config);
                true
            }
            Err(err) => {
                log::error!("body-rewrite: invalid pluginConfig: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            config: Rc::clone(&self.config),
            rewrite_request: false,
            rewrite_response: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
    rewrite_request: bool,
    rewrite_response: bool,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream || self.config.request.is_empty() {
            return Action::Continue;
        }
        let ct = self.get_http_request_header("content-type");
        let enc = self.get_http_request_header("content-encoding");
        if self.config.matches(ct.as_deref(), enc.as_deref()) {
            self.rewrite_request = true;
            self.remove_http_request_header("content-length");
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.rewrite_request {
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer until the whole body is here.
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let (new_body, n) = rewrite(&body, &self.config.request);
        if n > 0 {
            self.set_http_request_body(0, body_size, &new_body);
            log::info!(
                "body-rewrite: rewrote request body: {n} replacement(s), {} -> {} bytes",
                body.len(),
                new_body.len()
            );
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream || self.config.response.is_empty() {
            return Action::Continue;
        }
        let ct = self.get_http_response_header("content-type");
        let enc = self.get_http_response_header("content-encoding");
        if self.config.matches(ct.as_deref(), enc.as_deref()) {
            self.rewrite_response = true;
            self.remove_http_response_header("content-length");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.rewrite_response {
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer until the whole body is here.
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let (new_body, n) = rewrite(&body, &self.config.response);
        if n > 0 {
            self.set_http_response_body(0, body_size, &new_body);
            log::info!(
                "body-rewrite: rewrote response body: {n} replacement(s), {} -> {} bytes",
                body.len(),
                new_body.len()
            );
        }
        Action::Continue
    }
}
