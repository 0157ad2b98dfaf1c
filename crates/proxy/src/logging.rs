//! Plugin log levels, changeable at run time (`/logging`): one shared level per plugin name, read
//! by every instance of that plugin on every worker and in every config generation, so
//! `proxy_get_log_level` and the logs a plugin emits follow a change at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sluice_abi::LogLevel;

pub struct PluginLogLevels {
    default: AtomicU32,
    levels: Mutex<BTreeMap<String, Arc<AtomicU32>>>,
}

fn level(raw: u32) -> LogLevel {
    LogLevel::from_raw(raw).unwrap_or(LogLevel::Info)
}

impl PluginLogLevels {
    pub fn new(default: LogLevel) -> Self {
        Self {
            default: AtomicU32::new(default as u32),
            levels: Mutex::default(),
        }
    }

    fn levels(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<AtomicU32>>> {
        self.levels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shared level of a plugin, created at the default level on first use.
    pub fn of(&self, plugin: &str) -> Arc<AtomicU32> {
        self.levels()
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(AtomicU32::new(self.default.load(Ordering::Relaxed))))
            .clone()
    }

    /// Sets every plugin's level, and the level of plugins that come later.
    pub fn set_all(&self, new: LogLevel) {
        self.default.store(new as u32, Ordering::Relaxed);
        for shared in self.levels().values() {
            shared.store(new as u32, Ordering::Relaxed);
        }
    }

    pub fn set(&self, plugin: &str, new: LogLevel) {
        self.of(plugin).store(new as u32, Ordering::Relaxed);
    }

    pub fn default_level(&self) -> LogLevel {
        level(self.default.load(Ordering::Relaxed))
    }

    pub fn level_of(&self, plugin: &str) -> LogLevel {
        level(self.of(plugin).load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_shared_per_plugin_and_set_together_or_alone() {
        let levels = PluginLogLevels::new(LogLevel::Warn);
        let auth = levels.of("auth");
        assert_eq!(auth.load(Ordering::Relaxed), LogLevel::Warn as u32);
        levels.set("auth", LogLevel::Debug);
        assert_eq!(auth.load(Ordering::Relaxed), LogLevel::Debug as u32);
        assert_eq!(levels.level_of("other"), LogLevel::Warn);
        levels.set_all(LogLevel::Error);
        assert_eq!(levels.level_of("auth"), LogLevel::Error);
        assert_eq!(levels.level_of("later"), LogLevel::Error);
    }
}
