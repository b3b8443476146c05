//! How problems with a config file are reported: [`ConfigError`] (one problem, at a
//! `file:line:column` and a field path) and [`ConfigErrors`] (all of them), and, for the
//! validation, [`Source`] (byte offsets to `line:column`) and [`Errors`] (the list the checks
//! push to, in the order they run).

use std::{fmt, ops::Range};

/// One problem with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as it was named to [`Config::load`](super::Config::load) /
    /// [`Config::parse`](super::Config::parse).
    pub file: String,
    /// 1-based line and column (in characters) of the offending value; `None` when the
    /// problem is with the file as a whole (it cannot be read).
    pub position: Option<(usize, usize)>,
    /// Path of the field, e.g. `vips[1].backends[2].server_id`; empty for the whole file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in file order. Displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The text being checked, for turning byte offsets into line:column.
pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    /// Offset of the start of each line: validation asks for the line of every entry (to
    /// name the first of two duplicates), and counting newlines from the top each time made
    /// a 10,000-entry file take minutes.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(super) fn new(file: &'a str, text: &'a str) -> Source<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            file,
            text,
            line_starts,
        }
    }

    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line starting at or before `offset`.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let col = self.text[start..offset].chars().count() + 1;
        (line, col)
    }

    pub(super) fn error(&self, span: Range<usize>, field: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            position: Some(self.position(span.start)),
            field: field.to_owned(),
            message,
        }
    }
}

/// Collects errors while validation goes on.
pub(super) struct Errors<'a> {
    pub(super) src: Source<'a>,
    pub(super) list: Vec<ConfigError>,
}

impl Errors<'_> {
    pub(super) fn at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let e = self.src.error(span, field, message.into());
        self.list.push(e);
    }

    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        self.src.position(span.start).0
    }
}
