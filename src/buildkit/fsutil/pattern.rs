//! `.dockerignore` pattern semantics as moby/patternmatcher implements them, plus the two Go
//! standard-library helpers they rest on (`filepath.Clean` and `filepath.Match`).
//!
//! The daemon sends include/exclude patterns and expects the client to apply them exactly as
//! fsutil does, so this follows patternmatcher's rules to the letter, including its quirks:
//! a pattern is a Go glob turned into a regular expression (`*` and `?` never cross `/`, `**`
//! crosses any number of directories), with shortcuts for exact, prefix (`foo/**`) and suffix
//! (`**/foo`) patterns that behave slightly differently from the regular expression they stand for.

use regex::Regex;

/// A pattern that cannot be compiled, named with the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {reason}")]
#[non_exhaustive]
pub struct PatternError {
    /// The pattern exactly as the caller wrote it (an include, exclude or `.dockerignore` line),
    /// before trimming or cleaning.
    pub pattern: String,
    /// What is wrong with it, e.g. "syntax error in pattern".
    pub reason: &'static str,
    /// The regular-expression engine's error, when the pattern's translation was refused.
    #[source]
    pub source: Option<regex::Error>,
}

/// Go's `path.Clean`: the shortest equivalent path, by lexical processing only.
pub(crate) fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|last| *last != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `filepath.Dir` for slash paths, on a cleaned path.
pub(crate) fn dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

/// A malformed glob (Go's `filepath.ErrBadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPattern;

/// Decodes the character at the start of `b` (U+FFFD and length 1 for an invalid byte, as Go does).
fn decode(b: &[u8]) -> (char, usize) {
    let len = match b.first() {
        None => return ('\u{fffd}', 0),
        Some(x) if *x < 0x80 => 1,
        Some(x) if *x >= 0xf0 => 4,
        Some(x) if *x >= 0xe0 => 3,
        Some(x) if *x >= 0xc0 => 2,
        Some(_) => 1,
    };
    match b.get(..len).and_then(|s| std::str::from_utf8(s).ok()) {
        Some(s) => (s.chars().next().unwrap_or('\u{fffd}'), len),
        None => ('\u{fffd}', 1),
    }
}

/// Splits off the next chunk of a glob: leading stars, then literal text up to the next star
/// outside a character class.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut start = 0;
    let mut star = false;
    while start < pattern.len() && pattern[start] == b'*' {
        start += 1;
        star = true;
    }
    let pattern = &pattern[start..];
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

fn get_esc(chunk: &[u8]) -> Result<(char, &[u8]), BadPattern> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (r, n) = decode(chunk);
    let chunk = &chunk[n..];
    if chunk.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, chunk))
}

/// Matches one chunk at the start of `s`; on success returns what is left of `s`. Keeps parsing
/// after a mismatch so that syntax errors anywhere in the chunk are reported.
fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut chunk = chunk;
    let mut s = s;
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = '\0';
                if !failed {
                    let (ch, n) = decode(s);
                    r = ch;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    if chunk[0] != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// Go's `filepath.Match` on Unix: shell globs where `*` and `?` never match `/`.
pub(crate) fn go_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'outer: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let result = match_chunk(chunk, name);
        if let Ok(Some(t)) = result
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        result?;
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'outer;
                }
                i += 1;
            }
        }
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex),
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    /// The cleaned pattern, without its `!`.
    pub(crate) cleaned: String,
    /// A `!` pattern: re-includes what earlier patterns matched.
    pub(crate) exclusion: bool,
    kind: Kind,
}

/// Regex syntax differs from Go's inside a character class in a few places; escape what the
/// Rust engine would read as nested classes or set operations.
fn push_escaped(re: &mut String, ch: char) {
    if ch.is_ascii_alphanumeric() {
        re.push('\\');
        re.push(ch);
    } else {
        re.push_str(&regex::escape(&ch.to_string()));
    }
}

impl Pattern {
    fn compile(cleaned: &str, exclusion: bool, original: &str) -> Result<Pattern, PatternError> {
        let chars: Vec<char> = cleaned.chars().collect();
        let mut re = String::from("^");
        let mut kind_is = 0u8; // 0 exact, 1 prefix, 2 suffix, 3 regex
        let mut idx = 0;
        let mut iteration = 0;
        let mut in_class = false;
        while idx < chars.len() {
            let ch = chars[idx];
            idx += 1;
            match ch {
                '*' => {
                    if chars.get(idx) == Some(&'*') {
                        idx += 1;
                        if chars.get(idx) == Some(&'/') {
                            idx += 1;
                        }
                        if idx == chars.len() {
                            if kind_is == 0 {
                                kind_is = 1;
                            } else {
                                re.push_str(".*");
                                kind_is = 3;
                            }
                        } else {
                            re.push_str("(.*/)?");
                            kind_is = 3;
                        }
                        if iteration == 0 {
                            kind_is = 2;
                        }
                    } else {
                        re.push_str("[^/]*");
                        kind_is = 3;
                    }
                }
                '?' => {
                    re.push_str("[^/]");
                    kind_is = 3;
                }
                '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                    re.push('\\');
                    re.push(ch);
                }
                '\\' => {
                    if let Some(&next) = chars.get(idx) {
                        idx += 1;
                        push_escaped(&mut re, next);
                        kind_is = 3;
                    } else {
                        re.push_str("\\\\");
                    }
                }
                '[' => {
                    if in_class {
                        re.push_str("\\[");
                    } else {
                        in_class = true;
                        re.push('[');
                    }
                    kind_is = 3;
                }
                ']' => {
                    in_class = false;
                    re.push(']');
                    kind_is = 3;
                }
                '&' | '~' if in_class => {
                    re.push('\\');
                    re.push(ch);
                }
                _ => re.push(ch),
            }
            iteration += 1;
        }
        let kind = match kind_is {
            0 => Kind::Exact,
            1 => Kind::Prefix,
            2 => Kind::Suffix,
            _ => {
                re.push('$');
                Kind::Regex(Regex::new(&re).map_err(|e| PatternError {
                    pattern: original.to_string(),
                    reason: "unsupported expression",
                    source: Some(e),
                })?)
            }
        };
        Ok(Pattern {
            cleaned: cleaned.to_string(),
            exclusion,
            kind,
        })
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }

    /// The pattern without a trailing `/**` or `/*` (fsutil's `patternWithoutTrailingGlob`).
    pub(crate) fn without_trailing_glob(&self) -> &str {
        let p = self.cleaned.as_str();
        let p = p.strip_suffix("/**").unwrap_or(p);
        p.strip_suffix("/*").unwrap_or(p)
    }
}

/// An ordered list of patterns where the last one that matches decides.
#[derive(Debug, Clone)]
pub(crate) struct PatternMatcher {
    pub(crate) patterns: Vec<Pattern>,
    /// Whether any pattern starts with `!`.
    pub(crate) exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns the way `.dockerignore` lines are read: surrounding white space
    /// trimmed, empty ones skipped, `!` taken off, the rest cleaned with a leading `/` dropped.
    pub(crate) fn new(patterns: &[String]) -> Result<PatternMatcher, PatternError> {
        let mut out = Vec::with_capacity(patterns.len());
        let mut exclusions = false;
        for original in patterns {
            let p = original.trim();
            if p.is_empty() {
                continue;
            }
            let (exclusion, body) = match p.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, p),
            };
            if exclusion && body.is_empty() {
                return Err(PatternError {
                    pattern: original.clone(),
                    reason: "illegal exclusion pattern \"!\"",
                    source: None,
                });
            }
            let mut cleaned = clean(body);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            if go_match(&cleaned, ".").is_err() {
                return Err(PatternError {
                    pattern: original.clone(),
                    reason: "syntax error in pattern",
                    source: None,
                });
            }
            exclusions |= exclusion;
            out.push(Pattern::compile(&cleaned, exclusion, original)?);
        }
        Ok(PatternMatcher {
            patterns: out,
            exclusions,
        })
    }

    /// patternmatcher's `MatchesUsingParentResults`: whether `file` is matched, given the
    /// per-pattern results of its parent directory (empty when unknown, in which case every
    /// parent directory is checked). Returns the per-pattern results for `file`'s children.
    pub(crate) fn matches_using_parent(&self, file: &str, parent: &[bool]) -> (bool, Vec<bool>) {
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        let parent = if parent.len() == self.patterns.len() {
            parent
        } else {
            &[]
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut m = parent.get(i).copied().unwrap_or(false);
            if !m {
                if pattern.exclusion != matched {
                    continue;
                }
                m = pattern.matches(file);
                if !m && parent.is_empty() {
                    m = parent_dirs(file).any(|d| pattern.matches(d));
                }
            }
            info[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }

    /// patternmatcher's `MatchesOrParentMatches`: the pattern list applied to `file` and each
    /// of its parent directories.
    #[cfg(test)]
    pub(crate) fn matches_or_parent(&self, file: &str) -> bool {
        self.matches_using_parent(file, &[]).0
    }
}

/// `a`, `a/b` for `a/b/c`: every proper parent directory of a relative path.
fn parent_dirs(file: &str) -> impl Iterator<Item = &str> {
    let parent = dir(file);
    let parent = if parent == "." { "" } else { parent };
    let ends = parent
        .match_indices('/')
        .map(|(i, _)| i)
        .chain((!parent.is_empty()).then_some(parent.len()));
    ends.map(move |end| &parent[..end])
}
