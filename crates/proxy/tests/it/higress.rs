//! Real Higress plugins (the prebuilt modules of the PyPI package `gpustack-higress-plugins`:
//! Go 1.24 modules of Higress's ABI `0_2_100`, and one Rust module) through the live proxy.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;
use sluice_config::{FailStrategy, Plugin};

/// The package's modules, by plugin name, with a configuration each accepts (the ones that take
/// an empty one get `{}`).
const MODULES: &[(&str, &str)] = &[
    ("ai-data-masking", "{}"),
    ("ai-statistics", "{}"),
    ("gpustack-ai-proxy", "{}"),
    ("gpustack-ext-auth", "{}"),
    ("gpustack-generic-proxy-router", "{}"),
    ("gpustack-ip-acl", "{}"),
    ("gpustack-lb-decision-service", "{}"),
    ("gpustack-lb-least-load", "{}"),
    (
        "gpustack-lb-session-affinity",
        r#"{"sessionKeys": [{"header": "x-session"}]}"#,
    ),
    ("gpustack-lb", "{}"),
    ("gpustack-rate-limit", "{}"),
    (
        "gpustack-set-header-pre-route",
        r#"{"routeNameHeader": "x-route-name"}"#,
    ),
    ("gpustack-token-usage", "{}"),
    (
        "transformer",
        r#"{"reqRules": [{"operate": "add", "headers": [{"key": "x-added", "value": "yes"}]}]}"#,
    ),
];

/// The module of one plugin of the package (its only version).
fn module(plugins: &std::path::Path, name: &str) -> PathBuf {
    let dir = plugins.join(name);
    let version = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("{} has no version", dir.display()));
    version.path().join("plugin.wasm")
}

/// A request header the echo upstream says it received.
fn echoed_header(echoed: &serde_json::Value, name: &str) -> Option<String> {
    echoed["headers"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap_or_default().to_string())
}

fn plugin(plugins: &std::path::Path, name: &str, configuration: &str) -> Plugin {
    Plugin::local(
        name.into(),
        module(plugins, name).display().to_string(),
        Some(serde_json::from_str(configuration).unwrap()),
        FailStrategy::FailClose,
    )
}

#[test]
fn every_module_of_the_package_loads_starts_and_serves() {
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    let mut names: Vec<String> = std::fs::read_dir(&plugins)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut listed: Vec<&str> = MODULES.iter().map(|(name, _)| *name).collect();
    listed.sort_unstable();
    assert_eq!(names, listed, "the package's plugins");
    let engine = crate::engine();
    for (name, configuration) in MODULES {
        let code = engine
            .load_file(&module(&plugins, name))
            .unwrap_or_else(|e| panic!("{name} loads: {e}"));
        if *name != "ai-data-masking" {
            assert_eq!(
                code.info.abi,
                Ok(sluice_abi::AbiVersion::V0_2_100),
                "{name} is a Go module of Higress's ABI"
            );
        }
        let proxy = crate::start(vec![plugin(&plugins, name, configuration)], None, &[], 1);
        let answer = crate::get(proxy.address, "/v1/models", &[("x-session", "s1")]);
        assert!(
            answer.status < 500,
            "{name} answers {}: {}",
            answer.status,
            answer.text()
        );
    }
}

#[test]
fn transformer_maps_a_body_field_to_a_header_while_it_holds_the_headers() {
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    let transformer = plugin(
        &plugins,
        "transformer",
        r#"{"reqRules": [
            {"operate": "map", "mapSource": "body", "headers": [{"fromKey": "userId", "toKey": "x-user-id"}]},
            {"operate": "add", "headers": [{"key": "x-added", "value": "yes"}]}
        ]}"#,
    );
    let proxy = crate::start(vec![transformer], None, &[], 1);
    for (content_type, body) in [
        (
            "application/json",
            r#"{"userId": 12, "userName": "johnlanni"}"#,
        ),
        (
            "application/x-www-form-urlencoded",
            "userId=12&userName=johnlanni",
        ),
    ] {
        let request = http::Request::post("/users")
            .header("host", "example.com")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let answer = crate::request(proxy.address, request, false);
        assert_eq!(answer.status, 200, "{}", answer.text());
        let echoed: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let header = |name: &str| echoed_header(&echoed, name);
        assert_eq!(header("x-user-id").as_deref(), Some("12"), "{echoed}");
        assert_eq!(header("x-added").as_deref(), Some("yes"), "{echoed}");
        assert_eq!(echoed["body"], body, "the body goes on unchanged");
    }
}

#[test]
fn a_higress_wasm_plugin_configures_the_real_transformer_by_route_domain_and_default() {
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    let add = |value: &str| {
        format!(r#"{{reqRules: [{{operate: add, headers: [{{key: x-config, value: {value}}}]}}]}}"#)
    };
    let dir = tempfile::tempdir().unwrap();
    let file = crate::config_file(
        dir.path(),
        &format!(
            r#"
apiVersion: extensions.higress.io/v1alpha1
kind: WasmPlugin
metadata: {{name: transformer}}
spec:
  url: {wasm}
  defaultConfig: {default}
  matchRules:
  - ingress: [shop]
    config: {route}
  - domain: ["*.example.com"]
    config: {domain}
  - domain: [off.test]
    configDisable: true
    config: {route}
---
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  admin: off
  workers: 1
  listeners:
  - address: 127.0.0.1:0
    routes:
    - {{name: shop, match: {{prefix: /shop}}, cluster: echo}}
    - {{name: rest, cluster: echo}}
  clusters:
  - {{name: echo, type: ECHO}}
"#,
            wasm = module(&plugins, "transformer").display(),
            default = add("default"),
            route = add("route"),
            domain = add("domain"),
        ),
    );
    let proxy = crate::start_source(Some(file), crate::flags(None, &[]));
    let seen = |path: &str, host: &str| {
        let request = http::Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = crate::request(proxy.address, request, false);
        assert_eq!(answer.status, 200, "{}", answer.text());
        let echoed: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        echoed_header(&echoed, "x-config")
    };
    // The first matching rule wins: the route rule before the domain rule.
    assert_eq!(
        seen("/shop/cart", "a.example.com").as_deref(),
        Some("route")
    );
    assert_eq!(
        seen("/other", "a.example.com:8080").as_deref(),
        Some("domain")
    );
    assert_eq!(seen("/other", "example.com").as_deref(), Some("default"));
    // A disabled rule is dropped: its domain gets the default.
    assert_eq!(seen("/other", "off.test").as_deref(), Some("default"));
}

#[test]
fn ai_statistics_counts_the_tokens_a_model_server_reports() {
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    // An OpenAI-compatible model server: one chat completion with its usage.
    let model = crate::origin(|parts, body| {
        assert_eq!(parts.uri.path(), "/v1/chat/completions");
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let answer = serde_json::json!({
            "id": "c1", "object": "chat.completion", "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        });
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    });
    let statistics = plugin(&plugins, "ai-statistics", "{}");
    let proxy = crate::start(vec![statistics], Some(model), &[], 1);
    for _ in 0..2 {
        let request = http::Request::post("/v1/chat/completions")
            .header("host", "example.com")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                r#"{"model": "qwen", "messages": [{"role": "user", "content": "hello?"}]}"#,
            )))
            .unwrap();
        let answer = crate::request(proxy.address, request, false);
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.text().contains("hi there"), "{}", answer.text());
    }
    let stats = crate::get(proxy.admin_address.unwrap(), "/stats", &[]).text();
    // Higress's metric names: route, upstream cluster, model and consumer, then the metric.
    let metric = |name: &str| {
        let full =
            format!("route.default.upstream.upstream.model.qwen.consumer.none.metric.{name}");
        stats
            .lines()
            .find(|line| line.contains(&format!("name=\"{full}\"")))
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no metric {full} in:\n{stats}"))
    };
    assert_eq!(metric("input_token"), "22");
    assert_eq!(metric("output_token"), "14");
    assert_eq!(metric("total_token"), "36");
    assert_eq!(metric("llm_duration_count"), "2");
}

/// A request with the given headers; the status and body.
fn send(address: std::net::SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    let mut builder = http::Request::get("/v1/models").header("host", "example.com");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let answer = crate::request(
        address,
        builder.body(Full::new(Bytes::new())).unwrap(),
        false,
    );
    (answer.status, answer.text())
}

#[test]
fn gpustack_rate_limit_holds_one_limit_per_user_across_two_replicas_in_a_real_redis() {
    if !sluice_test_support::has_tools(sluice_test_support::REDIS_TOOLS) {
        return;
    }
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    let mut redis = sluice_test_support::Redis::start(Some("s3cret"));
    let config = format!(
        r#"{{"rule_name": "r1", "enable_on_path_suffix": ["*"], "show_limit_quota_header": true,
            "limit_combinations": [{{"name": "per-user",
                "match": [{{"source": "header", "name": "x-user", "value": "*"}}],
                "query_limits": {{"per_minute": 3}}}}],
            "redis": {{"service_name": "127.0.0.1", "service_port": {}, "password": "s3cret",
                       "timeout": 1000, "database": 2}}}}"#,
        redis.port
    );
    let replica = || {
        crate::start(
            vec![plugin(&plugins, "gpustack-rate-limit", &config)],
            None,
            &[],
            2,
        )
    };
    let (first, second) = (replica(), replica());
    // Alice's 3 requests a minute, whichever replica takes them; Bob has his own 3.
    let alice: Vec<u16> = (0..5)
        .map(|i| {
            let replica = if i % 2 == 0 { &first } else { &second };
            send(replica.address, &[("x-user", "alice")]).0
        })
        .collect();
    assert_eq!(alice, [200, 200, 200, 429, 429]);
    let (status, body) = send(second.address, &[("x-user", "alice")]);
    assert_eq!(status, 429);
    assert!(body.contains("rate_limit_exceeded"), "{body}");
    assert_eq!(send(first.address, &[("x-user", "bob")]).0, 200);
    let keys = redis.cli(&["-n", "2", "KEYS", "r1|per-user|*"]);
    assert!(
        keys.contains("header:x-user=alice") && keys.contains("header:x-user=bob"),
        "{keys}"
    );
    // Redis down: the plugin fails open; back (empty): counting starts again, no restart.
    redis.stop();
    assert_eq!(send(first.address, &[("x-user", "alice")]).0, 200);
    redis.restart();
    let again: Vec<u16> = (0..4)
        .map(|_| send(second.address, &[("x-user", "alice")]).0)
        .collect();
    assert_eq!(again, [200, 200, 200, 429]);
}

#[test]
fn gpustack_ip_acl_denies_a_consumer_from_a_denied_network() {
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    let acl = plugin(
        &plugins,
        "gpustack-ip-acl",
        r#"{"realIPHeader": "x-real-ip",
            "consumers": {"*": {"deniedCidrs": ["203.0.113.0/24"]},
                          "vip": {"allowedCidrs": ["10.0.0.0/8"]}}}"#,
    );
    let proxy = crate::start(vec![acl], None, &[], 1);
    let denied = send(
        proxy.address,
        &[("x-mse-consumer", "anyone"), ("x-real-ip", "203.0.113.9")],
    );
    assert_eq!(denied.0, 403);
    assert!(denied.1.contains("Client IP denied"), "{}", denied.1);
    let outside = send(
        proxy.address,
        &[("x-mse-consumer", "vip"), ("x-real-ip", "192.0.2.1")],
    );
    assert_eq!(outside.0, 403);
    assert!(
        outside.1.contains("not in API key whitelist"),
        "{}",
        outside.1
    );
    let inside = [("x-mse-consumer", "vip"), ("x-real-ip", "10.1.2.3")];
    assert_eq!(send(proxy.address, &inside).0, 200);
    // No consumer: the ACL does not apply.
    assert_eq!(send(proxy.address, &[("x-real-ip", "203.0.113.9")]).0, 200);
}

#[test]
fn gpustack_ext_auth_asks_an_auth_server_and_passes_its_consumer_on() {
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    let auth = crate::origin(|parts, _| {
        assert_eq!(parts.uri.path(), "/token-auth");
        let key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let gateway = parts
            .headers
            .get("x-gpustack-auth-token")
            .and_then(|v| v.to_str().ok());
        let builder = http::Response::builder();
        match (key, gateway) {
            (Some("good"), Some("gw-secret")) => builder.header("x-mse-consumer", "alice"),
            _ => builder.status(401).header("www-authenticate", "ApiKey"),
        }
        .body(Full::new(Bytes::from("auth says")))
        .unwrap()
    });
    let ext_auth = plugin(
        &plugins,
        "gpustack-ext-auth",
        &format!(
            r#"{{"route_match_regexes": [".*"],
                "authz": {{"endpoint": {{"service_name": "127.0.0.1", "service_port": {},
                                        "path": "/token-auth", "request_method": "GET"}},
                          "timeout": 2000,
                          "authorization_request": {{"allowed_headers": [{{"exact": "x-api-key"}}],
                                                    "headers_to_add": {{"X-GPUStack-Auth-Token": "gw-secret"}}}}}},
                "upstream_request": {{"headers_to_remove": ["x-api-key"]}}}}"#,
            auth.port()
        ),
    );
    let proxy = crate::start(vec![ext_auth], None, &[], 1);
    let (status, body) = send(
        proxy.address,
        &[("x-api-key", "good"), ("x-mse-consumer", "forged")],
    );
    assert_eq!(status, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let header = |name: &str| echoed_header(&echoed, name);
    assert_eq!(
        header("x-mse-consumer").as_deref(),
        Some("alice"),
        "{echoed}"
    );
    assert_eq!(header("x-api-key"), None, "{echoed}");
    let (status, body) = send(proxy.address, &[("x-api-key", "bad")]);
    assert_eq!((status, body.as_str()), (401, "auth says"));
}

/// Runs a scenario file's text, with `{PLUGIN}` standing for a module's path, as `sluice test`
/// runs it (in process), and returns its mismatches.
fn scenario(plugins: &std::path::Path, text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut text = text.to_string();
    for (name, _) in MODULES {
        text = text.replace(
            &format!("{{{name}}}"),
            &module(plugins, name).display().to_string(),
        );
    }
    let file = dir.path().join("scenario.yaml");
    std::fs::write(&file, text).unwrap();
    let report = sluice_scenario::run_file(&file, Some(sluice_test_support::cache_dir()))
        .unwrap_or_else(|e| panic!("{e}"));
    report.mismatches.iter().map(|m| format!("{m:?}")).collect()
}

#[test]
fn the_real_modules_pass_their_scenarios_in_process() {
    let Some(plugins) = sluice_test_support::higress_plugins() else {
        return;
    };
    let transformer = scenario(
        &plugins,
        r#"
plugins:
  - name: transformer
    wasm: "{transformer}"
    pluginConfig:
      reqRules:
        - {operate: map, mapSource: body, headers: [{fromKey: model, toKey: x-model}, {fromKey: meta.user, toKey: x-user}]}
steps:
  - request:
      method: POST
      path: /v1/chat/completions
      headers: {content-type: application/json}
      body: '{"model": "qwen3", "meta": {"user": 42}}'
    expect:
      upstream: {headers: {x-model: qwen3, x-user: "42"}, body: '{"model": "qwen3", "meta": {"user": 42}}'}
      response: {status: 200}
"#,
    );
    assert!(transformer.is_empty(), "{transformer:#?}");
    // The Lua script's answers, as Redis gives them: SUCCESS, then LIMITED with the key.
    let rate_limit = scenario(
        &plugins,
        r#"
plugins:
  - name: rate-limit
    wasm: "{gpustack-rate-limit}"
    pluginConfig:
      rule_name: r1
      enable_on_path_suffix: ["*"]
      limit_combinations: [{name: per-user, match: [{source: header, name: x-user, value: "*"}], query_limits: {per_minute: 1}}]
      redis: {service_name: redis.local, service_port: 6379, timeout: 500}
callouts:
  "outbound|6379||redis.local":
    - {redis: [SUCCESS, ""]}
    - {redis: [LIMITED, "r1|per-user|header:x-user=alice|q:60s"]}
steps:
  - request: {path: /a, headers: {x-user: alice}}
    expect:
      response: {status: 200}
      redisCalls: [{cluster: "outbound|6379||redis.local"}]
  - request: {path: /b, headers: {x-user: alice}}
    expect:
      upstream: none
      response: {status: 429, bodyContains: rate_limit_exceeded}
"#,
    );
    assert!(rate_limit.is_empty(), "{rate_limit:#?}");
}
