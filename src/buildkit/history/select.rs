//! Naming a record as `history logs REF` does: a whole ref, a prefix of one, or `^N`, counted
//! from the newest as buildx counts (`^0` is the newest build, `^1` the one before it).

use std::fmt;
use std::str::FromStr;

/// Which record a user means.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefSelector {
    /// A whole ref, or the start of one that no other ref shares.
    Prefix(String),
    /// The build `N` places before the newest (`^0` is the newest).
    Offset(usize),
}

impl FromStr for RefSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(n) = s.strip_prefix('^') {
            return n.parse().map(RefSelector::Offset).map_err(|_| {
                format!("{s:?} is not a build offset: ^ and a number, ^0 being the newest build")
            });
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "{s:?} is not a build ref: letters and digits (a ref or the start of one), or ^N"
            ));
        }
        Ok(RefSelector::Prefix(s.to_owned()))
    }
}

impl fmt::Display for RefSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefSelector::Prefix(p) => f.write_str(p),
            RefSelector::Offset(n) => write!(f, "^{n}"),
        }
    }
}

/// Why no single record matches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// No record has such a ref.
    #[error("no build record with ref {0} (history ls lists them)")]
    NotFound(String),
    /// Several refs start so.
    #[error("{prefix} is the start of {count} build refs ({examples}); give more of the ref")]
    Ambiguous {
        /// What was given.
        prefix: String,
        /// How many match.
        count: usize,
        /// The first few matches.
        examples: String,
    },
    /// Fewer records than the offset.
    #[error("no build ^{offset}: the history holds {count} builds (^0 is the newest)")]
    OutOfRange {
        /// The offset given.
        offset: usize,
        /// How many records there are.
        count: usize,
    },
}

/// The one item of `newest_first` (sorted newest first) that `selector` names; `reference`
/// gives an item's ref. A whole ref wins over its being a prefix of longer ones.
///
/// # Errors
/// When none or several match.
pub fn select<'a, T>(
    newest_first: &'a [T],
    reference: impl Fn(&T) -> &str,
    selector: &RefSelector,
) -> Result<&'a T, SelectError> {
    match selector {
        RefSelector::Offset(offset) => newest_first.get(*offset).ok_or(SelectError::OutOfRange {
            offset: *offset,
            count: newest_first.len(),
        }),
        RefSelector::Prefix(prefix) => {
            if let Some(exact) = newest_first.iter().find(|r| reference(r) == prefix) {
                return Ok(exact);
            }
            let matches: Vec<&T> = newest_first
                .iter()
                .filter(|r| reference(r).starts_with(prefix.as_str()))
                .collect();
            match matches.as_slice() {
                [one] => Ok(one),
                [] => Err(SelectError::NotFound(prefix.clone())),
                many => Err(SelectError::Ambiguous {
                    prefix: prefix.clone(),
                    count: many.len(),
                    examples: many
                        .iter()
                        .take(3)
                        .map(|r| reference(r))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_prefixes_and_offsets_pick_one_record() {
        let refs = ["abc123", "abd456", "xyz789"];
        let pick = |s: &str| select(&refs, |r| r, &s.parse().unwrap()).copied();
        assert_eq!(pick("abc123"), Ok("abc123"));
        assert_eq!(pick("abc"), Ok("abc123"));
        assert_eq!(pick("x"), Ok("xyz789"));
        assert_eq!(pick("^0"), Ok("abc123"));
        assert_eq!(pick("^2"), Ok("xyz789"));
        assert!(matches!(
            pick("ab"),
            Err(SelectError::Ambiguous { count: 2, .. })
        ));
        assert_eq!(pick("q"), Err(SelectError::NotFound("q".into())));
        assert_eq!(
            pick("^3"),
            Err(SelectError::OutOfRange {
                offset: 3,
                count: 3
            })
        );
        assert!("^x".parse::<RefSelector>().is_err());
        assert!("a/b".parse::<RefSelector>().is_err());
        assert!("".parse::<RefSelector>().is_err());
    }
}
