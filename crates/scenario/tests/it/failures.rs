//! failStrategy end to end with trapping and looping plugins.

use crate::{Scratch, assert_passes};

fn chain(fixture: &str, strategy: &str) -> String {
    format!(
        r#"
limits: {{callTimeoutMs: 100}}
plugins:
  - name: hostile
    wasm: {fixture}.wasm
    failStrategy: {strategy}
  - name: after
    wasm: "{{plugins}}/add_header.wasm"
    pluginConfig: {{request: {{set: {{x-after: ran}}}}}}
"#
    )
}

#[test]
fn fail_close_answers_503_and_keeps_the_upstream_out() {
    for fixture in ["trap", "infinite_loop", "memory_bomb"] {
        let scratch = Scratch::new(&format!("close-{fixture}")).fixture(fixture);
        let report = scratch.run(&format!(
            "{}limits: {{callTimeoutMs: 100, memoryMiB: 32}}\nsteps:\n  - request: {{path: /}}\n    expect:\n      upstream: none\n      response: {{status: 503, body: \"\"}}\n      pluginFailure: true\n  - name: the failed instance stays failed, as in Envoy\n    request: {{path: /again, headers: {{x-fixture-skip: '1'}}}}\n    expect:\n      upstream: none\n      response: {{status: 503}}\n",
            chain(fixture, "FAIL_CLOSE").replace("limits: {callTimeoutMs: 100}\n", "")
        ));
        assert_passes(&report);
    }
}

#[test]
fn fail_open_skips_the_failed_plugin() {
    let scratch = Scratch::new("open").fixture("trap");
    let report = scratch.run(&format!(
        "{}steps:\n  - request: {{path: /}}\n    expect:\n      upstream: {{headers: {{x-after: ran}}}}\n      response: {{status: 200}}\n      pluginFailure: true\n  - request: {{path: /next}}\n    expect:\n      upstream: {{path: /next, headers: {{x-after: ran}}}}\n      response: {{status: 200}}\n",
        chain("trap", "FAIL_OPEN")
    ));
    assert_passes(&report);
}

#[test]
fn fail_reload_replaces_the_instance_and_backs_off_when_it_keeps_failing() {
    let scratch = Scratch::new("reload").fixture("trap");
    let report = scratch.run(&format!(
        "{}steps:
  - request: {{path: /}}
    expect: {{upstream: none, response: {{status: 503}}, pluginFailure: true}}
  - name: the next request gets a fresh instance
    request: {{path: /next, headers: {{x-fixture-skip: '1'}}}}
    expect:
      upstream: {{path: /next, headers: {{x-survived: 'yes', x-after: ran}}}}
      response: {{status: 200}}
  - name: it fails again
    request: {{path: /again}}
    expect: {{upstream: none, response: {{status: 503}}, pluginFailure: true}}
  - name: within the backoff no new instance is made
    request: {{path: /soon, headers: {{x-fixture-skip: '1'}}}}
    expect: {{upstream: none, response: {{status: 503}}}}
  - advance: 1s
  - name: after the backoff a fresh instance serves
    request: {{path: /later, headers: {{x-fixture-skip: '1'}}}}
    expect:
      upstream: {{path: /later, headers: {{x-survived: 'yes', x-after: ran}}}}
      response: {{status: 200}}
",
        chain("trap", "FAIL_RELOAD")
    ));
    assert_passes(&report);
}

#[test]
fn a_fail_open_plugin_that_fails_while_holding_the_headers_lets_them_go_first() {
    let scratch = Scratch::new("open-stop-iteration");
    let report = scratch.run(
        r#"
plugins:
  - name: holder
    wasm: "{plugins}/probe.wasm"
    pluginConfig: {name: holder, pause: [request_headers], trap: request_body}
    allowOnHeadersStopIteration: true
    failStrategy: FAIL_OPEN
  - name: after
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {request: {set: {x-after: ran}}}
steps:
  - request: {method: POST, path: /, body: hello}
    expect:
      upstream: {headers: {x-after: ran}, body: hello}
      response: {status: 200}
      pluginFailure: true
"#,
    );
    assert_passes(&report);
}
