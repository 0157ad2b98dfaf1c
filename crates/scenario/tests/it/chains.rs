//! Envoy's chain semantics with several real plugins.

use crate::{Scratch, assert_passes};

#[test]
fn requests_run_in_order_and_responses_in_reverse() {
    let report = Scratch::new("order").run(
        r#"
plugins:
  - name: first
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {request: {add: {x-order: first}}, response: {add: {x-order: first}}}
  - name: second
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {request: {add: {x-order: second}}, response: {add: {x-order: second}}}
steps:
  - request: {path: /}
    expect:
      upstream: {headers: [[x-order, first], [x-order, second]]}
      response: {status: 200}
"#,
    );
    assert_passes(&report);
    // The exact order is checked through the runner's header list: response values are
    // appended by `second` first, then `first`.
    let report = Scratch::new("order-response").run(
        r#"
plugins:
  - name: first
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {response: {set: {x-last: first}}}
  - name: second
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {response: {set: {x-last: second}}}
steps:
  - request: {path: /}
    expect:
      response: {headers: {x-last: first}}
"#,
    );
    assert_passes(&report);
}

#[test]
/// What Envoy does (the differential test checks it against Envoy 1.40): a plugin's local reply
/// runs through the response callbacks of the plugins the request reached, and of no other.
fn a_plugins_local_reply_runs_through_the_plugins_the_request_reached() {
    let report = Scratch::new("local-reply").run(
        r#"
plugins:
  - name: before
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {response: {set: {x-before: "yes"}}}
  - name: auth
    wasm: "{plugins}/auth.wasm"
    pluginConfig: {tokens: {secret: alice}}
  - name: after
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {response: {set: {x-after: "yes"}}}
steps:
  - name: no credentials
    request: {path: /private}
    expect:
      upstream: none
      response:
        status: 401
        headers: {x-before: "yes", x-after: null, www-authenticate: 'Bearer realm="sluice"'}
        body: missing credentials
"#,
    );
    assert_passes(&report);
}

#[test]
fn a_callout_pauses_the_chain_and_later_plugins_see_the_resumed_request() {
    let report = Scratch::new("callout-chain").run(
        r#"
plugins:
  - name: http-callout
    wasm: "{plugins}/http_callout.wasm"
    pluginConfig: {cluster: authz}
  - name: add-header
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {request: {set: {x-after: callout}}}
callouts:
  authz:
    - {status: 200, headers: {x-user: bob}}
    - {status: 200, headers: {x-user: carol}}
steps:
  - request:
      method: POST
      path: /upload
      chunks: ["part one, ", "part two"]
    expect:
      httpCalls: [{cluster: authz}]
      upstream:
        headers: {x-user: bob, x-after: callout}
        body: "part one, part two"
      response: {status: 200}
  # The next stream reuses the slots and queues of the one that paused and held a body.
  - request:
      method: POST
      path: /again
      chunks: ["three"]
    expect:
      httpCalls: [{cluster: authz}]
      upstream:
        headers: {x-user: carol, x-after: callout}
        body: "three"
      response: {status: 200}
"#,
    );
    assert_passes(&report);
}

#[test]
fn routes_share_one_vm_and_per_route_overrides_are_extra_root_contexts() {
    use sluice_config::FailStrategy;
    use sluice_filter::{DEFAULT_BUFFER_LIMIT, PluginSpec, Step, Stream, VmPool};
    use sluice_host::{Clock, Engine, EngineOptions, HttpStream, VmConfig};

    let engine = Engine::new(EngineOptions {
        cache_dir: Some(sluice_test_support::cache_dir()),
    })
    .unwrap();
    let code = engine
        .load_file(&sluice_test_support::plugin_wasm("add_header"))
        .unwrap();
    let spec = |value: &str| PluginSpec {
        name: "add-header".into(),
        root_id: "add-header".into(),
        code: code.clone(),
        plugin_configuration: format!(r#"{{"response": {{"set": {{"x-route": "{value}"}}}}}}"#)
            .into_bytes(),
        vm: VmConfig::new("add-header"),
        fail_strategy: FailStrategy::FailClose,
        headers_stop_iteration: false,
    };
    let pool = VmPool::new(&engine, Clock::system());
    let default_route = std::rc::Rc::new(
        pool.chain(vec![spec("default")], DEFAULT_BUFFER_LIMIT)
            .unwrap(),
    );
    let override_route = std::rc::Rc::new(
        pool.chain(vec![spec("override")], DEFAULT_BUFFER_LIMIT)
            .unwrap(),
    );
    let same_as_default = pool
        .chain(vec![spec("default")], DEFAULT_BUFFER_LIMIT)
        .unwrap();
    assert_eq!(pool.vm_count(), 1, "one VM per plugin code and VM config");
    assert_eq!(
        pool.root_count(),
        2,
        "one root context per distinct plugin configuration"
    );
    drop(same_as_default);

    let route_header = |chain: &std::rc::Rc<sluice_filter::Chain>| {
        let mut stream = Stream::new(chain.clone(), HttpStream::default());
        stream.request_headers(
            sluice_abi::HeaderMap::from_pairs([(":method", "GET"), (":path", "/")]),
            true,
        );
        stream.response_headers(
            sluice_abi::HeaderMap::from_pairs([(":status", "200")]),
            true,
        );
        stream
            .take_steps()
            .into_iter()
            .find_map(|step| match step {
                Step::ResponseHeaders { headers, .. } => headers.get_str("x-route"),
                _ => None,
            })
            .expect("a response")
    };
    assert_eq!(route_header(&default_route), "default");
    assert_eq!(route_header(&override_route), "override");

    // A configuration the plugin rejects fails the build and leaves the pool as it was.
    let mut rejected = spec("x");
    rejected.plugin_configuration = b"not json".to_vec();
    rejected.vm.vm_id = "separate".into();
    rejected.vm.capture_logs = true;
    let error = pool
        .chain(vec![rejected], DEFAULT_BUFFER_LIMIT)
        .err()
        .expect("rejected configuration");
    assert!(
        error
            .to_string()
            .contains("proxy_on_configure returned false"),
        "{error}"
    );
    assert!(
        error
            .logs
            .iter()
            .any(|l| l.message.contains("invalid pluginConfig")),
        "{:?}",
        error.logs
    );
    assert_eq!((pool.vm_count(), pool.root_count()), (1, 2));
}
