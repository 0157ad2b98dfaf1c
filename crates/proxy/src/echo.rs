//! The built-in echo upstream: answers every request with what it received, as JSON, so that a
//! plugin's effect on the request is visible with one curl.

use sluice_abi::HeaderMap;

/// The echo answer for a request head, body and trailers: `(headers, body)`.
pub fn answer(request: &HeaderMap, body: &[u8], trailers: &HeaderMap) -> (HeaderMap, Vec<u8>) {
    let to_json = |map: &HeaderMap| {
        serde_json::Value::Array(
            map.iter()
                .filter(|(name, _)| !name.starts_with(b":"))
                .map(|(name, value)| {
                    serde_json::json!([
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(value)
                    ])
                })
                .collect(),
        )
    };
    let text = |name: &str| request.get_str(name).unwrap_or_default();
    let echo = serde_json::json!({
        "method": text(":method"),
        "path": text(":path"),
        "authority": text(":authority"),
        "headers": to_json(request),
        "body": String::from_utf8_lossy(body),
        "trailers": to_json(trailers),
    });
    // A `serde_json::Value` always serializes; the fallback is never taken.
    let mut body = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    body.push(b'\n');
    let headers = HeaderMap::from_pairs([
        (":status", "200".to_string()),
        ("content-type", "application/json".to_string()),
        ("content-length", body.len().to_string()),
        ("server", "sluice-echo".to_string()),
    ]);
    (headers, body)
}
