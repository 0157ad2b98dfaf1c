//! Config reload: read the source again, check and load it, start every plugin on a throwaway
//! instance (the canary), then publish it to the workers in one step. A reload that fails at any
//! stage changes nothing; why it failed is logged, counted and shown by the admin API.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sluice_config::ConfigError;
use sluice_host::{Clock, Engine};
use tokio::sync::watch;

use crate::generation::Generation;
use crate::stats::Stats;
use crate::{ProxyConfig, Source};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new config is invalid:\n{}", list(.0))]
    Config(Vec<ConfigError>),
    #[error("{0}; restart sluice to change it")]
    NeedsRestart(String),
    #[error("a plugin of the new config does not start: {0}")]
    Canary(String),
    #[error("plugin {plugin} cannot be fetched, and the running config has it: {error}")]
    Unavailable { plugin: String, error: String },
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The outcome of the latest reload, for `/config_dump`.
#[derive(Clone, Debug)]
pub struct LastReload {
    pub at: SystemTime,
    pub error: Option<String>,
}

/// Reloads a running proxy's config from its source.
pub struct Reloader {
    source: Source,
    engine: Engine,
    updates: watch::Sender<Arc<ProxyConfig>>,
    stats: Arc<Stats>,
    last: Mutex<Option<LastReload>>,
}

impl Reloader {
    pub(crate) fn new(
        source: Source,
        engine: Engine,
        updates: watch::Sender<Arc<ProxyConfig>>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            source,
            engine,
            updates,
            stats,
            last: Mutex::new(None),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ProxyConfig>> {
        self.updates.subscribe()
    }

    /// The config the workers run now.
    pub fn current(&self) -> Arc<ProxyConfig> {
        self.updates.borrow().clone()
    }

    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().map_or(None, |last| last.clone())
    }

    /// Reads, checks, loads and canaries the source, then swaps it in. One reload at a time.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reload_if(|_| true).map(|_| ())
    }

    /// Fetches the unavailable plugins again (the same reload), and swaps the result in only if
    /// fewer are unavailable: `Ok(true)` when it did.
    pub fn retry_unavailable(&self) -> Result<bool, ReloadError> {
        let before = self.current().unavailable.len();
        self.reload_if(|new| new.unavailable.len() < before)
    }

    fn reload_if(&self, wanted: impl Fn(&ProxyConfig) -> bool) -> Result<bool, ReloadError> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let result = match self.source.load(&self.engine) {
            Err(errors) => Err(ReloadError::Config(errors)),
            Ok(new) if !wanted(&new) => return Ok(false),
            Ok(new) => self.try_reload(new),
        };
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(error) => {
                tracing::error!("reload refused, still running the previous config: {error}");
            }
        }
        self.stats.reload(result.is_ok());
        *last = Some(LastReload {
            at: SystemTime::now(),
            error: result.as_ref().err().map(ToString::to_string),
        });
        result.map(|()| true)
    }

    fn try_reload(&self, new: ProxyConfig) -> Result<(), ReloadError> {
        let current = self.current();
        let (old, new_config) = (&current.config, &new.config);
        let addresses = |c: &sluice_config::Config| -> Vec<_> {
            c.listeners
                .iter()
                .map(|l| (l.name.clone(), l.address))
                .collect()
        };
        if addresses(old) != addresses(new_config) {
            return Err(ReloadError::NeedsRestart(
                "the listeners (names or addresses) changed".into(),
            ));
        }
        if old.access_log != new_config.access_log {
            return Err(ReloadError::NeedsRestart(
                "the access log destination changed".into(),
            ));
        }
        if old.admin != new_config.admin {
            return Err(ReloadError::NeedsRestart(
                "the admin address changed".into(),
            ));
        }
        if current.workers() != new.workers() {
            return Err(ReloadError::NeedsRestart(
                "the number of workers changed".into(),
            ));
        }
        // A reload never takes away a plugin that runs now because its module cannot be fetched
        // at this moment; a plugin that was already unavailable may stay so.
        if let Some(lost) = new.unavailable.iter().find(|u| {
            !current
                .unavailable
                .iter()
                .any(|c| c.plugin.name == u.plugin.name)
        }) {
            return Err(ReloadError::Unavailable {
                plugin: lost.plugin.name.clone(),
                error: lost.error.clone(),
            });
        }
        // A refused config gives back the bounds on shared state its canary set.
        if let Err(error) = canary(&new) {
            self.engine.set_shared_limits(current.shared_limits);
            return Err(ReloadError::Canary(error));
        }
        self.updates.send_replace(Arc::new(new));
        Ok(())
    }
}

/// Starts every plugin of a config, with every route's configuration, on throwaway instances:
/// what `proxy_on_vm_start` and `proxy_on_configure` say before any worker sees the config. The
/// config's bounds on shared state hold from here on, as they will once workers serve it.
pub fn canary(config: &ProxyConfig) -> Result<(), String> {
    config.engine.set_shared_limits(config.shared_limits);
    let everything = crate::logging::PluginLogLevels::new(sluice_abi::LogLevel::Trace);
    Generation::build(
        Arc::new(config.clone()),
        Clock::system(),
        true,
        &everything,
        None,
    )
    .map(drop)
    .map_err(|error| {
        let said: Vec<String> = error
            .logs
            .iter()
            .map(|log| format!("{}: {}", log.level.as_str(), log.message))
            .collect();
        let mut message = error.to_string();
        if !said.is_empty() {
            message = format!("{message} (it logged: {})", said.join("; "));
        }
        // A plugin names a line and column of the JSON text it was given, which sluice wrote
        // from the YAML: show that text.
        if matches!(error.source, sluice_host::LoadError::ConfigureRejected)
            && !error.configuration.is_empty()
        {
            const SHOWN: usize = 300;
            let text = String::from_utf8_lossy(&error.configuration);
            let cut = text.char_indices().nth(SHOWN).map_or(text.len(), |(i, _)| i);
            let more = if cut < text.len() { "..." } else { "" };
            message = format!(
                "{message}; the configuration it was given: {}{more}",
                &text[..cut]
            );
        }
        // Some SDKs (AssemblyScript's proxy-runtime) find their root context by pluginName.
        let unnamed = config
            .config
            .plugins
            .iter()
            .any(|p| p.name == error.plugin && p.root_id.is_empty());
        if unnamed && message.to_ascii_lowercase().contains("root") {
            message.push_str(
                "; hint: its pluginName (Envoy's root_id) is empty, and this SDK looks its root context up by name: set spec.pluginName (`sluice manifest --plugin-name`)",
            );
        }
        message
    })
}
