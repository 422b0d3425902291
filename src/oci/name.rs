//! Repository names, with the distribution-spec grammar.

use std::fmt;
use std::str::FromStr;

/// The longest repository name accepted. The spec lets registries cap it; 255 matches
/// what Docker clients accept for a whole reference without the host.
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
/// No component can be `.` or `..`, so a name is always safe as a relative path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid repository name {name:?}: {why}")]
pub struct RepoNameError {
    pub name: String,
    pub why: &'static str,
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators between alphanumeric runs: one '.', one or two '_', or any number of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = RepoNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| RepoNameError { name: s.to_owned(), why };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(err("it is longer than 255 characters"));
        }
        if !s.split('/').all(valid_component) {
            return Err(err(
                "each path component must be lowercase letters and digits, separated by '.', '_', '__' or dashes",
            ));
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for good in ["a", "library/ubuntu", "a.b_c__d---e/f0", "conformance/test", "x1/y2/z3"] {
            assert!(good.parse::<RepoName>().is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a/./b", "a___b", "a..b", "-a", "a-", "a_", "a b", "a%2fb",
            "é",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} accepted");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }
}
