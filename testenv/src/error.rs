//! The one error type of the test environment: a sentence that names what failed and where
//! (which daemon, port, file), ready to be printed as the binary's one line.

use std::fmt;
use std::io;
use std::path::Path;

/// What went wrong while starting, checking or stopping a component.
#[derive(Debug)]
pub struct Error(String);

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with the given message.
    pub fn msg(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// A closure for `map_err` that says what was being done to which file.
    pub fn file(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_path_buf();
        move |e| Error(format!("{what} {}: {e}", path.display()))
    }

    /// A closure for `map_err` that prefixes `context`.
    pub fn ctx(context: impl fmt::Display) -> impl FnOnce(io::Error) -> Error {
        move |e| Error(format!("{context}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}
