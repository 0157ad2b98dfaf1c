//! The proxy end to end.

use bytes::Bytes;
use http_body_util::Full;
use sluice_config::FailStrategy;

use crate::{built, counting_origin, fixture, get, origin, request, start};

const ADD_HEADER: &str = r#"{"request": {"set": {"x-hello": "from-sluice"}}, "response": {"set": {"x-plugin": "add-header"}}}"#;

#[test]
fn a_plugin_in_front_of_the_echo_upstream_over_http1_and_h2c() {
    let proxy = start(vec![built("add_header", ADD_HEADER)], None, &[], 2);
    for http2 in [false, true] {
        let request_body = http::Request::post("http://example.com/hello?x=1")
            .body(Full::new(Bytes::from("ping")))
            .unwrap();
        let answer = request(proxy.address, request_body, http2);
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-plugin"), Some("add-header"));
        let echo: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(echo["path"], "/hello?x=1");
        assert_eq!(echo["body"], "ping");
        let headers = echo["headers"].as_array().unwrap();
        assert!(
            headers
                .iter()
                .any(|h| h[0] == "x-hello" && h[1] == "from-sluice"),
            "{echo}"
        );
        assert!(
            headers.iter().any(|h| h[0] == "x-request-id"),
            "a request id is added: {echo}"
        );
    }
    proxy.stop();
}

#[test]
fn local_replies_reach_the_client_and_the_upstream_never_sees_the_request() {
    let auth = built("auth", r#"{"tokens": {"secret": "alice"}}"#);
    let proxy = start(vec![auth], None, &[], 1);
    let denied = get(proxy.address, "/private", &[]);
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("www-authenticate"),
        Some(r#"Bearer realm="sluice""#)
    );
    assert_eq!(denied.text(), "missing credentials");
    let allowed = get(
        proxy.address,
        "/private",
        &[("authorization", "Bearer secret")],
    );
    assert_eq!(allowed.status, 200);
    assert!(allowed.text().contains(r#""alice""#), "{}", allowed.text());
    proxy.stop();
}

#[test]
fn requests_reach_a_real_upstream_after_a_callout_to_a_cluster() {
    let (authz, authz_connections) = crate::counting_origin(|parts, _| {
        let allowed = parts.uri.path() == "/check";
        http::Response::builder()
            .status(if allowed { 200 } else { 404 })
            .header("x-user", "bob")
            .body(Full::new(Bytes::new()))
            .unwrap()
    });
    let app = origin(|parts, body| {
        let seen = format!(
            "{} {} user={:?} len={}",
            parts.method,
            parts.uri,
            parts.headers.get("x-user"),
            body.len()
        );
        http::Response::builder()
            .header("x-origin", "app")
            .body(Full::new(Bytes::from(seen)))
            .unwrap()
    });
    let callout = built("http_callout", r#"{"cluster": "authz", "timeoutMs": 2000}"#);
    let clusters = [("authz", authz)];
    let upstream = Some(app);
    let proxy = start(vec![callout], upstream, &clusters, 1);
    for _ in 0..5 {
        let answer = request(
            proxy.address,
            http::Request::post("/orders")
                .header("host", "shop")
                .body(Full::new(Bytes::from("order")))
                .unwrap(),
            false,
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-origin"), Some("app"));
        assert_eq!(answer.text(), r#"POST /orders user=Some("bob") len=5"#);
    }
    // As Envoy's async client, callouts use the cluster's pooled connections: one worker made
    // five calls in turn on one kept-alive connection.
    assert_eq!(
        authz_connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "callouts reuse their connection"
    );
    proxy.stop();
}

#[test]
fn a_large_body_streams_through_intact() {
    let app = origin(|_, body| {
        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
        http::Response::new(Full::new(Bytes::from(format!("{} {sum}", body.len()))))
    });
    let upstream = Some(app);
    let proxy = start(vec![built("add_header", ADD_HEADER)], upstream, &[], 1);
    let body: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let answer = request(
        proxy.address,
        http::Request::put("/upload")
            .header("host", "x")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
        false,
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), format!("{} {sum}", 16 << 20));
    proxy.stop();
}

#[test]
fn shared_data_limits_requests_across_two_workers() {
    let limiter = built(
        "rate_limit",
        r#"{"requestsPerWindow": 3, "windowMs": 60000}"#,
    );
    let proxy = start(vec![limiter], None, &[], 2);
    let statuses: Vec<u16> = (0..6)
        .map(|i| get(proxy.address, &format!("/r{i}"), &[]).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    proxy.stop();
}

#[test]
fn every_fail_strategy_with_a_trapping_and_a_looping_plugin() {
    let skip = [("x-fixture-skip", "1")];
    for fixture_name in ["trap", "infinite_loop"] {
        // Envoy's 503 for a failed plugin: no body.
        let failed = |answer: &crate::Answer| answer.status == 503 && answer.text().is_empty();
        let survived = |answer: &crate::Answer| {
            answer.status == 200 && answer.text().contains(r#""x-survived""#)
        };

        let closed = start(
            vec![fixture(fixture_name, FailStrategy::FailClose)],
            None,
            &[],
            1,
        );
        let started = std::time::Instant::now();
        let first = get(closed.address, "/", &[]);
        assert!(failed(&first), "{fixture_name}: {}", first.text());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let second = get(closed.address, "/", &skip);
        assert!(
            failed(&second),
            "{fixture_name}: a FAIL_CLOSE plugin stays failed: {}",
            second.text()
        );
        // Workers report their instances once a second; bounded wait for the failed one.
        let admin = closed.admin_address.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let instance = loop {
            let plugins: serde_json::Value =
                serde_json::from_slice(&get(admin, "/plugins", &[]).body).unwrap();
            let instance = plugins[0]["instances"][0].clone();
            if instance["state"] == "failed" || std::time::Instant::now() > deadline {
                break instance;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(instance["state"], "failed", "{instance}");
        assert!(
            instance["failure"].as_str().unwrap().contains(fixture_name),
            "{instance}"
        );
        closed.stop();

        let open = start(
            vec![fixture(fixture_name, FailStrategy::FailOpen)],
            None,
            &[],
            1,
        );
        for _ in 0..2 {
            let answer = get(open.address, "/", &[]);
            assert_eq!(
                answer.status, 200,
                "{fixture_name}: FAIL_OPEN skips the plugin"
            );
            assert!(!answer.text().contains("x-survived"));
        }
        open.stop();

        let reload = start(
            vec![fixture(fixture_name, FailStrategy::FailReload)],
            None,
            &[],
            1,
        );
        let first = get(reload.address, "/", &[]);
        assert!(failed(&first), "{fixture_name}: {}", first.text());
        let fresh = get(reload.address, "/", &skip);
        assert!(
            survived(&fresh),
            "{fixture_name}: FAIL_RELOAD gives the next request a fresh instance: {}",
            fresh.text()
        );
        reload.stop();
    }
}

#[test]
fn an_unreachable_upstream_is_a_503_that_says_why() {
    let refusing = sluice_test_support::RefusingPort::new();
    let closed = refusing.address;
    let proxy = start(Vec::new(), Some(closed), &[], 1);
    let answer = get(proxy.address, "/", &[]);
    assert_eq!(answer.status, 503);
    assert!(
        answer.text().contains("upstream connect error"),
        "{}",
        answer.text()
    );
    proxy.stop();
}

#[test]
fn upstream_connections_are_kept_alive_and_reused() {
    let (app, connections) = counting_origin(|parts, _| {
        http::Response::new(Full::new(Bytes::from(parts.uri.path().to_string())))
    });
    let proxy = start(Vec::new(), Some(app), &[], 1);
    for i in 0..5 {
        let answer = get(proxy.address, &format!("/n{i}"), &[]);
        assert_eq!(answer.text(), format!("/n{i}"));
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one upstream connection served every request"
    );
    proxy.stop();
}

#[test]
fn the_admin_api_reports_readiness_stats_and_plugins() {
    let plugins = vec![
        built("auth", r#"{"tokens": {"secret": "alice"}}"#),
        built("rate_limit", r#"{"requestsPerWindow": 100}"#),
    ];
    let proxy = start(plugins, None, &[], 2);
    let admin = proxy.admin_address.expect("admin enabled");
    assert_eq!(get(admin, "/ready", &[]).text(), "LIVE\n");
    assert_eq!(get(proxy.address, "/", &[]).status, 401);
    assert_eq!(
        get(proxy.address, "/", &[("authorization", "Bearer secret")]).status,
        200
    );
    // A request is counted when its stream ends, a moment after the client has its answer.
    let wanted = "sluice_request_duration_seconds_count 2";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut stats = get(admin, "/stats", &[]).text();
    while !stats.contains(wanted) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        stats = get(admin, "/stats", &[]).text();
    }
    for line in [
        "sluice_requests_total 2",
        "sluice_responses_total{class=\"2xx\"} 1",
        "sluice_responses_total{class=\"4xx\"} 1",
        "sluice_request_duration_seconds_count 2",
        "sluice_plugin_rate_limit_allowed_total{name=\"rate_limit_allowed_total\"} 1",
        "# TYPE sluice_plugin_callback_seconds counter",
        "sluice_route_requests_total{listener=\"default\",route=\"default\"} 2",
        "sluice_cluster_requests_total{cluster=\"echo\"} 1",
        "sluice_plugin_memory_bytes{plugin=\"auth\",worker=\"0\"} ",
        "sluice_plugin_memory_bytes{plugin=\"rate-limit\",worker=\"1\"} ",
    ] {
        assert!(stats.contains(line), "missing {line:?} in:\n{stats}");
    }
    let calls = |plugin: &str| -> u64 {
        let prefix = format!("sluice_plugin_callbacks_total{{plugin=\"{plugin}\"}} ");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no callback count for {plugin}:\n{stats}"))
    };
    // Both requests: context create, headers and the three end-of-stream calls at least.
    assert!(calls("auth") >= 10, "{stats}");
    let plugins: serde_json::Value =
        serde_json::from_slice(&get(admin, "/plugins", &[]).body).unwrap();
    assert_eq!(plugins[0]["name"], "auth");
    assert_eq!(plugins[1]["abi"], "0.2.1");
    let instances = plugins[0]["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "one instance per worker: {plugins}");
    assert!(
        instances
            .iter()
            .all(|i| i["state"] == "running" && i["memoryBytes"].as_u64() > Some(0)),
        "{plugins}"
    );
    assert_eq!(get(admin, "/nope", &[]).status, 404);

    let levels: serde_json::Value =
        serde_json::from_slice(&get(admin, "/logging", &[]).body).unwrap();
    assert_eq!(levels["plugins"]["auth"], "warn");
    let post = |query: &str| {
        request(
            admin,
            http::Request::post(format!("/logging?{query}"))
                .header("host", "admin")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            false,
        )
    };
    let changed: serde_json::Value =
        serde_json::from_slice(&post("plugin=auth&level=debug").body).unwrap();
    assert_eq!(changed["plugins"]["auth"], "debug");
    assert_eq!(changed["plugins"]["rate-limit"], "warn");
    let all: serde_json::Value = serde_json::from_slice(&post("level=error").body).unwrap();
    assert_eq!(
        all,
        serde_json::json!({"default": "error", "plugins": {"auth": "error", "rate-limit": "error"}})
    );
    assert_eq!(post("plugin=nope&level=info").status, 404);
    assert_eq!(post("level=loud").status, 400);
    proxy.stop();
}

#[test]
fn a_unary_grpc_callout_over_http2_decides_the_request() {
    let (authz, connections) = crate::counting_grpc_origin(|path, metadata, messages| {
        assert_eq!(path, "/authz.v1.Authorizer/Check");
        let asked = String::from_utf8_lossy(&messages[0]).into_owned();
        let token = metadata.get("authorization").map(|v| v.as_bytes().to_vec());
        let reply = if asked == "/orders" && token.as_deref() == Some(b"Bearer abc") {
            "allow".to_string()
        } else {
            format!("no access to {asked}")
        };
        (vec![reply.into_bytes()], 0)
    });
    let refusing = sluice_test_support::RefusingPort::new();
    let closed = refusing.address;
    let proxy = start(
        vec![built(
            "grpc_auth",
            r#"{"cluster": "grpc-authz", "timeoutMs": 2000}"#,
        )],
        None,
        &[("grpc-authz", authz)],
        1,
    );
    let allowed = get(proxy.address, "/orders", &[("authorization", "Bearer abc")]);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert!(allowed.text().contains("x-grpc-auth"), "{}", allowed.text());
    let denied = get(proxy.address, "/admin", &[]);
    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "forbidden: no access to /admin");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "both calls share the worker's HTTP/2 connection to the cluster"
    );
    proxy.stop();

    let unavailable = start(
        vec![built("grpc_auth", r#"{"cluster": "grpc-authz"}"#)],
        None,
        &[("grpc-authz", closed)],
        1,
    );
    let answer = get(unavailable.address, "/orders", &[]);
    assert_eq!(answer.status, 503);
    assert_eq!(answer.text(), "authorization service unavailable");
    unavailable.stop();
}

#[test]
fn grpc_passes_through_to_an_http2_upstream_with_its_trailers() {
    use http_body_util::BodyExt;

    let service = crate::grpc_origin(|path, metadata, messages| {
        let plugin_saw = metadata.contains_key("x-hello");
        let reply = format!(
            "{path} {} {plugin_saw}",
            String::from_utf8_lossy(&messages[0])
        );
        (vec![reply.into_bytes()], 0)
    });
    let mut config = crate::flags(Some(service), &[]);
    config.clusters[0].http2 = true;
    config.plugins = vec![built("add_header", ADD_HEADER)];
    config.workers = Some(1);
    let proxy = crate::start_source(None, config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, trailers, body) = runtime.block_on(async move {
        let io = hyper_util::rt::TokioIo::new(
            tokio::net::TcpStream::connect(proxy.address).await.unwrap(),
        );
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut framed = vec![0, 0, 0, 0, 5];
        framed.extend_from_slice(b"hello");
        let request = http::Request::post("http://shop.example/echo.v1.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(framed)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (status, trailers, collected.to_bytes())
        // The proxy stops when the test ends.
    });
    assert_eq!(status, 200);
    assert_eq!(
        trailers.and_then(|t| t.get("grpc-status").cloned()),
        Some(http::HeaderValue::from_static("0")),
        "the upstream's trailers reach the client"
    );
    assert_eq!(&body[5..], b"/echo.v1.Echo/Say hello true");
}

/// An origin that switches to a byte-echo protocol on `upgrade: echo`, on its own thread.
fn switching_origin() -> std::net::SocketAddr {
    crate::serve_on_thread(|socket| async move {
        let service = hyper::service::service_fn(
            |mut request: http::Request<hyper::body::Incoming>| async move {
                let asked = request.headers().get("upgrade").cloned();
                let hello = request.headers().get("x-hello").cloned();
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(upgraded) = upgrade.await else { return };
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut buffer = [0u8; 64];
                    while let Ok(n @ 1..) = io.read(&mut buffer).await {
                        if io.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut response = http::Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header(
                        "upgrade",
                        asked.unwrap_or(http::HeaderValue::from_static("none")),
                    );
                if let Some(hello) = hello {
                    response = response.header("x-plugin-saw", hello);
                }
                Ok::<_, hyper::Error>(response.body(Full::new(Bytes::new())).unwrap())
            },
        );
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
            .with_upgrades()
            .await;
    })
    .0
}

#[test]
fn an_upgrade_passes_through_the_plugins_and_then_carries_bytes_both_ways() {
    use std::io::{Read, Write};

    let proxy = start(
        vec![built("add_header", ADD_HEADER)],
        Some(switching_origin()),
        &[],
        1,
    );
    let mut socket = std::net::TcpStream::connect(proxy.address).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    socket
        .write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            socket.read(&mut byte).unwrap(),
            1,
            "head ended early: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(
        head.contains("x-plugin-saw: from-sluice"),
        "the plugin ran on the request: {head}"
    );
    assert!(
        head.contains("x-plugin: add-header"),
        "and on the 101: {head}"
    );
    for message in [&b"ping"[..], b"second message"] {
        socket.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        socket.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }
    drop(socket);
    proxy.stop();
}

#[test]
fn ticks_on_each_worker_reopen_a_window_shared_by_two_workers() {
    let proxy = start(
        vec![built(
            "rate_limit",
            r#"{"requestsPerWindow": 2, "windowMs": 300}"#,
        )],
        None,
        &[],
        2,
    );
    // A window may close between two requests; bounded: within 20 requests one is refused.
    let refused = (0..20).any(|i| get(proxy.address, &format!("/r{i}"), &[]).status == 429);
    assert!(
        refused,
        "the shared count reaches the limit across both workers"
    );
    std::thread::sleep(std::time::Duration::from_millis(450));
    assert_eq!(
        get(proxy.address, "/after", &[]).status,
        200,
        "a tick closed the window and reset the shared count"
    );
    proxy.stop();
}

/// A callout never outlives the request that made it: when the client goes away while its
/// request waits for an authorization service that never answers, the callout's connection to
/// that service is closed at once, not when the callout's own timeout (a minute) passes.
#[test]
fn a_callout_ends_with_the_request_that_made_it() {
    use std::io::{Read, Write};

    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authz = hanging.local_addr().unwrap();
    let (closed, closes) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for socket in hanging.incoming().take(1) {
            let mut socket = socket.unwrap();
            let accepted = std::time::Instant::now();
            // Read the request and never answer; the read ends when the proxy closes.
            let mut buffer = [0u8; 4096];
            while matches!(socket.read(&mut buffer), Ok(n) if n > 0) {}
            let _ = closed.send(accepted.elapsed());
        }
    });
    let callout = built(
        "http_callout",
        r#"{"cluster": "authz", "timeoutMs": 60000}"#,
    );
    let proxy = start(vec![callout], None, &[("authz", authz)], 1);
    let mut client = std::net::TcpStream::connect(proxy.address).unwrap();
    client
        .write_all(b"GET /orders HTTP/1.1\r\nhost: shop\r\n\r\n")
        .unwrap();
    // The callout is out once the service has its connection; then the client leaves.
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(client);
    let lived = closes
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the callout's connection was still open 10 s after its request ended");
    assert!(
        lived < std::time::Duration::from_secs(5),
        "the callout lived {lived:?}"
    );
    proxy.stop();
}
