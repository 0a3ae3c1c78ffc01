//! Positioned messages about a user's file — `FILE:LINE:COL: message` — and
//! the collector that gathers every error and warning of one file, so a user
//! sees all problems of a stack at once instead of fixing them one by one.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::yaml::Pos;

/// One problem (or warning) at a 1-based line and column of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Every error found in a file, in file order; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects errors and warnings about one file.
#[derive(Debug)]
pub struct Report {
    file: PathBuf,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    /// An empty report about `file`.
    pub fn new(file: &Path) -> Self {
        Report { file: file.to_path_buf(), errors: Vec::new(), warnings: Vec::new() }
    }

    /// A diagnostic about this report's file.
    pub fn diagnostic(&self, pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic { file: self.file.clone(), line: pos.line, column: pos.column, message: message.into() }
    }

    /// Records an error at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        let d = self.diagnostic(pos, message);
        self.errors.push(d);
    }

    /// Records a warning at `pos`.
    pub fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        let d = self.diagnostic(pos, message);
        self.warnings.push(d);
    }

    /// Records a typed-read error (falls back to `pos` when it has none).
    pub fn node_error(&mut self, pos: Pos, e: crate::yaml::de::NodeError) {
        self.error(e.pos.unwrap_or(pos), humanize(&e.message));
    }

    /// The errors sorted by position, or `Ok` with the warnings when there were none.
    pub fn finish(mut self) -> Result<Vec<Diagnostic>, Diagnostics> {
        if self.errors.is_empty() {
            return Ok(self.warnings);
        }
        self.errors.sort_by_key(|d| (d.line, d.column));
        self.errors.dedup();
        Err(Diagnostics(self.errors))
    }
}

/// serde's messages in a user's words (`expected u64` → `expected a whole number ≥ 0`).
fn humanize(message: &str) -> String {
    [
        ("unknown variant", "unknown value"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a port number, 1-65535"),
        ("expected f64", "expected a number"),
    ]
    .iter()
    .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_display_as_file_line_column_message() {
        let mut r = Report::new(Path::new("stack.yml"));
        r.error(Pos { line: 7, column: 3 }, "b");
        r.error(Pos { line: 2, column: 5 }, "a");
        let all = r.finish().unwrap_err();
        assert_eq!(all.to_string(), "stack.yml:2:5: a\nstack.yml:7:3: b");
    }

    #[test]
    fn a_report_with_only_warnings_succeeds() {
        let mut r = Report::new(Path::new("s.yml"));
        r.warn(Pos { line: 1, column: 1 }, "w");
        assert_eq!(r.finish().unwrap().len(), 1);
    }
}
