//! clients/js/wsgateway.js in headless Chromium against the real provider binary: the provider
//! listens with JWTs, history, presence, presence events and client publish; this test plays
//! the component (it answers what clients send, and broadcasts), and tests/browser/client.py
//! drives two pages. During a broadcast the component closes one page's connection: the
//! library must reconnect and recover, so that both pages get every broadcast once, in order.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::component::Behaviour;
use common::nats::free_port;
use common::replicas::Replicas;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const LIMIT: Duration = Duration::from_secs(20);
/// The whole browser run, Chromium's start included.
const BROWSER_WAIT: Duration = Duration::from_secs(180);
const SECRET: &str = "a-secret-of-thirty-two-bytes-xyz";
const MESSAGES: usize = 600;

fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn browser_python() -> std::path::PathBuf {
    let python = repo_root().join("target/browser-venv/bin/python");
    for needed in [
        python.clone(),
        "/usr/bin/chromium".into(),
        "/usr/bin/chromedriver".into(),
    ] {
        assert!(
            needed.exists(),
            "{} is missing: the browser tests need Chromium, chromedriver and Selenium; install them with `. scripts/setup.sh; setup_browser`",
            needed.display()
        );
    }
    python
}

fn token(user: &str) -> String {
    common::hs256_jwt(SECRET, user, &["news.>", "room.1", "ask.>"])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_js_client_reconnects_and_recovers_in_a_real_browser() {
    let python = browser_python();
    let mut replicas = Replicas::start(1, &[]).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let config = [
        ("listen", addr.as_str()),
        ("jwt_secret", SECRET),
        ("history_size", "1000"),
        ("presence", "true"),
        ("presence_events", "true"),
        ("client_publish", "true"),
    ];
    replicas.listen_both_ways("page", &config).await;
    replicas.all[0]
        .logs
        .wait_for(&["a listener keeps its broadcasts"], LIMIT)
        .await;
    let component = replicas.component("page").await;
    component.set_behaviour(Behaviour {
        answer_through: Some("default".into()),
        ..Behaviour::default()
    });

    let mut child = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/browser/client.py"))
        .args(["--ws", &format!("ws://{addr}/")])
        .args(["--ann-token", &token("ann"), "--ben-token", &token("ben")])
        .args(["--messages", &MESSAGES.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("tests/browser/client.py starts");
    let group = child.id().expect("a running child");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let run = async {
        let mut said = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("client.py: {line}");
            said.push(line.clone());
            if line != "ready broadcast" {
                continue;
            }
            for i in 0..MESSAGES {
                if i == MESSAGES / 3 {
                    let ann = component
                        .client_entries()
                        .await
                        .into_iter()
                        .find(|e| e["user"] == "ann")
                        .expect("ann is connected");
                    let close = format!("$ws.close.{}", ann["id"].as_str().unwrap());
                    component
                        .publish_when_ready("default", &close, Vec::new(), LIMIT)
                        .await;
                }
                let subject = format!("news.{}", ["a", "b", "c"][i % 3]);
                component
                    .publish_when_ready("default", &subject, i.to_string().into_bytes(), LIMIT)
                    .await;
            }
            stdin.write_all(b"done\n").await.unwrap();
            stdin.flush().await.unwrap();
        }
        (child.wait().await.unwrap(), said)
    };
    let (status, said) = match tokio::time::timeout(BROWSER_WAIT, run).await {
        Ok(done) => done,
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            panic!("tests/browser/client.py did not finish within {BROWSER_WAIT:?}");
        }
    };
    assert!(
        status.success(),
        "tests/browser/client.py failed ({status}):\n{}",
        said.join("\n")
    );
    let stats = component.stats("default").await;
    assert!(
        stats["provider"]["recoveries"].as_u64() >= Some(1),
        "{stats}"
    );
    assert_eq!(stats["provider"]["recoveries_incomplete"], 0, "{stats}");
}
