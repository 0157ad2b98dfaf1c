//! The body length a message's head promised (`content-length`), held against the body the
//! plugins pass on.
//!
//! A plugin may rewrite a body after the head with the old `content-length` went out (a plugin
//! should remove it in its headers callback, as the SDK examples do; many do not). Envoy writes
//! the new bytes as they are, so an HTTP/1.1 peer reads the excess as the start of the next
//! message; hyper would cut the body at the promised length and call the message complete.
//! Sluice does neither: the message ends in error before the promise is broken.

use sluice_abi::HeaderMap;

/// How a body broke its head's promise, said for the log.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the plugins made the body {length} bytes{more} after content-length: {declared} was sent \
     (remove content-length in the headers callback when changing a body)"
)]
pub struct Mismatch {
    declared: u64,
    length: u64,
    more: &'static str,
}

#[derive(Debug, Default)]
pub struct Framing {
    declared: Option<u64>,
    passed: u64,
}

impl Framing {
    /// The promise of `headers`, if they make one (`carries_body`: false for the answer to a
    /// `HEAD` request or a status without a body, whose `content-length` describes no bytes).
    pub fn of(headers: &HeaderMap, carries_body: bool) -> Framing {
        let declared = headers
            .get("content-length")
            .filter(|_| carries_body)
            .and_then(|value| std::str::from_utf8(value).ok()?.trim().parse().ok());
        Framing {
            declared,
            passed: 0,
        }
    }

    /// Counts `length` more bytes, the body's last when `end`; an error when they do not fit
    /// the promise (then nothing of them should go out). The error is given once: the promise
    /// is forgotten with it.
    pub fn admit(&mut self, length: usize, end: bool) -> Result<(), Mismatch> {
        let Some(declared) = self.declared.take() else {
            return Ok(());
        };
        let total = self.passed.saturating_add(length as u64);
        if total > declared {
            return Err(Mismatch {
                declared,
                length: total,
                more: " or more",
            });
        }
        if end && total < declared {
            return Err(Mismatch {
                declared,
                length: total,
                more: "",
            });
        }
        self.passed = total;
        self.declared = Some(declared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_length(length: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.add("content-length", length);
        headers
    }

    #[test]
    fn a_body_must_fill_its_content_length_exactly() {
        let mut framing = Framing::of(&with_length("14"), true);
        assert_eq!(framing.admit(10, false), Ok(()));
        let mut twice = Framing::of(&with_length("14"), true);
        assert_eq!(framing.admit(4, true), Ok(()));
        assert!(twice.admit(15, false).is_err(), "15 bytes do not fit 14");
        assert_eq!(twice.admit(15, true), Ok(()), "said once");

        let mut short = Framing::of(&with_length("14"), true);
        let error = short.admit(5, true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the plugins made the body 5 bytes after content-length: 14 was sent (remove \
             content-length in the headers callback when changing a body)"
        );
    }

    #[test]
    fn no_promise_without_a_length_or_a_body() {
        assert_eq!(
            Framing::of(&HeaderMap::new(), true).admit(1 << 30, true),
            Ok(())
        );
        assert_eq!(
            Framing::of(&with_length("14"), false).admit(100, true),
            Ok(())
        );
        assert_eq!(
            Framing::of(&with_length("x"), true).admit(100, true),
            Ok(())
        );
    }
}
