//! `sluice push` and `sluice pull`: OCI registry I/O. Progress goes to stderr, the digest to
//! stdout, so that `digest=$(sluice push …)` works.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sluice_fetch::{Fetcher, Format};

pub fn parse_format(name: &str) -> Result<Format, String> {
    Format::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        format!("`{name}`: expected one of {}", names.join(", "))
    })
}

pub fn push(
    wasm: &Path,
    reference: &str,
    format: Format,
    insecure_registries: &[String],
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(wasm).with_context(|| format!("{}: cannot read", wasm.display()))?;
    let fetcher = Fetcher::new(crate::fetch_options(insecure_registries)?);
    tracing::info!(
        "pushing {} ({} bytes) to {reference} as {}",
        wasm.display(),
        bytes.len(),
        format.name()
    );
    let pushed = fetcher.push(&bytes, reference, format)?;
    tracing::info!(
        "pushed: module sha256 {}, image digest {}",
        pushed.module_sha256,
        pushed.digest
    );
    out!("{}", pushed.digest);
    Ok(ExitCode::SUCCESS)
}

pub fn pull(
    reference: &str,
    output: Option<&Path>,
    sha256: Option<&str>,
    insecure_registries: &[String],
) -> anyhow::Result<ExitCode> {
    let fetcher = Fetcher::new(crate::fetch_options(insecure_registries)?);
    tracing::info!("pulling {reference}");
    let pinned = sha256.map(|d| d.trim_start_matches("sha256:").to_ascii_lowercase());
    let fetched = fetcher.pull(reference, pinned.as_deref())?;
    tracing::info!(
        "pulled: module sha256 {} in {}",
        fetched.sha256,
        fetched.path.display()
    );
    if let Some(output) = output {
        std::fs::copy(&fetched.path, output)
            .with_context(|| format!("{}: cannot write", output.display()))?;
        tracing::info!("wrote {}", output.display());
    }
    out!("{}", fetched.image_digest.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// What `sluice manifest` writes: an Istio WasmPlugin, in the order people read one.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmPlugin {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: Spec,
}

#[derive(serde::Serialize)]
struct Metadata {
    name: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    url: String,
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_name: Option<String>,
    phase: String,
    priority: i64,
    fail_strategy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_config: Option<serde_json::Value>,
}

/// The options of `sluice manifest` beyond the reference.
pub struct ManifestOptions<'a> {
    pub name: Option<&'a str>,
    pub config: Option<&'a Path>,
    pub phase: &'a str,
    pub priority: i64,
    pub fail_strategy: &'a str,
    pub plugin_name: Option<&'a str>,
}

pub fn manifest(
    reference: &str,
    options: &ManifestOptions<'_>,
    insecure_registries: &[String],
) -> anyhow::Result<ExitCode> {
    let reference = reference.trim_start_matches("oci://");
    let plugin_config = options
        .config
        .map(|file| -> anyhow::Result<serde_json::Value> {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("{}: cannot read", file.display()))?;
            // JSON is YAML, so one parser reads both.
            yaml_serde::from_str(&text)
                .with_context(|| format!("{}: neither JSON nor YAML", file.display()))
        })
        .transpose()?;
    let fetcher = Fetcher::new(crate::fetch_options(insecure_registries)?);
    tracing::info!("pulling {reference} to check it holds a plugin and to read its digest");
    let fetched = fetcher.pull(reference, None)?;
    let digest = fetched.image_digest.unwrap_or_default();
    let name = match options.name {
        Some(name) => name.to_string(),
        None => {
            // The repository's last path segment, without a digest or a tag.
            let without_digest = reference.split('@').next().unwrap_or(reference);
            let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
            last.split(':').next().unwrap_or(last).to_string()
        }
    };
    let document = WasmPlugin {
        api_version: sluice_config::WASM_PLUGIN_API,
        kind: "WasmPlugin",
        metadata: Metadata { name },
        spec: Spec {
            url: format!("oci://{reference}"),
            sha256: digest.trim_start_matches("sha256:").to_string(),
            plugin_name: options.plugin_name.map(String::from),
            phase: options.phase.to_string(),
            priority: options.priority,
            fail_strategy: options.fail_strategy.to_string(),
            plugin_config,
        },
    };
    print!("{}", yaml_serde::to_string(&document)?);
    Ok(ExitCode::SUCCESS)
}
