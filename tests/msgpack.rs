//! `format = msgpack`: the binary envelope, both ways, against real WebSocket servers, through the
//! real provider binary. The test side reads and writes MessagePack with rmpv, another
//! implementation than the provider's.

mod common;

use std::time::Duration;

use common::component::PlayedComponent;
use common::ws::{Message, WsServer};
use common::{msgpack_envelope, msgpack_map, Rig};
use rmpv::Value;

const WAIT: Duration = Duration::from_secs(10);

fn binary(message: &Message) -> Vec<u8> {
    match message {
        Message::Binary(bytes) => bytes.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

/// Component `id` with a msgpack consumer link to `server`, once a first publish went through.
async fn msgpack_consumer(rig: &Rig, server: &WsServer, id: &str) -> PlayedComponent {
    let component = rig.component(id).await;
    let link = rig.provider.consumer_link(
        id,
        "default",
        &[("uri", &server.uri()), ("format", "msgpack")],
    );
    rig.provider.put_link(&link).await;
    component
        .publish_when_ready("default", "warm.up", &b""[..], WAIT)
        .await;
    component
}

#[tokio::test]
async fn publish_sends_the_exact_map_in_a_binary_frame() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = msgpack_consumer(&rig, &server, "publisher").await;
    let _ = server.frame(WAIT).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("empty.body", vec![], None),
        ("all.bytes", all_bytes, Some("_INBOX.reply.1")),
        ("big.body", big.clone(), None),
    ];
    for (subject, body, reply_to) in cases {
        let result = component
            .publish("default", subject, body.clone(), reply_to)
            .await
            .unwrap();
        assert_eq!(result, Ok(()), "publish {subject}");
        let map = msgpack_map(&binary(&server.frame(WAIT).await));
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        let expected_keys: &[&str] = if reply_to.is_some() {
            &["body", "reply_to", "subject"]
        } else {
            &["body", "subject"]
        };
        assert_eq!(keys, expected_keys, "keys of {subject}");
        assert_eq!(map["subject"], Value::from(subject));
        assert_eq!(
            map["body"],
            Value::Binary(body.clone()),
            "body of {subject}"
        );
        if let Some(reply_to) = reply_to {
            assert_eq!(map["reply_to"], Value::from(reply_to));
        }
    }
    // No base64: the frame is about as large as the body.
    let stats = component.stats("default").await;
    let bytes_out = stats["sessions"][0]["bytes_out"].as_u64().unwrap();
    assert!(
        bytes_out < (big.len() as u64) * 11 / 10,
        "{bytes_out} bytes written for a body of {}",
        big.len()
    );
}

#[tokio::test]
async fn server_maps_reach_the_handler_exactly_and_garbage_is_dropped() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("receiver").await;
    rig.provider
        .put_link(&rig.provider.handler_link(
            "receiver",
            "default",
            &[("uri", &server.uri()), ("format", "msgpack")],
        ))
        .await;
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "receiver",
            "default",
            &[("uri", &server.uri()), ("format", "msgpack")],
        ))
        .await;
    server.connected(WAIT).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    server.push(Message::binary(msgpack_envelope(
        "orders.created",
        &all_bytes,
        Some("_INBOX.abc"),
        None,
    )));
    // Not MessagePack, a map without `subject`, and a JSON envelope: dropped, counted.
    server.push(Message::binary(vec![0xc1, 0x00]));
    let mut no_subject = Vec::new();
    rmpv::encode::write_value(
        &mut no_subject,
        &Value::Map(vec![("body".into(), Value::Binary(vec![1]))]),
    )
    .unwrap();
    server.push(Message::binary(no_subject));
    server.push(Message::text(common::envelope("json.frame", b"x", None)));
    // A str body, and unknown keys, are accepted.
    let mut odd = Vec::new();
    rmpv::encode::write_value(
        &mut odd,
        &Value::Map(vec![
            ("extra".into(), Value::Array(vec![1.into(), 2.into()])),
            ("subject".into(), "str.body".into()),
            ("body".into(), "hello".into()),
        ]),
    )
    .unwrap();
    server.push(Message::binary(odd));

    let received = component.wait_received(2, WAIT).await;
    assert_eq!(received[0].subject, "orders.created");
    assert_eq!(&received[0].body[..], &all_bytes[..]);
    assert_eq!(received[0].reply_to.as_deref(), Some("_INBOX.abc"));
    assert_eq!(received[1].subject, "str.body");
    assert_eq!(&received[1].body[..], b"hello");
    assert_eq!(received.len(), 2);
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["dropped_malformed"], 3, "{stats}");
    rig.provider
        .logs
        .wait_for(
            &["dropped an incoming frame", "frame is not MessagePack"],
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn request_and_reply_in_msgpack() {
    let rig = Rig::start().await;
    let server = WsServer::responder().await;
    let component = msgpack_consumer(&rig, &server, "asker").await;
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let reply = component
        .request("default", "questions.q1", body.clone(), 3000)
        .await
        .unwrap()
        .expect("the responder answers");
    assert_eq!(&reply.body[..], &body[..]);
    assert!(reply.subject.starts_with("_INBOX."), "{}", reply.subject);
}

#[tokio::test]
async fn acknowledged_delivery_in_msgpack_both_ways() {
    let rig = Rig::start().await;
    let server = WsServer::acking().await;
    let component = rig.component("acked").await;
    let config = [
        ("uri", server.uri()),
        ("format", "msgpack".to_string()),
        ("ack", "true".to_string()),
    ];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rig.provider
        .put_link(&rig.provider.consumer_link("acked", "default", &config))
        .await;
    rig.provider
        .put_link(&rig.provider.handler_link("acked", "default", &config))
        .await;
    // Outgoing: Ok only after the server's msgpack ack of the envelope's string id.
    component
        .publish_when_ready("default", "out.1", &b"one"[..], WAIT)
        .await;
    let sent = msgpack_map(&binary(&server.frame(WAIT).await));
    let id = sent["id"].as_str().expect("a string id").to_string();
    assert_eq!(sent["subject"], Value::from("out.1"));

    // Incoming: an envelope with an id is acknowledged with the map {ack: id}.
    server.push(Message::binary(msgpack_envelope(
        "in.1",
        b"two",
        None,
        Some("srv-1"),
    )));
    component.wait_received(1, WAIT).await;
    let ack = msgpack_map(&binary(&server.frame(WAIT).await));
    assert_eq!(ack.len(), 1, "{ack:?}");
    assert_eq!(ack["ack"], Value::from("srv-1"));
    assert_ne!(id, "srv-1");
}
