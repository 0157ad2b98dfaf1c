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
    eprintln!(
        "pushing {} ({} bytes) to {reference} as {}",
        wasm.display(),
        bytes.len(),
        format.name()
    );
    let pushed = fetcher.push(&bytes, reference, format)?;
    eprintln!(
        "pushed: module sha256 {}, image digest {}",
        pushed.module_sha256, pushed.digest
    );
    println!("{}", pushed.digest);
    Ok(ExitCode::SUCCESS)
}

pub fn pull(
    reference: &str,
    output: Option<&Path>,
    sha256: Option<&str>,
    insecure_registries: &[String],
) -> anyhow::Result<ExitCode> {
    let fetcher = Fetcher::new(crate::fetch_options(insecure_registries)?);
    eprintln!("pulling {reference}");
    let pinned = sha256.map(|d| d.trim_start_matches("sha256:").to_ascii_lowercase());
    let fetched = fetcher.pull(reference, pinned.as_deref())?;
    eprintln!(
        "pulled: module sha256 {} in {}",
        fetched.sha256,
        fetched.path.display()
    );
    if let Some(output) = output {
        std::fs::copy(&fetched.path, output)
            .with_context(|| format!("{}: cannot write", output.display()))?;
        eprintln!("wrote {}", output.display());
    }
    println!("{}", fetched.image_digest.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
