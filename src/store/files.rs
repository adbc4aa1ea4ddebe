//! The store's files beyond sled's log: what an acknowledgement depends on besides `db`,
//! and what a failed start leaves behind.
//!
//! sled 0.34 keeps a page larger than a quarter of a 512 KiB log segment (128 KiB: a node
//! holding a big record) in its own file `blobs/<lsn>`, written by the thread that reserves
//! the log space, closed before that reservation completes, and never fsynced; nor are
//! `conf`, the snapshot renames or any directory. After a power cut an empty blob stops
//! sled's recovery at its log record, and everything logged after it is lost. So the group
//! commit runs [`Files::sync_new`] after sled's `flush()` (which waits for every
//! reservation it covers, so every blob those records point to is closed by then) and
//! before the `fdatasync` of `db`: it fsyncs every file sled closed after writing since the
//! last commit, then each directory that gained an entry. It learns which files those are
//! from inotify (events are queued by the syscall that creates or closes the file, so they
//! are there when `flush()` returns), never by listing a directory per commit; if the
//! event queue overflows, it syncs every blob once.
//!
//! sled writes a snapshot only while opening (`snap.<lsn>.generating`, synced, renamed to
//! `snap.<lsn>`), and it reads a left-over `.generating` file as a snapshot: a start that
//! failed while writing one (a full disk) makes every later start fail (sled issue #1527).
//! [`clear_incomplete_snapshots`] removes such a file when it is provably incomplete (too short or its
//! checksum fails: sled syncs a snapshot before renaming it, so a complete one is never
//! lost by this), and [`check_room`] refuses to open a store without room for sled's own
//! writes.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, ReadFlags, WatchFlags};

/// Free space a start needs besides twice the newest snapshot: two log segments (sled may
/// start a new one at once) and some blobs.
const OPEN_ROOM: u64 = 4 << 20;

/// Creates `dir` and its missing ancestors, and fsyncs each directory that gained an
/// entry, so a new store's directory survives a power cut.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.exists() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for path in missing.iter().rev() {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes every snapshot that sled began and provably did not finish (a
/// `snap.<lsn>.generating` file that is too short or fails its checksum); returns them.
pub fn clear_incomplete_snapshots(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let generating = path
            .file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|name| name.starts_with("snap.") && name.ends_with(".generating"));
        if generating && !snapshot_is_complete(&path)? {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Refuses a disk without room for what sled writes while opening (a new snapshot, a new
/// log segment), so that it never fails half way through.
pub fn check_room(dir: &Path) -> Result<(), super::StoreError> {
    let mut newest_snapshot = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("snap."))
        {
            newest_snapshot = newest_snapshot.max(entry.metadata()?.len());
        }
    }
    let need = OPEN_ROOM + 2 * newest_snapshot;
    match super::space::free_bytes(dir) {
        Some(free) if free < need => Err(super::StoreError::NoRoomToOpen {
            free_mib: free >> 20,
            need_mib: need.div_ceil(1 << 20),
        }),
        _ => Ok(()),
    }
}

/// sled's snapshot layout: the body, its length (8 bytes) and the CRC-32 of the body
/// (4 bytes, little-endian).
fn snapshot_is_complete(path: &Path) -> std::io::Result<bool> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let Some(body_len) = bytes.len().checked_sub(12).filter(|n| *n > 0) else {
        return Ok(false);
    };
    let (body, trailer) = bytes.split_at(body_len);
    let crc = u32::from_le_bytes(trailer[8..].try_into().unwrap_or_default());
    Ok(crc32fast::hash(body) == crc)
}

/// Watches the store directory and `blobs/` for what the next commit must sync.
pub struct Files {
    dir: PathBuf,
    blobs: PathBuf,
    /// `None` when inotify is unavailable: then every commit syncs every blob.
    watch: Option<Watch>,
}

struct Watch {
    fd: OwnedFd,
    store_wd: i32,
    blobs_wd: i32,
}

/// What one drain of the event queue found.
#[derive(Default)]
struct Pending {
    files: BTreeSet<PathBuf>,
    store_dir: bool,
    blobs_dir: bool,
    overflow: bool,
}

impl Files {
    /// Creates `dir/blobs` (as sled would) and starts watching; call before sled opens the
    /// store so that its first writes are seen too.
    pub fn watch(dir: &Path) -> std::io::Result<Files> {
        let blobs = dir.join("blobs");
        if !blobs.exists() {
            std::fs::create_dir(&blobs)?;
            sync_dir(dir)?;
        }
        let watch = match Watch::start(dir, &blobs) {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "inotify unavailable: every commit will sync every blob file"
                );
                None
            }
        };
        Ok(Files {
            dir: dir.to_path_buf(),
            blobs,
            watch,
        })
    }

    /// Fsyncs every file sled finished writing since the last call, then every directory
    /// that gained an entry. Call after `flush()` and before acknowledging.
    pub fn sync_new(&mut self) -> std::io::Result<usize> {
        let pending = match &self.watch {
            Some(watch) => watch.drain(&self.dir, &self.blobs)?,
            None => Pending {
                overflow: true,
                ..Pending::default()
            },
        };
        let mut files = pending.files;
        if pending.overflow {
            for entry in std::fs::read_dir(&self.blobs)? {
                files.insert(entry?.path());
            }
            files.insert(self.dir.join("conf"));
        }
        for path in &files {
            match File::open(path) {
                Ok(file) => file.sync_all()?,
                // Removed since (sled deletes blobs it no longer needs).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if pending.blobs_dir || pending.overflow {
            sync_dir(&self.blobs)?;
        }
        if pending.store_dir || pending.overflow {
            sync_dir(&self.dir)?;
        }
        Ok(files.len())
    }
}

impl Watch {
    fn start(dir: &Path, blobs: &Path) -> std::io::Result<Watch> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        let entries = WatchFlags::CREATE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::DELETE
            | WatchFlags::CLOSE_WRITE;
        let store_wd = inotify::add_watch(&fd, dir, entries)?;
        let blobs_wd = inotify::add_watch(&fd, blobs, entries)?;
        Ok(Watch {
            fd,
            store_wd,
            blobs_wd,
        })
    }

    fn drain(&self, dir: &Path, blobs: &Path) -> std::io::Result<Pending> {
        let mut pending = Pending::default();
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                pending.overflow = true;
                continue;
            }
            let (base, dir_changed) = if event.wd() == self.blobs_wd {
                (blobs, &mut pending.blobs_dir)
            } else if event.wd() == self.store_wd {
                (dir, &mut pending.store_dir)
            } else {
                continue;
            };
            let entry_changed =
                ReadFlags::CREATE | ReadFlags::MOVED_TO | ReadFlags::MOVED_FROM | ReadFlags::DELETE;
            if flags.intersects(entry_changed) {
                *dir_changed = true;
            }
            if flags.contains(ReadFlags::CLOSE_WRITE)
                && !flags.contains(ReadFlags::ISDIR)
                && let Some(name) = event.file_name()
            {
                pending
                    .files
                    .insert(base.join(OsStr::from_bytes(name.to_bytes())));
            }
        }
        Ok(pending)
    }
}
