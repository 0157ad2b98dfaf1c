//! The proxy from a config file: routes, per-route plugin overrides, clusters, timeouts and
//! reloads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::{config_file, flags, get, origin, request, start_source};

const TOKEN: (&str, &str) = ("authorization", "Bearer secret");

fn named_origin(name: &'static str) -> std::net::SocketAddr {
    origin(move |parts, _| {
        http::Response::builder()
            .header("x-origin", name)
            .body(Full::new(Bytes::from(parts.uri.to_string())))
            .unwrap()
    })
}

#[test]
fn routes_choose_chains_clusters_and_timeouts() {
    let (a, b) = (named_origin("a"), named_origin("b"));
    let slow = origin(|_, _| {
        std::thread::sleep(Duration::from_millis(1500));
        http::Response::new(Full::new(Bytes::from("late")))
    });
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        &format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  admin: 127.0.0.1:0
  workers: 1
  listeners:
  - address: 127.0.0.1:0
    routes:
    - name: open
      match: {{prefix: /open}}
      cluster: echo
      plugins: {{auth: {{disabled: true}}}}
    - name: moved
      match: {{prefix: /old}}
      cluster: echo
      plugins:
        headers: {{pluginConfig: {{request: {{set: {{":path": /apps/moved}}}}}}}}
    - name: apps
      match: {{prefix: /apps}}
      cluster: app
    - name: slow
      match: {{path: /slow}}
      cluster: slow
  clusters:
  - {{name: echo, type: ECHO}}
  - {{name: app, endpoints: ["{a}", "{b}"]}}
  - {{name: slow, endpoints: ["{slow}"], timeout: 300ms}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: headers}}
spec:
  url: file://{{plugins}}/add_header.wasm
  pluginConfig: {{response: {{set: {{x-plugin: add-header}}}}}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: auth}}
spec:
  url: "{{plugins}}/auth.wasm"
  phase: AUTHN
  pluginConfig: {{tokens: {{secret: alice}}}}
"#
        ),
    );
    let proxy = start_source(Some(file), flags(None, &[]));
    let open = get(proxy.address, "/open/x", &[]);
    assert_eq!(
        open.status,
        200,
        "auth is disabled on /open: {}",
        open.text()
    );
    assert_eq!(open.header("x-plugin"), Some("add-header"));
    assert_eq!(get(proxy.address, "/apps/1", &[]).status, 401);

    let origins: Vec<String> = (0..4)
        .map(|i| {
            let answer = get(proxy.address, &format!("/apps/{i}"), &[TOKEN]);
            assert_eq!(answer.status, 200, "{}", answer.text());
            answer.header("x-origin").unwrap().to_string()
        })
        .collect();
    assert_eq!(origins, ["a", "b", "a", "b"], "round-robin over endpoints");

    let moved = get(proxy.address, "/old/page", &[TOKEN]);
    assert_eq!(moved.status, 200);
    assert_eq!(
        moved.text(),
        "/apps/moved",
        "routed by the path the plugin wrote"
    );
    assert!(moved.header("x-origin").is_some());

    let started = Instant::now();
    let late = get(proxy.address, "/slow", &[TOKEN]);
    assert_eq!(late.status, 504);
    assert_eq!(late.text(), "upstream request timeout");
    assert!(started.elapsed() < Duration::from_millis(1400));

    let nowhere = get(proxy.address, "/nowhere", &[TOKEN]);
    assert_eq!(nowhere.status, 404);
    assert_eq!(
        get(proxy.address, "/nowhere", &[]).status,
        401,
        "plugins run before routing fails"
    );
    proxy.stop();
}

fn versioned(version: u32) -> String {
    format!(
        r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: headers}}
spec:
  url: "{{plugins}}/add_header.wasm"
  pluginConfig: {{response: {{set: {{x-version: "{version}"}}}}}}
"#
    )
}

const BROKEN: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: auth}
spec:
  url: "{plugins}/auth.wasm"
  pluginConfig: {tokens: [not, a, map]}
"#;

fn post(address: std::net::SocketAddr, path: &str) -> crate::Answer {
    request(
        address,
        http::Request::post(path)
            .header("host", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        false,
    )
}

#[test]
fn a_reload_swaps_the_chain_lets_in_flight_requests_finish_and_refuses_a_bad_config() {
    let slow = origin(|_, _| {
        std::thread::sleep(Duration::from_millis(600));
        http::Response::new(Full::new(Bytes::from("done")))
    });
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), &versioned(1));
    let proxy = start_source(Some(file.clone()), flags(Some(slow), &[]));
    let admin = proxy.admin_address.unwrap();
    assert_eq!(get(proxy.address, "/", &[]).header("x-version"), Some("1"));

    let address = proxy.address;
    let in_flight = std::thread::spawn(move || get(address, "/in-flight", &[]));
    std::thread::sleep(Duration::from_millis(200));
    config_file(dir.path(), &versioned(2));
    let reloaded = post(admin, "/reload");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let old = in_flight.join().unwrap();
    assert_eq!(old.text(), "done");
    assert_eq!(
        old.header("x-version"),
        Some("1"),
        "a request in flight during the reload finishes on the chain it started on"
    );
    assert_eq!(get(proxy.address, "/", &[]).header("x-version"), Some("2"));

    config_file(dir.path(), BROKEN);
    let refused = post(admin, "/reload");
    assert_eq!(refused.status, 400);
    assert!(
        refused.text().contains("proxy_on_configure returned false")
            && refused.text().contains("invalid pluginConfig"),
        "{}",
        refused.text()
    );
    assert_eq!(
        get(proxy.address, "/", &[]).header("x-version"),
        Some("2"),
        "a refused reload changes nothing"
    );
    let dump: serde_json::Value =
        serde_json::from_slice(&get(admin, "/config_dump", &[]).body).unwrap();
    assert_eq!(dump["lastReload"]["ok"], false);
    assert_eq!(dump["plugins"][0]["name"], "headers");
    assert_eq!(
        dump["plugins"][0]["pluginConfig"]["response"]["set"]["x-version"],
        "2"
    );
    let stats = get(admin, "/stats", &[]).text();
    assert!(
        stats.contains("sluice_config_reloads_total{result=\"ok\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("sluice_config_reloads_total{result=\"failed\"} 1"),
        "{stats}"
    );
    assert_eq!(get(admin, "/reload", &[]).status, 405);
    proxy.stop();
}

/// Clients on keep-alive connections send requests for as long as `running` says; each answer
/// that is not a 200 with a version header counts as lost.
fn load(
    address: std::net::SocketAddr,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (mut ok, mut lost) = (0, Vec::new());
        let connect = || async {
            let io = hyper_util::rt::TokioIo::new(
                tokio::net::TcpStream::connect(address).await.unwrap(),
            );
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender
        };
        let mut sender = connect().await;
        // Bounded in time by `running` and in count by this limit.
        for _ in 0..200_000 {
            if !running.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let request = http::Request::get("/load")
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap();
            match sender.send_request(request).await {
                Ok(response)
                    if response.status() == 200 && response.headers().contains_key("x-version") =>
                {
                    use http_body_util::BodyExt;
                    let _ = response.into_body().collect().await;
                    ok += 1;
                }
                Ok(response) => lost.push(format!("status {}", response.status())),
                Err(error) => {
                    lost.push(error.to_string());
                    sender = connect().await;
                }
            }
        }
        (ok, lost)
    })
}

#[test]
fn twenty_reloads_under_load_lose_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), &versioned(0));
    let mut base = flags(None, &[]);
    base.workers = Some(2);
    let proxy = start_source(Some(file), base);
    let reloader = proxy.reloader();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (address, running) = (proxy.address, running.clone());
            std::thread::spawn(move || load(address, running))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    for version in 1..=20 {
        let text = if version == 10 {
            BROKEN.to_string()
        } else {
            versioned(version)
        };
        config_file(dir.path(), &text);
        if reloader.reload().is_err() {
            refused += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(Instant::now() < deadline, "20 reloads within 20 s");
    }
    std::thread::sleep(Duration::from_millis(200));
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        let (ok, lost) = client.join().unwrap();
        assert!(lost.is_empty(), "lost requests: {lost:?}");
        served += ok;
    }
    eprintln!("{served} requests answered across 20 reloads, none lost");
    assert_eq!(refused, 1, "only the broken config is refused");
    assert!(served > 100, "the load kept going: {served} requests");
    assert_eq!(get(proxy.address, "/", &[]).header("x-version"), Some("20"));
    proxy.stop();
}

/// A self-signed certificate for `localhost`, written as PEM files into `dir`.
fn certificate(dir: &std::path::Path) -> (String, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    (cert.pem(), cert.der().clone())
}

/// One GET over TLS offering `alpn`; the protocol the server chose and the answer.
fn tls_get(
    address: std::net::SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> (Option<Vec<u8>>, u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let request = http::Request::get("https://localhost/secure")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response =
            crate::send_once(stream, request, negotiated.as_deref() == Some(b"h2")).await;
        let status = response.status().as_u16();
        use http_body_util::BodyExt;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            negotiated,
            status,
            String::from_utf8_lossy(&body).into_owned(),
        )
    })
}

#[test]
fn a_tls_listener_negotiates_h2_or_http1_and_marks_requests_https() {
    let dir = tempfile::tempdir().unwrap();
    let (_, root) = certificate(dir.path());
    let file = config_file(
        dir.path(),
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  admin: "off"
  workers: 1
  listeners:
  - address: 127.0.0.1:0
    tls: {certificate: cert.pem, privateKey: key.pem}
    routes: [{cluster: echo}]
  clusters: [{name: echo, type: ECHO}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: headers}
spec:
  url: "{plugins}/add_header.wasm"
  pluginConfig: {request: {set: {x-hello: tls}}}
"#,
    );
    let proxy = start_source(Some(file), flags(None, &[]));
    for (alpn, expected) in [
        (&[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let (negotiated, status, body) = tls_get(proxy.address, root.clone(), alpn);
        assert_eq!(negotiated.as_deref(), Some(expected));
        assert_eq!(status, 200, "{body}");
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        let headers = echo["headers"].as_array().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h[0] == name)
                .map(|h| h[1].as_str().unwrap().to_string())
        };
        assert_eq!(header("x-hello").as_deref(), Some("tls"));
        assert_eq!(header("x-forwarded-proto").as_deref(), Some("https"));
    }
    proxy.stop();
}

#[test]
fn the_access_log_has_a_json_line_per_request_with_the_plugin_outcome() {
    let app = named_origin("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.jsonl");
    let file = config_file(
        dir.path(),
        &format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  admin: "off"
  workers: 1
  accessLog: {log}
  listeners:
  - {{name: edge, address: 127.0.0.1:0, routes: [{{name: all, cluster: app}}]}}
  clusters: [{{name: app, endpoints: ["{app}"]}}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: auth}}
spec:
  url: "{{plugins}}/auth.wasm"
  pluginConfig: {{tokens: {{secret: alice}}}}
"#,
            log = log.display()
        ),
    );
    let proxy = start_source(Some(file), flags(None, &[]));
    assert_eq!(get(proxy.address, "/denied", &[]).status, 401);
    assert_eq!(get(proxy.address, "/allowed?x=1", &[TOKEN]).status, 200);
    let lines = crate::access_log_lines(&log, 2);
    let (denied, allowed) = (&lines[0], &lines[1]);
    assert_eq!(denied["status"], 401);
    assert_eq!(denied["path"], "/denied");
    assert_eq!(denied["listener"], "edge");
    assert_eq!(denied["plugins"]["localReplyBy"], "auth");
    assert_eq!(denied["plugins"]["chain"], serde_json::json!(["auth"]));
    assert_eq!(denied["upstream"], serde_json::Value::Null);
    // The route a plugin answered on is still the request's route.
    assert_eq!(denied["route"], "all");
    // Microseconds as milliseconds: at most three decimals, no float noise.
    let duration = denied["durationMs"].to_string();
    assert!(
        duration
            .split('.')
            .nth(1)
            .is_none_or(|decimals| decimals.len() <= 3),
        "{duration}"
    );
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["details"], "via_upstream");
    assert_eq!(allowed["route"], "all");
    assert_eq!(allowed["upstream"], app.to_string());
    assert_eq!(allowed["plugins"]["localReplyBy"], serde_json::Value::Null);
    assert_eq!(allowed["bytesSent"], "/allowed?x=1".len());
    assert!(allowed["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(allowed["requestId"].as_str().unwrap().len(), 36);
    proxy.stop();
}

/// Every capability sluice knows, minus `without`, as a YAML flow list.
fn capabilities_without(without: &str) -> String {
    let names: Vec<String> = crate::engine()
        .capability_names()
        .into_iter()
        .filter(|name| name != without)
        .collect();
    format!("[{}]", names.join(", "))
}

#[test]
fn capability_allow_lists_deny_callbacks_host_calls_and_clusters() {
    let authz = named_origin("authz");
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        &format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  admin: "off"
  workers: 1
  pluginFailureBody: descriptive
  pluginCapabilities:
    deaf: {{allow: {no_headers_callback}}}
    mute: {{allow: {no_local_reply}}}
    fenced: {{clusters: [elsewhere]}}
  listeners:
  - address: 127.0.0.1:0
    routes:
    - {{match: {{prefix: /deaf}}, cluster: echo, plugins: {{mute: {{disabled: true}}, fenced: {{disabled: true}}}}}}
    - {{match: {{prefix: /mute}}, cluster: echo, plugins: {{deaf: {{disabled: true}}, fenced: {{disabled: true}}}}}}
    - {{match: {{prefix: /fenced}}, cluster: echo, plugins: {{deaf: {{disabled: true}}, mute: {{disabled: true}}}}}}
  clusters:
  - {{name: echo, type: ECHO}}
  - {{name: authz, endpoints: ["{authz}"]}}
  - {{name: elsewhere, type: ECHO}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: deaf}}
spec: {{url: "{{plugins}}/auth.wasm", pluginConfig: {{tokens: {{secret: alice}}}}}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: mute}}
spec: {{url: "{{plugins}}/auth.wasm", pluginConfig: {{tokens: {{secret: alice}}}}}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: fenced}}
spec: {{url: "{{plugins}}/http_callout.wasm", pluginConfig: {{cluster: authz}}}}
"#,
            no_headers_callback = capabilities_without("proxy_on_request_headers"),
            no_local_reply = capabilities_without("proxy_send_local_response"),
        ),
    );
    let proxy = start_source(Some(file), flags(None, &[]));
    let deaf = get(proxy.address, "/deaf", &[]);
    assert_eq!(
        deaf.status,
        200,
        "auth's on_request_headers is never called: {}",
        deaf.text()
    );
    let mute = get(proxy.address, "/mute", &[]);
    assert_eq!(mute.status, 503, "{}", mute.text());
    assert_eq!(
        mute.text(),
        "plugin 'mute' failed\n",
        "the denied local reply returns an error status, and the SDK gives up (the Proxy \
         document asks for descriptive failure bodies)"
    );
    let fenced = get(proxy.address, "/fenced", &[]);
    assert_eq!(fenced.status, 503, "{}", fenced.text());
    assert_eq!(fenced.text(), "authorization service unavailable");
    proxy.stop();

    let bad = tempfile::tempdir().unwrap();
    let file = config_file(
        bad.path(),
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  pluginCapabilities:
    ghost: {allow: []}
  listeners: [{address: 127.0.0.1:0, routes: [{cluster: echo}]}]
  clusters: [{name: echo, type: ECHO}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: p}
spec: {url: "{plugins}/auth.wasm"}
"#,
    );
    let errors = |file| {
        let source = sluice_proxy::Source {
            file: Some(file),
            base: flags(None, &[]),
            limits: crate::limits(),
            buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
            plugin_log_level: sluice_abi::LogLevel::Warn,
            fetch: crate::fetch_options(),
        };
        match source.load(&crate::engine()) {
            Ok(_) => panic!("a bad allow-list loads"),
            Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }
    };
    let unknown_plugin = errors(file);
    assert!(
        unknown_plugin[0]
            .ends_with("spec.pluginCapabilities.ghost: no WasmPlugin is named `ghost`"),
        "{unknown_plugin:#?}"
    );
    let file = config_file(
        bad.path(),
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  pluginCapabilities:
    p: {allow: [proxy_log, proxy_teleport]}
    q: {clusters: [nowhere]}
  listeners: [{address: 127.0.0.1:0, routes: [{cluster: echo}]}]
  clusters: [{name: echo, type: ECHO}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: p}
spec: {url: "{plugins}/add_header.wasm"}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: q}
spec: {url: "{plugins}/add_header.wasm"}
"#,
    );
    let path = file.display().to_string();
    assert_eq!(
        errors(file),
        [
            format!(
                "{path}:6:8: document 1 (Proxy) spec.pluginCapabilities.p: allow: `proxy_teleport` is not a capability (a proxy_* or WASI host function, or a proxy_on_* callback)"
            ),
            format!(
                "{path}:7:8: document 1 (Proxy) spec.pluginCapabilities.q: clusters: `nowhere` is neither a declared cluster nor an outbound|PORT||HOST name"
            ),
        ]
    );
}

#[test]
fn a_reload_ends_the_root_contexts_of_the_plugins_it_retires() {
    let document = |name: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: probe}}\nspec: {{url: \"{{plugins}}/probe.wasm\", pluginConfig: {{name: {name}}}}}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), &document("v1"));
    let mut base = flags(None, &[]);
    base.workers = Some(1);
    let proxy = start_source(Some(file), base);
    assert_eq!(get(proxy.address, "/", &[]).status, 200);
    config_file(dir.path(), &document("v2"));
    let reloaded = post(proxy.admin_address.unwrap(), "/reload");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    // Each dump empties the probe's trace (kept in shared data, which outlives generations):
    // gather them until the retired root context's end shows, within a bound.
    let mut trace = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !trace.contains("v1 root delete") && Instant::now() < deadline {
        trace.push_str(&get(proxy.address, "/", &[("x-probe-dump", "1")]).text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let ends: Vec<&str> = trace.lines().filter(|l| l.contains(" root ")).collect();
    assert_eq!(ends, ["v1 root done", "v1 root delete"], "{trace}");
    proxy.stop();
}
