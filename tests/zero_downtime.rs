//! The promise of the routing mesh, checked as a user would: a service
//! published on a port of `shoal up`, HTTP requests in a loop against it,
//! and a rolling update underneath — then a `secret rotate` of the secret
//! it reads (the demo reports the size of its secret file: 3 bytes before,
//! 7 after), which rolls the tasks the same way.
//!
//! Expected: not one failed request (about 20,000 per phase; failures are
//! printed with the step, client port and time, and the agent's drain log). The multi-node version of this promise,
//! with a rollback, scaling and a drain too, is `tests/mesh.rs`.
//!
//! Needs root (task network namespaces, nftables), as CI runs.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use support::up::Up;
use support::{free_port, http_get, wait_until};

/// The log lines of the draining handshake and data-plane programming:
/// what to line up against a failed request's time.
fn drain_log(up: &Up) -> String {
    let wanted = ["drained", "stopping task", "programmed", "still open", "decision controller=endpoints"];
    up.log().lines().filter(|l| wanted.iter().any(|w| l.contains(w))).collect::<Vec<_>>().join("\n")
}

/// Requests in a loop until stopped; counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut answers, mut failures) = (Vec::new(), Vec::new());
            while !flag.load(Ordering::SeqCst) {
                match get(addr) {
                    Ok(body) if body.contains("\"version\"") => answers.push(body),
                    Ok(body) => failures.push(format!("unexpected answer: {body:?}")),
                    Err(err) => failures.push(err),
                }
            }
            (answers, failures)
        });
        Load { stop, handle }
    }

    fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// One HTTP/1.0 GET; the error says which step failed.
fn get(addr: SocketAddr) -> Result<String, String> {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let at = || format!("port {port}, {:?} after connect, at {:?}", started.elapsed(), std::time::SystemTime::now());
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| format!("timeout: {e}"))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| format!("write ({}): {e}", at()))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("read ({}): {e}", at()))?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .ok_or_else(|| format!("no HTTP answer after {:?}: {response:?}", started.elapsed()))
}

fn assert_root() {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1);
    assert_eq!(uid, 0, "this test needs root for task network namespaces and nftables (CI runs as root)");
}

#[test]
fn a_rolling_update_and_a_secret_rotation_under_load_fail_not_one_request() {
    assert_root();
    let up = Up::builder().on_drop(&["service", "rm", "web"]).start();
    up.wait_ready(Duration::from_secs(20));
    let published = free_port();
    up.shoal_stdin(&["secret", "create", "db-password", "-"], b"old");
    up.shoal_ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--secret",
        "db-password",
        "-e",
        "DEMO_SECRET_FILE=/run/secrets/db-password",
        "--replicas",
        "4",
        "-p",
        &format!("{published}:80"),
        "--health-cmd",
        "shoal demo probe http://127.0.0.1:80/health",
        "--health-interval",
        "500ms",
        "--health-retries",
        "2",
        "--update-parallelism",
        "1",
        "--update-delay",
        "500ms",
        "--update-monitor",
        "1s",
        "--update-order",
        "start-first",
        "shoal/demo:1.0",
    ]);
    let addr = SocketAddr::from(([127, 0, 0, 1], published));
    let serving = wait_until(Duration::from_secs(60), || {
        up.running_images("web").len() == 4 && (0..8).all(|_| http_get(addr).is_some_and(|b| b.contains("\"1.0\"")))
    });
    assert!(serving, "the service never answered on its published port:\n{}", up.log());

    let load = Load::start(addr);
    std::thread::sleep(Duration::from_millis(500));
    up.shoal_ok(&["service", "update", "--detach", "--image", "shoal/demo:2.0", "web"]);
    let updated = wait_until(Duration::from_secs(90), || {
        let images = up.running_images("web");
        images.len() == 4 && images.iter().all(|i| i == "shoal/demo:2.0")
    });
    std::thread::sleep(Duration::from_millis(500));
    let (answers, failures) = load.stop();
    assert!(updated, "the update did not finish:\n{}", up.shoal_ok(&["service", "ps", "web"]));
    assert_no_failure(&up, "the update", (answers, failures), ("\"1.0\"", "\"2.0\""));

    // The secret rotates the same way: a rolling update, under load.
    let load = Load::start(addr);
    std::thread::sleep(Duration::from_millis(500));
    up.shoal_stdin(&["secret", "rotate", "db-password", "-"], b"rotated");
    let rotated = wait_until(Duration::from_secs(90), || {
        up.running_images("web").len() == 4
            && (0..8).all(|_| http_get(addr).is_some_and(|b| b.contains("\"secret_bytes\":7")))
    });
    std::thread::sleep(Duration::from_millis(500));
    let (answers, failures) = load.stop();
    assert!(rotated, "the tasks never all read the new secret:\n{}", up.shoal_ok(&["service", "ps", "web"]));
    assert_no_failure(&up, "the secret rotation", (answers, failures), ("\"secret_bytes\":3", "\"secret_bytes\":7"));
}

/// Prints how `phase` went and asserts the load saw both the old and the
/// new answer (`markers`) and not one failure; failures come with the
/// agent's drain log.
fn assert_no_failure(up: &Up, phase: &str, (answers, failures): (Vec<String>, Vec<String>), markers: (&str, &str)) {
    if !failures.is_empty() {
        eprintln!("failures: {failures:?}\nthe agent's drains and programming:\n{}", drain_log(up));
    }
    let old = answers.iter().filter(|b| b.contains(markers.0)).count();
    let new = answers.iter().filter(|b| b.contains(markers.1)).count();
    eprintln!(
        "during {phase}: {} answers ({old} with {}, {new} with {}), {} failures",
        answers.len(),
        markers.0,
        markers.1,
        failures.len()
    );
    assert!(old > 0 && new > 0, "the load saw both answers during {phase}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during {phase}: {:?}",
        failures.len(),
        answers.len() + failures.len(),
        &failures[..failures.len().min(5)]
    );
}
