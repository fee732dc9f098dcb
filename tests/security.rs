//! Security: `wss://` with real certificate checks (custom CA, server name, expiry), mutual TLS,
//! secrets that never show, and the bounds on what a server may send in its handshake. The
//! certificates are made by the test (rcgen); the servers are tokio-rustls on 127.0.0.1.

mod common;

use std::time::Duration;

use common::certs::{server_config, Ca};
use common::provider::ProviderOptions;
use common::tcp::TcpServer;
use common::ws::WsServer;
use common::Rig;
use wasmcloud_provider_sdk::core::logging::Level;

const WAIT: Duration = Duration::from_secs(10);

/// Settings that make failed attempts quick to repeat and publishes quick to give up.
const FAST: [(&str, &str); 3] = [
    ("reconnect_initial_delay_ms", "50"),
    ("reconnect_max_delay_ms", "200"),
    ("send_timeout_ms", "300"),
];

fn with_fast<'a>(config: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    config.iter().copied().chain(FAST).collect()
}

/// Puts a consumer link for `component` and asserts that its connection attempts fail at TLS:
/// the server's handshake fails, nothing reaches the server, the provider warns once with
/// `expected` and the component and link name, and `publish` fails.
async fn assert_tls_refused(
    rig: &Rig,
    server: &WsServer,
    component: &str,
    config: &[(&str, &str)],
    expected: &str,
) -> String {
    let link = rig
        .provider
        .consumer_link(component, "secure", &with_fast(config));
    rig.provider.put_link(&link).await;
    server.tls_failed(WAIT).await;
    common::wait_until("three attempts failed", WAIT, || async {
        server.accepted() >= 3
    })
    .await;
    let logs = &rig.provider.logs;
    let line = logs
        .wait_for(&["connection attempt failed; retrying", expected], WAIT)
        .await;
    assert!(
        line.contains("WARN") && line.contains(component) && line.contains("secure"),
        "the warning names the component and the link: {line}"
    );
    let warned = logs
        .all()
        .lines()
        .filter(|l| l.contains("retrying with backoff") && l.contains(component))
        .count();
    assert_eq!(warned, 1, "a run of TLS failures is warned about once");

    let played = rig.component(component).await;
    let err = played
        .publish("secure", "never.sent", &b"x"[..], None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("is not connected"), "{err}");
    line
}

#[tokio::test]
async fn wss_with_the_test_ca_works_both_ways() {
    let ca = Ca::new("test CA");
    let server = WsServer::echo_tls(server_config(&ca.server(&["127.0.0.1"]), None)).await;
    let rig = Rig::start().await;
    let config = [("uri", server.uri()), ("tls_ca", ca.pem.clone())];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rig.provider
        .put_link(&rig.provider.consumer_link("tls-comp", "default", &config))
        .await;
    rig.provider
        .put_link(&rig.provider.handler_link("tls-comp", "default", &config))
        .await;
    let component = rig.component("tls-comp").await;
    component
        .publish_when_ready("default", "warm.up", &b""[..], WAIT)
        .await;
    let sent: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        component
            .publish("default", "tls.hello", sent.clone(), None)
            .await
            .unwrap(),
        Ok(())
    );
    // The echo server sends both back over TLS, into the handler.
    let received = component.wait_received(2, WAIT).await;
    assert_eq!(received[1].subject, "tls.hello");
    assert_eq!(received[1].body, sent);
    assert_eq!(server.accepted(), 1, "one TLS connection for both links");
}

#[tokio::test]
async fn without_the_ca_the_handshake_fails_with_unknown_issuer() {
    let ca = Ca::new("private CA");
    let server = WsServer::recorder_tls(server_config(&ca.server(&["127.0.0.1"]), None)).await;
    let rig = Rig::start().await;
    let line = assert_tls_refused(
        &rig,
        &server,
        "no-ca",
        &[("uri", &server.uri())],
        "TLS: the certificate of 127.0.0.1 is not signed by a trusted CA (unknown issuer); for a server with a private CA, give that CA in `tls_ca` or `tls_ca_file`",
    )
    .await;
    eprintln!("as the user sees it: {line}");
    common::docs::assert_shows("TLS fails: the server's certificate is not trusted", &line);
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_with_a_name_error() {
    let ca = Ca::new("test CA");
    let server = WsServer::recorder_tls(server_config(&ca.server(&["other.example"]), None)).await;
    let rig = Rig::start().await;
    let line = assert_tls_refused(
        &rig,
        &server,
        "wrong-name",
        &[("uri", &server.uri()), ("tls_ca", &ca.pem)],
        "TLS: the certificate of the server is not valid for the name 127.0.0.1 (name mismatch; it is for other.example)",
    )
    .await;
    eprintln!("as the user sees it: {line}");
}

#[tokio::test]
async fn an_expired_certificate_fails() {
    let ca = Ca::new("test CA");
    let server =
        WsServer::recorder_tls(server_config(&ca.expired_server(&["127.0.0.1"]), None)).await;
    let rig = Rig::start().await;
    let line = assert_tls_refused(
        &rig,
        &server,
        "expired",
        &[("uri", &server.uri()), ("tls_ca", &ca.pem)],
        "TLS: the certificate of 127.0.0.1 has expired (it was valid until 2021-01-01T00:00:00Z)",
    )
    .await;
    eprintln!("as the user sees it: {line}");
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let ca = Ca::new("test CA");
    let tls = server_config(&ca.server(&["127.0.0.1"]), Some(&ca));
    let with_cert = WsServer::recorder_tls(tls.clone()).await;
    let without_cert = WsServer::recorder_tls(tls).await;
    let client = ca.client("provider");
    let rig = Rig::start().await;

    // The key comes from a link secret, as it should; the certificate from plain config.
    let mut link = rig.provider.consumer_link(
        "mtls",
        "default",
        &[
            ("uri", &with_cert.uri()),
            ("tls_ca", &ca.pem),
            ("tls_client_cert", &client.cert_pem),
        ],
    );
    link.target_secrets = Some(rig.provider.seal(&[("tls_client_key", &client.key_pem)]));
    rig.provider.put_link(&link).await;
    let component = rig.component("mtls").await;
    component
        .publish_when_ready("default", "mtls.hello", &b"hi"[..], WAIT)
        .await;
    assert_eq!(
        with_cert.frame(WAIT).await.to_text().unwrap(),
        r#"{"subject":"mtls.hello","body":"aGk="}"#
    );
    assert!(
        !rig.provider
            .logs
            .all()
            .contains("sensitive setting taken from plain config"),
        "a key from a secret is not warned about"
    );

    let line = assert_tls_refused(
        &rig,
        &without_cert,
        "no-client-cert",
        &[("uri", &without_cert.uri()), ("tls_ca", &ca.pem)],
        "TLS: 127.0.0.1 refused the handshake (CertificateRequired): it requires a client certificate; set `tls_client_cert` and `tls_client_key`",
    )
    .await;
    eprintln!("as the user sees it: {line}");
}

#[tokio::test]
async fn a_client_key_in_plain_config_works_with_a_warning() {
    let ca = Ca::new("test CA");
    let server = WsServer::recorder_tls(server_config(&ca.server(&["127.0.0.1"]), Some(&ca))).await;
    let client = ca.client("provider");
    let rig = Rig::start().await;
    let link = rig.provider.consumer_link(
        "plain-key",
        "default",
        &[
            ("uri", &server.uri()),
            ("tls_ca", &ca.pem),
            ("tls_client_cert", &client.cert_pem),
            ("tls_client_key", &client.key_pem),
        ],
    );
    rig.provider.put_link(&link).await;
    server.connected(WAIT).await;
    rig.provider
        .logs
        .wait_for(
            &[
                "WARN",
                "sensitive setting taken from plain config",
                "tls_client_key",
            ],
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn tls_ca_file_works_and_bad_tls_settings_refuse_the_link() {
    let ca = Ca::new("file CA");
    let server = WsServer::recorder_tls(server_config(&ca.server(&["127.0.0.1"]), None)).await;
    let dir = std::env::temp_dir().join(common::unique("tls-ca-file"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mine = ca.client("provider");
    let other = ca.client("someone else");
    let rig = Rig::start().await;

    let missing = dir.join("missing.pem");
    let dir_path = dir.to_str().unwrap();
    // (component, its TLS settings, the refusal the provider logs)
    type Refused<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
    let refused: [Refused; 5] = [
        (
            "missing-file",
            vec![("tls_ca_file", missing.to_str().unwrap())],
            format!(
                "invalid `tls_ca_file` '{}': cannot read the file (No such file or directory",
                missing.display()
            ),
        ),
        (
            "unreadable-file",
            vec![("tls_ca_file", dir_path)],
            format!("invalid `tls_ca_file` '{dir_path}': cannot read the file (Is a directory"),
        ),
        (
            "bad-pem",
            vec![("tls_ca", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n")],
            "invalid `tls_ca`: not valid PEM (a `-----BEGIN CERTIFICATE-----` block has no `-----END CERTIFICATE-----` line)".to_string(),
        ),
        (
            "no-pem",
            vec![("tls_ca", "just some text")],
            "invalid `tls_ca`: no PEM certificate found".to_string(),
        ),
        (
            "wrong-key",
            vec![
                ("tls_client_cert", mine.cert_pem.as_str()),
                ("tls_client_key", other.key_pem.as_str()),
            ],
            "invalid `tls_client_key` (value hidden): does not belong to the certificate in `tls_client_cert`"
                .to_string(),
        ),
    ];
    for (component, settings, _) in &refused {
        let uri = server.uri();
        let mut config = vec![("uri", uri.as_str())];
        config.extend(settings.iter().copied());
        rig.provider
            .put_link(&rig.provider.consumer_link(component, "default", &config))
            .await;
    }
    let file_link = rig.provider.consumer_link(
        "from-file",
        "default",
        &[
            ("uri", &server.uri()),
            ("tls_ca_file", ca_file.to_str().unwrap()),
        ],
    );
    rig.provider.put_link(&file_link).await;

    let good = rig.component("from-file").await;
    good.publish_when_ready("default", "file.ca", &b""[..], WAIT)
        .await;
    server.frame(WAIT).await;
    for (component, _, expected) in &refused {
        let line = rig
            .provider
            .logs
            .wait_for(
                &[
                    "ERROR",
                    &format!("consumer link {component}/default refused: "),
                    expected,
                ],
                WAIT,
            )
            .await;
        eprintln!("{line}");
        assert!(
            !line.contains("PRIVATE KEY") && !line.contains(&other.key_pem[40..80]),
            "{line}"
        );
    }
    // The links are put in order: the good one connected, so the refused ones were handled.
    assert_eq!(server.accepted(), 1, "only the good link connected");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The base64 lines of a PEM block: what of a key could show up in a log.
fn pem_lines(pem: &str) -> Vec<&str> {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[tokio::test]
async fn secrets_never_appear_in_the_logs_at_trace_level() {
    const TOKEN: &str = "tok-7Hq2-SECRET";
    const HEADER: &str = "hdr-9Zk4-SECRET";
    let ca = Ca::new("test CA");
    let server = WsServer::echo_tls(server_config(&ca.server(&["127.0.0.1"]), Some(&ca))).await;
    let client = ca.client("provider");
    let rig = Rig::with_options(ProviderOptions {
        log_level: Some(Level::Trace),
        ..Default::default()
    })
    .await;
    let config = [
        ("uri", server.uri()),
        ("tls_ca", ca.pem.clone()),
        ("tls_client_cert", client.cert_pem.clone()),
    ];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let secrets = [
        ("auth_token", TOKEN),
        ("header.X-Api-Key", HEADER),
        ("tls_client_key", client.key_pem.as_str()),
    ];
    let mut consumer = rig.provider.consumer_link("secretive", "default", &config);
    consumer.target_secrets = Some(rig.provider.seal(&secrets));
    let mut handler = rig.provider.handler_link("secretive", "default", &config);
    handler.source_secrets = Some(rig.provider.seal(&secrets));
    rig.provider.put_link(&consumer).await;
    rig.provider.put_link(&handler).await;

    let (_, headers) = server.connected(WAIT).await;
    assert_eq!(headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(headers["x-api-key"], HEADER);
    let component = rig.component("secretive").await;
    component
        .publish_when_ready("default", "secret.path", &b"payload"[..], WAIT)
        .await;
    component.wait_received(1, WAIT).await;
    let mut answers = String::new();
    for subject in ["$ws.sessions", "$ws.stats"] {
        let answer = component
            .request("default", subject, &b""[..], 1000)
            .await
            .unwrap()
            .unwrap();
        answers.push_str(&String::from_utf8_lossy(&answer.body));
    }

    // A secret header value that is not a valid header value: refused, the value unnamed.
    let mut bad = rig
        .provider
        .consumer_link("bad-secret", "default", &[("uri", &server.uri())]);
    bad.target_secrets = Some(
        rig.provider
            .seal(&[("header.X-Bad", "bad\nhdr-9Zk4-SECRET")]),
    );
    rig.provider.put_link(&bad).await;
    rig.provider
        .logs
        .wait_for(
            &["consumer link bad-secret/default refused: invalid `header.X-Bad` (value hidden)"],
            WAIT,
        )
        .await;

    // Deleting the links makes the SDK log them (with their sealed secrets).
    rig.provider.delete_link(&consumer).await;
    rig.provider.delete_link(&handler).await;
    server
        .expect("Close frame", WAIT, |e| {
            matches!(e, common::ws::Event::Closed { .. }).then_some(())
        })
        .await;
    rig.provider
        .logs
        .wait_for(&["link deleted; closing its session"], WAIT)
        .await;

    let logs = rig.provider.logs.all();
    assert!(
        logs.lines().filter(|l| l.contains("TRACE")).count() > 10,
        "the provider logged at trace level"
    );
    let mut forbidden = vec![TOKEN, HEADER];
    forbidden.extend(pem_lines(&client.key_pem));
    for secret in forbidden {
        assert!(!logs.contains(secret), "the log shows a secret: {secret}");
        assert!(!answers.contains(secret), "a $ws. answer shows a secret");
    }
}

#[tokio::test]
async fn oversized_handshake_responses_are_refused() {
    let rig = Rig::start().await;
    let mut many_headers = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for i in 0..200 {
        many_headers.push_str(&format!("X-Pad-{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let mut huge = String::from("HTTP/1.1 101 Switching Protocols\r\nX-Pad: ");
    huge.push_str(&"v".repeat(100 * 1024));
    huge.push_str("\r\n\r\n");
    let cases = [
        (
            "many-headers",
            many_headers,
            "the server's handshake response has more than 100 headers; refused",
        ),
        (
            "huge-response",
            huge,
            "the server's handshake response is larger than 64 KiB; refused",
        ),
        (
            "refused-401",
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string(),
            "the server refused the WebSocket handshake with HTTP 401",
        ),
    ];
    for (component, response, expected) in cases {
        let server = TcpServer::answering(response.into_bytes()).await;
        rig.provider
            .put_link(&rig.provider.consumer_link(
                component,
                "default",
                &with_fast(&[("uri", &server.uri())]),
            ))
            .await;
        let line = rig
            .provider
            .logs
            .wait_for(&["connection attempt failed", component, expected], WAIT)
            .await;
        eprintln!("{line}");
        if component == "refused-401" {
            common::docs::assert_shows("The server refuses the handshake (401, 403)", &line);
        }
    }
    // The provider keeps serving.
    let server = WsServer::recorder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("fine", "default", &[("uri", &server.uri())]),
        )
        .await;
    let fine = rig.component("fine").await;
    fine.publish_when_ready("default", "still.here", &b""[..], WAIT)
        .await;
}
