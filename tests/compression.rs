//! `compression = deflate` (permessage-deflate, RFC 7692) against a server of another
//! implementation (Python `websockets`), through the real provider binary.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::pyws::PyWsServer;
use common::{wait_until, Rig};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const BODY_BYTES: usize = 512 * 1024;

/// 512 KiB that compress well (and differ along the way, so it is not one repeated byte).
fn compressible_body() -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_BYTES);
    let mut n = 0u32;
    while body.len() < BODY_BYTES {
        body.extend_from_slice(format!("wasmCloud message {n:08}; ").as_bytes());
        n += 1;
    }
    body.truncate(BODY_BYTES);
    body
}

/// The envelope the provider sends for a publish of `body` to `subject` (no `reply_to`).
fn envelope_len(subject: &str, body: &[u8]) -> usize {
    let body = base64::engine::general_purpose::STANDARD.encode(body);
    json!({ "subject": subject, "body": body })
        .to_string()
        .len()
}

#[tokio::test]
async fn deflate_carries_a_512_kib_body_both_ways_compressed() {
    let rig = Rig::start().await;
    let server = PyWsServer::start(&["echo"]).await;
    let component = rig
        .linked_both_ways("squeezed", &server.uri(), &[("compression", "deflate")])
        .await;
    let connected = server.wait_event("connected", |_| true, WAIT).await;
    assert!(
        connected["offered"]
            .as_str()
            .is_some_and(|o| o.contains("permessage-deflate")),
        "{connected}"
    );
    assert_eq!(connected["negotiated"], json!(["permessage-deflate"]));

    let body = compressible_body();
    component
        .publish_when_ready("default", "big.compressible", body.clone(), WAIT)
        .await;
    let envelope = envelope_len("big.compressible", &body);
    let message = server.wait_event("message", |_| true, WAIT).await;
    assert_eq!(
        message["len"], envelope,
        "the server inflated the whole envelope"
    );
    let frame_in = &server.events("frame_in")[0];
    assert_eq!(frame_in["rsv1"], true, "compressed on the wire: {frame_in}");
    let wire = frame_in["wire"].as_u64().unwrap() as usize;
    assert!(
        wire * 4 < envelope,
        "{wire} bytes on the wire for {envelope}"
    );

    // The echo comes back compressed and reaches the handler whole.
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received[0].subject, "big.compressible");
    assert!(received[0].body == body, "the body came back unchanged");
    let frame_out = &server.events("frame_out")[0];
    assert_eq!(frame_out["rsv1"], true, "{frame_out}");
    let stats = component.stats("default").await;
    let session = &stats["sessions"][0];
    assert_eq!(session["bytes_out"], envelope, "counted before compression");
    assert_eq!(session["bytes_in"], envelope, "counted after decompression");
    rig.provider
        .logs
        .wait_for(&["connected", "squeezed", "deflate=true"], WAIT)
        .await;
}

#[tokio::test]
async fn a_compression_bomb_is_refused_without_inflating_it() {
    let rig = Rig::start().await;
    // 64 MiB of one letter: about 64 KiB on the wire, 64 times max_message_bytes inflated.
    let bomb = 64 * 1024 * 1024;
    let server = PyWsServer::start(&["bomb", &bomb.to_string()]).await;
    let component = rig
        .linked_both_ways(
            "target",
            &server.uri(),
            &[
                ("compression", "deflate"),
                ("reconnect_initial_delay_ms", "50"),
            ],
        )
        .await;
    let before = rig.provider.peak_rss_kib();
    rig.provider
        .logs
        .wait_for(
            &["refused an incoming message larger than max_message_bytes (after decompression)"],
            WAIT,
        )
        .await;
    let closed = server.wait_event("closed", |_| true, WAIT).await;
    assert_eq!(closed["code"], 1009, "message too big: {closed}");
    let sent = &server.events("frame_out")[0];
    assert_eq!(sent["rsv1"], true);
    assert!(sent["wire"].as_u64().unwrap() < 1024 * 1024, "{sent}");

    // The session reconnects and keeps serving; nothing reached the handler.
    component
        .publish_when_ready("default", "after.bomb", &b"still here"[..], WAIT)
        .await;
    let received = component.wait_received(1, WAIT).await;
    assert_eq!(received[0].subject, "after.bomb");
    assert_eq!(server.events("connected").len(), 2);
    // The provider counts a delivery once the handler's answer is back, a moment after the
    // handler got it.
    wait_until("the delivery is counted", WAIT, || async {
        component.stats("default").await["sessions"][0]["delivered"] == 1
    })
    .await;
    let stats = component.stats("default").await;
    assert_eq!(stats["sessions"][0]["dropped_oversized"], 1);
    assert_eq!(stats["sessions"][0]["delivered"], 1);
    // Inflating it would have taken 64 MiB; the decompression stopped at the limit.
    let peak = rig.provider.peak_rss_kib();
    assert!(
        peak < before + 32 * 1024,
        "peak memory {before} KiB -> {peak} KiB"
    );
}

#[tokio::test]
async fn a_server_that_declines_deflate_gets_plain_frames() {
    let rig = Rig::start().await;
    let server = PyWsServer::start(&["decline"]).await;
    let component = rig
        .linked_both_ways("plain", &server.uri(), &[("compression", "deflate")])
        .await;
    let connected = server.wait_event("connected", |_| true, WAIT).await;
    assert!(connected["offered"].as_str().is_some(), "{connected}");
    assert_eq!(connected["negotiated"], json!([]));
    rig.provider
        .logs
        .wait_for(
            &[
                "the server declined permessage-deflate; messages go uncompressed",
                "plain",
            ],
            WAIT,
        )
        .await;
    let body = compressible_body();
    component
        .publish_when_ready("default", "big.plain", body.clone(), WAIT)
        .await;
    let received = component.wait_received(1, WAIT).await;
    assert!(received[0].body == body);
    let frame_out = &server.events("frame_out")[0];
    assert_eq!(frame_out["rsv1"], false);
    assert_eq!(frame_out["wire"], envelope_len("big.plain", &body));
}

#[tokio::test]
async fn without_compression_nothing_is_offered() {
    let rig = Rig::start().await;
    let server = PyWsServer::start(&["echo"]).await;
    let component = rig
        .linked_both_ways("default-settings", &server.uri(), &[])
        .await;
    component
        .publish_when_ready("default", "small", &b"hi"[..], WAIT)
        .await;
    let connected = server.wait_event("connected", |_| true, WAIT).await;
    assert_eq!(connected["offered"], Value::Null);
    assert_eq!(connected["negotiated"], json!([]));
    wait_until("the echo arrives", WAIT, || async {
        component.count() == 1
    })
    .await;
}
