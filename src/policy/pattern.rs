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
    /// A glob over anything: callers say over what (`repository_glob`, `tag_glob`), so
    /// that a pattern nothing can match is refused.
    fn glob(raw: &str) -> Result<Pattern, String> {
        if raw.is_empty() {
            return Err("an empty pattern matches nothing; use \"*\" or \"**\"".into());
        }
        Ok(Pattern::Glob(raw.to_owned()))
    }

    /// A glob over repository names, refused if no name can match it: a character no name
    /// has (a capital, a space), an empty segment (a leading, trailing or doubled `/`), or
    /// separators where names cannot have them (`team/-web`, `a..b`). Such a typo would
    /// govern nothing, silently (an immutability rule that protects no tag, a quota that
    /// limits nothing).
    pub fn repository_glob(raw: &str) -> Result<Pattern, String> {
        let pattern = Pattern::glob(raw)?;
        if let Some(c) = raw.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*?".contains(*c)))
        {
            return Err(format!(
                "{c:?} is in no repository name (lowercase letters, digits, '.', '_', '-' and '/'), so {raw:?} matches nothing"
            ));
        }
        if raw.split('/').any(str::is_empty) {
            return Err(format!(
                "{raw:?} has an empty segment (a leading, trailing or doubled '/'), which no repository name has, so it matches nothing"
            ));
        }
        if !matches_some_repository_name(&tokens(raw.as_bytes())) {
            return Err(format!(
                "no repository name matches {raw:?} (each '/'-separated part is lowercase letters and digits, \
                 joined by one '.', one or two '_' or dashes), so it matches nothing"
            ));
        }
        Ok(pattern)
    }

    /// A glob over tags, refused if it has a character no tag has (a space, a `/`), or
    /// starts with one no tag starts with.
    pub fn tag_glob(raw: &str) -> Result<Pattern, String> {
        let pattern = Pattern::glob(raw)?;
        if let Some(c) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-*?".contains(*c))) {
            return Err(format!("{c:?} is in no tag (letters, digits, '.', '_' and '-'), so {raw:?} matches nothing"));
        }
        if let Some(c) = raw.chars().next().filter(|c| ".-".contains(*c)) {
            return Err(format!("no tag starts with {c:?}, so {raw:?} matches nothing"));
        }
        Ok(pattern)
    }

    pub fn regex(raw: &str) -> Result<Pattern, String> {
        let invalid = |e: regex::Error| format!("invalid regular expression: {e}");
        // Alone first: `a)|(b` is no expression, but wrapped it would be one, unanchored.
        regex::Regex::new(raw).map_err(invalid)?;
        let regex = regex::Regex::new(&format!("^(?:{raw})$")).map_err(invalid)?;
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

/// One element of a glob.
#[derive(Clone, Copy, PartialEq)]
enum Token {
    Literal(u8),
    /// `?`: one character, not `/`.
    One,
    /// `*`: any run of characters within a segment.
    Star,
    /// `**`: any run of characters, `/` included; `**/` also matches no segment at all.
    DoubleStar,
}

fn tokens(pattern: &[u8]) -> Vec<Token> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut i = 0;
    while i < pattern.len() {
        out.push(match (pattern[i], pattern.get(i + 1)) {
            (b'*', Some(b'*')) => {
                i += 1;
                Token::DoubleStar
            }
            (b'*', _) => Token::Star,
            (b'?', _) => Token::One,
            (c, _) => Token::Literal(c),
        });
        i += 1;
    }
    out
}

/// Where a repository name's grammar is after some characters: each `/`-separated
/// component is runs of lowercase letters and digits joined by one `.`, one or two `_`, or
/// any number of `-`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum NameAt {
    /// At the start of a component, or after `.` or `__`: a letter or digit must follow.
    NeedAlnum,
    /// After a letter or digit: the only place a name (or a component) may end.
    Alnum,
    /// After one `_`.
    Underscore,
    /// After one or more `-`.
    Dash,
}

impl NameAt {
    fn next(self, c: u8) -> Option<NameAt> {
        use NameAt::*;
        match (self, c) {
            (_, b'a'..=b'z' | b'0'..=b'9') => Some(Alnum),
            (Alnum, b'.') | (Underscore, b'_') => Some(NeedAlnum),
            (Alnum, b'_') => Some(Underscore),
            (Alnum | Dash, b'-') => Some(Dash),
            (Alnum, b'/') => Some(NeedAlnum),
            _ => None,
        }
    }
}

/// Whether some repository name matches the glob: a search over (position in the glob,
/// place in the name grammar, whether the wildcard at that position has matched anything
/// yet), where a wildcard may stand for any character of its class. Letters and digits all
/// lead to the same place, so `a` stands for them all.
fn matches_some_repository_name(t: &[Token]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(0, NameAt::NeedAlnum, false)];
    while let Some(state @ (i, at, consumed)) = todo.pop() {
        if !seen.insert(state) {
            continue;
        }
        let Some(token) = t.get(i) else {
            if at == NameAt::Alnum {
                return true;
            }
            continue;
        };
        let mut step = |i: usize, c: u8, consumed: bool| todo.extend(at.next(c).map(|at| (i, at, consumed)));
        match *token {
            Token::Literal(c) => step(i + 1, c, false),
            Token::One => b"a._-".iter().for_each(|&c| step(i + 1, c, false)),
            Token::Star => b"a._-".iter().for_each(|&c| step(i, c, true)),
            Token::DoubleStar => b"a._-/".iter().for_each(|&c| step(i, c, true)),
        }
        if matches!(token, Token::Star | Token::DoubleStar) {
            todo.push((i + 1, at, false));
        }
        // `**/` may match no segment at all, but only as a whole (as `glob_match` has it).
        if *token == Token::DoubleStar && !consumed && t.get(i + 1) == Some(&Token::Literal(b'/')) {
            todo.push((i + 2, at, false));
        }
    }
    false
}

/// Whether `name` matches the glob, in time proportional to the pattern's length times the
/// name's: a backtracking matcher takes exponential time on patterns with many stars
/// (`*a*a*a*a*a*a*b`), and patterns come from the admin API and are matched on every push.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let t = tokens(pattern);
    let width = name.len() + 1;
    // `rest[i * width + j]`: whether `t[i..]` matches `name[j..]`; filled from the end.
    let mut rest = vec![false; (t.len() + 1) * width];
    rest[t.len() * width + name.len()] = true;
    for i in (0..t.len()).rev() {
        // Whether `t[i + 1..]` matches some `name[k..]` with k >= j: what `**` needs.
        let mut later = false;
        for j in (0..=name.len()).rev() {
            let next = |di: usize, dj: usize| rest[(i + di) * width + j + dj];
            later |= next(1, 0);
            let c = name.get(j).copied();
            rest[i * width + j] = match t[i] {
                Token::Literal(p) => c == Some(p) && next(1, 1),
                Token::One => c.is_some_and(|c| c != b'/') && next(1, 1),
                Token::Star => next(1, 0) || (c.is_some_and(|c| c != b'/') && next(0, 1)),
                Token::DoubleStar => later || (t.get(i + 1) == Some(&Token::Literal(b'/')) && next(2, 0)),
            };
        }
    }
    rest[0]
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

    /// The matcher before it was made linear, kept as the reference for what a glob means.
    fn backtracking(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) if rest.first() == Some(&b'*') => {
                let rest = &rest[1..];
                if let Some(after_slash) = rest.strip_prefix(b"/")
                    && backtracking(after_slash, name)
                {
                    return true;
                }
                (0..=name.len()).any(|i| backtracking(rest, &name[i..]))
            }
            Some((b'*', rest)) => {
                let segment_end = name.iter().position(|&c| c == b'/').unwrap_or(name.len());
                (0..=segment_end).any(|i| backtracking(rest, &name[i..]))
            }
            Some((b'?', rest)) => matches!(name.first(), Some(&c) if c != b'/') && backtracking(rest, &name[1..]),
            Some((&p, rest)) => name.first() == Some(&p) && backtracking(rest, &name[1..]),
        }
    }

    #[test]
    fn globs_mean_what_they_meant() {
        // Every pattern of up to 5 elements over these against every name of up to 5
        // characters over those.
        let (parts, chars) = (["a", "/", "*", "**", "?"], [b'a', b'b', b'/']);
        let mut patterns = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> =
                patterns.iter().flat_map(|p| parts.iter().map(move |x| format!("{p}{x}"))).collect();
            patterns.extend(longer);
        }
        patterns.sort();
        patterns.dedup();
        let mut names = vec![Vec::new()];
        for _ in 0..5 {
            let longer: Vec<Vec<u8>> =
                names.iter().flat_map(|n| chars.iter().map(move |c| [n.as_slice(), &[*c]].concat())).collect();
            names.extend(longer);
        }
        names.sort();
        names.dedup();
        for p in &patterns {
            for n in &names {
                assert_eq!(
                    glob_match(p.as_bytes(), n),
                    backtracking(p.as_bytes(), n),
                    "{p:?} against {:?}",
                    String::from_utf8_lossy(n)
                );
            }
        }
    }

    #[test]
    fn a_glob_matches_some_repository_name_exactly_when_one_exists() {
        // Every pattern of up to 3 elements against every valid name of up to 7 characters
        // (long enough for a witness of any such pattern).
        let parts = ["a", "-", "_", ".", "/", "*", "**", "?"];
        let mut patterns = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> =
                patterns.iter().flat_map(|p| parts.iter().map(move |x| format!("{p}{x}"))).collect();
            patterns.extend(longer);
        }
        let mut names = vec![String::new()];
        for _ in 0..7 {
            let longer: Vec<String> = names
                .iter()
                .filter(|n| n.len() < 7)
                .flat_map(|n| "a-_./".chars().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        names.sort();
        names.dedup();
        names.retain(|n| n.parse::<crate::oci::RepoName>().is_ok());
        for p in &patterns {
            let exists = names.iter().any(|n| glob_match(p.as_bytes(), n.as_bytes()));
            assert_eq!(matches_some_repository_name(&tokens(p.as_bytes())), exists, "{p:?}");
        }
    }

    #[test]
    fn many_stars_take_no_exponential_time() {
        // Days for the backtracking matcher; a few hundred thousand steps here.
        let pattern = format!("{}b", "*a".repeat(12));
        assert!(!Pattern::glob(&pattern).unwrap().matches(&"a".repeat(128)));
        let pattern = format!("{}/b", "**a".repeat(12));
        assert!(!Pattern::glob(&pattern).unwrap().matches(&"a/".repeat(127)));
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
        // Parentheses that would close the anchoring group and open another.
        assert!(Pattern::regex("a)|(b").is_err());
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
