//! Parsing image references (`[registry/]repository[:tag][@digest]`) into oci-spec's
//! `Reference`, by hand: oci-spec's own parser compiles a large regex on first use, which
//! costs about 100 ms of a short command's run time.

use oci_spec::distribution::Reference;

use super::error::Error;

const DOCKER_HUB: &str = "docker.io";

/// Parses `[registry/]repository[:tag][@digest]` with the Docker CLI's rules: a first path
/// component without `.` or `:` (and not `localhost`) means Docker Hub, whose one-component
/// names live under `library/`; no tag and no digest means `latest`. Only `sha256` digests
/// are accepted.
///
/// # Errors
/// [`Error::InvalidReference`] naming what is wrong.
pub fn parse_reference(s: &str) -> Result<Reference, Error> {
    let bad = |problem: &str| Error::InvalidReference {
        reference: s.to_owned(),
        problem: problem.to_owned(),
    };
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    if let Some(d) = digest
        && !super::assemble::is_valid_digest(d)
    {
        return Err(bad(
            "the digest must be sha256: and 64 lowercase hex digits",
        ));
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err(bad(
            "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
        ));
    }
    if name.is_empty() {
        return Err(bad("no repository name"));
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), remainder.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB.to_owned()
    } else {
        registry
    };
    if !valid_registry(&registry) {
        return Err(bad(
            "the registry must be a host name or address with an optional :port",
        ));
    }
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    if repository.len() > 255 || !repository.split('/').all(valid_component) {
        return Err(bad(
            "a repository is lowercase letters and digits, separated by '/', '.', '_', '__' or '-'",
        ));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.to_owned()),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_owned()),
    })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_registry(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|c| c.is_ascii_hexdigit() || c == b':')
    } else {
        !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            })
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    name_ok && port_ok
}

/// Whether `repository` is a valid repository path: `/`-separated components, each a run of
/// `[a-z0-9]+` joined by `.`, `_`, `__` or any number of `-` (the distribution spec's grammar).
pub fn valid_repository(repository: &str) -> bool {
    !repository.is_empty() && repository.split('/').all(valid_component)
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = parse_reference(s).unwrap();
        (
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        )
    }

    #[test]
    fn parses_like_the_docker_cli() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            parts("busybox"),
            (
                "docker.io".into(),
                "library/busybox".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts("127.0.0.1:5000/pf-test/app:v1-amd64"),
            (
                "127.0.0.1:5000".into(),
                "pf-test/app".into(),
                Some("v1-amd64".into()),
                None
            )
        );
        assert_eq!(
            parts("localhost/a__b/c--d.e:T_1.x"),
            (
                "localhost".into(),
                "a__b/c--d.e".into(),
                Some("T_1.x".into()),
                None
            )
        );
        assert_eq!(
            parts(&format!("r.example/app@{d}")),
            ("r.example".into(), "app".into(), None, Some(d.clone()))
        );
        assert_eq!(
            parts(&format!("r.example/app:t@{d}")),
            (
                "r.example".into(),
                "app".into(),
                Some("t".into()),
                Some(d.clone())
            )
        );
        assert_eq!(
            parts("test.com:5000"),
            (
                "docker.io".into(),
                "library/test.com".into(),
                Some("5000".into()),
                None
            )
        );
        assert_eq!(parts("[::1]:5000/a:b").0, "[::1]:5000");
        assert_eq!(parts("index.docker.io/x/y").0, "docker.io");
        assert_eq!(
            parse_reference("127.0.0.1:5000/pf-test/app:v1")
                .unwrap()
                .whole(),
            "127.0.0.1:5000/pf-test/app:v1"
        );
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "UPPER/Case:tag",
            "r.example/app:",
            "r.example/app:-x",
            "r.example/a b:c",
            "r.example//app",
            "r.example/app-:t",
            "r.example/app@sha256:abc",
            "r.example/app@md5:00",
            "r..example/app",
            "r.example:port/app",
            "r.example/app:t@",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad:?} accepted");
        }
        let err = parse_reference("r.example/Not Valid:x")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid image reference \"r.example/Not Valid:x\": "),
            "{err}"
        );
    }
}
