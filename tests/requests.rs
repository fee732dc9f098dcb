//! `request` and the provider's `$ws.` subjects, through the real provider binary.

mod common;

use std::time::{Duration, Instant};

use common::component::{Behaviour, PlayedComponent};
use common::ws::{Event, Message, WsServer};
use common::Rig;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A rig with `component` linked (consumer) to `server` under `link`, and ready to publish.
async fn linked(
    rig: &Rig,
    component: &str,
    link: &str,
    server: &WsServer,
    extra: &[(&str, &str)],
) -> PlayedComponent {
    let uri = server.uri();
    let mut config = vec![("uri", uri.as_str())];
    config.extend_from_slice(extra);
    rig.provider
        .put_link(&rig.provider.consumer_link(component, link, &config))
        .await;
    let played = rig.component(component).await;
    // `$ws.sessions` answers as soon as the link is there; wait for the connection too.
    common::wait_until("the session is open", WAIT, || async {
        sessions(&played, link)
            .await
            .iter()
            .any(|s| s["link_name"] == link && s["state"] == "open")
    })
    .await;
    played
}

/// Adds the handler link that shares `component`'s session, and waits until it has joined.
async fn join_handler(rig: &Rig, component: &str, server: &WsServer) {
    let link = rig
        .provider
        .handler_link(component, "default", &[("uri", &server.uri())]);
    rig.provider.put_link(&link).await;
    rig.provider
        .logs
        .wait_for(&["link joins the existing session"], WAIT)
        .await;
}

async fn sessions(component: &PlayedComponent, link: &str) -> Vec<Value> {
    match component.request(link, "$ws.sessions", &b""[..], 0).await {
        Ok(Ok(answer)) => serde_json::from_slice(&answer.body).expect("$ws.sessions answers JSON"),
        _ => Vec::new(),
    }
}

fn envelope_of(message: &Message) -> Value {
    serde_json::from_slice(&message.clone().into_data()).unwrap()
}

#[tokio::test]
async fn request_returns_the_servers_answer() {
    let rig = Rig::start().await;
    let server = WsServer::responder().await;
    let component = linked(&rig, "asker", "default", &server, &[]).await;
    let body: Vec<u8> = (0..=255u8).collect();
    let answer = component
        .request("default", "svc.lookup", body.clone(), 2000)
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.subject.starts_with("_INBOX.ws_"),
        "{}",
        answer.subject
    );
    assert_eq!(&answer.body[..], &body[..]);
    assert_eq!(answer.reply_to, None);
    let sent = envelope_of(&server.frame(WAIT).await);
    assert_eq!(sent["subject"], "svc.lookup");
    assert_eq!(
        sent["reply_to"],
        answer.subject.as_str(),
        "the inbox the answer came to"
    );
    assert!(
        component.received().is_empty(),
        "a matched reply never reaches the handler"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_each_get_their_own_answer() {
    let rig = Rig::start().await;
    let server = WsServer::responder().await;
    let component = linked(&rig, "asker", "default", &server, &[]).await;
    let calls = (0..200).map(|i| {
        let component = &component;
        async move {
            let body = format!("question {i}");
            let answer = component
                .request("default", "svc", body.clone().into_bytes(), 5000)
                .await;
            (body, answer)
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (body, answer) in answers {
        let answer = answer.unwrap().unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(String::from_utf8_lossy(&answer.body), body);
    }
    let stats = component.stats("default").await;
    assert_eq!(
        stats["sessions"][0]["requests"], 200,
        "`$ws.` requests are not counted"
    );
    assert_eq!(stats["sessions"][0]["pending_requests"], 0);
}

#[tokio::test]
async fn a_request_times_out_cleanly_and_a_late_reply_is_dropped() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = linked(&rig, "asker", "default", &server, &[]).await;
    join_handler(&rig, "asker", &server).await;

    let started = Instant::now();
    let result = component
        .request("default", "svc.slow", &b"?"[..], 300)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        result.map(|m| m.subject),
        Err("request to svc.slow timed out after 300 ms".to_string())
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1300),
        "took {took:?}"
    );

    let stats = component.stats("default").await;
    let session = &stats["sessions"][0];
    assert_eq!(session["pending_requests"], 0, "nothing leaks");
    assert_eq!(session["request_timeouts"], 1);

    // The server answers late: the reply is dropped and counted, and never reaches the handler.
    let sent = envelope_of(&server.frame(WAIT).await);
    let inbox = sent["reply_to"].as_str().unwrap().to_string();
    server.push(Message::text(
        serde_json::json!({"subject": inbox, "body": ""}).to_string(),
    ));
    server.push(Message::text(r#"{"subject":"after.late","body":""}"#));
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(
        received[0].subject, "after.late",
        "only the ordinary frame is delivered"
    );
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["dropped_unmatched"], 1);
}

#[tokio::test]
async fn timeout_zero_uses_request_timeout_ms_and_long_timeouts_are_refused() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = linked(
        &rig,
        "asker",
        "default",
        &server,
        &[("request_timeout_ms", "200")],
    )
    .await;
    let result = component
        .request("default", "svc", &b""[..], 0)
        .await
        .unwrap();
    assert_eq!(
        result.map(|m| m.subject),
        Err("request to svc timed out after 200 ms".to_string())
    );

    let started = Instant::now();
    let err = component
        .request("default", "svc", &b""[..], 20_000)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("timeout-ms 20000 is more than the 9500 ms") && err.contains("10 s"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
}

#[tokio::test]
async fn a_dropped_connection_fails_pending_requests_at_once() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = linked(&rig, "asker", "default", &server, &[]).await;
    let started = Instant::now();
    let (result, ()) = tokio::join!(component.request("default", "svc", &b""[..], 8000), async {
        server.frame(WAIT).await;
        server.drop_connections();
    });
    let err = result.unwrap().unwrap_err();
    assert!(
        err.contains("request to svc failed") && err.contains("was lost before the reply came"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed after {:?}, not at the timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_component_answers_its_own_request_through_the_echo_server() {
    let rig = Rig::start().await;
    let server = WsServer::echo().await;
    let component = linked(&rig, "loop", "default", &server, &[]).await;
    component.set_behaviour(Behaviour {
        answer_through: Some("default".into()),
        ..Default::default()
    });
    join_handler(&rig, "loop", &server).await;

    // request -> echo -> handler (has reply_to) publishes to reply_to -> echo -> request completes
    let answer = component
        .request("default", "ping", &b"marco"[..], 5000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer.body[..], b"answer: marco");
    let received = component.received();
    assert_eq!(
        received.len(),
        1,
        "the handler saw the request, not the reply"
    );
    assert_eq!(received[0].subject, "ping");
    assert_eq!(
        received[0].reply_to.as_deref(),
        Some(answer.subject.as_str())
    );
}

#[tokio::test]
async fn a_server_request_is_answered_on_the_same_session() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = linked(&rig, "svc", "default", &server, &[]).await;
    component.set_behaviour(Behaviour {
        answer_through: Some("default".into()),
        ..Default::default()
    });
    join_handler(&rig, "svc", &server).await;
    server.push(Message::text(
        r#"{"subject":"job","body":"d29yaw==","reply_to":"server.replies.7"}"#,
    ));
    let (conn, answer) = server
        .expect("the answer", WAIT, |e| match e {
            Event::Frame { conn, message } => Some((*conn, message.clone())),
            _ => None,
        })
        .await;
    assert_eq!(conn, 1);
    assert_eq!(
        answer.to_text().unwrap(),
        r#"{"subject":"server.replies.7","body":"YW5zd2VyOiB3b3Jr"}"#
    );
}

#[tokio::test]
async fn request_in_raw_format_is_refused() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "raw",
            "default",
            &[("uri", &server.uri()), ("format", "raw")],
        ))
        .await;
    let component = rig.component("raw").await;
    component
        .publish_when_ready("default", "s", &b"x"[..], WAIT)
        .await;
    let err = component
        .request("default", "svc", &b""[..], 1000)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("request needs format json"), "{err}");
}

#[tokio::test]
async fn ws_sessions_lists_exactly_the_callers_sessions() {
    let rig = Rig::start().await;
    let (one, two, other) = (
        WsServer::recorder().await,
        WsServer::recorder().await,
        WsServer::recorder().await,
    );
    let a = linked(&rig, "comp-a", "one", &one, &[]).await;
    let _ = linked(&rig, "comp-a", "two", &two, &[]).await;
    let b = linked(&rig, "comp-b", "one", &other, &[]).await;

    let listed = sessions(&a, "one").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        listed,
        sessions(&a, "two").await,
        "whichever link the call came through"
    );
    for (session, (link, server)) in listed.iter().zip([("one", &one), ("two", &two)]) {
        let keys: Vec<_> = session.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "connected_at",
                "frames_in",
                "frames_out",
                "id",
                "link_name",
                "owner",
                "state",
                "uri"
            ]
        );
        assert_eq!(session["link_name"], link);
        assert_eq!(
            session["owner"],
            rig.provider.host_id.as_str(),
            "the one replica holds it"
        );
        assert_eq!(session["uri"], server.uri());
        assert_eq!(session["state"], "open");
        let id = session["id"].as_str().unwrap();
        assert!(
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{id}"
        );
        let at = session["connected_at"].as_str().unwrap();
        let at = humantime::parse_rfc3339(at).expect("RFC 3339");
        assert!(at.elapsed().unwrap() < Duration::from_secs(60));
        assert!(session["frames_in"].is_u64() && session["frames_out"].is_u64());
    }
    let b_listed = sessions(&b, "one").await;
    assert_eq!(b_listed.len(), 1);
    assert_eq!(b_listed[0]["uri"], other.uri());
    assert_ne!(b_listed[0]["id"], listed[0]["id"]);

    // Counters move: one frame out on session "two".
    a.publish("two", "counted", &b""[..], None)
        .await
        .unwrap()
        .unwrap();
    two.frame(WAIT).await;
    let listed = sessions(&a, "one").await;
    assert_eq!(listed[1]["frames_out"], 1);
}

#[tokio::test]
async fn ws_session_subject_reaches_only_that_session_of_the_caller() {
    let rig = Rig::start().await;
    let (one, two, other) = (
        WsServer::recorder().await,
        WsServer::recorder().await,
        WsServer::recorder().await,
    );
    let a = linked(&rig, "comp-a", "one", &one, &[]).await;
    let _ = linked(&rig, "comp-a", "two", &two, &[]).await;
    let b = linked(&rig, "comp-b", "default", &other, &[]).await;
    let listed = sessions(&a, "one").await;
    let two_id = listed[1]["id"].as_str().unwrap().to_string();

    // Through link "one", to session "two".
    let subject = format!("$ws.session.{two_id}.orders.created");
    a.publish("one", &subject, &b"hi"[..], Some("r.1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        two.frame(WAIT).await.to_text().unwrap(),
        r#"{"subject":"orders.created","body":"aGk=","reply_to":"r.1"}"#
    );
    one.no_frame(Duration::from_millis(300)).await;

    // Another component's session, and an unknown one, are refused; nothing is sent.
    let err = b
        .publish("default", &subject, &b"x"[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, format!("component comp-b has no session {two_id}"));
    let err = a
        .publish("one", "$ws.session.ws_nope.x", &b"x"[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, "component comp-a has no session ws_nope");
    for server in [&one, &two, &other] {
        server.no_frame(Duration::from_millis(200)).await;
    }
    let err = a
        .request("one", "$ws.unknown", &b""[..], 0)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("unknown provider subject $ws.unknown"),
        "{err}"
    );
}

#[tokio::test]
async fn session_tracking_off_turns_the_subjects_off() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "quiet",
            "default",
            &[("uri", &server.uri()), ("enable_session_tracking", "false")],
        ))
        .await;
    let component = rig.component("quiet").await;
    component
        .publish_when_ready("default", "ok", &b""[..], WAIT)
        .await;
    let expected = "the provider's `$ws.` subjects are turned off on link default (enable_session_tracking = false)";
    let err = component
        .request("default", "$ws.sessions", &b""[..], 0)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, expected);
    let err = component
        .publish("default", "$ws.session.x.y", &b""[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, expected);
}
