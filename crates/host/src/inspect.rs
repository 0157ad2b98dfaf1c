//! What a module is, as `sluice inspect` reports it and as loading checks it: ABI version, entry
//! point, allocator, SDK guess, callbacks, imports sluice cannot provide, memory, size, sha256.

use std::collections::BTreeSet;

use sluice_abi::{AbiVersion, CALLBACKS};
use wasmtime::{ExternType, Module};

use crate::error::LoadError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportInfo {
    pub module: String,
    pub name: String,
    pub signature: String,
    /// Whether sluice provides this import.
    pub provided: bool,
}

#[derive(Clone, Debug)]
pub struct ModuleInfo {
    pub size: usize,
    pub sha256: String,
    /// The detected ABI, or why none could be: `Err(None)` for no marker, `Err(Some(marker))` for
    /// a marker naming a version sluice does not implement.
    pub abi: Result<AbiVersion, Option<String>>,
    /// What the host runs at start-up, in order (`_initialize`, `main`, `_start`, start section).
    pub entry_points: Vec<String>,
    pub allocator: Option<String>,
    pub callbacks: Vec<String>,
    pub exports: Vec<(String, String)>,
    pub imports: Vec<ImportInfo>,
    /// Initial and maximum linear memory, in 64 KiB pages.
    pub memory_pages: Option<(u64, Option<u64>)>,
    pub exports_memory: bool,
    /// `producers` custom section entries, as "field: name version".
    pub producers: Vec<String>,
    pub custom_sections: Vec<String>,
    pub has_name_section: bool,
    pub sdk: String,
}

impl ModuleInfo {
    pub(crate) fn new(
        module: &Module,
        bytes: &[u8],
        sha256: String,
        provided: &BTreeSet<(String, String)>,
    ) -> Self {
        let exports: Vec<(String, String)> = module
            .exports()
            .map(|e| (e.name().to_string(), describe(&e.ty())))
            .collect();
        let has = |name: &str| exports.iter().any(|(n, _)| n == name);
        let imports = module
            .imports()
            .map(|i| ImportInfo {
                module: i.module().to_string(),
                name: i.name().to_string(),
                signature: describe(&i.ty()),
                provided: provided.contains(&(i.module().to_string(), i.name().to_string())),
            })
            .collect::<Vec<_>>();
        let memory_pages = module
            .exports()
            .find_map(|e| match e.ty() {
                ExternType::Memory(m) => Some((m.minimum(), m.maximum())),
                _ => None,
            })
            .or_else(|| {
                module.imports().find_map(|i| match i.ty() {
                    ExternType::Memory(m) => Some((m.minimum(), m.maximum())),
                    _ => None,
                })
            });
        let sections = Sections::read(bytes);
        let mut entry_points = Vec::new();
        if sections.start {
            entry_points.push("start section".to_string());
        }
        if has("_initialize") {
            entry_points.push("_initialize".to_string());
            if has("main") {
                entry_points.push("main".to_string());
            }
        } else if has("_start") {
            entry_points.push("_start".to_string());
        }
        let allocator = ["proxy_on_memory_allocate", "malloc"]
            .into_iter()
            .find(|n| has(n))
            .map(str::to_string);
        let callbacks = CALLBACKS
            .iter()
            .filter(|c| has(c))
            .map(|c| c.to_string())
            .collect();
        let abi = AbiVersion::detect(exports.iter().map(|(n, _)| n.as_str()))
            .map_err(Some)
            .and_then(|v| v.ok_or(None));
        let sdk = guess_sdk(&exports, &imports, &sections);
        Self {
            size: bytes.len(),
            sha256,
            abi,
            entry_points,
            allocator,
            callbacks,
            exports_memory: exports
                .iter()
                .any(|(n, k)| n == "memory" && k.starts_with("memory")),
            exports,
            imports,
            memory_pages,
            producers: sections.producers,
            custom_sections: sections.custom,
            has_name_section: sections.names,
            sdk,
        }
    }

    pub fn missing_imports(&self) -> Vec<String> {
        self.imports
            .iter()
            .filter(|i| !i.provided)
            .map(|i| format!("{}::{}", i.module, i.name))
            .collect()
    }

    /// Why this module cannot run as a Proxy-Wasm plugin, if it cannot.
    pub fn loadable(&self) -> Result<AbiVersion, LoadError> {
        let abi = match &self.abi {
            Ok(abi) => *abi,
            Err(None) => return Err(LoadError::NoAbiMarker),
            Err(Some(marker)) => return Err(LoadError::UnsupportedAbi(marker.clone())),
        };
        let missing = self.missing_imports();
        if !missing.is_empty() {
            return Err(LoadError::MissingImports(missing));
        }
        if !self.exports_memory {
            return Err(LoadError::NoMemory);
        }
        if self.allocator.is_none() {
            return Err(LoadError::NoAllocator);
        }
        Ok(abi)
    }
}

fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => f.to_string(),
        ExternType::Memory(m) => format!(
            "memory {}..{}",
            m.minimum(),
            m.maximum().map_or(String::new(), |m| m.to_string())
        ),
        ExternType::Global(_) => "global".to_string(),
        ExternType::Table(_) => "table".to_string(),
        ExternType::Tag(_) => "tag".to_string(),
    }
}

#[derive(Default)]
struct Sections {
    start: bool,
    names: bool,
    producers: Vec<String>,
    custom: Vec<String>,
    function_names: Vec<String>,
}

impl Sections {
    /// Reads the parts wasmtime's `Module` does not expose. The module already compiled, so a
    /// parse error here only means less information.
    fn read(bytes: &[u8]) -> Self {
        let mut sections = Self::default();
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else { break };
            match payload {
                wasmparser::Payload::StartSection { .. } => sections.start = true,
                wasmparser::Payload::CustomSection(custom) => {
                    sections.custom.push(custom.name().to_string());
                    match custom.as_known() {
                        wasmparser::KnownCustom::Producers(reader) => {
                            for field in reader.into_iter().flatten() {
                                for value in field.values.into_iter().flatten() {
                                    sections.producers.push(format!(
                                        "{}: {} {}",
                                        field.name, value.name, value.version
                                    ));
                                }
                            }
                        }
                        wasmparser::KnownCustom::Name(reader) => {
                            sections.names = true;
                            for name in reader.into_iter().flatten() {
                                if let wasmparser::Name::Function(map) = name {
                                    sections.function_names.extend(
                                        map.into_iter().flatten().map(|n| n.name.to_string()),
                                    );
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        sections
    }
}

/// A best guess at the SDK that built the module, from what each SDK leaves behind.
fn guess_sdk(exports: &[(String, String)], imports: &[ImportInfo], sections: &Sections) -> String {
    let produced = |needle: &str| sections.producers.iter().any(|p| p.contains(needle));
    let exported = |name: &str| exports.iter().any(|(n, _)| n == name);
    let named = |needle: &str| sections.function_names.iter().any(|n| n.contains(needle));
    // What Emscripten's runtime leaves, even in a stripped module: its `env` imports and its
    // stack exports. (Its `env.abort` takes no arguments; AssemblyScript's takes four.)
    let emscripten = imports.iter().any(|i| {
        i.module == "env"
            && (i.name.starts_with("emscripten_")
                || i.name.starts_with("_emscripten_")
                || i.name.starts_with("__syscall_")
                || i.name.starts_with("__cxa_"))
    }) || exports.iter().any(|(name, _)| {
        name.starts_with("emscripten_")
            || name.starts_with("_emscripten_")
            || matches!(name.as_str(), "stackSave" | "stackRestore" | "stackAlloc")
    });
    let assemblyscript_abort = imports
        .iter()
        .any(|i| i.module == "env" && i.name == "abort" && i.signature.matches("i32").count() == 4);
    if produced("TinyGo") {
        "Go (TinyGo; proxy-wasm-go-sdk)".to_string()
    } else if produced("language: Go") || named("proxywasm") {
        "Go (proxy-wasm-go-sdk)".to_string()
    } else if named("proxy_wasm")
        || (produced("language: Rust") && exported("proxy_on_memory_allocate"))
    {
        "Rust (proxy-wasm-rust-sdk)".to_string()
    } else if emscripten || named("proxy_wasm_api") || produced("Emscripten") {
        "C++ (proxy-wasm-cpp-sdk, Emscripten)".to_string()
    } else if exported("__new")
        || exported("__pin")
        || exported("__rtti_base")
        || assemblyscript_abort
    {
        "AssemblyScript (proxy-runtime)".to_string()
    } else if produced("language: Rust") {
        "Rust".to_string()
    } else if produced("language: C") {
        "C/C++".to_string()
    } else {
        "unknown (hand-written or unrecognised toolchain)".to_string()
    }
}
