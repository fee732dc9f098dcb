//! Delivery: frames a real WebSocket server sends reach the played component's `handle-message`
//! through the real provider binary.

mod common;

use std::time::Duration;

use common::component::Behaviour;
use common::ws::{Event, Message, WsServer};
use common::{envelope, Rig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn server_frames_reach_the_handler_exactly() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("receiver").await;
    rig.provider
        .put_link(
            &rig.provider
                .handler_link("receiver", "default", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    server.push(Message::text(envelope(
        "orders.created",
        &all_bytes,
        Some("_INBOX.abc"),
    )));
    // A binary frame carrying an envelope is delivered the same way; unknown fields are ignored.
    let with_extra = json!({"subject": "bin.frame", "body": "AAEC", "extra": {"x": 1}}).to_string();
    server.push(Message::binary(with_extra.into_bytes()));
    server.push(Message::text(envelope("empty", b"", None)));

    let received = component.wait_received(3, WAIT).await;
    assert_eq!(received[0].subject, "orders.created");
    assert_eq!(&received[0].body[..], &all_bytes[..]);
    assert_eq!(received[0].reply_to.as_deref(), Some("_INBOX.abc"));
    assert_eq!(received[1].subject, "bin.frame");
    assert_eq!(&received[1].body[..], &[0, 1, 2]);
    assert_eq!(received[1].reply_to, None);
    assert_eq!(received[2].subject, "empty");
    assert!(received[2].body.is_empty());
}

#[tokio::test]
async fn consumer_and_handler_links_share_one_session() {
    let rig = Rig::start().await;
    let server = WsServer::echo().await;
    let component = rig.component("echoer").await;
    let config = [("uri", server.uri())];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rig.provider
        .put_link(&rig.provider.consumer_link("echoer", "shared", &config))
        .await;
    rig.provider
        .put_link(&rig.provider.handler_link("echoer", "shared", &config))
        .await;
    rig.provider
        .logs
        .wait_for(&["link joins the existing session"], WAIT)
        .await;

    let body: Vec<u8> = (0..2000u32).map(|i| (i % 256) as u8).collect();
    component
        .publish_when_ready("shared", "round.trip", body.clone(), WAIT)
        .await;
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received[0].subject, "round.trip");
    assert_eq!(&received[0].body[..], &body[..]);
    assert_eq!(server.accepted(), 1, "both links use the one connection");
}

#[tokio::test]
async fn malformed_frames_are_dropped_and_the_session_stays_up() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("receiver").await;
    rig.provider
        .put_link(
            &rig.provider
                .handler_link("receiver", "default", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;
    server.push(Message::text("this is not json"));
    server.push(Message::text(r#"{"subject":"s","body":"%%%"}"#));
    server.push(Message::text(r#"{"body":"AAEC"}"#));
    server.push(Message::text(r#"{"subject":7,"body":""}"#));
    server.push(Message::text(envelope("valid.after", b"ok", None)));

    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received[0].subject, "valid.after");
    assert_eq!(&received[0].body[..], b"ok");
    // Each is counted; the first is warned with its reason, the next ones only at the 10th,
    // 100th, ... (a hostile server cannot flood the log).
    // A consumer link of the same settings joins the session; through it, `$ws.stats`.
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("receiver", "default", &[("uri", &server.uri())]),
        )
        .await;
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["dropped_malformed"], 4, "{stats}");
    let logs = &rig.provider.logs;
    logs.wait_for(
        &["dropped an incoming frame", "frame is not JSON", "count=1"],
        WAIT,
    )
    .await;
    assert!(
        !logs.all().contains("not standard base64"),
        "the second malformed frame is counted, not warned"
    );
    assert_eq!(
        component.received().len(),
        1,
        "only the valid frame is delivered"
    );
    assert_eq!(server.accepted(), 1, "the session never reconnected");
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_session_reconnects() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("receiver").await;
    let link = rig.provider.handler_link(
        "receiver",
        "default",
        &[("uri", &server.uri()), ("max_message_bytes", "1000")],
    );
    rig.provider.put_link(&link).await;
    let (first, _) = server.connected(WAIT).await;

    server.push(Message::text(envelope("too.big", &[7u8; 5000], None)));
    let code = server
        .expect("Close frame", WAIT, |e| match e {
            Event::Closed { conn, frame } if *conn == first => {
                Some(frame.as_ref().map(|f| u16::from(f.code)))
            }
            _ => None,
        })
        .await;
    assert_eq!(
        code,
        Some(1009),
        "refused with close code 1009 (message too big)"
    );
    rig.provider
        .logs
        .wait_for(
            &["refused an incoming message larger than max_message_bytes"],
            WAIT,
        )
        .await;
    let (second, _) = server.connected(WAIT).await;
    assert_ne!(first, second);

    server.push(Message::text(envelope("fits", &[1u8; 100], None)));
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].subject, "fits");
}

#[tokio::test]
async fn raw_format_delivers_frames_as_bodies() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("feed").await;
    let link = rig.provider.handler_link(
        "feed",
        "prices",
        &[("uri", &server.uri()), ("format", "raw")],
    );
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    server.push(Message::binary(vec![0u8, 1, 2, 255]));
    server.push(Message::text("{\"not\": \"an envelope\"}"));
    let received = component.wait_received(2, WAIT).await;
    assert_eq!(
        received[0].subject, "prices",
        "raw_subject defaults to the link name"
    );
    assert_eq!(&received[0].body[..], &[0, 1, 2, 255]);
    assert_eq!(received[0].reply_to, None);
    assert_eq!(&received[1].body[..], b"{\"not\": \"an envelope\"}");

    let server2 = WsServer::recorder().await;
    let link = rig.provider.handler_link(
        "feed",
        "named",
        &[
            ("uri", &server2.uri()),
            ("format", "raw"),
            ("raw_subject", "feed.ticks"),
        ],
    );
    rig.provider.put_link(&link).await;
    server2.connected(WAIT).await;
    server2.push(Message::text("tick"));
    let received = component.wait_received(3, WAIT).await;
    assert_eq!(received[2].subject, "feed.ticks");
    assert_eq!(&received[2].body[..], b"tick");
}

#[tokio::test]
async fn max_in_flight_one_delivers_one_at_a_time_in_order() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("slow").await;
    component.set_behaviour(Behaviour {
        delay: Duration::from_millis(1),
        ..Default::default()
    });
    let link = rig.provider.handler_link(
        "slow",
        "default",
        &[("uri", &server.uri()), ("max_in_flight", "1")],
    );
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    // Many strictly sequential deliveries: a lost wRPC reply would stall the session for the
    // invocation timeout (10 s) and fail this test.
    const N: usize = 200;
    for i in 0..N {
        server.push(Message::text(envelope(
            &format!("seq.{i}"),
            &[i as u8],
            None,
        )));
    }
    let received = component.wait_received(N, WAIT).await;
    let subjects: Vec<_> = received.iter().map(|m| m.subject.clone()).collect();
    let expected: Vec<_> = (0..N).map(|i| format!("seq.{i}")).collect();
    assert_eq!(subjects, expected, "delivered in arrival order");
    assert_eq!(component.max_concurrent(), 1);
}

#[tokio::test]
async fn deliveries_run_concurrently_up_to_max_in_flight() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("slow").await;
    component.set_behaviour(Behaviour {
        delay: Duration::from_millis(200),
        ..Default::default()
    });
    let link = rig.provider.handler_link(
        "slow",
        "default",
        &[("uri", &server.uri()), ("max_in_flight", "4")],
    );
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    for i in 0..12 {
        server.push(Message::text(envelope(&format!("m.{i}"), b"", None)));
    }
    component.wait_received(12, WAIT).await;
    let max = component.max_concurrent();
    assert!(
        (2..=4).contains(&max),
        "at most 4 at once, and more than one: saw {max}"
    );
}

/// A gated handler on a link with `settings`, and a server pushing 300 frames of 90 KB (27 MB,
/// far more than the kernel's socket buffers and the read-ahead hold): once `in_flight` calls
/// have started, no other starts and the provider stops reading, so the server's writes stall
/// short of the total; released, every message arrives. Returns where the server stalled.
async fn gated_handler_stalls_the_server(settings: &[(&str, &str)], in_flight: usize) -> usize {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("blocked").await;
    component.set_behaviour(Behaviour {
        gated: true,
        ..Default::default()
    });
    let uri = server.uri();
    let mut config = vec![("uri", uri.as_str()), ("max_message_bytes", "200000")];
    config.extend_from_slice(settings);
    rig.provider
        .put_link(&rig.provider.handler_link("blocked", "default", &config))
        .await;
    server.connected(WAIT).await;
    const N: usize = 300;
    let frame = envelope("bulk", &[b'z'; 90_000], None);
    for _ in 0..N {
        server.push(Message::text(frame.clone()));
    }
    component.wait_received(in_flight, WAIT).await;
    let all_sent = tokio::time::timeout(
        Duration::from_secs(2),
        common::wait_until("the server wrote every frame", WAIT, || async {
            server.sent() == N
        }),
    )
    .await;
    assert!(
        all_sent.is_err(),
        "the server wrote all {N} frames while {in_flight} calls held the in-flight bound ({settings:?})"
    );
    let stalled_at = server.sent();
    assert!(stalled_at < N, "server wrote {stalled_at} of {N}");
    let started = component
        .wait_count(in_flight + 1, Duration::from_millis(500))
        .await;
    assert_eq!(
        started, in_flight,
        "calls started at the bound ({settings:?})"
    );

    component.release(N);
    let received = component.wait_received(N, Duration::from_secs(60)).await;
    assert_eq!(
        received.len(),
        N,
        "nothing lost once the handler answers again"
    );
    assert_eq!(server.sent(), N);
    assert_eq!(component.max_concurrent(), in_flight);
    stalled_at
}

#[tokio::test]
async fn a_busy_handler_pushes_back_on_the_server() {
    let stalled_at = gated_handler_stalls_the_server(&[("max_in_flight", "1")], 1).await;
    eprintln!("server stalled after writing {stalled_at} of 300 frames");
}

#[tokio::test]
async fn max_in_flight_bytes_bounds_the_bodies_in_flight_and_pauses_reading() {
    // The count allows 1000 at once; the bytes allow two bodies of 90 KB.
    gated_handler_stalls_the_server(
        &[("max_in_flight", "1000"), ("max_in_flight_bytes", "200000")],
        2,
    )
    .await;
}

#[tokio::test]
async fn by_default_512_deliveries_run_at_once() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("blocked").await;
    component.set_behaviour(Behaviour {
        gated: true,
        ..Default::default()
    });
    let link = rig
        .provider
        .handler_link("blocked", "default", &[("uri", &server.uri())]);
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    const N: usize = 600;
    server.push_many(
        (0..N)
            .map(|i| Message::text(envelope(&format!("m.{i}"), &[1; 16], None)))
            .collect(),
    );
    component.wait_received(512, Duration::from_secs(30)).await;
    // The 513th does not start while the first 512 are held.
    let started = component.wait_count(513, Duration::from_secs(1)).await;
    assert_eq!(started, 512, "calls started while 512 were held");
    component.release(N);
    component.wait_received(N, Duration::from_secs(60)).await;
    assert_eq!(component.max_concurrent(), 512);
}

#[tokio::test]
async fn a_component_error_is_logged_with_the_subject() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("grumpy").await;
    component.set_behaviour(Behaviour {
        fail_with: Some("cannot handle this".into()),
        ..Default::default()
    });
    rig.provider
        .put_link(
            &rig.provider
                .handler_link("grumpy", "default", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;
    server.push(Message::text(envelope("bad.news", b"x", None)));
    server.push(Message::text(envelope("more.news", b"y", None)));
    component.wait_received(2, WAIT).await;
    let line = rig
        .provider
        .logs
        .wait_for(
            &[
                "WARN",
                "handle-message returned an error",
                "bad.news",
                "cannot handle this",
            ],
            WAIT,
        )
        .await;
    assert!(line.contains("grumpy"), "{line}");
    rig.provider
        .logs
        .wait_for(&["handle-message returned an error", "more.news"], WAIT)
        .await;
}

#[tokio::test]
async fn a_consumer_only_session_drops_incoming_frames() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("sender").await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("sender", "default", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;
    server.push(Message::text(envelope("unsolicited", b"x", None)));
    rig.provider
        .logs
        .wait_for(
            &[
                "a frame came while the session has no handler link; dropped",
                "unsolicited",
                "count=1",
            ],
            WAIT,
        )
        .await;
    assert!(component.received().is_empty());
}

#[tokio::test]
async fn a_burst_of_garbage_does_not_stop_the_valid_frames_mixed_in() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("receiver").await;
    rig.provider
        .put_link(
            &rig.provider
                .handler_link("receiver", "default", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift: reproducible garbage without another dependency
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut valid = 0;
    for i in 0..1000 {
        if i % 50 == 0 {
            server.push(Message::text(envelope(
                &format!("valid.{valid}"),
                b"ok",
                None,
            )));
            valid += 1;
            continue;
        }
        let len = (next() % 200) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match i % 4 {
            0 => server.push(Message::binary(bytes)),
            1 => server.push(Message::text(String::from_utf8_lossy(&bytes).into_owned())),
            2 => server.push(Message::text(format!(
                "{}{}",
                "[".repeat(len * 50),
                "]".repeat(len * 50)
            ))),
            _ => server.push(Message::text(format!(
                r#"{{"subject":{},"body":"{}"}}"#,
                next(),
                "%".repeat(len)
            ))),
        }
    }
    let received = component.wait_received(valid, WAIT).await;
    // Deliveries start in order but run concurrently (max_in_flight 64): compare as sets.
    let mut subjects: Vec<_> = received.iter().map(|m| m.subject.clone()).collect();
    subjects.sort();
    let mut expected: Vec<_> = (0..valid).map(|i| format!("valid.{i}")).collect();
    expected.sort();
    assert_eq!(subjects, expected);
    assert_eq!(server.accepted(), 1, "the session never dropped");
}

/// One at a time, with the frames written back to back in one burst and the connection closed
/// right after it (as the benchmark's server does): every frame is delivered, also those read
/// ahead when the end of the stream came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_read_ahead_when_the_server_closes_are_still_delivered() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig
        .linked_both_ways("burst", &server.uri(), &[("max_in_flight", "1")])
        .await;
    server.connected(WAIT).await;
    const N: usize = 2000;
    component.set_behaviour(Behaviour {
        count_only: true,
        ..Default::default()
    });
    // A first frame on its own (the component's wRPC client is made for it), then the burst.
    let frame = Message::text(envelope("burst", &[7; 16], None));
    server.push(frame.clone());
    assert_eq!(component.wait_count(1, WAIT).await, 1);
    server.push_many(vec![frame; N]);
    server.close_connections(1000, "done");
    // Shorter than delivery_timeout_ms (10 s), and no call may time out: a lost answer (as
    // wrpc-transport-nats' demultiplexer lost one in about 30,000 calls, see src/invoke.rs)
    // would hold the only slot until that deadline.
    assert_eq!(
        component.wait_count(N + 1, Duration::from_secs(9)).await,
        N + 1
    );
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["dropped_on_close"], 0, "{stats}");
    assert_eq!(stats["sessions"][0]["delivery_timeouts"], 0, "{stats}");
}

/// A handler link's `subscriptions` choose the subjects it receives; the rest is counted as
/// `unrouted` and, with `ack`, acknowledged (so the server does not send it again). The patterns
/// come with the handler link even when the consumer link made the session.
#[tokio::test]
async fn a_handler_links_subscriptions_choose_what_it_receives() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("picky").await;
    let uri = server.uri();
    let common = [("uri", uri.as_str()), ("ack", "true")];
    rig.provider
        .put_link(&rig.provider.consumer_link("picky", "default", &common))
        .await;
    let mut handler = common.to_vec();
    handler.push(("subscriptions", "orders.*, audit.>"));
    rig.provider
        .put_link(&rig.provider.handler_link("picky", "default", &handler))
        .await;
    rig.provider
        .logs
        .wait_for(
            &["link joins the existing session", "key=picky/default"],
            WAIT,
        )
        .await;
    server.connected(WAIT).await;

    let frames = [
        ("orders.created", "a1"),
        ("other.z", "u1"),
        ("audit.x.y", "a2"),
        ("orders.a.b", "u2"),
        ("audit", "u3"),
    ];
    for (subject, id) in frames {
        let frame = json!({"subject": subject, "body": "aGk=", "id": id}).to_string();
        server.push(Message::text(frame));
    }
    let received = component.wait_received(2, WAIT).await;
    let subjects: Vec<&str> = received.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["orders.created", "audit.x.y"]);
    // Every one is acknowledged: the two delivered, and the three left out.
    let mut acked = std::collections::BTreeSet::new();
    for _ in 0..frames.len() {
        let frame: serde_json::Value =
            serde_json::from_slice(&server.frame(WAIT).await.into_data()).unwrap();
        acked.insert(frame["ack"].as_str().expect("an ack").to_string());
    }
    let ids: std::collections::BTreeSet<String> =
        frames.iter().map(|(_, id)| id.to_string()).collect();
    assert_eq!(acked, ids);
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["unrouted"], 3, "{stats}");
    assert_eq!(stats["sessions"][0]["delivered"], 2, "{stats}");
    assert_eq!(component.received().len(), 2);

    // A pattern that breaks the rules refuses the link, naming it.
    let _ = rig.component("typo").await;
    rig.provider
        .put_link(&rig.provider.handler_link(
            "typo",
            "default",
            &[("uri", &uri), ("subscriptions", "orders..x")],
        ))
        .await;
    rig.provider
        .logs
        .wait_for(
            &[
                "handler link typo/default refused: invalid `subscriptions` 'orders..x'",
                "empty token",
            ],
            WAIT,
        )
        .await;
}
