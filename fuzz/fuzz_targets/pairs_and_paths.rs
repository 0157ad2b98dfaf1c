//! The pair encoding of header maps (what `proxy_get_header_map_pairs` returns and
//! `proxy_set_header_map_pairs` takes) and property paths as a guest sends them.
//!
//! Decoding arbitrary bytes never panics; whatever decodes, encoded again, decodes to the same
//! map; a property path of any bytes has segments and a dotted form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_abi::{HeaderMap, PropertyPath, decode_pairs};

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = decode_pairs(data) {
        let map = HeaderMap::from_pairs(pairs.iter().copied());
        let encoded = map.encode();
        assert_eq!(encoded.len(), map.encoded_len());
        let again = decode_pairs(&encoded).expect("what the host encodes decodes");
        let again = HeaderMap::from_pairs(again);
        assert!(again == map, "a map changed through its encoding");
    }
    let path = PropertyPath::from_wire(data);
    assert!(!path.segments().is_empty());
    let _ = path.dotted();
});
