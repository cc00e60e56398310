//! Terminal escapes removed from a stream of output, chunk by chunk.

/// Removes terminal escape sequences (colours, cursor movement, titles) and control characters
/// from a stream of output, keeping text, newlines and tabs; `\r\n` becomes `\n`. Works chunk
/// by chunk: a sequence or a UTF-8 character split between chunks is handled.
#[derive(Debug, Default)]
pub struct AnsiStripper {
    state: EscapeState,
    /// The start of a UTF-8 character whose end is in the next chunk.
    pending: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum EscapeState {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// After ESC and an intermediate byte (`ESC ( B`).
    Intermediate,
    /// In a control sequence (`ESC [ … final`).
    Csi,
    /// In a string (`ESC ] …`, also DCS, SOS, PM, APC), ended by BEL or `ESC \`.
    String,
    /// After ESC inside a string.
    StringEscape,
}

impl AnsiStripper {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut text = std::mem::take(&mut self.pending);
        for &byte in bytes {
            self.state = match self.state {
                EscapeState::Text => match byte {
                    0x1b => EscapeState::Escape,
                    b'\n' | b'\t' => {
                        text.push(byte);
                        EscapeState::Text
                    }
                    // Carriage returns, bells, backspaces and the like move the cursor or
                    // make noise: not text.
                    0x00..=0x1f | 0x7f => EscapeState::Text,
                    _ => {
                        text.push(byte);
                        EscapeState::Text
                    }
                },
                EscapeState::Escape => match byte {
                    b'[' => EscapeState::Csi,
                    b']' | b'P' | b'X' | b'^' | b'_' => EscapeState::String,
                    0x20..=0x2f => EscapeState::Intermediate,
                    _ => EscapeState::Text,
                },
                EscapeState::Intermediate => match byte {
                    0x20..=0x2f => EscapeState::Intermediate,
                    _ => EscapeState::Text,
                },
                EscapeState::Csi => match byte {
                    0x40..=0x7e => EscapeState::Text,
                    _ => EscapeState::Csi,
                },
                EscapeState::String => match byte {
                    0x07 => EscapeState::Text,
                    0x1b => EscapeState::StringEscape,
                    _ => EscapeState::String,
                },
                EscapeState::StringEscape => match byte {
                    b'\\' => EscapeState::Text,
                    _ => EscapeState::String,
                },
            };
        }
        let complete = match std::str::from_utf8(&text) {
            Ok(_) => text.len(),
            // Cut short at the end: the rest of the character is in the next chunk.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => text.len(),
        };
        self.pending = text.split_off(complete);
        String::from_utf8_lossy(&text).into_owned()
    }
}
