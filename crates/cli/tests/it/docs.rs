//! The docs stay true: every file, Rust name and `sluice` flag that README.md, ARCHITECTURE.md,
//! docs/*.md and the plugin READMEs name must exist. A rename or a removal that forgets its docs
//! fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Markdown files users and contributors read.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("plugins/README.md"),
        root.join("fuzz/README.md"),
    ];
    for dir in [
        "docs",
        "crates/cli/templates/rust",
        "crates/cli/templates/assemblyscript",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "md") {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// What a document says in code: inline spans and the lines of fenced blocks.
fn code(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push(line.to_string());
            continue;
        }
        // Inline spans: the odd pieces between backticks.
        out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
    }
    out
}

/// Relative links: `[text](path)` and `[text](path#anchor)`.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|target| !target.contains("://") && !target.starts_with('#'))
        .map(|target| target.split('#').next().unwrap_or_default().to_string())
        .filter(|target| !target.is_empty())
        .collect()
}

/// Every Rust source of the repository, as one text to search names in.
fn sources(root: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name == "node_modules" || name.to_string_lossy().starts_with('.')
            {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "ts") {
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                out.push('\n');
            }
        }
    }
    let mut out = String::new();
    for dir in ["crates", "plugins", "fuzz"] {
        walk(&root.join(dir), &mut out);
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `word` occurs in `text` as a whole identifier.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

/// A Rust-looking name in a code span: `Type`, `Type::item`, `module::function`, `function()`.
fn rust_name(span: &str) -> Option<Vec<String>> {
    let span = span.trim().trim_end_matches("()");
    if span.is_empty() || !span.chars().all(|c| is_word_char(c) || c == ':') {
        return None;
    }
    let segments: Vec<&str> = span.split("::").collect();
    if segments.iter().any(|s| s.is_empty() || s.contains(':')) {
        return None;
    }
    let camel = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars().any(|c| c.is_ascii_lowercase())
            && !s.contains('_')
            && s.chars().skip(1).any(|c| c.is_ascii_uppercase())
    };
    // One CamelCase word with two capitals (`ProxyConfig`, not `Proxy` or `WasmPlugin` alone
    // would pass too), or a path with `::`.
    if segments.len() > 1 || camel(segments[0]) {
        Some(segments.into_iter().map(str::to_string).collect())
    } else {
        None
    }
}

/// Words that look like Rust names but name something outside this repository.
const FOREIGN: &[&str] = &[
    // Istio, Envoy and SDK names the docs compare with.
    "WasmPlugin",
    "EnvoyFilter",
    "VirtualService",
    "DestinationRule",
    "PluginConfig",
    "RootContext",
    "HttpContext",
    "StreamContext",
    "FilterHeadersStatus",
    "FilterDataStatus",
    "RemoteDataSource",
    "VmConfig",
    "TypedExtensionConfig",
    "PortSelector",
    "EnvValueSource",
    "FailStrategy",
    "PluginPhase",
    "PullPolicy",
    "ImagePullPolicy",
    "WorkloadSelector",
    "ContinueAndEndStream",
    "StopIteration",
    "StopAllIterationAndBuffer",
    "StopAllIterationAndWatermark",
    "ContinueAndDontEndStream",
    "StopIterationAndBuffer",
    "StopIterationAndWatermark",
    "StopIterationNoBuffer",
    "LocalSet",
    "TokioIo",
    "GitHub",
    "JavaScript",
    "TypeScript",
    "AssemblyScript",
    "WebAssembly",
    "WebSocket",
    "HashMap",
    "BTreeMap",
    "BTreeSet",
    "HashSet",
    "RefCell",
    "JoinHandle",
    "SystemTime",
    "CloudEvents",
    "OpenTelemetry",
    "DataDog",
    "TinyGo",
];

#[test]
fn the_docs_name_only_files_rust_names_and_flags_that_exist() {
    let root = sluice_test_support::repo_root();
    let rust = sources(&root);
    let flags = sluice_flags();
    let mut wrong = Vec::new();
    for document in documents(&root) {
        let text = std::fs::read_to_string(&document).unwrap();
        let shown = document.strip_prefix(&root).unwrap().display().to_string();
        let dir = document.parent().unwrap();
        let template = shown.starts_with("crates/cli/templates/");
        for link in links(&text) {
            if !dir.join(&link).exists() && !template {
                wrong.push(format!("{shown}: link to `{link}`, which does not exist"));
            }
        }
        for span in code(&text) {
            // Repository paths.
            for token in span.split_whitespace() {
                let token = token.trim_matches(|c: char| ",;:()'\"".contains(c));
                let tops = [
                    "crates/",
                    "plugins/",
                    "fixtures/",
                    "examples/",
                    "docs/",
                    "bench/",
                    "fuzz/",
                    ".ci/",
                ];
                let is_path = tops.iter().any(|top| token.starts_with(top))
                    && !token.contains(['*', '{', '<', '$', '|']);
                if is_path && !template && !root.join(token).exists() {
                    wrong.push(format!("{shown}: names `{token}`, which does not exist"));
                }
            }
            // Rust names.
            if let Some(segments) = rust_name(&span) {
                if FOREIGN.contains(&segments[0].as_str()) && segments.len() == 1 {
                    continue;
                }
                for segment in &segments {
                    if !has_word(&rust, segment) {
                        wrong.push(format!(
                            "{shown}: names `{span}`, but `{segment}` is in no Rust source"
                        ));
                        break;
                    }
                }
            }
            // Flags of `sluice` command lines.
            let line = span.trim_start().trim_start_matches("$ ");
            if let Some(command) = line.strip_prefix("sluice ") {
                let command = command.split('#').next().unwrap_or_default();
                for token in command.split_whitespace() {
                    let flag = token.split('=').next().unwrap_or_default();
                    if flag.starts_with("--")
                        && flag.len() > 2
                        && flag[2..]
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c == '-')
                        && !flags.contains(flag)
                    {
                        wrong.push(format!(
                            "{shown}: `sluice {}` uses {flag}, which no sluice command takes",
                            command.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "stale docs:\n{}", wrong.join("\n"));
}

/// Every `--flag` some `sluice` command accepts, from `--help`.
fn sluice_flags() -> BTreeSet<String> {
    let help = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let commands: Vec<String> = help(&[])
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .filter(|command| command != "help")
        .collect();
    assert!(commands.len() > 5, "{commands:?}");
    let mut flags = BTreeSet::new();
    for command in commands {
        for token in help(&[&command]).split_whitespace() {
            let flag = token.trim_end_matches([',', '>', ']']);
            let flag = flag.split(['=', '[', '<']).next().unwrap_or_default();
            if flag.starts_with("--") {
                flags.insert(flag.to_string());
            }
        }
    }
    flags
}
