//! The edges of the provider's promises, tried the way an unlucky or hostile user would: config
//! values that used to crash it, messages that used to vanish or stall a session, secrets in a
//! uri, servers that forge subjects. Each test runs the real binary against real servers; each
//! failed on the provider before these fixes (`TEST_PROVIDER_BINARY` runs them against another
//! build).

mod common;

use std::time::Duration;

use common::component::Behaviour;
use common::ws::{Event, Message, WsServer};
use common::{envelope, Rig};
use wasmcloud_provider_messaging_websocket::config::{numbers, Mode};
use wasmcloud_provider_sdk::core::logging::Level;

const WAIT: Duration = Duration::from_secs(10);

/// Any u64 (and more) for every numeric key either refuses the link with a message that names
/// the key or makes a working session; the process never panics. Before: `max_in_flight` near
/// 2^61 tripped tokio's semaphore assertion on the SDK's command loop and killed the process.
#[tokio::test]
async fn any_number_for_any_numeric_key_refuses_the_link_or_works() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let uri = server.uri();
    let component = rig.component("numbers").await;
    let mut cases = Vec::new();
    // A listener's numbers (`max_clients`, ...) need `listen`, and a listener without clients
    // has no entry in `$ws.sessions`: tests/server.rs puts them through the same values.
    let dialling = numbers().filter(|(k, _)| k.mode != Mode::Listener);
    for (k, (key, bound)) in dialling.clone().enumerate() {
        let mut values = vec![
            0,
            1,
            bound.max,
            bound.max + 1,
            1 << 32,
            (1 << 61) + 1,
            1 << 63,
            u64::MAX,
        ];
        // A few more from anywhere in u64 and within the bound, the same on every run.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ k as u64;
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x);
            values.push(x % bound.max.max(1) + 1);
        }
        for (i, value) in values.into_iter().enumerate() {
            cases.push((key.name, format!("{}-{i}", key.name), value.to_string()));
        }
    }
    cases.push((
        "max_in_flight",
        "max_in_flight-huge".into(),
        "99999999999999999999999".into(),
    ));
    for (key, link_name, value) in &cases {
        rig.provider
            .put_link(&rig.provider.consumer_link(
                "numbers",
                link_name,
                &[("uri", &uri), (key, value)],
            ))
            .await;
    }
    // Every put is answered; the provider is alive and serves health.
    let health = rig.provider.health().await;
    assert!(health.is_some(), "the provider answers health checks");
    let mut sessions: Vec<String> = Vec::new();
    for (key, link_name, value) in &cases {
        // Each put is handled in turn: wait until this one was refused or works.
        let deadline = tokio::time::Instant::now() + WAIT;
        let answer = loop {
            let refused = rig.provider.logs.all().lines().any(|l| {
                l.contains(&format!(
                    "consumer link numbers/{link_name} refused: invalid `"
                ))
            });
            if refused {
                break None;
            }
            match component
                .request(link_name, "$ws.sessions", &b""[..], 0)
                .await
                .expect("the call is answered")
            {
                Ok(answer) => break Some(answer),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("`{key}` = {value}: neither refused nor working: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let Some(answer) = answer else { continue };
        let list: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|s| s["link_name"] == link_name.as_str()),
            "`{key}` = {value}: accepted, so its session is listed"
        );
        sessions.push(link_name.clone());
        let parsed: u64 = value.parse().unwrap_or(u64::MAX);
        let (_, bound) = numbers().find(|(k, _)| k.name == *key).unwrap();
        assert!(
            parsed <= bound.max,
            "`{key}` = {value} is above its bound but was accepted"
        );
    }
    assert!(
        sessions.len() >= dialling.count() * 3,
        "most in-bound values work: {} sessions",
        sessions.len()
    );
    // Every refusal names the bound or the minimum.
    for line in rig
        .provider
        .logs
        .all()
        .lines()
        .filter(|l| l.contains("refused: invalid"))
    {
        assert!(
            line.contains("at most")
                || line.contains("at least")
                || line.contains("must not be less than"),
            "{line}"
        );
    }
    // The largest ping interval ("pings off") still makes a session that publishes.
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "numbers",
            "no-pings",
            &[
                ("uri", &uri),
                ("ping_interval_sec", "86400"),
                ("pong_timeout_sec", "86400"),
            ],
        ))
        .await;
    component
        .publish_when_ready("no-pings", "still.works", &b"x"[..], WAIT)
        .await;
    assert!(rig.provider.health().await.is_some(), "still alive");
    assert!(
        !rig.provider.logs.all().contains("panicked"),
        "no panic:\n{}",
        rig.provider.logs.all()
    );
}

/// A handler that never returns holds its delivery slot only until `delivery_timeout_ms`: the
/// call is abandoned, counted and warned about with its subject, and the next message is
/// delivered. Before: the wRPC transport's timeout covered only the start of the call, so with
/// `max_in_flight = 1` the session stalled for good with nothing logged (the benchmark's stall).
#[tokio::test]
async fn a_handler_that_never_returns_times_out_and_the_next_message_is_delivered() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig
        .linked_both_ways(
            "stuck",
            &server.uri(),
            // Long enough that the second call starts in time on a loaded machine.
            &[("max_in_flight", "1"), ("delivery_timeout_ms", "2000")],
        )
        .await;
    component.set_behaviour(Behaviour {
        gated: true,
        ..Default::default()
    });
    server.connected(WAIT).await;
    server.push(Message::text(envelope("first.never.answered", b"1", None)));
    server.push(Message::text(envelope("second", b"2", None)));
    let received = component.wait_received(2, WAIT).await;
    assert_eq!(received[1].subject, "second");
    rig.provider
        .logs
        .wait_for(
            &["WARN", "delivery_timeout_ms", "first.never.answered"],
            WAIT,
        )
        .await;
    component.release(10);
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["delivery_timeouts"], 1, "{stats}");
    assert_eq!(stats["provider"]["delivery_timeouts"], 1, "{stats}");
}

/// With every delivery slot taken, a handler that makes a request on its own session still gets
/// its reply, although an ordinary frame came before it: the session reads ahead.
#[tokio::test]
async fn a_handler_gets_the_reply_to_its_own_request_with_every_slot_taken() {
    let rig = Rig::start().await;
    let server = WsServer::responder().await;
    let component = rig
        .linked_both_ways("asker", &server.uri(), &[("max_in_flight", "1")])
        .await;
    component.set_behaviour(Behaviour {
        request_through: Some("default".into()),
        ..Default::default()
    });
    server.connected(WAIT).await;
    // The first message's handler asks; the second message arrives before the reply.
    server.push_many(vec![
        Message::text(envelope("first", b"1", None)),
        Message::text(envelope("second", b"2", None)),
    ]);
    let made = component.requests_made(1, WAIT).await;
    let reply = made[0].clone().expect("the handler's request is answered");
    assert_eq!(&reply.body[..], b"question");
    let received = component.wait_received(2, WAIT).await;
    assert_eq!(received[1].subject, "second");
}

/// What was read from the socket but not delivered when the link goes is counted and reported
/// in one warn line. Before: it vanished with a debug line at most.
#[tokio::test]
async fn messages_read_but_not_delivered_when_the_link_goes_are_counted_and_reported() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let observer = WsServer::recorder().await;
    let provider = &rig.provider;
    // Played before the links are put: the first delivery may come at once.
    let component = rig.component("held").await;
    let config = [("uri", server.uri()), ("max_in_flight", "1".to_string())];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let consumer = provider.consumer_link("held", "default", &config);
    let handler = provider.handler_link("held", "default", &config);
    provider.put_link(&consumer).await;
    provider.put_link(&handler).await;
    provider
        .put_link(&provider.consumer_link("held", "observer", &[("uri", &observer.uri())]))
        .await;
    component.set_behaviour(Behaviour {
        gated: true,
        ..Default::default()
    });
    server.connected(WAIT).await;
    server.push_many(vec![
        Message::text(envelope("in.flight", b"1", None)),
        Message::text(envelope("read.ahead", b"2", None)),
    ]);
    component.wait_received(1, WAIT).await;
    common::wait_until("both frames read", WAIT, || async {
        component.stats("default").await["sessions"][0]["frames_in"] == 2
    })
    .await;
    provider.delete_link(&handler).await;
    provider.delete_link(&consumer).await;
    let line = provider
        .logs
        .wait_for(&["WARN", "dropped_on_close", "dropped=1"], WAIT)
        .await;
    assert!(line.contains("link_name=default"), "{line}");
    component.release(10);
    common::wait_until("the count in the provider's totals", WAIT, || async {
        component.stats("observer").await["provider"]["dropped_on_close"] == 1
    })
    .await;
    assert_eq!(component.count(), 1, "the held message was not delivered");
}

/// With `ack = true`, envelopes handed to the socket when the connection broke mid-write (a
/// server that stopped reading during large publishes, then closed) go out again after the
/// reconnect while their publishes wait, and every publish returns Ok. Before: the write loop
/// was dropped with them and their publishes failed.
#[tokio::test]
async fn acknowledged_frames_cut_off_mid_write_are_sent_again_after_the_reconnect() {
    const N: usize = 8;
    let rig = Rig::start().await;
    let server = WsServer::acking().await;
    let component = rig
        .linked_both_ways(
            "acked",
            &server.uri(),
            &[
                ("ack", "true"),
                ("send_timeout_ms", "9000"),
                ("max_message_bytes", "4194304"),
                ("reconnect_initial_delay_ms", "50"),
                ("reconnect_max_delay_ms", "100"),
            ],
        )
        .await;
    server.connected(WAIT).await;
    server.stall();
    let body = vec![b'z'; 512 * 1024];
    let publishes: Vec<_> = (0..N)
        .map(|i| {
            let body = body.clone();
            let component = &component;
            async move {
                component
                    .publish("default", &format!("big.{i}"), body, None)
                    .await
            }
        })
        .collect();
    let all = futures::future::join_all(publishes);
    tokio::pin!(all);
    // Let the writes start and stick (the server reads nothing), then the server closes.
    let stuck = tokio::time::timeout(Duration::from_millis(1500), &mut all).await;
    assert!(stuck.is_err(), "the publishes wait for their acks");
    server.close_connections(1001, "going away");
    let results = all.await;
    for (i, result) in results.iter().enumerate() {
        assert!(
            matches!(result, Ok(Ok(()))),
            "publish {i}: {result:?}\n{}",
            rig.provider.logs.all()
        );
    }
    // The reconnected connection got each of them.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N {
        let frame = server.frame(WAIT).await;
        let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
        seen.insert(value["subject"].as_str().unwrap().to_string());
    }
}

/// A request whose frame still waits in the queue when the connection drops goes out on the next
/// connection and gets its answer (or fails and is never sent). Before: it failed at the
/// disconnect and its frame was sent anyway on the next connection.
#[tokio::test]
async fn a_request_queued_at_a_disconnect_is_sent_on_the_next_connection_and_answered() {
    let rig = Rig::start().await;
    let server = WsServer::responder().await;
    let component = rig
        .linked_both_ways(
            "queued",
            &server.uri(),
            &[
                ("max_message_bytes", "4194304"),
                ("send_timeout_ms", "9000"),
                ("request_timeout_ms", "9000"),
                ("reconnect_initial_delay_ms", "50"),
                ("reconnect_max_delay_ms", "100"),
            ],
        )
        .await;
    server.connected(WAIT).await;
    server.stall();
    // Fill the socket so that the request's frame stays queued behind the large ones.
    let body = vec![b'q'; 1024 * 1024];
    let fill: Vec<_> = (0..6)
        .map(|i| {
            let body = body.clone();
            let component = &component;
            async move {
                component
                    .publish("default", &format!("fill.{i}"), body, None)
                    .await
            }
        })
        .collect();
    let fill = futures::future::join_all(fill);
    tokio::pin!(fill);
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), &mut fill)
            .await
            .is_err(),
        "the writes are stuck"
    );
    // Now the request: its frame waits in the queue behind the stuck batch.
    let request = component.request("default", "the.question", &b"42"[..], 0);
    let both = futures::future::join(fill, request);
    tokio::pin!(both);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut both)
            .await
            .is_err(),
        "the request waits"
    );
    server.close_connections(1001, "going away");
    let (_, answer) = both.await;
    let sent_again = server
        .subjects_until_quiet(Duration::from_millis(500))
        .await
        .iter()
        .any(|s| s == "the.question");
    match answer.expect("the call is answered") {
        Ok(reply) => assert_eq!(&reply.body[..], b"42"),
        Err(e) => assert!(!sent_again, "the request failed ({e}) but was sent anyway"),
    }
}

/// A server that accepts the upgrade and closes at once (credentials refused after the upgrade)
/// counts as a failed attempt: the session gives up after `reconnect_max_attempts`, and the warn
/// line gives the close code and reason. Before: such a connection counted as a success and the
/// session retried forever.
#[tokio::test]
async fn a_server_that_closes_right_after_the_upgrade_counts_as_a_failed_attempt() {
    let rig = Rig::start().await;
    let server = WsServer::closing(1008, "bad token").await;
    let component = rig.component("refused").await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "refused",
            "default",
            &[
                ("uri", &server.uri()),
                ("reconnect_max_attempts", "3"),
                ("reconnect_initial_delay_ms", "20"),
                ("reconnect_max_delay_ms", "50"),
            ],
        ))
        .await;
    let line = rig
        .provider
        .logs
        .wait_for(&["WARN", "gave up connecting"], WAIT)
        .await;
    assert!(
        line.contains("close code 1008") && line.contains("bad token"),
        "{line}"
    );
    assert!(line.contains("attempts=3"), "{line}");
    assert_eq!(server.accepted(), 3);
    let err = component
        .publish("default", "x", &b""[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("gave up after 3 attempts"), "{err}");
}

/// A uri may carry a password and a token: neither appears anywhere the provider shows the uri
/// (the whole trace-level log, the health message, `$ws.sessions`, errors to components).
#[tokio::test]
async fn a_uri_s_userinfo_and_query_never_appear() {
    let rig = Rig::with_options(common::provider::ProviderOptions {
        log_level: Some(Level::Trace),
        ..Default::default()
    })
    .await;
    let server = WsServer::recorder().await;
    let good = format!("ws://u:zq1@{}/p?token=zq2", server.addr);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("ws://u:zq3@127.0.0.1:{port}/p?token=zq4")
    };
    let component = rig.component("secretive").await;
    let sealed = rig.provider.seal(&[("uri", good.as_str())]);
    let mut link = rig.provider.consumer_link("secretive", "default", &[]);
    link.target_secrets = Some(sealed);
    rig.provider.put_link(&link).await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "secretive",
            "dead",
            &[
                ("uri", &dead),
                ("reconnect_initial_delay_ms", "50"),
                ("reconnect_max_delay_ms", "100"),
                ("send_timeout_ms", "200"),
            ],
        ))
        .await;
    let (_, headers) = server.connected(WAIT).await;
    let _ = headers;
    component
        .publish_when_ready("default", "s", &b"x"[..], WAIT)
        .await;
    let sessions = component
        .request("default", "$ws.sessions", &b""[..], 0)
        .await
        .unwrap()
        .unwrap();
    let sessions = String::from_utf8(sessions.body.to_vec()).unwrap();
    assert!(sessions.contains("ws://***@127.0.0.1"), "{sessions}");
    let err = component
        .publish("dead", "s", &b"x"[..], None)
        .await
        .unwrap()
        .unwrap_err();
    common::wait_until("unhealthy: the dead session is down", WAIT, || async {
        rig.provider
            .health()
            .await
            .is_some_and(|h| h["healthy"] == false)
    })
    .await;
    let health = rig.provider.health().await.unwrap();
    let bad = rig
        .provider
        .consumer_link("secretive", "bad", &[("uri", "http://u:zq5@h/?t=zq6")]);
    rig.provider.put_link(&bad).await;
    rig.provider
        .logs
        .wait_for(&["consumer link secretive/bad refused"], WAIT)
        .await;
    let log = rig.provider.logs.all();
    assert!(
        log.lines().count() > 10 && log.contains("TRACE"),
        "a trace log"
    );
    for (what, text) in [
        ("the log", log.as_str()),
        ("$ws.sessions", sessions.as_str()),
        ("the publish error", err.as_str()),
        ("the health message", &health.to_string()),
    ] {
        assert!(!text.contains("zq"), "{what} shows a secret: {text}");
    }
}

/// A server can neither forge a log line nor deliver the provider's own subjects: incoming
/// subjects and `reply_to`s follow the subject rules, the others are dropped as malformed.
#[tokio::test]
async fn incoming_subjects_follow_the_subject_rules() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.linked_both_ways("strict", &server.uri(), &[]).await;
    server.connected(WAIT).await;
    server.push_many(vec![
        Message::text(envelope("evil\nINFO forged line", b"", None)),
        Message::text(envelope("$ws.sessions", b"", None)),
        Message::text(envelope("ok.subject", b"", Some("has space"))),
        Message::text(envelope("ok", b"", Some("$ws.session.x.y"))),
        Message::text(envelope(&"s".repeat(1025), b"", None)),
        Message::text(envelope("fine", b"", Some("_INBOX.fine"))),
    ]);
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received[0].subject, "fine");
    common::wait_until("five dropped as malformed", WAIT, || async {
        component.stats("default").await["sessions"][0]["dropped_malformed"] == 5
    })
    .await;
    assert_eq!(component.count(), 1);
    let log = rig.provider.logs.all();
    assert!(
        !log.lines().any(|l| l.starts_with("INFO forged")),
        "no forged line"
    );
    assert!(
        log.contains(r#""evil\nINFO forged line""#),
        "escaped in the warning"
    );
}

/// `$ws.session.<id>.<subject>`: `<subject>` follows the subject rules (a `$ws.` subject never
/// leaves as a frame) and the target session must have session tracking on.
#[tokio::test]
async fn sending_to_a_session_checks_the_subject_and_the_target_s_tracking() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("addresser").await;
    let provider = &rig.provider;
    provider
        .put_link(&provider.consumer_link("addresser", "default", &[("uri", &server.uri())]))
        .await;
    provider
        .put_link(&provider.consumer_link(
            "addresser",
            "untracked",
            &[("uri", &server.uri()), ("enable_session_tracking", "false")],
        ))
        .await;
    component
        .publish_when_ready("default", "ready", &b""[..], WAIT)
        .await;
    let list = component
        .request("default", "$ws.sessions", &b""[..], 0)
        .await
        .unwrap()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let id_of = |link: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["link_name"] == link)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (tracked, untracked) = (id_of("default"), id_of("untracked"));
    let err = component
        .publish(
            "default",
            &format!("$ws.session.{tracked}.$ws.x"),
            &b""[..],
            None,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("`$ws.` subjects are the provider's own"),
        "{err}"
    );
    let err = component
        .publish(
            "default",
            &format!("$ws.session.{untracked}.fine"),
            &b""[..],
            None,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("enable_session_tracking = false"), "{err}");
    component
        .publish(
            "default",
            &format!("$ws.session.{tracked}.fine"),
            &b"ok"[..],
            None,
        )
        .await
        .unwrap()
        .unwrap();
    // Only the valid ones reached the server: "ready" and "fine".
    let subjects = server
        .subjects_until_quiet(Duration::from_millis(300))
        .await;
    assert!(
        !subjects.iter().any(|s| s.starts_with("$ws.")),
        "{subjects:?}"
    );
    assert!(subjects.contains(&"fine".to_string()), "{subjects:?}");
}

/// Any `tls_*` key with a `ws://` uri refuses the link: the credentials would go out in clear.
#[tokio::test]
async fn tls_settings_with_a_plain_uri_refuse_the_link() {
    let rig = Rig::start().await;
    let ca = common::certs::Ca::new("test CA");
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "plain",
            "default",
            &[("uri", "ws://127.0.0.1:9/x"), ("tls_ca", &ca.pem)],
        ))
        .await;
    rig.provider
        .logs
        .wait_for(
            &[
                "ERROR",
                "consumer link plain/default refused: invalid `uri`",
                "`tls_ca` is set: use wss://",
            ],
            WAIT,
        )
        .await;
}

/// `tls_ca_file` is read off the SDK's command loop: a file that cannot be read (here a FIFO
/// nobody writes) refuses its link after a deadline while health checks keep being answered.
/// Before: the put blocked the command loop for good.
#[tokio::test]
async fn a_tls_ca_file_that_blocks_never_holds_up_the_provider() {
    let rig = Rig::start().await;
    let dir = std::env::temp_dir().join(common::unique("fifo"));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("ca.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo_path = fifo.to_str().unwrap().to_string();
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "blocked",
            "default",
            &[("uri", "wss://127.0.0.1:9/x"), ("tls_ca_file", &fifo_path)],
        ))
        .await;
    let health = tokio::time::timeout(Duration::from_secs(2), rig.provider.health()).await;
    assert!(
        matches!(health, Ok(Some(_))),
        "health answered while the file blocks"
    );
    rig.provider
        .logs
        .wait_for(
            &[
                "consumer link blocked/default refused: invalid `tls_ca_file`",
                "could not be read within 500 ms",
            ],
            WAIT,
        )
        .await;
    // Let the blocked reader go.
    let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    let _ = std::fs::remove_dir_all(&dir);
}

/// New settings take effect through delete + put (what wadm does when a link's config
/// changes); a second put of a linked link is ignored by the SDK, as the docs say.
#[tokio::test]
async fn delete_and_put_applies_new_settings() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("resettled").await;
    let small = rig.provider.consumer_link(
        "resettled",
        "default",
        &[("uri", &server.uri()), ("max_message_bytes", "64")],
    );
    rig.provider.put_link(&small).await;
    component
        .publish_when_ready("default", "s", &b"x"[..], WAIT)
        .await;
    let big_body = vec![b'b'; 200];
    let err = component
        .publish("default", "s", big_body.clone(), None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("max_message_bytes"), "{err}");
    let large = rig.provider.consumer_link(
        "resettled",
        "default",
        &[("uri", &server.uri()), ("max_message_bytes", "4096")],
    );
    // A second put with new settings: the SDK ignores it.
    rig.provider.put_link(&large).await;
    let err = component
        .publish("default", "s", big_body.clone(), None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("max_message_bytes"),
        "still the old setting: {err}"
    );
    rig.provider.delete_link(&small).await;
    // The SDK takes puts and deletes on different subjects, so a put sent right after a delete
    // may be handled first (and ignored): wait for the delete.
    common::wait_until("the link is deleted", WAIT, || async {
        matches!(component.publish("default", "s", &b""[..], None).await, Ok(Err(e)) if e.contains("no WebSocket link"))
    })
    .await;
    rig.provider.put_link(&large).await;
    component
        .publish_when_ready("default", "s", big_body, WAIT)
        .await;
    let _ = server
        .expect("a second connection", WAIT, |e| match e {
            Event::Connected { conn: 2, .. } => Some(()),
            _ => None,
        })
        .await;
}
