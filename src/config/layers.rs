//! Reading a link's settings from its four places (link secrets, link config, provider
//! secrets, provider config), each key where its row in the key table says it may come from,
//! and checked as its row says (a flag, a choice, a number within its bound).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tracing::warn;
use wasmcloud_provider_sdk::core::secrets::SecretValue;

use super::keys::{Bound, Key, Mode, Secret, Value};
use super::{invalid, key, keys, ConfigError, ProviderDefaults, HEADER_PREFIX};

/// The four places a value can come from, in order of precedence for sensitive keys.
pub(crate) struct Layers<'a> {
    pub(crate) link_config: &'a HashMap<String, String>,
    pub(crate) link_secrets: &'a HashMap<String, SecretValue>,
    pub(crate) defaults: &'a ProviderDefaults,
}

/// The row of a key the parser reads: every such key is in the table (the unit tests read each).
fn row(name: &str) -> &'static Key {
    key(name).unwrap_or_else(|| panic!("`{name}` is read but has no row in the key table"))
}

impl Layers<'_> {
    /// A plain-config key: the link's value, else the provider's.
    pub(crate) fn plain(&self, key: &str) -> Option<&str> {
        debug_assert_eq!(
            row(key).secret,
            Secret::No,
            "`{key}` may come from a secret"
        );
        self.plain_unchecked(key)
    }

    fn plain_unchecked(&self, key: &str) -> Option<&str> {
        self.link_config
            .get(key)
            .or_else(|| self.defaults.config.get(key))
            .map(String::as_str)
    }

    /// A key's value from where its row says: plain config; a secret first, else plain config;
    /// or (a credential) a secret first, else plain config with a warning.
    pub(crate) fn value(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let secret = row(key).secret;
        if secret != Secret::No {
            if let Some(value) = self.secret(key)? {
                return Ok(Some(value));
            }
        }
        let plain = self.plain_unchecked(key).map(str::to_string);
        if secret == Secret::Preferred && plain.is_some() {
            warn!(
                key,
                "sensitive setting taken from plain config; put it in a secret instead"
            );
        }
        Ok(plain)
    }

    /// A key from the secrets only: the link's, then the provider's.
    fn secret(&self, key: &str) -> Result<Option<String>, ConfigError> {
        for secrets in [self.link_secrets, &self.defaults.secrets] {
            if let Some(secret) = secrets.get(key) {
                let value = match secret {
                    SecretValue::String(s) => s.clone(),
                    SecretValue::Bytes(b) => {
                        String::from_utf8(b.clone()).map_err(|_| ConfigError {
                            key: key.to_string(),
                            value: None,
                            reason: "the secret's bytes are not valid UTF-8".into(),
                        })?
                    }
                };
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Names of all `header.<Name>` keys found in any layer.
    pub(crate) fn header_keys(&self) -> BTreeSet<&str> {
        self.link_config
            .keys()
            .chain(self.defaults.config.keys())
            .chain(self.link_secrets.keys())
            .chain(self.defaults.secrets.keys())
            .map(String::as_str)
            .filter(|k| k.starts_with(HEADER_PREFIX))
            .collect()
    }

    /// A flag: `true` or `false`, else its row's default.
    pub(crate) fn flag(&self, key: &str) -> Result<bool, ConfigError> {
        let Value::Flag(default) = row(key).value else {
            panic!("`{key}` is not a flag in the key table");
        };
        match self.plain(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(invalid(key, other, "expected `true` or `false`")),
        }
    }

    /// A choice: one of its row's words, else the first of them.
    pub(crate) fn choice(&self, key: &str) -> Result<&'static str, ConfigError> {
        let Value::Choice(words) = row(key).value else {
            panic!("`{key}` is not a choice in the key table");
        };
        let Some(value) = self.plain(key) else {
            return Ok(words[0]);
        };
        words.iter().copied().find(|w| *w == value).ok_or_else(|| {
            let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
            let (last, rest) = quoted.split_last().expect("a choice has words");
            invalid(
                key,
                value,
                format!("expected {} or {last}", rest.join(", ")),
            )
        })
    }

    /// A numeric key within its [`Bound`]: at least 1 (0 too where the bound allows it), at most
    /// the bound.
    pub(crate) fn number(&self, key: &str) -> Result<u64, ConfigError> {
        let Some(&Bound {
            default,
            max,
            unit,
            why,
            zero,
        }) = row(key).bound()
        else {
            panic!("`{key}` is not a number in the key table");
        };
        let Some(value) = self.plain(key) else {
            return Ok(default);
        };
        let digits = value.trim();
        let n = match digits.parse::<u64>() {
            Ok(n) => n,
            // Digits only, but more than a u64 holds: still a number above the bound.
            Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
            Err(_) => return Err(invalid(key, value, format!("expected {unit}"))),
        };
        if n < u64::from(!zero) {
            Err(invalid(key, value, format!("must be at least 1 ({unit})")))
        } else if n > max {
            Err(invalid(key, value, format!("at most {max}{why} ({unit})")))
        } else {
            Ok(n)
        }
    }

    pub(crate) fn millis(&self, key: &str) -> Result<Duration, ConfigError> {
        self.number(key).map(Duration::from_millis)
    }

    pub(crate) fn seconds(&self, key: &str) -> Result<Duration, ConfigError> {
        self.number(key).map(Duration::from_secs)
    }

    pub(crate) fn count(&self, key: &str) -> Result<usize, ConfigError> {
        // Every bound fits in a usize of 32 bits or more.
        Ok(usize::try_from(self.number(key)?).unwrap_or(usize::MAX))
    }

    /// A number whose bound fits in a u32.
    pub(crate) fn small(&self, key: &str) -> Result<u32, ConfigError> {
        Ok(u32::try_from(self.number(key)?).unwrap_or(u32::MAX))
    }

    /// Keys of the other mode set on the link itself: a listener's link with dialling keys, or a
    /// dialling link with listener keys (provider config may carry the defaults of both).
    pub(crate) fn check_mode(&self, listening: bool) -> Result<(), ConfigError> {
        let (wrong, mode, fix) = if listening {
            (
                Mode::Dialling,
                "a listener (`listen` is set)",
                "they apply to links that dial a server (`uri`)",
            )
        } else {
            (
                Mode::Listener,
                "a link that dials a server (no `listen`)",
                "they apply to a listener: set `listen` too",
            )
        };
        let mut set: Vec<&str> = self
            .link_config
            .keys()
            .chain(self.link_secrets.keys())
            .map(String::as_str)
            .filter(|k| key(k).is_some_and(|row| row.mode == wrong))
            .collect();
        set.sort_unstable();
        set.dedup();
        match set.first() {
            None => Ok(()),
            Some(first) => Err(ConfigError {
                key: (*first).to_string(),
                value: None,
                reason: format!(
                    "{} cannot be set on {mode}: {fix}",
                    set.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

/// Every key's name in the table's order, for the unknown-key warning.
pub(crate) fn known_names() -> String {
    keys().map(|k| k.name).collect::<Vec<_>>().join(", ")
}
