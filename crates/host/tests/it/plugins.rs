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
        assert!(info.sdk.starts_with("Rust"), "{name}: {}", info.sdk);
        // The probe is written against the raw ABI: no SDK, no constructors to run.
        if name != "probe" {
            assert_eq!(info.entry_points, ["_initialize"], "{name}");
        }
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
        .filter(|name| name.ends_with(".cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].starts_with(&first.info.sha256));
    let second = engine.compile(&bytes).unwrap();
    assert_eq!(first.info.sha256, second.info.sha256);

    // An entry another cache (another key) wrote is not run: it is compiled again and replaced.
    let entry = dir.join(&cached[0]);
    let other_dir = dir.with_extension("other");
    let _ = std::fs::remove_dir_all(&other_dir);
    let other = sluice_host::Engine::new(sluice_host::EngineOptions {
        cache_dir: Some(other_dir.clone()),
    })
    .unwrap();
    other.compile(&bytes).unwrap();
    let foreign = std::fs::read(other_dir.join(&cached[0])).unwrap();
    assert_ne!(
        foreign,
        std::fs::read(&entry).unwrap(),
        "each cache signs with its own key"
    );
    std::fs::write(&entry, &foreign).unwrap();
    let third = engine.compile(&bytes).unwrap();
    assert_eq!(third.info.sha256, first.info.sha256);
    assert_ne!(
        std::fs::read(&entry).unwrap(),
        foreign,
        "the foreign entry was replaced"
    );
    // So is a damaged one.
    let mut damaged = std::fs::read(&entry).unwrap();
    damaged[100] ^= 0xff;
    std::fs::write(&entry, &damaged).unwrap();
    engine.compile(&bytes).unwrap();
    assert_ne!(std::fs::read(&entry).unwrap(), damaged);
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("key")), 0o600);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other_dir).unwrap();
}
