//! A real `nats-server` child process on a free port of 127.0.0.1.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::wait_until;

pub struct NatsServer {
    pub url: String,
    /// The port of the server's HTTP monitoring (`/varz`).
    pub monitor_port: u16,
    child: Child,
    /// JetStream's store, removed on drop.
    store: Option<std::path::PathBuf>,
}

/// `$NATS_SERVER_BIN`, else `nats-server` on PATH, else Debian's `/usr/sbin/nats-server`.
fn binary() -> String {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin;
    }
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file())
    });
    if on_path {
        "nats-server".into()
    } else {
        "/usr/sbin/nats-server".into()
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl NatsServer {
    /// With JetStream, as in every wasmCloud lattice (the host's config and data buckets, wadm,
    /// and the provider's leases of `replicas = one`).
    pub async fn start() -> Self {
        let store =
            std::env::temp_dir().join(format!("nats-js-{}-{}", std::process::id(), free_port()));
        Self::launch(Some(store)).await
    }

    /// The same; kept for the end-to-end test, which says what it needs.
    pub async fn start_with_jetstream() -> Self {
        Self::start().await
    }

    /// Core NATS only: a lattice the provider cannot coordinate replicas on.
    pub async fn start_without_jetstream() -> Self {
        Self::launch(None).await
    }

    /// With JetStream, as [`NatsServer::start`], and the settings of `conf` (nats-server's
    /// configuration syntax, e.g. a `websocket { .. }` block) from a file passed with `-c`; the
    /// flags (address, ports, JetStream) still apply.
    pub async fn start_with_config(conf: &str) -> Self {
        let tag = format!("{}-{}", std::process::id(), free_port());
        let store = std::env::temp_dir().join(format!("nats-js-{tag}"));
        let file = std::env::temp_dir().join(format!("nats-conf-{tag}.conf"));
        std::fs::write(&file, conf).expect("the nats-server config file is written");
        Self::launch_with(Some(store), &["-c".into(), file.display().to_string()]).await
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn launch(store: Option<std::path::PathBuf>) -> Self {
        Self::launch_with(store, &[]).await
    }

    async fn launch_with(store: Option<std::path::PathBuf>, extra: &[String]) -> Self {
        // The server picks its own port (-1) and says which: a port chosen here and released
        // could be taken by another test's listener before the server binds it.
        let mut args = vec![
            "-a".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            "-1".into(),
            // Monitoring on a port of its choosing too: tests read its subscription count.
            "-m".into(),
            "-1".into(),
        ];
        if let Some(store) = &store {
            args.extend(["-js".into(), "-sd".into(), store.display().to_string()]);
        }
        args.extend_from_slice(extra);
        // `TEST_NATS_TRACE=<folder>`: the server traces its protocol (`-V`: every PUB, SUB and MSG
        // with its subject and reply subject) into a file there, to see which side of a wRPC call
        // lost what.
        let trace = std::env::var_os("TEST_NATS_TRACE").map(std::path::PathBuf::from);
        if trace.is_some() {
            args.push("-V".into());
        }
        let mut child = Command::new(binary())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts (install it: apt-get install nats-server, or set NATS_SERVER_BIN)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port_after = |line: &str, what: &str| {
            line.split_once(what)
                .and_then(|(_, addr)| addr.rsplit_once(':'))
                .and_then(|(_, port)| port.trim().parse::<u16>().ok())
        };
        // The monitor's line comes first, then the clients'.
        let (monitor_port, port) = tokio::time::timeout(Duration::from_secs(10), async {
            let mut monitor = None;
            while let Ok(Some(line)) = lines.next_line().await {
                monitor = monitor.or_else(|| port_after(&line, "Starting http monitor on "));
                if let Some(port) = port_after(&line, "Listening for client connections on ") {
                    return monitor.map(|m| (m, port));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("nats-server says which ports it listens on");
        // The trace file is unbuffered: the reading task is dropped with the runtime, and nothing it
        // read may stay unwritten.
        let mut trace = trace.map(|dir| {
            std::fs::create_dir_all(&dir).expect("the trace folder is made");
            let path = dir.join(format!("nats-{}-{port}.log", std::process::id()));
            eprintln!("nats-server traces into {}", path.display());
            std::fs::File::create(path).expect("the trace file is made")
        });
        // Keep reading its log, so that it never writes into a closed pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = &mut trace {
                    use std::io::Write as _;
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        let url = format!("nats://127.0.0.1:{port}");
        wait_until(
            "nats-server accepts connections",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        NatsServer {
            url,
            monitor_port,
            child,
            store,
        }
    }

    /// How many subscriptions the server holds now, from its monitoring (`/varz`).
    pub async fn subscriptions(&self) -> u64 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.monitor_port))
            .await
            .expect("the monitoring port answers");
        stream
            .write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response);
        let (_, body) = response
            .split_once("\r\n\r\n")
            .expect("an HTTP response with a body");
        let varz: serde_json::Value = serde_json::from_str(body).expect("/varz is JSON");
        varz["subscriptions"]
            .as_u64()
            .expect("/varz counts subscriptions")
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .expect("connect to nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(store) = &self.store {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}
