//! Patterns over repository names and tags: globs, and regular expressions that are
//! always anchored (a pattern matches the whole name or nothing, so `v1` never matches
//! `v10` or `dev1`).

use std::fmt;

/// A compiled name pattern.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// `*` matches within one `/`-separated segment, `**` across segments, `?` one
    /// character; everything else is literal.
    Glob(String),
    /// A regular expression, anchored at both ends.
    Regex { source: String, regex: regex::Regex },
}

impl Pattern {
    pub fn glob(raw: &str) -> Result<Pattern, String> {
        if raw.is_empty() {
            return Err("an empty pattern matches nothing; use \"*\" or \"**\"".into());
        }
        Ok(Pattern::Glob(raw.to_owned()))
    }

    pub fn regex(raw: &str) -> Result<Pattern, String> {
        let regex =
            regex::Regex::new(&format!("^(?:{raw})$")).map_err(|e| format!("invalid regular expression: {e}"))?;
        Ok(Pattern::Regex { source: raw.to_owned(), regex })
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Glob(g) => glob_match(g.as_bytes(), name.as_bytes()),
            Pattern::Regex { regex, .. } => regex.is_match(name),
        }
    }

    /// How specific a repository pattern is, for "the most specific match wins": more
    /// literal characters first, then fewer `**`, then fewer `*`/`?`.
    pub fn specificity(&self) -> (usize, isize, isize) {
        match self {
            Pattern::Glob(g) => {
                let doubles = g.matches("**").count();
                let singles = g.chars().filter(|c| *c == '*' || *c == '?').count() - 2 * doubles;
                let literals = g.chars().filter(|c| *c != '*' && *c != '?').count();
                (literals, -(doubles as isize), -(singles as isize))
            }
            // A regular expression's specificity cannot be read off; rank it below any
            // glob with literal characters.
            Pattern::Regex { .. } => (0, -1, -1),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Glob(g) => write!(f, "{g}"),
            Pattern::Regex { source, .. } => write!(f, "/{source}/"),
        }
    }
}

fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            // `**/` also matches zero segments.
            if let Some(after_slash) = rest.strip_prefix(b"/")
                && glob_match(after_slash, name)
            {
                return true;
            }
            (0..=name.len()).any(|i| glob_match(rest, &name[i..]))
        }
        Some((b'*', rest)) => {
            let segment_end = name.iter().position(|&c| c == b'/').unwrap_or(name.len());
            (0..=segment_end).any(|i| glob_match(rest, &name[i..]))
        }
        Some((b'?', rest)) => matches!(name.first(), Some(&c) if c != b'/') && glob_match(rest, &name[1..]),
        Some((&p, rest)) => name.first() == Some(&p) && glob_match(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str, n: &str| Pattern::glob(p).unwrap().matches(n);
        assert!(g("team/*", "team/app"));
        assert!(!g("team/*", "team/app/sub"));
        assert!(g("team/**", "team/app/sub"));
        assert!(g("**", "anything/at/all"));
        assert!(g("**/app", "app"));
        assert!(g("**/app", "a/b/app"));
        assert!(g("v*", "v1.2.3"));
        assert!(!g("v*", "dev-v1"));
        assert!(g("release-??", "release-42"));
        assert!(!g("release-??", "release-420"));
        assert!(g("exact", "exact"));
        assert!(!g("exact", "exactly"));
    }

    #[test]
    fn regexes_are_anchored() {
        let r = Pattern::regex("v1").unwrap();
        assert!(r.matches("v1"));
        assert!(!r.matches("v10"));
        assert!(!r.matches("dev1"));
        let r = Pattern::regex("main|release-[0-9]+").unwrap();
        assert!(r.matches("main"));
        assert!(r.matches("release-12"));
        assert!(!r.matches("mainline"));
        assert!(!r.matches("my-main"));
        assert!(Pattern::regex("(").is_err());
    }

    #[test]
    fn specificity_orders_patterns() {
        let s = |p: &str| Pattern::glob(p).unwrap().specificity();
        assert!(s("team/app") > s("team/*"));
        assert!(s("team/*") > s("team/**"));
        assert!(s("team/**") > s("**"));
        assert!(s("team/*/web") > s("team/*"));
    }
}
