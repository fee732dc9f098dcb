//! A listener's index of who subscribed to which subject pattern ([`Pattern`], NATS wildcards),
//! and what a client's JWT allows it.
//!
//! The index is by pattern, not by client: a publish looks its subject up among the literal
//! patterns (one hash lookup) and matches it against each distinct wildcard pattern once, so
//! its cost grows with the number of distinct patterns, not with the number of clients.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub use crate::subjects::Pattern;

/// The most subscriptions one client may hold.
pub const MAX_PER_CLIENT: usize = 256;

/// Whether `subject` matches one of `allowed` (a JWT's `subjects` claim); no claim = anything.
pub fn allows(allowed: Option<&[Pattern]>, subject: &str) -> bool {
    allowed.is_none_or(|patterns| patterns.iter().any(|p| p.matches(subject)))
}

/// Whether subscribing to `pattern` stays within `allowed`: every subject the pattern matches
/// must be allowed, so the pattern must be allowed as written (`chat.*` is allowed by `chat.*`
/// or `chat.>` or `>`, not by `chat.lobby`).
pub fn allows_pattern(allowed: Option<&[Pattern]>, pattern: &Pattern) -> bool {
    allowed.is_none_or(|patterns| patterns.iter().any(|p| covers(p, pattern)))
}

/// Whether every subject `inner` matches is matched by `outer`.
fn covers(outer: &Pattern, inner: &Pattern) -> bool {
    let mut inner_tokens = inner.as_str().split('.');
    for token in outer.as_str().split('.') {
        match (token, inner_tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(t)) if t != ">" => {}
            (literal, Some(t)) if literal == t && t != "*" && t != ">" => {}
            _ => return false,
        }
    }
    inner_tokens.next().is_none()
}

/// Who subscribed to what: the subscribers (`C`, a listener's clients) by pattern, each under its
/// id. A publish walks the matching sets in place: no copy of a set, no lookup of each id.
pub struct Subscriptions<C> {
    literal: HashMap<Arc<str>, HashMap<Arc<str>, C>>,
    wild: HashMap<Pattern, HashMap<Arc<str>, C>>,
}

impl<C> Default for Subscriptions<C> {
    fn default() -> Self {
        Subscriptions {
            literal: HashMap::new(),
            wild: HashMap::new(),
        }
    }
}

impl<C> Subscriptions<C> {
    pub fn add(&mut self, pattern: &Pattern, id: &Arc<str>, subscriber: C) {
        let set = if pattern.is_wild() {
            self.wild.entry(pattern.clone()).or_default()
        } else {
            self.literal.entry(pattern.shared_text()).or_default()
        };
        set.insert(Arc::clone(id), subscriber);
    }

    pub fn remove(&mut self, pattern: &Pattern, id: &str) {
        if pattern.is_wild() {
            if let Some(set) = self.wild.get_mut(pattern) {
                set.remove(id);
                if set.is_empty() {
                    self.wild.remove(pattern);
                }
            }
        } else if let Some(set) = self.literal.get_mut(pattern.as_str()) {
            set.remove(id);
            if set.is_empty() {
                self.literal.remove(pattern.as_str());
            }
        }
    }

    /// Calls `f` for each subscriber with a pattern matching `subject`, once each (a subscriber
    /// of several matching patterns is kept apart by id only then).
    pub fn for_each_matching(&self, subject: &str, mut f: impl FnMut(&C)) {
        let literal = self.literal.get(subject);
        let mut wild = self
            .wild
            .iter()
            .filter(|(pattern, _)| pattern.matches(subject))
            .map(|(_, set)| set)
            .peekable();
        if wild.peek().is_none() {
            literal.into_iter().flat_map(HashMap::values).for_each(f);
            return;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for (id, subscriber) in literal.into_iter().flatten().chain(wild.flatten()) {
            if seen.insert(id) {
                f(subscriber);
            }
        }
    }

    /// How many subscribers [`Self::for_each_matching`] would call.
    #[cfg(test)]
    fn matching(&self, subject: &str) -> usize {
        let mut n = 0;
        self.for_each_matching(subject, |_| n += 1);
        n
    }

    /// The number of distinct patterns (for leak checks).
    pub fn patterns(&self) -> usize {
        self.literal.len() + self.wild.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(p("chat.*").matches("chat.lobby"));
        assert!(!p("chat.*").matches("chat.lobby.x"));
        assert!(!p("chat.*").matches("chat"));
        assert!(p("chat.>").matches("chat.lobby.x"));
        assert!(!p("chat.>").matches("chat"));
        assert!(p(">").matches("a"));
        assert!(p("a.*.c").matches("a.b.c"));
        assert!(!p("a.*.c").matches("a.b.d"));
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.bc"));
        for bad in ["a..b", "a.>.b", "a*", "", "a b", "$ws.x", ".a", "a."] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn allowed_patterns_cover_what_they_should() {
        let allowed = vec![p("chat.>"), p("news.*")];
        let allowed = Some(allowed.as_slice());
        assert!(allows_pattern(allowed, &p("chat.*")));
        assert!(allows_pattern(allowed, &p("chat.lobby.x")));
        assert!(allows_pattern(allowed, &p("news.today")));
        assert!(!allows_pattern(allowed, &p("news.>")));
        assert!(!allows_pattern(allowed, &p(">")));
        assert!(!allows_pattern(allowed, &p("admin.x")));
        assert!(allows(allowed, "chat.a.b"));
        assert!(!allows(allowed, "admin"));
        assert!(allows(None, "anything"));
    }

    #[test]
    fn the_index_finds_each_client_once() {
        let mut subs = Subscriptions::<()>::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        subs.add(&p("chat.lobby"), &a, ());
        subs.add(&p("chat.*"), &a, ());
        subs.add(&p("chat.>"), &b, ());
        assert_eq!(subs.matching("chat.lobby"), 2);
        assert_eq!(subs.matching("chat.garden"), 2);
        assert_eq!(subs.matching("chat.garden.x"), 1);
        subs.remove(&p("chat.lobby"), "a");
        subs.remove(&p("chat.*"), "a");
        subs.remove(&p("chat.>"), "b");
        assert_eq!(subs.patterns(), 0);
    }
}
