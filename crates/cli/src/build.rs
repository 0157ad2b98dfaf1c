//! `sluice build`: builds a Rust plugin project for wasm32-wasip1 and inspects the result.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};

const TARGET: &str = "wasm32-wasip1";

pub fn run(dir: &Path, debug: bool) -> anyhow::Result<ExitCode> {
    let wasm = build(dir, debug)?;
    let bytes = std::fs::read(&wasm)
        .with_context(|| format!("{}: cannot read the built module", wasm.display()))?;
    let engine = crate::engine()?;
    let (info, problem) = engine.inspect(&bytes)?;
    crate::inspect::print_text(
        &wasm,
        &info,
        problem.as_ref().map(ToString::to_string).as_deref(),
    )?;
    Ok(if problem.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Builds a plugin project and returns the path of its `.wasm`.
pub fn build(dir: &Path, debug: bool) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        if dir.join("package.json").is_file() {
            return build_assemblyscript(dir);
        }
        bail!(
            "{}: no Cargo.toml or package.json: `sluice build` builds a Rust plugin project (a cdylib crate using the proxy-wasm SDK) or an AssemblyScript one (`sluice new --lang assemblyscript`)",
            dir.display()
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args([
            "build",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest);
    if !debug {
        command.arg("--release");
    }
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("`{cargo}` not found: install Rust with rustup (https://rustup.rs), then `rustup target add {TARGET}`"),
            _ => anyhow::anyhow!("cannot run `{cargo}`: {e}"),
        })?;
    let artifacts = wasm_artifacts(&output.stdout);
    if !output.status.success() {
        if !target_installed() {
            bail!("the {TARGET} target is not installed: run `rustup target add {TARGET}`");
        }
        bail!(
            "cargo build failed for {} (see the compiler output above)",
            manifest.display()
        );
    }
    let Some(wasm) = artifacts.last() else {
        bail!(
            "{}: the build produced no .wasm: the plugin crate needs `[lib] crate-type = [\"cdylib\"]`",
            manifest.display()
        );
    };
    Ok(wasm.clone())
}

/// An AssemblyScript project as `sluice new --lang assemblyscript` makes it: `npm install` when
/// `node_modules` is missing, then `npm run build`, which writes `build/<package name>.wasm`.
fn build_assemblyscript(dir: &Path) -> anyhow::Result<PathBuf> {
    let package: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("package.json"))
            .with_context(|| format!("{}: cannot read package.json", dir.display()))?,
    )
    .with_context(|| format!("{}: package.json is not JSON", dir.display()))?;
    let name = package["name"]
        .as_str()
        .with_context(|| format!("{}: package.json has no name", dir.display()))?;
    if package["scripts"]["build"].as_str().is_none() {
        bail!(
            "{}: package.json has no `build` script (asc ... -b build/{name}.wasm)",
            dir.display()
        );
    }
    let npm = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("npm")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    anyhow::anyhow!("`npm` not found: install Node.js and npm")
                }
                _ => anyhow::anyhow!("cannot run `npm`: {e}"),
            })?;
        if !status.success() {
            bail!("`npm {}` failed in {}", args.join(" "), dir.display());
        }
        Ok(())
    };
    if !dir.join("node_modules").is_dir() {
        npm(&["install", "--no-audit", "--no-fund"])?;
    }
    npm(&["run", "--silent", "build"])?;
    let wasm = dir.join("build").join(format!("{name}.wasm"));
    if !wasm.is_file() {
        bail!("{}: the build wrote no build/{name}.wasm", dir.display());
    }
    Ok(wasm)
}

/// The `.wasm` files cargo reports in its JSON messages.
fn wasm_artifacts(stdout: &[u8]) -> Vec<PathBuf> {
    stdout
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .filter(|f| f.extension().is_some_and(|e| e == "wasm"))
        .collect()
}

fn target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        // Without rustup the target may come from elsewhere; do not claim it is missing.
        .unwrap_or(true)
}
