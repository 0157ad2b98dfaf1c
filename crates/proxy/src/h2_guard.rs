//! Envoy's HTTP/2 flood limits, which hyper's HTTP/2 server lacks, on a client connection.
//!
//! A client may send frames that cost the server work but make no progress: one-byte
//! WINDOW_UPDATEs by the million, PRIORITY frames, DATA or HEADERS frames with nothing in them.
//! Envoy counts them against what the connection does (its codec's `ProtocolConstraints`) and
//! closes a connection past its limits; these are its defaults:
//! - more than one frame in a row with an empty payload (DATA, HEADERS or CONTINUATION without
//!   END_STREAM whose payload is all padding or nothing);
//! - more PRIORITY frames than 100 per stream opened (plus 100);
//! - more WINDOW_UPDATE frames than `5 + 2 * (streams opened + 10 * DATA frames sent)`.
//!
//! The guard reads only frame headers (nine bytes, and a padded frame's pad length) as the bytes
//! pass; payloads are skipped by count. A connection that does not start with the HTTP/2
//! preface is passed through untouched.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;

/// Envoy's `max_consecutive_inbound_frames_with_empty_payload`.
const MAX_EMPTY_IN_A_ROW: u32 = 1;
/// Envoy's `max_inbound_priority_frames_per_stream`.
const MAX_PRIORITY_PER_STREAM: u64 = 100;
/// Envoy's `max_inbound_window_update_frames_per_data_frame_sent`.
const MAX_WINDOW_UPDATES_PER_DATA_SENT: u64 = 10;

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Flood {
    #[error("HTTP/2 flood: too many consecutive frames with an empty payload")]
    EmptyFrames,
    #[error("HTTP/2 flood: too many PRIORITY frames")]
    Priority,
    #[error("HTTP/2 flood: too many WINDOW_UPDATE frames")]
    WindowUpdate,
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    length: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Splits a byte stream into frame headers, skipping payloads.
#[derive(Debug, Default)]
struct FrameReader {
    header: [u8; 9],
    have: usize,
    /// A padded frame whose pad-length byte comes next.
    padded: Option<FrameHeader>,
    skip: u64,
}

impl FrameReader {
    /// Feeds `bytes`; `on_frame` gets each frame's header and its padding (pad-length byte
    /// included), as soon as both are known.
    fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_frame: impl FnMut(FrameHeader, u32) -> Result<(), Flood>,
    ) -> Result<(), Flood> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n =
                    usize::try_from(self.skip).map_or(bytes.len(), |skip| skip.min(bytes.len()));
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            if let Some(header) = self.padded.take() {
                let padding = u32::from(bytes[0]) + 1;
                bytes = &bytes[1..];
                self.skip = u64::from(header.length - 1);
                on_frame(header, padding)?;
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                continue;
            }
            self.have = 0;
            let h = self.header;
            let header = FrameHeader {
                length: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            };
            if matches!(header.kind, DATA | HEADERS)
                && header.flags & PADDED != 0
                && header.length > 0
            {
                self.padded = Some(header);
            } else {
                self.skip = u64::from(header.length);
                on_frame(header, 0)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Mode {
    /// How many preface bytes matched so far.
    Detecting(usize),
    Http2,
    Other,
}

/// The counts of one connection, fed the bytes that pass each way. Sans-I/O.
#[derive(Debug)]
pub struct FrameLimits {
    mode: Mode,
    inbound: FrameReader,
    outbound: FrameReader,
    highest_stream: u32,
    opened_streams: u64,
    empty_in_a_row: u32,
    priority_frames: u64,
    window_updates: u64,
    data_frames_sent: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            mode: Mode::Detecting(0),
            inbound: FrameReader::default(),
            outbound: FrameReader::default(),
            highest_stream: 0,
            opened_streams: 0,
            empty_in_a_row: 0,
            priority_frames: 0,
            window_updates: 0,
            data_frames_sent: 0,
        }
    }
}

impl FrameLimits {
    /// Bytes the client sent; an error once it floods.
    pub fn received(&mut self, mut bytes: &[u8]) -> Result<(), Flood> {
        if let Mode::Detecting(matched) = self.mode {
            let n = (PREFACE.len() - matched).min(bytes.len());
            if bytes[..n] != PREFACE[matched..matched + n] {
                self.mode = Mode::Other;
                return Ok(());
            }
            bytes = &bytes[n..];
            self.mode = if matched + n == PREFACE.len() {
                Mode::Http2
            } else {
                Mode::Detecting(matched + n)
            };
        }
        if !matches!(self.mode, Mode::Http2) {
            return Ok(());
        }
        let mut reader = std::mem::take(&mut self.inbound);
        let result = reader.feed(bytes, |header, padding| self.count_inbound(header, padding));
        self.inbound = reader;
        result
    }

    /// Bytes written to the client.
    pub fn sent(&mut self, bytes: &[u8]) {
        if !matches!(self.mode, Mode::Http2) {
            return;
        }
        let data_frames_sent = &mut self.data_frames_sent;
        let _ = self.outbound.feed(bytes, |header, _| {
            if header.kind == DATA {
                *data_frames_sent += 1;
            }
            Ok(())
        });
    }

    fn count_inbound(&mut self, header: FrameHeader, padding: u32) -> Result<(), Flood> {
        match header.kind {
            DATA | HEADERS | CONTINUATION => {
                if header.kind == HEADERS && header.stream > self.highest_stream {
                    self.highest_stream = header.stream;
                    self.opened_streams += 1;
                }
                let empty = header.length.saturating_sub(padding) == 0;
                if empty && header.flags & END_STREAM == 0 {
                    self.empty_in_a_row += 1;
                } else {
                    self.empty_in_a_row = 0;
                }
            }
            PRIORITY => self.priority_frames += 1,
            WINDOW_UPDATE => self.window_updates += 1,
            _ => {}
        }
        if self.empty_in_a_row > MAX_EMPTY_IN_A_ROW {
            return Err(Flood::EmptyFrames);
        }
        if self.priority_frames > MAX_PRIORITY_PER_STREAM * (1 + self.opened_streams) {
            return Err(Flood::Priority);
        }
        let allowed = 5 + 2
            * (self.opened_streams + MAX_WINDOW_UPDATES_PER_DATA_SENT * self.data_frames_sent);
        if self.window_updates > allowed {
            return Err(Flood::WindowUpdate);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    fn connection() -> FrameLimits {
        let mut limits = FrameLimits::default();
        let mut start = PREFACE.to_vec();
        start.extend(frame(0x4, 0, 0, &[]));
        // Split inside the preface and inside a frame header: state carries over.
        assert_eq!(limits.received(&start[..10]), Ok(()));
        assert_eq!(limits.received(&start[10..30]), Ok(()));
        assert_eq!(limits.received(&start[30..]), Ok(()));
        limits
    }

    #[test]
    fn window_updates_are_bounded_by_the_data_sent() {
        let mut limits = connection();
        let update = frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes());
        for _ in 0..5 {
            assert_eq!(limits.received(&update), Ok(()));
        }
        assert_eq!(limits.received(&update), Err(Flood::WindowUpdate));

        let mut limits = connection();
        // One DATA frame sent allows 20 more, written in pieces.
        let data = frame(DATA, 0, 1, &[0; 100]);
        limits.sent(&data[..4]);
        limits.sent(&data[4..]);
        let many: Vec<u8> = (0..25).flat_map(|_| update.clone()).collect();
        assert_eq!(limits.received(&many), Ok(()));
        assert_eq!(limits.received(&update), Err(Flood::WindowUpdate));
    }

    #[test]
    fn empty_frames_in_a_row_are_a_flood_but_padding_is_seen_through() {
        let mut limits = connection();
        let headers = frame(HEADERS, 0x4, 1, &[0x82]);
        assert_eq!(limits.received(&headers), Ok(()));
        let empty = frame(DATA, 0, 1, &[]);
        let padding_only = frame(DATA, PADDED, 1, &[3, 0, 0, 0]);
        let real = frame(DATA, PADDED, 1, &[1, b'x', 0]);
        assert_eq!(limits.received(&empty), Ok(()));
        assert_eq!(limits.received(&real), Ok(()), "data resets the run");
        assert_eq!(limits.received(&padding_only), Ok(()));
        assert_eq!(limits.received(&empty), Err(Flood::EmptyFrames));
        // The last frame may be empty: END_STREAM.
        let mut limits = connection();
        for _ in 0..3 {
            assert_eq!(limits.received(&frame(DATA, END_STREAM, 1, &[])), Ok(()));
        }
    }

    #[test]
    fn priority_frames_are_bounded_per_stream() {
        let mut limits = connection();
        let priority = frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]);
        for _ in 0..100 {
            assert_eq!(limits.received(&priority), Ok(()));
        }
        assert_eq!(limits.received(&priority), Err(Flood::Priority));
    }

    #[test]
    fn http1_passes_untouched() {
        let mut limits = FrameLimits::default();
        let update = frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes());
        assert_eq!(limits.received(b"GET / HTTP/1.1\r\n"), Ok(()));
        for _ in 0..100 {
            assert_eq!(limits.received(&update), Ok(()));
        }
    }
}
