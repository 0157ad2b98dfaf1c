//! `sluice new NAME`: a plugin project that builds with `sluice build`, passes its own scenarios
//! with `sluice test`, and carries the Istio WasmPlugin that runs it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// A template: (path in the project, text with `{{name}}` and `{{crate}}`).
type Template = [(&'static str, &'static str)];

const RUST: &Template = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    (
        "tests/headers.yaml",
        include_str!("../templates/rust/tests/headers.yaml"),
    ),
    (
        "tests/bad-config.yaml",
        include_str!("../templates/rust/tests/bad-config.yaml"),
    ),
    (
        "wasmplugin.yaml",
        include_str!("../templates/rust/wasmplugin.yaml"),
    ),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
];

const ASSEMBLYSCRIPT: &Template = &[
    (
        "package.json",
        include_str!("../templates/assemblyscript/package.json"),
    ),
    (
        "assembly/index.ts",
        include_str!("../templates/assemblyscript/assembly/index.ts"),
    ),
    (
        "tests/headers.yaml",
        include_str!("../templates/assemblyscript/tests/headers.yaml"),
    ),
    (
        "tests/bad-config.yaml",
        include_str!("../templates/assemblyscript/tests/bad-config.yaml"),
    ),
    (
        "wasmplugin.yaml",
        include_str!("../templates/assemblyscript/wasmplugin.yaml"),
    ),
    (
        "README.md",
        include_str!("../templates/assemblyscript/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../templates/assemblyscript/gitignore"),
    ),
];

/// A name Kubernetes, Cargo and Istio all accept: lowercase letters, digits and `-`, starting
/// with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "`{name}`: a plugin name is lowercase letters, digits and `-`, starts with a letter, does not end with `-` and has at most 63 characters (it names the crate and the WasmPlugin)"
        );
    }
    Ok(())
}

pub fn run(dir: &Path, lang: &str) -> anyhow::Result<ExitCode> {
    let (template, described) = match lang {
        "rust" => (RUST, "Rust, proxy-wasm 0.2.5"),
        "assemblyscript" => (
            ASSEMBLYSCRIPT,
            "AssemblyScript 0.14, @solo-io/proxy-runtime 0.1.8",
        ),
        other => bail!("--lang {other}: expected rust or assemblyscript"),
    };
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a directory name", dir.display()))?;
    check_name(name)?;
    if dir.exists() {
        bail!(
            "{}: already exists; `sluice new` only creates new projects",
            dir.display()
        );
    }
    let crate_name = name.replace('-', "_");
    for (path, text) in template {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name);
        std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    out!("created {} ({described})", dir.display());
    out!(
        "  cd {} && sluice build && sluice test tests/*.yaml",
        dir.display()
    );
    out!("  sluice run --config wasmplugin.yaml   # then: curl -si http://127.0.0.1:10000/");
    Ok(ExitCode::SUCCESS)
}
