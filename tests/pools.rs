//! `pool`: links of several components on one WebSocket connection, through the real provider
//! binary against a real server. Each member handler link gets the subjects its `subscriptions`
//! match, once each; what none matches is `unrouted`; a link whose settings differ is refused;
//! a member's delete leaves the others connected; the last one's closes the connection.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::component::{Behaviour, PlayedComponent};
use common::ws::{Event, Message, WsServer};
use common::{envelope, Rig};

const WAIT: Duration = Duration::from_secs(10);

fn subjects(component: &PlayedComponent) -> Vec<String> {
    component
        .received()
        .into_iter()
        .map(|m| m.subject)
        .collect()
}

#[tokio::test]
async fn components_share_one_connection_each_getting_what_it_subscribes_to() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let uri = server.uri();
    let pool = [("uri", uri.as_str()), ("pool", "feed")];
    let with = |subscriptions: &'static str| {
        let mut config = pool.to_vec();
        config.push(("subscriptions", subscriptions));
        config
    };
    let orders = rig.component("orders").await;
    let audit = rig.component("audit").await;
    let sender = rig.component("sender").await;
    let provider = &rig.provider;
    provider
        .put_link(&provider.consumer_link("orders", "default", &pool))
        .await;
    provider
        .put_link(&provider.handler_link("orders", "default", &with("orders.*")))
        .await;
    // A member's own delivery bounds and deadline may differ from the pool's.
    let mut audit_config = with("audit.>, orders.both");
    audit_config.extend([("max_in_flight", "1"), ("delivery_timeout_ms", "2000")]);
    provider
        .put_link(&provider.handler_link("audit", "trail", &audit_config))
        .await;
    provider
        .put_link(&provider.consumer_link("sender", "out", &pool))
        .await;
    provider
        .logs
        .wait_count(&["link joins the pool's session"], 2, WAIT)
        .await;
    server.connected(WAIT).await;

    for subject in ["orders.created", "audit.x.y", "other.q", "orders.both"] {
        server.push(Message::text(envelope(subject, b"hi", None)));
    }
    orders.wait_received(2, WAIT).await;
    audit.wait_received(2, WAIT).await;
    assert_eq!(subjects(&orders), ["orders.created", "orders.both"]);
    assert_eq!(subjects(&audit), ["audit.x.y", "orders.both"]);
    assert!(
        sender.received().is_empty(),
        "a consumer-only member receives nothing"
    );

    // Both consumers publish on the one connection.
    orders
        .publish("default", "from.orders", b"1".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    sender
        .publish("out", "from.sender", b"2".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    let mut sent = BTreeSet::new();
    for _ in 0..2 {
        let frame: serde_json::Value =
            serde_json::from_slice(&server.frame(WAIT).await.into_data()).unwrap();
        sent.insert(frame["subject"].as_str().unwrap().to_string());
    }
    assert_eq!(
        sent,
        BTreeSet::from(["from.orders".into(), "from.sender".into()])
    );
    assert_eq!(server.accepted(), 1, "one connection for the whole pool");

    // `$ws.sessions`: the pool's session once, with its members.
    let stats = orders.stats("default").await;
    assert_eq!(stats["sessions"][0]["unrouted"], 1, "{stats}");
    assert_eq!(stats["sessions"][0]["delivered"], 4, "{stats}");
    let answer = orders
        .request("default", "$ws.sessions", Vec::new(), 0)
        .await
        .unwrap()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["pool"], "feed");
    let members: BTreeSet<String> = list[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["component"].as_str().unwrap(),
                m["link_name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([
            "audit/trail".to_string(),
            "orders/default".to_string(),
            "sender/out".to_string()
        ])
    );

    // A link whose settings differ is refused, naming the keys; the pool is undisturbed.
    let _ = rig.component("odd").await;
    let mut odd = pool.to_vec();
    odd.push(("max_pending", "7"));
    provider
        .put_link(&provider.consumer_link("odd", "default", &odd))
        .await;
    provider
        .logs
        .wait_for(
            &[
                "consumer link odd/default refused: it would join pool `feed`",
                "differ from the pool's in `max_pending`",
            ],
            WAIT,
        )
        .await;

    // A member's delete leaves the others on the connection: audit's subjects are unrouted now.
    provider
        .delete_link(&provider.handler_link("audit", "trail", &audit_config))
        .await;
    provider
        .logs
        .wait_for(
            &[
                "the pool's session stays for its other links",
                "key=audit/trail",
            ],
            WAIT,
        )
        .await;
    server.push(Message::text(envelope("audit.after", b"x", None)));
    server.push(Message::text(envelope("orders.after", b"y", None)));
    orders.wait_received(3, WAIT).await;
    assert_eq!(subjects(&orders)[2], "orders.after");
    assert_eq!(
        audit.received().len(),
        2,
        "the deleted member gets nothing more"
    );
    assert_eq!(server.accepted(), 1, "still the one connection");

    // The last member's delete closes it with 1000.
    provider
        .delete_link(&provider.consumer_link("sender", "out", &pool))
        .await;
    provider
        .delete_link(&provider.handler_link("orders", "default", &with("orders.*")))
        .await;
    provider
        .delete_link(&provider.consumer_link("orders", "default", &pool))
        .await;
    let code = server
        .expect("Close frame", WAIT, |e| match e {
            Event::Closed { frame, .. } => Some(frame.as_ref().map(|f| u16::from(f.code))),
            _ => None,
        })
        .await;
    assert_eq!(code, Some(1000));
}

/// With `ack`, a message that goes to two members is acknowledged once, after both accepted it;
/// one no member takes is acknowledged at once (counted as unrouted).
#[tokio::test]
async fn a_pools_message_is_acknowledged_once_every_member_accepted_it() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let uri = server.uri();
    let base = [("uri", uri.as_str()), ("pool", "acked"), ("ack", "true")];
    let a = rig.component("a").await;
    let b = rig.component("b").await;
    let provider = &rig.provider;
    let mut a_config = base.to_vec();
    a_config.push(("subscriptions", "both.*"));
    let mut b_config = base.to_vec();
    b_config.push(("subscriptions", "both.*, b.only"));
    provider
        .put_link(&provider.handler_link("a", "default", &a_config))
        .await;
    provider
        .put_link(&provider.handler_link("b", "default", &b_config))
        .await;
    provider
        .logs
        .wait_for(&["link joins the pool's session", "key=b/default"], WAIT)
        .await;
    server.connected(WAIT).await;
    for (subject, id) in [("both.x", "m1"), ("nobody", "m2"), ("b.only", "m3")] {
        let frame = serde_json::json!({"subject": subject, "body": "aGk=", "id": id}).to_string();
        server.push(Message::text(frame));
    }
    a.wait_received(1, WAIT).await;
    b.wait_received(2, WAIT).await;
    let mut acks = Vec::new();
    for _ in 0..3 {
        let frame: serde_json::Value =
            serde_json::from_slice(&server.frame(WAIT).await.into_data()).unwrap();
        acks.push(frame["ack"].as_str().expect("an ack").to_string());
    }
    acks.sort();
    assert_eq!(acks, ["m1", "m2", "m3"], "each once");
    server.no_frame(Duration::from_millis(300)).await;
}

/// Each member handler link keeps its own `max_in_flight`: a member allowed 2 at once never runs
/// more, even while another member of the same connection runs 6 at once.
#[tokio::test]
async fn each_member_handler_link_has_its_own_max_in_flight() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let uri = server.uri();
    let provider = &rig.provider;
    let wide = rig.component("wide").await;
    let narrow = rig.component("narrow").await;
    for (component, subscriptions, max_in_flight) in [(&wide, "a.*", "6"), (&narrow, "b.*", "2")] {
        component.set_behaviour(Behaviour {
            gated: true,
            ..Behaviour::default()
        });
        let config = [
            ("uri", uri.as_str()),
            ("pool", "bounded"),
            ("subscriptions", subscriptions),
            ("max_in_flight", max_in_flight),
        ];
        provider
            .put_link(&provider.handler_link(&component.id, "default", &config))
            .await;
    }
    provider
        .logs
        .wait_for(
            &["link joins the pool's session", "key=narrow/default"],
            WAIT,
        )
        .await;
    server.connected(WAIT).await;
    // Narrow's four come last: while narrow waits for a slot, the pool reads no further.
    for n in 0..6 {
        server.push(Message::text(envelope(&format!("a.{n}"), b"w", None)));
    }
    for n in 0..4 {
        server.push(Message::text(envelope(&format!("b.{n}"), b"n", None)));
    }
    wide.wait_received(6, WAIT).await;
    narrow.wait_received(2, WAIT).await;
    assert_eq!(wide.max_concurrent(), 6, "wide runs its 6 at once");
    narrow.release(4);
    narrow.wait_received(4, WAIT).await;
    assert_eq!(
        narrow.max_concurrent(),
        2,
        "narrow never runs more than its max_in_flight"
    );
    wide.release(6);
}
