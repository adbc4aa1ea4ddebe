//! The free-space guard: accepting new work stops while the store's filesystem has less
//! than a reserve free, so sled never meets a full disk.
//!
//! sled 0.34 does not recover from a failed write (the error sticks, and later flushes can
//! block), so eddy keeps well clear of it: a thread reads `statvfs` for the store directory
//! every 200 ms, new requests are refused with 503 while free space is under the reserve,
//! and work already accepted goes on using the reserve. When space returns, accepting
//! resumes by itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);

pub struct Space {
    reserve: u64,
    free: AtomicU64,
}

pub(super) fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    // A filesystem that reports no size at all (some FUSE file systems) says nothing
    // about its free space.
    if stat.f_blocks == 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

impl Space {
    /// Starts watching `dir`; the thread ends when the returned guard is dropped.
    pub fn watch(dir: PathBuf, reserve: u64) -> Arc<Space> {
        let space = Arc::new(Space {
            reserve,
            free: AtomicU64::new(free_bytes(&dir).unwrap_or(u64::MAX)),
        });
        let weak: Weak<Space> = Arc::downgrade(&space);
        let _ = std::thread::Builder::new()
            .name("eddy-space".into())
            .spawn(move || {
                while let Some(space) = weak.upgrade() {
                    if let Some(free) = free_bytes(&dir) {
                        space.free.store(free, Ordering::Relaxed);
                    }
                    drop(space);
                    std::thread::sleep(POLL);
                }
            });
        space
    }

    /// `Err((free, reserve))` while free space is under the reserve.
    pub fn check(&self) -> Result<(), (u64, u64)> {
        let free = self.free.load(Ordering::Relaxed);
        if free < self.reserve {
            Err((free, self.reserve))
        } else {
            Ok(())
        }
    }
}
