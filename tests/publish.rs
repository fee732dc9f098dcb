//! `publish`: from a played component through the real provider binary to a real WebSocket server.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::ws::{Message, WsServer};
use common::Rig;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn json_of(message: &Message) -> Value {
    match message {
        Message::Text(text) => serde_json::from_str(text).expect("the frame is JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_sends_the_exact_envelope() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("publisher").await;
    let link = rig
        .provider
        .consumer_link("publisher", "default", &[("uri", &server.uri())]);
    rig.provider.put_link(&link).await;
    component
        .publish_when_ready("default", "warm.up", &b""[..], WAIT)
        .await;
    let _ = server.frame(WAIT).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..512 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("empty.body", vec![], None),
        ("all.bytes", all_bytes, Some("_INBOX.reply.1")),
        ("big.body", big, None),
        ("with.reply", b"hello".to_vec(), Some("answers.here")),
    ];
    for (subject, body, reply_to) in cases {
        let result = component
            .publish("default", subject, body.clone(), reply_to)
            .await
            .unwrap();
        assert_eq!(result, Ok(()), "publish {subject}");
        let frame = server.frame(WAIT).await;
        let mut expected = json!({
            "subject": subject,
            "body": base64::engine::general_purpose::STANDARD.encode(&body),
        });
        if let Some(reply_to) = reply_to {
            expected["reply_to"] = json!(reply_to);
        }
        assert_eq!(json_of(&frame), expected, "envelope of {subject}");
        // Exactly the contract's keys and order: subject, body, reply_to (when present).
        let text = frame.to_text().unwrap();
        assert!(
            text.starts_with(&format!("{{\"subject\":\"{subject}\",\"body\":\"")),
            "{}",
            &text[..60.min(text.len())]
        );
    }
}

#[tokio::test]
async fn handshake_sends_authorization_and_custom_headers() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("auth_token", "s3cr3t-token"),
            ("header.X-Tenant", "acme"),
            ("header.X-Trace", "on"),
        ],
    );
    rig.provider.put_link(&link).await;
    let (_, headers) = server.connected(WAIT).await;
    assert_eq!(headers["authorization"], "Bearer s3cr3t-token");
    assert_eq!(headers["x-tenant"], "acme");
    assert_eq!(headers["x-trace"], "on");
    rig.provider
        .logs
        .wait_for(
            &["sensitive setting taken from plain config", "auth_token"],
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn link_secrets_override_plain_config() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let mut link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &server.uri()),
            ("auth_token", "from-config"),
            ("header.X-Key", "config-value"),
        ],
    );
    link.target_secrets = Some(rig.provider.seal(&[
        ("auth_token", "from-secret"),
        ("header.X-Key", "secret-value"),
    ]));
    rig.provider.put_link(&link).await;
    let (_, headers) = server.connected(WAIT).await;
    assert_eq!(headers["authorization"], "Bearer from-secret");
    assert_eq!(headers["x-key"], "secret-value");
}

#[tokio::test]
async fn provider_secrets_and_config_are_defaults() {
    let server = WsServer::recorder().await;
    let rig = Rig::with_options(common::provider::ProviderOptions {
        config: [("uri".to_string(), server.uri())].into(),
        secrets: [(
            "auth_token".to_string(),
            wasmcloud_provider_sdk::core::secrets::SecretValue::String("provider-token".into()),
        )]
        .into(),
        ..Default::default()
    })
    .await;
    // The link sets nothing: uri and token come from the provider's config and secrets.
    rig.provider
        .put_link(&rig.provider.consumer_link("comp", "default", &[]))
        .await;
    let (_, headers) = server.connected(WAIT).await;
    assert_eq!(headers["authorization"], "Bearer provider-token");
}

#[tokio::test]
async fn publish_without_a_link_returns_the_contract_error() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("linked", "default", &[("uri", &server.uri())]),
        )
        .await;
    let linked = rig.component("linked").await;
    linked
        .publish_when_ready("default", "x", &b"1"[..], WAIT)
        .await;

    let stranger = rig.component("stranger").await;
    let result = stranger
        .publish("default", "x", &b"1"[..], None)
        .await
        .unwrap();
    assert_eq!(
        result,
        Err("no WebSocket link for component stranger with link name default".to_string())
    );
    // The same component under another link name has no session either.
    let result = linked.publish("other", "x", &b"1"[..], None).await.unwrap();
    assert_eq!(
        result,
        Err("no WebSocket link for component linked with link name other".to_string())
    );
}

#[tokio::test]
async fn oversized_publish_fails_before_anything_is_sent() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[("uri", &server.uri()), ("max_message_bytes", "1000")],
    );
    rig.provider.put_link(&link).await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "fits", vec![b'a'; 100], WAIT)
        .await;
    assert!(matches!(server.frame(WAIT).await, Message::Text(_)));

    // With subject "ssss", 729 body bytes make exactly 1000 bytes of envelope; 730 make 1004.
    let fits = component
        .publish("default", "ssss", vec![0u8; 729], None)
        .await
        .unwrap();
    assert_eq!(fits, Ok(()));
    assert_eq!(server.frame(WAIT).await.len(), 1000);
    let err = component
        .publish("default", "ssss", vec![0u8; 730], None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("1004 bytes")
            && err.contains("max_message_bytes (1000)")
            && err.contains("nothing was sent"),
        "{err}"
    );
    common::docs::assert_shows("publish fails: message too large", &err);
    server.no_frame(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn publish_waits_for_a_connection_then_fails_clearly() {
    let rig = Rig::start().await;
    // Nothing listens on this port: the session keeps reconnecting.
    let port = common::nats::free_port();
    let uri = format!("ws://127.0.0.1:{port}/");
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[
            ("uri", &uri),
            ("send_timeout_ms", "300"),
            ("max_pending", "1"),
        ],
    );
    rig.provider.put_link(&link).await;
    let component = rig.component("comp").await;
    let failed = rig
        .provider
        .logs
        .wait_for(&["connection attempt failed", &uri], WAIT)
        .await;
    common::docs::assert_shows("The server cannot be reached", &failed);

    let started = Instant::now();
    let (first, second) = tokio::join!(component.publish("default", "a", &b"1"[..], None), async {
        // Let the first call take the only queue slot.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        (
            component.publish("default", "b", &b"2"[..], None).await,
            started.elapsed(),
        )
    });
    let first = first.unwrap().unwrap_err();
    assert!(
        first.contains("is not connected") && first.contains("send_timeout_ms"),
        "{first}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (second, second_took) = second;
    let second = second.unwrap().unwrap_err();
    assert!(second.contains("is full (max_pending = 1)"), "{second}");
    common::docs::assert_shows("publish fails: send queue full", &second);
    assert!(
        second_took < Duration::from_millis(300),
        "a full queue fails at once, took {second_took:?}"
    );
}

#[tokio::test]
async fn reserved_subjects_never_leave_as_frames() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("comp", "default", &[("uri", &server.uri())]),
        )
        .await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "ok", &b""[..], WAIT)
        .await;
    let _ = server.frame(WAIT).await;
    let err = component
        .publish("default", "$ws.anything", &b"x"[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("unknown provider subject $ws.anything"),
        "{err}"
    );
    server.no_frame(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn invalid_subjects_are_refused_on_publish_and_request() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("comp", "default", &[("uri", &server.uri())]),
        )
        .await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "ok", &b""[..], WAIT)
        .await;
    let _ = server.frame(WAIT).await;

    let too_long = "s".repeat(1025);
    let cases: [(&str, &str); 6] = [
        ("", "invalid subject \"\": it is empty; nothing was sent"),
        (
            "orders created",
            "invalid subject \"orders created\": it contains ' ' at byte 6 (no whitespace or control characters); nothing was sent",
        ),
        ("tab\there", "it contains '\\t' at byte 3"),
        ("nul\u{0}", "it contains '\\0' at byte 3"),
        ("$ws. stats", "it contains ' ' at byte 4"),
        (&too_long, "it is 1025 bytes long, more than 1024; nothing was sent"),
    ];
    for (subject, expected) in cases {
        let err = component
            .publish("default", subject, &b"x"[..], None)
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.contains(expected), "publish {subject:?}: {err}");
        let err = component
            .request("default", subject, &b"x"[..], 1000)
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.contains(expected), "request {subject:?}: {err}");
    }
    let err = component
        .publish("default", "fine", &b"x"[..], Some("reply here"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.starts_with("invalid reply_to \"reply here\": it contains ' '"),
        "{err}"
    );
    // 1024 bytes is allowed; and it is the next frame: nothing before it was sent.
    let longest = "s".repeat(1024);
    assert_eq!(
        component
            .publish("default", &longest, &b""[..], None)
            .await
            .unwrap(),
        Ok(())
    );
    let frame = server.frame(WAIT).await;
    assert_eq!(json_of(&frame)["subject"], json!(longest));
}

#[tokio::test]
async fn raw_format_sends_the_body_alone() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig.provider.consumer_link(
        "comp",
        "default",
        &[("uri", &server.uri()), ("format", "raw")],
    );
    rig.provider.put_link(&link).await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "ignored", &b"plain text"[..], WAIT)
        .await;
    assert_eq!(server.frame(WAIT).await, Message::text("plain text"));
    let binary = vec![0xff, 0x00, 0xfe];
    assert_eq!(
        component
            .publish("default", "s", binary.clone(), None)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(server.frame(WAIT).await, Message::binary(binary));
}

#[tokio::test]
async fn max_publish_rate_spaces_publishes_at_the_server() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = std::sync::Arc::new(rig.component("limited").await);
    let link = rig.provider.consumer_link(
        "limited",
        "default",
        &[("uri", &server.uri()), ("max_publish_rate", "50")],
    );
    rig.provider.put_link(&link).await;
    component
        .publish_when_ready("default", "warm.up", &b""[..], WAIT)
        .await;
    server.wait_frames(1, WAIT).await;
    // 200 publishes from 10 callers at once: at 50/s they need about 4 s, within each call's
    // send_timeout_ms (5 s) only for the first 250, so all of them get their turn.
    const N: usize = 200;
    let mut calls = Vec::new();
    for caller in 0..10 {
        let component = std::sync::Arc::clone(&component);
        calls.push(tokio::spawn(async move {
            for i in 0..N / 10 {
                let subject = format!("rate.{caller}.{i}");
                let result = component
                    .publish("default", &subject, &b"x"[..], None)
                    .await;
                assert_eq!(result.unwrap(), Ok(()), "{subject}");
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(server.wait_frames(N + 1, WAIT).await, N + 1);
    // Measured at the server: no window of 50 messages is shorter than the 49 intervals of
    // 20 ms the limit allows (less a scheduling margin), and the whole run takes about 4 s.
    let arrivals = server.arrivals()[1..].to_vec();
    let shortest = arrivals.windows(50).map(|w| w[49] - w[0]).min().unwrap();
    assert!(
        shortest >= Duration::from_millis(900),
        "50 messages reached the server within {shortest:?} at max_publish_rate 50/s"
    );
    let total = arrivals[N - 1] - arrivals[0];
    assert!(
        total >= Duration::from_millis(3_800),
        "{N} messages in {total:?}"
    );
    let stats = component.stats("default").await;
    assert!(
        stats["sessions"][0]["publish_rate_waits"].as_u64().unwrap() > 100,
        "{stats}"
    );
}

#[tokio::test]
async fn a_publish_that_cannot_get_its_turn_in_time_fails_saying_so() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("limited").await;
    let link = rig.provider.consumer_link(
        "limited",
        "default",
        &[
            ("uri", &server.uri()),
            ("max_publish_rate", "1"),
            ("send_timeout_ms", "500"),
        ],
    );
    rig.provider.put_link(&link).await;
    component
        .publish_when_ready("default", "first", &b""[..], WAIT)
        .await;
    // The next turn is a second away, past the 500 ms send_timeout_ms.
    let started = Instant::now();
    let err = component
        .publish("default", "second", &b""[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("no turn under max_publish_rate (1/s)")
            && err.contains("within 500 ms (send_timeout_ms)")
            && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "it failed at once"
    );
    let subjects = server
        .subjects_until_quiet(Duration::from_millis(300))
        .await;
    assert_eq!(
        subjects,
        vec!["first".to_string()],
        "the refused publish never left"
    );
    // Once the turn comes, publishing works again.
    component
        .publish_when_ready("default", "third", &b""[..], WAIT)
        .await;
}

/// Bodies of 1.5 MiB and 8 MiB, past nats-server's default `max_payload` (1 MiB), so wRPC
/// streams the calls in chunks: a `publish`, an incoming frame delivered to `handle-message` and
/// a `request` with its reply all arrive byte for byte (the nats-server of the test runs at its
/// defaults).
#[tokio::test]
async fn large_bodies_arrive_byte_exact_both_ways() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let limits = [
        ("max_message_bytes", "16777216"),
        ("max_in_flight_bytes", "16777216"),
    ];
    let component = rig.linked_both_ways("big", &server.uri(), &limits).await;
    let responder = WsServer::responder().await;
    let mut answers = vec![("uri", responder.uri())];
    answers.extend(limits.iter().map(|(k, v)| (*k, v.to_string())));
    let answers: Vec<(&str, &str)> = answers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rig.provider
        .put_link(&rig.provider.consumer_link("big", "answers", &answers))
        .await;
    component
        .publish_when_ready("default", "warm", &b""[..], WAIT)
        .await;
    server.frame(WAIT).await;
    for (i, size) in [3 << 19, 8 << 20].into_iter().enumerate() {
        let body = common::pattern(size, i as u64 + 1);
        assert_eq!(
            component
                .publish("default", "big.out", body.clone(), None)
                .await
                .unwrap(),
            Ok(()),
            "publish of {size} bytes"
        );
        let frame = server.frame(WAIT).await;
        let sent: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(sent["subject"], "big.out");
        assert!(
            sent["body"].as_str().unwrap() == common::b64(&body),
            "the published {size} bytes arrived changed"
        );

        server.push(Message::text(common::envelope("big.in", &body, None)));
        let got = component.wait_received(i + 1, WAIT).await;
        assert_eq!(got[i].subject, "big.in");
        assert!(
            got[i].body[..] == body[..],
            "the delivered {size} bytes arrived changed ({} bytes)",
            got[i].body.len()
        );

        let reply = component
            .request("answers", "big.ask", body.clone(), 9000)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request of {size} bytes: {e}"));
        assert!(
            reply.body[..] == body[..],
            "the reply of {size} bytes arrived changed ({} bytes)",
            reply.body.len()
        );
    }
    let stats = component.stats("default").await;
    assert_eq!(stats["provider"]["delivery_errors"], 0, "{stats}");
    assert_eq!(stats["provider"]["delivery_timeouts"], 0, "{stats}");
}

/// Many streamed calls at once: 40 publishes, 30 of 1.5 MiB and 10 of 8 MiB, 16 in flight
/// (`TEST_STREAMED_CALLS` sets another count). On the SDK's
/// wrpc-transport-nats 0.29 the serving side now and then dropped a chunk that came before its
/// subscription ("bytes remaining on stream"); every call must succeed and every body arrive.
#[tokio::test]
async fn many_streamed_publishes_in_flight_all_arrive() {
    use futures::StreamExt as _;
    let rig = Rig::start().await;
    let server = WsServer::counter().await;
    let component = rig
        .linked_both_ways(
            "many-big",
            &server.uri(),
            &[("max_message_bytes", "16777216"), ("max_pending", "64")],
        )
        .await;
    component
        .publish_when_ready("default", "warm", &b""[..], WAIT)
        .await;
    let bodies = [
        bytes::Bytes::from(common::pattern(3 << 19, 7)),
        bytes::Bytes::from(common::pattern(8 << 20, 8)),
    ];
    let calls = std::env::var("TEST_STREAMED_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let failures: Vec<String> = futures::stream::iter(0..calls)
        .map(|i| {
            component.publish(
                "default",
                "big.many",
                bodies[usize::from(i % 4 == 3)].clone(),
                None,
            )
        })
        .buffer_unordered(16)
        .filter_map(|result| async move {
            match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(format!("{e:#}")),
            }
        })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {calls} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(server.wait_frames(calls + 1, WAIT).await, calls + 1);
}
