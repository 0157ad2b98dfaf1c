//! Hostile guests: the host returns errors or reports plugin failures, never panics, never hangs,
//! never grows past the memory cap.

use std::time::Instant;

use sluice_abi::HeaderMap;
use sluice_host::{CallOp, CallResponse, Effect, FailureKind, HttpStream, Limits};

use crate::{GET, Guest, SHORT_DEADLINE, assert_no_bad, compile_fixture, config, engine, headers};

fn guest_with_limits(fixture: &str, limits: Limits) -> Guest {
    let engine = engine();
    let code = compile_fixture(&engine, fixture).unwrap();
    let mut config = config(fixture);
    config.limits = limits;
    Guest::start(&engine, &code, config, b"").unwrap()
}

#[test]
fn a_trap_fails_the_vm_with_a_symbolized_backtrace_and_it_is_never_reentered() {
    let mut guest = Guest::fixture("trap");
    let (context, stream) = guest.stream(GET);
    let count = stream.borrow().request_headers.len() as u32;
    let failure = guest.vm.request_headers(context, count, false).unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert_eq!(failure.plugin, "trap");
    assert_eq!(failure.callback, "proxy_on_request_headers");
    assert!(
        failure.backtrace.contains("explode"),
        "backtrace names the trapping function: {}",
        failure.backtrace
    );
    assert!(
        failure
            .to_string()
            .contains("plugin 'trap' trapped in proxy_on_request_headers"),
        "{failure}"
    );
    let again = guest.vm.request_headers(context, count, false).unwrap_err();
    assert_eq!(again.kind, FailureKind::AlreadyFailed);
}

#[test]
fn an_infinite_loop_ends_at_the_deadline() {
    let mut guest = guest_with_limits(
        "infinite_loop",
        Limits {
            call_timeout: SHORT_DEADLINE,
            ..Limits::default()
        },
    );
    let (context, stream) = guest.stream(GET);
    let count = stream.borrow().request_headers.len() as u32;
    let started = Instant::now();
    let failure = guest.vm.request_headers(context, count, false).unwrap_err();
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    assert!(
        started.elapsed() < SHORT_DEADLINE * 20,
        "the deadline held: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_memory_bomb_stops_at_the_cap() {
    let cap = 16 << 20;
    let mut guest = guest_with_limits(
        "memory_bomb",
        Limits {
            memory_bytes: cap,
            ..Limits::default()
        },
    );
    let (context, stream) = guest.stream(GET);
    let count = stream.borrow().request_headers.len() as u32;
    let failure = guest.vm.request_headers(context, count, false).unwrap_err();
    assert_eq!(failure.kind, FailureKind::MemoryLimit, "{failure}");
    assert!(
        guest.vm.memory_bytes() <= cap,
        "memory {} exceeds the cap {cap}",
        guest.vm.memory_bytes()
    );
}

#[test]
fn a_stream_the_embedder_still_borrows_fails_the_call_not_the_process() {
    let mut guest = Guest::fixture("abi_0_2_0");
    let (context, stream) = guest.stream(GET);
    let held = stream.borrow();
    let failure = guest
        .vm
        .request_headers(context, held.request_headers.len() as u32, false)
        .unwrap_err();
    assert_eq!(
        failure.kind,
        FailureKind::Trap,
        "the guest traps on the unexpected status: {failure}"
    );
    drop(held);
}

#[test]
fn the_skip_header_lets_hostile_fixtures_survive() {
    for fixture in ["trap", "infinite_loop", "memory_bomb"] {
        let mut guest = Guest::fixture(fixture);
        let mut request = GET.to_vec();
        request.push(("x-fixture-skip", "1"));
        let (context, stream) = guest.stream(&request);
        headers(&mut guest, context, &stream);
        assert_eq!(
            stream
                .borrow()
                .request_headers
                .get_str("x-survived")
                .as_deref(),
            Some("yes"),
            "{fixture}"
        );
    }
}

#[test]
fn every_bad_pointer_gets_an_error_status_and_never_a_panic() {
    let mut guest = Guest::fixture("bad_pointers");
    let (context, stream) = guest.stream(GET);
    let (_, effects) = headers(&mut guest, context, &stream);
    let token = effects
        .iter()
        .find_map(|e| match e {
            Effect::Call {
                token,
                op: CallOp::Http(request),
                ..
            } if request.upstream == "authz" => Some(*token),
            _ => None,
        })
        .expect("the valid callout to authz");
    let mut answer = CallResponse::default();
    answer.headers.add(":status", "200");
    guest
        .vm
        .http_call_response(guest.root, token, Some(answer))
        .unwrap();
    stream.borrow_mut().request_body = bytes::Bytes::from_static(b"some body");
    guest.vm.request_body(context, 9, true).unwrap();
    let messages = guest.messages();
    assert_no_bad(&messages);
    for phase in ["done", "done:callout", "done:body"] {
        assert!(
            messages.iter().any(|m| m == phase),
            "phase {phase} did not finish: {:?}",
            messages.iter().rev().take(5).collect::<Vec<_>>()
        );
    }
    let checked = messages.iter().filter(|m| m.starts_with("ok:")).count();
    assert!(checked > 250, "only {checked} checks ran");
}

#[test]
fn malformed_and_huge_header_maps_are_refused_or_handled() {
    let mut guest = Guest::fixture("huge_header_map");
    let (context, stream) = guest.stream(GET);
    headers(&mut guest, context, &stream);
    let messages = guest.messages();
    assert_no_bad(&messages);
    for expected in [
        "added:10000",
        "ok:size",
        "ok:pairs",
        "ok:size-matches",
        "ok:x-many",
        "done",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "missing {expected}: {messages:?}"
        );
    }
    assert_eq!(
        stream.borrow().request_headers.get_all("x-many").count(),
        10_000
    );
    assert_eq!(
        stream.borrow().request_headers.get_str(":path").as_deref(),
        Some("/hello?x=1"),
        "malformed maps left headers intact"
    );
}

#[test]
fn a_lying_allocator_cannot_make_the_host_write_out_of_bounds() {
    let mut guest = Guest::fixture("bad_allocator");
    let (context, stream) = guest.stream(GET);
    headers(&mut guest, context, &stream);
    let messages = guest.messages();
    assert_no_bad(&messages);
    assert!(messages.iter().any(|m| m == "done"), "{messages:?}");

    let trapping = HttpStream {
        request_headers: HeaderMap::from_pairs(GET.iter().copied().chain([("x-alloc-trap", "1")])),
        ..HttpStream::default()
    }
    .shared();
    let context = guest
        .vm
        .create_stream(guest.root, trapping.clone())
        .unwrap();
    let failure = guest.vm.request_headers(context, 5, false).unwrap_err();
    assert_eq!(
        failure.kind,
        FailureKind::Trap,
        "an allocator trap inside a host call fails the plugin: {failure}"
    );
}

#[test]
fn a_header_flood_fails_the_plugin_at_the_map_limit() {
    let mut guest = Guest::fixture("header_flood");
    let (context, stream) = guest.stream(GET);
    let failure = guest.vm.request_headers(context, 4, false).unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(
        failure.message.contains("past the limits of 16384 entries"),
        "{failure}"
    );
    let kept = stream.borrow().request_headers.len();
    assert!(
        kept <= 16385 + GET.len(),
        "the map stopped at the limit: {kept}"
    );
}

#[test]
fn a_long_log_line_is_cut_and_says_how_long_it_was() {
    let mut guest = Guest::fixture("long_log");
    let (context, stream) = guest.stream(GET);
    headers(&mut guest, context, &stream);
    let messages = guest.messages();
    let [line] = messages.as_slice() else {
        panic!("one line: {} lines", messages.len());
    };
    assert!(line.len() < 17 * 1024, "{} bytes kept", line.len());
    assert!(
        line.ends_with("... [cut: the line has 1048576 bytes]"),
        "{}",
        &line[line.len() - 60..]
    );
}
