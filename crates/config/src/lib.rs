//! Sluice's configuration model: Istio `WasmPlugin` documents with their Istio spellings and
//! semantics, sluice's own `Proxy` document (listeners, routes, clusters), validation that names
//! every error's place, plugin ordering and route matching. It must never do I/O, nor know about
//! wasmtime.

#![forbid(unsafe_code)]

mod locate;
mod model;
mod parse;

pub use locate::{Location, locate};
pub use model::{
    Capabilities, ChainEntry, Cluster, ClusterKind, Config, DEFAULT_ADMIN, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_REQUEST_HEADERS_KB,
    DEFAULT_REQUEST_HEADERS_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT, DEFAULT_TIMEOUT, HeaderMatch,
    HostMatch, Listener, Locality, MAX_REQUEST_HEADERS_KB, Node, Notice, Origin, PathMatch, Phase,
    Plugin, PluginLimits, PluginOverride, PullPolicy, Route, RouteMatch, TcpProxy, TlsFiles,
};
pub use parse::{ConfigError, PROXY_API, WASM_PLUGIN_API, parse, parse_duration};

use std::fmt;

use serde::{Deserialize, Serialize};

/// The body of the 503 a failing plugin's stream gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureBody {
    /// Envoy's: no body (the reason is in the log, `/plugins` and the access log).
    #[default]
    #[serde(rename = "empty")]
    Empty,
    /// `plugin '<name>' failed`, for people reading responses while they debug.
    #[serde(rename = "descriptive")]
    Descriptive,
}

/// What happens to requests when a plugin fails (Istio `failStrategy`, Envoy `failure_policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailStrategy {
    /// The request fails with 503 (the default).
    #[default]
    #[serde(rename = "FAIL_CLOSE")]
    FailClose,
    /// The plugin is skipped.
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    /// The request fails with 503 and the next request gets a fresh plugin instance, with backoff.
    #[serde(rename = "FAIL_RELOAD")]
    FailReload,
}

impl fmt::Display for FailStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FailClose => "FAIL_CLOSE",
            Self::FailOpen => "FAIL_OPEN",
            Self::FailReload => "FAIL_RELOAD",
        })
    }
}

/// Where an environment variable's value comes from (Istio `EnvValueSource`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvValueSource {
    #[default]
    #[serde(rename = "INLINE")]
    Inline,
    /// Passed through from sluice's own environment.
    #[serde(rename = "HOST")]
    Host,
}

/// One `vmConfig.env` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value_from: EnvValueSource,
    #[serde(default)]
    pub value: Option<String>,
}

/// `vmConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

/// A `vmConfig.env` entry that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error(
        "vmConfig.env[{index}].name `{name}` is not a C identifier (letters, digits, `_`, not starting with a digit)"
    )]
    BadName { index: usize, name: String },
    #[error("vmConfig.env[{index}] ({name}): valueFrom HOST takes no value; remove `value`")]
    HostWithValue { index: usize, name: String },
    #[error("vmConfig.env[{index}] ({name}) appears twice")]
    Duplicate { index: usize, name: String },
}

impl VmConfig {
    /// The WASI environment: inline values as given, HOST values read through `host_env` (a
    /// variable missing from the host is left out, as Istio does).
    pub fn environment(
        &self,
        host_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, EnvError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (index, var) in self.env.iter().enumerate() {
            let name = var.name.clone();
            let identifier = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !identifier {
                return Err(EnvError::BadName { index, name });
            }
            if out.iter().any(|(n, _)| *n == name) {
                return Err(EnvError::Duplicate { index, name });
            }
            match var.value_from {
                EnvValueSource::Inline => out.push((name, var.value.clone().unwrap_or_default())),
                EnvValueSource::Host if var.value.is_some() => {
                    return Err(EnvError::HostWithValue { index, name });
                }
                EnvValueSource::Host => {
                    if let Some(value) = host_env(&name) {
                        out.push((name, value));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The bytes a plugin receives as its configuration: a string is passed as is (Envoy's
/// `StringValue`), anything else as JSON (Istio passes `pluginConfig`, a `Struct`, as JSON).
pub fn plugin_configuration_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(text)) => text.clone().into_bytes(),
        // A `serde_json::Value` always serializes; the fallback is never taken.
        Some(other) => serde_json::to_vec(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_resolves_inline_and_host_values() {
        let config: VmConfig = serde_json::from_value(serde_json::json!({
            "env": [{"name": "A", "value": "1"}, {"name": "HOME_DIR", "valueFrom": "HOST"}, {"name": "MISSING", "valueFrom": "HOST"}]
        }))
        .unwrap();
        let env = config
            .environment(|name| (name == "HOME_DIR").then(|| "/root".to_string()))
            .unwrap();
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("HOME_DIR".into(), "/root".into())
            ]
        );
    }

    #[test]
    fn environment_rejects_bad_entries_by_index() {
        let bad: VmConfig =
            serde_json::from_value(serde_json::json!({"env": [{"name": "9X", "value": "1"}]}))
                .unwrap();
        assert_eq!(
            bad.environment(|_| None),
            Err(EnvError::BadName {
                index: 0,
                name: "9X".into()
            })
        );
        let host: VmConfig = serde_json::from_value(
            serde_json::json!({"env": [{"name": "X", "valueFrom": "HOST", "value": "v"}]}),
        )
        .unwrap();
        assert!(matches!(
            host.environment(|_| None),
            Err(EnvError::HostWithValue { .. })
        ));
    }

    #[test]
    fn plugin_configuration_is_raw_text_or_json() {
        assert_eq!(
            plugin_configuration_bytes(Some(&serde_json::json!("raw"))),
            b"raw"
        );
        assert_eq!(
            plugin_configuration_bytes(Some(&serde_json::json!({"a": 1}))),
            br#"{"a":1}"#
        );
        assert!(plugin_configuration_bytes(None).is_empty());
    }
}
