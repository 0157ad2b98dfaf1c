//! A header map as plugins leave it (any names, any values, pseudo-headers or not) turned into
//! the HTTP request sent upstream and the response head sent to the client: an error or a
//! message, never a panic.
//!
//! The input is the map's keys and values one after the other, separated by 0xFF bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_abi::HeaderMap;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.split(|byte| *byte == 0xFF).collect();
    let head = HeaderMap::from_pairs(parts.chunks_exact(2).map(|pair| (pair[0], pair[1])));
    sluice_proxy::fuzzing::plugin_head_to_http(&head);
});
