//! Conditional requests (RFC 9110 §13.1): what `If-Match` and `If-None-Match` ask of the
//! manifest or blob a request names. Content is addressed by digest, so a representation's
//! validator (its `ETag`) is its digest, quoted. A write checks its condition in its own
//! transaction: two clients that read the same tag cannot both move it.

use super::{Error, Result};

/// The entity tags of one `If-Match` or `If-None-Match` (every header line, split at
/// commas): `*`, or quoted tags, weak ones marked `W/`.
#[derive(Debug, Clone, Default)]
pub struct EntityTags(Vec<String>);

impl EntityTags {
    pub fn new(tags: impl IntoIterator<Item = String>) -> EntityTags {
        EntityTags(tags.into_iter().collect())
    }

    /// Whether one of them matches what `current` (a digest, if the resource exists) has:
    /// `*` matches any that exists; a weak tag matches only in a weak comparison.
    fn match_current(&self, current: Option<&str>, weak: bool) -> bool {
        let Some(current) = current else { return false };
        self.0.iter().any(|t| {
            let opaque = if weak { t.strip_prefix("W/").unwrap_or(t) } else { t.as_str() };
            t == "*" || opaque.strip_prefix('"').and_then(|o| o.strip_suffix('"')) == Some(current)
        })
    }
}

/// The preconditions of a request.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    pub if_match: Option<EntityTags>,
    pub if_none_match: Option<EntityTags>,
}

/// What the preconditions decide for a read that they do not refuse.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Proceed,
    /// `If-None-Match` matched: 304, the client has these bytes.
    NotModified,
}

impl Condition {
    /// Whether the request states no condition.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// `If-Match` (strong comparison) and `If-None-Match` (weak), in that order, against
    /// what the request names now: `current`, its digest, if it exists.
    fn evaluate(&self, current: Option<&str>) -> (bool, bool) {
        let if_match = self.if_match.as_ref().is_none_or(|t| t.match_current(current, false));
        let if_none_match = self.if_none_match.as_ref().is_none_or(|t| !t.match_current(current, true));
        (if_match, if_none_match)
    }

    /// For a GET or HEAD of `what`, which exists with the digest `current`: refused (412)
    /// if `If-Match` does not hold.
    pub fn read(&self, what: &str, current: &str) -> Result<ReadOutcome> {
        match self.evaluate(Some(current)) {
            (false, _) => Err(not_named(what, current)),
            (true, false) => Ok(ReadOutcome::NotModified),
            (true, true) => Ok(ReadOutcome::Proceed),
        }
    }

    /// For a write (PUT, DELETE) of `what`, which now has the digest `current` (None: it
    /// does not exist): refused (412) unless both hold.
    pub fn write(&self, what: &str, current: Option<&str>) -> Result<()> {
        match (self.evaluate(current), current) {
            ((true, true), _) => Ok(()),
            ((false, _), Some(current)) => Err(not_named(what, current)),
            ((false, _), None) => {
                Err(Error::PreconditionFailed(format!("{what} does not exist, and If-Match asks it to")))
            }
            ((true, false), _) => Err(Error::PreconditionFailed(format!(
                "{what} is {}, which If-None-Match names",
                current.unwrap_or_default()
            ))),
        }
    }
}

/// `If-Match` failed for `what`, whose digest is `current`.
fn not_named(what: &str, current: &str) -> Error {
    Error::PreconditionFailed(format!("{what} is {current}, which If-Match does not name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Option<EntityTags> {
        Some(EntityTags::new(list.iter().map(|s| s.to_string())))
    }

    #[test]
    fn strong_for_if_match_weak_for_if_none_match() {
        let (d, other) = ("sha256:aa", "sha256:bb");
        let c = |m: &[&str], n: &[&str]| Condition {
            if_match: (!m.is_empty()).then(|| tags(m)).flatten(),
            if_none_match: (!n.is_empty()).then(|| tags(n)).flatten(),
        };
        assert_eq!(c(&[], &[]).read("x", d).unwrap(), ReadOutcome::Proceed);
        assert_eq!(c(&["\"sha256:aa\""], &[]).read("x", d).unwrap(), ReadOutcome::Proceed);
        assert!(matches!(c(&["W/\"sha256:aa\""], &[]).read("x", d), Err(Error::PreconditionFailed(_))));
        assert_eq!(c(&["*"], &[]).read("x", d).unwrap(), ReadOutcome::Proceed);
        assert_eq!(c(&[], &["W/\"sha256:aa\""]).read("x", d).unwrap(), ReadOutcome::NotModified);
        assert_eq!(c(&[], &["\"x\"", "\"sha256:aa\""]).read("x", d).unwrap(), ReadOutcome::NotModified);
        assert_eq!(c(&[], &["\"sha256:bb\""]).read("x", d).unwrap(), ReadOutcome::Proceed);
        // If-Match first: a failed one is a 412 whatever If-None-Match says.
        assert!(matches!(c(&["\"sha256:bb\""], &["*"]).read("x", d), Err(Error::PreconditionFailed(_))));
        // Writes: create only, compare and swap.
        assert!(c(&[], &["*"]).write("tag t", None).is_ok());
        assert!(matches!(c(&[], &["*"]).write("tag t", Some(d)), Err(Error::PreconditionFailed(_))));
        assert!(c(&["\"sha256:aa\""], &[]).write("tag t", Some(d)).is_ok());
        assert!(matches!(c(&["\"sha256:aa\""], &[]).write("tag t", Some(other)), Err(Error::PreconditionFailed(_))));
        assert!(matches!(c(&["*"], &[]).write("tag t", None), Err(Error::PreconditionFailed(_))));
        assert!(c(&[], &[]).write("tag t", None).is_ok());
    }
}
