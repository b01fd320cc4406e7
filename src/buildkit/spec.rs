//! buildctl's CSV specs for outputs, cache exports and imports, secrets and SSH agents
//! (`type=…,k=v`), and `K=V` pairs, parsed into typed values ([`Output`], [`Cache`], …). The binary reads its flags with
//! these parsers; errors name the kind of spec, and the binary adds which flag held it.
//!
//! Border: pure parsing, no I/O; it uses only the session's secret sources and the layout's
//! digest check, and must not import anything above `buildkit`.

use std::path::PathBuf;
use std::str::FromStr;

use super::output::{Attrs, Cache, CacheDirection, Output};

/// A spec that could not be parsed; says which kind of spec, the value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
#[non_exhaustive]
pub struct SpecError {
    /// Which kind of spec (`output spec`, `secret spec`, …, or what the caller of
    /// [`parse_key_value`] named).
    pub what: &'static str,
    /// The value given, with credential-looking attributes (`secret_access_key=`,
    /// `token=`, …) masked: error messages end up in CI logs.
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl SpecError {
    pub(crate) fn new(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        SpecError {
            what,
            value: redact_credentials(value),
            reason: reason.into(),
        }
    }
}

/// Masks the values of attributes whose names suggest a credential (cache backends take S3
/// keys, session tokens, GitHub tokens and Azure account keys as attributes).
fn redact_credentials(spec: &str) -> String {
    spec.split(',')
        .map(|field| match field.split_once('=') {
            Some((key, _)) if is_credential_key(key) => format!("{key}=***"),
            _ => field.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn is_credential_key(key: &str) -> bool {
    let key = key.trim().trim_matches('"').to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "access_key",
        "account_key",
        "key_id",
    ]
    .iter()
    .any(|needle| key.contains(needle))
}

/// Splits a CSV record as Go's `encoding/csv` does for one line: `,` separates fields, and a
/// field in double quotes may hold commas (`""` is a literal quote).
pub fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    let mut in_quotes = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && at_start {
            in_quotes = true;
            at_start = false;
        } else if c == ',' {
            fields.push(std::mem::take(&mut field));
            at_start = true;
        } else {
            field.push(c);
            at_start = false;
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    fields.push(field);
    Ok(fields)
}

/// Parses `k=v,k2=v2` into ordered pairs (keys lower-cased as buildctl does).
pub(crate) fn parse_kv_csv(
    what: &'static str,
    s: &str,
) -> Result<Vec<(String, String)>, SpecError> {
    let fields = split_csv(s).map_err(|r| SpecError::new(what, s, r))?;
    let mut out = Vec::new();
    for field in fields {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| SpecError::new(what, s, format!("{field:?} is not key=value")))?;
        out.push((k.trim().to_ascii_lowercase(), v.to_owned()));
    }
    Ok(out)
}

const OUTPUT_TYPES: &str = "image, local, tar, oci, docker or moby";

/// A boolean attribute as Go's `strconv.ParseBool` reads it.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl FromStr for Output {
    type Err = SpecError;

    /// Parses buildctl's output syntax: `type=image,name=R,push=true`, `type=local,dest=DIR`,
    /// `type=tar,dest=FILE`, `type=oci,dest=FILE[,tar=false]`, `type=docker,dest=FILE`,
    /// `type=moby,name=R`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        const WHAT: &str = "output spec";
        let mut kind = None;
        let mut dest = None;
        let mut attrs = Attrs::new();
        let mut tar = None;
        for (k, v) in parse_kv_csv(WHAT, s)? {
            match k.as_str() {
                "type" => kind = Some(v),
                "dest" => dest = Some(v),
                "tar" => tar = Some(v),
                _ => {
                    attrs.insert(k, v);
                }
            }
        }
        let kind = kind.ok_or_else(|| {
            SpecError::new(WHAT, s, format!("type= is missing (one of {OUTPUT_TYPES})"))
        })?;
        match kind.as_str() {
            "local" | "tar" | "oci" | "docker" => {
                let dest = dest.filter(|d| !d.is_empty()).ok_or_else(|| {
                    SpecError::new(WHAT, s, format!("type={kind} needs dest=PATH"))
                })?;
                if dest == "-" {
                    return Err(SpecError::new(
                        WHAT,
                        s,
                        "writing to stdout (dest=-) is not supported; give a file name",
                    ));
                }
                let archive = match tar.as_deref() {
                    None | Some("true") => true,
                    // The daemon then writes into the client's content store instead of
                    // sending a tarball.
                    Some("false") if kind == "oci" || kind == "local" => false,
                    Some("false") => {
                        return Err(SpecError::new(
                            WHAT,
                            s,
                            format!("tar=false is supported for type=oci only, not type={kind}"),
                        ));
                    }
                    Some(other) => {
                        return Err(SpecError::new(
                            WHAT,
                            s,
                            format!("tar must be true or false, not {other:?}"),
                        ));
                    }
                };
                let dest = PathBuf::from(dest);
                Ok(match kind.as_str() {
                    "local" => Output::Local { dest, attrs },
                    "tar" => Output::Tar { dest, attrs },
                    "oci" => Output::Oci {
                        dest,
                        tar: archive,
                        attrs,
                    },
                    _ => Output::Docker { dest, attrs },
                })
            }
            "image" | "moby" => {
                if dest.is_some() {
                    return Err(SpecError::new(
                        WHAT,
                        s,
                        format!("type={kind} takes no dest (it goes to a registry or the Engine)"),
                    ));
                }
                let name = attrs.remove("name").filter(|n| !n.is_empty());
                if kind == "moby" {
                    return Ok(Output::Moby { name, attrs });
                }
                let push = match attrs.remove("push") {
                    None => false,
                    Some(p) => parse_bool(&p).ok_or_else(|| {
                        SpecError::new(WHAT, s, format!("push must be true or false, not {p:?}"))
                    })?,
                };
                if push && name.is_none() {
                    return Err(SpecError::new(WHAT, s, "push=true needs name=REF"));
                }
                Ok(Output::Image { name, push, attrs })
            }
            other => Err(SpecError::new(
                WHAT,
                s,
                format!("unknown type {other:?} (expected {OUTPUT_TYPES})"),
            )),
        }
    }
}

impl Cache {
    /// Parses buildctl's syntax: `type=registry,ref=R,mode=max`, or a bare reference meaning
    /// `type=registry,ref=<it>`.
    ///
    /// # Errors
    /// [`SpecError`] for a malformed spec, an unknown type, a missing `ref` (registry) or
    /// `dest`/`src` (local).
    pub fn parse(s: &str, direction: CacheDirection) -> Result<Self, SpecError> {
        let what = match direction {
            CacheDirection::Export => "cache export spec",
            CacheDirection::Import => "cache import spec",
        };
        if !s.contains('=') && !s.trim().is_empty() {
            return Ok(Cache::registry(s.trim()));
        }
        let mut kind = None;
        let mut attrs = Attrs::new();
        for (k, v) in parse_kv_csv(what, s)? {
            if k == "type" {
                kind = Some(v);
            } else {
                attrs.insert(k, v);
            }
        }
        let kind = kind.ok_or_else(|| SpecError::new(what, s, "type= is missing"))?;
        let mode_ok = attrs.get("mode").is_none_or(|m| m == "min" || m == "max");
        let cache = match kind.as_str() {
            "registry" => match attrs.remove("ref").filter(|r| !r.is_empty()) {
                Some(reference) => Ok(Cache::Registry { reference, attrs }),
                None => Err(SpecError::new(what, s, "type=registry needs ref=REF")),
            },
            "inline" if direction == CacheDirection::Import => Err(SpecError::new(
                what,
                s,
                "inline cache is imported with type=registry,ref=IMAGE",
            )),
            "inline" => Ok(Cache::Inline { attrs }),
            "s3" => Ok(Cache::S3 {
                bucket: attrs.remove("bucket"),
                region: attrs.remove("region"),
                attrs,
            }),
            "gha" => Ok(Cache::Gha { attrs }),
            "azblob" => Ok(Cache::AzBlob { attrs }),
            "local" => {
                let (key, example) = match direction {
                    CacheDirection::Export => ("dest", "type=local,dest=DIR"),
                    CacheDirection::Import => ("src", "type=local,src=DIR"),
                };
                let Some(path) = attrs.remove(key).filter(|d| !d.is_empty()) else {
                    return Err(SpecError::new(
                        what,
                        s,
                        format!("type=local needs {key}=DIR ({example})"),
                    ));
                };
                if let Some(digest) = attrs.get("digest")
                    && crate::buildkit::oci_layout::parse_digest(digest).is_err()
                {
                    return Err(SpecError::new(
                        what,
                        s,
                        "digest must be sha256:<64 hex digits>",
                    ));
                }
                Ok(Cache::Local {
                    path: PathBuf::from(path),
                    attrs,
                })
            }
            other => Err(SpecError::new(
                what,
                s,
                format!(
                    "unknown type {other:?} (expected registry, local, inline, s3, gha or azblob)"
                ),
            )),
        }?;
        if !mode_ok {
            return Err(SpecError::new(what, s, "mode must be min or max"));
        }
        Ok(cache)
    }
}

/// Parses `KEY=VALUE` (build args, labels, frontend options). The value may be empty; the
/// key may not.
///
/// # Errors
/// [`SpecError`] when there is no `=` or the key is empty.
pub fn parse_key_value(what: &'static str, s: &str) -> Result<(String, String), SpecError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| SpecError::new(what, s, "expected KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(SpecError::new(what, s, "the key is empty"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// A parsed secret spec, `id=ID[,src=PATH|,env=VAR]` (`source=` is accepted for `src=`). Unlike
/// buildctl, a source is required, so nothing is sent by accident.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecretSpec {
    /// The id `RUN --mount=type=secret,id=ID` names.
    pub id: String,
    /// Where the value comes from.
    pub source: crate::buildkit::session::SecretSource,
}

impl FromStr for SecretSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        use crate::buildkit::session::SecretSource;
        const WHAT: &str = "secret spec";
        let mut id = None;
        let mut source = None;
        for (k, v) in parse_kv_csv(WHAT, s)? {
            match k.as_str() {
                "id" => id = Some(v),
                "src" | "source" => source = Some(SecretSource::File(PathBuf::from(v))),
                "env" => source = Some(SecretSource::Env(v)),
                "type" if v == "file" || v == "env" => {}
                other => {
                    return Err(SpecError::new(
                        WHAT,
                        s,
                        format!("unknown key {other:?} (expected id, src or env)"),
                    ));
                }
            }
        }
        let id = id
            .filter(|i| !i.is_empty())
            .ok_or_else(|| SpecError::new(WHAT, s, "id= is missing"))?;
        let source = source.ok_or_else(|| {
            SpecError::new(WHAT, s, "give the value's source: src=FILE or env=VARIABLE")
        })?;
        Ok(SecretSpec { id, source })
    }
}

/// A parsed SSH agent spec, `default|ID[=SOCKET]`: `ID` alone means `$SSH_AUTH_SOCK`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshSpec {
    /// The id `RUN --mount=type=ssh,id=ID` names (`default` by default).
    pub id: String,
    /// The agent socket; `None` means `$SSH_AUTH_SOCK`.
    pub socket: Option<PathBuf>,
}

impl FromStr for SshSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        const WHAT: &str = "ssh spec";
        let (id, socket) = match s.split_once('=') {
            Some((id, path)) => {
                if path.contains(',') {
                    return Err(SpecError::new(
                        WHAT,
                        s,
                        "only one agent socket per id is supported (no key files)",
                    ));
                }
                (id, Some(PathBuf::from(path)))
            }
            None => (s, None),
        };
        if id.is_empty() || id.contains(',') {
            return Err(SpecError::new(WHAT, s, "expected default or ID[=SOCKET]"));
        }
        Ok(SshSpec {
            id: id.to_owned(),
            socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_credentials() {
        let err = Cache::parse(
            "type=s3,bucket=b,access_key_id=AKIAX,secret_access_key=hunter2,session_token=t0k,mode=maxx",
            CacheDirection::Export,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mode must be min or max"), "{err}");
        for secret in ["AKIAX", "hunter2", "t0k"] {
            assert!(!err.contains(secret), "{err}");
        }
        assert!(err.contains("bucket=b"), "{err}");
    }
    use crate::buildkit::session::SecretSource;

    #[test]
    fn csv_honours_quotes() {
        assert_eq!(
            split_csv(r#"type=image,"name=a:1,b:2",push=true"#).unwrap(),
            vec!["type=image", "name=a:1,b:2", "push=true"]
        );
        assert!(split_csv(r#""open"#).is_err());
    }

    #[test]
    fn outputs_split_client_and_daemon_attrs() {
        let o: Output = "type=local,dest=out".parse().unwrap();
        assert_eq!(o, Output::local("out"));
        assert_eq!(o.wire(), ("local".into(), Attrs::new()));
        let o: Output = "type=oci,dest=a.tar,tar=true,name=x".parse().unwrap();
        assert_eq!(o, Output::oci("a.tar").with_attr("name", "x"));
        assert_eq!(o.wire().1, Attrs::from([("name".into(), "x".into())]));
        let o: Output = "type=image,name=r/x:y,push=true,registry.insecure=true"
            .parse()
            .unwrap();
        assert_eq!(
            o,
            Output::image("r/x:y")
                .with_push(true)
                .with_attr("registry.insecure", "true")
        );
        // The wire gets the attributes as typed.
        assert_eq!(
            o.wire().1,
            Attrs::from([
                ("name".into(), "r/x:y".into()),
                ("push".into(), "true".into()),
                ("registry.insecure".into(), "true".into()),
            ])
        );
        assert!(o.dest().is_none());
        let o: Output = "type=moby,name=a".parse().unwrap();
        assert_eq!(
            o.wire(),
            ("moby".into(), Attrs::from([("name".into(), "a".into())]))
        );
    }

    #[test]
    fn bad_outputs_say_why() {
        for bad in [
            "dest=x",
            "type=local",
            "type=tar,dest=-",
            "type=nope,dest=x",
            "type=image,push=true",
            "type=local,dest",
            "type=docker,dest=x,tar=false",
            "type=oci,dest=x,tar=maybe",
            "type=image,name=x,push=maybe",
        ] {
            let err = bad.parse::<Output>().unwrap_err();
            assert!(err.to_string().starts_with("invalid output spec"), "{err}");
        }
    }

    #[test]
    fn cache_specs() {
        let c = Cache::parse("type=registry,ref=r/c:1,mode=max", CacheDirection::Export).unwrap();
        assert_eq!(c, Cache::registry("r/c:1").with_attr("mode", "max"));
        assert_eq!(
            c.wire(CacheDirection::Export),
            (
                "registry".into(),
                Attrs::from([
                    ("mode".into(), "max".into()),
                    ("ref".into(), "r/c:1".into())
                ])
            )
        );
        let c = Cache::parse("r/c:1", CacheDirection::Import).unwrap();
        assert_eq!(c, Cache::registry("r/c:1"));
        let c = Cache::parse("type=s3,region=r,bucket=b,name=n", CacheDirection::Import).unwrap();
        assert_eq!(c, Cache::s3("b", "r").with_attr("name", "n"));
        let c = Cache::parse("type=local,src=d,tag=t", CacheDirection::Import).unwrap();
        assert_eq!(
            c.wire(CacheDirection::Import).1,
            Attrs::from([("src".into(), "d".into()), ("tag".into(), "t".into())])
        );
        let c = Cache::parse("type=gha,scope=s", CacheDirection::Export).unwrap();
        assert_eq!(c.wire(CacheDirection::Export).0, "gha");
        assert!(Cache::parse("type=registry", CacheDirection::Import).is_err());
        assert!(Cache::parse("type=registry,ref=x,mode=all", CacheDirection::Export).is_err());
        assert!(Cache::parse("type=local,dest=d", CacheDirection::Export).is_ok());
        assert!(Cache::parse("type=local,src=d", CacheDirection::Export).is_err());
        assert!(Cache::parse("type=local,src=d", CacheDirection::Import).is_ok());
        assert!(Cache::parse("type=local,src=d,digest=sha256:x", CacheDirection::Import).is_err());
        let o: Output = "type=oci,dest=layout,tar=false,name=a/b:c".parse().unwrap();
        assert!(o.is_layout_dir());
        assert_eq!(o.wire().1["tar"], "false");
        assert!(
            !"type=oci,dest=x.tar"
                .parse::<Output>()
                .unwrap()
                .is_layout_dir()
        );
        assert!(Cache::parse("type=inline", CacheDirection::Export).is_ok());
    }

    #[test]
    fn secrets_need_an_id_and_a_source() {
        let s: SecretSpec = "id=tok,src=/run/tok".parse().unwrap();
        assert_eq!(s.source, SecretSource::File("/run/tok".into()));
        let s: SecretSpec = "id=tok,env=TOKEN".parse().unwrap();
        assert_eq!(s.source, SecretSource::Env("TOKEN".into()));
        assert!("src=/x".parse::<SecretSpec>().is_err());
        assert!("id=x".parse::<SecretSpec>().is_err());
        assert!("id=x,bogus=1".parse::<SecretSpec>().is_err());
    }

    #[test]
    fn ssh_specs() {
        assert_eq!(
            "default".parse::<SshSpec>().unwrap(),
            SshSpec {
                id: "default".into(),
                socket: None
            }
        );
        assert_eq!(
            "git=/tmp/a.sock".parse::<SshSpec>().unwrap().socket,
            Some(PathBuf::from("/tmp/a.sock"))
        );
        assert!("".parse::<SshSpec>().is_err());
        assert!("x=/a,/b".parse::<SshSpec>().is_err());
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("build argument", "A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert!(parse_key_value("build argument", "A").is_err());
        assert!(parse_key_value("build argument", "=x").is_err());
    }
}
