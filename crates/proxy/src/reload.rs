//! Config reload: read the source again, check and load it, start every plugin on a throwaway
//! instance (the canary), then publish it to the workers in one step. A reload that fails at any
//! stage changes nothing; why it failed is logged, counted and shown by the admin API.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sluice_config::ConfigError;
use sluice_host::{Clock, Engine};
use tokio::sync::watch;

use crate::stats::Stats;
use crate::worker::Generation;
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
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let result = self.try_reload();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(error) => {
                tracing::error!("reload refused, the running config is unchanged: {error}");
            }
        }
        self.stats.reload(result.is_ok());
        *last = Some(LastReload {
            at: SystemTime::now(),
            error: result.as_ref().err().map(ToString::to_string),
        });
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let new = self
            .source
            .load(&self.engine)
            .map_err(ReloadError::Config)?;
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
        canary(&new).map_err(ReloadError::Canary)?;
        self.updates.send_replace(Arc::new(new));
        Ok(())
    }
}

/// Starts every plugin of a config, with every route's configuration, on throwaway instances:
/// what `proxy_on_vm_start` and `proxy_on_configure` say before any worker sees the config.
pub fn canary(config: &ProxyConfig) -> Result<(), String> {
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
        if said.is_empty() {
            error.to_string()
        } else {
            format!("{error} (it logged: {})", said.join("; "))
        }
    })
}
