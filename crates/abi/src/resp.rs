//! RESP (the Redis protocol, version 2) framing, as Higress's Redis calls carry it: a plugin's
//! query is one RESP value and so is each reply. Only where a value ends is needed: the bytes
//! themselves pass through untouched.
//!
//! The scan is iterative, so no nesting of arrays, however deep, can exhaust the stack.

/// Why bytes are not a RESP value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("byte {offset}: `{found}` does not start a RESP value (one of + - : $ *)")]
    UnknownType { offset: usize, found: char },
    #[error("byte {offset}: a RESP length or integer that is not a number")]
    BadNumber { offset: usize },
    #[error("byte {offset}: a bulk string not followed by CRLF")]
    MissingCrlf { offset: usize },
}

/// The longest line a RESP length or integer takes: `-9223372036854775808`.
const MAX_NUMBER_LINE: usize = 20;

/// The length of the RESP value at the start of `bytes`: `Ok(None)` while it is incomplete.
pub fn frame_len(bytes: &[u8]) -> Result<Option<usize>, RespError> {
    Scanner::default().scan(bytes)
}

/// Finds where a RESP value ends in bytes that arrive piece by piece, resuming where the last
/// scan stopped, so that reading a large reply costs time in proportion to its size.
#[derive(Clone, Debug)]
pub struct Scanner {
    /// Where the next element starts.
    at: usize,
    /// Values still to read: the first, plus the elements of the arrays opened so far.
    pending: u64,
    /// How far the current element's line is known to hold no CRLF.
    searched: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            at: 0,
            pending: 1,
            searched: 0,
        }
    }
}

impl Scanner {
    /// The value's length once `bytes` (everything so far, from the value's start) holds all of
    /// it. After `Ok(Some(_))` or an error, start a new scanner for the next value.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, RespError> {
        while self.pending > 0 {
            let at = self.at;
            let Some(&kind) = bytes.get(at) else {
                return Ok(None);
            };
            let numeric = matches!(kind, b'$' | b'*' | b':');
            let from = self.searched.max(at + 1);
            let Some(line_end) = find_crlf(bytes.get(from..).unwrap_or_default()).map(|i| from + i)
            else {
                // A length or an integer has at most 20 characters: a longer line is not one,
                // and scanning it again on every read would cost time without bound.
                if numeric && bytes.len() - at > MAX_NUMBER_LINE + 2 {
                    return Err(RespError::BadNumber { offset: at + 1 });
                }
                // The last byte may be the CR of a CRLF still to come.
                self.searched = bytes.len().saturating_sub(1).max(at + 1);
                return Ok(None);
            };
            let line = &bytes[at + 1..line_end];
            if numeric && line.len() > MAX_NUMBER_LINE {
                return Err(RespError::BadNumber { offset: at + 1 });
            }
            let mut next = line_end + 2;
            let mut opened = 0;
            match kind {
                b'+' | b'-' => {}
                b':' => {
                    number(line).ok_or(RespError::BadNumber { offset: at + 1 })?;
                }
                b'$' => {
                    let len = length(line).ok_or(RespError::BadNumber { offset: at + 1 })?;
                    if let Some(len) = len {
                        let end = next
                            .checked_add(len)
                            .filter(|end| end.checked_add(2).is_some())
                            .ok_or(RespError::BadNumber { offset: at + 1 })?;
                        match bytes.get(end..end + 2) {
                            None => return Ok(None),
                            Some(b"\r\n") => next = end + 2,
                            Some(_) => return Err(RespError::MissingCrlf { offset: end }),
                        }
                    }
                }
                b'*' => {
                    let count = length(line).ok_or(RespError::BadNumber { offset: at + 1 })?;
                    opened = count.unwrap_or(0) as u64;
                }
                other => {
                    return Err(RespError::UnknownType {
                        offset: at,
                        found: char::from(other),
                    });
                }
            }
            self.pending = (self.pending - 1).saturating_add(opened);
            self.at = next;
            self.searched = 0;
        }
        Ok(Some(self.at))
    }
}

/// Whether `bytes` is exactly one command as clients send it: a non-empty array of bulk
/// strings. (A simple string may hold a bare LF, which Redis reads as two inline commands.)
pub fn is_one_command(bytes: &[u8]) -> bool {
    command_args(bytes).is_some_and(|args| !args.is_empty())
}

/// A RESP array of bulk strings: a command as clients send it.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        push_bulk(&mut out, arg);
    }
    out
}

/// Appends `bytes` as a RESP bulk string.
pub fn push_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// The arguments of a command as clients send it (an array of bulk strings); `None` for anything
/// else.
pub fn command_args(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = at + find_crlf(bytes.get(at..)?)?;
        Some((&bytes[at..end], end + 2))
    };
    let (count, mut at) = line(0)?;
    let count = length(count.strip_prefix(b"*")?)??;
    let mut args = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (len, start) = line(at)?;
        let len = length(len.strip_prefix(b"$")?)??;
        let end = start.checked_add(len)?;
        let arg = bytes.get(start..end)?;
        if bytes.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        args.push(arg);
        at = end + 2;
    }
    (at == bytes.len()).then_some(args)
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// A RESP integer.
fn number(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

/// A bulk string's or an array's length: `Some(None)` for `-1`, null.
fn length(line: &[u8]) -> Option<Option<usize>> {
    match number(line)? {
        -1 => Some(None),
        n => usize::try_from(n).ok().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_where_each_kind_of_value_ends() {
        assert_eq!(frame_len(b"+OK\r\nrest"), Ok(Some(5)));
        assert_eq!(frame_len(b"-ERR no\r\n"), Ok(Some(9)));
        assert_eq!(frame_len(b":-42\r\n"), Ok(Some(6)));
        assert_eq!(frame_len(b"$3\r\na\r\n\r\n"), Ok(Some(9)));
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*0\r\n"), Ok(Some(4)));
        let set = command(&[b"SET", b"k", b"v"]);
        assert_eq!(frame_len(&set), Ok(Some(set.len())));
        let nested = b"*2\r\n*1\r\n:1\r\n$1\r\nx\r\n";
        assert_eq!(frame_len(nested), Ok(Some(nested.len())));
    }

    #[test]
    fn an_incomplete_value_asks_for_more() {
        let set = command(&[b"SET", b"key", b"value"]);
        for cut in 0..set.len() {
            assert_eq!(frame_len(&set[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn names_what_is_wrong_and_where() {
        assert_eq!(
            frame_len(b"GET k\r\n"),
            Err(RespError::UnknownType {
                offset: 0,
                found: 'G'
            })
        );
        assert_eq!(
            frame_len(b"*1\r\n$x\r\n"),
            Err(RespError::BadNumber { offset: 5 })
        );
        assert_eq!(
            frame_len(b"$1\r\nab\r\n"),
            Err(RespError::MissingCrlf { offset: 5 })
        );
        assert!(!is_one_command(b"+OK\r\n"));
        assert!(
            !is_one_command(b"-x\nBLPOP q 0.5\r\n"),
            "a bare LF is two inline commands"
        );
        assert!(!is_one_command(b"*0\r\n"));
        assert!(
            !is_one_command(b"*1\r\n$1\r\nxyz\r\n"),
            "bytes past a bulk string"
        );
        assert!(is_one_command(&command(&[b"GET", b"k"])));
        assert_eq!(
            frame_len(format!("${}1\r\n", "0".repeat(30)).as_bytes()),
            Err(RespError::BadNumber { offset: 1 })
        );
        assert_eq!(
            frame_len(format!("*{}\r\n", "0".repeat(40)).as_bytes()),
            Err(RespError::BadNumber { offset: 1 })
        );
        assert_eq!(
            frame_len(format!(":{}", "1".repeat(40)).as_bytes()),
            Err(RespError::BadNumber { offset: 1 }),
            "a number line that never ends is refused early"
        );
    }

    #[test]
    fn reads_a_commands_arguments() {
        let set = command(&[b"SET", b"k", b"v\r\n"]);
        assert_eq!(
            command_args(&set),
            Some(vec![&b"SET"[..], &b"k"[..], &b"v\r\n"[..]])
        );
        assert_eq!(command_args(b"+OK\r\n"), None);
        assert_eq!(command_args(b"*1\r\n:1\r\n"), None);
    }

    #[test]
    fn a_scanner_resumes_where_it_stopped() {
        let reply = b"*3\r\n$5\r\nhello\r\n:42\r\n+OK\r\n";
        for step in 1..reply.len() {
            let mut scanner = Scanner::default();
            let mut found = None;
            for end in (step..=reply.len()).step_by(step).chain([reply.len()]) {
                found = scanner.scan(&reply[..end]).unwrap();
                if found.is_some() {
                    break;
                }
            }
            assert_eq!(found, Some(reply.len()), "step {step}");
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let deep = b"*1\r\n".repeat(1_000_000);
        assert_eq!(frame_len(&deep), Ok(None));
        let mut closed = deep.clone();
        closed.extend_from_slice(b":1\r\n");
        assert_eq!(frame_len(&closed), Ok(Some(closed.len())));
    }
}
