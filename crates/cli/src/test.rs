//! `sluice test`: runs scenario files and reports.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_scenario as scenario;

pub fn run(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let cache = sluice_host::EngineOptions::default_cache_dir();
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match scenario::run_file(file, cache.clone()) {
            Ok(report) => {
                if !json {
                    out!("{report}");
                }
                reports.push(report);
            }
            Err(error) => {
                if !json {
                    out!("ERROR {error}");
                }
                errors.push(error.to_string());
            }
        }
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let passed = reports.len() - failed;
    if json {
        let out = serde_json::json!({
            "passed": passed,
            "failed": failed,
            "errors": errors,
            "reports": reports.iter().map(|r| serde_json::json!({
                "file": r.file, "name": r.name, "steps": r.steps, "passed": r.passed(), "mismatches": r.mismatches, "notChecked": r.not_checked,
            })).collect::<Vec<_>>(),
        });
        out!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let error_note = if errors.is_empty() {
            String::new()
        } else {
            format!(", {} could not run", errors.len())
        };
        out!("\nscenarios: {passed} passed, {failed} failed{error_note}");
    }
    Ok(if !errors.is_empty() {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
