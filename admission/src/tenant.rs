//! Tenant names as the contract defines them: what may come from a header, and what not.

use std::fmt;

/// Longest tenant name accepted from a header, in bytes.
pub const MAX_TENANT_LEN: usize = 64;

/// A tenant name that is 1..=64 bytes of `[A-Za-z0-9._-]`.
///
/// Invariant: the contents always pass [`TenantName::parse`], so a name is safe to put into a
/// JSON body, a log line or a stat name without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(String);

impl TenantName {
    /// Accepts `raw` if it is a well-formed tenant name, else `None`.
    pub fn parse(raw: &str) -> Option<Self> {
        is_valid(raw.as_bytes()).then(|| Self(raw.to_owned()))
    }

    /// The tenant a request belongs to: the header value when well-formed, else `default`.
    ///
    /// Takes bytes because header values are not guaranteed to be UTF-8.
    pub fn from_header(value: Option<&[u8]>, default: &TenantName) -> Self {
        match value {
            Some(bytes) if is_valid(bytes) => {
                // is_valid admits ASCII only, so this conversion cannot fail.
                Self(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => default.clone(),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_TENANT_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn default() -> TenantName {
        TenantName::parse("default").unwrap()
    }

    #[test]
    fn accepts_contract_alphabet() {
        for ok in ["acme", "a", "A.b_c-9", &"x".repeat(64)] {
            assert_eq!(TenantName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn falls_back_to_default_on_bad_header() {
        let too_long = "x".repeat(65);
        let bad: [&[u8]; 6] = [
            b"",
            b"a b",
            b"caf\xc3\xa9",
            b"a/b",
            too_long.as_bytes(),
            b"\xff",
        ];
        for value in bad {
            assert_eq!(TenantName::from_header(Some(value), &default()), default());
        }
        assert_eq!(TenantName::from_header(None, &default()), default());
    }

    proptest! {
        #[test]
        fn from_header_always_yields_a_valid_name(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let name = TenantName::from_header(Some(&bytes), &default());
            prop_assert!(TenantName::parse(name.as_str()).is_some());
            if is_valid(&bytes) {
                prop_assert_eq!(name.as_str().as_bytes(), &bytes[..]);
            }
        }
    }
}
