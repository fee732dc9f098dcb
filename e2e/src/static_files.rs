//! A static file server on 127.0.0.1 for the chat example's page (`examples/chat/`), in process,
//! so that the test and the demo need no other program and leave no child behind.
//!
//! It answers `GET` and `HEAD` of files under one directory, and under `/clients/js/` those of
//! the browser library (clients/js/, which the page imports as `../../clients/js/wsgateway.js`,
//! the same file whether the page is served from its folder or from the repository's root), and
//! nothing else: one request per connection (`Connection: close`), no directory listings, and no
//! path that leaves the directory. It is for a browser on the same machine, not for the network.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request head larger than this is refused: a browser's `GET` of a page is a fraction of it.
const MAX_HEAD: usize = 16 * 1024;

/// The server; dropping it stops accepting (connections being answered finish on their own).
pub struct StaticFiles {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for StaticFiles {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl StaticFiles {
    /// Serves `dir` on `127.0.0.1:port` (0: a free port). It accepts connections once this
    /// returns: the socket is bound and listening before the accept loop starts.
    pub async fn serve(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let root = dir
            .canonicalize()
            .with_context(|| format!("{} does not exist", dir.display()))?;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("failed to listen on 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let library = crate::repo_root().join(LIBRARY).canonicalize()?;
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (root, library) = (root.clone(), library.clone());
                tokio::spawn(async move {
                    let _ = answer(stream, &root, &library).await;
                });
            }
        });
        Ok(StaticFiles { addr, accept })
    }

    /// `http://127.0.0.1:<port>/<path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

/// Where the browser library is, in the repository and in the URL.
const LIBRARY: &str = "clients/js";

async fn answer(mut stream: TcpStream, root: &Path, library: &Path) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            )
            .await;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"").await;
    }
    let found = match target.strip_prefix(&format!("/{LIBRARY}")) {
        Some(rest) if rest.starts_with('/') => resolve(library, rest),
        _ => resolve(root, target),
    };
    let Some(file) = found else {
        return respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await;
    };
    match tokio::fs::read(&file).await {
        Ok(body) => {
            let body = if method == "HEAD" { &[][..] } else { &body[..] };
            respond(&mut stream, "200 OK", content_type(&file), body).await
        }
        Err(_) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await,
    }
}

/// The file a request target names under `root`: the query is dropped, `/` is `index.html`, and
/// a target with `..`, a percent escape or a backslash names nothing (the page's files need none).
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?.strip_prefix('/')?;
    let path = if path.is_empty() { "index.html" } else { path };
    if path.contains(['%', '\\']) {
        return None;
    }
    let relative = Path::new(path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let file = root.join(relative).canonicalize().ok()?;
    (file.starts_with(root) && file.is_file()).then_some(file)
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_under_the_root_resolve() {
        let root = crate::repo_root()
            .join("examples/chat")
            .canonicalize()
            .unwrap();
        assert_eq!(resolve(&root, "/"), Some(root.join("index.html")));
        assert_eq!(
            resolve(&root, "/index.html?ws=ws://x&room=lobby"),
            Some(root.join("index.html"))
        );
        for target in [
            "/../wadm.yaml",
            "/component/../../wadm.yaml",
            "/%2e%2e/wadm.yaml",
            "//etc/passwd",
            "/component",
            "/missing.html",
            "index.html",
        ] {
            assert_eq!(resolve(&root, target), None, "{target}");
        }
    }
}
