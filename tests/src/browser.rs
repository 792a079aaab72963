//! A real browser for the status page: Debian's `chromium`, headless. [`chromium`] runs a
//! page in virtual time and dumps it (with [`cutting_proxy`] to cut the page's never-ending
//! live feed so that virtual time can run on); [`Devtools`] drives a page in real time over
//! the DevTools protocol, for benchmarks that time the page's own work.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// The switches every headless run uses.
const HEADLESS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-first-run",
    "--window-size=1400,860",
];

/// Headless Chromium on `url`: `--dump-dom` (returned) or a `--screenshot` into `png`,
/// after letting the page run for `budget_ms` of virtual time.
pub fn chromium(url: &str, budget_ms: u64, png: Option<&Path>) -> String {
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let mut command = Command::new(crate::find_exe("chromium"));
    command
        .args(HEADLESS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"));
    match png {
        Some(p) => command.arg(format!("--screenshot={}", p.display())),
        None => command.arg("--dump-dom"),
    };
    let child = command
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let pid = child.id();
    // A browser that hangs must not hang the suite.
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..1200 {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        })
    };
    let out = child.wait_with_output().expect("chromium's output");
    done.store(true, Ordering::Relaxed);
    watchdog.join().expect("the browser watchdog");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback proxy in front of `upstream` that ends every connection after `life`: a
/// headless browser's virtual time stands still while a response is still loading, so the
/// page's live feed (which never ends by itself) is cut after it has delivered the snapshot
/// and some batches of changes. Returns the proxy's address.
pub fn cutting_proxy(upstream: &str, life: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener
        .local_addr()
        .expect("the proxy's address")
        .to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                })
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            pipe(client, server);
            let Ok(c3) = c2.try_clone() else { continue };
            pipe(s2, c3);
            std::thread::spawn(move || {
                std::thread::sleep(life);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// Headless Chromium driven over the DevTools protocol (`--remote-debugging-pipe`: requests
/// on the browser's fd 3, answers on its fd 4, each a JSON text ended by a NUL), in real
/// time: one page, JavaScript evaluated in it. A command unanswered for a minute fails the
/// caller; the browser is killed on drop.
pub struct Devtools {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Devtools {
    /// A browser showing `url`.
    pub fn open(url: &str) -> Self {
        let profile = tempfile::tempdir().expect("a browser profile directory");
        // The shell hands our pipes to the browser as fds 3 and 4 (no unsafe fd juggling).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null"#)
            .arg(crate::find_exe("chromium"))
            .args(HEADLESS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let to = child.stdin.take().expect("chromium's pipe");
        let (tx, from) = mpsc::channel();
        let mut pipe = BufReader::new(child.stdout.take().expect("chromium's pipe"));
        std::thread::spawn(move || loop {
            let mut buf = Vec::new();
            match pipe.read_until(0, &mut buf) {
                Ok(n) if n > 0 => {
                    buf.pop();
                    let v = serde_json::from_slice(&buf).expect("DevTools JSON");
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        });
        let mut d = Devtools {
            child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = d.call("Target.createTarget", serde_json::json!({ "url": url }));
        let target = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = d.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target, "flatten": true }),
        );
        d.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        d
    }

    /// Sends one command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            let v = match self.from.recv_timeout(Duration::from_secs(60)) {
                Ok(v) => v,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("chromium did not answer {method}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("chromium closed the DevTools pipe during {method}")
                }
            };
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (`null` if it throws).
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }
}

impl Drop for Devtools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
