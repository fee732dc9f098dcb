//! Reconnecting: backoff, giving up, connect timeouts and server restarts, with the real binary.

mod common;

use std::time::{Duration, Instant};

use common::tcp::TcpServer;
use common::ws::{Message, WsServer};
use common::{wait_until, Rig};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn reconnect_attempts_follow_the_configured_backoff() {
    let rig = Rig::start().await;
    let server = TcpServer::dropping().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("reconnect_initial_delay_ms", "100"),
            ("reconnect_max_delay_ms", "400"),
        ],
    );
    rig.provider.put_link(&link).await;
    wait_until("seven connection attempts", WAIT, || async {
        server.accepted().len() >= 7
    })
    .await;
    let at = server.accepted();
    for n in 1..=6u32 {
        let d = Duration::from_millis((100u64 << (n - 1)).min(400));
        let gap = at[n as usize] - at[n as usize - 1];
        // The lower bound is exact (d/2); the upper bound allows for scheduling on a busy machine.
        assert!(
            gap >= d / 2 - Duration::from_millis(5) && gap <= d + Duration::from_millis(250),
            "wait before attempt {n}: {gap:?}, expected within [{:?}, {d:?}]",
            d / 2
        );
    }
    let warnings = rig
        .provider
        .logs
        .all()
        .matches("connection attempt failed; retrying with backoff")
        .count();
    assert_eq!(warnings, 1, "a run of failures is logged once at warn");
}

#[tokio::test]
async fn reconnect_max_attempts_gives_up_and_says_so() {
    let rig = Rig::start().await;
    let server = TcpServer::dropping().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("reconnect_initial_delay_ms", "20"),
            ("reconnect_max_delay_ms", "40"),
            ("reconnect_max_attempts", "3"),
        ],
    );
    rig.provider.put_link(&link).await;
    rig.provider
        .logs
        .wait_for(&["gave up connecting", "attempts=3"], WAIT)
        .await;
    let component = rig.component("comp").await;
    let sessions = component
        .request("default", "$ws.sessions", &b""[..], 0)
        .await
        .unwrap()
        .unwrap();
    let sessions: serde_json::Value = serde_json::from_slice(&sessions.body).unwrap();
    assert_eq!(sessions[0]["state"], "closed");
    let id = sessions[0]["id"].as_str().unwrap();
    let err = component
        .publish("default", "x", &b""[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, format!("session {id} gave up after 3 attempts"));
    let err = component
        .request("default", "svc", &b""[..], 1000)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, format!("session {id} gave up after 3 attempts"));
    assert_eq!(server.accepted().len(), 3, "the first attempt included");
}

#[tokio::test]
async fn a_handshake_that_never_comes_times_out_and_is_retried() {
    let rig = Rig::start().await;
    let server = TcpServer::silent().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("connect_timeout_sec", "1"),
            ("reconnect_initial_delay_ms", "50"),
        ],
    );
    rig.provider.put_link(&link).await;
    rig.provider
        .logs
        .wait_for(
            &[
                "connection attempt failed",
                "no handshake within 1 s (connect_timeout_sec)",
            ],
            WAIT,
        )
        .await;
    wait_until("a second attempt", WAIT, || async {
        server.accepted().len() >= 2
    })
    .await;
    let at = server.accepted();
    assert!(
        at[1] - at[0] >= Duration::from_secs(1),
        "the first attempt waited its timeout"
    );
}

#[tokio::test]
async fn after_a_server_restart_publishing_and_delivery_resume() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let port = server.addr.port();
    let component = rig.component("comp").await;
    let config = [
        ("uri", server.uri()),
        ("reconnect_initial_delay_ms", "50".to_string()),
        ("reconnect_max_delay_ms", "200".to_string()),
    ];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
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
        .publish_when_ready("default", "before", &b"1"[..], WAIT)
        .await;
    server.frame(WAIT).await;

    drop(server);
    rig.provider
        .logs
        .wait_for(&["disconnected; reconnecting"], WAIT)
        .await;
    let restarted = Instant::now();
    let server = WsServer::recorder_on(port).await;
    server.connected(WAIT).await;
    eprintln!("reconnected {:?} after the restart", restarted.elapsed());
    component
        .publish_when_ready("default", "after", &b"2"[..], WAIT)
        .await;
    assert_eq!(
        server.frame(WAIT).await.to_text().unwrap(),
        r#"{"subject":"after","body":"Mg=="}"#
    );
    server.push(Message::text(r#"{"subject":"pushed.after","body":""}"#));
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received[0].subject, "pushed.after");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_declared_dead() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("ping_interval_sec", "1"),
            ("pong_timeout_sec", "1"),
            ("reconnect_initial_delay_ms", "50"),
        ],
    );
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    // A peer that answers pings keeps the connection: 3 s is more than ping + pong timeout.
    let still = tokio::time::timeout(Duration::from_secs(3), server.connected(WAIT)).await;
    assert!(still.is_err(), "a responsive peer was dropped");
    assert_eq!(server.accepted(), 1);

    server.stall();
    let stalled = Instant::now();
    rig.provider
        .logs
        .wait_for(
            &[
                "disconnected; reconnecting",
                "no pong or other frame for 2 s",
            ],
            WAIT,
        )
        .await;
    server.connected(WAIT).await;
    let took = stalled.elapsed();
    // The last pong came at most one ping interval before the stall, and the limit counts from it.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "declared dead {took:?} after the peer went silent"
    );
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn a_server_that_stops_reading_fails_publishes_with_memory_bounded() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("send_timeout_ms", "300"),
            ("max_pending", "16"),
        ],
    );
    rig.provider.put_link(&link).await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "warm", &b""[..], WAIT)
        .await;
    server.stall();

    // Offer 2,000 messages of 64 KiB (about 170 MB as envelopes), 32 at a time.
    use futures::StreamExt as _;
    let body = vec![b'm'; 64 * 1024];
    let mut before = None;
    let mut errors = Vec::new();
    let mut results = futures::stream::iter(0..2000)
        .map(|_| component.publish("default", "bulk", body.clone(), None))
        .buffer_unordered(32);
    let mut n = 0;
    while let Some(result) = results.next().await {
        n += 1;
        if n == 200 {
            before = Some(rig.provider.rss_kib());
        }
        if let Err(e) = result.unwrap() {
            errors.push(e);
        }
    }
    let after = rig.provider.rss_kib();
    let before = before.unwrap();
    eprintln!(
        "provider RSS {before} KiB after 200 publishes, {after} KiB after 2000; {} failed",
        errors.len()
    );
    assert!(
        after < before + 40 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    assert!(
        errors.len() > 1900,
        "only {} of 2000 publishes failed",
        errors.len()
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("did not complete within 300 ms (send_timeout_ms)")),
        "a write that never completes fails after send_timeout_ms"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.contains("send_timeout_ms") || e.contains("is full (max_pending = 16)")),
        "unexpected errors: {:?}",
        errors
            .iter()
            .find(|e| !(e.contains("send_timeout_ms") || e.contains("max_pending")))
    );
}

#[tokio::test]
async fn the_servers_pings_are_answered() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("comp", "default", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;
    // The provider's own pings come every 20 s by default: a pong within WAIT answers ours.
    server.push(Message::Ping(bytes::Bytes::from_static(b"are you there")));
    server
        .expect("pong", WAIT, |e| {
            matches!(e, common::ws::Event::Pong { .. }).then_some(())
        })
        .await;
}
