//! Line-prefixed progress output, so concurrent architectures can share stderr legibly
//! (`amd64: #5 DONE 0.3s`).

use std::io::{self, Write};

/// A writer that prefixes every line and writes whole lines only, each with one `write_all`
/// on a locked stderr, so lines of different architectures never interleave mid-line.
#[derive(Debug)]
pub struct PrefixedLines {
    prefix: String,
    pending: Vec<u8>,
}

impl PrefixedLines {
    /// Lines on stderr prefixed with `prefix` (e.g. `"amd64: "`).
    pub fn stderr(prefix: impl Into<String>) -> Self {
        PrefixedLines {
            prefix: prefix.into(),
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, line: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(self.prefix.len() + line.len() + 1);
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(line);
        out.push(b'\n');
        io::stderr().lock().write_all(&out)
    }
}

impl Write for PrefixedLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line[..line.len() - 1])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PrefixedLines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            let _ = self.emit(&rest);
        }
    }
}
