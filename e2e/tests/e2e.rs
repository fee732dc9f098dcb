//! The provider on real wasmCloud hosts next to a real component, deployed as `examples/wadm.yaml`
//! describes, scaled out to two provider instances on two hosts: one connection to the WebSocket
//! server, a frame from it reaches the echo component through the host once, and its
//! `echo: ...` publish comes back on the same connection, whichever instance the call lands on.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use wasmcloud_provider_messaging_websocket_e2e::ws::{Event, Message, WsServer};
use wasmcloud_provider_messaging_websocket_e2e::{
    artifacts, deploy, processes_running, repo_root, wait_until, Lattice,
};

const WAIT: Duration = Duration::from_secs(60);

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

#[tokio::test(flavor = "multi_thread")]
async fn echo_round_trip_through_real_hosts_with_two_provider_instances() {
    wasmcloud_provider_messaging_websocket_e2e::init_logging();
    let started = std::time::Instant::now();
    let say = |s: &str| eprintln!("[e2e {:>6.1}s] {s}", started.elapsed().as_secs_f64());
    let artifacts = artifacts::build(&say).await.expect("artifacts build");
    let mut manifest = deploy::read_manifest(&repo_root().join("examples/wadm.yaml"))
        .await
        .unwrap();
    scale_provider(&mut manifest, 2);

    say("built");
    let server = WsServer::recorder().await;
    let lattice = Lattice::start_hosts(&format!("e2e-{}", std::process::id()), 2)
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
    server.push(Message::text(frame));
    let (conn, answer) = server
        .expect("answer to _INBOX.e2e.1", WAIT, |e| match e {
            Event::Frame { conn, message }
                if message.to_text().is_ok_and(|t| t.contains("_INBOX.e2e.1")) =>
            {
                Some((*conn, message.clone()))
            }
            _ => None,
        })
        .await;
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
