//! `sluice run`: the proxy, from command-line flags.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use sluice_config::FailStrategy;
use sluice_host::Limits;
use sluice_proxy::{PluginConfig, ProxyConfig, Upstream};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Where requests go after the plugins (http://HOST:PORT); the built-in echo upstream when absent
    #[arg(long)]
    upstream: Option<String>,
    /// A plugin: a .wasm file, or a plugin project directory (built first); repeat for a chain
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// Configuration of the --plugin at the same position (JSON, or any text)
    #[arg(long = "plugin-config")]
    plugin_configs: Vec<String>,
    /// A cluster plugins may call: NAME=HOST:PORT (repeatable; outbound|PORT||HOST needs none)
    #[arg(long = "cluster")]
    clusters: Vec<String>,
    /// Where the admin API listens (/ready, /stats in Prometheus text, /plugins); `off` disables it
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// Worker threads, each with its own listener and plugin instances
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    workers: usize,
    /// What happens to requests when a plugin fails: FAIL_CLOSE, FAIL_OPEN or FAIL_RELOAD
    #[arg(long, default_value = "FAIL_CLOSE", value_parser = parse_fail_strategy)]
    fail_strategy: FailStrategy,
}

fn admin_address(text: &str) -> anyhow::Result<Option<SocketAddr>> {
    if text == "off" {
        return Ok(None);
    }
    let address = text
        .parse()
        .with_context(|| format!("--admin `{text}`: expected an IP:PORT address or `off`"))?;
    Ok(Some(address))
}

fn parse_fail_strategy(text: &str) -> Result<FailStrategy, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("`{text}`: expected FAIL_CLOSE, FAIL_OPEN or FAIL_RELOAD"))
}

fn address(text: &str, what: &str) -> anyhow::Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("{what} `{text}`: not a host:port"))?
        .next()
        .with_context(|| format!("{what} `{text}`: resolves to no address"))
}

fn upstream(url: Option<&str>) -> anyhow::Result<Upstream> {
    let Some(url) = url else {
        return Ok(Upstream::Echo);
    };
    let Some(rest) = url.strip_prefix("http://") else {
        bail!(
            "--upstream `{url}`: only http:// upstreams are supported so far (TLS upstreams come with the config file)"
        );
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Upstream::Http {
        address: address(&authority, "--upstream")?,
        authority,
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.plugin_configs.len() > args.plugins.len() {
        bail!(
            "{} --plugin-config given for {} --plugin: each --plugin-config belongs to the --plugin at the same position",
            args.plugin_configs.len(),
            args.plugins.len()
        );
    }
    let engine = crate::engine()?;
    let mut plugins = Vec::new();
    for (index, path) in args.plugins.iter().enumerate() {
        let wasm = if path.is_dir() {
            crate::build::build(path, false)?
        } else {
            path.clone()
        };
        let code = engine
            .load_file(&wasm)
            .with_context(|| format!("--plugin {}", path.display()))?;
        let name = wasm.file_stem().map_or_else(
            || format!("plugin-{index}"),
            |s| s.to_string_lossy().replace('_', "-"),
        );
        let configuration = args.plugin_configs.get(index).map(|text| {
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(json) => sluice_config::plugin_configuration_bytes(Some(&json)),
                Err(_) => text.as_bytes().to_vec(),
            }
        });
        plugins.push(PluginConfig {
            root_id: name.clone(),
            name,
            code,
            configuration: configuration.unwrap_or_default(),
            vm_id: String::new(),
            env: Vec::new(),
            fail_strategy: args.fail_strategy,
            limits: Limits::default(),
        });
    }
    let mut clusters = HashMap::new();
    for cluster in &args.clusters {
        let Some((name, target)) = cluster.split_once('=') else {
            bail!("--cluster `{cluster}`: expected NAME=HOST:PORT");
        };
        clusters.insert(name.to_string(), address(target, "--cluster")?);
    }
    let upstream = upstream(args.upstream.as_deref())?;
    let names: Vec<String> = plugins.iter().map(|p| p.name.clone()).collect();
    let started = std::time::Instant::now();
    let proxy = sluice_proxy::start(ProxyConfig {
        listen: args.listen,
        workers: args.workers,
        upstream: upstream.clone(),
        clusters,
        plugins,
        buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
        engine,
        admin: admin_address(&args.admin)?,
    })?;
    let upstream = match upstream {
        Upstream::Echo => "the built-in echo upstream".to_string(),
        Upstream::Http { authority, .. } => format!("http://{authority}"),
    };
    let plugins = if names.is_empty() {
        "no plugins".to_string()
    } else {
        format!("plugins: {}", names.join(" → "))
    };
    eprintln!(
        "sluice listening on http://{} ({} workers, {plugins}, upstream: {upstream}; ready in {:.1?})",
        proxy.address,
        args.workers,
        started.elapsed()
    );
    if let Some(admin) = proxy.admin_address {
        eprintln!("admin API on http://{admin} (/ready, /stats, /plugins)");
    }
    println!("try: curl -i http://{}/hello", proxy.address);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    })?;
    eprintln!("sluice: draining in-flight requests and stopping");
    proxy.stop();
    Ok(ExitCode::SUCCESS)
}
