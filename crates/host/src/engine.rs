//! The process-wide engine: wasmtime configuration, the linker with every host function, the
//! compiled-module cache, the epoch ticker behind CPU deadlines, and the state VMs share.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use wasmtime::{InstancePre, Linker, Module};

use crate::error::LoadError;
use crate::imports::{self, Registrar};
use crate::inspect::ModuleInfo;
use crate::metrics::Metrics;
use crate::shared::{SharedData, SharedQueues};
use crate::state::HostState;

/// How often the epoch advances: the resolution of every CPU deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Where compiled modules are cached (`<sha256>-<engine hash>.cwasm`); `None` disables it.
    pub cache_dir: Option<PathBuf>,
}

impl EngineOptions {
    /// `$SLUICE_CACHE_DIR/compiled`, else `$XDG_CACHE_HOME/sluice/compiled`, else
    /// `~/.cache/sluice/compiled`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("SLUICE_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sluice")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/sluice")))?;
        Some(base.join("compiled"))
    }
}

/// Everything VMs of one engine share across threads.
#[derive(Default)]
pub struct Shared {
    pub data: SharedData,
    pub queues: SharedQueues,
    pub metrics: Metrics,
}

impl Shared {
    fn set_limits(&self, limits: crate::SharedLimits) {
        self.data.set_limit(limits.shared_data_bytes);
        self.queues.set_limits(&limits);
        self.metrics.set_limit(limits.metrics);
    }

    fn limits(&self) -> crate::SharedLimits {
        let queues = self.queues.limits();
        crate::SharedLimits {
            shared_data_bytes: self.data.limit(),
            queues: queues.queues,
            queue_items: queues.items,
            queue_bytes: queues.bytes,
            metrics: self.metrics.limit(),
        }
    }

    /// Empty, under the same bounds: what an isolated VM (the reload canary) shares with no one.
    pub(crate) fn empty_like(&self) -> Self {
        let empty = Self::default();
        empty.set_limits(self.limits());
        empty
    }
}

/// A compiled plugin, shareable across threads; [`crate::Vm::new`] instantiates it.
#[derive(Clone)]
pub struct PluginCode {
    pub(crate) pre: InstancePre<HostState>,
    pub info: Arc<ModuleInfo>,
    /// The capabilities the plugin may use ([`Engine::restrict`]); `None` allows everything.
    pub allowed: Option<Arc<BTreeSet<String>>>,
}

/// Status a restricted `proxy_*` call returns, as proxy-wasm-cpp-host does.
const DENIED_PROXY: i32 = sluice_abi::Status::InternalFailure as i32;
/// WASI errno ENOTCAPABLE, for a restricted WASI call.
const DENIED_WASI: i32 = 76;

/// Whether an import is a capability that can be restricted: the `proxy_*` host functions and
/// the WASI functions (helpers like AssemblyScript's `abort` always stay).
pub fn is_capability(module: &str, name: &str) -> bool {
    (module == "env" && name.starts_with("proxy_")) || module.starts_with("wasi_")
}

/// Whether a callback is a capability: every `proxy_on_*` but the allocator.
pub fn is_callback_capability(name: &str) -> bool {
    name.starts_with("proxy_on_") && name != "proxy_on_memory_allocate"
}

impl PluginCode {
    pub fn module(&self) -> &Module {
        self.pre.module()
    }
}

/// A host function's name and wasm signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFunction {
    pub module: String,
    pub name: String,
    pub params: Vec<WasmType>,
    pub results: Vec<WasmType>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmType {
    I32,
    I64,
    F32,
    F64,
}

#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub wasmtime: wasmtime::Engine,
    pub linker: Linker<HostState>,
    pub provided: BTreeSet<(String, String)>,
    pub shared: Arc<Shared>,
    cache: Option<CompiledCache>,
    compatibility: String,
}

/// The compiled-module cache: a directory only this user can read, and a key of its own. Each
/// entry ends with an HMAC-SHA256 of its bytes under that key, so an entry sluice did not write
/// (copied in, planted or damaged) is recompiled, never run.
struct CompiledCache {
    dir: PathBuf,
    key: [u8; 32],
}

const TAG_LEN: usize = 32;

impl CompiledCache {
    /// Opens the cache in `dir`, creating it (mode 0700) and its key (mode 0600) if needed.
    fn open(dir: PathBuf) -> std::io::Result<CompiledCache> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        // A directory made before the cache was keyed may be readable by others.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let path = dir.join("key");
        let mut key = [0u8; 32];
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
                std::io::Write::write_all(&mut file, &key)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(&path)?;
                key = bytes.try_into().map_err(|_| {
                    std::io::Error::other(format!("{}: not a 32-byte key", path.display()))
                })?;
            }
            Err(e) => return Err(e),
        }
        Ok(CompiledCache { dir, key })
    }

    /// HMAC-SHA256 of `bytes` under the cache's key (`None` only if `hmac` refused the key,
    /// which it does for no length).
    fn mac(&self, bytes: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(bytes);
        Some(mac)
    }

    fn tag(&self, bytes: &[u8]) -> Option<[u8; TAG_LEN]> {
        Some(self.mac(bytes)?.finalize().into_bytes().into())
    }

    /// The entry's compiled bytes, if its tag says this cache wrote them (checked in constant
    /// time by `hmac`, through `subtle`).
    fn verified<'a>(&self, entry: &'a [u8]) -> Option<&'a [u8]> {
        let (body, tag) = entry.split_at_checked(entry.len().checked_sub(TAG_LEN)?)?;
        self.mac(body)?.verify_slice(tag).ok().map(|()| body)
    }
}

impl Engine {
    pub fn new(options: EngineOptions) -> Result<Self, LoadError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let wasmtime =
            wasmtime::Engine::new(&config).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let mut linker = Linker::new(&wasmtime);
        let mut registrar = Registrar::new(&mut linker);
        imports::register(&mut registrar);
        let provided = registrar.names;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        wasmtime.precompile_compatibility_hash().hash(&mut hasher);
        let compatibility = format!("{:016x}", hasher.finish());
        let inner = Arc::new(EngineInner {
            wasmtime,
            linker,
            provided,
            shared: Arc::default(),
            cache: options.cache_dir.and_then(|dir| {
                CompiledCache::open(dir.clone())
                    .map_err(|e| {
                        tracing::warn!(dir = %dir.display(), "compiled-module cache disabled: {e}");
                    })
                    .ok()
            }),
            compatibility,
        });
        spawn_epoch_ticker(Arc::downgrade(&inner))
            .map_err(|e| LoadError::Compile(format!("starting the CPU-deadline clock: {e}")))?;
        Ok(Self { inner })
    }

    /// Applies a config's bounds on shared data, queues and metrics, from now on.
    pub fn set_shared_limits(&self, limits: crate::SharedLimits) {
        self.inner.shared.set_limits(limits);
    }

    pub fn shared_data(&self) -> &SharedData {
        &self.inner.shared.data
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    pub fn load_file(&self, path: &Path) -> Result<PluginCode, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.display().to_string(),
            error,
        })?;
        self.compile(&bytes)
    }

    /// Validates and compiles a module (or loads it from the compiled cache), checks that it is a
    /// Proxy-Wasm plugin sluice can run, and links it.
    pub fn compile(&self, bytes: &[u8]) -> Result<PluginCode, LoadError> {
        let (module, info) = self.analyze(bytes)?;
        info.loadable()?;
        let pre = self.link(&module)?;
        Ok(PluginCode {
            pre,
            info: Arc::new(info),
            allowed: None,
        })
    }

    /// Every host function a plugin may import, with its wasm signature (for `sluice inspect`
    /// and for guests generated to call them all, as the host-call fuzzer does).
    pub fn host_functions(&self) -> Vec<HostFunction> {
        let state = crate::vm::host_state(
            self,
            sluice_abi::AbiVersion::V0_2_1,
            crate::VmConfig::new("host-functions"),
        );
        let mut store = wasmtime::Store::new(&self.inner.wasmtime, state);
        let kind = |ty: wasmtime::ValType| match ty {
            wasmtime::ValType::I64 => WasmType::I64,
            wasmtime::ValType::F32 => WasmType::F32,
            wasmtime::ValType::F64 => WasmType::F64,
            _ => WasmType::I32,
        };
        let externs: Vec<(String, String, wasmtime::Extern)> = self
            .inner
            .linker
            .iter(&mut store)
            .map(|(module, name, item)| (module.to_string(), name.to_string(), item))
            .collect();
        externs
            .into_iter()
            .filter_map(|(module, name, item)| {
                let ty = item.into_func()?.ty(&store);
                Some(HostFunction {
                    module,
                    name,
                    params: ty.params().map(kind).collect(),
                    results: ty.results().map(kind).collect(),
                })
            })
            .collect()
    }

    /// Every name a capability allow-list may contain: the `proxy_*` and WASI host functions
    /// sluice provides and the `proxy_on_*` callbacks.
    pub fn capability_names(&self) -> BTreeSet<String> {
        self.inner
            .provided
            .iter()
            .filter(|(module, name)| is_capability(module, name))
            .map(|(_, name)| name.clone())
            .chain(
                sluice_abi::CALLBACKS
                    .iter()
                    .filter(|name| is_callback_capability(name))
                    .map(|name| (*name).to_string()),
            )
            .collect()
    }

    /// The same plugin, allowed only the capabilities in `allowed` (Envoy's
    /// `capability_restriction_config`): every other `proxy_*` or WASI import is linked to a stub
    /// that logs the denied call and returns an error status (InternalFailure, or ENOTCAPABLE for
    /// WASI), and callbacks not listed are never called.
    pub fn restrict(
        &self,
        code: &PluginCode,
        allowed: BTreeSet<String>,
    ) -> Result<PluginCode, LoadError> {
        let mut linker = self.inner.linker.clone();
        linker.allow_shadowing(true);
        let module = code.pre.module();
        for import in module.imports() {
            let (module_name, name) = (import.module(), import.name());
            let wasmtime::ExternType::Func(ty) = import.ty() else {
                continue;
            };
            if !is_capability(module_name, name) || allowed.contains(name) {
                continue;
            }
            let denied = if module_name == "env" {
                DENIED_PROXY
            } else {
                DENIED_WASI
            };
            let call = name.to_string();
            linker
                .func_new(
                    module_name,
                    name,
                    ty,
                    move |mut caller, _params, results| {
                        caller.data_mut().capability_denied(&call);
                        if let Some(result) = results.first_mut() {
                            *result = wasmtime::Val::I32(denied);
                        }
                        Ok(())
                    },
                )
                .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        }
        let pre = linker
            .instantiate_pre(module)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        Ok(PluginCode {
            pre,
            info: code.info.clone(),
            allowed: Some(Arc::new(allowed)),
        })
    }

    /// Describes a module for `sluice inspect`, with the reason it cannot be loaded, if any. Fails
    /// only for bytes that are not a valid WebAssembly module.
    pub fn inspect(&self, bytes: &[u8]) -> Result<(ModuleInfo, Option<LoadError>), LoadError> {
        let (module, info) = self.analyze(bytes)?;
        let problem = info.loadable().err().or_else(|| self.link(&module).err());
        Ok((info, problem))
    }

    fn analyze(&self, bytes: &[u8]) -> Result<(Module, ModuleInfo), LoadError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm(
                "the file does not start with the WebAssembly magic bytes".into(),
            ));
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let module = self.cached_module(bytes, &sha256)?;
        let info = ModuleInfo::new(&module, bytes, sha256, &self.inner.provided);
        Ok((module, info))
    }

    fn link(&self, module: &Module) -> Result<InstancePre<HostState>, LoadError> {
        self.inner
            .linker
            .instantiate_pre(module)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))
    }

    fn cached_module(&self, bytes: &[u8], sha256: &str) -> Result<Module, LoadError> {
        let compile = || {
            Module::new(&self.inner.wasmtime, bytes)
                .map_err(|e| LoadError::Compile(format!("{e:#}")))
        };
        let Some(cache) = &self.inner.cache else {
            return compile();
        };
        let path = cache
            .dir
            .join(format!("{sha256}-{}.cwasm", self.inner.compatibility));
        if let Ok(entry) = std::fs::read(&path) {
            match cache.verified(&entry) {
                Some(body) => {
                    // SAFETY: deserializing runs the machine code in `body`, so only bytes this
                    // cache wrote are deserialized: the tag is an HMAC under the cache's own key
                    // (mode 0600, in a 0700 directory) over exactly these bytes, which
                    // `Module::serialize` produced for a module with this sha256 on an engine with
                    // this compatibility hash (both in the file name).
                    match unsafe { Module::deserialize(&self.inner.wasmtime, body) } {
                        Ok(module) => return Ok(module),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), "ignoring unreadable compiled module: {e:#}");
                        }
                    }
                }
                None => tracing::warn!(
                    path = %path.display(),
                    "ignoring a compiled module this cache did not write (its tag does not verify); compiling again"
                ),
            }
        }
        let module = compile()?;
        if let Err(e) = write_cache(cache, &path, &module) {
            tracing::debug!(path = %path.display(), "cannot cache compiled module: {e:#}");
        }
        Ok(module)
    }
}

fn write_cache(cache: &CompiledCache, path: &Path, module: &Module) -> std::io::Result<()> {
    let mut bytes = module
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    let tag = cache
        .tag(&bytes)
        .ok_or_else(|| std::io::Error::other("cannot key the cache's HMAC"))?;
    bytes.extend_from_slice(&tag);
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// Advances the epoch every [`EPOCH_TICK`] while the engine lives.
fn spawn_epoch_ticker(engine: Weak<EngineInner>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.wasmtime.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
}
