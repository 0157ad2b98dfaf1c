//! Hostile plugins and clients through real sockets: each attack ends in a clear status or a
//! closed connection, and the proxy goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sluice_config::FailStrategy;

use crate::{fixture, get, start};

#[test]
fn a_plugin_flooding_a_header_map_fails_its_request_not_the_proxy() {
    let proxy = start(
        vec![fixture("header_flood", FailStrategy::FailClose)],
        None,
        &[],
        1,
    );
    for _ in 0..2 {
        let answer = get(proxy.address, "/", &[]);
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert!(answer.text().is_empty(), "{}", answer.text());
    }
    proxy.stop();
}

/// Reads until the proxy closes the connection; how long that took.
fn closed_after(mut socket: TcpStream) -> Duration {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let ended = socket.read_to_end(&mut sink);
    assert!(ended.is_ok(), "still open after 10 s: {ended:?}");
    started.elapsed()
}

/// A client that connects and says nothing, one that stops half-way through a request head, and
/// an idle keep-alive connection are all closed at `requestHeadersTimeout`; a quick client is
/// served as before.
#[test]
fn silent_slow_and_idle_clients_are_closed_at_the_request_headers_timeout() {
    let timeout = Duration::from_millis(400);
    let mut config = crate::flags(None, &[]);
    config.workers = Some(1);
    config.request_headers_timeout = timeout;
    let proxy = crate::start_source(None, config);

    let silent = TcpStream::connect(proxy.address).unwrap();
    let waited = closed_after(silent);
    assert!(waited >= timeout / 2, "closed too early: {waited:?}");

    let mut slow = TcpStream::connect(proxy.address).unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: example.com\r\n")
        .unwrap();
    closed_after(slow);

    let mut idle = TcpStream::connect(proxy.address).unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    closed_after(idle);

    assert_eq!(get(proxy.address, "/quick", &[]).status, 200);
    proxy.stop();
}

/// Sends raw bytes on a fresh connection and returns what came back until the proxy closed it
/// (or 5 s passed).
fn raw_exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Requests Envoy refuses get Envoy's status (measured against Envoy 1.40), and a header that
/// `Connection` names as hop-by-hop does not reach the upstream.
#[test]
fn malformed_http1_requests_get_envoys_answers() {
    let proxy = start(Vec::new(), None, &[], 1);
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: [(&str, &[u8], &str); 7] = [
        ("no Host", b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (
            "no Host, an absolute-form target",
            b"GET http://example.com/x HTTP/1.1\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "a transfer coding besides chunked",
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 501",
        ),
        (
            "a bad chunk size",
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
            "HTTP/1.1 404",
        ),
        ("a 70 KiB header", big.as_bytes(), "HTTP/1.1 431"),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            "HTTP/1.1 400",
        ),
    ];
    for (what, request, expected) in cases {
        let answer = raw_exchange(proxy.address, request);
        assert!(answer.starts_with(expected), "{what}: {answer:.200}");
    }
    let echoed = raw_exchange(
        proxy.address,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: x-secret, close\r\nx-secret: 1\r\nx-public: 2\r\n\r\n",
    );
    assert!(echoed.starts_with("HTTP/1.1 200"), "{echoed}");
    assert!(
        echoed.contains("x-public") && !echoed.contains("x-secret"),
        "{echoed}"
    );
    assert_eq!(get(proxy.address, "/after", &[]).status, 200);
    proxy.stop();
}

/// An upstream that answers with bytes that are not HTTP: Envoy's 502 (a protocol error), not
/// the 503 of an upstream that reset.
#[test]
fn an_upstream_that_does_not_speak_http_is_a_502() {
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut client in garbage.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = client.read(&mut request);
            let _ = client.write_all(b"this is not http\r\n\r\n");
        }
    });
    let proxy = start(Vec::new(), Some(address), &[], 1);
    let answer = get(proxy.address, "/", &[]);
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(
        answer.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    );
    proxy.stop();
}

/// An upstream that says keep-alive and then closes each connection: a request that meets such
/// a connection closing is sent again on a new one (it has no body and an idempotent method), so
/// no client sees an error.
#[test]
fn an_upstream_closing_kept_alive_connections_costs_no_request() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut client in upstream.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = client.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            // Closed a moment later, without saying so and without reading what came meanwhile:
            // the proxy has taken it for the next request by then.
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let proxy = start(Vec::new(), Some(address), &[], 1);
    let failed: Vec<u16> = (0..300)
        .map(|_| get(proxy.address, "/", &[]).status)
        .filter(|status| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 300 failed: {failed:?}",
        failed.len()
    );
    proxy.stop();
}

/// An HTTP/2 client that resets its stream while the upstream is still working: the upstream
/// request ends with it (its connection closes) instead of running to the cluster timeout.
#[test]
fn an_abandoned_http2_stream_ends_its_upstream_request() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap();
    let (closed, closed_after) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut client, _)) = upstream.accept() {
            client
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let started = Instant::now();
            let mut buffer = [0u8; 4096];
            // Never answers; reads until the proxy closes the connection.
            while matches!(client.read(&mut buffer), Ok(n) if n > 0) {}
            let _ = closed.send(started.elapsed());
        }
    });
    let proxy = start(Vec::new(), Some(address), &[], 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let io = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
        let request = http::Request::get("http://example.com/slow")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        // The response never comes: the request is dropped (RST_STREAM) after a moment.
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            crate::send_once(io, request, true),
        )
        .await;
        assert!(answer.is_err(), "the upstream never answers");
        // Keep the client connection open: only the stream is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let waited = closed_after
        .recv_timeout(Duration::from_secs(20))
        .expect("the upstream connection closed");
    assert!(
        waited < Duration::from_secs(5),
        "the upstream request lived {waited:?} after the client left"
    );
    proxy.stop();
}

/// A plugin that replaces a body but leaves the `content-length` that went ahead of it: the
/// client never gets a body cut at the old length as if it were whole (hyper's silent cut) nor
/// bytes beyond it (Envoy's: the next message on the connection), and the upstream never gets
/// a request body that overflows into a second request (Envoy sends it so).
#[test]
fn a_body_a_plugin_resized_under_a_sent_content_length_ends_in_error() {
    use crate::{built, origin, request};
    let upstream = origin(|parts, body| {
        let text = format!(
            "seen {} {}",
            parts.uri.path(),
            String::from_utf8_lossy(&body)
        );
        http::Response::builder()
            .header("content-length", text.len())
            .body(http_body_util::Full::new(bytes::Bytes::from(text)))
            .unwrap()
    });
    let replacing = |on: &str, size: usize| {
        built(
            "probe",
            &format!(r#"{{"pause": ["{on}"], "replace_body": {{"on": "{on}", "size": {size}}}}}"#),
        )
    };
    // Response bodies, larger (past the buffer limit too) and smaller than their length.
    for size in [100, 2 << 20, 5] {
        let proxy = start(
            vec![replacing("response_body", size)],
            Some(upstream),
            &[],
            1,
        );
        for http2 in [false, true] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let outcome = runtime.block_on(async {
                let io = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
                let request = http::Request::get("http://example.com/abc")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let answer = tokio::time::timeout(Duration::from_secs(10), async {
                    let response = crate::try_send_once(io, request, http2).await?;
                    http_body_util::BodyExt::collect(response.into_body()).await
                })
                .await
                .expect("an answer or an error within 10 s");
                answer.map(|body| body.to_bytes().len())
            });
            assert!(
                outcome.is_err(),
                "size {size}, HTTP/2 {http2}: the body must end in error, got {outcome:?} bytes"
            );
        }
        // A body that keeps its length still passes, and the proxy serves on.
        let kept = get(proxy.address, "/", &[("x-probe-dump", "1")]);
        assert_eq!(kept.status, 200);
        proxy.stop();
    }
    // A request body made longer than its content-length is refused before it reaches the
    // upstream; one made shorter too.
    for size in [100, 2] {
        let proxy = start(
            vec![replacing("request_body", size)],
            Some(upstream),
            &[],
            1,
        );
        for http2 in [false, true] {
            let post = http::Request::post("http://example.com/abc")
                .header("content-length", "5")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"hello",
                )))
                .unwrap();
            let answer = request(proxy.address, post, http2);
            assert_eq!(answer.status, 500, "size {size}: {}", answer.text());
            assert_eq!(
                answer.text(),
                "the request body no longer matches its content-length"
            );
        }
        proxy.stop();
    }
    // The same length passes untouched.
    let proxy = start(vec![replacing("request_body", 5)], Some(upstream), &[], 1);
    let post = http::Request::post("http://example.com/abc")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello",
        )))
        .unwrap();
    let answer = request(proxy.address, post, false);
    assert_eq!(
        (answer.status, answer.text()),
        (200, "seen /abc xxxxx".to_string())
    );
    proxy.stop();
}

/// An HTTP/2 client that keeps its stream window shut: once the stream has made no progress
/// for `streamIdleTimeout`, the proxy ends it and its upstream request (Envoy's stream idle
/// timeout), rather than wait for the client for good.
#[test]
fn a_stream_the_client_never_reads_ends_at_the_stream_idle_timeout() {
    use sluice_test_support::h2_frames;
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap();
    let (closed, closed_after) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut socket, _)) = upstream.accept() {
            let mut head = [0u8; 4096];
            let _ = socket.read(&mut head);
            let started = Instant::now();
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n");
            let chunk = vec![b'x'; 16 * 1024];
            // Blocks when the proxy stops reading; fails once it closes the connection.
            while socket.write_all(&chunk).is_ok() {}
            let _ = closed.send(started.elapsed());
        }
    });
    let mut config = crate::flags(Some(address), &[]);
    config.workers = Some(1);
    config.stream_idle_timeout = Duration::from_millis(500);
    let proxy = crate::start_source(None, config);
    let mut client = TcpStream::connect(proxy.address).unwrap();
    let mut frames = h2_frames::preface(&[(h2_frames::INITIAL_WINDOW_SIZE, 0)]);
    frames.extend(h2_frames::settings_ack());
    frames.extend(h2_frames::get(1, "example.com", "/large"));
    client.write_all(&frames).unwrap();
    let mut reader = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sink = [0u8; 16384];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let waited = closed_after
        .recv_timeout(Duration::from_secs(20))
        .expect("the upstream connection closed");
    assert!(
        waited < Duration::from_secs(5),
        "the upstream request lived {waited:?} for a client that never read"
    );
    // The proxy still answers (its upstream is gone now: 503).
    assert_eq!(get(proxy.address, "/", &[]).status, 503);
    drop(client);
    proxy.stop();
}

/// A client that sends WINDOW_UPDATE frames by the thousand, or empty DATA frames, and never
/// lets the proxy send anything: the connection is closed at Envoy's flood limits, and a client
/// behaving well is served as before.
#[test]
fn http2_floods_close_the_connection() {
    use sluice_test_support::h2_frames;
    let proxy = start(Vec::new(), None, &[], 1);
    let floods = [
        (0..100_000)
            .flat_map(|_| h2_frames::window_update(0, 1))
            .collect::<Vec<u8>>(),
        {
            let mut frames = h2_frames::frame(0x1, 0x4, 1, &[0x83, 0x86, 0x84, 0x01, 0x01, b'x']);
            frames.extend((0..10_000).flat_map(|_| h2_frames::frame(0x0, 0, 1, &[])));
            frames
        },
    ];
    for flood in floods {
        let mut client = TcpStream::connect(proxy.address).unwrap();
        let mut frames = h2_frames::preface(&[]);
        frames.extend(h2_frames::settings_ack());
        client.write_all(&frames).unwrap();
        // The proxy may close while the flood is still being written.
        let started = Instant::now();
        let _ = client.write_all(&flood);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = [0u8; 16384];
        // Closed (or reset, the flood unread) rather than timed out.
        let ended = loop {
            match client.read(&mut sink) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        assert!(ended.is_ok(), "still open after a flood: {ended:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let answer = crate::request(
        proxy.address,
        http::Request::get("http://example.com/")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
        true,
    );
    assert_eq!(answer.status, 200);
    proxy.stop();
}

/// Reads HTTP/2 frames until the proxy closes the connection, answering its PINGs as a client
/// does; whether a GOAWAY came first, and how long it took.
fn goaway_then_close(mut socket: TcpStream) -> (bool, Duration) {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16384];
    let mut at = 0;
    let mut goaway = false;
    while let Ok(n) = socket.read(&mut buffer) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buffer[..n]);
        while at + 9 <= bytes.len() {
            let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            if at + 9 + length > bytes.len() {
                break;
            }
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            goaway |= kind == 0x7;
            if kind == 0x6 && flags & 0x1 == 0 {
                let payload = bytes[at + 9..at + 9 + length].to_vec();
                let _ = socket.write_all(&sluice_test_support::h2_frames::frame(
                    0x6, 0x1, 0, &payload,
                ));
            }
            at += 9 + length;
        }
    }
    (goaway, started.elapsed())
}

/// An HTTP/2 connection without streams for `idleTimeout` is closed with a GOAWAY, and one
/// older than `maxConnectionDuration` too, busy or not (Envoy's connection timeouts).
#[test]
fn http2_connections_end_when_idle_or_too_old() {
    use sluice_test_support::h2_frames;
    let mut config = crate::flags(None, &[]);
    config.workers = Some(1);
    config.idle_timeout = Duration::from_millis(400);
    let proxy = crate::start_source(None, config);
    let mut client = TcpStream::connect(proxy.address).unwrap();
    let mut frames = h2_frames::preface(&[]);
    frames.extend(h2_frames::settings_ack());
    frames.extend(h2_frames::get(1, "example.com", "/"));
    client.write_all(&frames).unwrap();
    let (goaway, waited) = goaway_then_close(client);
    assert!(goaway, "a GOAWAY before the close");
    assert!(
        waited < Duration::from_secs(5),
        "idle connection open {waited:?}"
    );
    proxy.stop();

    let mut config = crate::flags(None, &[]);
    config.workers = Some(1);
    config.max_connection_duration = Some(Duration::from_millis(600));
    let proxy = crate::start_source(None, config);
    let mut client = TcpStream::connect(proxy.address).unwrap();
    let mut frames = h2_frames::preface(&[]);
    frames.extend(h2_frames::settings_ack());
    client.write_all(&frames).unwrap();
    let mut writer = client.try_clone().unwrap();
    // Busy: a request every 100 ms, so only the duration can end it.
    std::thread::spawn(move || {
        for stream in 0..100u32 {
            let get = h2_frames::get(2 * stream + 1, "example.com", "/");
            if writer.write_all(&get).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (goaway, waited) = goaway_then_close(client);
    assert!(goaway, "a GOAWAY before the close");
    assert!(
        waited < Duration::from_secs(5),
        "connection open {waited:?}"
    );
    proxy.stop();
}

/// `maxRequestHeadersKb` and `bufferLimitBytes` from the `Proxy` document bound request heads
/// (431) and the body bytes plugins hold (413), as Envoy's `max_request_headers_kb` and buffer
/// limit do.
#[test]
fn the_documents_limits_bound_heads_and_held_bodies() {
    let mut config = crate::flags(None, &[]);
    config.workers = Some(1);
    config.max_request_headers_kb = 16;
    config.buffer_limit_bytes = Some(1024);
    config.plugins = vec![crate::built("probe", r#"{"pause": ["request_body"]}"#)];
    let proxy = crate::start_source(None, config);
    let big = "a".repeat(20 * 1024);
    let answer = raw_exchange(
        proxy.address,
        format!("GET / HTTP/1.1\r\nhost: example.com\r\nx-big: {big}\r\n\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let small = "a".repeat(10 * 1024);
    let answer = get(proxy.address, "/", &[("x-big", small.as_str())]);
    assert_eq!(answer.status, 200, "a head under the bound passes");
    let post = |size: usize| {
        crate::request(
            proxy.address,
            http::Request::post("http://example.com/")
                .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                    b'x';
                    size
                ])))
                .unwrap(),
            false,
        )
    };
    assert_eq!(post(4096).status, 413, "a held body over the bound");
    assert_eq!(post(512).status, 200, "a held body under it");
    proxy.stop();
}

/// The bounds on shared state in `pluginLimits` reach the engine and `/config_dump`: rate-limit,
/// which defines four metrics as it starts, is refused when the process may hold one.
#[test]
fn shared_state_bounds_from_the_document_apply() {
    for metrics in [None, Some(1)] {
        let mut config = crate::flags(None, &[]);
        config.workers = Some(1);
        config.plugin_limits.metrics = metrics;
        config.plugin_limits.shared_data_bytes = Some(4096);
        config.plugins = vec![crate::built("rate_limit", r#"{"requestsPerWindow": 100}"#)];
        let started = sluice_proxy::start(
            sluice_proxy::Source {
                file: None,
                base: config,
                limits: crate::limits(),
                buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
                plugin_log_level: sluice_abi::LogLevel::Warn,
                fetch: crate::fetch_options(),
            },
            crate::engine(),
        );
        match (metrics, started) {
            (None, Ok(proxy)) => {
                assert_eq!(get(proxy.address, "/", &[]).status, 200);
                let dump: serde_json::Value = serde_json::from_slice(
                    &get(proxy.admin_address.unwrap(), "/config_dump", &[]).body,
                )
                .unwrap();
                let limits = &dump["pluginLimits"];
                assert_eq!(limits["sharedDataBytes"], 4096, "{limits}");
                assert_eq!(
                    limits["metrics"],
                    sluice_host::SharedLimits::default().metrics
                );
                proxy.stop();
            }
            (Some(1), Err(error)) => {
                let message = error.to_string();
                // Refused by the canary, which runs under the same bounds, not by a worker. The
                // SDK panics on the second `proxy_define_metric` (INTERNAL_FAILURE, 10).
                assert!(
                    message.starts_with("plugin 'rate-limit'")
                        && message.contains("unexpected status: 10"),
                    "{message}"
                );
            }
            (_, Ok(_)) => panic!("rate-limit started with room for one metric"),
            (_, Err(error)) => panic!("rate-limit did not start: {error}"),
        }
    }
}

/// `pluginLimits` in the `Proxy` document reaches the plugins: a header map bound small enough
/// for one added header to pass it fails the plugin (503), the default does not. A plugin's own
/// limits (`pluginCapabilities.NAME.limits`) apply to it alone, on instances of its own, and
/// `/config_dump` shows each plugin's.
#[test]
fn plugin_limits_from_the_document_apply() {
    for (entries, status) in [(None, 200), (Some(3), 503)] {
        let mut config = crate::flags(None, &[]);
        config.workers = Some(1);
        config.plugin_limits.header_map_entries = entries;
        config.plugins = vec![crate::built("probe", r#"{"stamp": true}"#)];
        let proxy = crate::start_source(None, config);
        assert_eq!(get(proxy.address, "/", &[]).status, status, "{entries:?}");
        proxy.stop();
    }
    // Two probes of one module and VM id, the second adding a header: bounding it fails it
    // (503), though the first, unbounded, started the VM they would otherwise share; bounding
    // only the first leaves the second unbounded (200).
    for bounded in [0, 1, 2] {
        let mut config = crate::flags(None, &[]);
        config.workers = Some(1);
        let mut probes = [
            crate::built("probe", r#"{"name": "a"}"#),
            crate::built("probe", r#"{"stamp": true}"#),
        ];
        probes[1].name = "probe-b".into();
        if let Some(probe) = probes.get_mut(bounded) {
            probe.capabilities.limits.header_map_entries = Some(3);
        }
        config.plugins = probes.to_vec();
        let proxy = crate::start_source(None, config);
        let status = if bounded == 1 { 503 } else { 200 };
        assert_eq!(
            get(proxy.address, "/", &[]).status,
            status,
            "bounded: {bounded}"
        );
        let dump: serde_json::Value =
            serde_json::from_slice(&get(proxy.admin_address.unwrap(), "/config_dump", &[]).body)
                .unwrap();
        let entries: Vec<&serde_json::Value> = dump["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["limits"]["headerMapEntries"])
            .collect();
        let expected: Vec<serde_json::Value> = (0..2)
            .map(|i| serde_json::json!(if i == bounded { 3 } else { 16384 }))
            .collect();
        assert_eq!(
            entries,
            expected.iter().collect::<Vec<_>>(),
            "bounded: {bounded}"
        );
        assert_eq!(dump["pluginLimits"]["headerMapEntries"], 16384);
        proxy.stop();
    }
}
