//! The provider's own subjects, for components: everything that starts with `$ws.` is answered by
//! the provider and never leaves as a frame.
//!
//! - `request("$ws.sessions")`: the caller's sessions as a JSON array.
//! - `request("$ws.stats")`: counters, summed over the provider and per session of the caller.
//! - `publish("$ws.session.<id>.<subject>")`: sends `<subject>` on session `<id>` of the caller.
//!
//! [`check`] holds the rules for every subject a component gives (and for `reply_to`). The
//! answers to `$ws.sessions` and `$ws.stats` are built in [`crate::control`]. [`Pattern`] is a
//! subject pattern with NATS wildcards.

use std::sync::Arc;

/// Subjects starting with this prefix belong to the provider and never leave as frames.
pub const RESERVED_SUBJECT_PREFIX: &str = "$ws.";

pub const SESSIONS: &str = "$ws.sessions";
pub const STATS: &str = "$ws.stats";
pub const SESSION_PREFIX: &str = "$ws.session.";
pub const CLOSE_PREFIX: &str = "$ws.close.";
pub const PRESENCE_PREFIX: &str = "$ws.presence.";

/// The longest subject (or `reply_to`) a component may give, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Checks a subject or `reply_to` (`what` says which) a component gave: not empty, at most
/// [`MAX_SUBJECT_BYTES`], no whitespace and no control characters. The error quotes the start of
/// the value, escaped, so a log line stays one short line.
pub fn check(what: &str, subject: &str) -> Result<(), String> {
    match broken_rule(subject) {
        None => Ok(()),
        Some(reason) => Err(format!(
            "invalid {what} {}: {reason}; nothing was sent",
            quoted(subject)
        )),
    }
}

/// Checks the `subject` and `reply_to` of an envelope a server sent: the rules of [`check`], and
/// not one of the provider's own `$ws.` subjects, so that a server can neither forge a log line
/// nor reach what only components may call.
pub fn check_incoming(subject: &str, reply_to: Option<&str>) -> Result<(), String> {
    for (what, value) in [("subject", Some(subject)), ("reply_to", reply_to)] {
        let Some(value) = value else { continue };
        let reason = broken_rule(value).or_else(|| {
            value
                .starts_with(RESERVED_SUBJECT_PREFIX)
                .then(|| "`$ws.` subjects are the provider's own".to_string())
        });
        if let Some(reason) = reason {
            return Err(format!("invalid {what} {}: {reason}", quoted(value)));
        }
    }
    Ok(())
}

/// Which subject rule `subject` breaks, if any.
fn broken_rule(subject: &str) -> Option<String> {
    if subject.is_empty() {
        Some("it is empty".to_string())
    } else if subject.len() > MAX_SUBJECT_BYTES {
        Some(format!(
            "it is {} bytes long, more than {MAX_SUBJECT_BYTES}",
            subject.len()
        ))
    } else {
        subject
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
            .map(|(at, c)| {
                format!("it contains {c:?} at byte {at} (no whitespace or control characters)")
            })
    }
}

/// The start of a value, escaped and quoted: at most 64 characters, `...` when cut.
pub(crate) fn quoted(subject: &str) -> String {
    let shown: String = subject.chars().take(64).collect();
    let more = if shown.len() < subject.len() {
        "..."
    } else {
        ""
    };
    format!("{shown:?}{more}")
}

/// What a provider subject is.
#[derive(Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    Sessions,
    Stats,
    /// `$ws.session.<id>.<subject>`
    Session {
        id: &'a str,
        subject: &'a str,
    },
    /// `$ws.close.<id>`: closes a listener's client.
    Close {
        id: &'a str,
    },
    /// `$ws.presence.<subject>`: who of a listener's clients would get a broadcast to it.
    Presence {
        subject: &'a str,
    },
    Unknown,
}

pub fn parse(subject: &str) -> Subject<'_> {
    match subject {
        SESSIONS => Subject::Sessions,
        STATS => Subject::Stats,
        _ if subject.starts_with(PRESENCE_PREFIX) => match &subject[PRESENCE_PREFIX.len()..] {
            "" => Subject::Unknown,
            subject => Subject::Presence { subject },
        },
        _ if subject.starts_with(CLOSE_PREFIX) => match &subject[CLOSE_PREFIX.len()..] {
            id if !id.is_empty() && !id.contains('.') => Subject::Close { id },
            _ => Subject::Unknown,
        },
        _ => match subject
            .strip_prefix(SESSION_PREFIX)
            .and_then(|rest| rest.split_once('.'))
        {
            Some((id, subject)) if !id.is_empty() && !subject.is_empty() => {
                Subject::Session { id, subject }
            }
            _ => Subject::Unknown,
        },
    }
}

/// The error for a `$ws.` subject that means nothing.
pub fn unknown(subject: &str, call: &str) -> String {
    format!(
        "unknown provider subject {subject}: `$ws.` subjects are the provider's own ({call} accepts {})",
        match call {
            "request" => "`$ws.sessions`, `$ws.stats` and `$ws.session.<id>.<subject>` of a listener's client",
            _ => "`$ws.session.<id>.<subject>` and `$ws.close.<id>`",
        }
    )
}

/// Refuses the subjects when the calling link turned session tracking off
/// (`enable_session_tracking`).
pub fn check_enabled(tracking: bool, link_name: &str) -> Result<(), String> {
    if tracking {
        Ok(())
    } else {
        Err(format!(
            "the provider's `$ws.` subjects are turned off on link {link_name} (enable_session_tracking = false)"
        ))
    }
}

/// A subject pattern with NATS wildcards (`*` one token, `>` one or more tokens at the end),
/// checked: a listener's client subscriptions, a JWT's `subjects`, a handler link's
/// `subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    wild: bool,
}

impl Pattern {
    /// A pattern obeys the subject rules (length, no whitespace or control characters, not
    /// `$ws.`), has no empty token, and uses `*` and `>` only as whole tokens, `>` last.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        check_incoming(text, None).map_err(|e| e.replacen("subject", "pattern", 1))?;
        let tokens: Vec<&str> = text.split('.').collect();
        for (i, token) in tokens.iter().enumerate() {
            if token.is_empty() {
                return Err(format!("pattern {}: empty token", quoted(text)));
            }
            if token.len() > 1 && (token.contains('*') || token.contains('>')) {
                return Err(format!(
                    "pattern {}: `*` and `>` must be whole tokens",
                    quoted(text)
                ));
            }
            if *token == ">" && i + 1 != tokens.len() {
                return Err(format!(
                    "pattern {}: `>` must be the last token",
                    quoted(text)
                ));
            }
        }
        Ok(Pattern {
            wild: tokens.iter().any(|t| *t == "*" || *t == ">"),
            text: text.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it has a wildcard (else it matches one subject, itself).
    pub fn is_wild(&self) -> bool {
        self.wild
    }

    /// The text, shared.
    pub fn shared_text(&self) -> Arc<str> {
        Arc::clone(&self.text)
    }

    /// A comma list of patterns (`subscriptions`): each checked, blanks around commas ignored.
    pub fn parse_list(text: &str) -> Result<Vec<Pattern>, String> {
        text.split(',').map(|p| Pattern::parse(p.trim())).collect()
    }

    /// Whether `subject` matches.
    pub fn matches(&self, subject: &str) -> bool {
        if !self.wild {
            return *self.text == *subject;
        }
        let mut subject_tokens = subject.split('.');
        for token in self.text.split('.') {
            match (token, subject_tokens.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (literal, Some(s)) if literal == s => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_rules() {
        for ok in [
            "a",
            "orders.created",
            "_INBOX.x.y",
            "$ws.stats",
            "ü.日本",
            &"s".repeat(1024),
        ] {
            assert_eq!(check("subject", ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "invalid subject \"\": it is empty; nothing was sent"),
            ("a b", "invalid subject \"a b\": it contains ' ' at byte 1 (no whitespace or control characters); nothing was sent"),
            ("a\tb", "it contains '\\t' at byte 1"),
            ("x\u{7f}", "it contains '\\u{7f}' at byte 1"),
            ("new\nline", "it contains '\\n' at byte 3"),
            ("nb\u{a0}sp", "it contains '\\u{a0}' at byte 2"),
        ];
        for (subject, expected) in cases {
            let err = check("subject", subject).unwrap_err();
            assert!(err.contains(expected), "{subject:?}: {err}");
        }
        let long = "s".repeat(1025);
        let err = check("reply_to", &long).unwrap_err();
        assert_eq!(
            err,
            format!(
                "invalid reply_to \"{}\"...: it is 1025 bytes long, more than 1024; nothing was sent",
                "s".repeat(64)
            )
        );
    }

    #[test]
    fn parses_provider_subjects() {
        assert_eq!(parse("$ws.sessions"), Subject::Sessions);
        assert_eq!(parse("$ws.stats"), Subject::Stats);
        assert_eq!(
            parse("$ws.session.ws_a1.orders.new"),
            Subject::Session {
                id: "ws_a1",
                subject: "orders.new"
            }
        );
        for unknown in [
            "$ws.session.ws_a1",
            "$ws.session.ws_a1.",
            "$ws.session..x",
            "$ws.sessionsx",
            "$ws.other",
        ] {
            assert_eq!(parse(unknown), Subject::Unknown, "{unknown}");
        }
    }
}
