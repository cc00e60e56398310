//! What is wrong with a configuration, and where: places in a file (`file:line:column`), one
//! problem at a place, every problem of a file, and the locator that turns the byte offsets of
//! a document assembled from several sources into places.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// A place in a configuration file. Lines and columns are 1-based; columns count characters.
/// Sources without lines (a `BATON_*` variable, an HTTP request body) have line and column 0,
/// and the diagnostic's message starts with the variable or field it is about.
///
/// Serialized as it is shown, `file:line:column` (or the file alone when there is no line),
/// and read back from that.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// A source without lines: a request body, a variable.
    pub fn has_no_line(&self) -> bool {
        self.line == 0
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}", self.file);
        }
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl std::str::FromStr for Location {
    type Err = std::convert::Infallible;

    /// `file:line:column`, or a file alone (a file name may hold `:`; the last two parts are
    /// the line and column only when both are numbers and the line is not 0).
    fn from_str(text: &str) -> Result<Location, Self::Err> {
        let mut parts = text.rsplitn(3, ':');
        let (column, line, file) = (parts.next(), parts.next(), parts.next());
        if let (Some(column), Some(line), Some(file)) = (column, line, file)
            && let (Ok(line), Ok(column)) = (line.parse::<usize>(), column.parse::<usize>())
            && line > 0
        {
            return Ok(Location { file: file.to_string(), line, column });
        }
        Ok(Location { file: text.to_string(), line: 0, column: 0 })
    }
}

impl Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Location, D::Error> {
        let text = String::deserialize(deserializer)?;
        let Ok(location) = text.parse();
        Ok(location)
    }
}

/// One problem found in a configuration, at a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, diagnostic) in self.diagnostics.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets into places. A document may be assembled from several sources (the
/// file, its profile, `BATON_*` variables, a request body): each is a segment of one offset
/// space, so that a span alone says which source a value came from.
pub(super) struct Locator {
    pub(super) segments: Vec<Segment>,
}

pub(super) struct Segment {
    pub(super) file: String,
    /// The segment's first offset in the shared offset space.
    pub(super) start: usize,
    pub(super) text: String,
    /// For sources without lines: what each span (relative to the segment) is called, e.g.
    /// `BATON_SERVER_LISTEN` or `command[0]`; the innermost span containing an offset names it.
    pub(super) labels: Option<Vec<(Range<usize>, String)>>,
}

impl Locator {
    pub(super) fn new(file: &str, text: &str) -> Self {
        let mut locator = Locator { segments: Vec::new() };
        locator.push(file, text.to_string(), None);
        locator
    }

    /// Adds a source; returns its index.
    pub(super) fn push(&mut self, file: &str, text: String, labels: Option<Vec<(Range<usize>, String)>>) -> usize {
        // One offset of separation, so that an empty source still has its own offset.
        let start = self.segments.last().map_or(0, |last| last.start + last.text.len() + 1);
        self.segments.push(Segment { file: file.to_string(), start, text, labels });
        self.segments.len() - 1
    }

    pub(super) fn segment(&self, offset: usize) -> &Segment {
        self.segments.iter().rev().find(|segment| segment.start <= offset).unwrap_or(&self.segments[0])
    }

    /// The order of sources, for sorting diagnostics: base file first.
    pub(super) fn segment_of(&self, location: &Location) -> usize {
        self.segments.iter().position(|segment| segment.file == location.file).unwrap_or(usize::MAX)
    }

    pub(super) fn locate(&self, span: Range<usize>) -> Location {
        let segment = self.segment(span.start);
        if segment.labels.is_some() {
            return Location { file: segment.file.clone(), line: 0, column: 0 };
        }
        let offset = (span.start - segment.start).min(segment.text.len());
        let text = segment.text.as_str();
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |idx| idx + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { file: segment.file.clone(), line, column }
    }

    /// The name of exactly `span` (a key or a value); a source with a single name (a
    /// variable) names all of its spans. A span of none (a whole request body) has no name.
    pub(super) fn label(&self, span: &Range<usize>) -> Option<&str> {
        let segment = self.segment(span.start);
        let relative = span.start - segment.start..span.end.saturating_sub(segment.start);
        let labels = segment.labels.as_ref()?;
        if let [(_, only)] = labels.as_slice() {
            return Some(only);
        }
        labels.iter().find(|(range, _)| *range == relative).map(|(_, label)| label.as_str())
    }

    pub(super) fn diagnostic(&self, span: Range<usize>, message: String) -> Diagnostic {
        let message = match self.label(&span) {
            Some(label) => format!("{label}: {message}"),
            None => message,
        };
        Diagnostic { location: self.locate(span), message }
    }
}

/// "unknown workstream `tesing` (did you mean `testing`?)", or the known names when none is close.
pub fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(name, candidate), *candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, candidate)) => format!("unknown {what} `{name}` (did you mean `{candidate}`?)"),
        None if known.is_empty() => format!("unknown {what} `{name}` (none is declared)"),
        None => format!("unknown {what} `{name}` (known: {})", known.join(", ")),
    }
}
