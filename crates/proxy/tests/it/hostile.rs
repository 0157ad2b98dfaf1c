//! Hostile plugins and clients through real sockets: each attack ends in a clear status or a
//! closed connection, and the proxy goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sluice_config::FailStrategy;

use crate::{fixture, get, start};

#[test]
fn a_plugin_flooding_a_header_map_fails_its_request_not_the_proxy() {
    let proxy = start(
        vec![fixture("header_flood", FailStrategy::FailClose)],
        None,
        &[],
        1,
    );
    for _ in 0..2 {
        let answer = get(proxy.address, "/", &[]);
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert!(answer.text().is_empty(), "{}", answer.text());
    }
    proxy.stop();
}

/// Reads until the proxy closes the connection; how long that took.
fn closed_after(mut socket: TcpStream) -> Duration {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let ended = socket.read_to_end(&mut sink);
    assert!(ended.is_ok(), "still open after 10 s: {ended:?}");
    started.elapsed()
}

/// A client that connects and says nothing, one that stops half-way through a request head, and
/// an idle keep-alive connection are all closed at `requestHeadersTimeout`; a quick client is
/// served as before.
#[test]
fn silent_slow_and_idle_clients_are_closed_at_the_request_headers_timeout() {
    let timeout = Duration::from_millis(400);
    let mut config = crate::flags(None, &[]);
    config.workers = Some(1);
    config.request_headers_timeout = timeout;
    let proxy = crate::start_source(None, config);

    let silent = TcpStream::connect(proxy.address).unwrap();
    let waited = closed_after(silent);
    assert!(waited >= timeout / 2, "closed too early: {waited:?}");

    let mut slow = TcpStream::connect(proxy.address).unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: example.com\r\n")
        .unwrap();
    closed_after(slow);

    let mut idle = TcpStream::connect(proxy.address).unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    closed_after(idle);

    assert_eq!(get(proxy.address, "/quick", &[]).status, 200);
    proxy.stop();
}
