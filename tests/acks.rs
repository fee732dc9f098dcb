//! Acknowledged delivery (`ack = true`), both ways, through the real provider binary.

mod common;

use std::time::Duration;

use common::component::Behaviour;
use common::ws::{Event, Message, WsServer};
use common::Rig;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn json(message: &Message) -> Value {
    serde_json::from_slice(&message.clone().into_data()).unwrap()
}

#[tokio::test]
async fn publish_returns_after_the_servers_ack() {
    let rig = Rig::start().await;
    let server = WsServer::acking().await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "comp",
            "default",
            &[("uri", &server.uri()), ("ack", "true")],
        ))
        .await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "acked", &b"1"[..], WAIT)
        .await;
    let frame = json(&server.frame(WAIT).await);
    assert_eq!(frame["subject"], "acked");
    let id = frame["id"].as_str().expect("a string id");
    assert!(id.starts_with("ws_"), "{id}");
}

#[tokio::test]
async fn without_an_ack_publish_fails_after_send_timeout_and_is_not_sent_again() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("ack", "true"),
            ("send_timeout_ms", "400"),
        ],
    );
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    let component = rig.component("comp").await;
    let err = component
        .publish("default", "lost", &b""[..], None)
        .await
        .unwrap()
        .unwrap_err();
    let frame = json(&server.frame(WAIT).await);
    let id = frame["id"].as_str().unwrap();
    assert_eq!(
        err,
        format!("no ack for {id} within 400 ms (send_timeout_ms); the message is not sent again")
    );
    server.no_frame(Duration::from_millis(800)).await;
}

#[tokio::test]
async fn an_unacknowledged_envelope_is_sent_again_after_a_reconnect() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("ack", "true"),
            ("send_timeout_ms", "8000"),
            ("reconnect_initial_delay_ms", "50"),
        ],
    );
    rig.provider.put_link(&link).await;
    let (first, _) = server.connected(WAIT).await;
    let component = rig.component("comp").await;
    let (result, ()) = tokio::join!(
        component.publish("default", "again", &b"x"[..], None),
        async {
            let sent = json(&server.frame(WAIT).await);
            server.drop_connections();
            let (second, _) = server.connected(WAIT).await;
            assert_ne!(first, second);
            let resent = json(&server.frame(WAIT).await);
            assert_eq!(
                resent, sent,
                "the same envelope, same id, on the new connection"
            );
            let id = resent["id"].as_str().unwrap();
            server.push(Message::text(serde_json::json!({ "ack": id }).to_string()));
        }
    );
    assert_eq!(
        result.unwrap(),
        Ok(()),
        "publish returns once the resent envelope is acknowledged"
    );
}

#[tokio::test]
async fn incoming_envelopes_are_acknowledged_only_after_the_handler_accepted_them() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("comp").await;
    rig.provider
        .put_link(&rig.provider.handler_link(
            "comp",
            "default",
            &[("uri", &server.uri()), ("ack", "true")],
        ))
        .await;
    server.connected(WAIT).await;
    server.push(Message::text(r#"{"subject":"good","body":"","id":"m-1"}"#));
    assert_eq!(
        server.frame(WAIT).await.to_text().unwrap(),
        r#"{"ack":"m-1"}"#
    );
    assert_eq!(component.wait_received(1, WAIT).await[0].subject, "good");

    component.set_behaviour(Behaviour {
        fail_with: Some("not now".into()),
        ..Default::default()
    });
    server.push(Message::text(r#"{"subject":"bad","body":"","id":"m-2"}"#));
    component.wait_received(2, WAIT).await;
    server.no_frame(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn ack_with_raw_format_is_refused() {
    let rig = Rig::start().await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "comp",
            "default",
            &[
                ("uri", "ws://127.0.0.1:9/"),
                ("ack", "true"),
                ("format", "raw"),
            ],
        ))
        .await;
    rig.provider
        .logs
        .wait_for(&["consumer link comp/default refused: invalid `ack` 'true': acknowledged delivery needs format json"], WAIT)
        .await;
}

#[tokio::test]
async fn numbered_messages_survive_two_server_restarts_in_both_directions() {
    const N: usize = 30;
    let rig = Rig::start().await;
    let mut server = WsServer::acking().await;
    let port = server.addr.port();
    let uri = server.uri();
    let config = [
        ("uri", uri.as_str()),
        ("ack", "true"),
        ("send_timeout_ms", "9000"),
        ("reconnect_initial_delay_ms", "50"),
        ("reconnect_max_delay_ms", "200"),
    ];
    let component = rig.component("comp").await;
    rig.provider
        .put_link(&rig.provider.consumer_link("comp", "default", &config))
        .await;
    rig.provider
        .put_link(&rig.provider.handler_link("comp", "default", &config))
        .await;
    rig.provider
        .logs
        .wait_for(&["link joins the existing session"], WAIT)
        .await;
    component
        .publish_when_ready("default", "warm", &b""[..], WAIT)
        .await;

    // Component -> server: publishes in flight while the server restarts twice.
    let mut seen_by_server = std::collections::BTreeSet::new();
    let publishes = futures::future::join_all((0..N).map(|i| {
        let component = &component;
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            component
                .publish("default", &format!("out.{i}"), &b""[..], None)
                .await
        }
    }));
    let restarts = async {
        // The first restart brings up a server that acknowledges nothing: what it receives
        // stays unacknowledged and must be sent again after the second restart.
        for acking in [false, true] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut drained = Vec::new();
            collect_subjects(&server, &mut drained).await;
            restart(&mut server, port, acking).await;
            seen_by_server.extend(drained);
        }
    };
    let (results, ()) = tokio::join!(publishes, restarts);
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), Ok(()), "publish out.{i}");
    }
    let mut rest = Vec::new();
    collect_subjects(&server, &mut rest).await;
    seen_by_server.extend(rest);
    for i in 0..N {
        assert!(
            seen_by_server.contains(&format!("out.{i}")),
            "out.{i} never reached the server"
        );
    }
    rig.provider
        .logs
        .wait_for(
            &["sending unacknowledged messages again after the reconnect"],
            WAIT,
        )
        .await;

    // Server -> component: each numbered message is pushed until it is acknowledged, across two
    // restarts, as a server that honours the protocol would. (The provider is connected to the
    // current server: every publish above was acknowledged by it or its predecessors.)
    let mut unacked: std::collections::BTreeSet<usize> = (0..N).collect();
    let mut restarts_left = 2;
    while !unacked.is_empty() {
        for i in &unacked {
            server.push(Message::text(format!(
                r#"{{"subject":"in.{i}","body":"","id":"in-{i}"}}"#
            )));
        }
        let acked = collect_acks(&server).await;
        unacked.retain(|i| !acked.contains(&format!("in-{i}")));
        if restarts_left > 0 {
            restarts_left -= 1;
            restart(&mut server, port, true).await;
            server.connected(WAIT).await;
        }
    }
    let received: std::collections::BTreeSet<String> = component
        .received()
        .into_iter()
        .map(|m| m.subject)
        .collect();
    for i in 0..N {
        assert!(
            received.contains(&format!("in.{i}")),
            "in.{i} never reached the handler"
        );
    }
}

/// The subjects of the envelopes a server got so far. Waits at most 100 ms for each, and 150 ms in all, so a restart is not held up while frames flow.
async fn collect_subjects(server: &WsServer, into: &mut Vec<String>) {
    let until = tokio::time::Instant::now() + Duration::from_millis(150);
    while let Ok(subject) = tokio::time::timeout_at(
        until.min(tokio::time::Instant::now() + Duration::from_millis(100)),
        server.expect("envelope", WAIT, |e| match e {
            Event::Frame { message, .. } => json(message)["subject"].as_str().map(str::to_string),
            _ => None,
        }),
    )
    .await
    {
        into.push(subject);
    }
}

/// The ids a server got acknowledgements for within a short while.
async fn collect_acks(server: &WsServer) -> Vec<String> {
    let mut acks = Vec::new();
    while let Ok(id) = tokio::time::timeout(
        Duration::from_millis(500),
        server.expect("ack", WAIT, |e| match e {
            Event::Frame { message, .. } => json(message)["ack"].as_str().map(str::to_string),
            _ => None,
        }),
    )
    .await
    {
        acks.push(id);
    }
    acks
}

/// Kills the server (its port is free again) and starts a new one on the same port.
async fn restart(server: &mut WsServer, port: u16, acking: bool) {
    let placeholder = WsServer::recorder().await;
    drop(std::mem::replace(server, placeholder));
    *server = if acking {
        WsServer::acking_on(port).await
    } else {
        WsServer::recorder_on(port).await
    };
}
