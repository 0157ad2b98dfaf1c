//! Header maps and their wire format.
//!
//! The serialized form (spec v0.2.1, "Serialization") is little-endian: a `u32` pair count, then a
//! `u32` key length and a `u32` value length per pair, then every key and value, each followed by a
//! NUL byte.

use std::fmt;
use std::sync::Arc;

/// Largest serialized map the host will decode from a guest (proxy-wasm-cpp-host's limit).
pub const MAX_DECODED_SIZE: usize = 1 << 20;
/// Most pairs the host will decode from a guest in one call (proxy-wasm-cpp-host's limit).
pub const MAX_DECODED_PAIRS: usize = 1024;

type Entry = (Vec<u8>, Vec<u8>);

/// An ordered multi-map of lower-case header names to byte values, as Envoy's header maps behave
/// towards a plugin: names are case-insensitive, values keep their order, and pseudo-headers
/// (`:method`, `:path`, `:status`, ...) are ordinary entries.
///
/// A clone shares the entries until one side changes them (copy on write): the proxy hands a
/// stream's headers on and keeps them for later callbacks, and usually neither side changes them
/// afterwards.
#[derive(Clone, Default)]
pub struct HeaderMap {
    /// `None` while empty, so that the empty trailer maps of every stream allocate nothing.
    entries: Option<Arc<Vec<Entry>>>,
    /// The bytes of every name and value, kept up to date so that sizing a map costs nothing.
    bytes: usize,
}

impl PartialEq for HeaderMap {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for HeaderMap {}

impl fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries()
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

fn lower(key: &[u8]) -> Vec<u8> {
    key.to_ascii_lowercase()
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(pairs: usize) -> Self {
        Self {
            entries: Some(Arc::new(Vec::with_capacity(pairs))),
            bytes: 0,
        }
    }

    fn entries(&self) -> &[Entry] {
        self.entries.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The entries to change, copied first if a clone still shares them.
    fn entries_mut(&mut self) -> &mut Vec<Entry> {
        Arc::make_mut(self.entries.get_or_insert_default())
    }

    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether `other` is a clone of this map that neither side has changed since (a change
    /// copies the entries first), so whatever was computed from one holds for the other.
    pub fn unchanged_clone_of(&self, other: &HeaderMap) -> bool {
        match (&self.entries, &other.entries) {
            (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs),
            (None, None) => true,
            _ => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.entries()
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The first value of `key`, as Envoy returns it to `proxy_get_header_map_value`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let key = key.as_ref();
        self.entries()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `key` as text, with invalid UTF-8 replaced.
    pub fn get_str(&self, key: impl AsRef<[u8]>) -> Option<String> {
        self.get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn get_all(&self, key: impl AsRef<[u8]>) -> impl Iterator<Item = &[u8]> {
        let key = key.as_ref().to_ascii_lowercase();
        self.entries()
            .iter()
            .filter(move |(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.bytes += key.len() + value.len();
        self.entries_mut().push((lower(key), value.to_vec()));
    }

    /// Sets `key` to one value: the first entry is replaced in place and any others removed, or the
    /// pair is appended when the key is absent.
    pub fn replace(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = lower(key.as_ref());
        let value = value.as_ref();
        let entries = self.entries_mut();
        let mut removed = 0;
        let added = match entries.iter().position(|(k, _)| *k == key) {
            Some(first) => {
                removed += entries[first].1.len();
                entries[first].1 = value.to_vec();
                let mut index = 0;
                entries.retain(|(k, v)| {
                    let keep = index <= first || *k != key;
                    if !keep {
                        removed += k.len() + v.len();
                    }
                    index += 1;
                    keep
                });
                value.len()
            }
            None => {
                let added = key.len() + value.len();
                entries.push((key, value.to_vec()));
                added
            }
        };
        self.bytes = self.bytes + added - removed;
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        if self.get(key).is_some() {
            let mut removed = 0;
            self.entries_mut().retain(|(k, v)| {
                let keep = !k.eq_ignore_ascii_case(key);
                if !keep {
                    removed += k.len() + v.len();
                }
                keep
            });
            self.bytes -= removed;
        }
    }

    /// Size of [`encode_pairs`]'s output for this map, without encoding it.
    pub fn encoded_len(&self) -> usize {
        4 + 10 * self.len() + self.bytes
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_pairs(self.iter())
    }
}

/// Serializes pairs in the spec's format.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let (count, body) = pairs.clone().fold((0usize, 0usize), |(n, size), (k, v)| {
        (n + 1, size + k.len() + v.len() + 2)
    });
    let mut out = Vec::with_capacity(4 + count * 8 + body);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Why a serialized map from a guest was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge(usize),
    TooManyPairs(u64),
    Truncated,
    MissingNul,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(size) => write!(
                f,
                "serialized map of {size} bytes exceeds {MAX_DECODED_SIZE}"
            ),
            Self::TooManyPairs(n) => write!(
                f,
                "serialized map claims {n} pairs, more than {MAX_DECODED_PAIRS}"
            ),
            Self::Truncated => f.write_str("serialized map is shorter than its lengths say"),
            Self::MissingNul => f.write_str("serialized map entry is not NUL-terminated"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Parses the spec's format. An empty buffer, or a single NUL byte, is an empty map.
pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<(&[u8], &[u8])>, DecodeError> {
    if bytes.is_empty() || bytes == [0] {
        return Ok(Vec::new());
    }
    if bytes.len() > MAX_DECODED_SIZE {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let read_u32 = |at: usize| -> Result<usize, DecodeError> {
        let word: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|word| word.try_into().ok())
            .ok_or(DecodeError::Truncated)?;
        Ok(u32::from_le_bytes(word) as usize)
    };
    let count = read_u32(0)?;
    if count > MAX_DECODED_PAIRS {
        return Err(DecodeError::TooManyPairs(count as u64));
    }
    let mut data = 4 + count * 8;
    if data > bytes.len() {
        return Err(DecodeError::Truncated);
    }
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let key_len = read_u32(4 + i * 8)?;
        let value_len = read_u32(8 + i * 8)?;
        let key = bytes
            .get(data..data + key_len)
            .ok_or(DecodeError::Truncated)?;
        data += key_len;
        if bytes.get(data) != Some(&0) {
            return Err(DecodeError::MissingNul);
        }
        data += 1;
        let value = bytes
            .get(data..data + value_len)
            .ok_or(DecodeError::Truncated)?;
        data += value_len;
        if bytes.get(data) != Some(&0) {
            return Err(DecodeError::MissingNul);
        }
        data += 1;
        pairs.push((key, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_is_unchanged_until_either_side_changes() {
        let map = HeaderMap::from_pairs([(":path", "/a")]);
        let mut clone = map.clone();
        assert!(clone.unchanged_clone_of(&map));
        assert!(!HeaderMap::from_pairs([(":path", "/a")]).unchanged_clone_of(&map));
        clone.replace(":path", "/a");
        assert!(
            !clone.unchanged_clone_of(&map),
            "a write copies, even of the same value"
        );
        assert!(HeaderMap::new().unchanged_clone_of(&HeaderMap::new()));
    }

    #[test]
    fn round_trips_and_matches_the_spec_layout() {
        let map = HeaderMap::from_pairs([(":path", "/a"), ("X-Key", "v")]);
        let bytes = map.encode();
        assert_eq!(bytes.len(), map.encoded_len());
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &5u32.to_le_bytes());
        assert_eq!(&bytes[20..], b":path\0/a\0x-key\0v\0");
        let decoded = decode_pairs(&bytes).unwrap();
        assert_eq!(
            decoded,
            vec![(&b":path"[..], &b"/a"[..]), (&b"x-key"[..], &b"v"[..])]
        );
    }

    #[test]
    fn refuses_lying_counts_before_allocating() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode_pairs(&bytes),
            Err(DecodeError::TooManyPairs(u32::MAX as u64))
        );
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&100u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_pairs(&bytes), Err(DecodeError::Truncated));
        assert!(decode_pairs(&[]).unwrap().is_empty());
        assert!(decode_pairs(&[0]).unwrap().is_empty());
    }

    #[test]
    fn the_size_follows_every_change() {
        let mut map = HeaderMap::new();
        let check = |map: &HeaderMap| assert_eq!(map.encoded_len(), map.encode().len());
        check(&map);
        map.add("A", "1");
        map.add("b", "22");
        map.add("a", "333");
        check(&map);
        map.replace("a", "x");
        check(&map);
        map.replace("c", "four");
        check(&map);
        let snapshot = map.clone();
        map.remove("B");
        check(&map);
        check(&snapshot);
        map.remove("missing");
        check(&map);
        check(&HeaderMap::from_pairs([("k", "v"), ("k", "w")]));
    }

    #[test]
    fn replace_keeps_position_and_drops_duplicates() {
        let mut map = HeaderMap::from_pairs([("a", "1"), ("b", "2"), ("A", "3")]);
        map.replace("a", "x");
        assert_eq!(map, HeaderMap::from_pairs([("a", "x"), ("b", "2")]));
        map.replace("c", "y");
        assert_eq!(map.get("C"), Some(&b"y"[..]));
        map.remove("B");
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn a_clone_is_a_snapshot() {
        let mut map = HeaderMap::from_pairs([("a", "1")]);
        let sent = map.clone();
        map.replace("a", "2");
        map.add("b", "3");
        assert_eq!(sent, HeaderMap::from_pairs([("a", "1")]));
        assert_eq!(map, HeaderMap::from_pairs([("a", "2"), ("b", "3")]));
        let mut emptied = sent.clone();
        emptied.remove("a");
        assert_eq!(emptied, HeaderMap::new());
        assert_eq!(sent.get("a"), Some(&b"1"[..]));
    }
}
