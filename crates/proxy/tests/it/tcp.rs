//! TCP listeners and network (L4) plugins, compared with real Envoy (`SLUICE_ENVOY`): the same
//! probes as network filters in front of Envoy's tcp_proxy and in front of a sluice TCP listener,
//! the same client script, and then the bytes the client received and the probes' trace (every
//! callback, its arguments and what each host call returned) must be the same.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::differential::{envoy_binary, start_envoy};

/// An origin that echoes what it reads as it reads it (after `prefix`) and half-closes after the client's end of
/// stream; `QUIT` makes it close first, with no answer (an answer and the FIN may reach a proxy
/// in one read or in two, so a trace with both would depend on timing).
fn tcp_origin(prefix: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65536];
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if buffer[..n].windows(4).any(|w| w == b"QUIT") {
                                return;
                            }
                            let echo = [prefix, &buffer[..n]].concat();
                            if stream.write_all(&echo).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    address
}

/// One step of a client's script.
#[derive(Clone, Copy)]
enum Act {
    /// Send these bytes, then read until this many bytes came back (or the connection ended).
    Send(&'static str, usize),
    /// Half-close, then read to the end.
    Finish,
    /// Read to the end without half-closing (the proxy or the origin closes).
    ReadToEnd,
}

struct TcpCase {
    name: &'static str,
    /// Plugins (crate names) and their configurations, in chain order.
    plugins: Vec<(&'static str, serde_json::Value)>,
    script: Vec<Act>,
}

fn cases() -> Vec<TcpCase> {
    use serde_json::json;
    let probe = |configuration| ("probe", configuration);
    vec![
        TcpCase {
            name: "plain",
            plugins: vec![
                probe(
                    json!({"name": "a", "net_calls": true, "properties": ["connection.mtls", "connection.requested_server_name", "upstream.address", "plugin_name"]}),
                ),
                probe(json!({"name": "b"})),
            ],
            script: vec![Act::Send("hello", 5), Act::Send("again", 5), Act::Finish],
        },
        TcpCase {
            name: "rewrite",
            plugins: vec![
                probe(json!({"name": "a", "net_prefix": {"downstream": "A<", "upstream": "a<"}})),
                probe(
                    json!({"name": "b", "net_replace": {"downstream": "BBB", "upstream": "bbbb"}}),
                ),
            ],
            script: vec![Act::Send("hello", 6), Act::Finish],
        },
        TcpCase {
            name: "paused",
            plugins: vec![
                probe(json!({"name": "a"})),
                probe(json!({"name": "b", "net_pause": ["downstream_data"], "tick_resume_ms": 20})),
            ],
            script: vec![Act::Send("wait for me", 11), Act::Finish],
        },
        TcpCase {
            name: "paused-at-accept",
            plugins: vec![
                probe(json!({"name": "a", "net_pause": ["new_connection"], "tick_resume_ms": 20})),
                probe(json!({"name": "b"})),
            ],
            script: vec![Act::Send("let me in", 9), Act::Finish],
        },
        TcpCase {
            name: "closed-by-plugin",
            plugins: vec![
                probe(json!({"name": "a", "net_close_on": "STOP"})),
                probe(json!({"name": "b"})),
            ],
            script: vec![Act::Send("one", 3), Act::Send("STOP", 0), Act::ReadToEnd],
        },
        TcpCase {
            name: "upstream-closed-by-plugin",
            plugins: vec![probe(json!({"name": "a", "net_close_upstream_on": "two"}))],
            script: vec![Act::Send("one", 3), Act::Send("two", 0), Act::ReadToEnd],
        },
        TcpCase {
            name: "routed-by-filter-state",
            plugins: vec![probe(json!({"name": "a", "foreign": [{
                "on": "new_connection",
                "name": "set_envoy_filter_state",
                "hex": crate::differential::protobuf_hex(&[(1, b"envoy.tcp_proxy.cluster"), (2, b"origin2")]),
            }]}))],
            script: vec![Act::Send("where", 7), Act::Finish],
        },
        TcpCase {
            name: "origin-closes-first",
            plugins: vec![probe(json!({"name": "a"}))],
            script: vec![Act::Send("QUIT", 0), Act::ReadToEnd, Act::Finish],
        },
        TcpCase {
            name: "tcp-guard-denies",
            plugins: vec![
                ("tcp_guard", json!({"deny_prefix": "EVIL"})),
                probe(json!({"name": "b"})),
            ],
            script: vec![Act::Send("EV", 0), Act::Send("IL plans", 0), Act::ReadToEnd],
        },
        TcpCase {
            name: "tcp-guard-banner",
            plugins: vec![
                ("tcp_guard", json!({"banner": "HELLO "})),
                probe(json!({"name": "b"})),
            ],
            script: vec![Act::Send("abc", 9), Act::Finish],
        },
        // A connection held at accept until an HTTP callout from its own context answers.
        TcpCase {
            name: "tcp-guard-authorized",
            plugins: vec![
                probe(json!({"name": "a"})),
                (
                    "tcp_guard",
                    json!({"authorize": {"cluster": "authz", "path": "/allow"}}),
                ),
            ],
            script: vec![Act::Send("hello", 5), Act::Finish],
        },
        TcpCase {
            name: "tcp-guard-unauthorized",
            plugins: vec![
                probe(json!({"name": "a"})),
                (
                    "tcp_guard",
                    json!({"authorize": {"cluster": "authz", "path": "/deny"}}),
                ),
            ],
            script: vec![Act::Send("hello", 0), Act::ReadToEnd],
        },
        // The Rust SDK's `call_foreign_function`: the client's IP picks the cluster.
        TcpCase {
            name: "tcp-guard-routes",
            plugins: vec![
                probe(json!({"name": "a"})),
                (
                    "tcp_guard",
                    json!({"route_by_source": {"127.0.0.1": "origin2"}}),
                ),
            ],
            script: vec![Act::Send("where", 7), Act::Finish],
        },
        // A C++ plugin (raw ABI, clang + wasi-libc) that cuts a read, then closes the connection
        // on the next one.
        TcpCase {
            name: "tcp-quota-cuts",
            plugins: vec![("tcp_quota", json!(10)), probe(json!({"name": "b"}))],
            script: vec![
                Act::Send("12345", 5),
                Act::Send("67890AB", 5),
                Act::Send("more", 0),
                Act::ReadToEnd,
            ],
        },
    ]
}

impl TcpCase {
    fn probes(&self) -> usize {
        self.plugins.iter().filter(|(p, _)| *p == "probe").count()
    }
}

fn wasm(plugin: &str) -> String {
    sluice_test_support::plugin_wasm(plugin)
        .display()
        .to_string()
}

/// The origins the cases' connections go to: `origin` by default, `origin2` when a plugin
/// chooses it; and `authz`, an HTTP service plugins call, answering 200 to `/allow` and 403 to
/// anything else.
type Origins = [(&'static str, SocketAddr); 3];

fn origins() -> Origins {
    let authz = crate::origin(|parts, _| {
        let status = if parts.uri.path() == "/allow" {
            200
        } else {
            // Late enough that the client's first bytes are waiting, unread, when the connection
            // is closed: both proxies then reset it, not a timing-dependent FIN or reset.
            std::thread::sleep(Duration::from_millis(100));
            403
        };
        http::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    });
    [
        ("origin", tcp_origin(b"")),
        ("origin2", tcp_origin(b"2:")),
        ("authz", authz),
    ]
}

fn envoy_tcp_config(cases: &[TcpCase], origins: &Origins) -> String {
    let wasm_config = |name: &str, root: &str, configuration: &serde_json::Value| {
        let wasm = wasm(root);
        format!(
            r#"
              config:
                name: {name}
                root_id: {root}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {value}
                vm_config:
                  vm_id: tcp
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}"#,
            value = serde_json::to_string(&configuration.to_string()).unwrap(),
        )
    };
    let mut listeners = format!(
        r#"
  - name: dump
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: dump
          route_config:
            virtual_hosts:
            - name: default
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: origin }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm{}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        wasm_config("dump", "probe", &serde_json::json!({"name": "dump"}))
    );
    for case in cases {
        let mut filters = String::new();
        for (index, (plugin, configuration)) in case.plugins.iter().enumerate() {
            filters.push_str(&format!(
                r#"
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm{}"#,
                wasm_config(&format!("{plugin}-{index}"), plugin, configuration)
                    .replace("\n              ", "\n          ")
            ));
        }
        listeners.push_str(&format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:{filters}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: origin
"#,
            name = case.name,
        ));
    }
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:{listeners}
  clusters:{}"#,
        origins
            .iter()
            .map(|(name, address)| format!(
                r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#,
                port = address.port()
            ))
            .collect::<String>()
    )
}

/// A sluice with an HTTP listener (running the dump probe, if `dump`) and one TCP listener
/// running `case`'s plugins under `strategy`.
fn start_sluice(
    case: &TcpCase,
    origins: &Origins,
    strategy: sluice_config::FailStrategy,
    dump: bool,
) -> sluice_proxy::RunningProxy {
    start_sluice_with(crate::flags(None, origins), case, strategy, dump)
}

/// [`start_sluice`] on a config of the caller's (its clusters included).
fn start_sluice_with(
    mut config: sluice_config::Config,
    case: &TcpCase,
    strategy: sluice_config::FailStrategy,
    dump: bool,
) -> sluice_proxy::RunningProxy {
    config.workers = Some(1);
    config.listeners.push(sluice_config::Listener {
        name: case.name.to_string(),
        address: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        routes: Vec::new(),
        tcp: Some(sluice_config::TcpProxy {
            cluster: "origin".into(),
            idle_timeout: Some(sluice_config::DEFAULT_IDLE_TIMEOUT),
        }),
    });
    let plugin = |crate_name: &str, name: String, configuration: &serde_json::Value, network| {
        let mut plugin = sluice_config::Plugin::local(
            name,
            wasm(crate_name),
            Some(configuration.clone()),
            strategy,
        );
        plugin.root_id = crate_name.into();
        plugin.network = network;
        plugin
    };
    if dump {
        config.plugins.push(plugin(
            "probe",
            "dump".into(),
            &serde_json::json!({"name": "dump"}),
            false,
        ));
    }
    for (index, (crate_name, configuration)) in case.plugins.iter().enumerate() {
        let name = format!("{}-{index}", crate_name.replace('_', "-"));
        config
            .plugins
            .push(plugin(crate_name, name, configuration, true));
    }
    crate::start_source(None, config)
}

/// Runs the script; returns what the client received, and how its connection ended.
fn run_script(address: SocketAddr, script: &[Act]) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut received = Vec::new();
    let mut ended = "open";
    let mut buffer = [0u8; 65536];
    let mut read = |stream: &mut TcpStream, received: &mut Vec<u8>| -> Option<&'static str> {
        match stream.read(&mut buffer) {
            Ok(0) => Some("closed"),
            Ok(n) => {
                received.extend_from_slice(&buffer[..n]);
                None
            }
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => Some("reset"),
            Err(error) => Some(if error.kind() == std::io::ErrorKind::WouldBlock {
                "timed out"
            } else {
                "error"
            }),
        }
    };
    for act in script {
        match *act {
            Act::Send(text, expect) => {
                if stream.write_all(text.as_bytes()).is_err() {
                    ended = "write failed";
                    break;
                }
                let until = received.len() + expect;
                while received.len() < until {
                    if let Some(end) = read(&mut stream, &mut received) {
                        ended = end;
                        break;
                    }
                }
            }
            Act::Finish | Act::ReadToEnd => {
                if matches!(act, Act::Finish) {
                    let _ = stream.shutdown(Shutdown::Write);
                }
                loop {
                    if let Some(end) = read(&mut stream, &mut received) {
                        ended = end;
                        break;
                    }
                }
            }
        }
    }
    format!("{:?} ({ended})", String::from_utf8_lossy(&received))
}

/// The probes' trace of one connection: dumps (each empties it) gathered until every probe of
/// the chain was deleted, within 10 s.
fn trace(dump: SocketAddr, probes: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut trace = String::new();
    while trace.matches(" delete").count() < probes && Instant::now() < deadline {
        trace.push_str(&crate::get(dump, "/", &[("x-probe-dump", "1")]).text());
        std::thread::sleep(Duration::from_millis(20));
    }
    trace
}

#[test]
fn envoy_and_sluice_agree_on_network_plugins() {
    let Some(binary) = envoy_binary() else {
        return;
    };
    let origins = origins();
    let cases = cases();
    let mut names = vec!["dump"];
    names.extend(cases.iter().map(|c| c.name));
    let envoy = start_envoy(&binary, &envoy_tcp_config(&cases, &origins), &names);
    let envoy_dump = envoy.listeners[0];
    let mut differences = Vec::new();
    for (case, envoy_address) in cases.iter().zip(&envoy.listeners[1..]) {
        let expected = run_script(*envoy_address, &case.script);
        let expected_trace = trace(envoy_dump, case.probes());
        assert!(
            expected_trace.contains("new_connection"),
            "{}: Envoy's probe trace is empty",
            case.name
        );
        let sluice = start_sluice(case, &origins, sluice_config::FailStrategy::FailClose, true);
        let actual = run_script(sluice.addresses[1], &case.script);
        let actual_trace = trace(sluice.address, case.probes());
        sluice.stop();
        if expected != actual || expected_trace != actual_trace {
            differences.push(format!(
                "{}:\n  envoy:  {expected}\n  sluice: {actual}\n  envoy trace:\n{}  sluice trace:\n{}",
                case.name,
                indent(&expected_trace),
                indent(&actual_trace),
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "Envoy and sluice differ on {} of {} network cases:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// A network plugin that traps, loops or runs out of memory affects only its own connections:
/// under FAIL_CLOSE its connection and later ones are closed without reaching the upstream, under
/// FAIL_OPEN the bytes pass by it; the HTTP listener beside it answers throughout, and the
/// failure is counted once.
#[test]
fn a_failing_network_plugin_affects_only_its_connections() {
    let origins = origins();
    for failure in ["trap", "spin", "grow"] {
        for (strategy, expected, counted) in [
            (
                sluice_config::FailStrategy::FailClose,
                "\"\" (closed)",
                [2, 4, 0, 1],
            ),
            (
                sluice_config::FailStrategy::FailOpen,
                "\"ping\" (closed)",
                [2, 8, 8, 1],
            ),
        ] {
            let case = TcpCase {
                name: "failing",
                plugins: vec![(
                    "probe",
                    serde_json::json!({"name": "a", failure: "downstream_data"}),
                )],
                script: vec![Act::Send("ping", 4), Act::Finish],
            };
            let context = format!("{failure}, {strategy:?}");
            let sluice = start_sluice(&case, &origins, strategy, false);
            // Only the network plugin: the HTTP listener runs none.
            assert_eq!(crate::get(sluice.address, "/", &[]).status, 200);
            for connection in ["failing", "later"] {
                assert_eq!(
                    run_script(sluice.addresses[1], &case.script),
                    expected,
                    "{context}, {connection} connection"
                );
            }
            assert_eq!(crate::get(sluice.address, "/", &[]).status, 200);
            let stats = crate::get(sluice.admin_address.unwrap(), "/stats", &[]).text();
            let value = |series: &str| {
                stats
                    .lines()
                    .find_map(|line| line.strip_prefix(series))
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no {series} in /stats:\n{stats}"))
            };
            assert_eq!(
                [
                    value("sluice_tcp_connections_total{listener=\"failing\"}"),
                    value("sluice_tcp_received_bytes_total{listener=\"failing\"}"),
                    value("sluice_tcp_sent_bytes_total{listener=\"failing\"}"),
                    value("sluice_plugin_failures_total"),
                ],
                counted,
                "{context}: connections, bytes received and sent, plugin failures"
            );
            sluice.stop();
        }
    }
}

/// A TCP listener writes one access-log line per connection: how it ended, the bytes each way,
/// the upstream it reached and the plugins it ran through.
#[test]
fn a_tcp_listener_writes_an_access_log_line_per_connection() {
    let origins = origins();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.jsonl");
    let case = TcpCase {
        name: "logged",
        plugins: vec![("tcp_guard", serde_json::json!({"deny_prefix": "EVIL"}))],
        script: Vec::new(),
    };
    let mut config = crate::flags(None, &origins);
    config.access_log = Some(log.display().to_string());
    let sluice = start_sluice_with(config, &case, sluice_config::FailStrategy::FailClose, false);
    let address = sluice.addresses[1];
    assert_eq!(
        run_script(address, &[Act::Send("hello", 5), Act::Finish]),
        "\"hello\" (closed)"
    );
    assert_eq!(
        run_script(address, &[Act::Send("EVIL", 0), Act::ReadToEnd]),
        "\"\" (closed)"
    );
    let lines = crate::access_log_lines(&log, 2);
    sluice.stop();
    let (passed, denied) = (&lines[0], &lines[1]);
    assert_eq!(passed["listener"], "logged");
    assert_eq!(passed["protocol"], "TCP");
    assert_eq!(passed["details"], "ended");
    assert_eq!(passed["bytesReceived"], 5);
    assert_eq!(passed["bytesSent"], 5);
    assert_eq!(passed["upstream"], origins[0].1.to_string());
    assert_eq!(passed["status"], serde_json::Value::Null);
    assert_eq!(
        passed["plugins"]["chain"],
        serde_json::json!(["tcp-guard-0"])
    );
    assert_eq!(
        denied["details"],
        "plugin 'tcp-guard-0' closed the connection"
    );
    assert_eq!(denied["bytesReceived"], 4);
    assert_eq!(denied["bytesSent"], 0);
    assert_eq!(denied["plugins"]["failed"], serde_json::json!([]));
}
