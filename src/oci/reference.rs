//! Tags, and manifest references (a tag or a digest).

use std::fmt;
use std::str::FromStr;

use super::Digest;

/// A validated tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tag {0:?}: a tag is 1 to 128 of [a-zA-Z0-9._-] and does not start with '.' or '-'")]
pub struct TagError(pub String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok { Ok(Tag(s.to_owned())) } else { Err(TagError(s.to_owned())) }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What `/v2/<name>/manifests/<reference>` names: a tag or a digest. A reference with a
/// ':' is a digest (a tag cannot contain one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for good in ["latest", "v1.10.0", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(good.parse::<Tag>().is_ok(), "{good:?}");
        }
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129), "..", "a b"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }
}
