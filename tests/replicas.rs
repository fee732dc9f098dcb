//! Several replicas of one provider (wadm's `instances` > 1): with `replicas = one` they behave
//! as one provider — one connection per session, each frame delivered once, calls on any replica
//! answered by the owner, failover when the owner goes; with `replicas = all` each holds its own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::component::{Behaviour, PlayedComponent};
use common::replicas::Replicas;
use common::ws::{Event, WsServer};
use common::{envelope, wait_until};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(20);

/// Two replicas with both links of `id` to `server` (with `extra` settings), the played
/// component, and the index of the owner once the standby has seen its lease.
async fn one_session(
    server: &WsServer,
    id: &str,
    extra: &[(&str, &str)],
) -> (Replicas, PlayedComponent, usize) {
    let mut replicas = Replicas::start(2, &[]).await;
    replicas.link_both_ways(id, &server.uri(), extra).await;
    let component = replicas.component(id).await;
    server.connected(LIMIT).await;
    let owner = replicas.owner(LIMIT).await;
    replicas.settled(owner, LIMIT).await;
    (replicas, component, owner)
}

/// The `$ws.sessions` answer through the link `default`.
async fn sessions(component: &PlayedComponent) -> Vec<serde_json::Value> {
    let answer = component
        .request("default", "$ws.sessions", &b""[..], 0)
        .await
        .expect("the call is answered")
        .expect("$ws.sessions answers");
    serde_json::from_slice(&answer.body).expect("JSON")
}

#[tokio::test]
async fn two_replicas_hold_one_connection_deliver_once_and_answer_calls_on_either() {
    let server = WsServer::responder().await;
    // A short reconnect_max_delay_ms: a standby that counted its time as a standby as time
    // without a connection would turn unhealthy within the test.
    let (replicas, component, owner) =
        one_session(&server, "rep-one", &[("reconnect_max_delay_ms", "500")]).await;
    assert_eq!(server.open(), 1, "exactly one replica connects");

    // 1000 frames from the server reach the component once each.
    let pushed: Vec<Message> = (0..1000)
        .map(|i| Message::text(envelope("feed", format!("f{i}").as_bytes(), None)))
        .collect();
    server.push_many(pushed);
    let received = component.wait_received(1000, LIMIT).await;
    let bodies: BTreeSet<Vec<u8>> = received.iter().map(|m| m.body.to_vec()).collect();
    assert_eq!(bodies.len(), 1000, "1000 distinct frames delivered");

    // 1000 publishes, one in flight, land on both replicas and reach the server once, in order.
    for i in 0..1000 {
        component
            .publish("default", "out", format!("p{i}"), None)
            .await
            .expect("answered")
            .unwrap_or_else(|e| panic!("publish {i} failed: {e}"));
    }
    let mut order = Vec::new();
    while order.len() < 1000 {
        let frame = server.frame(LIMIT).await;
        let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
        if value["subject"] == "out" {
            order.push(value["body"].as_str().unwrap().to_string());
        }
    }
    let expected: Vec<String> = (0..1000)
        .map(|i| common::b64(format!("p{i}").as_bytes()))
        .collect();
    assert_eq!(order, expected, "every publish once, in order");

    // Request-reply, and a server's request answered through its reply_to.
    for i in 0..20 {
        let reply = component
            .request("default", "ask", format!("q{i}"), 3000)
            .await
            .expect("answered")
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(
            &reply.body[..],
            format!("q{i}").as_bytes(),
            "the reply to request {i}"
        );
    }
    component.set_behaviour(Behaviour {
        answer_through: Some("default".into()),
        ..Default::default()
    });
    for i in 0..20 {
        server.push(Message::text(envelope(
            "question",
            format!("s{i}").as_bytes(),
            Some(&format!("srv.inbox.{i}")),
        )));
        let answer = server
            .expect("the answer", LIMIT, |e| match e {
                Event::Frame { message, .. } => {
                    let value: serde_json::Value =
                        serde_json::from_slice(&message.clone().into_data()).ok()?;
                    (value["subject"] == format!("srv.inbox.{i}")).then_some(value)
                }
                _ => None,
            })
            .await;
        assert_eq!(
            answer["body"],
            common::b64(format!("answer: s{i}").as_bytes())
        );
    }
    component.set_behaviour(Behaviour::default());

    // `$ws.sessions` lists the session once, with its owner, whichever replica answers; and
    // `$ws.session.<id>` reaches it from either.
    let owner_host = replicas.all[owner].host_id.clone();
    let mut id = String::new();
    for _ in 0..10 {
        let list = sessions(&component).await;
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["owner"], owner_host.as_str(), "{list:?}");
        assert_eq!(list[0]["state"], "open", "{list:?}");
        id = list[0]["id"].as_str().unwrap().to_string();
    }
    for i in 0..20 {
        component
            .publish(
                "default",
                &format!("$ws.session.{id}.direct"),
                format!("d{i}"),
                None,
            )
            .await
            .expect("answered")
            .unwrap_or_else(|e| panic!("$ws.session publish {i} failed: {e}"));
    }
    let mut direct = 0;
    while direct < 20 {
        let frame = server.frame(LIMIT).await;
        let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
        if value["subject"] == "direct" {
            direct += 1;
        }
    }
    // Calls landed on the standby and were forwarded: the owner served some.
    let stats = component.stats("default").await;
    assert!(stats["provider"]["served"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["provider"]["sessions_open"], 1, "{stats}");
    assert_eq!(server.open(), 1, "still exactly one connection");
    assert_eq!(component.count(), 1000 + 20, "nothing delivered twice");
    // Both replicas are healthy: the owner connected, the standby because the owner is.
    for health in replicas.health_of_all(LIMIT).await {
        assert_eq!(health["healthy"], true, "{health}");
    }
}

#[tokio::test]
async fn with_replicas_all_every_replica_holds_its_own_connection() {
    let server = WsServer::recorder().await;
    let mut replicas = Replicas::start(2, &[]).await;
    replicas
        .link_both_ways("rep-all", &server.uri(), &[("replicas", "all")])
        .await;
    let component = replicas.component("rep-all").await;
    server.connected(LIMIT).await;
    server.connected(LIMIT).await;
    assert_eq!(server.open(), 2);
    let reached = server.broadcast(vec![Message::text(envelope("b", b"x", None))]);
    assert_eq!(reached, 2);
    component.wait_received(2, LIMIT).await;
}

/// A JSON envelope with an `id`, as a server of `ack = true` sends it.
fn numbered(subject: &str, i: usize) -> Message {
    let mut value: serde_json::Value =
        serde_json::from_str(&envelope(subject, format!("m{i}").as_bytes(), None)).unwrap();
    value["id"] = serde_json::json!(format!("m{i}"));
    Message::text(value.to_string())
}

/// What the server got until nothing came for `quiet`: the ids the provider acknowledged and
/// the bodies (decoded) of the envelopes it published.
async fn drain(server: &WsServer, quiet: Duration) -> (BTreeSet<String>, Vec<String>) {
    let (mut acks, mut bodies) = (BTreeSet::new(), Vec::new());
    while let Ok(frame) = tokio::time::timeout(quiet, server.frame(quiet + LIMIT)).await {
        let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
        if let Some(id) = value["ack"].as_str() {
            acks.insert(id.to_string());
        } else if let Some(body) = value["body"].as_str() {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap();
            bodies.push(String::from_utf8(raw).unwrap());
        }
    }
    (acks, bodies)
}

#[tokio::test]
async fn when_the_owner_is_killed_a_standby_takes_over_within_failover_sec_and_ack_loses_nothing() {
    let server = WsServer::acking().await;
    let (mut replicas, component, owner) = one_session(
        &server,
        "rep-kill",
        &[("ack", "true"), ("failover_sec", "2")],
    )
    .await;
    let component = std::sync::Arc::new(component);

    // Numbered publishes, each retried until Ok, while the owner is killed.
    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (component, published) = (component.clone(), published.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                // A call that went to the killed replica gets no answer: the played host's
                // wRPC client waits 20 s for it (a real host 10 s), then it is made again.
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match component
                        .publish("default", "n", format!("n{i}"), None)
                        .await
                    {
                        Ok(Ok(())) => break,
                        other => assert!(
                            Instant::now() < deadline,
                            "publish n{i} never succeeded: {other:?}"
                        ),
                    }
                }
                published.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    server.push_many((0..100).map(|i| numbered("m", i)).collect());
    wait_until("50 publishes before the kill", LIMIT, || {
        let published = published.clone();
        async move { published.load(std::sync::atomic::Ordering::SeqCst) >= 50 }
    })
    .await;
    replicas.signal(owner, "KILL");
    let killed = Instant::now();
    // Counted, not awaited as an event: the frames seen meanwhile stay in the server's queue.
    wait_until("the standby connected", LIMIT, || async {
        server.accepted() >= 2
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "failover after SIGKILL: the standby connected {} ms after the kill (failover_sec = 2)",
        took.as_millis()
    );
    assert!(took < Duration::from_millis(2000 + 1000), "took {took:?}");
    server.push_many((100..200).map(|i| numbered("m", i)).collect());
    publisher.await.unwrap();

    // What the server saw not acknowledged it sends again, as an `ack = true` server does.
    let mut acked = BTreeSet::new();
    let mut bodies = Vec::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        let (acks, got) = drain(&server, Duration::from_millis(700)).await;
        acked.extend(acks);
        bodies.extend(got);
        let missing: Vec<usize> = (0..200)
            .filter(|i| !acked.contains(&format!("m{i}")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never acknowledged: {missing:?}");
        server.push_many(missing.into_iter().map(|i| numbered("m", i)).collect());
    }
    let delivered: BTreeSet<Vec<u8>> = component
        .received()
        .iter()
        .map(|m| m.body.to_vec())
        .collect();
    for i in 0..200 {
        assert!(
            delivered.contains(format!("m{i}").as_bytes()),
            "m{i} never reached the component"
        );
        assert!(
            bodies.contains(&format!("n{i}")),
            "n{i} never reached the server"
        );
    }
    eprintln!(
        "across the kill: {} deliveries for 200 server messages, {} frames for 200 publishes (at least once)",
        component.count(),
        bodies.len()
    );
}

#[tokio::test]
async fn a_paused_owner_gives_its_connection_up_without_delivering_again() {
    let server = WsServer::recorder().await;
    let (mut replicas, component, owner) =
        one_session(&server, "rep-stop", &[("failover_sec", "2")]).await;
    let standby = 1 - owner;

    replicas.signal(owner, "STOP");
    server.connected(LIMIT).await;
    // Without ack, what the old owner had read is lost: the takeover says so and is counted.
    let warned = replicas.all[standby]
        .logs
        .wait_for(&["took the session over"], LIMIT)
        .await;
    assert!(
        warned.contains("is lost unless the server sends it again"),
        "{warned}"
    );

    // Both connections are open (the paused one cannot close); a broadcast reaches both sockets.
    assert_eq!(server.open(), 2);
    let reached = server.broadcast(
        (0..50)
            .map(|i| Message::text(envelope("after", format!("a{i}").as_bytes(), None)))
            .collect(),
    );
    assert_eq!(reached, 2);
    component.wait_received(50, LIMIT).await;

    replicas.signal(owner, "CONT");
    replicas.all[owner]
        .logs
        .wait_for(&["another replica holds this session's lease now"], LIMIT)
        .await;
    wait_until("the old owner closed its connection", LIMIT, || async {
        server.open() == 1
    })
    .await;
    // (Asked only now: a paused replica still receives its share of the calls.)
    let stats = component.stats("default").await;
    assert_eq!(stats["provider"]["takeovers"], 1, "{stats}");
    // Everything the old owner read after it woke was dropped, not delivered: one copy each.
    let again = replicas.all[owner].logs.all();
    let delivered = component.received();
    assert_eq!(
        delivered.len(),
        50,
        "no duplicate delivery; the old owner's log:\n{again}"
    );
    // The standby still serves.
    server.push(Message::text(envelope("later", b"z", None)));
    component.wait_received(51, LIMIT).await;
}

#[tokio::test]
async fn when_the_owner_stops_a_standby_takes_over_at_once() {
    let server = WsServer::recorder().await;
    let (mut replicas, component, owner) =
        one_session(&server, "rep-shut", &[("failover_sec", "30")]).await;
    let stopped = Instant::now();
    replicas.all[owner].shutdown().await;
    server.connected(LIMIT).await;
    let took = stopped.elapsed();
    eprintln!("handover after a shutdown: {} ms", took.as_millis());
    // Released, not left to expire: far sooner than failover_sec.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    server.push(Message::text(envelope("x", b"1", None)));
    component.wait_received(1, LIMIT).await;
}

#[tokio::test]
async fn one_hundred_link_cycles_on_three_replicas_leave_nothing_behind() {
    let server = WsServer::recorder().await;
    let mut replicas = Replicas::start(3, &[]).await;
    // A session that stays through the cycles, to ask each replica for its tasks.
    let probe_server = WsServer::recorder().await;
    let probe_uri = probe_server.uri();
    let probe_link = replicas.all[0].consumer_link("rep-probe", "default", &[("uri", &probe_uri)]);
    replicas.put_link(&probe_link).await;
    let probe = replicas.component("rep-probe").await;
    probe_server.connected(LIMIT).await;
    let probe_id = sessions(&probe).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let uri = server.uri();
    let config = [("uri", uri.as_str()), ("failover_sec", "2")];
    let consumer = replicas.all[0].consumer_link("rep-churn", "default", &config);
    let handler = replicas.all[0].handler_link("rep-churn", "default", &config);
    let (mut fds, mut subscriptions, mut tasks) = (Vec::new(), 0, BTreeMap::new());
    for cycle in 0..100 {
        replicas.put_link(&consumer).await;
        replicas.put_link(&handler).await;
        server.connected(LIMIT).await;
        replicas.delete_link(&consumer).await;
        replicas.delete_link(&handler).await;
        wait_until("the connection closed", LIMIT, || async {
            server.open() == 0
        })
        .await;
        if cycle == 0 {
            fds = replicas.all.iter().map(|r| r.fds_and_threads().0).collect();
            subscriptions = replicas.nats.subscriptions().await;
            tasks = tasks_of_every_replica(&probe, &replicas, None).await;
        }
    }
    // Before the test's own key-value client below, which subscribes too.
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = replicas.nats.subscriptions().await;
        if now <= subscriptions {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{now} subscriptions on the server after 100 cycles, {subscriptions} after the first"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = replicas.nats.client().await;
    let bucket = format!("WSPROV_{}_{}", replicas.lattice, replicas.provider_key);
    let kv = async_nats::jetstream::new(client)
        .get_key_value(&bucket)
        .await
        .expect("the lease bucket exists");
    wait_until("no lease is left but the probe's", LIMIT, || async {
        use futures::StreamExt as _;
        let keys: Vec<String> = kv
            .keys()
            .await
            .unwrap()
            .filter_map(|k| async { k.ok() })
            .collect()
            .await;
        keys == [probe_id.clone()]
    })
    .await;
    // Tasks come and go with calls (the probe's own among them): a few, never one per cycle.
    tasks_of_every_replica(&probe, &replicas, Some((&tasks, 5))).await;
    for (i, replica) in replicas.all.iter().enumerate() {
        let now = replica.fds_and_threads().0;
        assert!(
            now <= fds[i] + 2,
            "replica {i}: {now} fds after 100 cycles, {} after the first",
            fds[i]
        );
    }
    assert_eq!(
        server.accepted(),
        100,
        "one connection per cycle, never a second one"
    );
}

/// `tasks_alive` of every replica, by host id, from `$ws.stats` through `probe` (each call lands
/// on a replica NATS picks, and the answer names it). With `within`, asks until every replica
/// has at most its baseline plus the slack.
async fn tasks_of_every_replica(
    probe: &PlayedComponent,
    replicas: &Replicas,
    within: Option<(&BTreeMap<String, u64>, u64)>,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + LIMIT;
    let mut seen = BTreeMap::new();
    loop {
        let stats = probe.stats("default").await;
        let replica = stats["provider"]["replica"].as_str().unwrap().to_string();
        let alive = stats["provider"]["tasks_alive"].as_u64().unwrap();
        let fine = match within {
            None => true,
            Some((baseline, slack)) => alive <= baseline[&replica] + slack,
        };
        if fine {
            seen.insert(replica, alive);
        }
        if seen.len() == replicas.all.len() {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "tasks of every replica within {LIMIT:?}: {seen:?}, baseline {within:?}"
        );
    }
}

#[tokio::test]
async fn without_jetstream_replicas_one_is_refused_saying_why_and_all_works() {
    let nats = common::nats::NatsServer::start_without_jetstream().await;
    let provider = common::provider::ProviderProcess::start(&nats, Default::default()).await;
    let server = WsServer::recorder().await;
    let uri = server.uri();
    provider
        .put_link(&provider.consumer_link("rep-nojs", "default", &[("uri", &uri)]))
        .await;
    let refused = provider
        .logs
        .wait_for(&["refused", "rep-nojs"], LIMIT)
        .await;
    assert!(refused.contains("needs JetStream"), "{refused}");
    assert!(refused.contains("`replicas` to `all`"), "{refused}");
    common::docs::assert_shows("replicas = one is refused: no JetStream", &refused);
    provider
        .put_link(&provider.consumer_link(
            "rep-nojs",
            "other",
            &[("uri", &uri), ("replicas", "all")],
        ))
        .await;
    server.connected(LIMIT).await;
}

/// A pool across replicas: one lease for the pool, so one connection whatever the members; each
/// member gets its subjects once, and every member's publish reaches the server, whichever
/// replica it lands on.
#[tokio::test]
async fn a_pool_has_one_owner_across_replicas() {
    let server = WsServer::recorder().await;
    let mut replicas = Replicas::start(2, &[]).await;
    let uri = server.uri();
    for (id, subscriptions) in [("pool-a", "a.*"), ("pool-b", "b.*")] {
        let config = [
            ("uri", uri.as_str()),
            ("pool", "shared"),
            ("subscriptions", subscriptions),
        ];
        let first = &replicas.all[0];
        let consumer = first.consumer_link(id, "default", &config);
        let handler = first.handler_link(id, "default", &config);
        replicas.put_link(&consumer).await;
        replicas.put_link(&handler).await;
    }
    let a = replicas.component("pool-a").await;
    let b = replicas.component("pool-b").await;
    server.connected(LIMIT).await;
    let owner = replicas.owner(LIMIT).await;
    replicas.settled(owner, LIMIT).await;
    assert_eq!(
        server.open(),
        1,
        "one connection for the pool across replicas"
    );

    let pushed: Vec<Message> = (0..100)
        .flat_map(|i| {
            [
                Message::text(envelope("a.x", format!("a{i}").as_bytes(), None)),
                Message::text(envelope("b.y", format!("b{i}").as_bytes(), None)),
            ]
        })
        .collect();
    server.push_many(pushed);
    a.wait_received(100, LIMIT).await;
    b.wait_received(100, LIMIT).await;
    for i in 0..20 {
        for (component, name) in [(&a, "a"), (&b, "b")] {
            component
                .publish(
                    "default",
                    &format!("out.{name}"),
                    format!("{name}{i}"),
                    None,
                )
                .await
                .expect("answered")
                .unwrap_or_else(|e| panic!("publish {i} of {name} failed: {e}"));
        }
    }
    let mut out = BTreeMap::new();
    while out.values().sum::<usize>() < 40 {
        let frame = server.frame(LIMIT).await;
        let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
        *out.entry(value["subject"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(out["out.a"], 20);
    assert_eq!(out["out.b"], 20);
    assert_eq!(server.open(), 1, "still one connection");
    assert_eq!(a.count(), 100, "nothing delivered twice");
    assert_eq!(b.count(), 100, "nothing delivered twice");

    // The member that came first leaves; the pool's session stays, and the other member's
    // calls, on whichever replica they land, still reach it.
    for replica in &replicas.all {
        let config = [
            ("uri", uri.as_str()),
            ("pool", "shared"),
            ("subscriptions", "a.*"),
        ];
        replica
            .delete_link(&replica.consumer_link("pool-a", "default", &config))
            .await;
        replica
            .delete_link(&replica.handler_link("pool-a", "default", &config))
            .await;
        replica
            .logs
            .wait_for(
                &[
                    "the pool's session stays for its other links",
                    "key=pool-a/default",
                ],
                LIMIT,
            )
            .await;
    }
    for i in 0..20 {
        b.publish("default", "after", format!("after{i}"), None)
            .await
            .expect("answered")
            .unwrap_or_else(|e| panic!("publish {i} after the first member left failed: {e}"));
    }
    let mut after = 0;
    while after < 20 {
        let frame = server.frame(LIMIT).await;
        let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
        if value["subject"] == "after" {
            after += 1;
        }
    }
    assert_eq!(server.open(), 1, "still one connection");
}

/// A standby's health follows the owner's connection within moments, not a lease period later:
/// the owner renews its lease as soon as its connection goes down or comes back up, not at the
/// next period (here 100 s away: `failover_sec` 400). The server goes away for a while, then
/// comes back on the same port.
#[tokio::test]
async fn a_standby_sees_the_owner_lose_and_regain_its_connection_at_once() {
    let server = WsServer::recorder().await;
    let port = server.addr.port();
    let (replicas, _component, _owner) = one_session(
        &server,
        "quick",
        &[("failover_sec", "400"), ("reconnect_max_delay_ms", "500")],
    )
    .await;
    let healthy = |want: bool| {
        let replicas = &replicas;
        move || async move {
            replicas
                .health_of_all(LIMIT)
                .await
                .iter()
                .all(|h| h["healthy"] == want)
        }
    };
    wait_until("both replicas healthy", LIMIT, healthy(true)).await;
    drop(server);
    wait_until(
        "both replicas unhealthy while the server is gone",
        Duration::from_secs(5),
        healthy(false),
    )
    .await;
    let server = WsServer::recorder_on(port).await;
    server.connected(LIMIT).await;
    wait_until(
        "both replicas healthy again",
        Duration::from_secs(5),
        healthy(true),
    )
    .await;
}
