//! The `protobuf` envelope in another implementation than the provider's: Google's Python
//! protobuf runtime with code that protoc (grpcio-tools) generates from the shipped
//! proto/envelope.proto (tests/pyws/proto_codec.py, in `target/pyws-venv`).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const WAIT: Duration = Duration::from_secs(30);

pub struct ProtoCodec {
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("the codec answers base64")
}

impl ProtoCodec {
    /// Starts the codec; it generates its code from proto/envelope.proto first.
    pub async fn start() -> Self {
        let mut child = super::pyws::spawn("proto_codec.py", &[]);
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut codec = ProtoCodec {
            stdin,
            lines,
            _child: child,
        };
        assert_eq!(codec.answer().await, json!({ "ready": true }));
        codec
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the codec answers in time")
            .expect("the codec's stdout")
            .expect("the codec is alive");
        serde_json::from_str(&line).expect("the codec answers JSON")
    }

    async fn ask(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        self.answer().await
    }

    /// The fields set in `frame`, by name (`body` as base64: read it with [`bytes_of`]), or
    /// why the Python parser refuses it.
    pub async fn decode(&mut self, frame: &[u8]) -> Result<Value, String> {
        let answer = self.ask(json!({ "decode": b64(frame) })).await;
        match answer.get("fields") {
            Some(fields) => Ok(fields.clone()),
            None => Err(answer["error"].as_str().unwrap_or("?").to_string()),
        }
    }

    /// An `Envelope` with these fields (`body` as raw bytes, the rest strings).
    pub async fn encode(&mut self, fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut object = serde_json::Map::new();
        for (name, value) in fields {
            let value = if *name == "body" {
                b64(value)
            } else {
                String::from_utf8(value.to_vec()).expect("a string field")
            };
            object.insert(name.to_string(), Value::String(value));
        }
        let answer = self.ask(json!({ "encode": object })).await;
        unb64(answer["frame"].as_str().expect("an encoded frame"))
    }
}

/// The bytes of a decoded `body` field (absent = empty, as protobuf has it).
pub fn bytes_of(fields: &Value) -> Vec<u8> {
    fields["body"].as_str().map(unb64).unwrap_or_default()
}
