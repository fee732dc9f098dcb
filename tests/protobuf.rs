//! `format = protobuf`: the `Envelope` of proto/envelope.proto, both ways, in client and server
//! mode, through the real provider binary. The other side reads and writes it with Google's
//! Python protobuf runtime and code that protoc generates from the shipped .proto file
//! (tests/common/proto.rs), another implementation than the provider's prost code.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::clients::{Connect, WsClient};
use common::component::PlayedComponent;
use common::proto::{bytes_of, ProtoCodec};
use common::ws::{Message, WsServer};
use common::Rig;

const WAIT: Duration = Duration::from_secs(10);

fn binary(message: &Message) -> Vec<u8> {
    match message {
        Message::Binary(bytes) => bytes.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

fn names(fields: &serde_json::Value) -> BTreeSet<&str> {
    fields
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

/// Component `id` with protobuf consumer and handler links to `server` (plus `extra` keys).
async fn protobuf_links(
    rig: &Rig,
    server: &WsServer,
    id: &str,
    extra: &[(&str, &str)],
) -> PlayedComponent {
    let component = rig.component(id).await;
    let uri = server.uri();
    let mut config = vec![("uri", uri.as_str()), ("format", "protobuf")];
    config.extend_from_slice(extra);
    let provider = &rig.provider;
    provider
        .put_link(&provider.consumer_link(id, "default", &config))
        .await;
    provider
        .put_link(&provider.handler_link(id, "default", &config))
        .await;
    server.connected(WAIT).await;
    component
}

#[tokio::test]
async fn publish_sends_an_envelope_that_code_generated_from_the_proto_file_reads() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let mut codec = ProtoCodec::start().await;
    let component = protobuf_links(&rig, &server, "publisher", &[]).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big = common::pattern(300 * 1024, 7);
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
        let fields = codec
            .decode(&binary(&server.frame(WAIT).await))
            .await
            .expect("the frame is an Envelope");
        // Exactly the message's fields (proto3 leaves an empty body out).
        let mut expected = BTreeSet::from(["subject"]);
        if !body.is_empty() {
            expected.insert("body");
        }
        if reply_to.is_some() {
            expected.insert("reply_to");
        }
        assert_eq!(names(&fields), expected, "{subject}: {fields}");
        assert_eq!(fields["subject"], subject);
        assert_eq!(bytes_of(&fields), body, "body of {subject}");
        if let Some(reply_to) = reply_to {
            assert_eq!(fields["reply_to"], reply_to);
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
async fn envelopes_from_the_proto_file_reach_the_handler_exactly_and_garbage_is_dropped() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let mut codec = ProtoCodec::start().await;
    let component = protobuf_links(&rig, &server, "receiver", &[]).await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let first = codec
        .encode(&[
            ("subject", b"orders.created"),
            ("body", &all_bytes),
            ("reply_to", b"_INBOX.abc"),
        ])
        .await;
    server.push(Message::binary(first));
    // Not protobuf (a truncated varint), and an Envelope without subject: dropped, counted.
    server.push(Message::binary(vec![0x0a, 0xff, 0xff]));
    let no_subject = codec.encode(&[("body", b"orphan")]).await;
    server.push(Message::binary(no_subject));
    // A field this version does not know (number 20, a varint: key 0xa0 0x01) is skipped, as
    // protobuf does.
    let mut unknown = codec
        .encode(&[("subject", b"with.unknown"), ("body", b"hello")])
        .await;
    unknown.extend_from_slice(&[0xa0, 0x01, 1]);
    server.push(Message::binary(unknown));

    let received = component.wait_received(2, WAIT).await;
    assert_eq!(received[0].subject, "orders.created");
    assert_eq!(&received[0].body[..], &all_bytes[..]);
    assert_eq!(received[0].reply_to.as_deref(), Some("_INBOX.abc"));
    assert_eq!(received[1].subject, "with.unknown");
    assert_eq!(&received[1].body[..], b"hello");
    assert_eq!(received.len(), 2);
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["dropped_malformed"], 2, "{stats}");
    rig.provider
        .logs
        .wait_for(
            &[
                "dropped an incoming frame",
                "frame is not a protobuf Envelope",
            ],
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn request_and_reply_in_protobuf() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let mut codec = ProtoCodec::start().await;
    let component = protobuf_links(&rig, &server, "asker", &[]).await;
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let (reply, ()) = tokio::join!(
        component.request("default", "questions.q1", body.clone(), 3000),
        async {
            let fields = codec
                .decode(&binary(&server.frame(WAIT).await))
                .await
                .unwrap();
            assert_eq!(fields["subject"], "questions.q1");
            let inbox = fields["reply_to"].as_str().expect("a reply_to").to_string();
            let answer = codec
                .encode(&[("subject", inbox.as_bytes()), ("body", &bytes_of(&fields))])
                .await;
            server.push(Message::binary(answer));
        }
    );
    let reply = reply.unwrap().expect("the reply comes back");
    assert_eq!(&reply.body[..], &body[..]);
    assert!(reply.subject.starts_with("_INBOX."), "{}", reply.subject);
}

#[tokio::test]
async fn acknowledged_delivery_in_protobuf_both_ways() {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let mut codec = ProtoCodec::start().await;
    let component = protobuf_links(&rig, &server, "acked", &[("ack", "true")]).await;
    // Outgoing: Ok only after the server's ack of the envelope's id.
    let mut id = String::new();
    let (published, ()) = tokio::join!(
        component.publish("default", "out.1", b"one".to_vec(), None),
        async {
            let sent = codec
                .decode(&binary(&server.frame(WAIT).await))
                .await
                .unwrap();
            assert_eq!(names(&sent), BTreeSet::from(["body", "id", "subject"]));
            id = sent["id"].as_str().unwrap().to_string();
            let ack = codec.encode(&[("ack", id.as_bytes())]).await;
            server.push(Message::binary(ack));
        }
    );
    assert_eq!(published.unwrap(), Ok(()));

    // Incoming: an envelope with an id is acknowledged with an Envelope holding `ack` alone.
    let incoming = codec
        .encode(&[("subject", b"in.1"), ("body", b"two"), ("id", b"srv-1")])
        .await;
    server.push(Message::binary(incoming));
    let got = component.wait_received(1, WAIT).await;
    assert_eq!(&got[0].body[..], b"two");
    let ack = codec
        .decode(&binary(&server.frame(WAIT).await))
        .await
        .unwrap();
    assert_eq!(ack, serde_json::json!({ "ack": "srv-1" }));
    assert_ne!(id, "srv-1");
}

#[tokio::test]
async fn a_listeners_clients_speak_the_envelope_both_ways() {
    let rig = Rig::start().await;
    let mut codec = ProtoCodec::start().await;
    let listen = format!("127.0.0.1:{}", common::nats::free_port());
    let url = format!("ws://{listen}/");
    let config = [("listen", listen.as_str()), ("format", "protobuf")];
    let component = rig.component("gateway").await;
    let provider = &rig.provider;
    provider
        .put_link(&provider.consumer_link("gateway", "default", &config))
        .await;
    provider
        .put_link(&provider.handler_link("gateway", "default", &config))
        .await;
    provider
        .logs
        .wait_for(
            &["link joins the existing listener", "key=gateway/default"],
            WAIT,
        )
        .await;
    let mut client = WsClient::connect_when_listening(&url, Connect::default())
        .await
        .unwrap();

    let body: Vec<u8> = (0..=255u8).rev().collect();
    let frame = codec
        .encode(&[
            ("subject", b"bin.in"),
            ("body", &body),
            ("reply_to", b"back"),
        ])
        .await;
    client.send(common::clients::Message::binary(frame));
    let got = component.wait_received(1, WAIT).await;
    assert_eq!(
        (got[0].subject.as_str(), &got[0].body[..]),
        ("bin.in", &body[..])
    );
    let reply_to = got[0].reply_to.clone().unwrap();
    let id = reply_to
        .strip_prefix("$ws.session.")
        .and_then(|r| r.strip_suffix(".back"))
        .expect("a $ws.session reply-to");
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
    let out = codec
        .decode(&client.frame(WAIT).await.into_data())
        .await
        .unwrap();
    assert_eq!(out["subject"], "out");
    assert_eq!(bytes_of(&out), body);

    // Subscriptions: an Envelope with `subscribe`, answered with `ok` (or `error`).
    let subscribe = codec.encode(&[("subscribe", b"feed.*")]).await;
    client.send(common::clients::Message::binary(subscribe));
    let answer = codec
        .decode(&client.frame(WAIT).await.into_data())
        .await
        .unwrap();
    assert_eq!(answer, serde_json::json!({ "ok": "feed.*" }));
    component
        .publish("default", "feed.news", b"broadcast".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    let news = codec
        .decode(&client.frame(WAIT).await.into_data())
        .await
        .unwrap();
    assert_eq!(news["subject"], "feed.news");
    assert_eq!(bytes_of(&news), b"broadcast");
    let bad = codec.encode(&[("subscribe", b"feed..x")]).await;
    client.send(common::clients::Message::binary(bad));
    let refused = codec
        .decode(&client.frame(WAIT).await.into_data())
        .await
        .unwrap();
    assert_eq!(names(&refused), BTreeSet::from(["error"]), "{refused}");
}
