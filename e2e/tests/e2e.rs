//! The provider on real wasmCloud hosts next to real components.
//!
//! - The echo example, deployed as `examples/wadm.yaml` describes, scaled out to two provider
//!   instances on two hosts: one connection to the WebSocket server, a frame from it reaches the
//!   echo component through the host once, and its `echo: ...` publish comes back on the same
//!   connection, whichever instance the call lands on. With `E2E_LOAD=<n>`, then a load: n
//!   frames through the provider and the host to the component, and its n publishes back, each
//!   echo counted by its subject (none missing, none twice); opt-in, with the host's
//!   `--max-execution-time-ms` from `E2E_MAX_EXECUTION_MS` (see the test).
//! - The chat example, deployed as `examples/chat/wadm.yaml` describes on one host (its listener
//!   moved to a free port): WebSocket clients in two rooms, then three headless Chromium pages of
//!   `examples/chat/index.html` (`tests/browser/chat.py`), see each room's messages and no other's.
//!
//! Both tests share one build of the provider and of both components (the first to ask builds).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::OnceCell;
use wasmcloud_provider_messaging_websocket_e2e::clients::WsClient;
use wasmcloud_provider_messaging_websocket_e2e::static_files::StaticFiles;
use wasmcloud_provider_messaging_websocket_e2e::ws::{Event, Message, WsServer};
use wasmcloud_provider_messaging_websocket_e2e::{
    artifacts, chat, deploy, nats, processes_running, repo_root, wait_until, HostSettings, Lattice,
};

const WAIT: Duration = Duration::from_secs(60);
/// The browser test's own waits are 20 s each; this bounds the whole run, Chromium's start included.
const BROWSER_WAIT: Duration = Duration::from_secs(180);

/// The provider and both example components, built once for every test of this binary (tests run
/// in parallel: the others wait for the first one's build).
async fn artifacts(say: &dyn Fn(&str)) -> &'static artifacts::Artifacts {
    static BUILT: OnceCell<artifacts::Artifacts> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            artifacts::build(&[artifacts::ECHO, artifacts::CHAT], say)
                .await
                .expect("artifacts build")
        })
        .await
}

/// The manifest as a user scales the provider out: a `spreadscaler` of `instances`, one per host
/// (in place of the scaler it has, if any).
fn scale_provider(manifest: &mut wadm_types::Manifest, instances: usize) {
    for component in &mut manifest.spec.components {
        if matches!(
            component.properties,
            wadm_types::Properties::Capability { .. }
        ) {
            let traits = component.traits.get_or_insert_with(Vec::new);
            traits.retain(|t| !t.is_scaler());
            traits.push(wadm_types::Trait::new_spreadscaler(
                wadm_types::SpreadScalerProperty {
                    instances,
                    spread: Vec::new(),
                },
            ));
        }
    }
}

/// Sets `key` in every config a link of the manifest carries (both sides), as a user edits the
/// manifest's link properties.
fn set_link_config(manifest: &mut wadm_types::Manifest, key: &str, value: &str) {
    for component in &mut manifest.spec.components {
        for t in component.traits.iter_mut().flatten() {
            let wadm_types::TraitProperty::Link(link) = &mut t.properties else {
                continue;
            };
            let source = link.source.iter_mut().flat_map(|s| s.config.iter_mut());
            for config in source.chain(link.target.config.iter_mut()) {
                if let Some(properties) = &mut config.properties {
                    properties.insert(key.to_string(), value.to_string());
                }
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Pushes `frame` every 500 ms until the server receives an answer (the handler link may join the
/// session a moment after the connection is up), and returns the answer and its connection.
async fn send_until_answered(server: &WsServer, frame: &str) -> (usize, Message) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        server.push(Message::text(frame.to_string()));
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            server.expect("answer", WAIT, |e| match e {
                Event::Frame { conn, message } => Some((*conn, message.clone())),
                _ => None,
            }),
        )
        .await;
        if let Ok(answer) = answer {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer from the component within {WAIT:?}"
        );
    }
}

/// Waits until 20 echoes in a row come back, each within 2 s. The echo's publish lands on either
/// provider instance, so that is 20 landings with (almost surely) both instances among them: an
/// instance that never got the link (a link put that reached its host before the instance
/// subscribed to link puts; wasmCloud 1.9 does not send it again) fails this, named, instead of
/// losing half the load's echoes.
async fn both_instances_answer(server: &WsServer) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut in_a_row = 0;
    let mut n = 0;
    while in_a_row < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "within {WAIT:?}, never 20 echoes in a row: a provider instance has no link (its \
             host's log and the provider's warnings 'no WebSocket link for component' say which)"
        );
        n += 1;
        server.push(Message::text(format!(
            r#"{{"subject":"ready.{n}","body":"{}"}}"#,
            b64(b"?")
        )));
        let answer = server.expect("echo", WAIT, |e| match e {
            Event::Frame { message, .. } => Some(message.clone()),
            _ => None,
        });
        match tokio::time::timeout(Duration::from_secs(2), answer).await {
            Ok(message)
                if message
                    .to_text()
                    .unwrap_or("")
                    .contains(&format!("ready.{n}.reply")) =>
            {
                in_a_row += 1
            }
            _ => in_a_row = 0,
        }
    }
}

/// Pushes `load` frames (`load.<i>`) to the echo component and counts its echoes by subject:
/// none may be missing or come twice.
async fn echo_load(server: &WsServer, load: usize, say: &dyn Fn(&str)) {
    say(&format!(
        "{load} frames to the component, {load} publishes back"
    ));
    both_instances_answer(server).await;
    // What the server recorded so far is read first: the count below is of the load's echoes.
    let earlier = server
        .subjects_until_quiet(Duration::from_millis(500))
        .await;
    assert!(earlier.iter().all(|s| !s.starts_with("load.")));
    let body = b64(b"0123456789abcdef");
    let load_started = std::time::Instant::now();
    let mut seen = vec![0u8; load];
    let (mut pushed, mut arrived, mut other) = (0, 0, 0);
    // Until every echo came, or none came for 30 s (longer than a call's deadline on the
    // provider, 10 s, and on the host, 10 s).
    while arrived < load {
        // Pushed lazily, at most WINDOW ahead of the echoes: the server does not read while it
        // writes, and the provider reads only as the component takes messages, so 100,000
        // frames written at once would hold up the echoes behind them.
        const WINDOW: usize = 2_000;
        if pushed < load && pushed - arrived.min(pushed) < WINDOW / 2 {
            let until = load.min(pushed + WINDOW / 2);
            server.push_many(
                (pushed..until)
                    .map(|i| Message::text(format!(r#"{{"subject":"load.{i}","body":"{body}"}}"#)))
                    .collect(),
            );
            pushed = until;
        }
        let quiet = Duration::from_secs(30);
        let Ok(frame) = tokio::time::timeout(quiet, server.frame(quiet * 2)).await else {
            break;
        };
        let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
        let id = value["subject"]
            .as_str()
            .and_then(|s| s.strip_prefix("load."))
            .and_then(|s| s.strip_suffix(".reply"))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&i| i < load);
        match id {
            Some(i) => {
                seen[i] = seen[i].saturating_add(1);
                arrived += 1;
            }
            None => other += 1,
        }
    }
    let missing = seen.iter().filter(|&&n| n == 0).count();
    let twice = seen.iter().filter(|&&n| n > 1).count();
    say(&format!(
        "{} of {load} echoes arrived in {:.1} s ({missing} missing, {twice} twice, {other} other frames)",
        load - missing,
        load_started.elapsed().as_secs_f64()
    ));
    assert_eq!(
        (missing, twice, other),
        (0, 0, 0),
        "every echo arrives once"
    );
    assert_eq!(server.accepted(), 1, "the session stayed up");
}

/// Every example manifest (examples/**/wadm.yaml), after the build, loads as `wash app deploy`
/// loads it: each relative `file://` image, resolved against the manifest's own folder, is a file
/// the build wrote.
#[tokio::test(flavor = "multi_thread")]
async fn every_example_manifest_finds_its_images_as_wash_resolves_them() {
    let say = |s: &str| eprintln!("[manifests] {s}");
    artifacts(&say).await;
    let mut manifests = Vec::new();
    let mut dirs = vec![repo_root().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !["target", "build", "wit"].iter().any(|n| path.ends_with(n)) {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "wadm.yaml") {
                manifests.push(path);
            }
        }
    }
    manifests.sort();
    let shown: Vec<_> = manifests
        .iter()
        .map(|p| wasmcloud_provider_messaging_websocket_e2e::shown(p))
        .collect();
    assert_eq!(shown, ["examples/chat/wadm.yaml", "examples/wadm.yaml"]);
    for path in &manifests {
        let manifest = deploy::load_manifest(path)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        for component in &manifest.spec.components {
            let image = match &component.properties {
                wadm_types::Properties::Capability { properties } => properties.image.clone(),
                wadm_types::Properties::Component { properties } => properties.image.clone(),
            };
            let image = image.unwrap();
            let file = image.strip_prefix("file://").expect("a local build");
            assert!(std::path::Path::new(file).is_file(), "{image}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_round_trip_through_real_hosts_with_two_provider_instances() {
    wasmcloud_provider_messaging_websocket_e2e::init_logging();
    let started = std::time::Instant::now();
    let say = |s: &str| eprintln!("[e2e {:>6.1}s] {s}", started.elapsed().as_secs_f64());
    let artifacts = artifacts(&say).await;
    let mut manifest = deploy::load_manifest(&repo_root().join("examples/wadm.yaml"))
        .await
        .unwrap();
    scale_provider(&mut manifest, 2);
    // Opt-in (`E2E_LOAD=100000`), minutes long. The host's own wRPC client (wrpc-transport-nats
    // 0.29) now and then drops the provider's handshake to a component's `publish`; that call
    // then waits until the host's `--max-execution-time-ms` (10 minutes by default) and, with
    // one instance, the component runs nothing else meanwhile (docs/operations.md, "Versions").
    // `E2E_MAX_EXECUTION_MS=<ms>` sets that host setting, as a user would on `wash up`.
    let load: usize = std::env::var("E2E_LOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut settings = HostSettings::default();
    if let Some(ms) = std::env::var("E2E_MAX_EXECUTION_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.max_execution_time = Duration::from_millis(ms);
    }
    if load > 0 {
        set_link_config(&mut manifest, "max_in_flight", "16");
    }

    say("built");
    let server = WsServer::recorder().await;
    let lattice = Lattice::start_hosts_with(&format!("e2e-{}", std::process::id()), 2, settings)
        .await
        .unwrap();
    let overrides = HashMap::from([("uri".to_string(), server.uri())]);
    say("deploying examples/wadm.yaml with the provider at instances: 2");
    let deployed = deploy::deploy(&lattice.ctl, &lattice.host_ids, &manifest, &overrides)
        .await
        .unwrap();
    assert_eq!(deployed.links.len(), 2);
    let caches: Vec<_> = lattice
        .host_ids
        .iter()
        .map(|h| Lattice::cache_of(h))
        .collect();
    // Each host starts its instance on its own; the deploy waited for the first healthy one.
    for cache in &caches {
        wait_until(
            &format!("a provider instance runs from {}", cache.display()),
            WAIT,
            || async { !processes_running(cache).is_empty() },
        )
        .await;
    }
    assert!(artifacts.provider_archive.is_file());

    say("deployed");
    let (first_conn, _) = server.connected(WAIT).await;
    // Without reply_to: the component answers to `<subject>.reply`.
    let frame = format!(
        r#"{{"subject":"demo.hello","body":"{}"}}"#,
        b64(b"hello from the server")
    );
    let (conn, answer) = send_until_answered(&server, &frame).await;
    assert_eq!(
        conn, first_conn,
        "the answer comes back on the same connection"
    );
    assert_eq!(
        answer.to_text().unwrap(),
        format!(
            r#"{{"subject":"demo.hello.reply","body":"{}"}}"#,
            b64(b"echo: hello from the server")
        )
    );

    // With reply_to, and every byte value in the body.
    let body: Vec<u8> = (0..=255u8).collect();
    let frame = format!(
        r#"{{"subject":"demo.bytes","body":"{}","reply_to":"_INBOX.e2e.1"}}"#,
        b64(&body)
    );
    // Again until answered: the component's publish may land on the other instance before
    // that one has handled its link's put ("no WebSocket link for component ...").
    let (conn, answer) = send_until_answered(&server, &frame).await;
    let mut expected = b"echo: ".to_vec();
    expected.extend_from_slice(&body);
    assert_eq!(conn, first_conn);
    assert_eq!(
        answer.to_text().unwrap(),
        format!(
            r#"{{"subject":"_INBOX.e2e.1","body":"{}"}}"#,
            b64(&expected)
        )
    );
    assert_eq!(
        server.accepted(),
        1,
        "one connection: one of the two instances holds the session, and the consumer and handler links share it"
    );
    say("both round trips done");

    // Load: frames from the server through the provider and the host to the component, and as
    // many publishes back (the host's wRPC is wrpc-transport-nats 0.29 on both calls).
    if load > 0 {
        echo_load(&server, load, &say).await;
    }

    say("deleting the links");
    deploy::delete_links(&lattice.ctl, &deployed).await.unwrap();
    let close = server
        .expect("Close frame", WAIT, |e| match e {
            Event::Closed { conn, frame } if *conn == first_conn => {
                Some(frame.as_ref().map(|f| u16::from(f.code)))
            }
            _ => None,
        })
        .await;
    assert_eq!(close, Some(1000));

    say("stopping the provider instances");
    for (host, cache) in lattice.host_ids.iter().zip(&caches) {
        let response = lattice
            .ctl
            .stop_provider(host, &deployed.provider_id)
            .await
            .expect("stop request answered");
        assert!(response.succeeded(), "{}", response.message());
        wait_until("the provider process is gone", WAIT, || async {
            processes_running(cache).is_empty()
        })
        .await;
    }
    lattice.stop().await.unwrap();
}

fn chat_frame(subject: &str, name: &str, text: &str) -> serde_json::Value {
    let body = serde_json::json!({ "name": name, "text": text }).to_string();
    serde_json::json!({ "subject": subject, "body": b64(body.as_bytes()) })
}

/// The next message's subject and body, the fields the checks compare; presence events (who
/// joined or left a room) are skipped.
async fn next_message(client: &mut WsClient, limit: Duration) -> serde_json::Value {
    loop {
        let frame = client.json(limit).await;
        if frame.get("joined").is_none() && frame.get("left").is_none() {
            return serde_json::json!({ "subject": frame["subject"], "body": frame["body"] });
        }
    }
}

/// Sends `frame` from `client` until it comes back to it, allowing only copies of `also` (frames
/// resent before) to arrive first. A first delivery may reach the component before the provider
/// has the consumer link the component publishes through, so a frame that is not back within 5 s
/// is sent again.
async fn send_until_back(
    client: &mut WsClient,
    frame: &serde_json::Value,
    also: &[&serde_json::Value],
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    'send: loop {
        client.send_text(frame.to_string());
        let resend = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(resend, next_message(client, WAIT)).await {
                Ok(got) if &got == frame => return,
                Ok(got) if also.contains(&&got) => {}
                Ok(got) => panic!("expected {frame} back, got {got}"),
                Err(_) if tokio::time::Instant::now() < deadline => continue 'send,
                Err(_) => panic!("{frame} did not come back within {WAIT:?}"),
            }
        }
    }
}

/// Takes frames until `frame` arrives, allowing only copies of `also` (resent copies) before it.
async fn receive_skipping(
    client: &mut WsClient,
    frame: &serde_json::Value,
    also: &[&serde_json::Value],
) {
    loop {
        let got = next_message(client, WAIT).await;
        if &got == frame {
            return;
        }
        assert!(also.contains(&&got), "expected {frame}, got {got}");
    }
}

/// Three tokio-tungstenite clients of the listener: alice and bob in `chat.lobby`, carol in
/// `chat.garden`. What alice says reaches alice and bob; carol's own message comes back to her
/// first (had she been in the lobby too, alice's would have come before it, on the same queue);
/// bob's answer reaches alice with nothing of the garden before it.
async fn rooms_over_websocket(ws: &str) {
    let mut clients = Vec::new();
    for room in ["chat.lobby", "chat.lobby", "chat.garden"] {
        let mut client = WsClient::connect(ws)
            .await
            .unwrap_or_else(|code| panic!("connecting to {ws}: HTTP {code}"));
        assert_eq!(
            client.subscribe(room).await,
            serde_json::json!({ "ok": room }),
            "subscribing to {room}"
        );
        clients.push(client);
    }
    let [mut alice, mut bob, mut carol] = <[WsClient; 3]>::try_from(clients).ok().unwrap();

    let hello = chat_frame("chat.lobby", "alice", "hello lobby, caf\u{e9} \u{2713}");
    send_until_back(&mut alice, &hello, &[]).await;
    receive_skipping(&mut bob, &hello, &[]).await;

    let garden = chat_frame("chat.garden", "carol", "hello garden");
    send_until_back(&mut carol, &garden, &[]).await;

    let answer = chat_frame("chat.lobby", "bob", "hello alice");
    send_until_back(&mut bob, &answer, &[&hello]).await;
    // alice may hold resent copies of her own message; nothing of the garden may come before.
    receive_skipping(&mut alice, &answer, &[&hello]).await;
    for client in [alice, bob, carol] {
        client.close();
    }
}

/// Runs `tests/browser/chat.py` against the page at `page` and the listener at `ws`, in a process
/// group of its own, so that a run over its deadline is killed with its Chromiums.
async fn browser_test(page: &str, ws: &str) -> (std::process::ExitStatus, String) {
    let python = chat::browser_python().unwrap_or_else(|e| panic!("{e:#}"));
    let shots = repo_root().join("target/browser-shots");
    let child = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/browser/chat.py"))
        .args(["--page", page, "--ws", ws, "--shots"])
        .arg(&shots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("tests/browser/chat.py starts");
    let group = child.id().expect("a running child");
    match tokio::time::timeout(BROWSER_WAIT, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("chat.py's output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status, text)
        }
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            panic!("tests/browser/chat.py did not finish within {BROWSER_WAIT:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_rooms_through_a_real_host_for_websocket_clients_and_a_browser() {
    wasmcloud_provider_messaging_websocket_e2e::init_logging();
    let started = std::time::Instant::now();
    let say = |s: &str| eprintln!("[chat {:>6.1}s] {s}", started.elapsed().as_secs_f64());
    // Before minutes of building: a machine without the browser fails here, saying what to run.
    chat::browser_python().unwrap_or_else(|e| panic!("{e:#}"));
    artifacts(&say).await;
    assert!(artifacts::CHAT.wasm().is_file());

    let manifest = deploy::load_manifest(&chat::manifest_path()).await.unwrap();
    let (listen, path) = chat::listener(&manifest).unwrap();
    assert_eq!(
        (listen.as_str(), path.as_str()),
        ("127.0.0.1:8766", "/chat")
    );
    // Another port than the manifest's: the demo (or anything) may hold 8766 on this machine.
    let listen = format!("127.0.0.1:{}", nats::free_port());
    let ws = chat::ws_url(&listen, &path);
    let lattice = Lattice::start(&format!("e2e-chat-{}", std::process::id()))
        .await
        .unwrap();
    say(&format!(
        "deploying examples/chat/wadm.yaml with listen {listen}"
    ));
    let overrides = HashMap::from([("listen".to_string(), listen.clone())]);
    let deployed = deploy::deploy(&lattice.ctl, &lattice.host_ids, &manifest, &overrides)
        .await
        .unwrap();
    assert_eq!(deployed.links.len(), 2);
    assert_eq!(deployed.component_id, "websocket-chat-component");
    for (name, config) in &deployed.configs {
        assert_eq!(config["listen"], listen, "config {name}");
    }
    chat::wait_listening(&ws, WAIT).await.unwrap();
    say(&format!("{ws} takes WebSocket clients"));

    rooms_over_websocket(&ws).await;
    say("WebSocket clients: each room got its own messages only");

    let files = StaticFiles::serve(&chat::page_dir(), 0).await.unwrap();
    let page = files.url("index.html");
    let index = http_get(&page).await;
    assert!(
        index.starts_with("HTTP/1.1 200 OK") && index.contains("<title>Chat</title>"),
        "{page} serves the page: {index:.200}"
    );
    say(&format!(
        "serving examples/chat/ at {page}; running tests/browser/chat.py"
    ));
    let (status, output) = browser_test(&page, &ws).await;
    eprintln!("{output}");
    assert!(
        status.success(),
        "tests/browser/chat.py --page {page} --ws {ws} failed ({status}):\n{output}"
    );
    say("browser: done");

    deploy::delete_links(&lattice.ctl, &deployed).await.unwrap();
    let cache = lattice.provider_cache();
    let response = lattice
        .ctl
        .stop_provider(&lattice.host_id, &deployed.provider_id)
        .await
        .expect("stop request answered");
    assert!(response.succeeded(), "{}", response.message());
    wait_until("the provider process is gone", WAIT, || async {
        processes_running(&cache).is_empty()
    })
    .await;
    lattice.stop().await.unwrap();
}

/// A plain `GET` of `url` (http://127.0.0.1:port/...), the whole response as text.
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .expect("the page within 10 s")
        .expect("the page server answers")
}
