//! Server mode: a link with `listen` makes the real provider binary a WebSocket server; real
//! clients (tokio-tungstenite, and Python `websockets`) connect to it, and a played component
//! answers them, addresses them and broadcasts to them.

mod common;

use std::time::Duration;

use common::clients::{Connect, WsClient};
use common::nats::free_port;
use common::{b64, Rig};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// A listener on a free port: its config, and the URL clients connect to.
fn listener(path: &str) -> (String, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("ws://{listen}{path}");
    (listen, url)
}

fn envelope(subject: &str, body: &[u8], reply_to: Option<&str>) -> String {
    let mut object = json!({ "subject": subject, "body": b64(body) });
    if let Some(reply_to) = reply_to {
        object["reply_to"] = json!(reply_to);
    }
    object.to_string()
}

fn body_of(frame: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(frame["body"].as_str().expect("a body"))
        .expect("base64")
}

/// Puts both links of `component` (named `default`) with `listen` and `extra`, plays the
/// component, and connects one client to make sure the listener is up.
async fn rig_with_listener(
    component: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (Rig, common::component::PlayedComponent, String, String) {
    let rig = Rig::start().await;
    let (listen, url) = listener(path);
    let mut config = vec![("listen", listen.as_str()), ("path", path)];
    config.extend_from_slice(extra);
    let played = rig.component(component).await;
    let provider = &rig.provider;
    provider
        .put_link(&provider.consumer_link(component, "default", &config))
        .await;
    provider
        .put_link(&provider.handler_link(component, "default", &config))
        .await;
    (rig, played, listen, url)
}

#[tokio::test]
async fn clients_reach_the_component_and_it_answers_addresses_and_broadcasts() {
    let (_rig, component, _listen, url) = rig_with_listener("chat", "/ws", &[]).await;
    component.set_behaviour(common::component::Behaviour {
        answer_through: Some("default".into()),
        ..Default::default()
    });
    let mut alice = WsClient::connect_when_listening(&url, Connect::default())
        .await
        .expect("alice is admitted");
    let mut bob = WsClient::connect(&url).await.expect("bob is admitted");

    // Client -> component, byte-exact, with a reply-to that reaches alice alone.
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    alice.send_text(envelope("orders.new", &all_bytes, Some("my.inbox")));
    let got = component.wait_received(1, WAIT).await;
    assert_eq!(got[0].subject, "orders.new");
    assert_eq!(&got[0].body[..], &all_bytes[..]);
    let reply_to = got[0].reply_to.clone().expect("a reply-to");
    assert!(
        reply_to.starts_with("$ws.session.") && reply_to.ends_with(".my.inbox"),
        "{reply_to}"
    );
    let answer = alice.json(WAIT).await;
    assert_eq!(answer["subject"], "my.inbox");
    let mut expected = b"answer: ".to_vec();
    expected.extend_from_slice(&all_bytes);
    assert_eq!(body_of(&answer), expected);
    bob.no_frame(Duration::from_millis(300)).await;

    // Without a reply_to, the answer comes back with the message's own subject.
    bob.send_text(envelope("ping", b"hi", None));
    let answer = bob.json(WAIT).await;
    assert_eq!(answer["subject"], "ping");
    assert_eq!(body_of(&answer), b"answer: hi");
    alice.no_frame(Duration::from_millis(300)).await;

    // Subscriptions with `*` and `>`; a publish reaches exactly the matching clients, once.
    assert_eq!(alice.subscribe("chat.*").await, json!({ "ok": "chat.*" }));
    assert_eq!(bob.subscribe("chat.>").await, json!({ "ok": "chat.>" }));
    assert_eq!(
        bob.subscribe("chat.lobby").await,
        json!({ "ok": "chat.lobby" })
    );
    let bad = alice.subscribe("chat..x").await;
    assert!(
        bad["error"].as_str().unwrap().contains("empty token"),
        "{bad}"
    );
    component
        .publish("default", "chat.lobby", &b"to both"[..], None)
        .await
        .unwrap()
        .unwrap();
    for client in [&mut alice, &mut bob] {
        let frame = client.json(WAIT).await;
        assert_eq!(frame["subject"], "chat.lobby");
        assert_eq!(body_of(&frame), b"to both");
    }
    component
        .publish("default", "chat.lobby.deep", &b"to bob"[..], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body_of(&bob.json(WAIT).await), b"to bob");
    alice.no_frame(Duration::from_millis(300)).await;
    bob.no_frame(Duration::from_millis(100)).await;
    assert_eq!(
        alice.subscribe_change("unsubscribe", "chat.*").await,
        json!({ "ok": "chat.*" })
    );
    component
        .publish("default", "chat.lobby", &b"to bob again"[..], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body_of(&bob.json(WAIT).await), b"to bob again");
    alice.no_frame(Duration::from_millis(300)).await;

    // `$ws.sessions` lists both clients with their subscriptions.
    let sessions = component
        .request("default", "$ws.sessions", &b""[..], 0)
        .await
        .unwrap()
        .unwrap();
    let sessions: Vec<Value> = serde_json::from_slice(&sessions.body).unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let alice_id = reply_to
        .strip_prefix("$ws.session.")
        .and_then(|r| r.split('.').next())
        .unwrap()
        .to_string();
    let alice_entry = sessions
        .iter()
        .find(|s| s["id"] == alice_id.as_str())
        .unwrap();
    assert_eq!(alice_entry["kind"], "client");
    assert_eq!(alice_entry["subscriptions"], json!([]));
    assert!(alice_entry["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let bob_entry = sessions
        .iter()
        .find(|s| s["id"] != alice_id.as_str())
        .unwrap();
    assert_eq!(bob_entry["subscriptions"], json!(["chat.>", "chat.lobby"]));
    let bob_id = bob_entry["id"].as_str().unwrap().to_string();

    // One client by id; a request to a client, answered by its reply.
    component
        .publish(
            "default",
            &format!("$ws.session.{bob_id}.direct"),
            &b"just bob"[..],
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let direct = bob.json(WAIT).await;
    assert_eq!(direct["subject"], "direct");
    alice.no_frame(Duration::from_millis(300)).await;
    let question = format!("$ws.session.{alice_id}.question");
    let asking = component.request("default", &question, &b"?"[..], 5000);
    let answering = async {
        let request = alice.json(WAIT).await;
        assert_eq!(request["subject"], "question");
        let inbox = request["reply_to"]
            .as_str()
            .expect("the request has a reply_to")
            .to_string();
        alice.send_text(envelope(&inbox, b"42", None));
    };
    let (reply, ()) = tokio::join!(asking, answering);
    let reply = reply.unwrap().unwrap();
    assert_eq!(&reply.body[..], b"42");
    assert_eq!(component.count(), 2, "the reply never reached the handler");

    // `$ws.close.<id>` closes that client with 1000; the other stays.
    component
        .publish("default", &format!("$ws.close.{alice_id}"), &b""[..], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.closed(WAIT).await, Some(1000));
    let gone = component
        .publish(
            "default",
            &format!("$ws.session.{alice_id}.x"),
            &b""[..],
            None,
        )
        .await
        .unwrap();
    assert!(gone.is_err(), "{gone:?}");
    bob.send_text(envelope("still.here", b"", None));
    assert_eq!(bob.json(WAIT).await["subject"], "still.here");
}

/// The `id` part of a `$ws.session.<id>.<r>` reply-to.
fn client_id(reply_to: &str) -> String {
    reply_to
        .strip_prefix("$ws.session.")
        .and_then(|r| r.split('.').next())
        .expect("a $ws.session reply-to")
        .to_string()
}

#[tokio::test]
async fn msgpack_raw_and_python_clients_are_served_byte_exact() {
    // msgpack: the binary envelope both ways, and the answers to subscriptions as maps.
    let (_rig, component, _, url) = rig_with_listener("mp", "/", &[("format", "msgpack")]).await;
    let mut client = WsClient::connect_when_listening(&url, Connect::default())
        .await
        .unwrap();
    let body: Vec<u8> = (0..=255u8).rev().collect();
    client.send(common::clients::Message::binary(common::msgpack_envelope(
        "bin.in",
        &body,
        Some("back"),
        None,
    )));
    let got = component.wait_received(1, WAIT).await;
    assert_eq!(
        (got[0].subject.as_str(), &got[0].body[..]),
        ("bin.in", &body[..])
    );
    let id = client_id(got[0].reply_to.as_deref().unwrap());
    assert!(got[0].reply_to.as_deref().unwrap().ends_with(".back"));
    component
        .publish(
            "default",
            &format!("$ws.session.{id}.out"),
            body.clone(),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let map = common::msgpack_map(&client.frame(WAIT).await.into_data());
    assert_eq!(map["subject"].as_str(), Some("out"));
    assert_eq!(map["body"].as_slice(), Some(&body[..]));
    client.send(common::clients::Message::binary({
        let mut out = Vec::new();
        rmpv::encode::write_value(
            &mut out,
            &rmpv::Value::Map(vec![("subscribe".into(), "feed.*".into())]),
        )
        .unwrap();
        out
    }));
    let answer = common::msgpack_map(&client.frame(WAIT).await.into_data());
    assert_eq!(answer["ok"].as_str(), Some("feed.*"));

    // raw: frames are bodies; the subject is the link name.
    let (_rig, component, _, url) = rig_with_listener("raw", "/", &[("format", "raw")]).await;
    let mut client = WsClient::connect_when_listening(&url, Connect::default())
        .await
        .unwrap();
    client.send_text("plain text, no envelope");
    let got = component.wait_received(1, WAIT).await;
    assert_eq!(got[0].subject, "default");
    assert_eq!(&got[0].body[..], b"plain text, no envelope");
    let id = client_id(got[0].reply_to.as_deref().unwrap());
    component
        .publish(
            "default",
            &format!("$ws.session.{id}.x"),
            vec![0u8, 159, 146, 150],
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        client.frame(WAIT).await.into_data().as_ref(),
        &[0u8, 159, 146, 150]
    );

    // Python websockets, with permessage-deflate accepted (compression = deflate).
    let (_rig, component, _, url) =
        rig_with_listener("py", "/py", &[("compression", "deflate")]).await;
    component.set_behaviour(common::component::Behaviour {
        answer_through: Some("default".into()),
        ..Default::default()
    });
    // The listener binds in the background of the put: a Rust client first, which retries.
    drop(
        WsClient::connect_when_listening(&url, Connect::default())
            .await
            .unwrap(),
    );
    let (mut py, connected) = common::pyws::PyWsClient::connect(&url).await;
    assert_eq!(connected["extensions"], json!(["permessage-deflate"]));
    let big: Vec<u8> = (0..200_000).map(|i| (i % 251) as u8).collect();
    py.command(json!({ "send": envelope("from.python", &big, None) }))
        .await;
    let got = component.wait_received(1, WAIT).await;
    assert_eq!(&got[0].body[..], &big[..]);
    let answer = py.event(WAIT).await;
    assert_eq!(answer["event"], "text", "{answer}");
    let answer: Value = serde_json::from_str(answer["data"].as_str().unwrap()).unwrap();
    assert_eq!(answer["subject"], "from.python");
    let mut expected = b"answer: ".to_vec();
    expected.extend_from_slice(&big);
    assert_eq!(body_of(&answer), expected);
}

#[tokio::test]
async fn admission_refuses_before_the_upgrade_and_nothing_reaches_the_component() {
    let (_rig, component, _, url) = rig_with_listener(
        "guarded",
        "/chat",
        &[
            (
                "allowed_origins",
                "https://chat.example.com, http://localhost:8080",
            ),
            ("auth_token", "s3cret-token"),
            ("max_clients", "2"),
        ],
    )
    .await;
    let origin = || ("origin", "https://chat.example.com".to_string());
    let bearer = || ("authorization", "Bearer s3cret-token".to_string());
    let first = WsClient::connect_when_listening(
        &url,
        Connect {
            headers: vec![origin(), bearer()],
            ..Default::default()
        },
    )
    .await
    .expect("a client with the token and an allowed origin is admitted");
    let root = url.trim_end_matches("/chat");
    let attempt = |url: String, headers: Vec<(&'static str, String)>| async move {
        WsClient::connect_with(
            &url,
            Connect {
                headers,
                ..Default::default()
            },
        )
        .await
        .err()
    };
    assert_eq!(
        attempt(format!("{root}/other"), vec![origin(), bearer()]).await,
        Some(404)
    );
    assert_eq!(
        attempt(
            url.clone(),
            vec![("origin", "https://evil.example.com".into()), bearer()]
        )
        .await,
        Some(403)
    );
    assert_eq!(
        attempt(url.clone(), vec![bearer()]).await,
        Some(403),
        "no Origin"
    );
    assert_eq!(
        attempt(url.clone(), vec![origin()]).await,
        Some(401),
        "no token"
    );
    assert_eq!(
        attempt(format!("{url}?token=wrong"), vec![origin()]).await,
        Some(401)
    );
    // The token as a query parameter (browsers cannot set headers), and a case-different,
    // slash-ended origin of the list.
    let second = WsClient::connect_with(
        &format!("{url}?token=s3cret-token"),
        Connect {
            headers: vec![("origin", "HTTP://localhost:8080/".into())],
            ..Default::default()
        },
    )
    .await
    .expect("the token in the query is accepted");
    assert_eq!(
        attempt(url.clone(), vec![origin(), bearer()]).await,
        Some(503),
        "max_clients = 2"
    );
    drop(second);
    // A place frees up once the provider saw the client go.
    let deadline = tokio::time::Instant::now() + WAIT;
    let third = loop {
        match WsClient::connect_with(
            &url,
            Connect {
                headers: vec![origin(), bearer()],
                ..Default::default()
            },
        )
        .await
        {
            Ok(client) => break client,
            Err(503) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(status) => panic!("HTTP {status}"),
        }
    };
    let stats = component.stats("default").await;
    let provider = &stats["provider"];
    for (counter, n) in [
        ("refused_path", 1),
        ("refused_origin", 2),
        ("refused_auth", 2),
        ("clients_admitted", 3),
    ] {
        assert_eq!(provider[counter], n, "{counter}: {provider}");
    }
    assert!(
        provider["refused_full"].as_u64().unwrap() >= 1,
        "{provider}"
    );
    assert_eq!(provider["clients"], 2);
    assert_eq!(component.count(), 0, "refusals never reach the component");
    let log = _rig.provider.logs.all();
    assert!(log.contains("refused a client"), "refusals are logged");
    assert!(
        !log.contains("s3cret-token") && !log.contains("token=wrong"),
        "never the token"
    );
    drop((first, third));
}

/// Any number for a listener's numeric keys refuses the link naming the bound, or makes a
/// listener; the process never panics (the dialling keys: tests/hardening.rs).
#[tokio::test]
async fn any_number_for_a_listener_key_refuses_the_link_or_listens() {
    use wasmcloud_provider_messaging_websocket::connection::{BOUNDS, LISTENER_KEYS};
    let rig = Rig::start().await;
    let mut cases = Vec::new();
    for bound in BOUNDS.iter().filter(|b| LISTENER_KEYS.contains(&b.key)) {
        for (i, value) in [0, 1, bound.max, bound.max + 1, 1 << 32, 1 << 63, u64::MAX]
            .into_iter()
            .enumerate()
        {
            cases.push((bound, format!("{}-{i}", bound.key), value));
        }
    }
    for (bound, link_name, value) in &cases {
        let value = value.to_string();
        rig.provider
            .put_link(&rig.provider.handler_link(
                "numbers",
                link_name,
                &[("listen", "127.0.0.1:0"), (bound.key, &value)],
            ))
            .await;
    }
    for (bound, link_name, value) in &cases {
        let refused = format!(
            "handler link numbers/{link_name} refused: invalid `{}`",
            bound.key
        );
        let listening = format!("link_name={link_name} url=");
        let line = rig
            .provider
            .logs
            .wait_for(&[link_name.as_str()], WAIT)
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let accepted = loop {
            let all = rig.provider.logs.all();
            if all.contains(&refused) {
                break false;
            }
            if all
                .lines()
                .any(|l| l.contains("listening for WebSocket clients") && l.contains(&listening))
            {
                break true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{link_name}: neither refused nor listening ({line})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let zero_ok = bound.key == "client_rate_limit";
        let within = *value <= bound.max && (*value > 0 || zero_ok);
        assert_eq!(accepted, within, "`{}` = {value}", bound.key);
    }
    assert!(
        rig.provider.health().await.is_some(),
        "the provider still answers"
    );
}
