//! `[logs]`: how big an agent's log file grows before it is rotated, and how many rotated files
//! are kept (`AGENT.log.1` … `AGENT.log.N`, the oldest dropped).

use serde::Deserialize;
use toml::Spanned;

use super::Validator;
use crate::time::SizeStr;

/// Smallest `max_size`: a rotation per line would be no log at all.
const MIN_LOG_SIZE: u64 = 4096;

/// Most rotated files kept.
const MAX_LOG_FILES: u32 = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogs {
    max_size: Option<Spanned<SizeStr>>,
    max_files: Option<Spanned<u32>>,
}

/// When an agent's log is rotated and how many old files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Bytes a log file may hold before it is rotated.
    pub max_size: u64,
    /// Rotated files kept beside the current one.
    pub max_files: u32,
}

impl Default for LogRotation {
    fn default() -> LogRotation {
        LogRotation { max_size: 10 * 1024 * 1024, max_files: 3 }
    }
}

impl Validator<'_> {
    pub(super) fn logs(&mut self, raw: &RawLogs) -> LogRotation {
        let mut rotation = LogRotation::default();
        if let Some(size) = &raw.max_size {
            if size.get_ref().0 < MIN_LOG_SIZE {
                self.error(
                    size.span(),
                    format!("`logs.max_size` must be at least {MIN_LOG_SIZE} bytes (e.g. \"10MiB\")"),
                );
            } else {
                rotation.max_size = size.get_ref().0;
            }
        }
        if let Some(files) = &raw.max_files {
            if !(1..=MAX_LOG_FILES).contains(files.get_ref()) {
                self.error(files.span(), format!("`logs.max_files` must be between 1 and {MAX_LOG_FILES}"));
            } else {
                rotation.max_files = *files.get_ref();
            }
        }
        rotation
    }
}
