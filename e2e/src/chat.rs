//! The chat example (`examples/chat/`) as the end-to-end test and the demo run it: its manifest,
//! the listener that manifest configures, the wait until that listener takes browsers, and the
//! page's address.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use wadm_types::{Manifest, TraitProperty};

use crate::repo_root;

/// `examples/chat/wadm.yaml`
pub fn manifest_path() -> PathBuf {
    repo_root().join("examples/chat/wadm.yaml")
}

/// `examples/chat/`, where `index.html` is: what the page's HTTP server serves.
pub fn page_dir() -> PathBuf {
    repo_root().join("examples/chat")
}

/// The listener's `listen` and `path` (default `/`), from the handler link's source config: the
/// link that makes the provider listen.
pub fn listener(manifest: &Manifest) -> anyhow::Result<(String, String)> {
    let properties = manifest
        .spec
        .components
        .iter()
        .flat_map(|c| c.traits.iter().flatten())
        .filter_map(|t| match &t.properties {
            TraitProperty::Link(link) if link.interfaces == ["handler"] => link.source.as_ref(),
            _ => None,
        })
        .flat_map(|source| &source.config)
        .filter_map(|config| config.properties.as_ref())
        .find(|properties| properties.contains_key("listen"))
        .ok_or_else(|| anyhow!("no handler link with a `listen` config"))?;
    let path = properties.get("path").map_or("/", String::as_str);
    Ok((properties["listen"].clone(), path.to_string()))
}

/// `ws://<listen><path>`
pub fn ws_url(listen: &str, path: &str) -> String {
    format!("ws://{listen}{path}")
}

/// The page for `room`, talking to the listener at `ws`: `<page>?ws=<ws>&room=<room>`.
pub fn page_url(page: &str, ws: &str, room: &str) -> String {
    format!("{page}?ws={ws}&room={room}")
}

/// Waits until a WebSocket handshake with `ws` succeeds (the provider binds the listener in the
/// background of the link put, and serves its path once both links are in), and closes that
/// connection again. Retries refused connections and HTTP refusals until `limit`.
pub async fn wait_listening(ws: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(ws))
                .await;
        let error = match attempt {
            Ok(Ok((mut socket, _))) => {
                let _ = socket.close(None).await;
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the handshake took more than 5 s".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{ws} accepts no WebSocket connection after {limit:?}: {error}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails, naming what to run, when the browser test's Chromium, chromedriver or Selenium is
/// missing; returns the Python that has Selenium.
pub fn browser_python() -> anyhow::Result<PathBuf> {
    let python = repo_root().join("target/browser-venv/bin/python");
    for needed in [
        python.clone(),
        "/usr/bin/chromium".into(),
        "/usr/bin/chromedriver".into(),
    ] {
        if !needed.exists() {
            bail!(
                "{} is missing: the browser test needs Chromium, chromedriver and Selenium; \
                 install them with `. scripts/setup.sh; setup_browser`",
                needed.display()
            );
        }
    }
    std::process::Command::new(&python)
        .args(["-c", "import selenium"])
        .status()
        .ok()
        .filter(|s| s.success())
        .with_context(|| {
            format!(
                "{} cannot import selenium: run `. scripts/setup.sh; setup_browser`",
                python.display()
            )
        })?;
    Ok(python)
}
