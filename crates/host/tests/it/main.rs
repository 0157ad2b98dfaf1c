//! Integration tests of the host: real plugins and hand-written WAT guests, driven through the
//! public `Vm` API without a chain or a network.

// Test code: a failure is a failed test, so helpers unwrap and panic as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fixtures;
mod hostile;
mod plugins;

use std::sync::Arc;
use std::time::Duration;

use sluice_abi::{Action, HeaderMap, LogLevel};
use sluice_host::{
    Effect, Engine, EngineOptions, HttpStream, LoadError, LogRecord, PluginCode, SharedStream, Vm,
    VmConfig,
};

pub fn engine() -> Engine {
    Engine::new(EngineOptions {
        cache_dir: Some(sluice_test_support::cache_dir()),
    })
    .expect("engine")
}

pub fn compile_fixture(engine: &Engine, name: &str) -> Result<PluginCode, LoadError> {
    engine.compile(&sluice_test_support::wat_fixture(name))
}

/// A test VM config: everything logged and captured, `authz` and `grpc-backend` known clusters.
pub fn config(name: &str) -> VmConfig {
    let mut config = VmConfig::new(name);
    config.capture_logs = true;
    config.log_level = Arc::new((LogLevel::Trace as u32).into());
    config.clusters = Arc::new(|c| c == "authz" || c == "grpc-backend");
    config.env = vec![("FIXTURE_ENV".into(), "yes".into())];
    config
}

/// One started plugin with its root context.
pub struct Guest {
    pub vm: Vm,
    pub root: u32,
}

impl Guest {
    pub fn start(
        engine: &Engine,
        code: &PluginCode,
        config: VmConfig,
        plugin_configuration: &[u8],
    ) -> Result<Self, LoadError> {
        let plugin_name = config.plugin_name.clone();
        let mut vm = Vm::new(engine, code, config)?;
        let root = vm.start_root(&plugin_name, "root", plugin_configuration)?;
        Ok(Self { vm, root })
    }

    pub fn fixture(name: &str) -> Self {
        let engine = engine();
        let code = compile_fixture(&engine, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        Self::start(&engine, &code, config(name), b"").unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A new stream with the given request headers (pseudo-headers included).
    pub fn stream(&mut self, headers: &[(&str, &str)]) -> (u32, SharedStream) {
        let stream = HttpStream {
            request_headers: HeaderMap::from_pairs(headers.iter().copied()),
            ..HttpStream::default()
        }
        .shared();
        let context = self
            .vm
            .create_stream(self.root, stream.clone())
            .expect("context create");
        (context, stream)
    }

    pub fn logs(&mut self) -> Vec<LogRecord> {
        self.vm.take_logs()
    }

    pub fn messages(&mut self) -> Vec<String> {
        self.logs().into_iter().map(|l| l.message).collect()
    }
}

pub const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/hello?x=1"),
    (":authority", "example.com"),
    (":scheme", "http"),
];

/// Runs request headers to completion and returns the action and the effects.
pub fn headers(guest: &mut Guest, context: u32, stream: &SharedStream) -> (Action, Vec<Effect>) {
    let count = stream.borrow().request_headers.len() as u32;
    let action = guest
        .vm
        .request_headers(context, count, false)
        .expect("request headers");
    (action, guest.vm.take_effects())
}

pub fn assert_no_bad(messages: &[String]) {
    let bad: Vec<&String> = messages.iter().filter(|m| m.starts_with("bad:")).collect();
    assert!(bad.is_empty(), "the host misbehaved: {bad:#?}");
}

pub const SHORT_DEADLINE: Duration = Duration::from_millis(100);
