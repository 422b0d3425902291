//! Small helpers for request and response headers and query strings.

use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};

use crate::registry::{Condition, EntityTags, Error};

pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
pub const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");

/// A header value from text this server produced (digests, paths of validated names,
/// numbers), which is always visible ASCII.
pub fn value(s: impl Into<String>) -> HeaderValue {
    HeaderValue::from_str(&s.into()).expect("header text built from validated values")
}

/// A request header as text, `None` if absent. A value that is not visible ASCII is an
/// error naming the header: taking it for absent would, for `Content-Range`, append a
/// chunk the client meant to place.
pub fn get(request: &Parts, name: HeaderName) -> Result<Option<&str>, String> {
    match request.headers.get(&name).map(HeaderValue::to_str) {
        None => Ok(None),
        Some(Ok(text)) => Ok(Some(text)),
        Some(Err(_)) => Err(format!("the {name} header is not visible ASCII text")),
    }
}

/// The body's length the request declares, if it declares one (the HTTP layer has already
/// refused a Content-Length that is not a number).
pub fn content_length(request: &Parts) -> Option<u64> {
    get(request, axum::http::header::CONTENT_LENGTH).ok().flatten().and_then(|v| v.parse().ok())
}

/// The decoded query parameters of a request.
pub fn query(request: &Parts) -> Vec<(String, String)> {
    form_urlencoded::parse(request.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of query parameter `key`.
pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// An inclusive byte range `start-end`, as in an upload's `Content-Range` (the spec writes
/// it without a unit; `bytes ` and `bytes=` prefixes are accepted too).
pub fn parse_content_range(raw: &str) -> Result<(u64, u64), Error> {
    let bad = || Error::UploadInvalid(format!("Content-Range {raw:?} is not of the form <start>-<end>"));
    let spec = raw.trim();
    let spec = spec.strip_prefix("bytes=").or_else(|| spec.strip_prefix("bytes ")).unwrap_or(spec);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    Ok((start.trim().parse().map_err(|_| bad())?, end.trim().parse().map_err(|_| bad())?))
}

/// The preconditions a request states (RFC 9110 §13.1): `If-Match` and `If-None-Match`,
/// every line of each. Dates (`If-Modified-Since`, ...) are ignored, as RFC 9110 says for a
/// resource without a modification date. An unreadable value names no tag (so an
/// `If-Match` of only that fails).
pub fn condition(request: &Parts) -> Condition {
    let tags = |name: HeaderName| {
        let mut values = request.headers.get_all(&name).iter().peekable();
        values.peek()?;
        Some(EntityTags::new(
            values
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ))
    };
    Condition { if_match: tags(axum::http::header::IF_MATCH), if_none_match: tags(axum::http::header::IF_NONE_MATCH) }
}

/// Whether a GET's `Range` applies: not when `If-Range` names another validator (or a
/// date, which no representation here has), for then the client's partial copy is of
/// other bytes and it needs them whole.
pub fn range_applies(request: &Parts, etag: &str) -> bool {
    match request.headers.get(axum::http::header::IF_RANGE) {
        None => true,
        // A strong comparison: a weak tag (`W/`) never equals a quoted one.
        Some(v) => v.to_str().is_ok_and(|v| v.trim() == etag),
    }
}

/// Resolves a `Range: bytes=...` request header against a blob of `size` bytes into
/// `(offset, len)`. `None` means the whole blob; several ranges are answered with the whole
/// blob too (allowed by RFC 9110).
pub fn resolve_range(raw: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, Error> {
    let Some(raw) = raw else { return Ok(None) };
    let Some(spec) = raw.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = Error::RangeNotSatisfiable { size };
    let (start, end) = spec.split_once('-').ok_or(Error::RangeNotSatisfiable { size })?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // Suffix range: the last `end` bytes.
        let n = decimal(end).ok_or(Error::RangeNotSatisfiable { size })?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        let n = n.min(size);
        (size - n, n)
    } else {
        let s = decimal(start).ok_or(Error::RangeNotSatisfiable { size })?;
        let e: u64 = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            decimal(end).ok_or(Error::RangeNotSatisfiable { size })?.min(size.saturating_sub(1))
        };
        if s >= size || e < s {
            return Err(unsatisfiable);
        }
        (s, e - s + 1)
    };
    Ok(Some(range))
}

/// A non-negative decimal number; one too large for a `u64` is `u64::MAX` (a range end or
/// a page size past any real one means "to the end", "as many as allowed").
pub fn decimal(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(raw.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve_range(None, 10).unwrap(), None);
        assert_eq!(resolve_range(Some("bytes=0-4"), 10).unwrap(), Some((0, 5)));
        assert_eq!(resolve_range(Some("bytes=5-"), 10).unwrap(), Some((5, 5)));
        assert_eq!(resolve_range(Some("bytes=-3"), 10).unwrap(), Some((7, 3)));
        assert_eq!(resolve_range(Some("bytes=8-100"), 10).unwrap(), Some((8, 2)));
        assert_eq!(resolve_range(Some("bytes=0-1,3-4"), 10).unwrap(), None);
        // Ends past any u64 are clamped like any end past the blob (RFC 9110, 14.1.2).
        assert_eq!(resolve_range(Some("bytes=0-99999999999999999999999"), 10).unwrap(), Some((0, 10)));
        assert_eq!(resolve_range(Some("bytes=-99999999999999999999999"), 10).unwrap(), Some((0, 10)));
        assert!(resolve_range(Some("bytes=99999999999999999999999-"), 10).is_err());
        for bad in ["bytes=10-", "bytes=5-2", "bytes=x-", "bytes=-0", "bytes=-"] {
            assert!(resolve_range(Some(bad), 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn decimals_saturate() {
        assert_eq!(decimal("42"), Some(42));
        assert_eq!(decimal("99999999999999999999999"), Some(u64::MAX));
        for bad in ["", "-1", "+1", "1.5", "abc", " 1"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-21").unwrap(), (0, 21));
        assert_eq!(parse_content_range("bytes 5-9/*").unwrap(), (5, 9));
        assert!(parse_content_range("5").is_err());
        assert!(parse_content_range("a-b").is_err());
    }
}
