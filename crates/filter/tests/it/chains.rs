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
fn a_local_reply_from_the_request_path_runs_through_every_response_callback() {
    let report = Scratch::new("local-reply").run(
        r#"
plugins:
  - name: auth
    wasm: "{plugins}/auth.wasm"
    pluginConfig: {tokens: {secret: alice}}
  - name: stamp
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {response: {set: {x-stamped: "yes"}}}
steps:
  - name: no credentials
    request: {path: /private}
    expect:
      upstream: none
      response:
        status: 401
        headers: {x-stamped: "yes", www-authenticate: 'Bearer realm="sluice"'}
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
"#,
    );
    assert_passes(&report);
}
