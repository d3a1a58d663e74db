//! Azure Blob Storage for tests: Azurite's blob service (npm `azurite`,
//! which `scripts/setup.sh` installs under `.tools/azurite`), on 127.0.0.1
//! only, telemetry off, data in memory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

/// Azurite's well-known development account and key.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-08-06";

pub struct Azurite {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

fn azurite_blob() -> PathBuf {
    std::env::var_os("PIXELQUERY_AZURITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/azurite/node_modules/.bin/azurite-blob"))
}

impl Azurite {
    /// Starts the blob service and waits until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = crate::seaweed::tied(azurite_blob());
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent", "--skipApiVersionCheck"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = crate::seaweed::spawn_tied(cmd).unwrap_or_else(|e| panic!("starting {} (run scripts/setup.sh): {e}", azurite_blob().display()));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "Azurite did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Azurite { port, child, _dir: dir }
    }

    /// The environment a server of this store needs (`az://container/...`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AZURE_STORAGE_USE_EMULATOR", "true".into()), ("AZURITE_BLOB_STORAGE_URL", format!("http://127.0.0.1:{}", self.port))]
    }

    /// Sets [`Azurite::env`] in this process (servers started in-process read it).
    pub fn export(&self) {
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
    }

    /// Creates container `name` (Shared Key signed, as any Azure client).
    pub fn create_container(&self, name: &str) {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let to_sign = format!("PUT\n{}x-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container", "\n".repeat(11));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &base64::engine::general_purpose::STANDARD.decode(KEY).unwrap());
        let signature = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {API_VERSION}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 201"), "creating container {name}: {reply}");
    }

    /// A container-root client of the store (after [`Azurite::export`]:
    /// the emulator's address comes from the environment).
    pub fn store(&self, container: &str) -> object_store::azure::MicrosoftAzure {
        object_store::azure::MicrosoftAzureBuilder::new().with_use_emulator(true).with_container_name(container).build().unwrap()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
