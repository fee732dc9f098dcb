//! Links, health and shutdown: the provider's life under the host's control messages.

mod common;

use std::time::Duration;

use common::nats::NatsServer;
use common::provider::{consumer_link, handler_link, ProviderOptions, ProviderProcess};
use common::ws::{Event, WsServer};
use common::Rig;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn invalid_settings_refuse_only_that_link() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("bad-uri", "default", &[("uri", "http://x")]),
        )
        .await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "bad-timeout",
            "default",
            &[("uri", &server.uri()), ("connect_timeout_sec", "abc")],
        ))
        .await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("good", "default", &[("uri", &server.uri())]),
        )
        .await;

    let logs = &rig.provider.logs;
    let refused = logs
        .wait_for(
            &["ERROR", "consumer link bad-uri/default refused: invalid `uri` 'http://x': expected a ws:// or wss:// URL"],
            WAIT,
        )
        .await;
    common::docs::assert_shows("The link is refused: wrong uri scheme", &refused);
    logs.wait_for(
        &["ERROR", "consumer link bad-timeout/default refused: invalid `connect_timeout_sec` 'abc': expected whole seconds"],
        WAIT,
    )
    .await;

    let good = rig.component("good").await;
    good.publish_when_ready("default", "still.works", &b"1"[..], WAIT)
        .await;
    assert_eq!(
        server.frame(WAIT).await.to_text().unwrap(),
        r#"{"subject":"still.works","body":"MQ=="}"#
    );
    for refused in ["bad-uri", "bad-timeout"] {
        let component = rig.component(refused).await;
        let err = component
            .publish("default", "x", &b""[..], None)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err,
            format!("no WebSocket link for component {refused} with link name default")
        );
    }
    assert_eq!(server.accepted(), 1, "the refused links never connected");
}

#[tokio::test]
async fn unknown_link_keys_are_warned_about() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "comp",
            "default",
            &[("uri", &server.uri()), ("send_timeout", "5")],
        ))
        .await;
    let line = rig
        .provider
        .logs
        .wait_for(
            &[
                "WARN",
                "unknown key in link config is ignored",
                "send_timeout",
            ],
            WAIT,
        )
        .await;
    assert!(line.contains("comp"), "{line}");
    server.connected(WAIT).await;
}

#[tokio::test]
async fn deleting_the_link_closes_the_socket_and_later_publishes_fail() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig
        .provider
        .consumer_link("comp", "default", &[("uri", &server.uri())]);
    rig.provider.put_link(&link).await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "before", &b""[..], WAIT)
        .await;

    rig.provider.delete_link(&link).await;
    let code = server
        .expect("Close frame", WAIT, |e| match e {
            Event::Closed { frame, .. } => Some(frame.as_ref().map(|f| u16::from(f.code))),
            _ => None,
        })
        .await;
    assert_eq!(code, Some(1000));
    server
        .expect("connection end", WAIT, |e| {
            matches!(e, Event::Ended { .. }).then_some(())
        })
        .await;
    let err = component
        .publish("default", "after", &b""[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err,
        "no WebSocket link for component comp with link name default"
    );
    assert_eq!(server.accepted(), 1, "no reconnect after the delete");
}

#[tokio::test]
async fn a_shared_session_closes_with_its_last_link() {
    let rig = Rig::start().await;
    let server = WsServer::echo().await;
    let uri = server.uri();
    let consumer = rig.provider.consumer_link("comp", "both", &[("uri", &uri)]);
    let handler = rig.provider.handler_link("comp", "both", &[("uri", &uri)]);
    let component = rig.component("comp").await;
    rig.provider.put_link(&consumer).await;
    rig.provider.put_link(&handler).await;
    rig.provider
        .logs
        .wait_for(&["link joins the existing session"], WAIT)
        .await;
    component
        .publish_when_ready("both", "one", &b"1"[..], WAIT)
        .await;
    component.wait_received(1, WAIT).await;

    // Without its consumer link the session still delivers.
    rig.provider.delete_link(&consumer).await;
    rig.provider
        .logs
        .wait_for(&["the session stays for the other link"], WAIT)
        .await;
    server.push(common::ws::Message::text(
        r#"{"subject":"pushed","body":""}"#,
    ));
    let received = component.wait_received(2, WAIT).await;
    assert_eq!(received[1].subject, "pushed");

    rig.provider.delete_link(&handler).await;
    server
        .expect("Close frame", WAIT, |e| {
            matches!(e, Event::Closed { .. }).then_some(())
        })
        .await;
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn a_link_with_other_settings_cannot_join_a_session() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let other = WsServer::recorder().await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "comp",
            "default",
            &[("uri", &server.uri()), ("max_pending", "5")],
        ))
        .await;
    rig.provider
        .put_link(
            &rig.provider
                .handler_link("comp", "default", &[("uri", &other.uri())]),
        )
        .await;
    rig.provider
        .logs
        .wait_for(
            &[
                "handler link comp/default refused",
                "settings differ in `uri`, `max_pending`",
            ],
            WAIT,
        )
        .await;
    // The consumer link's session is untouched.
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "fine", &b""[..], WAIT)
        .await;
    assert_eq!(other.accepted(), 0);
}

#[tokio::test]
async fn a_repeated_put_is_a_no_op() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let link = rig
        .provider
        .consumer_link("comp", "default", &[("uri", &server.uri())]);
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    // The SDK lets a put through again once another link of the component was stored.
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("comp", "second", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;
    rig.provider.put_link(&link).await;
    rig.provider
        .logs
        .wait_for(&["repeated put of an existing link"], WAIT)
        .await;
    let component = rig.component("comp").await;
    component
        .publish_when_ready("default", "x", &b""[..], WAIT)
        .await;
    component
        .publish_when_ready("second", "y", &b""[..], WAIT)
        .await;
    assert_eq!(
        server.accepted(),
        2,
        "one connection per link name, none added by the repeat"
    );
}

#[tokio::test]
async fn links_in_host_data_connect_at_start() {
    let nats = NatsServer::start().await;
    let server = WsServer::echo().await;
    let provider_key = common::unique("ws-provider");
    let uri = server.uri();
    let options = ProviderOptions {
        links: vec![
            consumer_link(&provider_key, "comp", "boot", &[("uri", &uri)]),
            handler_link(&provider_key, "comp", "boot", &[("uri", &uri)]),
        ],
        provider_key: Some(provider_key),
        ..Default::default()
    };
    let provider = ProviderProcess::start(&nats, options).await;
    let component = common::component::PlayedComponent::start(&provider, &nats.url, "comp").await;
    component
        .publish_when_ready("boot", "at.start", &b"hi"[..], WAIT)
        .await;
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received[0].subject, "at.start");
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn health_is_healthy_with_no_message() {
    let rig = Rig::start().await;
    let health = rig.provider.health().await.expect("a health answer");
    assert_eq!(health["healthy"], true);
    assert!(
        health.get("message").is_none_or(|m| m.is_null()),
        "{health}"
    );
}

#[tokio::test]
async fn shutdown_closes_sessions_and_exits_within_300_ms() {
    let mut rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("comp", "default", &[("uri", &server.uri())]),
        )
        .await;
    rig.provider
        .put_link(
            &rig.provider
                .handler_link("other", "default", &[("uri", &server.uri())]),
        )
        .await;
    server.connected(WAIT).await;
    server.connected(WAIT).await;
    // Both sessions have finished their handshakes on the provider's side too.
    rig.provider
        .logs
        .wait_count(&["INFO", "connected session="], 2, WAIT)
        .await;
    let took = rig.provider.shutdown().await;
    eprintln!("shutdown took {took:?}");
    assert!(
        took < Duration::from_millis(300),
        "the process exited {took:?} after the request"
    );
    for _ in 0..2 {
        server
            .expect("Close frame", WAIT, |e| {
                matches!(e, Event::Closed { .. }).then_some(())
            })
            .await;
    }
    assert!(!rig.provider.is_running());
}

#[tokio::test]
async fn bad_provider_config_stops_start_up_with_a_clear_message() {
    let nats = NatsServer::start().await;
    let options = ProviderOptions {
        config: [("max_in_flight".to_string(), "lots".to_string())].into(),
        ..Default::default()
    };
    let mut provider = ProviderProcess::spawn(&nats, options).await;
    let status = provider.wait_exit(WAIT).await;
    assert!(!status.success());
    provider
        .logs
        .wait_for(
            &["provider config: invalid `max_in_flight` 'lots': expected a whole number"],
            WAIT,
        )
        .await;
}

/// The provider's own count of live tasks, through `$ws.stats`.
async fn tasks_alive(component: &common::component::PlayedComponent) -> u64 {
    component.stats("probe").await["provider"]["tasks_alive"]
        .as_u64()
        .expect("tasks_alive")
}

#[tokio::test]
async fn link_churn_leaves_nothing_behind() {
    const CYCLES: usize = 300;
    let rig = Rig::start().await;
    let server = WsServer::echo().await;
    let uri = server.uri();
    let component = rig.component("churn").await;
    // A link that stays, to read the provider's task count through `$ws.stats`.
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("churn", "probe", &[("uri", &uri)]),
        )
        .await;
    component
        .publish_when_ready("probe", "probe", &b""[..], WAIT)
        .await;
    // The first cycle makes what is made once (the delivery connection, the component's client);
    // every later cycle must leave the process as it found it.
    let mut baseline = None;
    for n in 0..CYCLES {
        let link = format!("l{n}");
        let consumer = rig.provider.consumer_link("churn", &link, &[("uri", &uri)]);
        let handler = rig.provider.handler_link("churn", &link, &[("uri", &uri)]);
        rig.provider.put_link(&consumer).await;
        rig.provider.put_link(&handler).await;
        // Publish only once the handler link has joined, or the echo may come back before it.
        rig.provider
            .logs
            .wait_count(&["link joins the existing session"], n + 1, WAIT)
            .await;
        component
            .publish_when_ready(&link, "churn", &b"x"[..], WAIT)
            .await;
        component.wait_received(n + 1, WAIT).await;
        rig.provider.delete_link(&consumer).await;
        rig.provider.delete_link(&handler).await;
        server
            .expect("Close frame", WAIT, |e| {
                matches!(e, Event::Closed { .. }).then_some(())
            })
            .await;
        // The provider has closed its socket once the server sees the connection end.
        server
            .expect("connection end", WAIT, |e| {
                matches!(e, Event::Ended { .. }).then_some(())
            })
            .await;
        if n == 0 {
            common::wait_until("the first cycle's tasks are gone", WAIT, || async {
                let (fds, _) = rig.provider.fds_and_threads();
                let (fds_later, _) = rig.provider.fds_and_threads();
                fds == fds_later
            })
            .await;
            baseline = Some((
                rig.provider.fds_and_threads(),
                tasks_alive(&component).await,
                rig.provider.rss_kib(),
            ));
        }
    }
    let ((fds, threads), tasks, rss) = baseline.unwrap();
    common::wait_until(
        "file descriptors and tasks back to the baseline",
        WAIT,
        || async {
            rig.provider.fds_and_threads().0 <= fds && tasks_alive(&component).await <= tasks
        },
    )
    .await;
    let (fds_after, threads_after) = rig.provider.fds_and_threads();
    let tasks_after = tasks_alive(&component).await;
    let rss_after = rig.provider.rss_kib();
    eprintln!(
        "after 1 cycle: {fds} fds, {tasks} tasks, {threads} threads, {rss} KiB; after {CYCLES}: {fds_after} fds, {tasks_after} tasks, {threads_after} threads, {rss_after} KiB"
    );
    assert!(
        threads_after <= threads,
        "threads grew from {threads} to {threads_after}"
    );
    assert!(
        rss_after < rss + 8 * 1024,
        "memory grew from {rss} KiB to {rss_after} KiB"
    );
    assert_eq!(
        server.accepted(),
        CYCLES + 1,
        "one connection per cycle, and the probe's"
    );
}
