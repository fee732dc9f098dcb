//! Listeners with replicas (wadm's `instances` > 1): every replica listens, on one host they
//! share the port (SO_REUSEPORT), and the lattice's NATS makes their clients one set: a publish
//! reaches the subscribed clients of every replica once, a client is reachable (`$ws.session`,
//! `$ws.close`, requests) and listed (`$ws.sessions`) from any replica, and a replica that dies
//! takes only its own clients with it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use common::clients::{Connect, Message, WsClient};
use common::component::PlayedComponent;
use common::nats::free_port;
use common::replicas::Replicas;
use common::{envelope, wait_until};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(20);
const CLIENTS: usize = 200;

fn body_of(frame: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(frame["body"].as_str().expect("a body"))
        .expect("base64")
}

/// A data frame's JSON, skipping nothing: the listener sends only what the test caused.
async fn next_json(client: &mut WsClient) -> serde_json::Value {
    match client.frame(LIMIT).await {
        Message::Text(text) => serde_json::from_str(&text).expect("a JSON frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Publishes until a replica takes the call (one that was just killed may still get one).
async fn publish(component: &PlayedComponent, subject: &str, body: &[u8]) {
    component
        .publish_when_ready("default", subject, body.to_vec(), LIMIT)
        .await;
}

#[tokio::test]
async fn replicas_share_the_port_and_their_clients_are_one_set() {
    let mut replicas = Replicas::start(2, &[]).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("ws://{listen}/");
    // Both bind the one port, and each knows the other listens too.
    replicas
        .listen_both_ways("lrep", &[("listen", listen.as_str())])
        .await;
    let component = replicas.component("lrep").await;

    // 200 clients; each says hello, and the reply-to the component gets names its id.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut client = WsClient::connect_when_listening(&url, Connect::default())
            .await
            .expect("a client is admitted");
        assert_eq!(
            client.subscribe("news.>").await,
            json!({ "ok": "news.>" }),
            "client {i}"
        );
        client.send_text(envelope("hello", i.to_string().as_bytes(), None));
        clients.push(client);
    }
    let hellos = component.wait_received(CLIENTS, LIMIT).await;
    let mut ids = vec![String::new(); CLIENTS];
    for hello in &hellos {
        let i: usize = std::str::from_utf8(&hello.body).unwrap().parse().unwrap();
        let reply_to = hello.reply_to.as_deref().expect("a reply-to");
        ids[i] = reply_to
            .strip_prefix("$ws.session.")
            .and_then(|r| r.strip_suffix(".hello"))
            .expect("$ws.session.<id>.hello")
            .to_string();
    }

    // `$ws.sessions`, on either replica, lists all 200, on both replicas.
    let mut owner_of = BTreeMap::new();
    for _ in 0..6 {
        let entries = component.client_entries().await;
        let listed: BTreeSet<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(listed.len(), CLIENTS, "every client listed once");
        for entry in &entries {
            owner_of.insert(
                entry["id"].as_str().unwrap().to_string(),
                entry["owner"].as_str().expect("an owner").to_string(),
            );
        }
    }
    let hosts: BTreeSet<&String> = owner_of.values().collect();
    assert_eq!(
        hosts.len(),
        2,
        "the kernel spread the clients over both replicas"
    );
    let host_of = |i: usize| owner_of[&ids[i]].clone();
    let host_a = replicas.all[0].host_id.clone();
    let on_a: Vec<usize> = (0..CLIENTS).filter(|&i| host_of(i) == host_a).collect();
    let on_b: Vec<usize> = (0..CLIENTS).filter(|&i| host_of(i) != host_a).collect();
    println!("clients on the replicas: {} and {}", on_a.len(), on_b.len());

    // Broadcasts (each lands on either replica) reach every client exactly once.
    let n = 10;
    for k in 0..n {
        publish(&component, "news.x", format!("b{k}").as_bytes()).await;
    }
    let expected: BTreeSet<Vec<u8>> = (0..n).map(|k| format!("b{k}").into_bytes()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let mut got = BTreeSet::new();
        for _ in 0..n {
            let frame = next_json(client).await;
            assert_eq!(frame["subject"], "news.x", "client {i}");
            assert!(
                got.insert(body_of(&frame)),
                "client {i} got a broadcast twice"
            );
        }
        assert_eq!(got, expected, "client {i}");
    }
    futures::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.no_frame(Duration::from_millis(500))),
    )
    .await;

    // A direct message reaches its client wherever the call lands: 20 clients of each replica.
    let direct: Vec<usize> = on_a
        .iter()
        .take(20)
        .chain(on_b.iter().take(20))
        .copied()
        .collect();
    for &i in &direct {
        publish(
            &component,
            &format!("$ws.session.{}.direct", ids[i]),
            format!("d{i}").as_bytes(),
        )
        .await;
    }
    for &i in &direct {
        let frame = next_json(&mut clients[i]).await;
        assert_eq!(frame["subject"], "direct", "client {i}");
        assert_eq!(body_of(&frame), format!("d{i}").into_bytes(), "client {i}");
    }
    let stats = component.stats("default").await;
    assert!(
        stats["provider"]["forwarded"].as_u64().unwrap_or(0) > 0,
        "some calls went to the other replica: {}",
        stats["provider"]
    );
    assert_eq!(
        stats["provider"]["clients"],
        json!(CLIENTS),
        "{}",
        stats["provider"]
    );

    // Requests to a client of each replica, 5 times each, answered by the client.
    for &i in on_a.iter().take(5).chain(on_b.iter().take(5)) {
        let subject = format!("$ws.session.{}.question", ids[i]);
        let request = component.request("default", &subject, format!("q{i}").into_bytes(), 5000);
        let client = &mut clients[i];
        let answer = async {
            let frame = next_json(client).await;
            assert_eq!(frame["subject"], "question");
            let reply_to = frame["reply_to"].as_str().expect("a reply_to").to_string();
            client.send_text(envelope(&reply_to, format!("a{i}").as_bytes(), None));
        };
        let (reply, ()) = tokio::join!(request, answer);
        let reply = reply.expect("answered").expect("the client's reply");
        assert_eq!(&reply.body[..], format!("a{i}").as_bytes(), "client {i}");
    }

    // `$ws.close.<id>` closes a client of either replica (Close 1000).
    let (closed_a, closed_b) = (on_a[0], on_b[0]);
    for i in [closed_a, closed_b] {
        publish(&component, &format!("$ws.close.{}", ids[i]), b"").await;
        assert_eq!(clients[i].closed(LIMIT).await, Some(1000), "client {i}");
    }

    // Replica B dies: its clients' connections end, replica A's clients keep receiving.
    let b = replicas.by_host(&host_of(on_b[0]));
    replicas.signal(b, "KILL");
    for &i in on_b.iter().filter(|&&i| i != closed_b) {
        clients[i].closed(LIMIT).await;
    }
    for k in 0..3 {
        publish(&component, "news.after", format!("a{k}").as_bytes()).await;
    }
    for &i in on_a.iter().filter(|&&i| i != closed_a) {
        let mut got = BTreeSet::new();
        while got.len() < 3 {
            let frame = next_json(&mut clients[i]).await;
            assert_eq!(frame["subject"], "news.after", "client {i}");
            got.insert(body_of(&frame));
        }
    }
    // And the survivor lists only its own clients once it has forgotten B.
    wait_until("the survivor lists only its clients", LIMIT, || async {
        component.client_entries().await.len() == on_a.len() - 1
    })
    .await;
}

#[tokio::test]
async fn presence_lists_the_subscribers_of_a_subject_on_every_replica() {
    let mut replicas = Replicas::start(2, &[]).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("ws://{listen}/");
    let config = [("listen", listen.as_str()), ("presence", "true")];
    let consumer = replicas.all[0].consumer_link("pres", "default", &config);
    replicas.put_link(&consumer).await;
    for replica in &replicas.all {
        replica
            .logs
            .wait_for(&["another replica listens too"], LIMIT)
            .await;
    }
    let component = replicas.component("pres").await;
    let mut clients = Vec::new();
    for i in 0..12 {
        let mut client = WsClient::connect_when_listening(&url, Connect::default())
            .await
            .unwrap();
        let pattern = if i % 3 == 0 { "room.*" } else { "room.a" };
        assert_eq!(client.subscribe(pattern).await, json!({ "ok": pattern }));
        clients.push(client);
    }
    let _idle = WsClient::connect(&url).await.unwrap();
    let entries = component.client_entries().await;
    assert_eq!(entries.len(), 13, "{entries:?}");
    let owners: BTreeSet<&str> = entries.iter().filter_map(|e| e["owner"].as_str()).collect();
    let presence = |subject: &'static str| {
        let component = &component;
        async move {
            let answer = component
                .request("default", &format!("$ws.presence.{subject}"), &b""[..], 0)
                .await
                .expect("answered")
                .expect("presence answers");
            let answer: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            let ids: BTreeSet<String> = answer["clients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    assert!(c["connected_at"].is_string(), "{c}");
                    c["id"].as_str().unwrap().to_string()
                })
                .collect();
            ids
        }
    };
    let subscribed = |wild_only: bool| -> BTreeSet<String> {
        entries
            .iter()
            .filter(|e| {
                let subs = e["subscriptions"].as_array().unwrap();
                !subs.is_empty() && (!wild_only || subs.contains(&json!("room.*")))
            })
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    // `room.a`: all twelve subscribers, whichever replica they are on; `room.b`: the four of
    // `room.*`; the idle client is in neither.
    assert_eq!(
        presence("room.a").await,
        subscribed(false),
        "owners {owners:?}"
    );
    assert_eq!(presence("room.b").await.len(), 4);
    assert_eq!(presence("room.b").await, subscribed(true));
    assert!(presence("elsewhere").await.is_empty());
}
