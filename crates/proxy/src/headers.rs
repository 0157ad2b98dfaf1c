//! Conversions between hyper's messages and the plugin-facing header maps (pseudo-headers
//! included, as Envoy presents them).

use http::header::{HeaderName, HeaderValue};
use sluice_abi::HeaderMap;

/// Headers that describe one connection and never cross the proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "trailer",
    "proxy-authenticate",
];

pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Room for the headers sluice and plugins add to a message (`x-request-id`, a plugin's own), so
/// that adding them does not regrow the map.
const ADDED_HEADERS: usize = 4;

/// The request as plugins see it, with its pseudo-headers in the order Envoy's codecs produce:
/// for HTTP/1.x `:authority` (from `host`), `:path`, `:method`, `:scheme`; for HTTP/2, where
/// Envoy keeps the client's order and hyper does not tell it, the order the `h2` crate (hyper's
/// and tonic's clients) sends, `:method`, `:scheme`, `:authority`, `:path`. Then the headers.
pub fn request_map(parts: &http::request::Parts, scheme: &str) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(4 + parts.headers.len() + ADDED_HEADERS);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let scheme = parts.uri.scheme_str().unwrap_or(scheme);
    if parts.version == http::Version::HTTP_2 {
        map.add(":method", parts.method.as_str());
        map.add(":scheme", scheme);
        map.add(":authority", authority);
        map.add(":path", path);
    } else {
        map.add(":authority", authority);
        map.add(":path", path);
        map.add(":method", parts.method.as_str());
        map.add(":scheme", scheme);
    }
    add_fields(&mut map, &parts.headers, is_upgrade(&parts.headers));
    map
}

/// Whether a request asks to switch protocols (WebSocket and the like): `connection: upgrade`
/// with an `upgrade` header.
pub fn is_upgrade(fields: &http::HeaderMap) -> bool {
    fields.contains_key(http::header::UPGRADE)
        && fields.get_all(http::header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

pub fn response_map(parts: &http::response::Parts) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(1 + parts.headers.len() + ADDED_HEADERS);
    map.add(":status", parts.status.as_str());
    let switching = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    add_fields(&mut map, &parts.headers, switching);
    map
}

pub fn fields_map(fields: &http::HeaderMap) -> HeaderMap {
    let mut map = HeaderMap::new();
    add_fields(&mut map, fields, false);
    map
}

/// Whether a header stops at this hop. `te: trailers` goes on: gRPC needs it, and Envoy keeps it.
fn stops_here(name: &[u8], value: &[u8]) -> bool {
    is_hop_by_hop(name)
        && !(name.eq_ignore_ascii_case(b"te") && value.eq_ignore_ascii_case(b"trailers"))
}

/// Copies the end-to-end headers: not the hop-by-hop ones, nor those `Connection` names as
/// hop-by-hop (RFC 9110 7.6.1). For a protocol switch, `upgrade` goes on and `connection`
/// becomes just `upgrade`, so the next hop is asked to switch too.
fn add_fields(map: &mut HeaderMap, fields: &http::HeaderMap, upgrade: bool) {
    let nominated: Vec<&[u8]> = fields
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
        .collect();
    for (name, value) in fields {
        let switch = upgrade && name == http::header::UPGRADE;
        let named_hop = nominated
            .iter()
            .any(|hop| hop.eq_ignore_ascii_case(name.as_str().as_bytes()));
        if switch
            || (name != http::header::HOST
                && !named_hop
                && !stops_here(name.as_str().as_bytes(), value.as_bytes()))
        {
            map.add(name.as_str(), value.as_bytes());
        }
    }
    if upgrade {
        map.add("connection", "upgrade");
    }
}

/// Regular headers of a map (pseudo-headers and hop-by-hop headers left out). Names or values a
/// plugin made invalid for HTTP are dropped with a log line rather than failing the request.
pub fn to_fields(map: &HeaderMap) -> http::HeaderMap {
    // The host bounds plugin-made maps well below what `http::HeaderMap` holds, so the fallible
    // calls below cannot fail; they are fallible so that nothing here can panic.
    let mut fields = http::HeaderMap::try_with_capacity(map.len()).unwrap_or_default();
    // A map only carries `upgrade` when it is a protocol switch (see `add_fields`).
    let upgrade = map.get("upgrade").is_some();
    for (name, value) in map.iter() {
        let switch = upgrade
            && (name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"connection"));
        if name.starts_with(b":") || (!switch && stops_here(name, value)) {
            continue;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                if fields.try_append(name, value).is_err() {
                    tracing::warn!("dropping headers beyond what an HTTP header map holds");
                    break;
                }
            }
            _ => {
                tracing::warn!(name = %String::from_utf8_lossy(name), "dropping a header that is not valid HTTP");
            }
        }
    }
    fields
}

pub fn status(map: &HeaderMap) -> http::StatusCode {
    map.get(":status")
        .and_then(|s| http::StatusCode::from_bytes(s).ok())
        .unwrap_or(http::StatusCode::BAD_GATEWAY)
}
