//! Upload session ids.

use std::fmt;
use std::str::FromStr;

/// An upload session id: 32 lowercase hex characters (a random v4 UUID, simple form).
/// Bosun generates them; parsing only accepts that exact shape, so an id is always a safe
/// file name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn random() -> UploadId {
        UploadId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UploadId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok { Ok(UploadId(s.to_owned())) } else { Err(()) }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let id = UploadId::random();
        assert_eq!(id.as_str().parse::<UploadId>().unwrap(), id);
        assert!("../../etc".parse::<UploadId>().is_err());
        assert!("ABCDEF00000000000000000000000000".parse::<UploadId>().is_err());
    }
}
