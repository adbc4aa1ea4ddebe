//! Power cuts: the real binary on a file system that drops everything not fsynced
//! (`support::powerfs`), killed with `kill -9` while requests are being accepted, then the
//! power cut, then a restart. An acknowledged request is never lost: not on the first
//! start, not with small, 300 KB or mixed messages.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::support::powerfs::PowerFs;
use crate::support::{Api, Eddy, KEY};

/// Acknowledged channel ids, shared by the sending tasks.
type Acked = Arc<Mutex<BTreeSet<String>>>;

/// One round: start eddy on `data`, send `n` requests from 8 tasks (every `every`-th with a
/// `big`-byte message, the rest 100 bytes), kill -9 once `kill_after` were acknowledged,
/// cut the power, start again and count the acknowledged requests that are gone.
async fn round(
    fs: &mut PowerFs,
    data: &Path,
    (n, big, every, kill_after): (usize, usize, usize, usize),
) -> (usize, Vec<String>) {
    let mut eddy = Eddy::spawn(data, "0s");
    let api = eddy.api();
    // Created on the first round; a later one finds it (409) unless a cut lost it.
    let (status, body) = api
        .post(
            "/console/workflow",
            json!({"name": "w", "provider": "testing", "model": "test-mode",
                   "mode": "testing", "response_delay_ms": 600_000}),
        )
        .await;
    assert!(status == 201 || status == 409, "{status} {body}");
    let acked: Acked = Arc::default();
    let (enough, mut enough_rx) = tokio::sync::watch::channel(false);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..8 {
        let (api, acked, next, enough) = (api.clone(), acked.clone(), next.clone(), enough.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let size = if every > 0 && i % every == every - 1 {
                    big
                } else {
                    100
                };
                let body = json!({"workflow": "w", "messages": [
                    {"role": "user", "content": format!("req {i} {}", "x".repeat(size))}
                ]});
                let Ok(channel) = send(&api, &body).await else {
                    return; // the server is gone
                };
                let mut acked = acked.lock().unwrap();
                acked.insert(channel);
                if acked.len() >= kill_after {
                    let _ = enough.send(true);
                }
            }
        });
    }
    let _ = enough_rx.wait_for(|done| *done).await;
    eddy.kill_9();
    let acked: BTreeSet<String> = acked.lock().unwrap().clone();
    fs.power_cut();

    let eddy = Eddy::spawn(data, "0s");
    let api = eddy.api();
    let mut lost = Vec::new();
    for channel in &acked {
        let (status, _) = api.get(&format!("/console/requests/{channel}")).await;
        if status != 200 {
            lost.push(channel.clone());
        }
    }
    (acked.len(), lost)
}

/// `POST /v1/ai/async`; the channel id of a 200, or an error if the server is gone or
/// refused.
async fn send(api: &Api, body: &serde_json::Value) -> Result<String, String> {
    let response = api
        .http
        .post(format!("{}/v1/ai/async", api.base))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(response.status().to_string());
    }
    let ticket: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(ticket["channel_id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Four power cuts on one store: right after its first start (100-byte messages), then
/// with 300 KB messages (kept by sled in `blobs/` files), with mixed ones (every 10th
/// 300 KB), and small ones again. After each cut and restart, every acknowledged request
/// is there. (Before the group commit synced sled's blob files, the store directory's
/// entries and `conf`, the first cut lost the whole new store and a 300 KB one lost every
/// request logged after the blob.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_cuts_lose_no_acknowledged_request() {
    let mut fs = PowerFs::mount();
    let data = fs.path().join("store");
    let rounds = [
        ("first start", (200, 0, 0, 100)),
        ("300 KB", (40, 300_000, 1, 15)),
        ("mixed", (150, 300_000, 10, 75)),
        ("small", (200, 0, 0, 100)),
    ];
    let mut report = Vec::new();
    let mut lost_any = false;
    for (name, shape) in rounds {
        let (acked, lost) = round(&mut fs, &data, shape).await;
        report.push(format!(
            "{name}: {} of {acked} lost {:?}",
            lost.len(),
            &lost[..lost.len().min(3)]
        ));
        lost_any |= !lost.is_empty();
    }
    eprintln!("power cuts: {report:#?}");
    assert!(
        !lost_any,
        "acknowledged requests lost after power cuts: {report:#?}"
    );
}

/// Pages of `path` that are in the page cache but not on disk yet (dirty or under
/// writeback), from cachestat(2) (Linux 6.5).
fn unwritten_pages(path: &Path) -> u64 {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = std::fs::File::open(path).unwrap();
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: the pointers are to live values of the layout the syscall documents.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    assert_eq!(rc, 0, "cachestat: {}", std::io::Error::last_os_error());
    stat.dirty + stat.writeback
}

/// An acknowledgement leaves nothing it depends on in the page cache only: after each
/// 200 for a 300 KB request (which sled keeps in a `blobs/` file), every blob file and
/// `conf` have no dirty page. Unlike the power-cut test this needs no FUSE: the kernel's
/// own page cache says what was written but not synced. (On 22a75b8 the blob files of
/// acknowledged requests stayed dirty until the kernel wrote them back on its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_leaves_no_dirty_page_behind() {
    // On the disk of the build (a tmpfs keeps every page dirty).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("store");
    let server = crate::support::start(|c| c.data = data.clone()).await;
    let (status, body) = server
        .post(
            "/console/workflow",
            json!({"name": "w", "provider": "testing", "model": "test-mode",
                   "mode": "testing", "response_delay_ms": 600_000}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for i in 0..5 {
        let body = json!({"workflow": "w", "messages": [
            {"role": "user", "content": format!("{i} {}", "x".repeat(300_000))}
        ]});
        server.send_async(body).await;
        let mut files: Vec<_> = std::fs::read_dir(data.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "a 300 KB record lives in a blob file");
        files.push(data.join("conf"));
        for file in files {
            let pages = unwritten_pages(&file);
            assert_eq!(pages, 0, "{} has {pages} unwritten pages", file.display());
        }
    }
}
