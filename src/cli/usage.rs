//! Usage errors: a command line that cannot run, whether clap's parse found it or a command's
//! own checks did (flags that do not go together, a value only the library can judge). Each
//! prints as the one line every failure prints, `pf-buildkit: WHAT; HOW TO FIX`, and exits 2.
//!
//! A flag's value is never echoed from clap's copy of it: the value parsers name the value
//! themselves, with credentials masked (`--export-cache` takes S3 keys), so a message says
//! `--export-cache: invalid cache export spec "type=s3,…,secret_access_key=***": …`.

use std::ffi::OsString;

use clap::CommandFactory;
use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The exit code of a usage error.
pub const EXIT_CODE: u8 = 2;

/// A usage error found after clap's parse. `main` exits 2 for any error whose chain holds one.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A flag's value is unusable; the source says why (and names the value).
    #[error("{flag}")]
    Value {
        /// The flag, e.g. `--platforms`.
        flag: &'static str,
        /// Why the value is unusable.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Flags that do not go together, said in full.
    #[error("{0}")]
    Combination(String),
    /// A value the library judged unusable, in the library's words: the source is the
    /// library's error, so the formatter still finds its hint.
    #[error("")]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl UsageError {
    /// For `map_err`: the error of parsing `flag`'s value, as a usage error.
    pub fn of<E>(flag: &'static str) -> impl FnOnce(E) -> anyhow::Error
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        move |source| {
            anyhow::Error::new(UsageError::Value {
                flag,
                source: source.into(),
            })
        }
    }
}

/// Whether `err` is a usage error (exit 2) rather than a failure (exit 1).
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<UsageError>())
}

/// The one line (without the `pf-buildkit: ` prefix) for an error clap's parse of `args`
/// found: what is wrong, then `; ` and how to fix it where there is something to say.
pub fn clap_line(err: &clap::Error, args: &[OsString]) -> String {
    let path = command_path(args);
    let text = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg);
    let flag = arg.as_deref().map(flag_name).unwrap_or("the command line");
    let value = text(ContextKind::InvalidValue);
    let help = format!("see '{} --help'", path.join(" "));
    let (what, hint) = match err.kind() {
        // The value parsers say what is wrong with the value, and name it.
        ErrorKind::ValueValidation => match std::error::Error::source(err) {
            Some(source) => (format!("{flag}: {source}"), None),
            None => (format!("{flag}: invalid value"), Some(help)),
        },
        ErrorKind::InvalidValue if value.as_deref().is_none_or(str::is_empty) => {
            (format!("{flag} needs a value"), Some(help))
        }
        ErrorKind::InvalidValue => (
            format!(
                "{flag}: {:?} is not one of {}",
                value.unwrap_or_default(),
                strings(err.get(ContextKind::ValidValue)).join(", ")
            ),
            suggestion(err),
        ),
        ErrorKind::UnknownArgument => {
            let arg = arg.unwrap_or_default();
            let what = if arg.starts_with('-') {
                // Only the flag's name: `--token=…` is not repeated.
                format!("unknown flag {}", flag_name(&arg))
            } else {
                format!("unexpected argument {arg:?}")
            };
            (what, suggestion(err).or(Some(help)))
        }
        ErrorKind::InvalidSubcommand => (
            format!(
                "unknown command {:?}",
                text(ContextKind::InvalidSubcommand).unwrap_or_default()
            ),
            suggestion(err).or(Some(help)),
        ),
        ErrorKind::MissingRequiredArgument => (
            format!(
                "missing {}",
                strings(err.get(ContextKind::InvalidArg)).join(" and ")
            ),
            Some(help),
        ),
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let commands = subcommands(&path);
            let what = if commands.is_empty() {
                "more arguments are needed".to_owned()
            } else {
                format!("a command is needed: {}", commands.join(", "))
            };
            (what, Some(help))
        }
        ErrorKind::ArgumentConflict => {
            let prior = err.get(ContextKind::PriorArg);
            let what = match prior {
                Some(ContextValue::String(p)) if Some(p) == arg.as_ref() => {
                    format!("{flag} is given more than once")
                }
                Some(prior) => format!(
                    "{flag} cannot be used with {}",
                    strings(Some(prior))
                        .iter()
                        .map(|p| flag_name(p))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                None => format!("{flag} cannot be used with the other flags given"),
            };
            (what, Some(help))
        }
        _ => (plain_text(err), Some(help)),
    };
    match hint {
        Some(hint) => format!("{what}; {hint}"),
        None => what,
    }
}

/// `--keep-storage` of `--keep-storage <BYTES>` (clap names an argument with its value's
/// placeholder); a positional `<SHELL>` stays as it is.
fn flag_name(arg: &str) -> &str {
    if arg.starts_with('-') {
        // `--sbom[=<VALUE>]` for a flag whose value is optional.
        arg.split([' ', '=', '[']).next().unwrap_or(arg)
    } else {
        arg
    }
}

fn strings(value: Option<&ContextValue>) -> Vec<String> {
    match value {
        Some(ContextValue::String(s)) => vec![s.clone()],
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    }
}

/// clap's "did you mean" for a mistyped flag, command or value, or its tip.
fn suggestion(err: &clap::Error) -> Option<String> {
    for kind in [
        ContextKind::SuggestedArg,
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedValue,
    ] {
        if let Some(value) = err.get(kind) {
            let names = strings(Some(value));
            if let Some(first) = names.first() {
                return Some(format!("did you mean {}?", flag_name(first)));
            }
        }
    }
    match err.get(ContextKind::Suggested) {
        Some(ContextValue::StyledStrs(tips)) => tips.first().map(ToString::to_string),
        _ => None,
    }
}

/// clap's own message, on one line without its usage and `--help` paragraphs: for the kinds
/// the arms above do not word themselves.
fn plain_text(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered.split("\n\n").next().unwrap_or_default();
    first
        .trim_start_matches("error: ")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command the arguments name, `["pf-buildkit", "scale", "up"]`, as far as they name one.
/// Only for the hint: a flag's value that happens to be a command's name could mislead it.
fn command_path(args: &[OsString]) -> Vec<String> {
    let mut cmd = super::Cli::command();
    let mut path = vec![cmd.get_name().to_owned()];
    for arg in args.iter().skip(1) {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        if arg.starts_with('-') {
            continue;
        }
        let Some(sub) = cmd.find_subcommand(arg).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_owned());
        cmd = sub;
    }
    path
}

/// The visible subcommands of the command at `path`.
fn subcommands(path: &[String]) -> Vec<String> {
    let mut cmd = super::Cli::command();
    for name in path.iter().skip(1) {
        match cmd.find_subcommand(name).cloned() {
            Some(sub) => cmd = sub,
            None => return Vec::new(),
        }
    }
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.get_name().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The line for `args`, which must fail clap's parse.
    fn line(args: &[&str]) -> String {
        let args: Vec<OsString> = std::iter::once("pf-buildkit")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let err = super::super::Cli::try_parse_from(&args).expect_err("the parse should fail");
        clap_line(&err, &args)
    }

    #[test]
    fn every_kind_is_one_line_in_the_projects_words() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["prune", "--keep-duration", "soon"],
                "--keep-duration: \"soon\" is not a duration; write e.g. 30m, 48h or 1h30m",
            ),
            (
                &["du", "--format", "xml"],
                "--format: \"xml\" is not one of table, json",
            ),
            (
                &["du", "--format"],
                "--format needs a value; see 'pf-buildkit du --help'",
            ),
            (
                &["du", "--formt", "json"],
                "unknown flag --formt; did you mean --format?",
            ),
            (
                &["wrokers"],
                "unknown command \"wrokers\"; did you mean workers?",
            ),
            (
                &["get-address"],
                "missing --arch <ARCH>; see 'pf-buildkit get-address --help'",
            ),
            (
                &["workers", "extra"],
                "unexpected argument \"extra\"; see 'pf-buildkit workers --help'",
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(line(args), *expected, "{args:?}");
        }
        let bare = line(&[]);
        assert!(
            bare.starts_with("a command is needed: workers, info, du, prune, build,")
                && bare.ends_with("; see 'pf-buildkit --help'"),
            "{bare}"
        );
        assert_eq!(
            line(&["scale"]),
            "a command is needed: up, down; see 'pf-buildkit scale --help'"
        );
    }

    #[test]
    fn a_secret_in_a_bad_value_is_not_repeated() {
        let text = line(&[
            "build",
            "--export-cache",
            "type=s3,bucket=b,secret_access_key=hunter2,mode=maxx",
        ]);
        assert!(text.starts_with("--export-cache: "), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let text = line(&["build", "--api-token=hunter2"]);
        assert!(!text.contains("hunter2"), "{text}");
    }
}
