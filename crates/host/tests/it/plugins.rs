//! Real plugins built with the Rust SDK: module facts, and the host surface they use.

use sluice_abi::{AbiVersion, Action};

use crate::{GET, Guest, config, engine, headers};

#[test]
fn rust_sdk_plugins_are_recognised_and_loadable() {
    let engine = engine();
    let projects = sluice_test_support::plugin_projects();
    assert!(projects.len() >= 6, "{projects:?}");
    for project in projects {
        let name = sluice_test_support::plugin_crate_name(&project);
        let name = name.as_str();
        let code = engine
            .load_file(&sluice_test_support::plugin_wasm(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = &code.info;
        assert_eq!(info.abi, Ok(AbiVersion::V0_2_1), "{name}");
        assert_eq!(
            info.allocator.as_deref(),
            Some("proxy_on_memory_allocate"),
            "{name}"
        );
        assert_eq!(info.entry_points, ["_initialize"], "{name}");
        assert!(info.sdk.starts_with("Rust"), "{name}: {}", info.sdk);
        assert!(
            info.missing_imports().is_empty(),
            "{name}: {:?}",
            info.missing_imports()
        );
        assert_eq!(info.sha256.len(), 64);
    }
}

#[test]
fn the_header_plugin_reads_json_config_and_edits_both_directions() {
    let engine = engine();
    let code = engine
        .load_file(&sluice_test_support::plugin_wasm("add_header"))
        .unwrap();
    let configuration = br#"{"request": {"set": {"x-hello": "world"}, "remove": ["x-drop"]}, "response": {"add": {"x-served-by": "sluice"}}}"#;
    let mut guest = Guest::start(&engine, &code, config("add-header"), configuration).unwrap();
    let mut request = GET.to_vec();
    request.push(("x-drop", "1"));
    let (context, stream) = guest.stream(&request);
    let (action, _) = headers(&mut guest, context, &stream);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        stream
            .borrow()
            .request_headers
            .get_str("x-hello")
            .as_deref(),
        Some("world")
    );
    assert!(stream.borrow().request_headers.get("x-drop").is_none());
    stream.borrow_mut().response_headers.add(":status", "200");
    assert_eq!(
        guest.vm.response_headers(context, 1, true).unwrap(),
        Action::Continue
    );
    assert_eq!(
        stream
            .borrow()
            .response_headers
            .get_str("x-served-by")
            .as_deref(),
        Some("sluice")
    );
    assert!(guest.vm.done(context).unwrap());
    guest.vm.log(context).unwrap();
    guest.vm.delete(context).unwrap();
    assert_eq!(guest.vm.context_count(), 1, "only the root context is left");
}

#[test]
fn compiled_modules_are_cached_by_content() {
    let dir = std::env::temp_dir().join(format!("sluice-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = sluice_host::Engine::new(sluice_host::EngineOptions {
        cache_dir: Some(dir.clone()),
    })
    .unwrap();
    let bytes = sluice_test_support::plugin_bytes("auth");
    let first = engine.compile(&bytes).unwrap();
    let cached: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].starts_with(&first.info.sha256) && cached[0].ends_with(".cwasm"));
    let second = engine.compile(&bytes).unwrap();
    assert_eq!(first.info.sha256, second.info.sha256);
    std::fs::remove_dir_all(&dir).unwrap();
}
