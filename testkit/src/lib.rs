//! Real services for tests, never mocks: Apache Kafka, `clickhouse-server`, `redis-server` and
//! Mosquitto, each installed if missing and started on free 127.0.0.1 ports under a temporary
//! directory by `scripts/services.sh run`, which this crate drives.
//!
//! [`Service::start`] gives a test its own instance, stopped when dropped. [`shared`] gives all
//! tests of one test binary one instance (they isolate themselves by topic or database name),
//! stopped when the binary exits: the script is spawned with `PR_SET_PDEATHSIG`, from a thread
//! that lives as long as the process, so the kernel stops it even if the binary crashes.
//!
//! ```no_run
//! let kafka = testkit::shared(testkit::Kind::Kafka);
//! println!("bootstrap: {}", kafka.address());
//! ```

// Installing the parent-death signal needs `pre_exec`, which is unsafe by signature; nothing
// else here is.
#![allow(unsafe_code)]
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test helper: failing loudly is its job

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A service the scripts know how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Apache Kafka, one KRaft broker and controller.
    Kafka,
    /// `clickhouse-server`.
    ClickHouse,
    /// `redis-server`.
    Redis,
    /// The Mosquitto MQTT broker.
    Mosquitto,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Kafka => "kafka",
            Kind::ClickHouse => "clickhouse",
            Kind::Redis => "redis",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

/// The repository's root: the nearest directory above the working directory (cargo runs tests
/// in their package's directory) that has `scripts/services.sh`. The path compiled in is only
/// the fallback: cargo shares a cached build between clones at different paths, so it may name
/// another checkout.
pub fn workspace_root() -> PathBuf {
    let here = std::env::current_dir().ok();
    here.iter()
        .flat_map(|d| d.ancestors())
        .find(|d| d.join("scripts/services.sh").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("testkit lives in the workspace")
                .to_path_buf()
        })
}

/// A running service.
pub struct Service {
    kind: Kind,
    address: String,
    dir: PathBuf,
    child: Child,
    _temp: Option<tempfile::TempDir>,
}

impl Service {
    /// Starts a private instance under a new temporary directory.
    pub fn start(kind: Kind) -> Service {
        let temp = tempfile::Builder::new()
            .prefix(&format!("fleetpulse-{}-", kind.name()))
            .tempdir()
            .expect("temporary directory");
        let mut service = Service::start_in(kind, temp.path());
        service._temp = Some(temp);
        service
    }

    /// Starts an instance in `dir`; a directory used before keeps its data and ports, so a
    /// test can stop a service and start it again where it was.
    pub fn start_in(kind: Kind, dir: &Path) -> Service {
        Service::launch(kind, dir, Mode::Plain)
    }

    /// Starts a private instance that takes only TLS clients with credentials
    /// (`services.sh run --secure`): see [`Service::ca_file`], [`Service::user`] and
    /// [`Service::password_file`].
    pub fn start_secure(kind: Kind) -> Service {
        let temp = tempfile::Builder::new()
            .prefix(&format!("fleetpulse-secure-{}-", kind.name()))
            .tempdir()
            .expect("temporary directory");
        let mut service = Service::launch(kind, temp.path(), Mode::Secure);
        service._temp = Some(temp);
        service
    }

    /// The CA that signed a secure instance's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// The client certificate and key a secure instance's CA signed (for mTLS).
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("tls/client.pem"),
            self.dir.join("tls/client.key"),
        )
    }

    /// The user a secure instance knows.
    pub fn user(&self) -> &'static str {
        "fleet"
    }

    /// The file holding that user's password.
    pub fn password_file(&self) -> PathBuf {
        self.dir
            .join(format!("secrets/{}-password", self.kind.name()))
    }

    /// That user's password.
    pub fn password(&self) -> String {
        std::fs::read_to_string(self.password_file()).expect("the password file")
    }

    /// A secure Kafka's listener that takes client certificates instead of SASL.
    pub fn mtls_address(&self) -> String {
        std::fs::read_to_string(self.dir.join("kafka/mtls.address"))
            .expect("a secure Kafka's mTLS address")
            .trim()
            .to_string()
    }

    /// Starts an instance in `dir`.
    fn launch(kind: Kind, dir: &Path, mode: Mode) -> Service {
        let child = spawn_keeper().spawn(kind, dir, mode);
        let mut child = child.expect("cannot run scripts/services.sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut address = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix(&format!("READY {} ", kind.name())) {
                address = Some(rest.trim().to_string());
                break;
            }
        }
        let Some(address) = address else {
            let status = child.wait();
            panic!(
                "{} did not start ({status:?}); its log is in {}",
                kind.name(),
                dir.display()
            );
        };
        Service {
            kind,
            address,
            dir: dir.to_path_buf(),
            child,
            _temp: None,
        }
    }

    /// Where clients connect: `127.0.0.1:PORT` for Kafka, `http://127.0.0.1:PORT` for
    /// ClickHouse, `redis://127.0.0.1:PORT` for Redis, `mqtt://127.0.0.1:PORT` for Mosquitto.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The directory holding the service's data, configuration and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the service cleanly and waits for it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of a child we have not reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let _ = self.child.wait();
    }
}

impl Service {
    /// Kills the server with SIGKILL, as a crash would, and waits for it; its directory (data,
    /// ports) stays, so [`Service::start_in`] starts it again where it was.
    pub fn kill(&mut self) {
        let pid =
            std::fs::read_to_string(self.dir.join(format!("{}.server.pid", self.kind.name())))
                .ok()
                .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the server the script started; the script then exits.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("kind", &self.kind)
            .field("address", &self.address)
            .field("dir", &self.dir)
            .finish()
    }
}

/// How an instance is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plain, kept when stopped.
    Plain,
    /// Plain, its directory removed when it stops.
    Throwaway,
    /// TLS and credentials, its directory removed when it stops: a secure instance is always
    /// private and fresh, and one held in a `static` is never dropped, so the server's exit is
    /// the only moment left to tidy up.
    Secure,
}

/// What to run, where, how, and where to answer.
type SpawnRequest = (Kind, PathBuf, Mode, mpsc::Sender<std::io::Result<Child>>);

/// Spawns children from one thread that never exits, so the parent-death signal fires when the
/// process ends, not when the test thread that asked for the service does.
struct Keeper(Mutex<mpsc::Sender<SpawnRequest>>);

impl Keeper {
    fn spawn(&self, kind: Kind, dir: &Path, mode: Mode) -> std::io::Result<Child> {
        let (reply, answer) = mpsc::channel();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((kind, dir.to_path_buf(), mode, reply))
            .expect("keeper thread alive");
        answer.recv().expect("keeper thread answers")
    }
}

fn spawn_keeper() -> &'static Keeper {
    static KEEPER: OnceLock<Keeper> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-keeper".into())
            .spawn(move || {
                for (kind, dir, mode, reply) in incoming {
                    let script = workspace_root().join("scripts/services.sh");
                    let mut command = Command::new("bash");
                    command
                        .arg(script)
                        .arg("run")
                        .arg(kind.name())
                        .arg("--dir")
                        .arg(&dir)
                        .args((mode != Mode::Plain).then_some("--remove-on-exit"))
                        .args((mode == Mode::Secure).then_some("--secure"))
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit());
                    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
                    unsafe {
                        command.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
                // Keep the thread (and so the parent-death signal) alive until the process exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("keeper thread");
        Keeper(Mutex::new(requests))
    })
}

/// One instance of `kind` for the whole test binary, started on first use.
pub fn shared(kind: Kind) -> &'static Service {
    static KAFKA: OnceLock<Service> = OnceLock::new();
    static CLICKHOUSE: OnceLock<Service> = OnceLock::new();
    static REDIS: OnceLock<Service> = OnceLock::new();
    static MOSQUITTO: OnceLock<Service> = OnceLock::new();
    let cell = match kind {
        Kind::Kafka => &KAFKA,
        Kind::ClickHouse => &CLICKHOUSE,
        Kind::Redis => &REDIS,
        Kind::Mosquitto => &MOSQUITTO,
    };
    cell.get_or_init(|| {
        // Statics are never dropped: the parent-death signal stops the server, and the script
        // then removes the directory.
        let dir = tempfile::Builder::new()
            .prefix(&format!("fleetpulse-shared-{}-", kind.name()))
            .tempdir()
            .expect("temporary directory")
            .keep();
        Service::launch(kind, &dir, Mode::Throwaway)
    })
}

/// A unique name for a test's topic, group or database, so tests sharing a service never meet.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The Python interpreter of a virtual environment with Confluent's client and its Avro
/// serializer, created (outside the repository) by `scripts/python-env.sh` if missing.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(workspace_root().join("scripts/python-env.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("cannot run scripts/python-env.sh");
            assert!(out.status.success(), "scripts/python-env.sh failed");
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            PathBuf::from(path)
        })
        .clone()
}

/// Waits up to `timeout` for `check` to hold, polling.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}
