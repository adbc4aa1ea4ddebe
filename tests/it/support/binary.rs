//! The real `eddy` binary as a child process, for tests that kill it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{Api, KEY, WAIT, http_client};

/// The real `eddy` binary, killed on drop.
pub struct Eddy {
    pub child: Child,
    pub base: String,
}

impl Eddy {
    /// Starts `eddy serve` on `data` and waits for its `listening on http://…` line.
    pub fn spawn(data: &Path, schedule: &str) -> Eddy {
        Eddy::spawn_on(data, "127.0.0.1:0", schedule)
    }

    /// [`Eddy::spawn`] on a given `listen` address (to keep one port across restarts).
    pub fn spawn_on(data: &Path, listen: &str, schedule: &str) -> Eddy {
        let extra = ["--webhook-retry-schedule", schedule];
        Eddy::start(data, listen, &extra, Stdio::inherit())
    }

    /// `eddy serve` on `data` and `listen` with `extra` options; its log lines (stderr)
    /// come through the returned channel.
    pub fn spawn_logged(
        data: &Path,
        listen: &str,
        extra: &[&str],
    ) -> (Eddy, std::sync::mpsc::Receiver<String>) {
        let mut eddy = Eddy::start(data, listen, extra, Stdio::piped());
        let stderr = eddy.child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (eddy, rx)
    }

    fn start(data: &Path, listen: &str, extra: &[&str], stderr: Stdio) -> Eddy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(["--api-key", KEY, "--allow-private-webhooks"])
            .args(extra)
            .env("RUST_LOG", "eddy=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("eddy starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(WAIT)
            .expect("eddy prints its address within the wait");
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Eddy { child, base }
    }

    pub fn api(&self) -> Api {
        Api {
            base: self.base.clone(),
            key: KEY.to_string(),
            http: http_client(),
        }
    }

    /// SIGKILL, and reap the process.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL is sent");
        self.child.wait().expect("eddy is reaped");
    }
}

impl Drop for Eddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
