//! Calls between replicas: a call that lands on a standby goes to the session's owner over the
//! lattice's core NATS, on the owner's own subject, and its answer comes back as the reply.
//!
//! The message body is the message's body, untouched; everything else travels in headers
//! (`ws-op`, `ws-component`, `ws-link`, `ws-subject`, `ws-reply-to`, `ws-timeout-ms`), and the
//! answer's status in `ws-status` (`ok`, `error` with the text as body, `not-owner`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt as _;
use tracing::{debug, warn};

use super::{Lattice, Replica};
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::identity::SessionKey;

/// A call forwarded to the owner of session `key`.
#[derive(Debug, Clone)]
pub enum Call {
    /// Send `msg` on the session (a `publish`, or `$ws.session.<id>.<subject>`).
    Publish { key: SessionKey, msg: BrokerMessage },
    /// A `request` on the session.
    Request {
        key: SessionKey,
        subject: String,
        body: Bytes,
        timeout_ms: u64,
    },
    /// The session's entries of `$ws.sessions` and `$ws.stats`, as JSON.
    Describe { key: SessionKey },
    /// The replica's own counters, for `$ws.stats`'s provider object, as JSON.
    Totals,
    /// The entries of `$ws.sessions` and `$ws.stats` of the replica's clients of the listener of
    /// `key`, as JSON.
    Clients { key: SessionKey },
}

/// What the owner answers.
#[derive(Debug)]
pub enum Answer {
    Done,
    Reply(BrokerMessage),
    Json(Bytes),
    Failed(String),
    /// The replica does not own the session (any more): ask the new owner.
    NotOwner,
}

/// Why a forwarded call got no answer.
#[derive(Debug)]
pub enum Unanswered {
    /// Nobody serves the owner's subject: it is gone (the call never ran).
    NoResponders,
    /// No answer in time: the call may or may not have run.
    TimedOut,
    Other(String),
}

pub type Serve = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_string())
}

/// A header value must be one line: the component id and the link name come from the host, the
/// subjects were checked (no whitespace or control characters).
fn one_line(value: &str) -> Result<&str, String> {
    if value.chars().any(|c| c.is_control()) {
        Err(format!(
            "{} contains a control character and cannot be forwarded to the session's owner",
            crate::subjects::quoted(value)
        ))
    } else {
        Ok(value)
    }
}

fn encode(call: &Call) -> Result<(HeaderMap, Bytes), String> {
    let mut headers = HeaderMap::new();
    let key_headers = |headers: &mut HeaderMap, key: &SessionKey| -> Result<(), String> {
        headers.insert("ws-component", one_line(&key.component)?);
        headers.insert("ws-link", one_line(&key.link_name)?);
        Ok(())
    };
    let body = match call {
        Call::Publish { key, msg } => {
            headers.insert("ws-op", "publish");
            key_headers(&mut headers, key)?;
            headers.insert("ws-subject", one_line(&msg.subject)?);
            if let Some(reply_to) = &msg.reply_to {
                headers.insert("ws-reply-to", one_line(reply_to)?);
            }
            msg.body.clone()
        }
        Call::Request {
            key,
            subject,
            body,
            timeout_ms,
        } => {
            headers.insert("ws-op", "request");
            key_headers(&mut headers, key)?;
            headers.insert("ws-subject", one_line(subject)?);
            headers.insert("ws-timeout-ms", timeout_ms.to_string().as_str());
            body.clone()
        }
        Call::Describe { key } => {
            headers.insert("ws-op", "describe");
            key_headers(&mut headers, key)?;
            Bytes::new()
        }
        Call::Totals => {
            headers.insert("ws-op", "totals");
            Bytes::new()
        }
        Call::Clients { key } => {
            headers.insert("ws-op", "clients");
            key_headers(&mut headers, key)?;
            Bytes::new()
        }
    };
    Ok((headers, body))
}

fn decode(headers: Option<&HeaderMap>, body: Bytes) -> Result<Call, String> {
    let headers = headers.ok_or("a forwarded call without headers")?;
    let get = |name: &str| header(headers, name).ok_or(format!("a forwarded call without {name}"));
    let key = || -> Result<SessionKey, String> {
        Ok(SessionKey {
            component: get("ws-component")?,
            link_name: get("ws-link")?,
        })
    };
    match get("ws-op")?.as_str() {
        "publish" => Ok(Call::Publish {
            key: key()?,
            msg: BrokerMessage {
                subject: get("ws-subject")?,
                body,
                reply_to: header(headers, "ws-reply-to"),
            },
        }),
        "request" => Ok(Call::Request {
            key: key()?,
            subject: get("ws-subject")?,
            body,
            timeout_ms: get("ws-timeout-ms")?
                .parse()
                .map_err(|e| format!("a forwarded request with a bad timeout: {e}"))?,
        }),
        "describe" => Ok(Call::Describe { key: key()? }),
        "totals" => Ok(Call::Totals),
        "clients" => Ok(Call::Clients { key: key()? }),
        other => Err(format!(
            "unknown forwarded call {}",
            crate::subjects::quoted(other)
        )),
    }
}

fn encode_answer(answer: Answer) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let body = match answer {
        Answer::Done => {
            headers.insert("ws-status", "ok");
            Bytes::new()
        }
        Answer::Reply(msg) => {
            headers.insert("ws-status", "ok");
            headers.insert("ws-subject", msg.subject.as_str());
            if let Some(reply_to) = &msg.reply_to {
                headers.insert("ws-reply-to", reply_to.as_str());
            }
            msg.body
        }
        Answer::Json(json) => {
            headers.insert("ws-status", "ok");
            json
        }
        Answer::Failed(error) => {
            headers.insert("ws-status", "error");
            Bytes::from(error)
        }
        Answer::NotOwner => {
            headers.insert("ws-status", "not-owner");
            Bytes::new()
        }
    };
    (headers, body)
}

impl Lattice {
    /// Serves the calls other replicas forward to this one until the lattice is dropped; each
    /// call runs as a task of its own (a slow `request` never holds up a `publish`).
    pub async fn serve(self: &Arc<Self>, serve: Serve) -> anyhow::Result<()> {
        let subject = self.subject_of(&self.me);
        let mine = self.nats.subscribe(subject.clone()).await?;
        // The calls for this replica's listeners' clients, whose ids carry its tag.
        let clients = self.nats.subscribe(self.client_subject(&self.tag)).await?;
        let mut calls = futures::stream::select(mine, clients);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(message) = calls.next().await {
                let Some(lattice) = weak.upgrade() else { break };
                let Some(reply) = message.reply.clone() else {
                    debug!("a forwarded call without a reply subject; ignored");
                    continue;
                };
                let serve = Arc::clone(&serve);
                tokio::spawn(async move {
                    let answer = match decode(message.headers.as_ref(), message.payload) {
                        Ok(call) => {
                            crate::stats::bump(&lattice.served);
                            serve(call).await
                        }
                        Err(error) => Answer::Failed(error),
                    };
                    let (headers, body) = encode_answer(answer);
                    if let Err(error) = lattice
                        .nats
                        .publish_with_headers(reply, headers, body)
                        .await
                    {
                        warn!(%error, "could not answer a call forwarded by another replica");
                    }
                });
            }
            debug!(%subject, "no more forwarded calls");
        });
        Ok(())
    }

    /// Forwards `call` to `owner` and waits (at most `limit`) for its answer.
    pub async fn call(
        &self,
        owner: &Replica,
        call: &Call,
        limit: Duration,
    ) -> Result<Result<Answer, Unanswered>, String> {
        self.call_at(self.subject_of(owner), &owner.host, call, limit)
            .await
    }

    /// Forwards `call` to the replica with tag `tag` (on host `host`), for its listeners'
    /// clients.
    pub async fn call_clients_of(
        &self,
        tag: &str,
        host: &str,
        call: &Call,
        limit: Duration,
    ) -> Result<Result<Answer, Unanswered>, String> {
        self.call_at(self.client_subject(tag), host, call, limit)
            .await
    }

    async fn call_at(
        &self,
        subject: String,
        host: &str,
        call: &Call,
        limit: Duration,
    ) -> Result<Result<Answer, Unanswered>, String> {
        let (headers, body) = encode(call)?;
        crate::stats::bump(&self.forwarded);
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(body)
            .timeout(Some(limit));
        let reply = match self.nats.send_request(subject, request).await {
            Ok(reply) => reply,
            Err(e) => {
                use async_nats::RequestErrorKind;
                return Ok(Err(match e.kind() {
                    RequestErrorKind::NoResponders => Unanswered::NoResponders,
                    RequestErrorKind::TimedOut => Unanswered::TimedOut,
                    _ => Unanswered::Other(e.to_string()),
                }));
            }
        };
        let headers = reply.headers.as_ref();
        let status = headers.and_then(|h| header(h, "ws-status"));
        Ok(Ok(match status.as_deref() {
            Some("ok") => match headers.and_then(|h| header(h, "ws-subject")) {
                Some(subject) if matches!(call, Call::Request { .. }) => {
                    Answer::Reply(BrokerMessage {
                        subject,
                        body: reply.payload,
                        reply_to: headers.and_then(|h| header(h, "ws-reply-to")),
                    })
                }
                _ if matches!(
                    call,
                    Call::Describe { .. } | Call::Totals | Call::Clients { .. }
                ) =>
                {
                    Answer::Json(reply.payload)
                }
                _ => Answer::Done,
            },
            Some("not-owner") => Answer::NotOwner,
            Some("error") => Answer::Failed(String::from_utf8_lossy(&reply.payload).into_owned()),
            other => Answer::Failed(format!(
                "replica {host} answered a forwarded call with status {other:?}"
            )),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey {
            component: "echo".into(),
            link_name: "default".into(),
        }
    }

    #[test]
    fn calls_survive_the_trip() {
        let publish = Call::Publish {
            key: key(),
            msg: BrokerMessage {
                subject: "a.b".into(),
                body: Bytes::from_static(b"\0\xffbody"),
                reply_to: Some("r.1".into()),
            },
        };
        let (headers, body) = encode(&publish).unwrap();
        match decode(Some(&headers), body).unwrap() {
            Call::Publish { key: k, msg } => {
                assert_eq!(k, key());
                assert_eq!(msg.subject, "a.b");
                assert_eq!(&msg.body[..], b"\0\xffbody");
                assert_eq!(msg.reply_to.as_deref(), Some("r.1"));
            }
            other => panic!("{other:?}"),
        }
        let request = Call::Request {
            key: key(),
            subject: "q".into(),
            body: Bytes::from_static(b"x"),
            timeout_ms: 1500,
        };
        let (headers, body) = encode(&request).unwrap();
        assert!(matches!(
            decode(Some(&headers), body).unwrap(),
            Call::Request {
                timeout_ms: 1500,
                ..
            }
        ));
    }

    #[test]
    fn a_name_with_a_line_break_is_refused_not_forwarded() {
        let call = Call::Describe {
            key: SessionKey {
                component: "evil\r\nws-op: totals".into(),
                link_name: "default".into(),
            },
        };
        let error = encode(&call).unwrap_err();
        assert!(error.contains("control character"), "{error}");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(decode(None, Bytes::new())
            .unwrap_err()
            .contains("without headers"));
        let mut headers = HeaderMap::new();
        headers.insert("ws-op", "explode");
        assert!(decode(Some(&headers), Bytes::new())
            .unwrap_err()
            .contains("unknown forwarded call"));
    }
}
