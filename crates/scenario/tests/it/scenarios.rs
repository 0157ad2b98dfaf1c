//! Every example plugin passes its own scenarios; a wrong expectation is reported precisely.

use sluice_scenario::{self as scenario, ScenarioError};

use crate::{Scratch, assert_passes};

#[test]
fn every_example_plugin_passes_its_scenarios() {
    sluice_test_support::plugins_dir();
    let mut ran = 0;
    for file in sluice_test_support::plugin_scenarios() {
        let report = scenario::run_file(&file, Some(sluice_test_support::cache_dir()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_passes(&report);
        ran += 1;
    }
    assert!(ran >= 20, "only {ran} scenario files found");
}

#[test]
fn one_wrong_expectation_fails_with_a_diff_pointing_at_it() {
    let report = Scratch::new("wrong").run(
        r#"
name: wrong on purpose
plugins:
  - name: add-header
    wasm: "{plugins}/add_header.wasm"
    pluginConfig: {response: {set: {x-wasm: hello}}}
steps:
  - name: the header is hello, not bye
    request: {path: /}
    expect:
      response:
        status: 200
        headers: {x-wasm: bye}
"#,
    );
    assert_eq!(report.mismatches.len(), 1, "{report}");
    let mismatch = &report.mismatches[0];
    assert_eq!(mismatch.step, 1);
    assert_eq!(mismatch.field, "expect.response.headers.x-wasm");
    assert_eq!(mismatch.expected, "\"bye\"");
    assert_eq!(mismatch.actual, "\"hello\"");
    let text = report.to_string();
    assert!(
        text.contains("step 1 \"the header is hello, not bye\": expect.response.headers.x-wasm"),
        "{text}"
    );
}

#[test]
fn bad_files_name_the_file_and_the_field() {
    let scratch = Scratch::new("bad-files");
    let path = scratch.dir.join("typo.yaml");
    std::fs::write(
        &path,
        "plugins:\n  - name: x\n    wasm: x.wasm\n    pluginCofnig: {}\nsteps: []\n",
    )
    .unwrap();
    let error = scenario::run_file(&path, None).unwrap_err();
    assert!(matches!(error, ScenarioError::Invalid { .. }));
    let text = error.to_string();
    assert!(
        text.contains("typo.yaml") && text.contains("pluginCofnig"),
        "{text}"
    );

    std::fs::write(
        &path,
        "plugins:\n  - name: ghost\n    wasm: missing.wasm\nsteps: []\n",
    )
    .unwrap();
    let text = scenario::run_file(&path, None).unwrap_err().to_string();
    assert!(
        text.contains("plugins[0] (ghost)") && text.contains("missing.wasm"),
        "{text}"
    );

    std::fs::write(
        &path,
        format!(
            "plugins:\n  - name: a\n    wasm: {}\nsteps:\n  - advance: soon\n",
            sluice_test_support::plugin_wasm("add_header").display()
        ),
    )
    .unwrap();
    let text = scenario::run_file(&path, None).unwrap_err().to_string();
    assert!(
        text.contains("steps[0].advance") && text.contains("soon"),
        "{text}"
    );
}
