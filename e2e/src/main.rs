//! The demo: builds the provider and the echo component, starts nats-server, a wasmCloud host and a
//! WebSocket server, deploys `examples/wadm.yaml`, and shows messages flowing both ways.
//!
//! `demo` sends three messages and exits cleanly; `demo --forever` keeps sending until Ctrl-C.
//!
//! `demo chat` runs the chat example instead: builds the provider and the chat component, starts
//! nats-server and a host, deploys `examples/chat/wadm.yaml` (the provider listens on the
//! manifest's `listen`, 127.0.0.1:8766), serves `examples/chat/` over HTTP on 127.0.0.1:8080 (a
//! free port if that one is taken), says which URL to open, and runs until Ctrl-C (or SIGTERM).
//!
//! The host runs in this process and starts the provider as a child that inherits this process's
//! stdout and stderr, where the provider logs. So that the narration stays readable, the demo
//! points both descriptors at a log file once the builds are done (the host's log and anything a
//! child prints go there) and writes the narration to a duplicate of the terminal's stdout taken
//! just before. `demo --verbose` leaves both on the terminal, the logs interleaved with the
//! narration.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use wasmcloud_provider_messaging_websocket_e2e::static_files::StaticFiles;
use wasmcloud_provider_messaging_websocket_e2e::ws::{Event, Message, WsServer};
use wasmcloud_provider_messaging_websocket_e2e::{
    artifacts, chat, deploy, processes_running, repo_root, shown, Lattice,
};

/// Where the chat demo serves its page, unless something else already listens there.
const CHAT_PAGE_PORT: u16 = 8080;

/// Where the narration goes: the terminal, also after stdout and stderr were sent to the log.
mod narration {
    use std::fs::File;
    use std::io::{self, Write as _};
    use std::os::fd::{AsFd as _, AsRawFd as _};
    use std::path::Path;
    use std::sync::{Mutex, OnceLock};

    /// A duplicate of stdout as it was before [`divert`]; unset until then.
    static TERMINAL: OnceLock<Mutex<File>> = OnceLock::new();

    extern "C" {
        /// POSIX `dup2`, from the C library every Rust program on Unix links.
        fn dup2(old: i32, new: i32) -> i32;
    }

    /// Writes one line of narration where the reader sees it.
    pub fn line(text: &str) {
        let line = format!("{text}\n");
        match TERMINAL.get() {
            Some(terminal) => {
                let mut terminal = terminal.lock().unwrap_or_else(|e| e.into_inner());
                let _ = terminal.write_all(line.as_bytes());
            }
            None => {
                let mut stdout = io::stdout().lock();
                let _ = stdout.write_all(line.as_bytes());
                let _ = stdout.flush();
            }
        }
    }

    /// Points this process's stdout and stderr (descriptors 1 and 2) at `log`, truncated: what
    /// the host logs and what its children (the provider) print goes there from now on, since
    /// children inherit both. [`line`] keeps writing to the terminal.
    pub fn divert(log: &Path) -> io::Result<()> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::create(log)?;
        io::stdout().flush()?;
        // Close-on-exec (std's duplicate is): the provider never holds the terminal.
        let terminal = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        let _ = TERMINAL.set(Mutex::new(terminal));
        for fd in [1, 2] {
            // SAFETY: both descriptors are open; dup2 replaces `fd` atomically, and std's
            // stdout and stderr keep writing to descriptor 1 and 2, whatever they are.
            if unsafe { dup2(file.as_raw_fd(), fd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Once the builds are done: with `log`, sends this process's stdout and stderr (the host's log
/// and the provider's) to that file; then starts the host's own log (RUST_LOG, by default
/// warnings) on stderr: the log file, or the terminal with --verbose.
fn start_logging(log: Option<&Path>) -> anyhow::Result<()> {
    if let Some(log) = log {
        narration::divert(log)
            .with_context(|| format!("failed to send the log to {}", shown(log)))?;
        // A panic's message goes to stderr, now the log: say it on the terminal too.
        let log: PathBuf = log.to_path_buf();
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            say(&format!("the demo panicked: {info} (see {})", shown(&log)));
            report(info);
        }));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}

fn say(line: &str) {
    narration::line(&format!("==> {line}"));
}

fn show(frame: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(frame) else {
        return frame.to_string();
    };
    let body = value["body"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    format!("{frame}   (subject {}, body {body:?})", value["subject"])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let forever = std::env::args().any(|a| a == "--forever");
    let verbose = std::env::args().any(|a| a == "--verbose");
    let chat = std::env::args().skip(1).any(|a| a == "chat");
    let log_file = repo_root().join("target/demo/provider.log");
    if verbose {
        say("the provider's and the host's log are shown here (--verbose)");
    } else {
        say(&format!(
            "the provider's and the host's log go to {} (--verbose shows them here)",
            shown(&log_file)
        ));
    }
    let log = (!verbose).then_some(log_file.as_path());
    let result = if chat {
        run_chat(log).await
    } else {
        run(forever, log).await
    };
    match &result {
        Ok(()) => match log {
            None => say("done"),
            Some(log) => say(&format!(
                "done (the provider's and the host's log: {})",
                shown(log)
            )),
        },
        Err(e) => {
            say(&format!("the demo failed: {e:#}"));
            if let Some(log) = log {
                say(&format!(
                    "the provider's and the host's log: {}",
                    shown(log)
                ));
            }
        }
    }
    result
}

/// The demo; with `log`, the host's and the provider's output go to that file once the builds
/// are done.
async fn run(forever: bool, log: Option<&Path>) -> anyhow::Result<()> {
    say("building the provider and the echo component (the first build takes a few minutes)");
    artifacts::build(&[artifacts::ECHO], &|line| say(line)).await?;
    start_logging(log)?;

    let manifest_path = repo_root().join("examples/wadm.yaml");
    let manifest = deploy::load_manifest(&manifest_path).await?;
    say("starting nats-server with JetStream and a wasmCloud host");
    let lattice = Lattice::start("websocket-demo").await?;
    say(&format!(
        "nats-server at {}, host {}",
        lattice.nats.url, lattice.host_id
    ));

    let server = WsServer::recorder().await;
    say(&format!("WebSocket server listening on {}", server.uri()));
    let overrides = HashMap::from([("uri".to_string(), server.uri())]);
    say(&format!(
        "deploying {} (uri set to the demo server)",
        shown(&manifest_path)
    ));
    let deployed = deploy::deploy(&lattice.ctl, &lattice.host_ids, &manifest, &overrides).await?;
    say(&format!(
        "provider {} and component {} running, {} links put",
        deployed.provider_id,
        deployed.component_id,
        deployed.links.len()
    ));
    let (conn, _) = server.connected(Duration::from_secs(60)).await;
    say(&format!(
        "the provider connected to the WebSocket server (connection {conn})"
    ));

    let mut n = 0;
    loop {
        n += 1;
        let body = format!("hello #{n}");
        let frame = serde_json::json!({
            "subject": "demo.greetings",
            "body": base64::engine::general_purpose::STANDARD.encode(&body),
        })
        .to_string();
        narration::line(&format!("server    -> component: {}", show(&frame)));
        server.push(Message::text(frame));
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            server.expect("answer", Duration::from_secs(10), |e| match e {
                Event::Frame { message, .. } => {
                    Some(message.to_text().unwrap_or_default().to_string())
                }
                _ => None,
            }),
        )
        .await;
        match answer {
            Ok(answer) => narration::line(&format!("component -> server:    {}", show(&answer))),
            Err(_) => narration::line(
                "(no answer within 5 s: the handler link may still be joining; sending again)",
            ),
        }
        if !forever && n >= 3 {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }

    say("deleting the links (the provider sends a Close frame) and stopping the provider");
    deploy::delete_links(&lattice.ctl, &deployed).await?;
    let code = server
        .expect("Close frame", Duration::from_secs(10), |e| match e {
            Event::Closed { frame, .. } => Some(frame.as_ref().map(|f| u16::from(f.code))),
            _ => None,
        })
        .await;
    say(&format!(
        "the server got the provider's Close frame (code {})",
        code.unwrap_or_default()
    ));
    let response = lattice
        .ctl
        .stop_provider(&lattice.host_id, &deployed.provider_id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("failed to stop the provider")?;
    anyhow::ensure!(
        response.succeeded(),
        "stopping the provider: {}",
        response.message()
    );
    lattice.stop().await?;
    Ok(())
}

/// The chat demo; `log` as in [`run`].
async fn run_chat(log: Option<&Path>) -> anyhow::Result<()> {
    say("building the provider and the chat component (the first build takes a few minutes)");
    artifacts::build(&[artifacts::CHAT], &|line| say(line)).await?;
    start_logging(log)?;

    let manifest_path = chat::manifest_path();
    let manifest = deploy::load_manifest(&manifest_path).await?;
    let (listen, path) = chat::listener(&manifest)?;
    // The provider would log a failed bind and the browsers would reach whatever holds the port:
    // say so before starting anything.
    std::net::TcpListener::bind(&listen).with_context(|| {
        format!(
            "{listen} (the `listen` of {}) is taken: stop what listens there",
            shown(&manifest_path)
        )
    })?;
    let ws = chat::ws_url(&listen, &path);

    say("starting nats-server with JetStream and a wasmCloud host");
    let lattice = Lattice::start("websocket-chat-demo").await?;
    say(&format!(
        "nats-server at {}, host {}",
        lattice.nats.url, lattice.host_id
    ));
    say(&format!(
        "deploying {} (the provider listens on {ws})",
        shown(&manifest_path)
    ));
    let deployed =
        deploy::deploy(&lattice.ctl, &lattice.host_ids, &manifest, &HashMap::new()).await?;
    say(&format!(
        "provider {} and component {} running, {} links put",
        deployed.provider_id,
        deployed.component_id,
        deployed.links.len()
    ));
    chat::wait_listening(&ws, Duration::from_secs(60)).await?;
    say(&format!("{ws} takes WebSocket connections"));

    let files = match StaticFiles::serve(&chat::page_dir(), CHAT_PAGE_PORT).await {
        Ok(files) => files,
        Err(_) => StaticFiles::serve(&chat::page_dir(), 0).await?,
    };
    let page = files.url("index.html");
    say(&format!(
        "serving {} at {}",
        shown(&chat::page_dir()),
        files.url("")
    ));
    say(&format!(
        "open {} in a browser, in two tabs or more (add &name=you; another room: room=garden)",
        chat::page_url(&page, &ws, "lobby")
    ));
    say("running until Ctrl-C");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(files);
    // Ctrl-C in a terminal reaches the whole process group: nats-server and the provider stop
    // with the demo, and nothing is left to stop through the lattice (each step would only wait
    // out its timeout). A SIGTERM to the demo alone leaves them running: stop them in order.
    if !nats_survives(&lattice.ctl.nats_client()).await {
        say("stopping (nats-server and the provider got the signal too)");
        // What `Lattice::stop` would remove: the host's copy of the provider binary.
        let _ = std::fs::remove_dir_all(lattice.provider_cache());
        return Ok(());
    }
    say("stopping: deleting the links, stopping the provider and the host");
    let cache = lattice.provider_cache();
    let stop = async {
        deploy::delete_links(&lattice.ctl, &deployed).await?;
        let response = lattice
            .ctl
            .stop_provider(&lattice.host_id, &deployed.provider_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("failed to stop the provider")?;
        anyhow::ensure!(
            response.succeeded(),
            "stopping the provider: {}",
            response.message()
        );
        while !processes_running(&cache).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lattice.stop().await
    };
    tokio::time::timeout(Duration::from_secs(20), stop)
        .await
        .context("stopping took more than 20 s")?
}

/// Whether `nats` stays connected for a moment: the server a Ctrl-C also reached closes its
/// connections within milliseconds.
async fn nats_survives(nats: &async_nats::Client) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        if nats.connection_state() != async_nats::connection::State::Connected {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
