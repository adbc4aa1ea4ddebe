//! Outside tools that tests drive (Node packages, Chromium): found or installed here, and
//! a clear failure when they cannot be, never a silent skip. `tests/setup` installs all of
//! them ahead of time; these checks make a plain `cargo test` work too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One `npm ci` at a time across the test binary's threads.
static NPM: Mutex<()> = Mutex::new(());

/// Makes sure `dir/node_modules` matches `dir/package-lock.json`, running `npm ci` if not.
pub fn npm_ci(dir: &Path) {
    let _guard = NPM.lock().unwrap_or_else(|p| p.into_inner());
    let marker = dir.join("node_modules/.package-lock.json");
    let lock = dir.join("package-lock.json");
    let fresh = match (marker.metadata(), lock.metadata()) {
        (Ok(m), Ok(l)) => m.modified().ok() >= l.modified().ok(),
        _ => false,
    };
    if fresh {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("npm is needed to install {}: {e}", dir.display()));
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// The Chromium binary: `$CHROMIUM`, or Debian's `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is not at {}: run tests/setup (installs Debian's chromium) or set CHROMIUM",
        path.display()
    );
    path
}
