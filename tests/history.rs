//! History and recovery (server mode, `history_size` / `history_ttl_sec`): the real provider
//! binary stores every broadcast in the lattice's JetStream (a real nats-server) before it sends
//! it; real WebSocket clients that drop and come back subscribe with `since` and get what they
//! missed, in order, then the live broadcasts, with no gap and no duplicate: on one provider,
//! across a provider restart, and on the other replica when theirs dies.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::clients::{Connect, WsClient};
use common::component::PlayedComponent;
use common::nats::free_port;
use common::replicas::Replicas;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

/// A broadcast as a client got it.
#[derive(Debug, Clone)]
struct Got {
    subject: String,
    body: String,
    offset: u64,
    epoch: String,
}

fn got(frame: &Value) -> Got {
    let body = base64::engine::general_purpose::STANDARD
        .decode(frame["body"].as_str().expect("a body"))
        .expect("base64");
    Got {
        subject: frame["subject"].as_str().expect("a subject").to_string(),
        body: String::from_utf8(body).expect("UTF-8"),
        offset: frame["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {frame}")),
        epoch: frame["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no epoch: {frame}"))
            .to_string(),
    }
}

/// `n` replicas with both links of component `hist` listening on a free port with
/// `history_size`, each with its history open (and, with more than one, knowing of the
/// others); the played component and the URL clients connect to.
async fn rig(n: usize, history_size: &str) -> (Replicas, Arc<PlayedComponent>, String) {
    let mut replicas = Replicas::start(n, &[]).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let config = [("listen", addr.as_str()), ("history_size", history_size)];
    replicas.listen_both_ways("hist", &config).await;
    for replica in &replicas.all {
        replica
            .logs
            .wait_for(&["a listener keeps its broadcasts"], LIMIT)
            .await;
    }
    let component = Arc::new(replicas.component("hist").await);
    (replicas, component, format!("ws://{addr}/"))
}

/// Publishes until a replica takes the call: one that is not there yet (or was just killed)
/// answers with an error, and nothing was stored then.
async fn publish(component: &PlayedComponent, subject: &str, body: &str) {
    component
        .publish_when_ready("default", subject, body.as_bytes().to_vec(), LIMIT)
        .await;
}

/// Publishes `range` on `news.<i % 3>` with `in_flight` publishers (each one after another,
/// `pace` between its publishes), counting in `done`.
fn broadcast(
    component: Arc<PlayedComponent>,
    range: std::ops::Range<usize>,
    in_flight: usize,
    pace: Duration,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let publishers = (0..in_flight).map(|k| {
            let (component, done, range) =
                (Arc::clone(&component), Arc::clone(&done), range.clone());
            async move {
                for i in range.skip(k).step_by(in_flight) {
                    publish(&component, &format!("news.{}", i % 3), &i.to_string()).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pace).await;
                }
            }
        });
        futures::future::join_all(publishers).await;
    })
}

/// Reads broadcasts until `n` arrived.
async fn read(client: &mut WsClient, n: usize) -> Vec<Got> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        all.push(got(&client.json(LIMIT).await));
    }
    all
}

/// Subscribes with `since`; the broadcasts replayed and then live until the answer, and the
/// answer.
async fn subscribe_since(client: &mut WsClient, pattern: &str, last: &Got) -> (Vec<Got>, Value) {
    subscribe_since_raw(client, pattern, last.offset, &last.epoch).await
}

async fn subscribe_since_raw(
    client: &mut WsClient,
    pattern: &str,
    offset: u64,
    epoch: &str,
) -> (Vec<Got>, Value) {
    client.send_text(
        json!({ "subscribe": pattern, "since": { "offset": offset, "epoch": epoch } }).to_string(),
    );
    let mut before = Vec::new();
    loop {
        let frame = client.json(LIMIT).await;
        if frame.get("subject").is_some() {
            before.push(got(&frame));
        } else {
            return (before, frame);
        }
    }
}

/// Every broadcast `0..n` exactly once, in the stream's order (rising offsets of one epoch).
fn assert_all_in_order(all: &[Got], n: usize) {
    let mut bodies: Vec<usize> = all.iter().map(|g| g.body.parse().unwrap()).collect();
    bodies.sort_unstable();
    let expected: Vec<usize> = (0..n).collect();
    if bodies != expected {
        let missing: Vec<_> = expected.iter().filter(|i| !bodies.contains(i)).collect();
        let twice: Vec<_> = bodies
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        panic!(
            "{} broadcasts, {} missing (first {:?}), {} twice (first {:?})",
            all.len(),
            missing.len(),
            missing.iter().take(10).collect::<Vec<_>>(),
            twice.len(),
            twice.iter().take(10).collect::<Vec<_>>()
        );
    }
    for pair in all.windows(2) {
        assert!(pair[0].offset < pair[1].offset, "out of order: {pair:?}");
        assert_eq!(pair[0].epoch, pair[1].epoch);
    }
    for g in all {
        let i: usize = g.body.parse().unwrap();
        assert_eq!(g.subject, format!("news.{}", i % 3));
    }
}

/// A client that drops for 2 s in the middle of a broadcast, then comes back with `since`.
/// `between` runs while it is away (a restart, a replica's death), given the host of the
/// replica the client was connected to.
async fn drop_and_recover<F: std::future::Future<Output = ()>>(
    url: &str,
    component: &Arc<PlayedComponent>,
    between: impl FnOnce(String) -> F,
) -> Vec<Got> {
    const N: usize = 1000;
    const FIRST: usize = 300;
    let mut client = WsClient::connect_when_listening(url, Connect::default())
        .await
        .expect("admitted");
    assert_eq!(client.subscribe("news.>").await, json!({ "ok": "news.>" }));
    let done = Arc::new(AtomicUsize::new(0));
    let first = broadcast(
        Arc::clone(component),
        0..FIRST,
        1,
        Duration::from_millis(2),
        Arc::clone(&done),
    );
    let mut all = read(&mut client, 150).await;
    let clients = component.client_entries().await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    let host = clients[0]["owner"].as_str().expect("an owner").to_string();
    client.close();
    let away = tokio::time::Instant::now();
    first.await.unwrap();
    between(host).await;
    tokio::time::sleep_until(away + Duration::from_secs(2)).await;
    let mut client = WsClient::connect_when_listening(url, Connect::default())
        .await
        .expect("admitted again");
    // The rest goes out fast, many at once, while the client recovers: the hand-over from
    // the replay to the live broadcasts happens under way.
    let second = broadcast(
        Arc::clone(component),
        FIRST..N,
        8,
        Duration::ZERO,
        Arc::clone(&done),
    );
    while done.load(Ordering::Relaxed) < FIRST + 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (recovered, answer) = subscribe_since(&mut client, "news.>", all.last().unwrap()).await;
    let at_answer = done.load(Ordering::Relaxed);
    assert_eq!(answer, json!({ "ok": "news.>", "recovered": true }));
    all.extend(recovered);
    let rest = N - all.len();
    all.extend(read(&mut client, rest).await);
    second.await.unwrap();
    client.no_frame(Duration::from_millis(300)).await;
    assert!(
        at_answer < N,
        "the broadcast was over before the recovery ended ({at_answer}): the hand-over to live was not tried"
    );
    assert_all_in_order(&all, N);
    all
}

#[tokio::test]
async fn a_client_that_drops_for_two_seconds_recovers_every_broadcast_in_order() {
    let (_replicas, component, url) = rig(1, "5000").await;
    drop_and_recover(&url, &component, |_| async {}).await;
    let stats = component.stats("default").await["provider"].clone();
    assert_eq!(stats["recoveries"], 1, "{stats}");
    assert_eq!(stats["recoveries_incomplete"], 0, "{stats}");
    assert!(stats["replayed"].as_u64().unwrap() > 0, "{stats}");
}

#[tokio::test]
async fn the_same_across_a_provider_restart() {
    let (mut replicas, component, url) = rig(1, "5000").await;
    let all = drop_and_recover(&url, &component, |_| async {
        replicas.signal(0, "KILL");
        let again = replicas.add(&[]).await;
        replicas.all[again]
            .logs
            .wait_for(&["a listener keeps its broadcasts"], LIMIT)
            .await;
    })
    .await;
    // One stream, one epoch, before and after the restart.
    assert_eq!(all[0].epoch, all[999].epoch);
}

#[tokio::test]
async fn the_same_on_the_other_replica_when_the_clients_replica_dies() {
    let (mut replicas, component, url) = rig(2, "5000").await;
    let mut killed = None;
    drop_and_recover(&url, &component, |host| {
        // The replica the client was on dies: it can only come back to the other one.
        let victim = replicas.by_host(&host);
        replicas.signal(victim, "KILL");
        killed = Some(victim);
        async {}
    })
    .await;
    assert!(killed.is_some());
}

#[tokio::test]
async fn recovery_says_what_the_history_no_longer_holds() {
    let (_replicas, component, url) = rig(1, "5").await;
    let mut watcher = WsClient::connect_when_listening(&url, Connect::default())
        .await
        .unwrap();
    assert_eq!(watcher.subscribe("news.>").await, json!({ "ok": "news.>" }));
    publish(&component, "news.0", "first").await;
    let first = got(&watcher.json(LIMIT).await);
    assert_eq!(first.body, "first");

    // Missed exactly history_size (5) of one subject: all of it is there.
    for i in 0..5 {
        publish(&component, "news.0", &format!("a{i}")).await;
    }
    let seen = read(&mut watcher, 5).await;
    let mut late = WsClient::connect(&url).await.unwrap();
    let (replayed, answer) = subscribe_since(&mut late, "news.>", &first).await;
    assert_eq!(answer, json!({ "ok": "news.>", "recovered": true }));
    let bodies: Vec<_> = replayed.iter().map(|g| g.body.as_str()).collect();
    assert_eq!(bodies, ["a0", "a1", "a2", "a3", "a4"]);
    // A live broadcast after the recovery comes once, with the next offset.
    publish(&component, "news.0", "live").await;
    let live = got(&late.json(LIMIT).await);
    assert_eq!(live.body, "live");
    assert!(live.offset > seen[4].offset);
    late.no_frame(Duration::from_millis(300)).await;

    // Missed one more than history_size of one subject: the oldest is gone, and it says so,
    // with what is left.
    let mut late = WsClient::connect(&url).await.unwrap();
    let (replayed, answer) = subscribe_since(&mut late, "news.0", &first).await;
    assert_eq!(answer, json!({ "ok": "news.0", "recovered": false }));
    assert!(!replayed.is_empty() && replayed.len() <= 6, "{replayed:?}");
    assert_eq!(replayed.last().unwrap().body, "live");

    // Other subjects' traffic does not count against a subject's history.
    let from = got(&watcher.json(LIMIT).await);
    assert_eq!(from.body, "live");
    for i in 0..20 {
        publish(&component, "news.busy", &format!("b{i}")).await;
    }
    publish(&component, "news.quiet", "q").await;
    let mut late = WsClient::connect(&url).await.unwrap();
    let (replayed, answer) = subscribe_since(&mut late, "news.quiet", &from).await;
    assert_eq!(answer, json!({ "ok": "news.quiet", "recovered": true }));
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].body, "q");

    // Another epoch's offsets recover nothing, and say so; live broadcasts follow.
    let mut stranger = WsClient::connect(&url).await.unwrap();
    let (replayed, answer) =
        subscribe_since_raw(&mut stranger, "news.>", 1, "not-this-stream").await;
    assert_eq!(answer, json!({ "ok": "news.>", "recovered": false }));
    assert!(replayed.is_empty(), "{replayed:?}");
    publish(&component, "news.0", "after").await;
    assert_eq!(got(&stranger.json(LIMIT).await).body, "after");

    // A broadcast's subject must be storable.
    let refused = component
        .publish("default", "news.*", b"x".to_vec(), None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        refused.contains("cannot be kept in a listener's history"),
        "{refused}"
    );

    let stats = component.stats("default").await["provider"].clone();
    assert_eq!(stats["recoveries"], 2, "{stats}");
    assert_eq!(stats["recoveries_incomplete"], 2, "{stats}");
}

#[tokio::test]
async fn since_on_a_listener_without_history_is_refused_with_the_reason() {
    let mut replicas = Replicas::start(1, &[]).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let config = [("listen", addr.as_str())];
    let consumer = replicas.all[0].consumer_link("plain", "default", &config);
    replicas.put_link(&consumer).await;
    let url = format!("ws://{addr}/");
    let mut client = WsClient::connect_when_listening(&url, Connect::default())
        .await
        .unwrap();
    let (_, answer) = subscribe_since_raw(&mut client, "news.>", 3, "e").await;
    let why = answer["error"].as_str().unwrap_or_default();
    assert!(why.contains("keeps no history"), "{answer}");
    // The client is still served.
    assert_eq!(client.subscribe("news.>").await, json!({ "ok": "news.>" }));
    // Nor does it answer presence without `presence = true`, and says so.
    let component = replicas.component("plain").await;
    let refused = component
        .request("default", "$ws.presence.news.a", &b""[..], 0)
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("presence is off"), "{refused}");
}
