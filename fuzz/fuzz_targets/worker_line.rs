//! The worker protocol's reading side: bytes a worker writes to its stdout, cut into lines of
//! at most a maximum length, each decoded as JSON-RPC 2.0.
//!
//! Input: one byte for the maximum line length, one for the size of the chunks the bytes
//! arrive in, then the bytes.

#![no_main]

use baton_runtime::process::worker::{self, Frame, Lines};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let [max, chunk, rest @ ..] = data else { return };
    let max = 16 + usize::from(*max) * 64;
    let chunk = 1 + usize::from(*chunk);
    let mut lines = Lines::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(frame) = lines.decode(&mut buf).expect("reading lines does not fail") {
            frames.push(frame);
        }
    }
    while let Some(frame) = lines.decode_eof(&mut buf).expect("reading lines does not fail") {
        frames.push(frame);
    }
    for frame in frames {
        if let Frame::Line(line) = frame {
            assert!(line.len() <= max, "a line of {} bytes passed a maximum of {max}", line.len());
            if !line.trim().is_empty() {
                let incoming = worker::decode("fuzz", &line);
                let _ = incoming.is_sign_of_life();
            }
        }
    }
});
