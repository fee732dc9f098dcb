//! Counters (`$ws.stats` and OpenTelemetry metrics) and the host's health check, through the real
//! provider binary.

mod common;

use std::time::Duration;

use common::component::{Behaviour, PlayedComponent};
use common::otlp::{Collector, Point};
use common::provider::ProviderOptions;
use common::ws::{Message, WsServer};
use common::{wait_until, Rig};
use serde_json::{json, Value};
use wasmcloud_provider_sdk::core::OtelConfig;

const WAIT: Duration = Duration::from_secs(15);

/// Waits until the caller's first session in `$ws.stats` has `counter` = `value`.
async fn wait_counter(component: &PlayedComponent, link: &str, counter: &str, value: u64) {
    wait_until(&format!("{counter} is {value}"), WAIT, || async {
        component
            .try_stats(link)
            .await
            .is_ok_and(|stats| stats["sessions"][0][counter] == value)
    })
    .await;
}

/// `component`'s two links to `uri`, once its session is connected.
async fn linked_both_ways(
    rig: &Rig,
    component: &str,
    uri: &str,
    extra: &[(&str, &str)],
) -> PlayedComponent {
    let played = rig.linked_both_ways(component, uri, extra).await;
    wait_counter(&played, "default", "connects", 1).await;
    played
}

fn envelope(subject: &str, body: &[u8]) -> Message {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(body);
    Message::text(json!({ "subject": subject, "body": body }).to_string())
}

#[tokio::test]
async fn stats_count_a_scripted_scenario_exactly() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = linked_both_ways(
        &rig,
        "scripted",
        &server.uri(),
        &[("max_message_bytes", "4096")],
    )
    .await;
    let mut bytes_out = 0;
    let mut bytes_in = 0;

    // 5 publishes, and one too large for max_message_bytes (refused before anything is sent).
    for i in 0..5 {
        component
            .publish("default", &format!("out.{i}"), vec![b'x'; 100 * i], None)
            .await
            .unwrap()
            .unwrap();
        bytes_out += server.frame(WAIT).await.into_data().len();
    }
    let too_large = component
        .publish("default", "out.big", vec![0u8; 5000], None)
        .await
        .unwrap();
    assert!(too_large.is_err());

    // 4 deliveries the handler accepts, 1 it refuses, 3 malformed frames.
    let mut push = |message: Message| {
        bytes_in += message.len();
        server.push(message);
    };
    for i in 0..4 {
        push(envelope(&format!("in.{i}"), &[i; 10]));
    }
    assert_eq!(component.wait_count(4, WAIT).await, 4);
    component.set_behaviour(Behaviour {
        fail_with: Some("no thanks".into()),
        ..Default::default()
    });
    push(envelope("in.refused", b""));
    assert_eq!(component.wait_count(5, WAIT).await, 5);
    component.set_behaviour(Behaviour::default());
    for malformed in ["not json", r#"{"subject": 5}"#, "[]"] {
        push(Message::text(malformed));
    }
    wait_counter(&component, "default", "dropped_malformed", 3).await;

    // One request that times out, one the server answers.
    let timed_out = component
        .request("default", "svc.slow", &b"?"[..], 300)
        .await
        .unwrap();
    assert!(timed_out.is_err());
    bytes_out += server.frame(WAIT).await.into_data().len();
    let answered = component.request("default", "svc.fast", &b"?"[..], 5000);
    let answer = async {
        let sent = server.frame(WAIT).await.into_data();
        bytes_out += sent.len();
        let sent: Value = serde_json::from_slice(&sent).unwrap();
        push(envelope(sent["reply_to"].as_str().unwrap(), b"!"));
    };
    let (answered, ()) = tokio::join!(answered, answer);
    assert_eq!(&answered.unwrap().unwrap().body[..], b"!");

    // One reconnect.
    server.drop_connections();
    wait_counter(&component, "default", "connects", 2).await;
    wait_until("the session is open again", WAIT, || async {
        component.stats("default").await["sessions"][0]["state"] == "open"
    })
    .await;

    let now = component.stats("default").await;
    let session = &now["sessions"][0];
    let expected = json!({
        "connects": 2,
        "reconnects": 1,
        "frames_out": 7,
        "bytes_out": bytes_out,
        "frames_in": 4 + 1 + 3 + 1,
        "bytes_in": bytes_in,
        "published": 5,
        "publish_errors": 1,
        "delivered": 4,
        "delivery_errors": 1,
        "dropped_malformed": 3,
        "dropped_oversized": 0,
        "dropped_unmatched": 0,
        "dropped_no_handler": 0,
        "unrouted": 0,
        "requests": 2,
        "request_timeouts": 1,
    });
    for (name, value) in expected.as_object().unwrap() {
        assert_eq!(&session[name], value, "session {name}: {session}");
        assert_eq!(&now["provider"][name], value, "provider {name}: {now}");
    }
    let latency = &session["request_latency_ms"];
    assert_eq!(latency["count"], 1, "only the answered request: {latency}");
    assert_eq!(latency["bucket_counts"].as_array().unwrap().len(), 15);
    assert_eq!(now["provider"]["request_latency_ms"]["count"], 1);
    assert_eq!(now["provider"]["sessions_open"], 1);

    // The provider's totals keep the counts of a session whose links went.
    let watcher_server = WsServer::echo().await;
    let watcher = linked_both_ways(&rig, "watcher", &watcher_server.uri(), &[]).await;
    let provider = &rig.provider;
    let config = [("uri", server.uri())];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    provider
        .delete_link(&provider.consumer_link("scripted", "default", &config))
        .await;
    provider
        .delete_link(&provider.handler_link("scripted", "default", &config))
        .await;
    wait_until("only the watcher's session is left", WAIT, || async {
        watcher.stats("default").await["provider"]["sessions"] == 1
    })
    .await;
    wait_until(
        "the gone session's counts stay in the totals",
        WAIT,
        || async {
            let totals = &watcher.stats("default").await["provider"];
            totals["published"] == 5 && totals["connects"] == 3 && totals["frames_in"] == 9
        },
    )
    .await;
}

#[tokio::test]
async fn metrics_reach_an_otlp_collector_when_the_host_enables_them() {
    let collector = Collector::start().await;
    let rig = Rig::with_options(ProviderOptions {
        otel: Some(OtelConfig {
            enable_metrics: Some(true),
            metrics_endpoint: Some(collector.endpoint()),
            ..Default::default()
        }),
        otel_env: vec![("OTEL_METRIC_EXPORT_INTERVAL".into(), "300".into())],
        ..Default::default()
    })
    .await;
    let server = WsServer::responder().await;
    let component = linked_both_ways(&rig, "measured", &server.uri(), &[]).await;
    for _ in 0..3 {
        component
            .publish("default", "out", &b"hello"[..], None)
            .await
            .unwrap()
            .unwrap();
    }
    component
        .request("default", "svc", &b"?"[..], 5000)
        .await
        .unwrap()
        .unwrap();

    let published = "messaging_websocket.published";
    wait_until("the collector has the 3 publishes", WAIT, || async {
        collector.latest(published, Some("measured")) == Some(Point::Number(3.0))
    })
    .await;
    assert_eq!(
        collector.latest("messaging_websocket.request_latency", Some("measured")),
        Some(Point::Histogram { count: 1 })
    );
    assert_eq!(
        collector.latest("messaging_websocket.sessions_open", None),
        Some(Point::Number(1.0))
    );
    assert_eq!(
        collector.latest("messaging_websocket.frames_out", Some("measured")),
        Some(Point::Number(4.0)),
        "3 publishes and the request"
    );
    let names = collector.names();
    for counter in [
        "connects",
        "reconnects",
        "frames_in",
        "bytes_in",
        "bytes_out",
        "publish_errors",
        "delivered",
        "delivery_errors",
        "dropped_malformed",
        "dropped_oversized",
        "dropped_unmatched",
        "dropped_no_handler",
        "unrouted",
        "requests",
        "request_timeouts",
        "sessions",
    ] {
        let name = format!("messaging_websocket.{counter}");
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
}

#[tokio::test]
async fn metrics_stay_off_when_the_host_does_not_enable_them() {
    let collector = Collector::start().await;
    let rig = Rig::with_options(ProviderOptions {
        otel: Some(OtelConfig {
            metrics_endpoint: Some(collector.endpoint()),
            ..Default::default()
        }),
        otel_env: vec![("OTEL_METRIC_EXPORT_INTERVAL".into(), "100".into())],
        ..Default::default()
    })
    .await;
    let server = WsServer::echo().await;
    let component = linked_both_ways(&rig, "quiet", &server.uri(), &[]).await;
    component
        .publish("default", "out", &b"hello"[..], None)
        .await
        .unwrap()
        .unwrap();
    // Ten export intervals; the one with metrics on exports within one.
    assert_eq!(collector.wait_exports(1, Duration::from_secs(1)).await, 0);
}

/// A port nothing listens on (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn health_names_sessions_down_longer_than_their_backoff_cap() {
    let rig = Rig::start().await;
    let good = WsServer::echo().await;
    let watcher = linked_both_ways(&rig, "steady", &good.uri(), &[]).await;
    let health = rig.provider.health().await.unwrap();
    assert_eq!(health, json!({"healthy": true}), "{health}");

    // A session whose server is not there yet, with a short backoff cap.
    let port = free_port();
    let uri = format!("ws://127.0.0.1:{port}");
    let backoff = [
        ("uri", uri.as_str()),
        ("reconnect_initial_delay_ms", "50"),
        ("reconnect_max_delay_ms", "300"),
    ];
    let flaky = rig.provider.consumer_link("flaky", "feed", &backoff);
    rig.provider.put_link(&flaky).await;
    wait_until("the health check reports the session", WAIT, || async {
        rig.provider.health().await.unwrap()["healthy"] == false
    })
    .await;
    let health = rig.provider.health().await.unwrap();
    let message = health["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("flaky/feed to {uri}")) && message.contains("300"),
        "{message}"
    );
    assert!(message.starts_with("1 of 2 sessions"), "{message}");
    assert!(!message.contains("steady"), "{message}");

    // The server comes: healthy again, with no message.
    let late = WsServer::recorder_on(port).await;
    late.connected(WAIT).await;
    wait_until("the health check is healthy again", WAIT, || async {
        rig.provider.health().await.unwrap() == json!({"healthy": true})
    })
    .await;

    // A session that gave up counts as down too, until its link goes.
    drop(late);
    let gives_up = [
        ("uri", "ws://127.0.0.1:1"),
        ("reconnect_initial_delay_ms", "20"),
        ("reconnect_max_delay_ms", "100"),
        ("reconnect_max_attempts", "1"),
    ];
    let closed = rig.provider.consumer_link("quitter", "default", &gives_up);
    rig.provider.put_link(&closed).await;
    wait_until(
        "the health check reports the closed session",
        WAIT,
        || async {
            let health = rig.provider.health().await.unwrap();
            let message = health["message"].as_str().unwrap_or_default();
            health["healthy"] == false
                && message.contains("quitter/default to ws://127.0.0.1:1 (closed")
        },
    )
    .await;
    rig.provider.delete_link(&closed).await;
    rig.provider.delete_link(&flaky).await;
    wait_until("healthy once the links went", WAIT, || async {
        rig.provider.health().await.unwrap() == json!({"healthy": true})
    })
    .await;
    assert_eq!(watcher.stats("default").await["provider"]["sessions"], 1);
}

/// A call the provider cannot take (here: parameters that do not decode) is counted as
/// `call_errors` and warned about, and the provider keeps serving.
#[tokio::test]
async fn a_call_that_fails_on_the_transport_is_counted_and_warned() {
    let rig = Rig::start().await;
    let server = common::ws::WsServer::recorder().await;
    let component = rig.linked_both_ways("calls", &server.uri(), &[]).await;
    component
        .publish_when_ready("default", "warm", &b""[..], WAIT)
        .await;
    let subject = format!(
        "{}.{}.wrpc.0.0.1.wasmcloud:messaging/consumer@0.2.0.publish",
        rig.provider.lattice, rig.provider.provider_key
    );
    // A reply subject, so the provider takes the call; a body that is no encoded broker-message.
    let inbox = rig.client.new_inbox();
    let mut replies = rig.client.subscribe(format!("{inbox}.>")).await.unwrap();
    rig.client
        .publish_with_reply(subject, inbox, bytes::Bytes::from_static(&[0xff; 7]))
        .await
        .unwrap();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        futures::StreamExt::next(&mut replies),
    )
    .await;
    rig.provider
        .logs
        .wait_for(&["a call of a component (counted as call_errors)"], WAIT)
        .await;
    let stats = component.stats("default").await;
    assert_eq!(stats["provider"]["call_errors"], 1, "{stats}");
    component
        .publish_when_ready("default", "still.serving", &b""[..], WAIT)
        .await;
}
