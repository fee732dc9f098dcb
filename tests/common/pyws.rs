//! A WebSocket server of another implementation: Python `websockets` (tests/pyws/server.py),
//! which negotiates permessage-deflate when the client offers it and reports every frame's size
//! on the wire. Its Python is `target/pyws-venv` (made by scripts/setup.sh), or `PYWS_PYTHON`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

pub struct PyWsServer {
    pub port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    changed: Arc<Notify>,
    _child: Child,
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("PYWS_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyws-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/setup.sh (it installs Python websockets for these tests)",
        venv.display()
    );
    venv
}

/// Starts `tests/pyws/<script>` with `args` under the venv's Python, its stdin and stdout piped
/// (each script speaks JSON lines on them), its stderr the test's; killed when dropped.
pub fn spawn(script: &str, args: &[&str]) -> Child {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pyws")
        .join(script);
    Command::new(python())
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts")
}

impl PyWsServer {
    /// Starts tests/pyws/server.py in `mode` (`echo`, `decline`, `bomb <n>`).
    pub async fn start(args: &[&str]) -> Self {
        let mut child = spawn("server.py", args);
        let events = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn({
            let events = Arc::clone(&events);
            let changed = Arc::clone(&changed);
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let event: Value = serde_json::from_str(&line).expect("the server prints JSON");
                    events.lock().unwrap().push(event);
                    changed.notify_waiters();
                }
            }
        });
        let mut server = PyWsServer {
            port: 0,
            events,
            changed,
            _child: child,
        };
        let listening = server
            .wait_event("listening", |_| true, Duration::from_secs(20))
            .await;
        server.port = listening["port"].as_u64().unwrap() as u16;
        server
    }

    pub fn uri(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Every event of kind `kind` so far.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == kind)
            .cloned()
            .collect()
    }

    /// Waits for an event of kind `kind` for which `matching` holds.
    pub async fn wait_event(
        &self,
        kind: &str,
        matching: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(event) = self.events(kind).into_iter().find(|e| matching(e)) {
                return event;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no {kind} event within {limit:?}; the server's events: {:?}",
                    self.events.lock().unwrap()
                );
            }
        }
    }
}

/// A WebSocket client of another implementation: Python `websockets` (tests/pyws/client.py),
/// driven by commands on its stdin; it offers permessage-deflate and compresses when accepted.
pub struct PyWsClient {
    stdin: tokio::process::ChildStdin,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    _child: Child,
}

impl PyWsClient {
    /// Connects to `url`; returns once connected (the `connected` event, with the extensions).
    pub async fn connect(url: &str) -> (Self, Value) {
        let mut child = spawn("client.py", &[url]);
        let stdin = child.stdin.take().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let event: Value = serde_json::from_str(&line).expect("the client prints JSON");
                let _ = tx.send(event);
            }
        });
        let mut client = PyWsClient {
            stdin,
            events,
            _child: child,
        };
        let connected = client.event(Duration::from_secs(20)).await;
        assert_eq!(connected["event"], "connected", "{connected}");
        (client, connected)
    }

    /// Sends one command (see tests/pyws/client.py).
    pub async fn command(&mut self, command: Value) {
        use tokio::io::AsyncWriteExt as _;
        let mut line = serde_json::to_vec(&command).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next event, within `limit`.
    pub async fn event(&mut self, limit: Duration) -> Value {
        match tokio::time::timeout(limit, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the Python client ended without a word"),
            Err(_) => panic!("no event from the Python client within {limit:?}"),
        }
    }
}
