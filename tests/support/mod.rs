//! Shared harness for integration tests: a real store process on a free
//! loopback port with a throw-away data dir — either `shoal store` or
//! Debian's etcd — plus a helper to run `etcdctl` against it.
//!
//! [`grpc`] has etcd v3 API helpers (clients, watch sessions) for tests
//! that talk gRPC directly.
//!
//! Dropping a [`StoreUnderTest`] kills its process (SIGKILL) and removes its
//! data dir, also when the test panicked.
#![allow(dead_code)] // every test crate includes this module and uses a part

pub mod cluster;
pub mod grpc;
pub mod initramfs;
pub mod secrets;
pub mod up;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a store may take to start answering.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Etcd,
}

pub struct StoreUnderTest {
    backend: Backend,
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    peer_port: u16,
    env: Vec<(String, String)>,
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768–60999)
/// and below shoal's auto-published range (30000–32767), so no outgoing
/// connection, published port or self-connecting probe can take the port
/// between the test choosing it and the process under test binding it.
const TEST_PORTS: std::ops::Range<u16> = 15000..30000;

/// The next port in [`TEST_PORTS`] that is free now. Each test process starts
/// at an offset of its own and walks forward, so two tests of one process
/// never receive the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = TEST_PORTS.start + (NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}")
}

/// Path of the etcd binary, or the panic every etcd-backed test should show.
fn etcd_binary() -> PathBuf {
    let candidates = [PathBuf::from("/usr/bin/etcd"), PathBuf::from("/usr/local/bin/etcd")];
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates.into_iter().chain(on_path).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("etcd not found: install Debian's etcd-server (apt-get install etcd-server etcd-client)")
    })
}

impl StoreUnderTest {
    /// `shoal store` on a free port with a fresh data dir, answering.
    pub fn embedded() -> Self {
        Self::embedded_with_env(&[])
    }

    /// Like [`embedded`](Self::embedded), with extra environment variables
    /// for the store process (e.g. `SHOAL_STORE_PROGRESS_NOTIFY_INTERVAL`).
    pub fn embedded_with_env(env: &[(&str, &str)]) -> Self {
        Self::start(Backend::Embedded, env)
    }

    /// A real single-member etcd on free client and peer ports, answering.
    pub fn etcd() -> Self {
        Self::start(Backend::Etcd, &[])
    }

    /// The backend by kind, for suites that loop over both.
    pub fn of(backend: Backend) -> Self {
        Self::start(backend, &[])
    }

    fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let mut store = StoreUnderTest {
            backend,
            child: None,
            dir: tempfile::Builder::new().prefix("shoal-store-test-").tempdir().expect("creating a temp dir"),
            port: free_port(),
            peer_port: free_port(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        store.spawn();
        store
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("store.log")
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("opening the store log");
        let client = self.endpoint();
        let mut cmd = match self.backend {
            Backend::Embedded => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
                cmd.arg("store").arg("--data-dir").arg(self.data_dir());
                cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
                cmd
            }
            Backend::Etcd => {
                let peer = format!("http://127.0.0.1:{}", self.peer_port);
                let mut cmd = Command::new(etcd_binary());
                cmd.arg("--name").arg("test").arg("--data-dir").arg(self.data_dir());
                cmd.arg("--listen-client-urls").arg(&client).arg("--advertise-client-urls").arg(&client);
                cmd.arg("--listen-peer-urls").arg(&peer).arg("--initial-advertise-peer-urls").arg(&peer);
                cmd.arg("--initial-cluster").arg(format!("test={peer}"));
                cmd.args(["--logger", "zap", "--log-level", "warn"]);
                cmd
            }
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("cloning the log handle")).stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting {:?}: {e}", self.backend)));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{:?} store exited with {status} before answering:\n{}", self.backend, self.log());
            }
            let listening = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            // A store accepts connections a moment before it serves, and a
            // listener is not proof that it is ours: ask it over the etcd API.
            if listening && self.etcdctl(&["get", "ready-probe"]).status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{:?} store did not answer on {} within {READY_TIMEOUT:?}:\n{}",
                    self.backend,
                    self.endpoint(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the store process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush — what a crash looks like.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the store again on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `etcdctl` (API v3) against this store.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.endpoint(), args)
    }
}

impl Drop for StoreUnderTest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `etcdctl --endpoints ENDPOINT ARGS…` with `ETCDCTL_API=3`.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=5s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running etcdctl: install Debian's etcd-client")
}

/// Stdout of a successful etcdctl run; panics with its stderr otherwise.
pub fn etcdctl_ok(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args);
    assert!(out.status.success(), "etcdctl {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `cond` to hold, checking every 50 ms, for at most `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A typed store client for `backend`.
pub async fn connect(backend: &StoreUnderTest) -> shoal_store::client::Store {
    let config = shoal_store::client::StoreConfig::for_endpoint(backend.endpoint());
    shoal_store::client::Store::connect(&config).await.expect("connect to the store under test")
}

/// Runs `shoal --etcd-endpoints … ARGS…` against `store`, with `stdin`
/// piped in (`secret create NAME -`); quiet logs.
pub fn shoal_with_stdin(store: &StoreUnderTest, args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoal"));
    command.arg("--etcd-endpoints").arg(store.endpoint()).args(args).env("RUST_LOG", "warn");
    output_with_stdin(&mut command, stdin)
}

/// Runs `command` with `stdin` piped in; its output.
pub fn output_with_stdin(command: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `GET /` over plain HTTP/1.0 (the demo's answer); the body.
pub fn http_get(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Generates `embedded::NAME` and `etcd::NAME` tokio tests that run the
/// async scenario `NAME(&StoreUnderTest)` against each backend.
#[macro_export]
macro_rules! async_on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(&super::StoreUnderTest::embedded()).await } )*
        }
        mod etcd {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(&super::StoreUnderTest::etcd()).await } )*
        }
    };
}

/// Generates `embedded::NAME` and `etcd::NAME` plain tests that run the
/// blocking scenario `NAME(&StoreUnderTest)` against each backend.
#[macro_export]
macro_rules! sync_on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded { $( #[test] fn $name() { super::$name(&super::StoreUnderTest::embedded()) } )* }
        mod etcd { $( #[test] fn $name() { super::$name(&super::StoreUnderTest::etcd()) } )* }
    };
}

/// Runs a command, ignoring its outcome; true when it succeeded (cleanup
/// of namespaces, links and tables that may already be gone).
pub fn quiet(argv: &[&str]) -> bool {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
