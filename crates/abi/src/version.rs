//! ABI version detection from the module's export marker.

use std::fmt;

/// Prefix of the empty export a module uses to advertise the ABI version it was built for.
pub const VERSION_MARKER_PREFIX: &str = "proxy_abi_version_";

/// The ABI versions sluice implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
    /// Higress's extension of 0.2.1 (Redis calls and Higress's foreign functions).
    V0_2_100,
}

impl AbiVersion {
    /// Finds the version marker among a module's export names.
    ///
    /// Returns `Ok(None)` when no marker is exported and `Err(marker)` for a marker naming a version
    /// sluice does not implement (such as the abandoned `0_x_x` draft), so callers can name it.
    pub fn detect<'a>(exports: impl IntoIterator<Item = &'a str>) -> Result<Option<Self>, String> {
        let mut unknown = None;
        for name in exports {
            let Some(version) = name.strip_prefix(VERSION_MARKER_PREFIX) else {
                continue;
            };
            match version {
                "0_2_100" => return Ok(Some(Self::V0_2_100)),
                "0_2_1" => return Ok(Some(Self::V0_2_1)),
                "0_2_0" => return Ok(Some(Self::V0_2_0)),
                "0_1_0" => return Ok(Some(Self::V0_1_0)),
                _ => unknown = Some(name.to_string()),
            }
        }
        match unknown {
            Some(marker) => Err(marker),
            None => Ok(None),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => "0.1.0",
            Self::V0_2_0 => "0.2.0",
            Self::V0_2_1 => "0.2.1",
            Self::V0_2_100 => "0.2.100",
        }
    }

    /// Whether headers callbacks take the `end_of_stream` argument (added in 0.2.0).
    pub fn headers_callbacks_take_end_of_stream(self) -> bool {
        self >= Self::V0_2_0
    }

    /// Whether a missing header is reported as `NOT_FOUND` (0.2.0 on) or as `OK` with an empty value.
    pub fn missing_header_is_not_found(self) -> bool {
        self >= Self::V0_2_0
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every `proxy_on_*` callback of spec v0.2.1, plus the ones proxy-wasm-cpp-host also binds and
/// Higress's `proxy_on_redis_call_response`.
/// A module may export any subset; a missing one is simply never called.
pub const CALLBACKS: &[&str] = &[
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_delete",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_connection_close",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_request_metadata",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_response_metadata",
    "proxy_on_http_call_response",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_close",
    "proxy_on_queue_ready",
    "proxy_on_foreign_function",
    "proxy_on_redis_call_response",
    "proxy_validate_configuration",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_version_and_names_unknown_markers() {
        assert_eq!(
            AbiVersion::detect(["_initialize", "proxy_abi_version_0_2_1"]),
            Ok(Some(AbiVersion::V0_2_1))
        );
        assert_eq!(
            AbiVersion::detect(["proxy_abi_version_0_1_0"]),
            Ok(Some(AbiVersion::V0_1_0))
        );
        assert_eq!(
            AbiVersion::detect(["proxy_abi_version_0_2_0"]),
            Ok(Some(AbiVersion::V0_2_0))
        );
        assert_eq!(AbiVersion::detect(["memory"]), Ok(None));
        assert_eq!(
            AbiVersion::detect(["proxy_abi_version_0_x_x"]),
            Err("proxy_abi_version_0_x_x".to_string())
        );
    }
}
