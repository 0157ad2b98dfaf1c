//! The `sluice` binary: parses arguments and calls into the library crates. It must hold no logic
//! of its own beyond presenting results and mapping errors to exit codes.

#![forbid(unsafe_code)]

/// Writes a line to stdout, as `println!` does, but returns the error (a closed pipe) instead of
/// panicking on it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod build;
mod inspect;
mod new;
mod registry;
mod run;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A proxy allocates and frees small buffers for every request. Under the benchmark load, glibc's
/// malloc and free took about 15% of the CPU profile; with mimalloc, about 6%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: a Proxy-Wasm gateway and plugin toolkit", long_about = None)]
struct Cli {
    /// Log filter for diagnostics on stderr (tracing syntax, e.g. `info` or `sluice_proxy=debug`).
    /// Plugin logs have the target `plugin`; which of them are emitted is set per plugin with
    /// `sluice run --plugin-log-level` and the admin API's /logging
    #[arg(
        long,
        global = true,
        env = "SLUICE_LOG",
        default_value = "warn,sluice=info,plugin=trace"
    )]
    log: String,
    /// How diagnostics on stderr are written: `text` (one line per event, coloured only on a
    /// terminal) or `json` (one JSON object per line)
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files against the real plugin, with no proxy and no network (docs/scenarios.md)
    Test {
        /// Scenario files (YAML)
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Print one JSON report on stdout instead of text
        #[arg(long)]
        json: bool,
    },
    /// Describe a .wasm module: ABI version, SDK, callbacks, imports sluice cannot provide, sha256
    Inspect {
        /// The .wasm file, or a file://, http(s):// or oci:// URL (fetched into the module cache)
        wasm: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Speak plain HTTP to this registry (HOST or HOST:PORT, or `*`; repeatable)
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Run the proxy: plugins in order in front of an upstream (the built-in echo upstream by default)
    Run(Box<run::RunArgs>),
    /// Validate a config file: every error with its place, then load and start its plugins once
    Check {
        /// The config file (WasmPlugin and Proxy documents)
        file: PathBuf,
        /// Speak plain HTTP to this registry (HOST or HOST:PORT, or `*`; repeatable)
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Create a plugin project: builds with `sluice build`, passes `sluice test tests/*.yaml`, and
    /// carries a wasmplugin.yaml
    New {
        /// The project directory to create; its name names the plugin (lowercase, digits, `-`)
        dir: PathBuf,
        /// The plugin language: rust or assemblyscript
        #[arg(long, default_value = "rust")]
        lang: String,
    },
    /// Print the Istio WasmPlugin for a pushed plugin (oci url, image digest as sha256), the YAML
    /// `sluice run --config` and `kubectl apply` both accept
    Manifest {
        /// HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST] (oci:// optional)
        reference: String,
        /// metadata.name [default: the repository's last path segment]
        #[arg(long)]
        name: Option<String>,
        /// pluginConfig from this JSON or YAML file
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where in Istio's filter chain the plugin goes
        #[arg(long, default_value = "UNSPECIFIED_PHASE", value_parser = ["AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"])]
        phase: String,
        /// Order within the phase (higher first)
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// What happens to requests when the plugin fails
        #[arg(long, default_value = "FAIL_CLOSE", value_parser = ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"])]
        fail_strategy: String,
        /// pluginName (Envoy's root_id), for modules with several root contexts
        #[arg(long)]
        plugin_name: Option<String>,
        /// Speak plain HTTP to this registry (HOST or HOST:PORT, or `*`; repeatable)
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Push a .wasm module to an OCI registry; prints the image digest (what a WasmPlugin's sha256 pins)
    Push {
        /// The .wasm file
        wasm: PathBuf,
        /// Where to: HOST[:PORT]/REPOSITORY:TAG (oci:// optional)
        reference: String,
        /// The image layout: compat (a tar+gzip layer holding plugin.wasm, what Istio's agent tries
        /// first), wasm-layer (Solo's Wasm image) or artifact (CNCF Wasm artifact)
        #[arg(long, default_value = "compat", value_parser = registry::parse_format)]
        format: sluice_fetch::Format,
        /// Speak plain HTTP to this registry (HOST or HOST:PORT, or `*`; repeatable)
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Pull a plugin from an OCI registry into the module cache; prints the image digest
    Pull {
        /// HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST] (oci:// optional)
        reference: String,
        /// Also copy the module to this file
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Refuse the image unless its digest is this (hex, with or without sha256:): the image's
        /// manifest digest, as `sluice push` prints it and a WasmPlugin's sha256 pins it; not the
        /// module's sha256
        #[arg(long)]
        sha256: Option<String>,
        /// Speak plain HTTP to this registry (HOST or HOST:PORT, or `*`; repeatable)
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Build a Rust plugin project for wasm32-wasip1 (release) and inspect the result
    Build {
        /// The plugin project (a directory with Cargo.toml); defaults to the current directory
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Build without optimizations (debug profile)
        #[arg(long)]
        debug: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!(
                "error: --log `{}`: {error} (expected tracing filter syntax, e.g. `info` or `warn,sluice_proxy=debug`)",
                cli.log
            );
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = match cli.command {
        Command::Test { scenarios, json } => test::run(&scenarios, json),
        Command::Inspect {
            wasm,
            json,
            insecure_registries,
        } => inspect::run(&wasm, json, &insecure_registries),
        Command::Build { dir, debug } => build::run(&dir, debug),
        Command::Run(args) => run::run(*args),
        Command::Check {
            file,
            insecure_registries,
        } => run::check(&file, &insecure_registries),
        Command::New { dir, lang } => new::run(&dir, &lang),
        Command::Manifest {
            reference,
            name,
            config,
            phase,
            priority,
            fail_strategy,
            plugin_name,
            insecure_registries,
        } => registry::manifest(
            &reference,
            &registry::ManifestOptions {
                name: name.as_deref(),
                config: config.as_deref(),
                phase: &phase,
                priority,
                fail_strategy: &fail_strategy,
                plugin_name: plugin_name.as_deref(),
            },
            &insecure_registries,
        ),
        Command::Push {
            wasm,
            reference,
            format,
            insecure_registries,
        } => registry::push(&wasm, &reference, format, &insecure_registries),
        Command::Pull {
            reference,
            output,
            sha256,
            insecure_registries,
        } => registry::pull(
            &reference,
            output.as_deref(),
            sha256.as_deref(),
            &insecure_registries,
        ),
    };
    match result {
        Ok(code) => code,
        // A reader that went away (`sluice inspect --json X | head`) is not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error and its causes on one line, each cause once: library errors often say their cause
/// in their own message already.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Where remote plugin modules are cached (next to the compiled ones), and which registries are
/// spoken to over plain HTTP.
fn fetch_options(insecure_registries: &[String]) -> anyhow::Result<sluice_fetch::Options> {
    let cache_dir = sluice_host::EngineOptions::default_cache_dir()
        .as_deref()
        .and_then(std::path::Path::parent)
        .map(|base| base.join("modules"))
        .ok_or_else(|| {
            anyhow::anyhow!("no place for the module cache: set SLUICE_CACHE_DIR or HOME")
        })?;
    Ok(sluice_fetch::Options {
        insecure_registries: insecure_registries.to_vec(),
        ..sluice_fetch::Options::new(cache_dir)
    })
}

/// The engine every command uses, with the compiled-module cache in its usual place.
fn engine() -> anyhow::Result<sluice_host::Engine> {
    let options = sluice_host::EngineOptions {
        cache_dir: sluice_host::EngineOptions::default_cache_dir(),
    };
    Ok(sluice_host::Engine::new(options)?)
}
