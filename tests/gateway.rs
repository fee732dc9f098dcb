//! Server mode as a gateway, across two replicas sharing the port: presence asked by clients
//! (`{"presence"}`, within their JWT `subjects`), presence events (`joined` / `left` frames to
//! a pattern's subscribers on every replica) and client publish (a client's envelope fanned out
//! to the subscribers of every replica and stored in the history, never beyond what its JWT
//! allows, never to `$ws.` subjects).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use common::clients::{Connect, WsClient};
use common::component::PlayedComponent;
use common::nats::free_port;
use common::replicas::Replicas;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);
const SECRET: &str = "a-secret-of-thirty-two-bytes-xyz";

fn token(user: &str, subjects: &[&str]) -> String {
    common::hs256_jwt(SECRET, user, subjects)
}

fn b64(body: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(body)
}

fn body_of(frame: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(frame["body"].as_str().expect("a body"))
        .expect("base64");
    String::from_utf8(bytes).unwrap()
}

/// Two replicas with both links of component `gate` listening on one port with `config` (and
/// `jwt_secret`); the played component and the listener's URL.
async fn rig(config: &[(&str, &str)]) -> (Replicas, PlayedComponent, String) {
    let mut replicas = Replicas::start(2, &[]).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut config = config.to_vec();
    config.extend([("listen", addr.as_str()), ("jwt_secret", SECRET)]);
    replicas.listen_both_ways("gate", &config).await;
    let component = replicas.component("gate").await;
    (replicas, component, format!("ws://{addr}/"))
}

/// Connects `users` (each with `subjects` in its JWT) until two of them sit on different
/// replicas; returns those two first, then the rest, with their replicas' host ids.
async fn on_both_replicas(
    component: &PlayedComponent,
    url: &str,
    subjects: &[&str],
) -> Vec<(WsClient, String, String)> {
    let mut clients = Vec::new();
    for i in 0..40 {
        let user = format!("user{i}");
        let client = WsClient::connect_when_listening(
            &format!("{url}?token={}", token(&user, subjects)),
            Connect::default(),
        )
        .await
        .expect("admitted");
        clients.push((client, user));
        let entries = component.client_entries().await;
        let owner = |user: &str| {
            entries
                .iter()
                .find(|e| e["user"] == user)
                .and_then(|e| e["owner"].as_str())
                .map(str::to_string)
        };
        let owners: Vec<Option<String>> = clients.iter().map(|(_, u)| owner(u)).collect();
        if owners.iter().any(Option::is_none) {
            continue;
        }
        let owners: Vec<String> = owners.into_iter().flatten().collect();
        if let Some(other) = owners.iter().position(|o| *o != owners[0]) {
            let mut all: Vec<(WsClient, String, String)> = clients
                .into_iter()
                .zip(owners)
                .map(|((c, u), o)| (c, u, o))
                .collect();
            let second = all.remove(other);
            all.insert(1, second);
            return all;
        }
    }
    panic!("40 clients all landed on one replica");
}

/// The id `$ws.sessions` gives the client of `user`.
async fn id_of(component: &PlayedComponent, user: &str) -> String {
    let entries = component.client_entries().await;
    entries
        .iter()
        .find(|e| e["user"] == user)
        .and_then(|e| e["id"].as_str())
        .unwrap_or_else(|| panic!("{user} is not listed: {entries:?}"))
        .to_string()
}

#[tokio::test]
async fn presence_and_its_events_span_the_replicas_and_stay_within_the_jwt() {
    let (_replicas, component, url) =
        rig(&[("presence", "true"), ("presence_events", "true")]).await;
    let mut clients = on_both_replicas(&component, &url, &["room.>"]).await;
    let (mut b, b_user, b_owner) = clients.remove(1);
    let (mut a, a_user, a_owner) = clients.remove(0);
    assert_ne!(a_owner, b_owner);
    let (a_id, b_id) = (
        id_of(&component, &a_user).await,
        id_of(&component, &b_user).await,
    );

    assert_eq!(a.subscribe("room.a").await, json!({ "ok": "room.a" }));
    assert_eq!(b.subscribe("room.a").await, json!({ "ok": "room.a" }));
    // b joined on the other replica: a is told, with b's JWT user; b is not told of itself.
    assert_eq!(
        a.json(LIMIT).await,
        json!({ "subject": "room.a", "joined": { "id": b_id, "user": b_user } })
    );

    // Who is in room.a, asked by a client: both, from both replicas, oldest first.
    a.send_text(json!({ "presence": "room.a" }).to_string());
    let answer = a.json(LIMIT).await;
    assert_eq!(answer["presence"], "room.a", "{answer}");
    let listed: Vec<(&str, &str)> = answer["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["connected_at"].is_string(), "{c}");
            (c["id"].as_str().unwrap(), c["user"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (a_id.as_str(), a_user.as_str()),
            (b_id.as_str(), b_user.as_str())
        ]
    );
    // A subject nobody is subscribed to: nobody; a pattern: refused with the reason.
    a.send_text(json!({ "presence": "room.empty" }).to_string());
    assert_eq!(
        a.json(LIMIT).await,
        json!({ "presence": "room.empty", "clients": [] })
    );
    a.send_text(json!({ "presence": "room.*" }).to_string());
    assert_eq!(
        a.json(LIMIT).await,
        json!({ "error": "presence of \"room.*\": ask for a subject, not a pattern" })
    );

    // Leaving by unsubscribe, then by closing: a is told both times. (b may have heard of a's
    // join: it reached b's replica over the lattice after b subscribed.)
    b.send_text(json!({ "unsubscribe": "room.a" }).to_string());
    let mut answer = b.json(LIMIT).await;
    if answer.get("joined").is_some() {
        assert_eq!(answer["joined"]["id"], json!(a_id), "{answer}");
        answer = b.json(LIMIT).await;
    }
    assert_eq!(answer, json!({ "ok": "room.a" }));
    assert_eq!(
        a.json(LIMIT).await,
        json!({ "subject": "room.a", "left": { "id": b_id, "user": b_user } })
    );
    assert_eq!(b.subscribe("room.a").await, json!({ "ok": "room.a" }));
    assert_eq!(a.json(LIMIT).await["joined"]["id"], json!(b_id));
    b.close();
    assert_eq!(
        a.json(LIMIT).await,
        json!({ "subject": "room.a", "left": { "id": b_id, "user": b_user } })
    );
    // A subscriber of another pattern hears nothing of room.a.
    let c_user = "carol";
    let mut c = WsClient::connect(&format!("{url}?token={}", token(c_user, &["room.>"])))
        .await
        .expect("admitted");
    let c_id = id_of(&component, c_user).await;
    assert_eq!(c.subscribe("room.*").await, json!({ "ok": "room.*" }));
    assert_eq!(a.subscribe("room.b").await, json!({ "ok": "room.b" }));
    c.no_frame(Duration::from_millis(300)).await;

    // A client whose JWT allows room.a only may ask about room.a, not room.b.
    let mut narrow = WsClient::connect(&format!("{url}?token={}", token("narrow", &["room.a"])))
        .await
        .expect("admitted");
    narrow.send_text(json!({ "presence": "room.b" }).to_string());
    assert_eq!(
        narrow.json(LIMIT).await,
        json!({ "error": "not allowed to see who is in \"room.b\" (the token's `subjects` do not allow subscribing to it)" })
    );
    narrow.send_text(json!({ "presence": "room.a" }).to_string());
    let answer = narrow.json(LIMIT).await;
    let ids: BTreeSet<&str> = answer["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    // a, and c through `room.*`; b has left.
    assert_eq!(
        ids,
        BTreeSet::from([a_id.as_str(), c_id.as_str()]),
        "{answer}"
    );
    let stats = component.stats("default").await;
    assert!(
        stats["provider"]["presence_events"].as_u64() >= Some(3),
        "{stats}"
    );
}

#[tokio::test]
async fn client_publish_reaches_every_replica_and_the_history_within_the_jwt() {
    let (_replicas, component, url) =
        rig(&[("client_publish", "true"), ("history_size", "10")]).await;
    let mut clients = on_both_replicas(&component, &url, &["room.*"]).await;
    let (mut listener_side, _, _) = clients.remove(1);
    let (mut speaker, _, _) = clients.remove(0);
    assert_eq!(
        listener_side.subscribe("room.*").await,
        json!({ "ok": "room.*" })
    );
    assert_eq!(speaker.subscribe("room.a").await, json!({ "ok": "room.a" }));

    // Allowed: fanned out to both replicas' subscribers (the speaker's own too), stored (an
    // offset), and delivered to the component as always.
    let publish =
        |subject: &str, body: &str| json!({ "subject": subject, "body": b64(body) }).to_string();
    speaker.send_text(publish("room.a", "hello"));
    let heard = listener_side.json(LIMIT).await;
    assert_eq!(
        (heard["subject"].as_str(), body_of(&heard).as_str()),
        (Some("room.a"), "hello")
    );
    assert!(
        heard["offset"].as_u64().is_some() && heard["epoch"].is_string(),
        "{heard}"
    );
    assert_eq!(body_of(&speaker.json(LIMIT).await), "hello");
    let delivered = component.wait_received(1, LIMIT).await;
    assert_eq!(delivered[0].subject, "room.a");
    assert_eq!(&delivered[0].body[..], b"hello");

    // Not in the JWT: refused with the reason; nobody gets it, nor does the component.
    speaker.send_text(publish("news.x", "sneaky"));
    assert_eq!(
        speaker.json(LIMIT).await,
        json!({ "error": "not allowed to publish on \"news.x\" (the token's `subjects`)" })
    );
    for (pattern, why) in [
        (
            "news.x",
            "not allowed to subscribe to \"news.x\" (the token's `subjects`)",
        ),
        (
            "room.>",
            "not allowed to subscribe to \"room.>\" (the token's `subjects`)",
        ),
        (
            "$ws.>",
            "invalid pattern \"$ws.>\": `$ws.` subjects are the provider's own",
        ),
    ] {
        assert_eq!(speaker.subscribe(pattern).await, json!({ "error": why }));
    }
    // `$ws.` subjects are the provider's own, whatever the JWT says: dropped and counted.
    let anything = WsClient::connect(&format!("{url}?token={}", token("any", &[">"])))
        .await
        .expect("admitted");
    anything.send_text(publish("$ws.session.x.y", "no"));
    anything.send_text(publish("room.b", "after"));
    let heard = listener_side.json(LIMIT).await;
    assert_eq!(body_of(&heard), "after", "{heard}");
    listener_side.no_frame(Duration::from_millis(300)).await;
    let delivered = component.wait_received(2, LIMIT).await;
    assert_eq!(
        delivered
            .iter()
            .map(|m| m.subject.as_str())
            .collect::<Vec<_>>(),
        ["room.a", "room.b"]
    );

    // A client joining later gets the history of its pattern: `since` offset 0, any epoch.
    let mut late = WsClient::connect(&format!("{url}?token={}", token("late", &["room.*"])))
        .await
        .expect("admitted");
    late.send_text(json!({ "subscribe": "room.*", "since": { "offset": 0 } }).to_string());
    assert_eq!(body_of(&late.json(LIMIT).await), "hello");
    assert_eq!(body_of(&late.json(LIMIT).await), "after");
    assert_eq!(
        late.json(LIMIT).await,
        json!({ "ok": "room.*", "recovered": true })
    );
    let stats = component.stats("default").await;
    assert_eq!(stats["provider"]["client_publishes"], 2, "{stats}");
    assert!(
        stats["provider"]["not_allowed"].as_u64() >= Some(2),
        "{stats}"
    );
}
