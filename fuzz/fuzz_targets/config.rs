//! The config parser: any text gives a config or errors that name their place, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = sluice_config::Config::single_route(
        "127.0.0.1:8080".parse().expect("an address"),
        None,
        None,
    );
    match sluice_config::parse(text, base) {
        Ok(config) => assert!(!config.listeners.is_empty(), "a config serves something"),
        Err(errors) => {
            assert!(!errors.is_empty(), "a refusal says why");
            for error in errors {
                assert!(!error.to_string().is_empty());
            }
        }
    }
});
