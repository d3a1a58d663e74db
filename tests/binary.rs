//! The `pixelquery` binary itself: starts on port 0, prints its address,
//! answers over Flight, and stops on SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn binary_serves_on_a_free_port_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixelquery"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shutdown-grace-secs", "5", "--warehouse"])
        .arg(dir.path().join("wh"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("pixelquery listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let mut client = pixelquery_client::Client::connect(&format!("grpc://{addr}")).await.unwrap();
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    assert!(dir.path().join("wh").is_dir(), "the warehouse is created");
    drop(client);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc_kill(child.id() as i32, 2) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not stop within 20 s of SIGINT (grace is 5 s)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit on SIGINT: {status:?}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn binary_refuses_to_serve_beyond_loopback_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pixelquery"))
        .args(["serve", "--listen", "0.0.0.0:0", "--warehouse"])
        .arg(dir.path().join("wh"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--auth-file") && stderr.contains("0.0.0.0"), "{stderr}");
    assert!(!dir.path().join("wh").exists(), "nothing is created");

    // A bad access file is refused naming the line, never the secret.
    let access = dir.path().join("access");
    std::fs::write(&access, "read tooshort\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pixelquery"))
        .args(["serve", "--listen", "0.0.0.0:0", "--auth-file"])
        .arg(&access)
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1") && !stderr.contains("tooshort"), "{stderr}");
}
