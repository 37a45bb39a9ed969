//! The archive codec for file transfer: one tar stream, cut into lz4 frames.
//!
//! Sans-IO and push-based: the caller moves bytes between disk, these types
//! and the websocket.
//!
//! The stream a [`Packer`] writes is a plain GNU tar archive (regular files,
//! directories, symlinks; `././@LongLink` entries for names and link targets
//! over 100 bytes; two zero blocks at the end) cut into pieces of at most
//! [`CHUNK_LEN`] tar bytes, each compressed as an **independent** lz4 frame:
//!
//! ```text
//!   tar:     [hdr][data......][pad][hdr][L hdr][long name][hdr][data..][0][0]
//!   frames:  |<-- CHUNK_LEN -->|<-- CHUNK_LEN -->|<-- CHUNK_LEN -->|<- rest ->|
//!             lz4 frame 1       lz4 frame 2       lz4 frame 3       frame 4
//! ```
//!
//! Why independent frames: each one is a websocket message the receiver can
//! inflate as soon as it arrives, with memory bounded by one frame, and no
//! frame needs another's window. Concatenated they are still a valid
//! `.tar.lz4` (the lz4 CLI decodes concatenated frames), so
//! `lz4 -dc all.lz4 | tar -x` unpacks them.
//!
//! The [`Unpacker`] takes such frames (or any lz4 frames of any split of a
//! tar stream), refuses what inflates past [`MAX_FRAME_OUTPUT`], parses the
//! tar blocks incrementally (a header may straddle frames) and yields
//! [`Event`]s; file content comes out in pieces as it arrives, never
//! buffered whole. Anything it cannot represent safely is an error: paths
//! that escape the root or name `.unionsync/…`, hard links, devices, fifos,
//! sparse and unknown entries.
//!
//! Times are whole seconds (the tar header's `mtime`); modes keep only the
//! permission bits, never set-id bits (both ways); owners are not carried.

use std::collections::VecDeque;
use std::io::{Read, Write};

use lz4_flex::frame::{BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use tar::{EntryType, Header};
use unionsync_core::path::MAX_PATH_LEN;
use unionsync_core::wire::CHUNK_LEN;
use unionsync_core::{carried_perm, PathError, RelPath};

/// Most tar bytes one pushed frame may inflate to. A [`Packer`] puts
/// [`CHUNK_LEN`] in each; the slack admits other encoders' splits, the bound
/// keeps a small hostile frame from inflating into gigabytes.
pub const MAX_FRAME_OUTPUT: usize = 4 * CHUNK_LEN;

/// Longest GNU long-name / long-link or PAX extended header body accepted
/// (paths are at most 4 KiB anyway).
pub const MAX_EXTENSION_LEN: u64 = 64 << 10;

const BLOCK: usize = 512;
const NS_PER_SEC: i64 = 1_000_000_000;
const LZ4_MAGIC: [u8; 4] = 0x184D_2204u32.to_le_bytes();

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("bad lz4 frame: {0}")]
    BadLz4(String),
    #[error("an lz4 frame inflates past {MAX_FRAME_OUTPUT} bytes")]
    FrameTooLarge,
    #[error("bad tar header checksum at byte {offset}")]
    BadChecksum { offset: u64 },
    #[error("bad tar header at byte {offset}: {why}")]
    BadHeader { offset: u64, why: String },
    #[error("unsupported tar entry `{path}`: {kind}")]
    Unsupported { path: String, kind: String },
    #[error("invalid path `{path}`: {source}")]
    InvalidPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("path `{0}` is inside the reserved `.unionsync` directory")]
    Reserved(String),
    #[error("bad symlink target for `{path}`: {why}")]
    BadSymlinkTarget { path: String, why: &'static str },
    #[error("extension header at byte {offset} claims {size} bytes (at most {MAX_EXTENSION_LEN})")]
    ExtensionTooLong { offset: u64, size: u64 },
    #[error("archive is truncated: it ends before its end-of-archive blocks")]
    Truncated,
    #[error("data after the end of the archive")]
    TrailingData,
    #[error("file data does not match its declared size: declared {declared}, given {given}")]
    SizeMismatch { declared: u64, given: u64 },
    #[error("packer used out of order: {0}")]
    Misuse(&'static str),
    #[error("the unpacker failed earlier; the archive cannot be resumed")]
    Failed,
}

fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Builds one tar stream (GNU format, readable by GNU tar) and cuts it into
/// independent lz4 frames, each holding at most [`CHUNK_LEN`] tar bytes.
///
/// Call [`Packer::next_frame`] until it returns `None` after each call that
/// adds bytes: pending tar bytes are buffered until then.
pub struct Packer {
    /// Tar bytes not yet compressed: `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    /// Tar bytes written so far, to pad entries to whole blocks.
    len: u64,
    /// The file whose content is being added.
    open: Option<OpenFile>,
}

struct OpenFile {
    size: u64,
    given: u64,
}

impl Default for Packer {
    fn default() -> Self {
        Packer::new()
    }
}

impl Packer {
    pub fn new() -> Packer {
        Packer {
            buf: Vec::with_capacity(2 * CHUNK_LEN),
            start: 0,
            len: 0,
            open: None,
        }
    }

    /// Starts a regular file of `size` bytes; its content follows through
    /// [`Packer::file_data`], then [`Packer::end_file`]. `mode` keeps the
    /// permission bits, `mtime_ns` its whole seconds (rounded down).
    pub fn begin_file(
        &mut self,
        path: &RelPath,
        mode: u32,
        mtime_ns: i64,
        size: u64,
    ) -> Result<(), ArchiveError> {
        self.check_between_entries(path)?;
        self.entry(
            path.as_bytes(),
            EntryType::Regular,
            mode,
            mtime_ns,
            size,
            None,
        );
        self.open = Some(OpenFile { size, given: 0 });
        Ok(())
    }

    /// Appends content to the open file; more than its declared size is an
    /// error (and nothing is written).
    pub fn file_data(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        let Some(open) = &mut self.open else {
            return Err(ArchiveError::Misuse("file data without begin_file"));
        };
        let given = open.given.saturating_add(data.len() as u64);
        if given > open.size {
            return Err(ArchiveError::SizeMismatch {
                declared: open.size,
                given,
            });
        }
        open.given = given;
        self.push(data);
        Ok(())
    }

    /// Closes the open file; an error unless exactly its size was given.
    pub fn end_file(&mut self) -> Result<(), ArchiveError> {
        match &self.open {
            None => Err(ArchiveError::Misuse("end_file without begin_file")),
            Some(open) if open.given != open.size => Err(ArchiveError::SizeMismatch {
                declared: open.size,
                given: open.given,
            }),
            Some(_) => {
                self.open = None;
                self.pad();
                Ok(())
            }
        }
    }

    /// A whole regular file: [`Packer::begin_file`], [`Packer::file_data`],
    /// [`Packer::end_file`].
    pub fn file(
        &mut self,
        path: &RelPath,
        mode: u32,
        mtime_ns: i64,
        data: &[u8],
    ) -> Result<(), ArchiveError> {
        self.begin_file(path, mode, mtime_ns, data.len() as u64)?;
        self.file_data(data)?;
        self.end_file()
    }

    /// A symbolic link to `target` (bytes, not followed; 1 to 4096 bytes,
    /// no NUL, as Linux allows).
    pub fn symlink(
        &mut self,
        path: &RelPath,
        target: &[u8],
        mtime_ns: i64,
    ) -> Result<(), ArchiveError> {
        self.check_between_entries(path)?;
        check_target(path.as_bytes(), target)?;
        self.entry(
            path.as_bytes(),
            EntryType::Symlink,
            0o777,
            mtime_ns,
            0,
            Some(target),
        );
        Ok(())
    }

    /// A directory (named with a trailing `/`, as GNU tar does).
    pub fn dir(&mut self, path: &RelPath, mode: u32, mtime_ns: i64) -> Result<(), ArchiveError> {
        self.check_between_entries(path)?;
        let mut name = path.as_bytes().to_vec();
        name.push(b'/');
        self.entry(&name, EntryType::Directory, mode, mtime_ns, 0, None);
        Ok(())
    }

    /// A compressed frame to send, once at least [`CHUNK_LEN`] tar bytes
    /// are pending.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.buf.len() - self.start < CHUNK_LEN {
            return None;
        }
        let frame = compress(&self.buf[self.start..self.start + CHUNK_LEN]);
        self.start += CHUNK_LEN;
        // Compact once the consumed part dominates: amortised O(1) per byte
        // even when a caller adds a large piece at once.
        if self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Some(frame)
    }

    /// Ends the archive (two zero blocks) and returns the remaining frames,
    /// at least one. An error while a file is still open.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>, ArchiveError> {
        if self.open.is_some() {
            return Err(ArchiveError::Misuse("finish with a file still open"));
        }
        self.push(&[0; 2 * BLOCK]);
        let mut frames: Vec<_> = std::iter::from_fn(|| self.next_frame()).collect();
        if self.start < self.buf.len() {
            frames.push(compress(&self.buf[self.start..]));
        }
        Ok(frames)
    }

    fn check_between_entries(&self, path: &RelPath) -> Result<(), ArchiveError> {
        if self.open.is_some() {
            return Err(ArchiveError::Misuse("a new entry while a file is open"));
        }
        if path.is_reserved() {
            return Err(ArchiveError::Reserved(path.to_string()));
        }
        Ok(())
    }

    /// Writes one entry's header, preceded by GNU long-name / long-link
    /// entries for a name or link target that does not fit its field.
    fn entry(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        mtime_ns: i64,
        size: u64,
        link: Option<&[u8]>,
    ) {
        let mut header = Header::new_gnu();
        if name.len() > header.as_old().name.len() {
            self.long_entry(EntryType::GNULongName, name);
        }
        copy_truncated(&mut header.as_old_mut().name, name);
        if let Some(link) = link {
            if link.len() > header.as_old().linkname.len() {
                self.long_entry(EntryType::GNULongLink, link);
            }
            copy_truncated(&mut header.as_old_mut().linkname, link);
        }
        header.set_mode(carried_perm(mode));
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(size);
        set_mtime(&mut header, mtime_ns);
        header.set_entry_type(kind);
        header.set_cksum();
        self.push(header.as_bytes());
    }

    /// A `././@LongLink` entry whose content (NUL-terminated, as GNU tar
    /// writes it) is the next entry's name or link target.
    fn long_entry(&mut self, kind: EntryType, bytes: &[u8]) {
        let mut header = Header::new_gnu();
        copy_truncated(&mut header.as_old_mut().name, b"././@LongLink");
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(bytes.len() as u64 + 1);
        header.set_entry_type(kind);
        header.set_cksum();
        self.push(header.as_bytes());
        self.push(bytes);
        self.push(&[0]);
        self.pad();
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
    }

    fn pad(&mut self) {
        let pad = padding(self.len) as usize;
        self.push(&[0; BLOCK][..pad]);
    }
}

/// One independent lz4 frame of `tar` bytes: a single block (256 KiB
/// blocks), with the content size and checksum the lz4 CLI checks too.
fn compress(tar: &[u8]) -> Vec<u8> {
    let info = FrameInfo::new()
        .block_size(BlockSize::Max256KB)
        .content_size(Some(tar.len() as u64))
        .content_checksum(true);
    let mut encoder = FrameEncoder::with_frame_info(info, Vec::with_capacity(tar.len() / 2 + 64));
    encoder.write_all(tar).expect("lz4 into a Vec cannot fail");
    encoder.finish().expect("lz4 into a Vec cannot fail")
}

fn copy_truncated(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// Zero bytes that bring `len` to a whole number of blocks.
fn padding(len: u64) -> u64 {
    (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64
}

/// Seconds into the header; before 1970 as GNU base-256 (lead byte 0xff,
/// two's complement), which GNU tar reads back as negative.
fn set_mtime(header: &mut Header, mtime_ns: i64) {
    let secs = mtime_ns.div_euclid(NS_PER_SEC);
    if secs >= 0 {
        header.set_mtime(secs as u64);
    } else {
        let field = &mut header.as_old_mut().mtime;
        field[..4].fill(0xff);
        field[4..].copy_from_slice(&secs.to_be_bytes());
    }
}

fn mtime_ns(header: &Header) -> Option<i64> {
    let field = &header.as_old().mtime;
    let secs = if field[0] == 0xff {
        let secs = i64::from_be_bytes(field[4..].try_into().ok()?);
        (field[1..4] == [0xff; 3] && secs < 0).then_some(secs)?
    } else {
        i64::try_from(header.mtime().ok()?).ok()?
    };
    secs.checked_mul(NS_PER_SEC)
}

fn check_target(path: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
    let why = if target.is_empty() {
        "empty"
    } else if target.contains(&0) {
        "contains a NUL byte"
    } else if target.len() > MAX_PATH_LEN {
        "longer than 4096 bytes"
    } else {
        return Ok(());
    };
    Err(ArchiveError::BadSymlinkTarget {
        path: escaped(path),
        why,
    })
}

/// What the receiver gets out of the frames, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    File {
        path: RelPath,
        mode: u32,
        mtime_ns: i64,
        size: u64,
    },
    /// A piece of the current file's content (never empty).
    Data(Vec<u8>),
    /// The current file is complete (exactly `size` bytes were given).
    FileEnd,
    Symlink {
        path: RelPath,
        target: Vec<u8>,
        mtime_ns: i64,
    },
    Dir {
        path: RelPath,
        mode: u32,
        mtime_ns: i64,
    },
}

/// Decodes frames as they arrive into [`Event`]s.
///
/// Each frame is inflated on its own (at most [`MAX_FRAME_OUTPUT`] bytes)
/// and its tar bytes parsed at once; drain [`Unpacker::next_event`] after
/// each push to keep memory bounded by one frame. After an error the
/// unpacker refuses everything: the archive cannot be resumed.
pub struct Unpacker {
    /// Inflated tar bytes not yet parsed; between pushes at most a partial
    /// header.
    buf: Vec<u8>,
    /// Tar stream offset of `buf[0]`, for error messages.
    offset: u64,
    state: State,
    /// Long name / link / PAX values for the next entry.
    ext: Extensions,
    events: VecDeque<Event>,
    failed: bool,
}

enum State {
    /// Expecting a header block.
    Header,
    /// One zero block seen: the next must be the second.
    LoneZero,
    /// Collecting the body (`len` bytes, bounded) of an extension entry.
    Extension {
        kind: EntryType,
        len: usize,
        body: Vec<u8>,
    },
    /// Streaming the current file's content.
    Data { left: u64, size: u64 },
    /// Skipping padding or an ignored body.
    Skip { left: u64 },
    /// After the end-of-archive blocks: only zero padding may follow.
    End,
}

#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Extensions {
    fn is_empty(&self) -> bool {
        self.path.is_none() && self.link.is_none() && self.size.is_none()
    }
}

impl Default for Unpacker {
    fn default() -> Self {
        Unpacker::new()
    }
}

impl Unpacker {
    pub fn new() -> Unpacker {
        Unpacker {
            buf: Vec::new(),
            offset: 0,
            state: State::Header,
            ext: Extensions::default(),
            events: VecDeque::new(),
            failed: false,
        }
    }

    /// Inflates one received frame (one lz4 frame, or several concatenated)
    /// and parses the tar bytes it holds.
    pub fn push_frame(&mut self, frame: &[u8]) -> Result<(), ArchiveError> {
        if self.failed {
            return Err(ArchiveError::Failed);
        }
        let result = self.inflate(frame).and_then(|()| self.parse());
        self.failed = result.is_err();
        result
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Ok once the end-of-archive blocks were seen (and nothing failed).
    pub fn finish(&self) -> Result<(), ArchiveError> {
        match self.state {
            _ if self.failed => Err(ArchiveError::Failed),
            State::End => Ok(()),
            _ => Err(ArchiveError::Truncated),
        }
    }

    fn inflate(&mut self, mut frames: &[u8]) -> Result<(), ArchiveError> {
        if frames.is_empty() {
            return Err(ArchiveError::BadLz4("empty frame".into()));
        }
        let before = self.buf.len();
        while !frames.is_empty() {
            let len = lz4_frame_len(frames)?;
            let budget = MAX_FRAME_OUTPUT - (self.buf.len() - before);
            FrameDecoder::new(&frames[..len])
                .take(budget as u64 + 1)
                .read_to_end(&mut self.buf)
                .map_err(|e| ArchiveError::BadLz4(e.to_string()))?;
            if self.buf.len() - before > MAX_FRAME_OUTPUT {
                return Err(ArchiveError::FrameTooLarge);
            }
            frames = &frames[len..];
        }
        Ok(())
    }

    fn parse(&mut self) -> Result<(), ArchiveError> {
        let buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        let result = self.parse_from(&buf, &mut pos);
        self.offset += pos as u64;
        self.buf = buf;
        self.buf.drain(..pos);
        result
    }

    fn parse_from(&mut self, buf: &[u8], pos: &mut usize) -> Result<(), ArchiveError> {
        loop {
            let avail = &buf[*pos..];
            match &mut self.state {
                State::Header | State::LoneZero => {
                    let Some(block) = avail.first_chunk::<BLOCK>() else {
                        return Ok(());
                    };
                    self.header(block, self.offset + *pos as u64)?;
                    *pos += BLOCK;
                }
                State::Extension { kind, len, body } => {
                    let n = avail.len().min(*len - body.len());
                    body.extend_from_slice(&avail[..n]);
                    *pos += n;
                    if body.len() < *len {
                        return Ok(());
                    }
                    let (kind, len, body) = (*kind, *len, std::mem::take(body));
                    self.extension(kind, body)?;
                    self.skip(padding(len as u64));
                }
                State::Data { left, size } => {
                    let n = (avail.len() as u64).min(*left) as usize;
                    if n == 0 {
                        return Ok(());
                    }
                    *left -= n as u64;
                    let (left, size) = (*left, *size);
                    self.events.push_back(Event::Data(avail[..n].to_vec()));
                    *pos += n;
                    if left == 0 {
                        self.events.push_back(Event::FileEnd);
                        self.skip(padding(size));
                    }
                }
                State::Skip { left } => {
                    let n = (avail.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    *pos += n;
                    if *left > 0 {
                        return Ok(());
                    }
                    self.state = State::Header;
                }
                State::End => {
                    if avail.iter().any(|&b| b != 0) {
                        return Err(ArchiveError::TrailingData);
                    }
                    *pos = buf.len();
                    return Ok(());
                }
            }
        }
    }

    fn skip(&mut self, left: u64) {
        self.state = if left == 0 {
            State::Header
        } else {
            State::Skip { left }
        };
    }

    fn header(&mut self, block: &[u8; BLOCK], offset: u64) -> Result<(), ArchiveError> {
        let bad = |why: &str| ArchiveError::BadHeader {
            offset,
            why: why.to_string(),
        };
        if block.iter().all(|&b| b == 0) {
            if !self.ext.is_empty() {
                return Err(bad("the archive ends right after an extension header"));
            }
            self.state = match self.state {
                State::LoneZero => State::End,
                _ => State::LoneZero,
            };
            return Ok(());
        }
        if matches!(self.state, State::LoneZero) {
            return Err(bad("a lone zero block inside the archive"));
        }
        if !checksum_ok(block) {
            return Err(ArchiveError::BadChecksum { offset });
        }
        let header = Header::from_byte_slice(block);
        let kind = header.entry_type();
        let entry_size = header
            .entry_size()
            .map_err(|_| bad("the size field is not a number"))?;

        match kind {
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
                if entry_size > MAX_EXTENSION_LEN {
                    return Err(ArchiveError::ExtensionTooLong {
                        offset,
                        size: entry_size,
                    });
                }
                let len = entry_size as usize;
                self.state = State::Extension {
                    kind,
                    len,
                    body: Vec::with_capacity(len),
                };
                return Ok(());
            }
            EntryType::XGlobalHeader => {
                let left = entry_size
                    .checked_add(padding(entry_size))
                    .ok_or_else(|| bad("the size field overflows"))?;
                self.skip(left);
                return Ok(());
            }
            _ => {}
        }

        let ext = std::mem::take(&mut self.ext);
        let size = ext.size.unwrap_or(entry_size);
        let mut name = ext.path.unwrap_or_else(|| header.path_bytes().into_owned());
        // Never a set-id bit, whatever the sender wrote.
        let mode = carried_perm(
            header
                .mode()
                .map_err(|_| bad("the mode field is not a number"))?,
        );
        let mtime_ns = mtime_ns(header).ok_or_else(|| bad("the mtime field is out of range"))?;
        let unsupported = |what: &str| ArchiveError::Unsupported {
            path: escaped(&name),
            kind: what.to_string(),
        };
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let path = entry_path(name)?;
                self.events.push_back(Event::File {
                    path,
                    mode,
                    mtime_ns,
                    size,
                });
                if size == 0 {
                    self.events.push_back(Event::FileEnd);
                    self.state = State::Header;
                } else {
                    self.state = State::Data { left: size, size };
                }
            }
            EntryType::Directory => {
                if size != 0 {
                    return Err(bad("a directory entry with content"));
                }
                if name.last() == Some(&b'/') {
                    name.pop();
                }
                let path = entry_path(name)?;
                self.events.push_back(Event::Dir {
                    path,
                    mode,
                    mtime_ns,
                });
            }
            EntryType::Symlink => {
                if size != 0 {
                    return Err(bad("a symlink entry with content"));
                }
                let target = match ext.link {
                    Some(link) => link,
                    None => header.link_name_bytes().unwrap_or_default().into_owned(),
                };
                check_target(&name, &target)?;
                let path = entry_path(name)?;
                self.events.push_back(Event::Symlink {
                    path,
                    target,
                    mtime_ns,
                });
            }
            EntryType::Link => return Err(unsupported("hard link")),
            EntryType::Char => return Err(unsupported("character device")),
            EntryType::Block => return Err(unsupported("block device")),
            EntryType::Fifo => return Err(unsupported("fifo")),
            EntryType::GNUSparse => return Err(unsupported("GNU sparse file")),
            other => {
                let byte = other.as_byte();
                return Err(unsupported(&format!("entry type {:?}", byte as char)));
            }
        }
        Ok(())
    }

    fn extension(&mut self, kind: EntryType, body: Vec<u8>) -> Result<(), ArchiveError> {
        let until_nul = |mut bytes: Vec<u8>| {
            if let Some(nul) = bytes.iter().position(|&b| b == 0) {
                bytes.truncate(nul);
            }
            bytes
        };
        match kind {
            EntryType::GNULongName => self.ext.path = Some(until_nul(body)),
            EntryType::GNULongLink => self.ext.link = Some(until_nul(body)),
            _ => parse_pax(&body, &mut self.ext).map_err(|why| ArchiveError::BadHeader {
                offset: self.offset,
                why: format!("PAX header: {why}"),
            })?,
        }
        Ok(())
    }
}

/// A received entry's name as a path the receiver may create.
fn entry_path(name: Vec<u8>) -> Result<RelPath, ArchiveError> {
    let shown = escaped(&name);
    let path = RelPath::new(name).map_err(|source| ArchiveError::InvalidPath {
        path: shown,
        source,
    })?;
    if path.is_reserved() {
        return Err(ArchiveError::Reserved(path.to_string()));
    }
    Ok(path)
}

/// The header checksum: the byte sum with the checksum field taken as
/// spaces; unsigned as POSIX says, or signed as some old tars wrote it.
fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Ok(stored) = Header::from_byte_slice(block).cksum() else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    i64::from(stored) == i64::from(unsigned) || i64::from(stored) == i64::from(signed)
}

/// PAX records, `"<len> <key>=<value>\n"` with `<len>` counting the whole
/// record. Honours `path`, `linkpath` and `size`; other keys are ignored.
fn parse_pax(mut body: &[u8], ext: &mut Extensions) -> Result<(), &'static str> {
    while !body.is_empty() {
        let space = body
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a record without a length")?;
        let len: usize = std::str::from_utf8(&body[..space])
            .ok()
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .ok_or("a record length is not a number")?;
        if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err("a record length does not match its record");
        }
        let record = &body[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a record without `=`")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => ext.path = Some(value.to_vec()),
            b"linkpath" => ext.link = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|digits| digits.parse().ok())
                    .ok_or("the size is not a number")?;
                ext.size = Some(size);
            }
            _ => {}
        }
        body = &body[len..];
    }
    Ok(())
}

/// The length of the lz4 frame at the start of `bytes`, found by walking
/// its block headers without inflating. lz4_flex's reader takes a missing
/// end mark for the end of the input, so a frame cut short at a block
/// boundary would otherwise pass unnoticed (and unchecksummed).
fn lz4_frame_len(bytes: &[u8]) -> Result<usize, ArchiveError> {
    let short = || ArchiveError::BadLz4("frame cut short".into());
    let get = |at: usize, n: usize| {
        at.checked_add(n)
            .and_then(|end| bytes.get(at..end))
            .ok_or_else(short)
    };
    if get(0, 4)? != LZ4_MAGIC {
        return Err(ArchiveError::BadLz4("not an lz4 frame".into()));
    }
    let flags = get(4, 1)?[0];
    let block_checksums = flags & 0x10 != 0;
    let content_size = flags & 0x08 != 0;
    let content_checksum = flags & 0x04 != 0;
    let dict_id = flags & 0x01 != 0;
    // magic, FLG, BD, [content size], [dictionary id], header checksum
    let mut at = 6 + 8 * usize::from(content_size) + 4 * usize::from(dict_id) + 1;
    loop {
        let word = u32::from_le_bytes(get(at, 4)?.try_into().map_err(|_| short())?);
        at += 4;
        if word == 0 {
            break;
        }
        // High bit: stored uncompressed. lz4_flex checks the size bound.
        at += (word & 0x7fff_ffff) as usize + 4 * usize::from(block_checksums);
    }
    at += 4 * usize::from(content_checksum);
    get(0, at)?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::{Command, Stdio};

    fn p(bytes: &[u8]) -> RelPath {
        RelPath::new(bytes).unwrap()
    }

    /// Everything an unpacker yields for `frames`, with `Data` pieces merged
    /// per file.
    fn unpack(frames: &[Vec<u8>]) -> Result<Vec<Event>, ArchiveError> {
        let mut unpacker = Unpacker::new();
        let mut events = Vec::new();
        for frame in frames {
            unpacker.push_frame(frame)?;
            while let Some(event) = unpacker.next_event() {
                match (events.last_mut(), event) {
                    (Some(Event::Data(all)), Event::Data(piece)) => all.extend(piece),
                    (_, event) => events.push(event),
                }
            }
        }
        unpacker.finish()?;
        Ok(events)
    }

    /// A test entry, with what the unpacker should yield for it.
    #[derive(Clone, Debug)]
    enum Entry {
        File(RelPath, u32, i64, Vec<u8>),
        Symlink(RelPath, Vec<u8>, i64),
        Dir(RelPath, u32, i64),
    }

    fn secs(mtime_ns: i64) -> i64 {
        mtime_ns.div_euclid(NS_PER_SEC) * NS_PER_SEC
    }

    fn expected(entries: &[Entry]) -> Vec<Event> {
        let mut events = Vec::new();
        for entry in entries {
            match entry.clone() {
                Entry::File(path, mode, mtime_ns, data) => {
                    events.push(Event::File {
                        path,
                        mode: carried_perm(mode),
                        mtime_ns: secs(mtime_ns),
                        size: data.len() as u64,
                    });
                    if !data.is_empty() {
                        events.push(Event::Data(data));
                    }
                    events.push(Event::FileEnd);
                }
                Entry::Symlink(path, target, mtime_ns) => events.push(Event::Symlink {
                    path,
                    target,
                    mtime_ns: secs(mtime_ns),
                }),
                Entry::Dir(path, mode, mtime_ns) => events.push(Event::Dir {
                    path,
                    mode: carried_perm(mode),
                    mtime_ns: secs(mtime_ns),
                }),
            }
        }
        events
    }

    /// Packs `entries`, draining frames as a sender would.
    fn pack(entries: &[Entry]) -> Vec<Vec<u8>> {
        let mut packer = Packer::new();
        let mut frames = Vec::new();
        for entry in entries {
            match entry {
                Entry::File(path, mode, mtime_ns, data) => {
                    packer.file(path, *mode, *mtime_ns, data).unwrap()
                }
                Entry::Symlink(path, target, mtime_ns) => {
                    packer.symlink(path, target, *mtime_ns).unwrap()
                }
                Entry::Dir(path, mode, mtime_ns) => packer.dir(path, *mode, *mtime_ns).unwrap(),
            }
            frames.extend(std::iter::from_fn(|| packer.next_frame()));
        }
        frames.extend(packer.finish().unwrap());
        frames
    }

    fn assert_round_trips(entries: &[Entry]) {
        assert_eq!(unpack(&pack(entries)).unwrap(), expected(entries));
    }

    /// The tar bytes inside `frames`.
    fn inflate_all(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut tar = Vec::new();
        for frame in frames {
            FrameDecoder::new(&frame[..]).read_to_end(&mut tar).unwrap();
        }
        tar
    }

    /// Raw tar bytes cut at `cuts` (sorted stream offsets) and at least
    /// every CHUNK_LEN bytes, and compressed.
    fn frames_cut_at(tar: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([tar.len()].iter()) {
            if cut > from {
                frames.extend(tar[from..cut].chunks(CHUNK_LEN).map(compress));
                from = cut;
            }
        }
        frames
    }

    fn frames_of(tar: &[u8]) -> Vec<Vec<u8>> {
        tar.chunks(CHUNK_LEN).map(compress).collect()
    }

    /// A GNU header block with a valid checksum.
    fn raw_header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> Vec<u8> {
        raw_header_with_mode(name, kind, size, link, 0o644)
    }

    fn raw_header_with_mode(name: &[u8], kind: u8, size: u64, link: &[u8], mode: u32) -> Vec<u8> {
        let mut header = Header::new_gnu();
        copy_truncated(&mut header.as_old_mut().name, name);
        copy_truncated(&mut header.as_old_mut().linkname, link);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(size);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(EntryType::new(kind));
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    /// One raw entry (header, content, padding) followed by the end blocks.
    fn raw_archive(name: &[u8], kind: u8, data: &[u8]) -> Vec<u8> {
        let mut tar = raw_header(name, kind, data.len() as u64, b"");
        tar.extend_from_slice(data);
        tar.resize(tar.len() + padding(data.len() as u64) as usize, 0);
        tar.extend_from_slice(&[0; 2 * BLOCK]);
        tar
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    // ---- round trips ----

    #[test]
    fn files_of_edge_sizes_round_trip() {
        let t = 1_700_000_000 * NS_PER_SEC;
        assert_round_trips(&[
            Entry::File(p(b"empty"), 0o644, t, vec![]),
            Entry::File(p(b"one"), 0o600, t, vec![7]),
            Entry::File(p(b"block"), 0o755, t, pseudo_random(512, 1)),
            Entry::File(p(b"big"), 0o640, t, pseudo_random(3 * CHUNK_LEN + 1, 2)),
            Entry::File(p(b"after"), 0o644, t, b"tail".to_vec()),
        ]);
    }

    #[test]
    fn symlinks_and_directories_round_trip() {
        assert_round_trips(&[
            Entry::Dir(p(b"d"), 0o750, 5 * NS_PER_SEC),
            Entry::Symlink(p(b"d/l"), b"../target with spaces".to_vec(), 7 * NS_PER_SEC),
            Entry::Symlink(p(b"long"), vec![b'x'; 300], 7 * NS_PER_SEC),
            Entry::Dir(p(b"d/sticky"), 0o1777, 0),
        ]);
    }

    #[test]
    fn a_300_byte_path_round_trips_through_a_gnu_long_name() {
        let long = [vec![b'a'; 150], b"/".to_vec(), vec![b'b'; 149]].concat();
        assert_eq!(long.len(), 300);
        let frames = pack(&[Entry::File(p(&long), 0o644, 0, b"x".to_vec())]);
        assert!(inflate_all(&frames)
            .windows(13)
            .any(|w| w == b"././@LongLink"));
        assert_round_trips(&[
            Entry::Dir(p(&long), 0o755, 0),
            Entry::File(p(&long), 0o644, 0, b"x".to_vec()),
            Entry::Symlink(p(&long), long.clone(), 0),
        ]);
    }

    #[test]
    fn names_shells_trip_over_round_trip() {
        assert_round_trips(&[
            Entry::File(p(b"\xff\xfe latin1 \xe9"), 0o644, 0, b"a".to_vec()),
            Entry::File(p(b"line\nbreak"), 0o644, 0, b"b".to_vec()),
            Entry::File(p(b"--rm -rf"), 0o644, 0, b"c".to_vec()),
            Entry::File(p(b"back\\slash"), 0o644, 0, b"d".to_vec()),
        ]);
    }

    #[test]
    fn mtimes_keep_whole_seconds_including_before_1970() {
        assert_round_trips(&[
            Entry::File(p(b"sub"), 0o644, 1_700_000_000_999_999_999, vec![]),
            Entry::File(p(b"neg"), 0o644, -86_400 * NS_PER_SEC - 1, vec![]),
            Entry::Dir(p(b"zero"), 0o755, 0),
        ]);
    }

    #[test]
    fn file_content_may_be_given_in_pieces() {
        let data = pseudo_random(CHUNK_LEN + 1000, 3);
        let mut packer = Packer::new();
        let mut frames = Vec::new();
        packer
            .begin_file(&p(b"f"), 0o644, 0, data.len() as u64)
            .unwrap();
        for piece in data.chunks(777) {
            packer.file_data(piece).unwrap();
            frames.extend(std::iter::from_fn(|| packer.next_frame()));
        }
        packer.end_file().unwrap();
        frames.extend(packer.finish().unwrap());
        assert_eq!(
            unpack(&frames).unwrap(),
            expected(&[Entry::File(p(b"f"), 0o644, 0, data)])
        );
    }

    #[test]
    fn packer_emits_full_frames_while_packing_and_each_inflates_to_at_most_a_chunk() {
        let mut packer = Packer::new();
        packer
            .begin_file(&p(b"f"), 0o644, 0, 3 * CHUNK_LEN as u64)
            .unwrap();
        assert!(packer.next_frame().is_none());
        packer.file_data(&vec![1; CHUNK_LEN]).unwrap();
        let first = packer.next_frame().expect("a chunk is pending");
        assert!(packer.next_frame().is_none());
        packer.file_data(&vec![2; 2 * CHUNK_LEN]).unwrap();
        packer.end_file().unwrap();
        let mut frames = vec![first];
        frames.extend(std::iter::from_fn(|| packer.next_frame()));
        frames.extend(packer.finish().unwrap());
        for frame in &frames {
            assert!(inflate_all(std::slice::from_ref(frame)).len() <= CHUNK_LEN);
        }
        assert_eq!(inflate_all(&frames).len(), 3 * CHUNK_LEN + 3 * BLOCK);
    }

    #[test]
    fn an_empty_archive_is_one_frame_of_end_blocks() {
        let frames = Packer::new().finish().unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(unpack(&frames).unwrap(), vec![]);
    }

    #[test]
    fn data_comes_out_as_each_frame_arrives() {
        let data = pseudo_random(3 * CHUNK_LEN, 4);
        let frames = pack(&[Entry::File(p(b"f"), 0o644, 0, data.clone())]);
        let mut unpacker = Unpacker::new();
        unpacker.push_frame(&frames[0]).unwrap();
        let mut events = std::iter::from_fn(|| unpacker.next_event());
        assert!(
            matches!(events.next(), Some(Event::File { size, .. }) if size == data.len() as u64)
        );
        assert_eq!(
            events.next(),
            Some(Event::Data(data[..CHUNK_LEN - BLOCK].to_vec()))
        );
        assert_eq!(events.next(), None);
    }

    #[test]
    fn headers_straddling_frame_boundaries_are_parsed() {
        let long = [vec![b'n'; 200], b"/".to_vec(), vec![b'm'; 200]].concat();
        let entries = [
            Entry::File(p(b"a"), 0o644, 0, pseudo_random(CHUNK_LEN - 2 * BLOCK, 5)),
            Entry::File(p(&long), 0o600, 0, b"x".to_vec()),
            Entry::Symlink(p(b"l"), vec![b't'; 200], 0),
            Entry::Dir(p(b"d"), 0o700, 0),
        ];
        let tar = inflate_all(&pack(&entries));
        // The second header starts at CHUNK_LEN - BLOCK: cut through it, its
        // long name and every later header, and one byte at a time at the end.
        for cuts in [
            vec![CHUNK_LEN - BLOCK + 100],
            vec![CHUNK_LEN - 1, CHUNK_LEN + 300],
            vec![1, 511, 513, CHUNK_LEN - 256],
            (CHUNK_LEN - BLOCK..tar.len()).step_by(97).collect(),
            (CHUNK_LEN..tar.len()).collect(),
        ] {
            assert_eq!(
                unpack(&frames_cut_at(&tar, &cuts)).unwrap(),
                expected(&entries)
            );
        }
    }

    #[test]
    fn several_concatenated_frames_in_one_push_are_fine() {
        let entries = [Entry::File(p(b"f"), 0o644, 0, b"abc".to_vec())];
        let frames = frames_cut_at(&inflate_all(&pack(&entries)), &[100, 700]);
        assert_eq!(unpack(&[frames.concat()]).unwrap(), expected(&entries));
    }

    #[test]
    fn zero_padding_after_the_end_blocks_is_accepted() {
        // GNU tar pads archives to 10 KiB records.
        let mut tar = raw_archive(b"f", b'0', b"hi");
        tar.resize(10240, 0);
        assert_eq!(unpack(&frames_of(&tar)).unwrap().len(), 3);
    }

    #[test]
    fn pax_headers_set_path_linkpath_and_size_and_global_ones_are_skipped() {
        // The length counts its own digits.
        let record = |key: &str, value: &str| {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            format!("{len} {key}={value}\n")
        };
        let mut tar = Vec::new();
        let global = record("comment", "ignored");
        tar.extend(raw_header(
            b"pax_global_header",
            b'g',
            global.len() as u64,
            b"",
        ));
        tar.extend(global.as_bytes());
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
        let local = record("path", "real/name") + &record("size", "3");
        tar.extend(raw_header(b"PaxHeaders/x", b'x', local.len() as u64, b""));
        tar.extend(local.as_bytes());
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
        tar.extend(raw_header(b"short", b'0', 99, b""));
        tar.extend(b"abc");
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
        let link = record("linkpath", "far/away");
        tar.extend(raw_header(b"PaxHeaders/l", b'x', link.len() as u64, b""));
        tar.extend(link.as_bytes());
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
        tar.extend(raw_header(b"l", b'2', 0, b"near"));
        tar.extend([0; 2 * BLOCK]);
        let events = unpack(&frames_of(&tar)).unwrap();
        assert_eq!(
            events,
            vec![
                Event::File {
                    path: p(b"real/name"),
                    mode: 0o644,
                    mtime_ns: 1_700_000_000 * NS_PER_SEC,
                    size: 3
                },
                Event::Data(b"abc".to_vec()),
                Event::FileEnd,
                Event::Symlink {
                    path: p(b"l"),
                    target: b"far/away".to_vec(),
                    mtime_ns: 1_700_000_000 * NS_PER_SEC
                },
            ]
        );
    }

    #[test]
    fn old_style_and_contiguous_regular_files_are_files() {
        for kind in [b'\0', b'7'] {
            let events = unpack(&frames_of(&raw_archive(b"f", kind, b"x"))).unwrap();
            assert!(matches!(&events[0], Event::File { size: 1, .. }), "{kind}");
        }
    }

    // ---- packer misuse ----

    #[test]
    fn packer_refuses_content_beyond_or_short_of_the_declared_size() {
        let mut packer = Packer::new();
        packer.begin_file(&p(b"f"), 0o644, 0, 3).unwrap();
        assert!(matches!(
            packer.file_data(b"abcd"),
            Err(ArchiveError::SizeMismatch {
                declared: 3,
                given: 4
            })
        ));
        packer.file_data(b"ab").unwrap();
        assert!(matches!(
            packer.end_file(),
            Err(ArchiveError::SizeMismatch {
                declared: 3,
                given: 2
            })
        ));
        assert!(packer.dir(&p(b"d"), 0o755, 0).is_err());
        packer.file_data(b"c").unwrap();
        packer.end_file().unwrap();
        assert_eq!(unpack(&packer.finish().unwrap()).unwrap().len(), 3);
    }

    #[test]
    fn packer_refuses_out_of_order_calls() {
        let mut packer = Packer::new();
        assert!(matches!(
            packer.file_data(b"x"),
            Err(ArchiveError::Misuse(_))
        ));
        assert!(matches!(packer.end_file(), Err(ArchiveError::Misuse(_))));
        packer.begin_file(&p(b"f"), 0o644, 0, 1).unwrap();
        assert!(matches!(packer.finish(), Err(ArchiveError::Misuse(_))));
    }

    #[test]
    fn packer_refuses_reserved_paths_and_bad_symlink_targets() {
        let mut packer = Packer::new();
        assert!(matches!(
            packer.file(&p(b".unionsync/state"), 0o644, 0, b""),
            Err(ArchiveError::Reserved(_))
        ));
        for target in [&b""[..], b"a\0b", &[b'x'; 4097]] {
            assert!(matches!(
                packer.symlink(&p(b"l"), target, 0),
                Err(ArchiveError::BadSymlinkTarget { .. })
            ));
        }
    }

    // ---- hostile input ----

    fn unpack_raw(tar: &[u8]) -> Result<Vec<Event>, ArchiveError> {
        unpack(&frames_of(tar))
    }

    #[test]
    fn set_id_bits_are_dropped_when_packing_and_when_unpacking() {
        // A hostile sender's header: setuid, setgid and sticky.
        let file = raw_header_with_mode(b"f", b'0', 0, b"", 0o7755);
        let dir = raw_header_with_mode(b"d/", b'5', 0, b"", 0o7755);
        let mut tar = [file, dir].concat();
        tar.extend_from_slice(&[0; 2 * BLOCK]);
        let modes: Vec<u32> = unpack_raw(&tar)
            .unwrap()
            .into_iter()
            .filter_map(|event| match event {
                Event::File { mode, .. } | Event::Dir { mode, .. } => Some(mode),
                _ => None,
            })
            .collect();
        assert_eq!(modes, [0o1755, 0o1755]);

        // Our own packer never writes them either.
        let mut packer = Packer::new();
        packer.file(&p(b"f"), 0o4755, 0, b"x").unwrap();
        let tar = inflate_all(&packer.finish().unwrap());
        let header = Header::from_byte_slice(&tar[..BLOCK]);
        assert_eq!(header.mode().unwrap(), 0o755);
    }

    #[test]
    fn refuses_an_absolute_path() {
        let err = unpack_raw(&raw_archive(b"/etc/passwd", b'0', b"x")).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::InvalidPath {
                    source: PathError::Absolute,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_dot_dot_paths() {
        for name in [&b"../x"[..], b"a/../../x", b"..", b"./a", b"a//b"] {
            let err = unpack_raw(&raw_archive(name, b'0', b"x")).unwrap_err();
            assert!(matches!(err, ArchiveError::InvalidPath { .. }), "{err}");
        }
        let err = unpack_raw(&raw_archive(b"../d/", b'5', b"")).unwrap_err();
        assert!(matches!(err, ArchiveError::InvalidPath { .. }), "{err}");
    }

    #[test]
    fn refuses_an_empty_path() {
        let err = unpack_raw(&raw_archive(b"", b'0', b"x")).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::InvalidPath {
                    source: PathError::Empty,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_paths_under_the_reserved_directory() {
        for (name, kind) in [(&b".unionsync/x"[..], b'0'), (b".unionsync/", b'5')] {
            let err = unpack_raw(&raw_archive(name, kind, b"")).unwrap_err();
            assert!(matches!(err, ArchiveError::Reserved(_)), "{err}");
        }
    }

    #[test]
    fn refuses_devices_hardlinks_fifos_sparse_and_unknown_entries() {
        for (kind, what) in [
            (b'3', "character device"),
            (b'4', "block device"),
            (b'1', "hard link"),
            (b'6', "fifo"),
            (b'S', "GNU sparse file"),
            (b'V', "entry type 'V'"),
        ] {
            let mut tar = raw_header(b"dev/x", kind, 0, b"target");
            tar.extend([0; 2 * BLOCK]);
            let err = unpack_raw(&tar).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("unsupported tar entry `dev/x`: {what}")
            );
        }
    }

    #[test]
    fn refuses_a_bad_header_checksum() {
        let mut tar = raw_archive(b"f", b'0', b"x");
        tar[0] = b'g';
        assert!(matches!(
            unpack_raw(&tar),
            Err(ArchiveError::BadChecksum { offset: 0 })
        ));
    }

    #[test]
    fn a_truncated_archive_fails_finish() {
        let tar = inflate_all(&pack(&[Entry::File(p(b"f"), 0o644, 0, vec![1; 1000])]));
        for len in [0, 100, 512, 1000, 1536, tar.len() - BLOCK] {
            let mut unpacker = Unpacker::new();
            if len > 0 {
                unpacker.push_frame(&compress(&tar[..len])).unwrap();
            }
            assert!(
                matches!(unpacker.finish(), Err(ArchiveError::Truncated)),
                "{len}"
            );
        }
    }

    #[test]
    fn refuses_data_after_the_end_of_the_archive() {
        let mut tar = raw_archive(b"f", b'0', b"x");
        tar.extend(raw_header(b"g", b'0', 0, b""));
        assert!(matches!(unpack_raw(&tar), Err(ArchiveError::TrailingData)));
        let mut frames = frames_of(&raw_archive(b"f", b'0', b"x"));
        frames.push(compress(b"garbage"));
        assert!(matches!(unpack(&frames), Err(ArchiveError::TrailingData)));
    }

    #[test]
    fn refuses_a_lone_zero_block_inside_the_archive() {
        let mut tar = raw_header(b"f", b'0', 0, b"");
        tar.extend([0; BLOCK]);
        tar.extend(raw_archive(b"g", b'0', b""));
        assert!(matches!(
            unpack_raw(&tar),
            Err(ArchiveError::BadHeader { .. })
        ));
    }

    #[test]
    fn refuses_a_frame_that_inflates_past_the_limit() {
        let zeros = vec![0; MAX_FRAME_OUTPUT + 1];
        let info = FrameInfo::new().block_size(BlockSize::Max4MB);
        let mut encoder = FrameEncoder::with_frame_info(info, Vec::new());
        encoder.write_all(&zeros).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            Unpacker::new().push_frame(&bomb),
            Err(ArchiveError::FrameTooLarge)
        ));
        // Two frames in one push share the limit.
        let half = compress(&zeros[..MAX_FRAME_OUTPUT / 2 + 1]);
        assert!(matches!(
            Unpacker::new().push_frame(&[half.clone(), half].concat()),
            Err(ArchiveError::FrameTooLarge)
        ));
    }

    #[test]
    fn a_file_of_many_frames_is_never_held_whole_by_the_unpacker() {
        let data = pseudo_random(32 * CHUNK_LEN, 9);
        let frames = pack(&[Entry::File(p(b"f"), 0o644, 0, data.clone())]);
        let mut unpacker = Unpacker::new();
        let mut total = 0;
        for frame in &frames {
            unpacker.push_frame(frame).unwrap();
            let mut held = 0;
            while let Some(event) = unpacker.next_event() {
                if let Event::Data(piece) = event {
                    held += piece.len();
                }
            }
            assert!(held <= MAX_FRAME_OUTPUT, "one push yielded {held} bytes");
            assert!(
                unpacker.buf.len() < BLOCK,
                "kept {} bytes",
                unpacker.buf.len()
            );
            total += held;
        }
        unpacker.finish().unwrap();
        assert_eq!(total, data.len());
    }

    #[test]
    fn refuses_a_long_name_entry_claiming_a_huge_size() {
        for kind in [b'L', b'K', b'x'] {
            let mut tar = raw_header(b"././@LongLink", kind, u64::MAX / 2, b"");
            tar.extend([b'a'; BLOCK]);
            assert!(matches!(
                unpack_raw(&tar),
                Err(ArchiveError::ExtensionTooLong { offset: 0, .. })
            ));
        }
    }

    #[test]
    fn a_file_claiming_an_enormous_size_streams_then_fails_as_truncated() {
        let mut tar = raw_header(b"f", b'0', u64::MAX - 5, b"");
        tar.extend([b'a'; 3 * BLOCK]);
        let mut unpacker = Unpacker::new();
        unpacker.push_frame(&compress(&tar)).unwrap();
        assert!(matches!(
            unpacker.next_event(),
            Some(Event::File { size, .. }) if size == u64::MAX - 5
        ));
        assert_eq!(
            unpacker.next_event(),
            Some(Event::Data(vec![b'a'; 3 * BLOCK]))
        );
        assert!(matches!(unpacker.finish(), Err(ArchiveError::Truncated)));
        // A global PAX header's claimed size is skipped, never buffered.
        let mut tar = raw_header(b"g", b'g', u64::MAX, b"");
        tar.extend([b'a'; BLOCK]);
        assert!(matches!(
            unpack_raw(&tar),
            Err(ArchiveError::BadHeader { .. })
        ));
    }

    #[test]
    fn refuses_directories_and_symlinks_with_content() {
        for kind in [b'5', b'2'] {
            let mut tar = raw_header(b"x", kind, 1, b"t");
            tar.extend([0; 3 * BLOCK]);
            assert!(matches!(
                unpack_raw(&tar),
                Err(ArchiveError::BadHeader { .. })
            ));
        }
    }

    #[test]
    fn refuses_an_extension_header_right_before_the_end() {
        let mut tar = raw_header(b"././@LongLink", b'L', 2, b"");
        tar.extend(b"a\0");
        tar.resize(3 * BLOCK + BLOCK, 0);
        assert!(matches!(
            unpack_raw(&tar),
            Err(ArchiveError::BadHeader { .. })
        ));
    }

    #[test]
    fn refuses_bytes_that_are_not_lz4_and_frames_cut_short() {
        assert!(matches!(
            Unpacker::new().push_frame(b""),
            Err(ArchiveError::BadLz4(_))
        ));
        assert!(matches!(
            Unpacker::new().push_frame(&raw_archive(b"f", b'0', b"x")),
            Err(ArchiveError::BadLz4(_))
        ));
        let frame = compress(&raw_archive(b"f", b'0', b"x"));
        for len in 1..frame.len() {
            assert!(
                matches!(
                    Unpacker::new().push_frame(&frame[..len]),
                    Err(ArchiveError::BadLz4(_))
                ),
                "{len}"
            );
        }
        let mut corrupt = frame.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1; // the content checksum
        assert!(matches!(
            Unpacker::new().push_frame(&corrupt),
            Err(ArchiveError::BadLz4(_))
        ));
    }

    #[test]
    fn after_an_error_the_unpacker_refuses_everything() {
        let mut unpacker = Unpacker::new();
        assert!(unpacker.push_frame(b"junk").is_err());
        let good = frames_of(&raw_archive(b"f", b'0', b"x"));
        assert!(matches!(
            unpacker.push_frame(&good[0]),
            Err(ArchiveError::Failed)
        ));
        assert!(matches!(unpacker.finish(), Err(ArchiveError::Failed)));
    }

    // ---- GNU tar and the lz4 CLI ----

    fn have(tool: &str) -> bool {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            eprintln!("skipped: `{tool}` is not installed");
        }
        found
    }

    /// Runs `cmd` with `input` on stdin; its stdout, or a panic with its stderr.
    fn run(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{:?}: {}",
            cmd.get_program().as_bytes().escape_ascii(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn fs_path(root: &std::path::Path, path: &RelPath) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        root.join(std::ffi::OsStr::from_bytes(path.as_bytes()))
    }

    fn mtime_secs(meta: &std::fs::Metadata) -> i64 {
        use std::os::unix::fs::MetadataExt;
        meta.mtime()
    }

    fn compat_entries() -> Vec<Entry> {
        let t = 1_650_000_000 * NS_PER_SEC + 123;
        let long_dir = [b"d/".to_vec(), vec![b'a'; 150]].concat();
        let long_file = [long_dir.clone(), b"/".to_vec(), vec![b'b'; 140]].concat();
        vec![
            Entry::Dir(p(b"d"), 0o750, t),
            Entry::File(p(b"d/empty"), 0o600, t, vec![]),
            Entry::File(
                p(b"d/big"),
                0o755,
                t + NS_PER_SEC,
                pseudo_random(CHUNK_LEN * 2 + 3, 9),
            ),
            Entry::Dir(p(&long_dir), 0o755, t),
            Entry::File(p(&long_file), 0o644, t, b"long".to_vec()),
            Entry::File(p(b"d/\xff\xfe"), 0o644, t, b"latin".to_vec()),
            Entry::File(p(b"d/new\nline"), 0o644, t, b"nl".to_vec()),
            Entry::Symlink(p(b"d/link"), b"big".to_vec(), t),
            Entry::Symlink(p(b"d/longlink"), vec![b'z'; 200], t),
            // Last: GNU tar sets a directory's mtime when the archive leaves it.
            Entry::File(p(b"--x"), 0o644, t, b"dash".to_vec()),
        ]
    }

    #[test]
    fn gnu_tar_extracts_what_the_packer_writes() {
        use std::os::unix::fs::PermissionsExt;
        if !have("tar") || !have("lz4") {
            return;
        }
        let entries = compat_entries();
        let all = pack(&entries).concat();
        let tar = run(Command::new("lz4").args(["-q", "-dc"]), &all);
        let listing = run(Command::new("tar").args(["-tvf", "-"]), &tar);
        assert_eq!(
            String::from_utf8_lossy(&listing).lines().count(),
            entries.len()
        );
        let dir = tempfile::tempdir().unwrap();
        run(
            Command::new("tar")
                .arg("-xf")
                .arg("-")
                .arg("-C")
                .arg(dir.path()),
            &tar,
        );
        for entry in &entries {
            match entry {
                Entry::File(path, mode, mtime_ns, data) => {
                    let fs = fs_path(dir.path(), path);
                    let meta = std::fs::symlink_metadata(&fs).unwrap();
                    assert_eq!(&std::fs::read(&fs).unwrap(), data, "{path}");
                    assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
                    assert_eq!(mtime_secs(&meta), mtime_ns / NS_PER_SEC, "{path}");
                }
                Entry::Symlink(path, target, _) => {
                    use std::os::unix::ffi::OsStrExt;
                    let read = std::fs::read_link(fs_path(dir.path(), path)).unwrap();
                    assert_eq!(read.as_os_str().as_bytes(), &target[..], "{path}");
                }
                Entry::Dir(path, mode, mtime_ns) => {
                    let meta = std::fs::symlink_metadata(fs_path(dir.path(), path)).unwrap();
                    assert!(meta.is_dir(), "{path}");
                    assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
                    assert_eq!(mtime_secs(&meta), mtime_ns / NS_PER_SEC, "{path}");
                }
            }
        }
    }

    /// Lays `entries` out under `root`, as GNU tar's input.
    fn write_tree(root: &std::path::Path, entries: &[Entry]) {
        use std::os::unix::fs::PermissionsExt;
        for entry in entries {
            match entry {
                Entry::Dir(path, ..) => std::fs::create_dir_all(fs_path(root, path)).unwrap(),
                Entry::File(path, mode, _, data) => {
                    let fs = fs_path(root, path);
                    std::fs::write(&fs, data).unwrap();
                    std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(*mode)).unwrap();
                }
                Entry::Symlink(path, target, _) => {
                    use std::os::unix::ffi::OsStrExt;
                    std::os::unix::fs::symlink(
                        std::ffi::OsStr::from_bytes(target),
                        fs_path(root, path),
                    )
                    .unwrap();
                }
            }
        }
        // Directory modes last: 0o555 would block the writes above.
        for entry in entries {
            if let Entry::Dir(path, mode, _) = entry {
                std::fs::set_permissions(
                    fs_path(root, path),
                    std::fs::Permissions::from_mode(*mode),
                )
                .unwrap();
            }
        }
    }

    /// GNU tar's archive of `entries` in `format`, cut into CHUNK_LEN pieces
    /// that the lz4 CLI compresses one by one, then unpacked.
    fn unpack_gnu_tar_output(format: &str) -> Option<Vec<Event>> {
        if !have("tar") || !have("lz4") {
            return None;
        }
        let entries = compat_entries();
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), &entries);
        let tar = run(
            Command::new("tar")
                .arg("-C")
                .arg(dir.path())
                .args(["--no-recursion", "--mtime=@1650000000"])
                .arg(format!("--format={format}"))
                .args(["-cf", "-", "--null", "-T", "-"]),
            &entries
                .iter()
                .flat_map(|e| {
                    let (Entry::Dir(path, ..) | Entry::File(path, ..) | Entry::Symlink(path, ..)) =
                        e;
                    [path.as_bytes(), b"\0"].concat()
                })
                .collect::<Vec<_>>(),
        );
        let frames: Vec<_> = tar
            .chunks(CHUNK_LEN)
            .map(|piece| run(Command::new("lz4").args(["-q", "-c"]), piece))
            .collect();
        Some(unpack(&frames).unwrap())
    }

    fn with_mtime(entries: Vec<Entry>, mtime_ns: i64) -> Vec<Entry> {
        entries
            .into_iter()
            .map(|e| match e {
                Entry::Dir(path, mode, _) => Entry::Dir(path, mode, mtime_ns),
                Entry::File(path, mode, _, data) => Entry::File(path, mode, mtime_ns, data),
                Entry::Symlink(path, target, _) => Entry::Symlink(path, target, mtime_ns),
            })
            .collect()
    }

    #[test]
    fn unpacker_reads_what_gnu_tar_and_the_lz4_cli_write() {
        if let Some(events) = unpack_gnu_tar_output("gnu") {
            let want = expected(&with_mtime(compat_entries(), 1_650_000_000 * NS_PER_SEC));
            assert_eq!(events, want);
        }
    }

    #[test]
    fn unpacker_reads_gnu_tar_posix_format_with_pax_headers() {
        if let Some(events) = unpack_gnu_tar_output("posix") {
            let want = expected(&with_mtime(compat_entries(), 1_650_000_000 * NS_PER_SEC));
            assert_eq!(events, want);
        }
    }

    // ---- properties ----

    fn arb_name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(
                any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
                1..12
            ),
            (1usize..=255).prop_map(|n| vec![b'n'; n]),
        ]
        .prop_filter("no . or ..", |n| n != b"." && n != b"..")
    }

    fn arb_path() -> impl Strategy<Value = RelPath> {
        proptest::collection::vec(arb_name(), 1..4)
            .prop_map(|names| names.join(&b'/'))
            .prop_filter_map("valid, not reserved", |bytes| {
                RelPath::new(bytes).ok().filter(|p| !p.is_reserved())
            })
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let mtime = -(1i64 << 40)..(1i64 << 62);
        prop_oneof![
            (
                arb_path(),
                any::<u32>(),
                mtime.clone(),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..2000),
                    (0usize..3 * CHUNK_LEN).prop_map(|n| vec![0xa5; n]),
                ]
            )
                .prop_map(|(path, mode, t, data)| Entry::File(path, mode, t, data)),
            (
                arb_path(),
                proptest::collection::vec(1u8..=255, 1..300),
                mtime.clone()
            )
                .prop_map(|(path, target, t)| Entry::Symlink(path, target, t)),
            (arb_path(), any::<u32>(), mtime).prop_map(|(path, mode, t)| Entry::Dir(path, mode, t)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_sequence_of_entries_round_trips(entries in proptest::collection::vec(arb_entry(), 0..12)) {
            prop_assert_eq!(unpack(&pack(&entries)).unwrap(), expected(&entries));
        }

        #[test]
        fn any_split_of_the_tar_stream_round_trips(
            entries in proptest::collection::vec(arb_entry(), 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let tar = inflate_all(&pack(&entries));
            let mut cuts: Vec<_> = cuts.iter().map(|i| i.index(tar.len())).collect();
            cuts.sort();
            prop_assert_eq!(unpack(&frames_cut_at(&tar, &cuts)).unwrap(), expected(&entries));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_frames_never_panic(
            frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..600)), 0..4)
        ) {
            // Half of them past the magic number, to reach the lz4 decoder.
            let frames: Vec<_> = frames
                .into_iter()
                .map(|(magic, bytes)| if magic { [&LZ4_MAGIC[..], &bytes].concat() } else { bytes })
                .collect();
            let _ = unpack(&frames);
        }

        #[test]
        fn random_tar_bytes_never_panic(tar in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = unpack_raw(&tar);
        }

        #[test]
        fn mutated_archives_never_panic_and_yield_only_valid_paths(
            entries in proptest::collection::vec(arb_entry(), 1..4),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            in_frames in any::<bool>(),
        ) {
            let mut frames = pack(&entries);
            let frames = if in_frames {
                for (at, byte) in &flips {
                    let mut i = at.index(frames.iter().map(Vec::len).sum());
                    for frame in &mut frames {
                        if i < frame.len() {
                            frame[i] = *byte;
                            break;
                        }
                        i -= frame.len();
                    }
                }
                frames
            } else {
                let mut tar = inflate_all(&frames);
                for (at, byte) in &flips {
                    let i = at.index(tar.len());
                    tar[i] = *byte;
                }
                frames_of(&tar)
            };
            if let Ok(events) = unpack(&frames) {
                for event in events {
                    if let Event::File { path, .. } | Event::Dir { path, .. } | Event::Symlink { path, .. } = event {
                        prop_assert!(!path.is_reserved());
                        prop_assert!(RelPath::new(path.as_bytes().to_vec()).is_ok());
                    }
                }
            }
        }
    }
}
