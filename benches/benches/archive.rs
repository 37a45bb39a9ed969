//! Benchmarks the transfer archive disk to disk: read a source tree with
//! `std::fs`, pack it (`Packer`: tar cut into lz4 frames), unpack the frames
//! (`Unpacker`) and write the files, with their modes and mtimes, into a
//! fresh destination directory.
//!
//! Sender and receiver run on two threads joined by a bounded channel of
//! frames, as two machines would; the page cache is warm and nothing is
//! fsynced (as in `benches/tar_lz4_baseline.sh`, the `tar | lz4 | lz4 -d |
//! tar` pipeline it compares with).
//!
//! Two data sets, content half pseudo-random (incompressible) and half
//! repetitive text:
//! - `small_files`: 10,000 files of 4 KiB in 100 directories (`dNN/fNNN`);
//! - `one_big_file`: one 1 GiB file, alternating 1 MiB random / text.
//!
//! Throughput counts file content bytes. Each run writes into a new
//! destination directory, made (and the page cache synced) outside the
//! timed part; the first transfer is checked byte for byte against the
//! source, untimed.
//!
//! Run: `cargo bench -p unionsync-benches --bench archive`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use unionsync::archive::{Event, Packer, Unpacker};
use unionsync_core::wire::CHUNK_LEN;
use unionsync_core::RelPath;

const SMALL_DIRS: usize = 100;
const SMALL_PER_DIR: usize = 100;
const SMALL_LEN: usize = 4096;
const BIG_LEN: usize = 1 << 30;
const BIG_PIECE: usize = 1 << 20;

/// Frames in flight between the two threads.
const CHANNEL_FRAMES: usize = 8;

const TEXT: &[u8] = b"the quick brown fox jumps over the lazy dog; 0123456789\n";

struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

fn text(out: &mut [u8]) {
    for (byte, t) in out.iter_mut().zip(TEXT.iter().cycle()) {
        *byte = *t;
    }
}

/// `dNN/fNNN`: 2 KiB random then 2 KiB text each.
fn make_small_files(root: &Path) -> u64 {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut data = vec![0; SMALL_LEN];
    for d in 0..SMALL_DIRS {
        let dir = root.join(format!("d{d:02}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..SMALL_PER_DIR {
            rng.fill(&mut data[..SMALL_LEN / 2]);
            text(&mut data[SMALL_LEN / 2..]);
            fs::write(dir.join(format!("f{f:03}")), &data).unwrap();
        }
    }
    (SMALL_DIRS * SMALL_PER_DIR * SMALL_LEN) as u64
}

/// `big`: 1 MiB random, 1 MiB text, ... for 1 GiB.
fn make_big_file(root: &Path) -> u64 {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut file = fs::File::create(root.join("big")).unwrap();
    let mut piece = vec![0; BIG_PIECE];
    for i in 0..BIG_LEN / BIG_PIECE {
        if i % 2 == 0 {
            rng.fill(&mut piece);
        } else {
            text(&mut piece);
        }
        file.write_all(&piece).unwrap();
    }
    BIG_LEN as u64
}

fn mtime_ns(meta: &fs::Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

fn fs_path(root: &Path, path: &RelPath) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(path.as_bytes()))
}

/// Packs the tree under `root` (directories before their contents, names
/// sorted) and sends each frame as soon as it is full.
fn send(root: &Path, tx: mpsc::SyncSender<Vec<u8>>) {
    fn walk(
        root: &Path,
        dir: &Path,
        packer: &mut Packer,
        buf: &mut [u8],
        tx: &mpsc::SyncSender<Vec<u8>>,
    ) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let full = dir.join(&name);
            let rel = full.strip_prefix(root).unwrap();
            let path = RelPath::new(rel.as_os_str().as_bytes()).unwrap();
            let meta = fs::symlink_metadata(&full).unwrap();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                packer.dir(&path, mode, mtime_ns(&meta)).unwrap();
                walk(root, &full, packer, buf, tx);
            } else if meta.is_file() {
                let mut file = fs::File::open(&full).unwrap();
                packer
                    .begin_file(&path, mode, mtime_ns(&meta), meta.len())
                    .unwrap();
                loop {
                    let n = file.read(buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    packer.file_data(&buf[..n]).unwrap();
                    while let Some(frame) = packer.next_frame() {
                        tx.send(frame).unwrap();
                    }
                }
                packer.end_file().unwrap();
            }
        }
    }
    let mut packer = Packer::new();
    let mut buf = vec![0; CHUNK_LEN];
    walk(root, root, &mut packer, &mut buf, &tx);
    for frame in packer.finish().unwrap() {
        tx.send(frame).unwrap();
    }
}

/// Unpacks the frames into `root`: files get their mode and mtime as they
/// complete, directories their mtime at the end.
fn receive(root: &Path, rx: mpsc::Receiver<Vec<u8>>) {
    let mut unpacker = Unpacker::new();
    let mut file: Option<(fs::File, u32, i64)> = None;
    let mut dirs = Vec::new();
    let time = |ns: i64| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64);
    for frame in rx {
        unpacker.push_frame(&frame).unwrap();
        while let Some(event) = unpacker.next_event() {
            match event {
                Event::Dir {
                    path,
                    mode,
                    mtime_ns,
                } => {
                    let dir = fs_path(root, &path);
                    fs::create_dir(&dir).unwrap();
                    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
                    dirs.push((dir, mtime_ns));
                }
                Event::File {
                    path,
                    mode,
                    mtime_ns,
                    ..
                } => {
                    let created = fs::File::create(fs_path(root, &path)).unwrap();
                    file = Some((created, mode, mtime_ns));
                }
                Event::Data(bytes) => file.as_mut().unwrap().0.write_all(&bytes).unwrap(),
                Event::FileEnd => {
                    let (done, mode, mtime_ns) = file.take().unwrap();
                    done.set_permissions(fs::Permissions::from_mode(mode))
                        .unwrap();
                    done.set_modified(time(mtime_ns)).unwrap();
                }
                Event::Symlink { path, target, .. } => std::os::unix::fs::symlink(
                    std::ffi::OsStr::from_bytes(&target),
                    fs_path(root, &path),
                )
                .unwrap(),
            }
        }
    }
    unpacker.finish().unwrap();
    for (dir, mtime_ns) in dirs.into_iter().rev() {
        fs::File::open(&dir)
            .unwrap()
            .set_modified(time(mtime_ns))
            .unwrap();
    }
}

fn transfer(src: &Path, dst: &Path) {
    let (tx, rx) = mpsc::sync_channel(CHANNEL_FRAMES);
    std::thread::scope(|scope| {
        scope.spawn(|| send(src, tx));
        receive(dst, rx);
    });
}

/// Every file under `a` has the same bytes, mode and mtime (seconds) under `b`.
fn assert_same_tree(a: &Path, b: &Path) {
    for entry in fs::read_dir(a).unwrap() {
        let entry = entry.unwrap();
        let (pa, pb) = (entry.path(), b.join(entry.file_name()));
        let (ma, mb) = (fs::metadata(&pa).unwrap(), fs::metadata(&pb).unwrap());
        assert_eq!(ma.permissions().mode(), mb.permissions().mode(), "{pa:?}");
        assert_eq!(ma.mtime(), mb.mtime(), "{pa:?}");
        if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else {
            let (mut fa, mut fb) = (fs::File::open(&pa).unwrap(), fs::File::open(&pb).unwrap());
            let (mut ba, mut bb) = (vec![0; BIG_PIECE], vec![0; BIG_PIECE]);
            loop {
                let n = fa.read(&mut ba).unwrap();
                fb.read_exact(&mut bb[..n]).unwrap();
                assert!(ba[..n] == bb[..n], "{pa:?} differs");
                if n == 0 {
                    break;
                }
            }
        }
    }
}

/// A data set: name, maker, measurement seconds, and whether to keep every
/// destination until the end. Many files created right after as many were
/// deleted make ext4 crawl (`recently_deleted` inode scans, seconds per
/// 10,000 files), so the small-files destinations are all kept (~0.5 GB);
/// the big file's are removed before the next run (one inode).
type Case = (&'static str, fn(&Path) -> u64, u64, bool);

fn bench_archive(c: &mut Criterion) {
    let mut group = c.benchmark_group("archive_disk_to_disk");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    let cases: [Case; 2] = [
        ("small_files", make_small_files, 20, true),
        ("one_big_file", make_big_file, 30, false),
    ];
    for (name, make, seconds, keep) in cases {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        fs::create_dir(&src).unwrap();
        let bytes = make(&src);
        let check = work.path().join("check");
        fs::create_dir(&check).unwrap();
        transfer(&src, &check);
        assert_same_tree(&src, &check);

        group.throughput(Throughput::Bytes(bytes));
        group.measurement_time(Duration::from_secs(seconds));
        let mut runs = 0;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let last = work.path().join(format!("dst{runs}"));
                    if !keep && last.exists() {
                        fs::remove_dir_all(&last).unwrap();
                    }
                    runs += 1;
                    let dst = work.path().join(format!("dst{runs}"));
                    fs::create_dir(&dst).unwrap();
                    // Start each run with no dirty pages from the last one.
                    Command::new("sync").status().unwrap();
                    dst
                },
                |dst| transfer(&src, &dst),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_archive);
criterion_main!(benches);
