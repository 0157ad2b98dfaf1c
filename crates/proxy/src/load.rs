//! From a config to something the proxy can run: plugin modules read, checked against their
//! sha256 and compiled (through the engine's cache), `vmConfig.env` resolved, cluster endpoints
//! resolved to addresses. Every problem is reported with its place, as config errors are.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use sluice_config::{ClusterKind, Config, ConfigError};
use sluice_host::{Engine, Limits};

use sluice_fetch::local_path;

use crate::{LoadedPlugin, ProxyConfig, Unavailable};

/// Where a proxy's config comes from, so that a reload can read it again: an optional config
/// file, on top of what the command line said.
#[derive(Clone)]
pub struct Source {
    pub file: Option<PathBuf>,
    /// The config the command-line flags describe; the file is read on top of it.
    pub base: Config,
    pub limits: Limits,
    pub buffer_limit: usize,
    /// The level plugins log at until `/logging` changes it.
    pub plugin_log_level: sluice_abi::LogLevel,
    /// Where remote plugin modules are cached and how they are fetched; the config's
    /// `insecureRegistries` are added to these.
    pub fetch: sluice_fetch::Options,
}

impl Source {
    /// Reads the file (if any), checks it and loads everything it names.
    pub fn load(&self, engine: &Engine) -> Result<ProxyConfig, Vec<ConfigError>> {
        let (config, text) = match &self.file {
            None => (self.base.clone(), None),
            Some(file) => {
                let text = std::fs::read_to_string(file).map_err(|error| {
                    vec![ConfigError::new("", format!("cannot read: {error}")).in_file(file)]
                })?;
                let config = sluice_config::parse(&text, self.base.clone()).map_err(|errors| {
                    errors
                        .into_iter()
                        .map(|e| e.in_file(file))
                        .collect::<Vec<_>>()
                })?;
                (config, Some(text))
            }
        };
        load(config, text.as_deref(), self, engine).map_err(|errors| match &self.file {
            Some(file) => errors.into_iter().map(|e| e.in_file(file)).collect(),
            None => errors,
        })
    }

    /// Where relative paths in the config point from: the config file's directory, else the
    /// current one.
    fn base_dir(&self) -> PathBuf {
        self.file
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// The local files a reload would read again: the config file and local plugin modules.
    pub fn watched_files(&self, config: &Config) -> Vec<PathBuf> {
        let base_dir = self.base_dir();
        self.file
            .iter()
            .cloned()
            .chain(
                config
                    .plugins
                    .iter()
                    .filter(|plugin| !sluice_fetch::is_remote(&plugin.url))
                    .map(|plugin| local_path(&plugin.url, &base_dir)),
            )
            .collect()
    }
}

/// Says, once per start, which plugins the proxy serves without and what that does to requests
/// (the background retry then stays quiet until it succeeds).
pub(crate) fn log_unavailable(config: &ProxyConfig) {
    for lost in &config.unavailable {
        let effect = if lost.blocks() {
            "requests that would run it get 503 and /ready says not ready"
        } else {
            "requests skip it (FAIL_OPEN)"
        };
        tracing::error!(plugin = %lost.plugin.name, "plugin unavailable, {effect}; retrying in the background: {}", lost.error);
    }
}

/// What to do about a plugin module that is not where the config says: build it, when the path
/// is a Cargo build's output; else where relative paths are taken from.
fn missing_file_hint(path: &str, config_file: Option<&Path>) -> String {
    if let Some((project, _)) = path.split_once("/target/wasm32-wasip1/") {
        let project = Path::new(project);
        let project = std::env::current_dir()
            .ok()
            .and_then(|cwd| project.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| project.to_path_buf());
        return format!(
            "; build the plugin first: `sluice build {}`",
            project.display()
        );
    }
    match config_file {
        Some(file) => format!(
            "; relative paths are taken from the config file's directory ({})",
            local_path(".", file.parent().unwrap_or(Path::new("."))).display()
        ),
        None => String::new(),
    }
}

/// Applies a plugin's capability allow-list, after checking every name in it.
fn restrict(
    engine: &Engine,
    code: sluice_host::PluginCode,
    plugin: &sluice_config::Plugin,
    config: &Config,
) -> Result<sluice_host::PluginCode, String> {
    if let Some(clusters) = &plugin.capabilities.clusters
        && let Some(unknown) = clusters
            .iter()
            .find(|name| !crate::cluster_exists(config, name))
    {
        return Err(format!(
            "clusters: `{unknown}` is neither a declared cluster nor an outbound|PORT||HOST name"
        ));
    }
    let Some(allow) = &plugin.capabilities.allow else {
        return Ok(code);
    };
    let known = engine.capability_names();
    if let Some(unknown) = allow.iter().find(|name| !known.contains(*name)) {
        return Err(format!(
            "allow: `{unknown}` is not a capability (a proxy_* or WASI host function, or a proxy_on_* callback)"
        ));
    }
    engine
        .restrict(&code, allow.clone())
        .map_err(|e| e.to_string())
}

/// Loads every plugin and resolves every endpoint of a checked config from `source`; `text` is
/// the config file's, where errors find their lines.
fn load(
    mut config: Config,
    text: Option<&str>,
    source: &Source,
    engine: &Engine,
) -> Result<ProxyConfig, Vec<ConfigError>> {
    let base_dir = &source.base_dir();
    let source_file = source.file.as_deref();
    let limits = plugin_limits(&source.limits, &config.plugin_limits);
    let shared = shared_limits(&config.plugin_limits);
    let mut errors = Vec::new();
    let mut plugins = Vec::new();
    let mut unavailable = Vec::new();
    let mut fetch = source.fetch.clone();
    fetch
        .insecure_registries
        .extend(config.insecure_registries.iter().cloned());
    let fetcher = sluice_fetch::Fetcher::new(fetch);
    for plugin in &config.plugins {
        let (place, location) = plugin.origin.place("spec.url", text);
        let pull_secret = plugin.pull_secret.as_ref().map(|s| local_path(s, base_dir));
        let fetched = fetcher.fetch(&sluice_fetch::Request {
            url: &plugin.url,
            base_dir,
            sha256: plugin.sha256.as_deref(),
            pull_policy: plugin.pull_policy.map(|policy| match policy {
                sluice_config::PullPolicy::IfNotPresent => sluice_fetch::PullPolicy::IfNotPresent,
                sluice_config::PullPolicy::Always => sluice_fetch::PullPolicy::Always,
            }),
            pull_secret: pull_secret.as_deref(),
        });
        let fetched = match fetched {
            Ok(fetched) => fetched,
            // A remote module that cannot be fetched now (the network, the registry) follows the
            // plugin's failStrategy, as in Istio; a refused one (a digest mismatch, not Wasm) and
            // a missing local file are config errors.
            Err(
                error @ (sluice_fetch::FetchError::Remote { .. }
                | sluice_fetch::FetchError::Cache { .. }
                | sluice_fetch::FetchError::Local { .. }),
            ) => {
                unavailable.push(Unavailable {
                    plugin: plugin.clone(),
                    error: error.to_string(),
                });
                continue;
            }
            Err(error) => {
                let message = match &error {
                    sluice_fetch::FetchError::Read { path, source }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        format!(
                            "{path}: no such file{}",
                            missing_file_hint(path, source_file)
                        )
                    }
                    _ => error.to_string(),
                };
                errors.push(match error {
                    sluice_fetch::FetchError::Digest { .. } => {
                        let (place, location) = plugin.origin.place("spec.sha256", text);
                        ConfigError::new(place, message).at(location)
                    }
                    _ => ConfigError::new(place, message).at(location),
                });
                continue;
            }
        };
        let env = match plugin.vm.environment(|name| std::env::var(name).ok()) {
            Ok(env) => env,
            Err(error) => {
                let (place, location) = plugin.origin.place("spec.vmConfig", text);
                errors.push(ConfigError::new(place, error.to_string()).at(location));
                continue;
            }
        };
        match engine.compile(&fetched.bytes) {
            Ok(code) => {
                let code = match restrict(engine, code, plugin, &config) {
                    Ok(code) => code,
                    Err(message) => {
                        let granted = &plugin.capabilities;
                        errors.push(
                            ConfigError::new(granted.place.clone(), message).at(granted.location),
                        );
                        continue;
                    }
                };
                plugins.push(LoadedPlugin {
                    code,
                    env,
                    limits: plugin_limits(&limits, &plugin.capabilities.limits),
                });
            }
            Err(error) => errors.push(
                ConfigError::new(place, format!("{}: {error}", fetched.path.display()))
                    .at(location),
            ),
        }
    }
    let mut endpoints = HashMap::new();
    for cluster in &config.clusters {
        let ClusterKind::Static { endpoints: names } = &cluster.kind else {
            continue;
        };
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for name in names {
            match name.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(address)) => addresses.push(address),
                Ok(None) => errors.push(ConfigError::new(
                    format!("cluster {}", cluster.name),
                    format!("endpoint `{name}` resolves to no address"),
                )),
                Err(error) => errors.push(ConfigError::new(
                    format!("cluster {}", cluster.name),
                    format!("endpoint `{name}`: {error}"),
                )),
            }
        }
        endpoints.insert(cluster.name.clone(), addresses);
    }
    let mut tls = Vec::new();
    for listener in &config.listeners {
        tls.push(listener.tls.as_ref().and_then(|files| {
            crate::tls::server_config(
                &local_path(&files.certificate, base_dir),
                &local_path(&files.private_key, base_dir),
            )
            .map_err(|message| {
                errors.push(ConfigError::new(
                    format!("listener {} tls", listener.name),
                    message,
                ));
            })
            .ok()
        }));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    config.plugins.retain(|p| {
        !unavailable
            .iter()
            .any(|u: &Unavailable| u.plugin.name == p.name)
    });
    let buffer_limit = config.buffer_limit_bytes.unwrap_or(source.buffer_limit);
    Ok(ProxyConfig {
        config,
        plugins,
        unavailable,
        endpoints,
        tls,
        buffer_limit,
        plugin_limits: limits,
        shared_limits: shared,
        engine: engine.clone(),
    })
}

/// A size from the config, or the default.
fn size(value: Option<u64>, default: usize) -> usize {
    value.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// The host's bounds on shared state with what the config's `pluginLimits` sets.
fn shared_limits(set: &sluice_config::PluginLimits) -> sluice_host::SharedLimits {
    let base = sluice_host::SharedLimits::default();
    sluice_host::SharedLimits {
        shared_data_bytes: size(set.shared_data_bytes, base.shared_data_bytes),
        queues: size(set.shared_queues, base.queues),
        queue_items: size(set.shared_queue_items, base.queue_items),
        queue_bytes: size(set.shared_queue_bytes, base.queue_bytes),
        metrics: size(set.metrics, base.metrics),
    }
}

/// The embedder's limits with what the config's `pluginLimits` sets.
fn plugin_limits(base: &Limits, set: &sluice_config::PluginLimits) -> Limits {
    Limits {
        memory_bytes: size(set.memory_bytes, base.memory_bytes),
        call_timeout: set.call_timeout.unwrap_or(base.call_timeout),
        start_timeout: set.start_timeout.unwrap_or(base.start_timeout),
        log_line_bytes: size(set.log_line_bytes, base.log_line_bytes),
        header_map_entries: size(set.header_map_entries, base.header_map_entries),
        header_map_bytes: size(set.header_map_bytes, base.header_map_bytes),
    }
}
