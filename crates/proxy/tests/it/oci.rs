//! Plugins from an OCI registry (Debian's `docker-registry` on loopback): served through, served
//! from the cache when the registry is gone, pulled again under `Always`, and, when that fails,
//! handled as their failStrategy says until the background retry gets them.

use sluice_proxy::Source;
use sluice_test_support::Registry;

use crate::{flags, get};

fn source(file: std::path::PathBuf, cache: &std::path::Path) -> Source {
    Source {
        file: Some(file),
        base: flags(None, &[]),
        limits: crate::limits(),
        buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
        plugin_log_level: sluice_abi::LogLevel::Warn,
        fetch: sluice_fetch::Options::new(cache.to_path_buf()),
    }
}

fn config(registry: &Registry, digest: &str, policy: &str, fail_strategy: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  admin: 127.0.0.1:0
  workers: 1
  insecureRegistries: ["{registry}"]
  listeners:
  - address: 127.0.0.1:0
    routes:
    - {{name: open, match: {{prefix: /open}}, cluster: echo, plugins: {{headers: {{disabled: true}}}}}}
    - {{cluster: echo}}
  clusters: [{{name: echo, type: ECHO}}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: headers}}
spec:
  url: oci://{registry}/plugins/add-header:v1
  sha256: {digest}
  imagePullPolicy: {policy}
  failStrategy: {fail_strategy}
  pluginConfig: {{response: {{set: {{x-from: registry}}}}}}
"#,
        registry = registry.address,
        digest = digest.trim_start_matches("sha256:"),
    )
}

#[test]
fn an_oci_plugin_is_served_then_cached_and_always_pulls_again() {
    if !sluice_test_support::has_tools(sluice_test_support::REGISTRY_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(dir.path());
    let cache = dir.path().join("modules");
    let pusher = sluice_fetch::Fetcher::new(sluice_fetch::Options {
        insecure_registries: vec![registry.address.clone()],
        docker_config: None,
        ..sluice_fetch::Options::new(dir.path().join("pusher"))
    });
    let wasm = sluice_test_support::plugin_bytes("add_header");
    let reference = format!("{}/plugins/add-header:v1", registry.address);
    let pushed = pusher
        .push(&wasm, &reference, sluice_fetch::Format::Compat)
        .unwrap();

    let file = dir.path().join("sluice.yaml");
    std::fs::write(
        &file,
        config(&registry, &pushed.digest, "IfNotPresent", "FAIL_CLOSE"),
    )
    .unwrap();
    let proxy = sluice_proxy::start(source(file.clone(), &cache), crate::engine()).unwrap();
    assert_eq!(
        get(proxy.address, "/", &[]).header("x-from"),
        Some("registry")
    );
    proxy.stop();

    registry.stop();
    let proxy = sluice_proxy::start(source(file.clone(), &cache), crate::engine())
        .unwrap_or_else(|e| panic!("a second start is served from the cache: {e}"));
    assert_eq!(
        get(proxy.address, "/", &[]).header("x-from"),
        Some("registry")
    );
    proxy.stop();

    // An image assembled by standard tools (tar, gzip, skopeo copy) runs the same.
    registry.restart();
    let copied = registry.copy_compat_image(
        &dir.path().join("standard"),
        &wasm,
        "standard/add-header:v1",
    );
    let standard = dir.path().join("standard.yaml");
    std::fs::write(
        &standard,
        config(&registry, &pushed.digest, "IfNotPresent", "FAIL_CLOSE")
            .replace(
                &format!("{}/plugins/add-header:v1", registry.address),
                &copied,
            )
            .replace(
                &format!(
                    "  sha256: {}\n",
                    pushed.digest.trim_start_matches("sha256:")
                ),
                "",
            ),
    )
    .unwrap();
    let proxy = sluice_proxy::start(source(standard, &cache), crate::engine()).unwrap();
    assert_eq!(
        get(proxy.address, "/", &[]).header("x-from"),
        Some("registry")
    );
    proxy.stop();
    registry.stop();

    // Always pulls again and the registry is gone: FAIL_OPEN serves without the plugin.
    std::fs::write(
        &file,
        config(&registry, &pushed.digest, "Always", "FAIL_OPEN"),
    )
    .unwrap();
    let proxy = sluice_proxy::start(source(file.clone(), &cache), crate::engine()).unwrap();
    let answer = get(proxy.address, "/", &[]);
    assert_eq!((answer.status, answer.header("x-from")), (200, None));
    proxy.stop();

    // FAIL_CLOSE refuses only the requests that would run it, says why, and retries.
    std::fs::write(
        &file,
        config(&registry, &pushed.digest, "Always", "FAIL_CLOSE"),
    )
    .unwrap();
    let proxy = sluice_proxy::start(source(file, &cache), crate::engine()).unwrap();
    let refused = get(proxy.address, "/", &[]);
    assert_eq!(refused.status, 503);
    // The client is told nothing about the registry (Envoy's empty body by default).
    assert_eq!(refused.text(), "", "{}", refused.text());
    assert_eq!(get(proxy.address, "/open", &[]).status, 200);
    let admin = proxy.admin_address.unwrap();
    // Not ready while the plugin that guards traffic is missing.
    let ready = get(admin, "/ready", &[]);
    assert_eq!(ready.status, 503);
    assert!(
        ready
            .text()
            .contains("plugin headers (FAIL_CLOSE) is unavailable"),
        "{}",
        ready.text()
    );
    let plugins = get(admin, "/plugins", &[]).text();
    assert!(plugins.contains("\"unavailable\""), "{plugins}");
    let stats = get(admin, "/stats", &[]).text();
    assert!(
        stats.contains(
            "sluice_plugin_unavailable{plugin=\"headers\",fail_strategy=\"FAIL_CLOSE\"} 1"
        ),
        "{stats}"
    );
    registry.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let answer = get(proxy.address, "/", &[]);
        if answer.status == 200 {
            assert_eq!(answer.header("x-from"), Some("registry"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the background retry did not bring the plugin back within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        !get(admin, "/stats", &[])
            .text()
            .contains("sluice_plugin_unavailable{")
    );
    assert_eq!(get(admin, "/ready", &[]).text(), "LIVE\n");
    proxy.stop();
}
