//! Expectations against observations: what a step expected and what the backend saw.

use sluice_abi::{HeaderMap, LogLevel};
use sluice_host::LogRecord;

use crate::file::{ConnectionExpect, Expect, LogExpect, UpstreamExpect, header_pairs};
use crate::{Backend, Mismatch, Observed};

/// Compares what a backend observed in a step with the step's expectations, leaving out what
/// the backend cannot observe. `Err` for an expectation that is itself malformed.
pub(super) fn check(
    step: usize,
    step_name: &str,
    expect: &Expect,
    outcome: &Observed,
    backend: &dyn Backend,
    out: &mut Vec<Mismatch>,
) -> Result<(), String> {
    let observes = backend.observes();
    let mut miss = |field: String, expected: String, actual: String| {
        out.push(Mismatch {
            step,
            step_name: step_name.to_string(),
            field,
            expected,
            actual,
        });
    };
    if let Some(wanted) = &expect.connection {
        check_connection(wanted, outcome.connection.as_ref(), &mut miss);
    }
    if let Some(upstream) = &expect.upstream {
        if upstream.as_str() == Some("none") {
            if let Some(seen) = &outcome.upstream {
                miss(
                    "expect.upstream".into(),
                    "nothing reaches the upstream".into(),
                    format!("a request for {}", describe_request(&seen.headers)),
                );
            }
        } else {
            let spec: UpstreamExpect = yaml_serde::from_value(upstream.clone())
                .map_err(|e| format!("expect.upstream: {e}"))?;
            match &outcome.upstream {
                None => miss(
                    "expect.upstream".into(),
                    "a request reaches the upstream".into(),
                    "nothing reached the upstream".into(),
                ),
                Some(seen) => {
                    let pseudo = [
                        (":method", &spec.method, "method"),
                        (":path", &spec.path, "path"),
                        (":authority", &spec.authority, "authority"),
                    ];
                    for (header, wanted, name) in pseudo {
                        if let Some(wanted) = wanted {
                            compare_text(
                                &format!("expect.upstream.{name}"),
                                wanted,
                                seen.headers.get_str(header),
                                &mut miss,
                            );
                        }
                    }
                    compare_message(
                        "expect.upstream",
                        (spec.headers.as_ref(), spec.trailers.as_ref()),
                        (spec.body.as_deref(), spec.body_contains.as_deref()),
                        (&seen.headers, &seen.trailers, &seen.body),
                        &mut miss,
                    )?;
                }
            }
        }
    }
    if let Some(response) = &expect.response {
        match &outcome.client {
            None if outcome.stalled => miss(
                "expect.response".into(),
                "a response".into(),
                "no response: the stream stalled (a plugin paused and never resumed)".into(),
            ),
            None => miss(
                "expect.response".into(),
                "a response".into(),
                "no response".into(),
            ),
            Some(client) => {
                match (&client.reset, response.reset.unwrap_or(false)) {
                    (Some(reason), false) => miss(
                        "expect.response".into(),
                        "a complete response".into(),
                        format!("the stream was reset: {reason}"),
                    ),
                    (None, true) => miss(
                        "expect.response.reset".into(),
                        "the stream is reset".into(),
                        "a complete response".into(),
                    ),
                    _ => {}
                }
                let headers = client.headers.clone().unwrap_or_default();
                if let Some(status) = response.status {
                    compare_text(
                        "expect.response.status",
                        &status.to_string(),
                        headers.get_str(":status"),
                        &mut miss,
                    );
                }
                compare_message(
                    "expect.response",
                    (response.headers.as_ref(), response.trailers.as_ref()),
                    (response.body.as_deref(), response.body_contains.as_deref()),
                    (&headers, &client.trailers, &client.body),
                    &mut miss,
                )?;
            }
        }
    }
    if let Some(calls) = &expect.http_calls {
        if calls.len() != outcome.http_calls.len() {
            let made: Vec<&str> = outcome
                .http_calls
                .iter()
                .map(|c| c.cluster.as_str())
                .collect();
            miss(
                "expect.httpCalls".into(),
                format!("{} call(s)", calls.len()),
                format!("{} call(s) {made:?}", made.len()),
            );
        }
        for (i, (wanted, made)) in calls.iter().zip(&outcome.http_calls).enumerate() {
            let at = format!("expect.httpCalls[{i}]");
            compare_text(
                &format!("{at}.cluster"),
                &wanted.cluster,
                Some(made.cluster.clone()),
                &mut miss,
            );
            compare_headers(
                &format!("{at}.headers"),
                wanted.headers.as_ref(),
                &made.headers,
                &mut miss,
            )?;
            if let Some(body) = &wanted.body {
                compare_text(
                    &format!("{at}.body"),
                    body,
                    Some(String::from_utf8_lossy(&made.body).into_owned()),
                    &mut miss,
                );
            }
            if let (Some(ms), Some(timeout)) = (wanted.timeout_ms, made.timeout) {
                compare_text(
                    &format!("{at}.timeoutMs"),
                    &ms.to_string(),
                    Some(timeout.as_millis().to_string()),
                    &mut miss,
                );
            }
        }
    }
    if let Some(calls) = &expect.redis_calls {
        if calls.len() != outcome.redis_calls.len() {
            miss(
                "expect.redisCalls".into(),
                format!("{} call(s)", calls.len()),
                format!("{} call(s)", outcome.redis_calls.len()),
            );
        }
        for (i, (wanted, made)) in calls.iter().zip(&outcome.redis_calls).enumerate() {
            let at = format!("expect.redisCalls[{i}]");
            compare_text(
                &format!("{at}.cluster"),
                &wanted.cluster,
                Some(made.cluster.clone()),
                &mut miss,
            );
            if let Some(command) = &wanted.command
                && command != &made.command
            {
                miss(
                    format!("{at}.command"),
                    format!("{command:?}"),
                    format!("{:?}", made.command),
                );
            }
        }
    }
    if let Some(calls) = &expect.grpc_calls {
        if calls.len() != outcome.grpc_calls.len() {
            miss(
                "expect.grpcCalls".into(),
                format!("{} call(s)", calls.len()),
                format!("{} call(s)", outcome.grpc_calls.len()),
            );
        }
        for (i, (wanted, made)) in calls.iter().zip(&outcome.grpc_calls).enumerate() {
            let at = format!("expect.grpcCalls[{i}]");
            compare_text(
                &format!("{at}.cluster"),
                &wanted.cluster,
                Some(made.cluster.clone()),
                &mut miss,
            );
            if let Some(service) = &wanted.service {
                compare_text(
                    &format!("{at}.service"),
                    service,
                    Some(made.service.clone()),
                    &mut miss,
                );
            }
            if let Some(method) = &wanted.method {
                compare_text(
                    &format!("{at}.method"),
                    method,
                    Some(made.method.clone()),
                    &mut miss,
                );
            }
        }
    }
    if observes.logs {
        check_logs(
            &expect.logs,
            &outcome.logs,
            step,
            step_name,
            "expect.logs",
            out,
        );
    }
    let mut miss = |field: String, expected: String, actual: String| {
        out.push(Mismatch {
            step,
            step_name: step_name.to_string(),
            field,
            expected,
            actual,
        });
    };
    if let Some(level) = expect
        .no_logs_at_or_above
        .as_ref()
        .filter(|_| observes.logs)
    {
        let level = LogLevel::parse(level)
            .ok_or_else(|| format!("expect.noLogsAtOrAbove: unknown level `{level}`"))?;
        for log in outcome.logs.iter().filter(|l| l.level >= level) {
            miss(
                "expect.noLogsAtOrAbove".into(),
                format!("no log at {level} or above"),
                format!("[{}] {}", log.level, log.message),
            );
        }
    }
    for (name, wanted) in &expect.metrics {
        let actual = backend.metric(name);
        compare_text(
            &format!("expect.metrics.{name}"),
            &wanted.to_string(),
            actual.map(|v| v.to_string()),
            &mut miss,
        );
    }
    for (key, wanted) in expect.shared_data.iter().filter(|_| observes.shared_data) {
        let actual = backend.shared_data(key);
        match wanted {
            Some(wanted) => compare_text(
                &format!("expect.sharedData.{key}"),
                wanted,
                actual,
                &mut miss,
            ),
            None => {
                if let Some(actual) = actual {
                    miss(
                        format!("expect.sharedData.{key}"),
                        "absent".into(),
                        format!("{actual:?}"),
                    );
                }
            }
        }
    }
    match (expect.plugin_failure, outcome.failures.is_empty()) {
        (Some(true), true) => miss(
            "expect.pluginFailure".into(),
            "a plugin failure".into(),
            "no plugin failed".into(),
        ),
        (None | Some(false), false) => miss(
            "expect.pluginFailure".into(),
            "no plugin failure".into(),
            outcome.failures.join("\n"),
        ),
        _ => {}
    }
    Ok(())
}

fn check_connection(
    wanted: &ConnectionExpect,
    seen: Option<&crate::ConnectionSeen>,
    miss: &mut impl FnMut(String, String, String),
) {
    let Some(seen) = seen else {
        miss(
            "expect.connection".into(),
            "a connection step".into(),
            "this step is not a connection".into(),
        );
        return;
    };
    let bytes = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
    if let Some(upstream) = &wanted.upstream {
        let expected = upstream.as_deref().map(str::as_bytes);
        if expected != seen.upstream.as_deref() {
            let show = |b: Option<&[u8]>| b.map_or("never connected".to_string(), bytes);
            miss(
                "expect.connection.upstream".into(),
                show(expected),
                show(seen.upstream.as_deref()),
            );
        }
    }
    if let Some(client) = &wanted.client
        && client.as_bytes() != seen.client.as_slice()
    {
        miss(
            "expect.connection.client".into(),
            bytes(client.as_bytes()),
            bytes(&seen.client),
        );
    }
    for (field, wanted, actual) in [
        ("upstreamEnded", wanted.upstream_ended, seen.upstream_ended),
        ("clientEnded", wanted.client_ended, seen.client_ended),
    ] {
        if let Some(wanted) = wanted
            && wanted != actual
        {
            miss(
                format!("expect.connection.{field}"),
                wanted.to_string(),
                actual.to_string(),
            );
        }
    }
    if let Some(closed_by) = &wanted.closed_by
        && *closed_by != seen.closed_by
    {
        miss(
            "expect.connection.closedBy".into(),
            closed_by.clone(),
            seen.closed_by.clone(),
        );
    }
}

fn describe_request(headers: &HeaderMap) -> String {
    format!(
        "{} {}",
        headers.get_str(":method").unwrap_or_default(),
        headers.get_str(":path").unwrap_or_default()
    )
}

fn compare_text(
    field: &str,
    expected: &str,
    actual: Option<String>,
    miss: &mut impl FnMut(String, String, String),
) {
    match actual {
        Some(actual) if actual == expected => {}
        Some(actual) => miss(
            field.to_string(),
            format!("{expected:?}"),
            format!("{actual:?}"),
        ),
        None => miss(field.to_string(), format!("{expected:?}"), "absent".into()),
    }
}

fn compare_headers(
    field: &str,
    expected: Option<&yaml_serde::Value>,
    actual: &HeaderMap,
    miss: &mut impl FnMut(String, String, String),
) -> Result<(), String> {
    let Some(expected) = expected else {
        return Ok(());
    };
    for (name, wanted) in header_pairs(expected, field)? {
        let values: Vec<String> = actual
            .get_all(&name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let at = format!("{field}.{name}");
        match wanted {
            None if !values.is_empty() => miss(at, "absent".into(), format!("{values:?}")),
            None => {}
            Some(wanted) if values.contains(&wanted) => {}
            Some(wanted) if values.is_empty() => miss(at, format!("{wanted:?}"), "absent".into()),
            Some(wanted) => miss(
                at,
                format!("{wanted:?}"),
                values
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
    Ok(())
}

/// Headers, trailers and body of a request or response against their expectations.
fn compare_message(
    field: &str,
    (headers, trailers): (Option<&yaml_serde::Value>, Option<&yaml_serde::Value>),
    (body, body_contains): (Option<&str>, Option<&str>),
    (seen_headers, seen_trailers, seen_body): (&HeaderMap, &HeaderMap, &[u8]),
    miss: &mut impl FnMut(String, String, String),
) -> Result<(), String> {
    compare_headers(&format!("{field}.headers"), headers, seen_headers, miss)?;
    compare_headers(&format!("{field}.trailers"), trailers, seen_trailers, miss)?;
    compare_body(field, body, body_contains, seen_body, miss);
    Ok(())
}

fn compare_body(
    field: &str,
    exact: Option<&str>,
    contains: Option<&str>,
    actual: &[u8],
    miss: &mut impl FnMut(String, String, String),
) {
    let text = String::from_utf8_lossy(actual);
    if let Some(exact) = exact
        && text != exact
    {
        miss(
            format!("{field}.body"),
            format!("{exact:?}"),
            format!("{text:?}"),
        );
    }
    if let Some(part) = contains
        && !text.contains(part)
    {
        miss(
            format!("{field}.bodyContains"),
            format!("a body containing {part:?}"),
            format!("{text:?}"),
        );
    }
}

pub(super) fn check_logs(
    expected: &[LogExpect],
    logs: &[LogRecord],
    step: usize,
    step_name: &str,
    field: &str,
    out: &mut Vec<Mismatch>,
) {
    for (i, wanted) in expected.iter().enumerate() {
        let level = wanted.level.as_deref().map(|l| LogLevel::parse(l).ok_or(l));
        if let Some(Err(bad)) = level {
            out.push(Mismatch {
                step,
                step_name: step_name.to_string(),
                field: format!("{field}[{i}].level"),
                expected: "one of trace, debug, info, warn, error, critical".into(),
                actual: bad.to_string(),
            });
            continue;
        }
        let level = level.and_then(Result::ok);
        let found = logs.iter().any(|log| {
            level.is_none_or(|l| l == log.level)
                && wanted.plugin.as_ref().is_none_or(|p| *p == log.plugin)
                && log.message.contains(&wanted.contains)
        });
        if !found {
            let seen: Vec<String> = logs
                .iter()
                .map(|l| format!("[{}] {}", l.level, l.message))
                .collect();
            out.push(Mismatch {
                step,
                step_name: step_name.to_string(),
                field: format!("{field}[{i}]"),
                expected: format!(
                    "a {} log containing {:?}",
                    wanted.level.as_deref().unwrap_or("any-level"),
                    wanted.contains
                ),
                actual: if seen.is_empty() {
                    "no logs".into()
                } else {
                    seen.join(" | ")
                },
            });
        }
    }
}
