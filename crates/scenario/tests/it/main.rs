//! Integration tests of the chain engine and the scenario runner: real plugins from `plugins/`
//! and WAT fixtures, driven through scenario files.

// Test code: a failure is a failed test, so helpers unwrap and panic as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chains;
mod failures;
mod scenarios;

use std::path::PathBuf;

use sluice_scenario::{self as scenario, Report};

/// A scratch directory holding a scenario and the modules it names.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sluice-filter-it-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Writes an assembled WAT fixture as `NAME.wasm` next to the scenario.
    pub fn fixture(self, name: &str) -> Self {
        std::fs::write(
            self.dir.join(format!("{name}.wasm")),
            sluice_test_support::wat_fixture(name),
        )
        .unwrap();
        self
    }

    /// Runs a scenario given as YAML; `{plugins}` in it stands for the built plugins directory.
    pub fn run(&self, yaml: &str) -> Report {
        let path = self.dir.join("scenario.yaml");
        let yaml = yaml.replace(
            "{plugins}",
            &sluice_test_support::plugins_dir().display().to_string(),
        );
        std::fs::write(&path, yaml).unwrap();
        scenario::run_file(&path, Some(sluice_test_support::cache_dir()))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn assert_passes(report: &Report) {
    assert!(report.passed(), "{report}");
}
