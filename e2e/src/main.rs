//! The demo: builds the provider and the echo component, starts nats-server, a wasmCloud host and a
//! WebSocket server, deploys `examples/wadm.yaml`, and shows messages flowing both ways.
//!
//! `demo` sends three messages and exits cleanly; `demo --forever` keeps sending until Ctrl-C.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use wasmcloud_provider_messaging_websocket_e2e::ws::{Event, Message, WsServer};
use wasmcloud_provider_messaging_websocket_e2e::{artifacts, deploy, repo_root, Lattice};

fn say(line: &str) {
    println!("==> {line}");
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
    say("building the provider and the echo component (the first build takes a few minutes)");
    artifacts::build(&|line| say(line)).await?;

    let manifest_path = repo_root().join("examples/wadm.yaml");
    let manifest = deploy::read_manifest(&manifest_path).await?;
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
        manifest_path.display()
    ));
    let deployed = deploy::deploy(&lattice.ctl, &lattice.host_id, &manifest, &overrides).await?;
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
        println!("server    -> component: {}", show(&frame));
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
            Ok(answer) => println!("component -> server:    {}", show(&answer)),
            Err(_) => println!(
                "(no answer within 5 s: the handler link may still be joining; sending again)"
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
    say("done");
    Ok(())
}
