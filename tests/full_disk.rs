//! A warehouse on a small file system (a 6 MiB tmpfs the test mounts; it
//! needs root): puts that do not fit fail with `ResourceExhausted` and no
//! server path, every acknowledged scene survives a restart, and deleting a
//! scene frees space for a new put. Skipped, saying so, where the test
//! cannot mount.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const T: i64 = 1704067200000;
const MONTH: i64 = 31 * 86_400_000;

/// Unmounts the test's file system when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_puts_keeps_what_was_acknowledged_and_delete_frees_space() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(dir.path()).status().is_ok_and(|s| s.success());
    if !mounted {
        // Root without the right to mount (a container without
        // CAP_SYS_ADMIN): nothing to fill here.
        eprintln!("skipped: cannot mount a tmpfs on {}", dir.path().display());
        return;
    }
    let unmount = Unmount(dir.path().to_path_buf());
    let server = TestServer::start_with(dir, |c| c.ingest.min_free_bytes = 0).await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    // One scene a month, so each scene has chunk files of its own.
    let mut stored = Vec::new();
    let mut refusal = None;
    for k in 0..200 {
        let scene = format!("m{k:03}");
        let req = ingest_request("s2", &scene, T + k * MONTH, utm_geotransform(256), 256, "nearest");
        match client.ingest(&req, red_batches(raster(256, k as u16), 256)).await {
            Ok(put) => stored.push((scene, put.observations)),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let err = refusal.expect("the file system fills up");
    let status = err.status().expect("a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("file system is full") && status.message().contains("delete scenes"), "{}", status.message());
    assert!(
        !status.message().contains("/tmp") && !status.message().contains(&server.warehouse().display().to_string()),
        "no server path: {}",
        status.message()
    );
    assert!(stored.len() >= 3, "{} scenes fit", stored.len());
    eprintln!("{} scenes fit before: {}", stored.len(), status.message());
    let health = client.health().await.unwrap();
    assert!(health["free_mb"].as_u64().is_some_and(|f| f < 6), "{health}");

    // Every acknowledged scene survives a restart.
    let dir = server.shutdown().await;
    let server = TestServer::start_with(dir, |c| c.ingest.min_free_bytes = 0).await;
    let mut client = server.client().await;
    assert_eq!(client.describe("s2").await.unwrap()["scenes"].as_u64(), Some(stored.len() as u64));

    // Deleting a scene frees its chunk files; a new put then fits.
    client.action("delete", &serde_json::json!({"collection": "s2", "scene_id": stored[0].0})).await.unwrap();
    let req = ingest_request("s2", "after", T, utm_geotransform(256), 256, "nearest");
    client.ingest(&req, red_batches(raster(256, 7), 256)).await.expect("a put after the delete");
    let dir = server.shutdown().await;
    drop(unmount);
    drop(dir);
}
