//! `sluice run` (the proxy, from flags and/or a config file, with reload on SIGHUP and `--watch`)
//! and `sluice check` (the same config path up to the canary, without serving).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_config::{Cluster, ClusterKind, Config, FailStrategy, Plugin};
use sluice_host::Limits;
use sluice_proxy::{Reloader, Source};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Config file: Istio WasmPlugin documents and optionally a sluice Proxy document
    /// (listeners, routes, clusters); see docs/config.md
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, IP:PORT or HOST:PORT [default: 127.0.0.1:10000] (without a Proxy
    /// document)
    #[arg(long, value_parser = parse_address)]
    listen: Option<SocketAddr>,
    /// Serve TLS (with ALPN h2 and http/1.1) with this PEM certificate chain (without a Proxy document)
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where requests go after the plugins (http://HOST:PORT, or h2c://HOST:PORT for HTTP/2); the
    /// built-in echo upstream when absent
    #[arg(long)]
    upstream: Option<String>,
    /// A plugin: a .wasm file (path or file:// URL), an http(s):// or oci:// URL, or a plugin
    /// project directory (built first); repeat for a chain, which runs in the order given
    #[arg(long = "plugin")]
    plugins: Vec<String>,
    /// Configuration of the --plugin at the same position (JSON, or any text)
    #[arg(long = "plugin-config")]
    plugin_configs: Vec<String>,
    /// A cluster plugins may call: NAME=HOST:PORT, or NAME=h2c://HOST:PORT for an HTTP/2 one
    /// such as a gRPC service (repeatable; outbound|PORT||HOST needs none)
    #[arg(long = "cluster")]
    clusters: Vec<String>,
    /// A TCP listener: LISTEN=HOST:PORT proxies each connection to LISTEN on to HOST:PORT, through
    /// the --network-plugin plugins (repeatable)
    #[arg(long = "tcp")]
    tcp: Vec<String>,
    /// A network (L4) plugin for the --tcp listeners, given as --plugin is; repeat for a chain
    #[arg(long = "network-plugin")]
    network_plugins: Vec<String>,
    /// Configuration of the --network-plugin at the same position (JSON, or any text)
    #[arg(long = "network-plugin-config")]
    network_plugin_configs: Vec<String>,
    /// Where the admin API listens (the admin page at /, /ready, /stats, /plugins, /config_dump,
    /// /history, /logging, POST /reload);
    /// `off` disables it [default: 127.0.0.1:9901]
    #[arg(long)]
    admin: Option<String>,
    /// Worker threads, each with its own listeners and plugin instances [default: one per core]
    #[arg(long)]
    workers: Option<usize>,
    /// What happens to requests when a --plugin fails: FAIL_CLOSE, FAIL_OPEN or FAIL_RELOAD
    #[arg(long, default_value = "FAIL_CLOSE", value_parser = parse_fail_strategy)]
    fail_strategy: FailStrategy,
    /// Write one JSON line per request or TCP connection (with what the plugins did) to this
    /// file, or `-` for stdout
    #[arg(long)]
    access_log: Option<String>,
    /// The body of the 503 a request gets when a plugin fails: `empty` (Envoy's) or
    /// `descriptive` (`plugin 'NAME' failed`) [default: empty]
    #[arg(long, value_parser = parse_failure_body)]
    plugin_failure_body: Option<sluice_config::FailureBody>,
    /// The level plugins log at (trace, debug, info, warn, error, critical); change it at run time
    /// with POST /logging?level=L[&plugin=NAME] on the admin API
    #[arg(long, default_value = "warn", value_parser = parse_log_level)]
    plugin_log_level: sluice_abi::LogLevel,
    /// A registry (HOST or HOST:PORT, or `*`) to pull oci:// plugins from over plain HTTP
    /// (repeatable)
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Reload when the config file or a plugin's .wasm changes (also on SIGHUP and POST /reload)
    #[arg(long)]
    watch: bool,
}

fn parse_failure_body(text: &str) -> Result<sluice_config::FailureBody, String> {
    match text {
        "empty" => Ok(sluice_config::FailureBody::Empty),
        "descriptive" => Ok(sluice_config::FailureBody::Descriptive),
        _ => Err(format!("`{text}`: expected `empty` or `descriptive`")),
    }
}

fn parse_fail_strategy(text: &str) -> Result<FailStrategy, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("`{text}`: expected FAIL_CLOSE, FAIL_OPEN or FAIL_RELOAD"))
}

fn parse_log_level(text: &str) -> Result<sluice_abi::LogLevel, String> {
    sluice_abi::LogLevel::parse(text)
        .ok_or_else(|| format!("`{text}`: expected trace, debug, info, warn, error or critical"))
}

/// An IP:PORT, or a HOST:PORT whose host resolves (its first address, as Envoy takes it).
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    if !text.contains(':') {
        return Err(format!("`{text}`: expected IP:PORT or HOST:PORT"));
    }
    match text.to_socket_addrs() {
        Ok(mut addresses) => addresses
            .next()
            .ok_or_else(|| format!("`{text}`: the host resolves to no address")),
        Err(error) => Err(format!("`{text}`: {error}")),
    }
}

fn admin_address(text: Option<&str>) -> anyhow::Result<Option<SocketAddr>> {
    let text = text.unwrap_or(sluice_config::DEFAULT_ADMIN);
    if text == "off" {
        return Ok(None);
    }
    let address =
        parse_address(text).map_err(|error| anyhow::anyhow!("--admin {error} (or `off`)"))?;
    Ok(Some(address))
}

/// The `host:port` of an `http://` (HTTP/1.1) or `h2c://` (HTTP/2 cleartext) URL given to
/// `flag`, and whether it is HTTP/2.
fn endpoint_url(flag: &str, url: &str) -> anyhow::Result<(String, bool)> {
    let (rest, http2) = match (url.strip_prefix("http://"), url.strip_prefix("h2c://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => bail!(
            "{flag} `{url}`: expected http://HOST:PORT or h2c://HOST:PORT (TLS upstreams are not implemented yet)"
        ),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        bail!("{flag} `{url}`: no host");
    }
    let endpoint = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((endpoint, http2))
}

/// The config the flags describe: one listener whose one route goes to `--upstream` (or the echo
/// upstream), the `--cluster`s, and the `--plugin`s in the order given.
fn flags_config(args: &RunArgs) -> anyhow::Result<Config> {
    for (configs, plugins, flag) in [
        (&args.plugin_configs, &args.plugins, "plugin"),
        (
            &args.network_plugin_configs,
            &args.network_plugins,
            "network-plugin",
        ),
    ] {
        if configs.len() > plugins.len() {
            bail!(
                "{} --{flag}-config given for {} --{flag}: each --{flag}-config belongs to the --{flag} at the same position",
                configs.len(),
                plugins.len()
            );
        }
    }
    let upstream = args
        .upstream
        .as_deref()
        .map(|url| endpoint_url("--upstream", url))
        .transpose()?;
    let http2 = upstream.as_ref().is_some_and(|(_, http2)| *http2);
    let upstream = upstream.map(|(endpoint, _)| endpoint);
    let listen = args.listen.unwrap_or(sluice_config::DEFAULT_LISTEN);
    let mut config = Config::single_route(listen, upstream, admin_address(args.admin.as_deref())?);
    config.workers = args.workers;
    config.clusters[0].http2 = http2;
    config.access_log.clone_from(&args.access_log);
    if let Some(body) = args.plugin_failure_body {
        config.failure_body = body;
    }
    if let (Some(certificate), Some(key)) = (&args.tls_cert, &args.tls_key) {
        // Absolute, so that a config file elsewhere does not change what they name.
        let absolute = |path: &Path| std::path::absolute(path).map(|p| p.display().to_string());
        config.listeners[0].tls = Some(sluice_config::TlsFiles {
            certificate: absolute(certificate)?,
            private_key: absolute(key)?,
        });
    }
    for cluster in &args.clusters {
        let Some((name, target)) = cluster.split_once('=') else {
            bail!("--cluster `{cluster}`: expected NAME=HOST:PORT or NAME=h2c://HOST:PORT");
        };
        if config.cluster(name).is_some() {
            bail!("--cluster `{cluster}`: the name `{name}` is already taken");
        }
        // A bare HOST:PORT is an HTTP/1.1 cluster; a URL says which protocol.
        let (endpoint, http2) = if target.contains("://") {
            endpoint_url("--cluster", target)?
        } else {
            (target.to_string(), false)
        };
        let mut declared = Cluster::endpoint(name, endpoint);
        declared.http2 = http2;
        config.clusters.push(declared);
    }
    for (index, tcp) in args.tcp.iter().enumerate() {
        let parsed = tcp.split_once('=').and_then(|(listen, target)| {
            let listen = listen.parse::<std::net::SocketAddr>().ok()?;
            let (host, port) = target.rsplit_once(':')?;
            (!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
                .then(|| (listen, target.to_string()))
        });
        let Some((listen, target)) = parsed else {
            bail!("--tcp `{tcp}`: expected LISTEN=HOST:PORT, e.g. 127.0.0.1:15432=127.0.0.1:5432");
        };
        let name = format!("tcp-{index}");
        config.clusters.push(Cluster::endpoint(&name, target));
        config.listeners.push(sluice_config::Listener {
            name: name.clone(),
            address: listen,
            tls: None,
            routes: Vec::new(),
            tcp: Some(sluice_config::TcpProxy {
                cluster: name,
                idle_timeout: Some(sluice_config::DEFAULT_IDLE_TIMEOUT),
            }),
        });
    }
    let plugins = args
        .plugins
        .iter()
        .enumerate()
        .map(|(at, given)| (given, false, args.plugin_configs.get(at)));
    let network_plugins = args
        .network_plugins
        .iter()
        .enumerate()
        .map(|(at, given)| (given, true, args.network_plugin_configs.get(at)));
    for (index, (given, network, configuration)) in plugins.chain(network_plugins).enumerate() {
        let path = Path::new(given.strip_prefix("file://").unwrap_or(given));
        let wasm = if path.is_dir() {
            crate::build::build(path, false)?
        } else {
            path.to_path_buf()
        };
        let stem = wasm.file_stem().map_or_else(
            || format!("plugin-{index}"),
            |s| s.to_string_lossy().replace('_', "-"),
        );
        let name = if config.plugins.iter().any(|p| p.name == stem) {
            format!("{stem}-{}", index + 1)
        } else {
            stem
        };
        let configuration = configuration.map(|text| {
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|_| serde_json::Value::String(text.clone()))
        });
        let mut plugin = Plugin::local(
            name,
            wasm.display().to_string(),
            configuration,
            args.fail_strategy,
        );
        plugin.network = network;
        config.plugins.push(plugin);
    }
    Ok(config)
}

/// Loads a source, or explains every problem.
fn load(
    source: &Source,
    engine: &sluice_host::Engine,
) -> anyhow::Result<sluice_proxy::ProxyConfig> {
    source.load(engine).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!("the config cannot be used:\n{}", lines.join("\n"))
    })
}

fn source(args: &RunArgs) -> anyhow::Result<Source> {
    if args.config.is_some() && !(args.plugins.is_empty() && args.network_plugins.is_empty()) {
        bail!(
            "--plugin or --network-plugin with --config: describe the plugin in the config file as a WasmPlugin"
        );
    }
    Ok(Source {
        file: args.config.clone(),
        base: flags_config(args)?,
        limits: Limits::default(),
        buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
        plugin_log_level: args.plugin_log_level,
        fetch: crate::fetch_options(&args.insecure_registries)?,
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let source = source(&args)?;
    let engine = crate::engine()?;
    let started = std::time::Instant::now();
    let loaded = load(&source, &engine)?;
    if args.config.is_some() && loaded.config.listeners != source.base.listeners {
        for (flag, given) in [
            ("--listen", args.listen.is_some()),
            ("--upstream", args.upstream.is_some()),
            ("--cluster", !args.clusters.is_empty()),
            ("--tcp", !args.tcp.is_empty()),
            ("--tls-cert", args.tls_cert.is_some()),
        ] {
            if given {
                bail!(
                    "{flag} and a config file with a Proxy document: the document's listeners, routes and clusters are used; set it there"
                );
            }
        }
    }
    for notice in &loaded.config.notices {
        tracing::info!("note: {notice}");
    }
    let watched = source.watched_files(&loaded.config);
    // The signal handlers and their runtime take file descriptors: taken before the proxy
    // listens, so that clients exhausting the descriptors cannot make them fail.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut interrupt, mut terminate, mut hangup) = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        anyhow::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    let proxy = sluice_proxy::start_loaded(source, loaded.clone())?;
    let config = &loaded.config;
    let chain: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
    let plugins = if chain.is_empty() {
        "no plugins".to_string()
    } else {
        format!("plugins: {}", chain.join(" → "))
    };
    let upstream = match config.listeners[0]
        .routes
        .first()
        .and_then(|r| config.cluster(&r.cluster))
    {
        Some(Cluster {
            kind: ClusterKind::Echo,
            ..
        }) => "the built-in echo upstream".to_string(),
        Some(cluster) => format!("cluster {}", cluster.name),
        None => "no route".to_string(),
    };
    tracing::info!(
        "sluice listening on {} ({} workers, {plugins}, first route to {upstream}; ready in {:.1?})",
        proxy
            .addresses
            .iter()
            .zip(loaded.tls.iter().zip(&config.listeners))
            .map(|(a, (tls, listener))| match &listener.tcp {
                Some(tcp) => format!(
                    "tcp{}://{a} (to cluster {})",
                    if tls.is_some() { "+tls" } else { "" },
                    tcp.cluster
                ),
                None => format!("{}://{a}", if tls.is_some() { "https" } else { "http" }),
            })
            .collect::<Vec<_>>()
            .join(", "),
        loaded.workers(),
        started.elapsed()
    );
    if let Some(admin) = proxy.admin_address {
        tracing::info!(
            "admin page on http://{admin}/ (API: /ready, /stats, /plugins, /config_dump, /history, /logging, POST /reload)"
        );
    }
    let reloader = proxy.reloader();
    if args.watch {
        watch(watched, reloader.clone())?;
    }
    let scheme = if loaded.tls[0].is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("try: curl -i {scheme}://{}/hello", proxy.address);
    runtime.block_on(async {
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let reloader = reloader.clone();
                    // The reloader logs the outcome.
                    let _outcome = tokio::task::spawn_blocking(move || reloader.reload()).await?;
                }
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("draining in-flight requests and stopping");
    proxy.stop();
    Ok(ExitCode::SUCCESS)
}

/// Reloads when one of `files` changes, waiting for writes to settle (200 ms) first.
///
/// Each file is watched as given and as it resolves: a Kubernetes ConfigMap volume updates by
/// pointing a symlink (`..data`) at a new directory and removing the old one, so the file's
/// resolved path moves with every update, and a change of where it resolves is a change too.
fn watch(files: Vec<PathBuf>, reloader: Arc<Reloader>) -> anyhow::Result<()> {
    use notify::{RecursiveMode, Watcher};
    struct Watched {
        given: PathBuf,
        resolved: PathBuf,
    }
    let resolve =
        |given: &Path| std::fs::canonicalize(given).unwrap_or_else(|_| given.to_path_buf());
    let mut watched: Vec<Watched> = files
        .into_iter()
        .map(|f| {
            let given = std::path::absolute(&f).unwrap_or(f);
            let resolved = resolve(&given);
            Watched { given, resolved }
        })
        .collect();
    let (events, changes) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let _ = events.send(event.paths);
        }
    })
    .context("--watch: cannot watch files")?;
    let mut dirs = std::collections::HashSet::new();
    let mut watch_dirs = move |watcher: &mut notify::RecommendedWatcher,
                               watched: &[Watched]|
          -> anyhow::Result<()> {
        for file in watched {
            for dir in [file.given.parent(), file.resolved.parent()]
                .into_iter()
                .flatten()
            {
                if dirs.insert(dir.to_path_buf()) {
                    watcher
                        .watch(dir, RecursiveMode::NonRecursive)
                        .with_context(|| format!("--watch: cannot watch {}", dir.display()))?;
                }
            }
        }
        Ok(())
    };
    watch_dirs(&mut watcher, &watched)?;
    tracing::info!(
        "watching {} for changes",
        watched
            .iter()
            .map(|f| f.given.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::thread::Builder::new()
        .name("sluice-watch".into())
        .spawn(move || {
            while let Ok(paths) = changes.recv() {
                let touched = paths
                    .iter()
                    .any(|p| watched.iter().any(|f| *p == f.given || *p == f.resolved));
                let moved = watched.iter().any(|f| resolve(&f.given) != f.resolved);
                if !touched && !moved {
                    continue;
                }
                // Editors, compilers and the kubelet write in several steps; take the last one.
                while changes.recv_timeout(Duration::from_millis(200)).is_ok() {}
                // Before the reload reads them: a swap during a long reload is seen next time.
                for file in &mut watched {
                    file.resolved = resolve(&file.given);
                }
                tracing::info!("a watched file changed: reloading the config");
                // The reloader logs the outcome.
                let _outcome = reloader.reload();
                if let Err(error) = watch_dirs(&mut watcher, &watched) {
                    tracing::warn!("{error:#}");
                }
            }
        })?;
    Ok(())
}

/// `sluice check FILE`: everything `sluice run --config FILE` would do before serving.
pub fn check(file: &Path, insecure_registries: &[String]) -> anyhow::Result<ExitCode> {
    let engine = crate::engine()?;
    let source = Source {
        file: Some(file.to_path_buf()),
        // What `sluice run --config FILE` with no other flag reads the file on top of.
        base: Config::single_route(sluice_config::DEFAULT_LISTEN, None, admin_address(None)?),
        limits: Limits::default(),
        buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
        plugin_log_level: sluice_abi::LogLevel::Warn,
        fetch: crate::fetch_options(insecure_registries)?,
    };
    let loaded = match source.load(&engine) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for error in &errors {
                out!("error: {error}");
            }
            out!("{}: {} error(s)", file.display(), errors.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = &loaded.config;
    for notice in &config.notices {
        out!("note: {notice}");
    }
    // `sluice run` would start without these (FAIL_OPEN) or refuse their requests; a check
    // says the config is not usable as written.
    if !loaded.unavailable.is_empty() {
        for unavailable in &loaded.unavailable {
            out!(
                "error: WasmPlugin {} spec.url: {} (failStrategy {}: `sluice run` would {})",
                unavailable.plugin.name,
                unavailable.error,
                unavailable.plugin.fail_strategy,
                if unavailable.blocks() {
                    "answer 503 to its requests"
                } else {
                    "serve without it"
                }
            );
        }
        out!("{}: {} error(s)", file.display(), loaded.unavailable.len());
        return Ok(ExitCode::FAILURE);
    }
    if let Err(error) = sluice_proxy::canary(&loaded) {
        out!("error: {error}");
        out!("{}: 1 error(s)", file.display());
        return Ok(ExitCode::FAILURE);
    }
    let routes: usize = config.listeners.iter().map(|l| l.routes.len()).sum();
    let order: Vec<String> = config
        .plugins
        .iter()
        .zip(&loaded.plugins)
        .map(|(p, l)| {
            format!(
                "{} ({}, module sha256 {})",
                p.name,
                p.phase.as_str(),
                &l.code.info.sha256[..12]
            )
        })
        .collect();
    out!(
        "{}: ok: {} listener(s), {routes} route(s), {} cluster(s), {} plugin(s){}",
        file.display(),
        config.listeners.len(),
        config.clusters.len(),
        config.plugins.len(),
        if order.is_empty() {
            String::new()
        } else {
            format!(" in this order: {}", order.join(" → "))
        }
    );
    Ok(ExitCode::SUCCESS)
}
