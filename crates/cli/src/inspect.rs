//! `sluice inspect`: what a module is and whether sluice can run it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sluice_host::ModuleInfo;

pub fn run(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let engine = crate::engine()?;
    let (info, problem) = engine
        .inspect(&bytes)
        .with_context(|| format!("{}: not a loadable WebAssembly module", path.display()))?;
    let problem = problem.map(|p| p.to_string());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(path, &info, problem.as_deref()))?
        );
    } else {
        print_text(path, &info, problem.as_deref());
    }
    Ok(if problem.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Text report, shared with `sluice build`.
pub fn print_text(path: &Path, info: &ModuleInfo, problem: Option<&str>) {
    println!("{}", path.display());
    println!(
        "  loadable:     {}",
        problem.map_or("yes".to_string(), |p| format!("NO: {p}"))
    );
    let abi = match &info.abi {
        Ok(abi) => abi.to_string(),
        Err(None) => "none (no proxy_abi_version_* export)".into(),
        Err(Some(marker)) => format!("unsupported ({marker})"),
    };
    println!("  abi:          {abi}");
    println!("  sdk:          {}", info.sdk);
    println!(
        "  entry point:  {}",
        if info.entry_points.is_empty() {
            "none".into()
        } else {
            info.entry_points.join(" then ")
        }
    );
    println!(
        "  allocator:    {}",
        info.allocator.as_deref().unwrap_or("none")
    );
    let memory = info.memory_pages.map_or("none".to_string(), |(min, max)| {
        let max = max.map_or("no maximum".to_string(), |m| format!("max {} KiB", m * 64));
        format!("{} KiB initial, {max}", min * 64)
    });
    println!("  memory:       {memory}");
    println!("  size:         {} bytes", info.size);
    println!("  sha256:       {}", info.sha256);
    println!("  callbacks:    {}", info.callbacks.join(", "));
    let missing = info.missing_imports();
    println!(
        "  imports:      {} ({} provided by sluice{})",
        info.imports.len(),
        info.imports.len() - missing.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!("; MISSING: {}", missing.join(", "))
        }
    );
    for import in &info.imports {
        let mark = if import.provided { " " } else { "!" };
        println!(
            "    {mark} {}::{} {}",
            import.module, import.name, import.signature
        );
    }
    if !info.producers.is_empty() {
        println!("  producers:    {}", info.producers.join("; "));
    }
}

fn to_json(path: &Path, info: &ModuleInfo, problem: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "file": path.display().to_string(),
        "loadable": problem.is_none(),
        "problem": problem,
        "abi": info.abi.as_ref().ok().map(ToString::to_string),
        "abiMarkerError": match &info.abi { Err(Some(m)) => Some(m.clone()), _ => None },
        "sdk": info.sdk,
        "entryPoints": info.entry_points,
        "allocator": info.allocator,
        "memoryPages": info.memory_pages.map(|(min, max)| serde_json::json!({"initial": min, "maximum": max})),
        "size": info.size,
        "sha256": info.sha256,
        "callbacks": info.callbacks,
        "exports": info.exports.iter().map(|(name, ty)| serde_json::json!({"name": name, "type": ty})).collect::<Vec<_>>(),
        "imports": info.imports.iter().map(|i| serde_json::json!({
            "module": i.module, "name": i.name, "signature": i.signature, "provided": i.provided,
        })).collect::<Vec<_>>(),
        "missingImports": info.missing_imports(),
        "producers": info.producers,
        "customSections": info.custom_sections,
        "nameSection": info.has_name_section,
    })
}
