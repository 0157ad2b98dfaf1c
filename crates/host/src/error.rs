//! Errors of the host: a module that cannot be loaded, and a plugin that failed while running.

use std::fmt;

/// Why a module could not become a running plugin VM. Every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // `error`, not `source`: the message carries it, and error chains would print it twice.
    #[error("{path}: cannot read plugin: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    #[error(
        "no Proxy-Wasm ABI version marker: the module exports no `proxy_abi_version_*` function"
    )]
    NoAbiMarker,
    #[error(
        "unsupported Proxy-Wasm ABI `{0}`: sluice implements 0.1.0, 0.2.0, 0.2.1 and Higress's 0.2.100"
    )]
    UnsupportedAbi(String),
    #[error("the module imports {}, which sluice does not provide", .0.join(", "))]
    MissingImports(Vec<String>),
    #[error("the module exports no memory named `memory`")]
    NoMemory,
    #[error(
        "the module exports neither `proxy_on_memory_allocate` nor `malloc`: the host cannot hand it data"
    )]
    NoAllocator,
    #[error("export `{name}` has signature {actual}, expected {expected}")]
    BadCallbackSignature {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("cannot compile the module: {0}")]
    Compile(String),
    #[error("cannot instantiate the module: {0}")]
    Instantiate(String),
    #[error("plugin failed during start-up: {0}")]
    Start(#[from] PluginFailure),
    #[error("proxy_on_vm_start returned false: the plugin rejected its VM configuration")]
    VmStartRejected,
    #[error("proxy_on_configure returned false: the plugin rejected its configuration")]
    ConfigureRejected,
}

/// What made a guest call fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A WebAssembly trap (`unreachable`, out-of-bounds access, a Rust panic, ...).
    Trap,
    /// The call ran past its CPU deadline.
    Deadline,
    /// The plugin hit its memory cap (and then trapped, which is what allocators do).
    MemoryLimit,
    /// The guest called `proc_exit`.
    Exit(i32),
    /// The VM had already failed before this call; it is never re-entered.
    AlreadyFailed,
}

/// A plugin failure: a trap, a deadline overrun or a memory-limit hit, with the plugin's name,
/// the callback that failed and a symbolized backtrace of the guest stack.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PluginFailure {
    pub plugin: String,
    pub callback: String,
    pub kind: FailureKind,
    pub message: String,
    pub backtrace: String,
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            FailureKind::Trap => "trapped".to_string(),
            FailureKind::Deadline => "exceeded its CPU deadline".to_string(),
            FailureKind::MemoryLimit => "hit its memory limit".to_string(),
            FailureKind::Exit(code) => format!("called proc_exit({code})"),
            FailureKind::AlreadyFailed => "had already failed".to_string(),
        };
        write!(
            f,
            "plugin '{}' {} in {}: {}",
            self.plugin, what, self.callback, self.message
        )?;
        if !self.backtrace.is_empty() {
            write!(f, "\n{}", self.backtrace)?;
        }
        Ok(())
    }
}
