//! Any bytes as archive frames: the `Unpacker` never panics, and what it
//! yields is well formed: only valid, non-reserved relative paths, `Data`
//! pieces (never empty) only inside a file, and exactly `size` bytes of them
//! before its `FileEnd`.
//!
//! Input: one mode byte, then pieces, each a 2-byte little-endian length and
//! that many bytes. Mode bit 0 clear: the pieces are lz4 frames as received.
//! Set: they are tar bytes, each compressed here into its own lz4 frame, so
//! the fuzzer reaches the tar parser without having to forge lz4 checksums.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use lz4_flex::frame::FrameEncoder;
use unionsync::archive::{Event, Unpacker};
use unionsync_core::RelPath;

fn pieces(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (piece, rest) = rest.split_at(len);
        data = rest;
        Some(piece)
    })
}

fn compress(tar: &[u8]) -> Vec<u8> {
    let mut encoder = FrameEncoder::new(Vec::new());
    encoder.write_all(tar).unwrap();
    encoder.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut unpacker = Unpacker::new();
    // The open file: its size and the content bytes seen so far.
    let mut open: Option<(u64, u64)> = None;
    for piece in pieces(data) {
        let frame = if mode & 1 == 0 {
            piece.to_vec()
        } else {
            compress(piece)
        };
        let pushed = unpacker.push_frame(&frame);
        while let Some(event) = unpacker.next_event() {
            match event {
                Event::File { path, size, .. } => {
                    check(&path);
                    assert!(open.is_none(), "a file inside a file");
                    open = Some((size, 0));
                }
                Event::Data(bytes) => {
                    assert!(!bytes.is_empty(), "an empty Data event");
                    let (size, seen) = open.as_mut().expect("Data outside a file");
                    *seen += bytes.len() as u64;
                    assert!(*seen <= *size, "more Data than the file's size");
                }
                Event::FileEnd => {
                    let (size, seen) = open.take().expect("FileEnd outside a file");
                    assert_eq!(seen, size, "FileEnd before the file's size");
                }
                Event::Symlink { path, target, .. } => {
                    check(&path);
                    assert!(open.is_none(), "a symlink inside a file");
                    assert!(!target.is_empty() && !target.contains(&0));
                }
                Event::Dir { path, .. } => {
                    check(&path);
                    assert!(open.is_none(), "a directory inside a file");
                }
            }
        }
        if pushed.is_err() {
            assert!(unpacker.push_frame(&frame).is_err(), "an error is final");
            assert!(unpacker.finish().is_err());
            return;
        }
    }
    if unpacker.finish().is_ok() {
        assert!(open.is_none(), "the archive ended inside a file");
    }
});

fn check(path: &RelPath) {
    assert!(!path.is_reserved(), "a reserved path: {path}");
    assert!(
        RelPath::new(path.as_bytes().to_vec()).is_ok(),
        "an invalid path: {path}"
    );
}
