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

/// Makes sure `python` (a path or `python3`) has `package` at the version `requirements`
/// pins (`package==VERSION`), installing the whole file with its pip if not.
pub fn pip_install(python: &Path, requirements: &Path, package: &str) {
    let _guard = PIP.lock().unwrap_or_else(|p| p.into_inner());
    let pinned = std::fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("{}: {e}", requirements.display()))
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(package)
                .and_then(|rest| rest.strip_prefix("=="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("{} pins {package}==VERSION", requirements.display()));
    let check =
        "import sys, importlib.metadata as m; sys.exit(m.version(sys.argv[1]) != sys.argv[2])";
    let installed = Command::new(python)
        .args(["-c", check, package, &pinned])
        .output()
        .unwrap_or_else(|e| panic!("{} runs (CPython 3 is needed): {e}", python.display()));
    if installed.status.success() {
        return;
    }
    eprintln!("installing {} with pip", requirements.display());
    let pip = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements)
        .output()
        .expect("pip runs");
    assert!(
        pip.status.success(),
        "pip install -r {} failed: {}",
        requirements.display(),
        String::from_utf8_lossy(&pip.stderr)
    );
}

/// The Python of the virtual environment `dir/.venv`, created if missing (as
/// `tests/setup` creates it).
pub fn venv_python(dir: &Path) -> PathBuf {
    let python = dir.join(".venv/bin/python");
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir.join(".venv"))
            .status()
            .expect("python3 -m venv runs");
        assert!(
            status.success(),
            "python3 -m venv failed in {}",
            dir.display()
        );
    }
    python
}

/// One pip install at a time across the test binary's threads.
static PIP: Mutex<()> = Mutex::new(());

/// Runs `node tests/js/{script} {command}` with `input` as JSON on its stdin and returns
/// the JSON it prints.
pub async fn node_json(
    script: &str,
    command: &str,
    input: &serde_json::Value,
) -> serde_json::Value {
    use tokio::io::AsyncWriteExt;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js")
        .join(script);
    let mut child = tokio::process::Command::new("node")
        .arg(&path)
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node.js 18 or newer is needed)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.to_string().as_bytes())
        .await
        .expect("node reads its input");
    drop(stdin);
    let out = tokio::time::timeout(super::WAIT, child.wait_with_output())
        .await
        .expect("node finishes within the wait")
        .expect("node's output");
    assert!(
        out.status.success(),
        "node {script} {command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}
