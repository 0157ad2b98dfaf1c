//! ABI versions, entry points and allocators.

use sluice_abi::{AbiVersion, Action};
use sluice_host::{CallOp, CallResponse, Effect, LoadError};

use crate::{GET, Guest, assert_no_bad, compile_fixture, config, engine, headers};

#[test]
fn abi_0_1_0_module_runs_with_legacy_calls() {
    let engine = engine();
    let code = compile_fixture(&engine, "abi_0_1_0").unwrap();
    assert_eq!(code.info.abi, Ok(AbiVersion::V0_1_0));
    let mut guest = Guest::start(&engine, &code, config("abi_0_1_0"), b"legacy-config").unwrap();
    assert!(
        guest.messages().iter().any(|m| m == "legacy-config"),
        "proxy_get_configuration returned the plugin config"
    );
    let (context, stream) = guest.stream(GET);
    let (action, effects) = headers(&mut guest, context, &stream);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        stream.borrow().request_headers.get_str("x-abi").as_deref(),
        Some("0.1.0")
    );
    assert!(effects.contains(&Effect::ClearRouteCache { context }));
    let messages = guest.messages();
    assert!(
        messages.contains(&"ok:missing-empty".to_string()),
        "{messages:?}"
    );
    assert_no_bad(&messages);
}

#[test]
fn abi_0_2_0_reports_missing_headers_as_not_found() {
    let mut guest = Guest::fixture("abi_0_2_0");
    assert_eq!(guest.vm.abi(), AbiVersion::V0_2_0);
    let (context, stream) = guest.stream(GET);
    let (action, _) = headers(&mut guest, context, &stream);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        stream.borrow().request_headers.get_str("x-path").as_deref(),
        Some("/hello?x=1")
    );
    assert_no_bad(&guest.messages());
}

#[test]
fn command_modules_and_start_sections_run_once() {
    for fixture in ["command_start", "start_section"] {
        let mut guest = Guest::fixture(fixture);
        let (context, stream) = guest.stream(GET);
        headers(&mut guest, context, &stream);
        let headers = &stream.borrow().request_headers;
        assert_eq!(
            headers.get_str("x-started").as_deref(),
            Some("yes"),
            "{fixture}"
        );
        assert_eq!(
            headers.get_str("x-start-count").as_deref(),
            Some("1"),
            "{fixture}"
        );
    }
}

#[test]
fn malloc_is_used_when_proxy_on_memory_allocate_is_absent() {
    let mut guest = Guest::fixture("malloc_only");
    let (context, stream) = guest.stream(GET);
    headers(&mut guest, context, &stream);
    assert_eq!(
        stream
            .borrow()
            .request_headers
            .get_str("x-malloc-used")
            .as_deref(),
        Some("yes")
    );
    assert_eq!(
        stream.borrow().request_headers.get_str("x-path").as_deref(),
        Some("/hello?x=1")
    );
}

#[test]
fn modules_sluice_cannot_run_are_refused_with_the_reason() {
    let engine = engine();
    match compile_fixture(&engine, "missing_import") {
        Err(LoadError::MissingImports(names)) => assert_eq!(names, ["env::proxy_does_not_exist"]),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a module with an unknown import loaded"),
    }
    assert!(matches!(
        compile_fixture(&engine, "no_marker"),
        Err(LoadError::NoAbiMarker)
    ));
    match compile_fixture(&engine, "unknown_marker") {
        Err(error @ LoadError::UnsupportedAbi(_)) => {
            assert!(error.to_string().contains("proxy_abi_version_9_9_9"));
        }
        other => panic!("wrong outcome: {:?}", other.err()),
    }
    assert!(matches!(
        engine.compile(b"not wasm"),
        Err(LoadError::NotWasm(_))
    ));
}

#[test]
fn plugins_that_reject_their_start_are_refused() {
    let engine = engine();
    for (fixture, expected) in [
        ("vm_start_fails", "proxy_on_vm_start"),
        ("configure_fails", "proxy_on_configure"),
    ] {
        let code = compile_fixture(&engine, fixture).unwrap();
        let error = Guest::start(&engine, &code, config(fixture), b"")
            .err()
            .expect("start must fail");
        assert!(error.to_string().contains(expected), "{fixture}: {error}");
    }
}

#[test]
fn callouts_are_validated_recorded_and_resumed() {
    let mut guest = Guest::fixture("callout");
    let (context, stream) = guest.stream(GET);
    let (action, effects) = headers(&mut guest, context, &stream);
    assert_eq!(action, Action::Pause);
    let calls: Vec<_> = effects
        .iter()
        .filter_map(|e| {
            if let Effect::Call {
                token,
                op: CallOp::Http(request),
                root_context,
                ..
            } = e
            {
                Some((*token, *root_context, request.clone()))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(calls.len(), 1, "exactly one valid callout: {effects:?}");
    let (token, root_context, request) = &calls[0];
    assert_eq!(request.upstream, "authz");
    assert_eq!(request.headers.get_str(":path").as_deref(), Some("/check"));
    assert_eq!(*root_context, guest.root);
    let mut answer = CallResponse::default();
    answer.headers.add(":status", "204");
    guest
        .vm
        .http_call_response(guest.root, *token, Some(answer))
        .unwrap();
    assert!(guest.vm.take_effects().contains(&Effect::ContinueStream {
        context,
        stream: sluice_abi::StreamType::HttpRequest
    }));
    assert_eq!(
        stream
            .borrow()
            .request_headers
            .get_str("x-authz-status")
            .as_deref(),
        Some("204")
    );
    let messages = guest.messages();
    for expected in [
        "ok:unknown-upstream",
        "ok:missing-authority",
        "ok:missing-path",
        "ok:missing-method",
        "ok:dispatched",
        "resumed",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "missing {expected}: {messages:?}"
        );
    }
    assert_no_bad(&messages);
}

#[test]
fn inspect_tells_emscripten_cpp_from_assemblyscript() {
    let engine = engine();
    let sdk = |text: &str| {
        let (info, _) = engine
            .inspect(&sluice_test_support::wat(text))
            .expect("a valid module");
        info.sdk
    };
    // A stripped Emscripten build of the C++ SDK: no producers section, no names, but its
    // runtime's imports and stack exports, and an `abort` without arguments.
    let emscripten = sdk(r#"(module
        (import "env" "abort" (func))
        (import "env" "emscripten_resize_heap" (func (param i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "stackSave") (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_1")))"#);
    assert_eq!(emscripten, "C++ (proxy-wasm-cpp-sdk, Emscripten)");
    // AssemblyScript: its four-argument `abort` and its runtime exports.
    let assemblyscript = sdk(r#"(module
        (import "env" "abort" (func (param i32 i32 i32 i32)))
        (memory (export "memory") 1)
        (func (export "__new") (param i32 i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_1")))"#);
    assert_eq!(assemblyscript, "AssemblyScript (proxy-runtime)");
}
