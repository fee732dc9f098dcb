//! The texts that docs/troubleshooting.md shows, so a test checks a message against the doc
//! rather than against a copy of it. An entry is a `## <title>` section; its text is the first
//! ```text block in it, where `<...>` stands for a part that varies.

use std::path::PathBuf;

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The provider's tests run in the root, the end-to-end tests in e2e/.
    let root = if path.join("docs").is_dir() {
        path
    } else {
        path.parent().unwrap().to_path_buf()
    };
    std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap()
}

/// The text of the entry `title`, placeholders included.
pub fn entry(title: &str) -> String {
    let doc = doc();
    let section = doc
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/troubleshooting.md has no entry \"{title}\""));
    let section = section.split("\n## ").next().unwrap();
    let text = section
        .split("```text\n")
        .nth(1)
        .unwrap_or_else(|| panic!("the entry \"{title}\" has no text block"));
    text.split("\n```").next().unwrap().to_string()
}

/// The fixed parts of the entry's text, in order (what is left between the placeholders).
pub fn pieces(title: &str) -> Vec<String> {
    let text = entry(title);
    let mut pieces = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        pieces.push(rest[..start].to_string());
        rest = &rest[start + len + 1..];
    }
    pieces.push(rest.to_string());
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// Whether `actual` shows the entry's text: its fixed parts, in order.
pub fn shows(title: &str, actual: &str) -> bool {
    let mut rest = actual;
    for piece in pieces(title) {
        match rest.find(&piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Panics unless `actual` shows the entry's text.
pub fn assert_shows(title: &str, actual: &str) {
    assert!(
        shows(title, actual),
        "this does not show the text of \"{title}\" in docs/troubleshooting.md ({:?}):\n{actual}",
        entry(title)
    );
}
