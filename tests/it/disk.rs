//! Disk trouble: on a small filesystem (a tmpfs with a size limit), filling the disk makes
//! new requests 503 `unavailable` while accepted work completes, and accepting resumes by
//! itself once space returns. Nothing accepted is lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Callback, KEY, Receiver, WAIT, seed_request, start};

/// A tmpfs of `mib` MiB mounted on a new temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root): could not mount on {}",
            dir.path().display()
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file until less than `leave` bytes are free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let stat = rustix::fs::statvfs(self.path()).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        let size = free.saturating_sub(leave);
        let file = std::fs::File::create(&filler).unwrap();
        // tmpfs allocates on write, so write the bytes rather than set a length.
        use std::io::Write;
        let mut w = std::io::BufWriter::new(file);
        let chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if w.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = w.flush();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A full disk: new requests get 503 `unavailable` (saying the disk is full) and store
/// nothing, requests accepted before are still delivered, called back and completed, and
/// once the filler is deleted new requests are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_new_work_and_recovers() {
    let disk = SmallDisk::mount(64);
    let data = disk.path().join("store");
    let server = start(|c| {
        c.data = data.clone();
        c.min_free_bytes = 16 << 20;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.call_back(KEY, Callback::Enrich);
    receiver.hold_callbacks();
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let ticket = server.send_async(seed_request("content_generator")).await;
        accepted.push(ticket["channel_id"].as_str().unwrap().to_string());
    }
    receiver.wait_for(5).await;

    let filler = disk.fill(8 << 20);
    let deadline = Instant::now() + WAIT;
    let refusal = loop {
        let (status, body) = server
            .post("/v1/ai/async", seed_request("content_generator"))
            .await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        accepted.push(body["channel_id"].as_str().unwrap().to_string());
        assert!(Instant::now() < deadline, "never refused on a full disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refusal["error"]["code"], "unavailable");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk"),
        "{refusal}"
    );
    let (_, before) = server.get("/console/requests?limit=1000").await;
    let stored = before["data"].as_array().unwrap().len();
    assert_eq!(stored, accepted.len(), "the refused request stored nothing");

    // Work accepted before the disk filled goes on in the reserve.
    receiver.release_callbacks();
    for channel in &accepted {
        server.wait_for_status(channel, "completed").await;
    }

    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server
            .post("/v1/ai/async", seed_request("content_generator"))
            .await;
        if status == 200 {
            server
                .wait_for_status(body["channel_id"].as_str().unwrap(), "completed")
                .await;
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
