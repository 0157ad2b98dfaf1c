//! Differential test against real Envoy for exchanges that go both ways at once: an upstream that
//! answers while the request body still streams in (full duplex), and one whose answer is
//! complete before the request is. Raw HTTP/1.1 over real sockets on both sides, so what each
//! peer receives, and when a connection ends, is seen byte for byte; the early answer and the
//! client that leaves are also tried from an HTTP/2 client.
//!
//! Like the request/response differential test, it needs `SLUICE_ENVOY` (and fails without it
//! under `CI=true`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::differential::{Case, envoy_binary, envoy_config, start_envoy};

/// Bytes the client streams to `/echo`: enough to fill every socket and channel buffer on the
/// way many times over, so a proxy that does not move both directions at once stalls.
const STREAMED: usize = 32 << 20;
const PIECE: usize = 32 << 10;

/// How long a peer waits for the other before the exchange counts as stalled.
const PATIENCE: Duration = Duration::from_secs(10);

/// The body byte at `offset` of what the client streams.
fn pattern(offset: usize) -> u8 {
    b"abcdefghijklmnopqrstuvwxyz0123456789"[offset % 36]
}

/// A message's first line and its headers.
type Head = (String, Vec<(String, String)>);

/// Reads an HTTP/1.1 head (request or response) up to its blank line: the first line and the
/// headers, names lower-cased.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Head> {
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((first.trim_end().to_string(), headers));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
}

/// The next piece of a chunked body (empty at its end, after the trailers).
fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut size = String::new();
    if reader.read_line(&mut size)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    if size == 0 {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                return Ok(Vec::new());
            }
        }
    }
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data)?;
    data.truncate(size);
    Ok(data)
}

fn write_chunk(writer: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    write!(writer, "{:x}\r\n", data.len())?;
    writer.write_all(data)?;
    writer.write_all(b"\r\n")
}

/// An HTTP/1.1 origin that answers while it still reads. `/echo` sends back each piece of the
/// chunked request body as it arrives; `/early` answers at once, completely, and then reads the
/// request body on: it notes whether that body reached its end or the proxy ended the
/// connection first.
fn duplex_origin(notes: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            let notes = notes.clone();
            std::thread::spawn(move || {
                socket.set_read_timeout(Some(PATIENCE)).unwrap();
                let mut writer = socket.try_clone().unwrap();
                let mut reader = BufReader::new(socket);
                while let Ok((line, _)) = read_head(&mut reader) {
                    let echo = line.contains(" /echo ");
                    if echo {
                        writer
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                            .unwrap();
                    } else {
                        writer
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                            .unwrap();
                    }
                    let ended = loop {
                        match read_chunk(&mut reader) {
                            Ok(piece) if piece.is_empty() => break true,
                            Ok(piece) => {
                                if echo && write_chunk(&mut writer, &piece).is_err() {
                                    break false;
                                }
                            }
                            Err(_) => break false,
                        }
                    };
                    if echo && ended {
                        let _ = writer.write_all(b"0\r\n\r\n");
                    }
                    let how = if ended {
                        "reached its end"
                    } else {
                        "was cut off by the proxy"
                    };
                    notes
                        .lock()
                        .unwrap()
                        .push(format!("{line}: the request body {how}"));
                    if !ended {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// What the client of one exchange saw: the status line and the headers, those that differ by
/// nature taken out as in the request/response differential test.
fn client_view(first_line: &str, headers: &http::HeaderMap) -> String {
    let headers: Vec<String> = crate::differential::normalize(headers)
        .into_iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    format!("{first_line} [{}]", headers.join(", "))
}

/// [`client_view`] of a head read off the wire.
fn raw_view((first_line, fields): &Head) -> String {
    let mut headers = http::HeaderMap::new();
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    client_view(first_line, &headers)
}

/// Streams `STREAMED` bytes to `/echo` while reading the echo: the response head, and whether
/// every byte came back in order (or where it stalled).
fn stream_both_ways(proxy: SocketAddr) -> String {
    let socket = TcpStream::connect(proxy).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut writer = socket.try_clone().unwrap();
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(
            b"POST /echo HTTP/1.1\r\nhost: shop.example\r\ntransfer-encoding: chunked\r\n\r\n",
        )?;
        for offset in (0..STREAMED).step_by(PIECE) {
            let piece: Vec<u8> = (offset..offset + PIECE).map(pattern).collect();
            write_chunk(&mut writer, &piece)?;
        }
        writer.write_all(b"0\r\n\r\n")
    });
    let mut reader = BufReader::new(socket);
    let outcome = match read_head(&mut reader) {
        Err(error) => format!("no response head: {error}"),
        Ok(head) => {
            let mut received = 0;
            let ending = loop {
                match read_chunk(&mut reader) {
                    Ok(piece) if piece.is_empty() => break "complete".to_string(),
                    Ok(piece) => {
                        if let Some(at) =
                            (0..piece.len()).find(|i| piece[*i] != pattern(received + i))
                        {
                            break format!("wrong byte at {}", received + at);
                        }
                        received += piece.len();
                    }
                    Err(error) => break format!("stalled: {error}"),
                }
            };
            format!(
                "{}; {received} of {STREAMED} bytes came back, {ending}",
                raw_view(&head)
            )
        }
    };
    // The sender ends once the proxy takes everything or the socket goes.
    drop(reader);
    let sent = sending.join().unwrap();
    format!(
        "{outcome}; the client's body {}",
        if sent.is_ok() {
            "went out whole"
        } else {
            "was refused"
        }
    )
}

/// Opens a connection, sends the head of a chunked POST to `path` and a first piece of its body,
/// and reads the response head.
fn begin_upload(
    proxy: SocketAddr,
    path: &str,
) -> std::io::Result<(TcpStream, BufReader<TcpStream>, Head)> {
    let socket = TcpStream::connect(proxy)?;
    socket.set_read_timeout(Some(PATIENCE))?;
    let mut writer = socket.try_clone()?;
    write!(
        writer,
        "POST {path} HTTP/1.1\r\nhost: shop.example\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )?;
    let mut reader = BufReader::new(socket);
    let head = read_head(&mut reader)?;
    Ok((writer, reader, head))
}

/// Sends the head and a first piece to `/early`, reads the complete answer, then sends the rest of
/// the body: what the client got and whether the proxy then closed the connection.
fn answered_early(proxy: SocketAddr) -> String {
    let (mut writer, mut reader, head) = match begin_upload(proxy, "/early") {
        Ok(opened) => opened,
        Err(error) => return format!("no response head: {error}"),
    };
    let length = head
        .1
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    let body = match reader.read_exact(&mut body) {
        Ok(()) => String::from_utf8_lossy(&body).into_owned(),
        Err(error) => format!("<{error}>"),
    };
    // The rest of the body, which nobody waits for any more.
    let _ = write_chunk(&mut writer, b" world").and_then(|()| writer.write_all(b"0\r\n\r\n"));
    let mut rest = Vec::new();
    // Envoy closes with a reset (the rest of the request is unread when it closes its socket),
    // hyper with a FIN or a reset depending on when the rest arrives: to the client both end
    // the connection, which is what is compared.
    let after = match reader.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => "then ended the connection".to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
            "then ended the connection".to_string()
        }
        Ok(_) => format!("then sent {:?}", String::from_utf8_lossy(&rest)),
        Err(error) => format!("then kept the connection ({error})"),
    };
    format!("{} {body:?}, {after}", raw_view(&head))
}

/// Sends the head and a piece to `/echo`, reads the piece's echo, and leaves with the body
/// unfinished: the origin must see its request cut off, never a shorter body that ended.
fn left_midway(proxy: SocketAddr) -> String {
    let (_writer, mut reader, head) = match begin_upload(proxy, "/echo") {
        Ok(opened) => opened,
        Err(error) => return format!("no response head: {error}"),
    };
    let echo = read_chunk(&mut reader).map(|piece| String::from_utf8_lossy(&piece).into_owned());
    format!("{} then {echo:?}", raw_view(&head))
}

/// A request body the test feeds piece by piece (over HTTP/2).
struct Feed(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Feed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|data| Ok(http_body::Frame::data(data))))
    }
}

/// Over HTTP/2: a POST to `path` whose body begins with a piece; the response head and the first
/// piece of its body, then (when `finish`) the rest of the request body is sent and its end. The
/// client's view of it.
fn h2_upload(proxy: SocketAddr, path: &str, finish: bool) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (feed, body) = tokio::sync::mpsc::channel(4);
        feed.send(Bytes::from_static(b"hello")).await.unwrap();
        let request = http::Request::post(format!("http://shop.example{path}"))
            .body(Feed(body))
            .unwrap();
        let io = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let exchange = async {
            let response = crate::try_send_once(io, request, true).await?;
            let view = client_view(&response.status().to_string(), response.headers());
            let mut body = response.into_body();
            let first = http_body_util::BodyExt::frame(&mut body).await;
            let first = match first {
                Some(Ok(frame)) => format!("{:?}", frame.into_data().unwrap_or_default()),
                Some(Err(error)) => format!("<{error}>"),
                None => "<end>".to_string(),
            };
            if finish {
                let _ = feed.send(Bytes::from_static(b" world")).await;
                drop(feed);
            }
            Ok::<_, hyper::Error>(format!("{view} {first}"))
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(Ok(view)) => view,
            Ok(Err(error)) => format!("failed: {error}"),
            Err(_) => "stalled".to_string(),
        }
    })
}

/// The origin's note on the exchange it saw last, once it has one.
fn origin_note(notes: &Mutex<Vec<String>>) -> String {
    let deadline = Instant::now() + PATIENCE + Duration::from_secs(2);
    loop {
        if let Some(note) = notes.lock().unwrap().pop() {
            return note;
        }
        if Instant::now() > deadline {
            return "the origin saw no end of the request".into();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn envoy_and_sluice_agree_on_exchanges_that_go_both_ways() {
    let Some(binary) = envoy_binary() else {
        return;
    };
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let origin = duplex_origin(notes.clone());
    let refusing = sluice_test_support::RefusingPort::new();
    let case = Case {
        headers_stop_iteration: false,
        name: "duplex",
        cluster: "upstream",
        plugins: vec![(
            "add_header",
            r#"{"response": {"set": {"x-plugin": "add-header"}}}"#,
        )],
        requests: Vec::new(),
    };
    let closed = refusing.address;
    let envoy = start_envoy(
        &binary,
        &envoy_config(std::slice::from_ref(&case), origin, closed, closed, closed),
        &[case.name],
    );
    let mut config = crate::flags(Some(origin), &[]);
    config.plugins = crate::differential::sluice_plugins(&case);
    config.workers = Some(1);
    let sluice = crate::start_source(None, config);
    let mut differences = Vec::new();
    for (name, exchange) in [
        (
            "streamed both ways",
            stream_both_ways as fn(SocketAddr) -> String,
        ),
        ("answered before the request ended", answered_early),
        ("the client left midway", left_midway),
        ("HTTP/2: answered before the request ended", |proxy| {
            h2_upload(proxy, "/early", true)
        }),
        ("HTTP/2: the client left midway", |proxy| {
            h2_upload(proxy, "/echo", false)
        }),
    ] {
        notes.lock().unwrap().clear();
        let envoy_saw = (exchange(envoy.listeners[0]), origin_note(&notes));
        notes.lock().unwrap().clear();
        let sluice_saw = (exchange(sluice.address), origin_note(&notes));
        eprintln!("{name}:\n  envoy:  {envoy_saw:?}\n  sluice: {sluice_saw:?}");
        if envoy_saw != sluice_saw {
            differences.push(format!(
                "{name}:\n  envoy:  {envoy_saw:?}\n  sluice: {sluice_saw:?}"
            ));
        }
    }
    sluice.stop();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
