//! Platforms (`os/arch[/variant]`), how they match, and manifest-tool's source-name templates.
//!
//! Border: pure parsing and matching, no I/O; it uses only the registry's error type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::Error;
use crate::setters::with_setters;

/// Operating systems Go (and so BuildKit and the registries' clients) knows.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];

/// Architectures Go knows.
const KNOWN_ARCH: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "wasm",
];

/// An image platform, as an index entry's `platform` or an image config says it.
///
/// Serialises in the field order of the OCI spec and Docker's manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Operating system (`linux`, ...).
    pub os: String,
    /// OS version (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features (Windows images).
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant (`v7`, `v8`, ...); `None` when the platform names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/architecture` with no variant; `"linux/arm64/v8".parse()` reads one from text.
    ///
    /// ```
    /// use pf_buildkit::registry::Platform;
    ///
    /// let armv7 = Platform::new("linux", "arm").with_variant("v7");
    /// assert_eq!(armv7, "linux/arm/v7".parse().unwrap());
    /// ```
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Self {
            architecture: architecture.into(),
            os: os.into(),
            os_version: None,
            os_features: None,
            variant: None,
        }
    }

    /// The variant, with arm64's implicit `v8` made explicit so `linux/arm64` and
    /// `linux/arm64/v8` compare equal.
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None | Some("")) => Some("v8"),
            (_, Some("")) => None,
            (_, v) => v,
        }
    }

    /// Whether an image of platform `candidate` satisfies this requested platform: same os and
    /// architecture, and the same variant when both name one (many image configs omit it).
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (self.normalized_variant(), candidate.normalized_variant()) {
            (Some(wanted), Some(has)) => wanted == has,
            _ => true,
        }
    }

    /// Whether two platforms are the same for duplicate detection.
    pub fn same_as(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && self.normalized_variant() == other.normalized_variant()
            && self.os_version == other.os_version
    }

    /// The `unknown/unknown` platform BuildKit gives attestation manifests.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" && self.architecture == "unknown"
    }
}

with_setters!(Platform {
    with_os_features => os_features: Option<Vec<String>>,
} optional {
    with_variant => variant: String,
    with_os_version => os_version: String,
});

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// Parses `os/arch[/variant]`, accepting the common aliases (`x86_64`, `aarch64`), and
    /// rejecting an os or architecture Go does not know.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |problem: String| Error::InvalidPlatform {
            platform: s.to_owned(),
            problem,
        };
        let parts: Vec<&str> = s.trim().split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad(
                "expected os/architecture[/variant], e.g. linux/arm64".into()
            ));
        }
        let os = parts[0].to_ascii_lowercase();
        if !KNOWN_OS.contains(&os.as_str()) {
            return Err(bad(format!(
                "unknown operating system {os:?} (known: {})",
                KNOWN_OS.join(", ")
            )));
        }
        let (arch, implied_variant) = match parts[1].to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => ("amd64".to_owned(), None),
            "aarch64" => ("arm64".to_owned(), None),
            "i386" => ("386".to_owned(), None),
            "armhf" => ("arm".to_owned(), Some("v7")),
            "armel" => ("arm".to_owned(), Some("v6")),
            other => (other.to_owned(), None),
        };
        if !KNOWN_ARCH.contains(&arch.as_str()) {
            return Err(bad(format!(
                "unknown architecture {arch:?} (known: {})",
                KNOWN_ARCH.join(", ")
            )));
        }
        let variant = parts
            .get(2)
            .map(|v| v.to_ascii_lowercase())
            .or(implied_variant.map(str::to_owned));
        Ok(Self {
            architecture: arch,
            os,
            os_version: None,
            os_features: None,
            variant,
        })
    }
}

/// Parses a comma-separated platform list (`linux/amd64,linux/arm64`).
///
/// # Errors
/// An empty list or an invalid entry.
pub fn parse_platforms(list: &str) -> Result<Vec<Platform>, Error> {
    let platforms = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Platform>, Error>>()?;
    if platforms.is_empty() {
        return Err(Error::InvalidPlatform {
            platform: list.to_owned(),
            problem: "no platform given".into(),
        });
    }
    Ok(platforms)
}

const PLACEHOLDERS: &[&str] = &["ARCH", "OS", "VARIANT"];

/// Whether `template` holds `ARCH`, `OS` or `VARIANT` as a whole token.
pub fn has_placeholder(template: &str) -> bool {
    PLACEHOLDERS
        .iter()
        .any(|p| !token_positions(template, p).is_empty())
}

/// Replaces every whole-token `ARCH`, `OS` and `VARIANT` in `template` with the platform's
/// values (`VARIANT` becomes empty for a platform without one).
///
/// A token is delimited by anything that is not an ASCII letter or digit, so `app:v1-ARCH`
/// becomes `app:v1-amd64`, while `ARCHIVE`, `myARCH` and `OSX` stay as written (manifest-tool
/// replaces the first `ARCH` substring anywhere, Panfactum bug 10).
pub fn expand_template(template: &str, platform: &Platform) -> String {
    let variant = platform.variant.clone().unwrap_or_default();
    let values = [
        ("ARCH", platform.architecture.as_str()),
        ("OS", platform.os.as_str()),
        ("VARIANT", variant.as_str()),
    ];
    // Collect every placeholder occurrence, then rebuild left to right, so a value that
    // itself looks like a placeholder is never substituted again.
    let mut hits: Vec<(usize, usize, &str)> = Vec::new();
    for (name, value) in values {
        for pos in token_positions(template, name) {
            hits.push((pos, name.len(), value));
        }
    }
    hits.sort_by_key(|h| h.0);
    let mut out = String::with_capacity(template.len() + 16);
    let mut last = 0;
    for (pos, len, value) in hits {
        out.push_str(&template[last..pos]);
        out.push_str(value);
        last = pos + len;
    }
    out.push_str(&template[last..]);
    out
}

fn token_positions(s: &str, token: &str) -> Vec<usize> {
    let bytes = s.as_bytes();
    s.match_indices(token)
        .map(|(i, _)| i)
        .filter(|&i| {
            let before_ok = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
            let end = i + token.len();
            let after_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
            before_ok && after_ok
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_platforms_and_aliases() {
        assert_eq!(p("linux/amd64"), Platform::new("linux", "amd64"));
        assert_eq!(p("linux/aarch64").architecture, "arm64");
        assert_eq!(p("linux/arm/v7").variant.as_deref(), Some("v7"));
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert_eq!(
            parse_platforms("linux/amd64, linux/arm64").unwrap().len(),
            2
        );
    }

    #[test]
    fn rejects_unknown_architecture_and_os() {
        let err = "linux/amd65".parse::<Platform>().unwrap_err().to_string();
        assert!(err.contains("unknown architecture \"amd65\""), "{err}");
        let err = "linucs/amd64".parse::<Platform>().unwrap_err().to_string();
        assert!(err.contains("unknown operating system"), "{err}");
        assert!("amd64".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!(parse_platforms(" , ").is_err());
    }

    #[test]
    fn matching_respects_variants() {
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/arm").matches(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(p("linux/arm/v7").matches(&p("linux/arm")));
        assert!(!p("linux/arm64/v9").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(p("linux/arm64").same_as(&p("linux/arm64/v8")));
    }

    #[test]
    fn template_replaces_whole_tokens_only() {
        let amd = p("linux/amd64");
        assert_eq!(
            expand_template("r/myarchive:tag-ARCH", &amd),
            "r/myarchive:tag-amd64"
        );
        assert_eq!(
            expand_template("r/app:ARCHIVE-1-ARCH", &amd),
            "r/app:ARCHIVE-1-amd64"
        );
        assert_eq!(
            expand_template("r/app:v1-OSX-OS-ARCH", &amd),
            "r/app:v1-OSX-linux-amd64"
        );
        assert_eq!(
            expand_template("r/app:OS-ARCHVARIANT", &amd),
            "r/app:linux-ARCHVARIANT"
        );
        assert_eq!(
            expand_template("r/app:t-ARCH-VARIANT", &p("linux/arm/v7")),
            "r/app:t-arm-v7"
        );
        assert_eq!(
            expand_template("r/ARCH/app:ARCH", &amd),
            "r/amd64/app:amd64"
        );
    }

    #[test]
    fn placeholder_detection() {
        assert!(has_placeholder("r/app:t-ARCH"));
        assert!(has_placeholder("r/app:OS_t"));
        assert!(!has_placeholder("r/app:ARCHIVE"));
        assert!(!has_placeholder("r/app:latest"));
    }

    #[test]
    fn serialises_in_spec_order() {
        let json = serde_json::to_string(&p("linux/arm/v7")).unwrap();
        assert_eq!(
            json,
            r#"{"architecture":"arm","os":"linux","variant":"v7"}"#
        );
    }
}
