//! A FUSE file system that can lose power: every byte and every directory entry that was
//! not made durable is dropped on command. What LazyFS does for file data, plus directory
//! entries, in a few hundred lines the suite owns.
//!
//! The model (stricter than ext4's ordered mode, and than LazyFS, which keeps directory
//! operations):
//! - A file has its written bytes and its durable bytes. `write` and `truncate` change the
//!   written bytes, page by page (4 KiB); `fsync` and `fdatasync` copy the changed pages
//!   and the size to the durable bytes. `sync_file_range` never reaches a FUSE file system
//!   (without a writeback cache the kernel has nothing dirty to write), so it makes nothing
//!   durable, as on a disk with a volatile cache.
//! - A directory has its current entries and its durable entries. `create`, `mkdir`,
//!   `unlink`, `rmdir` and `rename` change the current entries; `fsync` on the directory
//!   copies them to the durable ones.
//! - [`PowerFs::power_cut`] unmounts (the process using the store must be dead by then),
//!   replaces every file's bytes by its durable bytes and every directory's entries by its
//!   durable entries, so a file whose entry was never synced is gone, whatever its bytes,
//!   and mounts again (a new mount, so the kernel's caches start empty).
//! - [`PowerFs::slow_syncs`] makes every sync take a while before it makes anything
//!   durable, as a slow disk does; a power cut meanwhile drops what it had not made
//!   durable yet. A test can then see what a program lets happen before its data is safe.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::ZERO;

#[derive(Default)]
struct File {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Pages written since the last fsync.
    dirty: BTreeSet<u64>,
}

enum Node {
    File(File),
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// How long a sync takes ([`PowerFs::slow_syncs`]).
    sync_delay: Duration,
    /// Power cuts so far: a slow sync that began before a cut makes nothing durable.
    cuts: u64,
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match self.nodes.get(&ino)? {
            Node::File(f) => (FileType::RegularFile, f.data.len() as u64, 0o644, 1),
            Node::Dir { .. } => (FileType::Directory, 0, 0o755, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn entries(&mut self, dir: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match self.nodes.get_mut(&dir)? {
            Node::Dir { entries, .. } => Some(entries),
            Node::File(_) => None,
        }
    }

    fn file(&mut self, ino: u64) -> Option<&mut File> {
        match self.nodes.get_mut(&ino)? {
            Node::File(f) => Some(f),
            Node::Dir { .. } => None,
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Option<u64> {
        if self.entries(parent)?.contains_key(name) {
            return None;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        self.entries(parent)?.insert(name.to_owned(), ino);
        Some(ino)
    }

    fn power_cut(&mut self) {
        for node in self.nodes.values_mut() {
            match node {
                Node::File(f) => {
                    f.data = f.durable.clone();
                    f.dirty.clear();
                }
                Node::Dir { entries, durable } => *entries = durable.clone(),
            }
        }
    }
}

#[derive(Clone)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes something durable with `make_durable` and answers the sync: at once, or after
    /// the sync delay (on another thread, so other calls go on meanwhile) unless the power
    /// was cut in between.
    fn sync(&self, reply: ReplyEmpty, make_durable: impl FnOnce(&mut State) + Send + 'static) {
        let (delay, cuts) = {
            let state = self.lock();
            (state.sync_delay, state.cuts)
        };
        if delay.is_zero() {
            make_durable(&mut self.lock());
            return reply.ok();
        }
        let shared = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut state = shared.lock();
            if state.cuts == cuts {
                make_durable(&mut state);
            }
            reply.ok();
        });
    }

    /// Runs `f` on the regular file `ino`, under the lock; a directory has no data.
    fn on_file<T>(&self, ino: INodeNo, f: impl FnOnce(&mut File) -> T) -> Result<T, Errno> {
        self.lock().file(ino.0).map(f).ok_or(Errno::EISDIR)
    }

    fn reply_entry(&self, ino: Option<u64>, reply: ReplyEntry) {
        match ino.and_then(|ino| self.lock().attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }
}

impl Filesystem for Shared {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = self
            .lock()
            .entries(parent.0)
            .and_then(|e| e.get(name).copied());
        self.reply_entry(ino, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        if let (Some(size), Some(file)) = (size, state.file(ino.0)) {
            let old = file.data.len() as u64;
            file.data.resize(size as usize, 0);
            file.dirty
                .extend(old.min(size) / PAGE..=old.max(size) / PAGE);
        }
        match state.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let dir = Node::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        let ino = self.lock().add(parent.0, name, dir);
        self.reply_entry(ino, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.lock();
        let ino = state.add(parent.0, name, Node::File(File::default()));
        match ino.and_then(|ino| state.attr(ino)) {
            Some(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            None => reply.error(Errno::EEXIST),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().entries(parent.0).and_then(|e| e.remove(name)) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.unlink(req, parent, name, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        let Some(ino) = state.entries(parent.0).and_then(|e| e.remove(name)) else {
            return reply.error(Errno::ENOENT);
        };
        match state.entries(newparent.0) {
            Some(entries) => {
                entries.insert(newname.to_owned(), ino);
                reply.ok();
            }
            None => reply.error(Errno::ENOTDIR),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let read = self.on_file(ino, |file| {
            let start = (offset as usize).min(file.data.len());
            let end = (start + size as usize).min(file.data.len());
            file.data[start..end].to_vec()
        });
        match read {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let written = self.on_file(ino, |file| {
            let end = offset as usize + data.len();
            if file.data.len() < end {
                file.data.resize(end, 0);
            }
            file.data[offset as usize..end].copy_from_slice(data);
            file.dirty
                .extend(offset / PAGE..=(end as u64).saturating_sub(1) / PAGE);
            data.len() as u32
        });
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(reply, move |state| {
            if let Some(file) = state.file(ino.0) {
                let len = file.data.len();
                file.durable.resize(len, 0);
                for page in std::mem::take(&mut file.dirty) {
                    let start = ((page * PAGE) as usize).min(len);
                    let end = (start + PAGE as usize).min(len);
                    file.durable[start..end].copy_from_slice(&file.data[start..end]);
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.lock();
        let Some(entries) = state.entries(ino.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut listing: Vec<(u64, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        let entries: Vec<(OsString, u64)> = entries.iter().map(|(n, i)| (n.clone(), *i)).collect();
        for (name, child) in entries {
            let kind = match state.nodes.get(&child) {
                Some(Node::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            listing.push((child, kind, name));
        }
        for (i, (child, kind, name)) in listing.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(reply, move |state| {
            if let Some(Node::Dir { entries, durable }) = state.nodes.get_mut(&ino.0) {
                *durable = entries.clone();
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = 1 << 24;
        reply.statfs(
            blocks,
            blocks,
            blocks,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }
}

/// A mounted [`PowerFs`]: unmounted on drop.
pub struct PowerFs {
    dir: tempfile::TempDir,
    state: Shared,
    session: Option<fuser::BackgroundSession>,
}

impl PowerFs {
    /// Mounts an empty file system on a new temporary directory (needs root and
    /// `/dev/fuse`, as CI has).
    pub fn mount() -> PowerFs {
        let mut nodes = HashMap::new();
        nodes.insert(
            INodeNo::ROOT.0,
            Node::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        );
        let state = Shared(Arc::new(Mutex::new(State {
            nodes,
            next_ino: INodeNo::ROOT.0 + 1,
            sync_delay: Duration::ZERO,
            cuts: 0,
        })));
        let mut fs = PowerFs {
            dir: tempfile::tempdir().expect("temp dir"),
            state,
            session: None,
        };
        fs.attach();
        fs
    }

    fn attach(&mut self) {
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("powerfs".into())];
        let session = fuser::spawn_mount(self.state.clone(), self.dir.path(), &config)
            .unwrap_or_else(|e| {
                panic!("mounting a FUSE file system needs root and /dev/fuse (CI has both): {e}")
            });
        self.session = Some(session);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// From now on every sync (`fsync`, `fdatasync`, a directory's `fsync`) takes `delay`
    /// before it makes anything durable and returns; `Duration::ZERO` makes syncs instant
    /// again.
    pub fn slow_syncs(&self, delay: Duration) {
        self.state.lock().sync_delay = delay;
    }

    /// The instant the power fails: no sync under way or begun from now on makes anything
    /// durable. For a test that kills the processes after this instant ([`PowerFs::power_cut`]
    /// calls it too): killing one that waits for a slow sync lets that sync finish first.
    pub fn power_fails(&self) {
        self.state.lock().cuts += 1;
    }

    /// Drops everything not made durable, as a power cut does. The processes that used
    /// the file system must be dead (their open files keep the mount busy).
    pub fn power_cut(&mut self) {
        self.power_fails();
        if let Some(session) = self.session.take() {
            session.umount_and_join().expect("unmounts");
        }
        self.state.lock().power_cut();
        self.attach();
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}
