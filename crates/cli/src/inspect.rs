//! `sluice inspect`: what a module is and whether sluice can run it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sluice_host::ModuleInfo;

/// `what` is a file, or a `file://`, `http(s)://` or `oci://` URL fetched as `sluice run` fetches
/// a plugin (through the module cache).
pub fn run(what: &str, json: bool, insecure_registries: &[String]) -> anyhow::Result<ExitCode> {
    let (bytes, shown) = if what.contains("://") {
        let fetcher = sluice_fetch::Fetcher::new(crate::fetch_options(insecure_registries)?);
        let fetched = fetcher.fetch(&sluice_fetch::Request {
            url: what,
            base_dir: Path::new("."),
            sha256: None,
            pull_policy: None,
            pull_secret: None,
        })?;
        if let Some(digest) = &fetched.image_digest {
            tracing::info!("{what}: image {digest}, module {}", fetched.path.display());
        }
        (fetched.bytes, what.to_string())
    } else {
        let bytes = std::fs::read(what).with_context(|| format!("{what}: cannot read"))?;
        (bytes, what.to_string())
    };
    let path = Path::new(&shown);
    let engine = crate::engine()?;
    let (info, problem) = engine
        .inspect(&bytes)
        .with_context(|| format!("{}: not a loadable WebAssembly module", path.display()))?;
    let problem = problem.map(|p| p.to_string());
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&to_json(path, &info, problem.as_deref()))?
        );
    } else {
        print_text(path, &info, problem.as_deref())?;
    }
    Ok(if problem.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Text report, shared with `sluice build`.
pub fn print_text(path: &Path, info: &ModuleInfo, problem: Option<&str>) -> std::io::Result<()> {
    out!("{}", path.display());
    out!(
        "  loadable:     {}",
        problem.map_or("yes".to_string(), |p| format!("NO: {p}"))
    );
    let abi = match &info.abi {
        Ok(abi) => abi.to_string(),
        Err(None) => "none (no proxy_abi_version_* export)".into(),
        Err(Some(marker)) => format!("unsupported ({marker})"),
    };
    out!("  abi:          {abi}");
    out!("  sdk:          {}", info.sdk);
    out!(
        "  entry point:  {}",
        if info.entry_points.is_empty() {
            "none".into()
        } else {
            info.entry_points.join(" then ")
        }
    );
    out!(
        "  allocator:    {}",
        info.allocator.as_deref().unwrap_or("none")
    );
    let memory = info.memory_pages.map_or("none".to_string(), |(min, max)| {
        let max = max.map_or("no maximum".to_string(), |m| format!("max {} KiB", m * 64));
        format!("{} KiB initial, {max}", min * 64)
    });
    out!("  memory:       {memory}");
    out!("  size:         {} bytes", info.size);
    out!("  sha256:       {}", info.sha256);
    out!("  callbacks:    {}", info.callbacks.join(", "));
    let missing = info.missing_imports();
    out!(
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
        out!(
            "    {mark} {}::{} {}",
            import.module,
            import.name,
            import.signature
        );
    }
    if !info.producers.is_empty() {
        out!("  producers:    {}", info.producers.join("; "));
    }
    Ok(())
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
