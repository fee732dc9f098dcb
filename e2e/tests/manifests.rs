//! The packaging files parse with the real parsers: `wasmcloud.toml` with wash's own parser, the
//! wadm manifests (`examples/wadm.yaml`, `examples/chat/wadm.yaml`, the whole manifests of docs/) with wadm's own
//! types and validation.

use std::collections::HashMap;

use wadm_types::{Properties, TraitProperty};
use wash::lib::parser::{load_config, TypeConfig};
use wasmcloud_provider_messaging_websocket_e2e::{
    artifacts::{self, PROVIDER_BIN},
    chat, deploy, docs, repo_root,
};

#[tokio::test]
async fn wasmcloud_toml_is_a_provider_project_for_wash_build() {
    let project = load_config(Some(repo_root()), Some(false))
        .await
        .expect("wash parses wasmcloud.toml");
    let TypeConfig::Provider(provider) = &project.project_type else {
        panic!(
            "wasmcloud.toml is not a provider project: {:?}",
            project.project_type
        );
    };
    assert_eq!(provider.bin_name.as_deref(), Some(PROVIDER_BIN));
    assert_eq!(provider.wit_world.as_deref(), Some("interfaces"));
    assert_eq!(provider.vendor, "wasmcloud-provider-messaging-websocket");
    assert_eq!(project.common.name, "Messaging WebSocket");
    assert_eq!(
        project.common.wit_dir,
        repo_root().join("wit").canonicalize().unwrap()
    );
    assert!(project.common.wit_dir.join("interfaces.wit").is_file());
}

#[tokio::test]
async fn example_components_wasmcloud_toml_target_wasip2() {
    for (example, world) in [(artifacts::ECHO, "echo"), (artifacts::CHAT, "chat")] {
        let project = load_config(Some(repo_root().join(example.dir)), Some(false))
            .await
            .unwrap_or_else(|e| panic!("wash parses {}/wasmcloud.toml: {e}", example.dir));
        let TypeConfig::Component(component) = &project.project_type else {
            panic!(
                "{} is not a component project: {:?}",
                example.dir, project.project_type
            );
        };
        assert_eq!(
            component.wit_world.as_deref(),
            Some(world),
            "{}",
            example.dir
        );
        assert_eq!(component.wasm_target.to_string(), "wasm32-wasip2");
    }
}

#[tokio::test]
async fn wadm_manifest_is_valid_and_shares_one_session() {
    let manifest = deploy::read_manifest(&repo_root().join("examples/wadm.yaml"))
        .await
        .expect("wadm validates the manifest");
    let mut provider_image = None;
    let mut links = Vec::new();
    for component in &manifest.spec.components {
        if let Properties::Capability { properties } = &component.properties {
            provider_image = properties.image.clone();
        }
        for t in component.traits.iter().flatten() {
            if let TraitProperty::Link(link) = &t.properties {
                links.push(link.clone());
            }
        }
    }
    assert_eq!(
        provider_image.as_deref(),
        Some("file://../build/messaging-websocket-provider.par.gz"),
        "the archive `wash build` writes, relative to examples/ (wash resolves against the manifest's folder)"
    );
    let consumer = links
        .iter()
        .find(|l| l.interfaces == ["consumer"])
        .expect("a consumer link");
    let handler = links
        .iter()
        .find(|l| l.interfaces == ["handler"])
        .expect("a handler link");
    assert_eq!(
        (consumer.namespace.as_str(), consumer.package.as_str()),
        ("wasmcloud", "messaging")
    );
    assert_eq!(
        (handler.namespace.as_str(), handler.package.as_str()),
        ("wasmcloud", "messaging")
    );
    assert_eq!(
        consumer.name, handler.name,
        "one link name, so one shared session"
    );
    let config_of = |configs: &[wadm_types::ConfigProperty]| -> HashMap<String, String> {
        configs
            .iter()
            .filter_map(|c| c.properties.clone())
            .flatten()
            .collect()
    };
    let consumer_config = config_of(&consumer.target.config);
    let handler_config = config_of(
        &handler
            .source
            .as_ref()
            .expect("handler source config")
            .config,
    );
    assert!(consumer_config["uri"].starts_with("ws://"));
    assert_eq!(
        consumer_config, handler_config,
        "equal settings, or the provider refuses to share"
    );
}

#[tokio::test]
async fn chat_manifest_is_valid_and_its_links_share_one_listener() {
    let manifest = deploy::read_manifest(&chat::manifest_path())
        .await
        .expect("wadm validates examples/chat/wadm.yaml");
    let mut images = HashMap::new();
    for component in &manifest.spec.components {
        let image = match &component.properties {
            Properties::Capability { properties } => properties.image.clone(),
            Properties::Component { properties } => properties.image.clone(),
        };
        images.insert(component.name.as_str(), image.unwrap_or_default());
    }
    assert_eq!(
        images["websocket"], "file://../../build/messaging-websocket-provider.par.gz",
        "the archive `wash build` writes, relative to examples/chat/ (the manifest's folder)"
    );
    let component_image = format!(
        "file://./{}",
        artifacts::CHAT
            .wasm()
            .strip_prefix(chat::manifest_path().parent().unwrap())
            .unwrap()
            .display()
    );
    assert_eq!(
        images["chat"], component_image,
        "where the e2e build (and `wash build` in the component's directory) puts it"
    );

    let links = links(&manifest);
    let consumer = links
        .iter()
        .find(|l| l.interfaces == ["consumer"])
        .expect("a consumer link");
    let handler = links
        .iter()
        .find(|l| l.interfaces == ["handler"])
        .expect("a handler link");
    for link in [consumer, handler] {
        assert_eq!(
            (link.namespace.as_str(), link.package.as_str()),
            ("wasmcloud", "messaging")
        );
    }
    assert_eq!(
        consumer.name.as_deref(),
        Some("default"),
        "the link name a component's calls use unless it selects another"
    );
    assert_eq!(
        consumer.name, handler.name,
        "one link name, so one listener"
    );
    let config_of = |configs: &[wadm_types::ConfigProperty]| -> HashMap<String, String> {
        configs
            .iter()
            .filter_map(|c| c.properties.clone())
            .flatten()
            .collect()
    };
    let consumer_config = config_of(&consumer.target.config);
    let handler_config = config_of(
        &handler
            .source
            .as_ref()
            .expect("handler source config")
            .config,
    );
    assert_eq!(
        consumer_config, handler_config,
        "equal settings, or the provider refuses to share the listener"
    );
    assert_eq!(
        chat::listener(&manifest).unwrap(),
        ("127.0.0.1:8766".to_string(), "/chat".to_string()),
        "the page's default ws URL (examples/chat/index.html)"
    );
    let page = std::fs::read_to_string(chat::page_dir().join("index.html")).unwrap();
    assert!(page.contains("ws://127.0.0.1:8766/chat"));
}

/// The yaml blocks of a doc (README.md or docs/*.md) that are whole manifests (they start with
/// `apiVersion:`; excerpts of one, such as the server mode's links, are not counted).
fn doc_manifests(doc: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
    text.split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|block| block.starts_with("apiVersion:"))
        .map(str::to_string)
        .collect()
}

/// The one whole manifest of `doc`, checked by wadm's own validation.
async fn doc_manifest(doc: &str) -> wadm_types::Manifest {
    let manifests = doc_manifests(doc);
    assert_eq!(manifests.len(), 1, "{doc} shows one whole manifest");
    let snippet = &manifests[0];
    let (manifest, failures) = wadm_types::validation::validate_manifest_bytes(snippet)
        .await
        .expect("the snippet parses as a wadm manifest");
    let errors: Vec<_> = failures
        .iter()
        .filter(|f| {
            matches!(
                f.level,
                wadm_types::validation::ValidationFailureLevel::Error
            )
        })
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    manifest
}

/// Whole manifests live in docs/configuration.md and docs/security.md, and nowhere else.
#[test]
fn whole_manifests_are_only_where_the_tests_validate_them() {
    let mut docs = vec!["README.md".to_string()];
    for entry in std::fs::read_dir(repo_root().join("docs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    for doc in docs {
        let expected = usize::from(doc == "docs/configuration.md" || doc == "docs/security.md");
        assert_eq!(doc_manifests(&doc).len(), expected, "{doc}");
    }
}

/// The link traits of a manifest, in order.
fn links(manifest: &wadm_types::Manifest) -> Vec<&wadm_types::LinkProperty> {
    manifest
        .spec
        .components
        .iter()
        .flat_map(|c| c.traits.iter().flatten())
        .filter_map(|t| match &t.properties {
            TraitProperty::Link(link) => Some(link),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_configuration_docs_manifest_is_valid() {
    let manifest = doc_manifest("docs/configuration.md").await;
    let interfaces: Vec<_> = links(&manifest)
        .iter()
        .map(|l| l.interfaces.clone())
        .collect();
    assert_eq!(
        interfaces,
        vec![vec!["consumer".to_string()], vec!["handler".to_string()]]
    );
}

#[tokio::test]
async fn the_security_docs_manifest_is_valid() {
    let manifest = doc_manifest("docs/security.md").await;
    let links = links(&manifest);
    assert_eq!(links.len(), 1);
    let target = &links[0].target;
    let secrets: Vec<_> = target.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        secrets,
        ["tls_client_key", "auth_token"],
        "secrets are named after the provider's keys"
    );
    let policies: Vec<_> = manifest.spec.policies.iter().map(|p| &p.name).collect();
    for secret in &target.secrets {
        assert!(policies.contains(&&secret.properties.policy));
    }
    let config = target.config[0].properties.as_ref().unwrap();
    assert!(config["uri"].starts_with("wss://"));
    let mut keys: Vec<_> = config.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["tls_ca_file", "tls_client_cert", "uri"]);
}

/// A relative `file://` image is resolved against the manifest's folder, as `wash app deploy`
/// does, and one that does not exist there refuses the manifest with wash's message naming the
/// path it resolved to; the repository-root reading that examples once relied on is refused.
#[tokio::test]
async fn a_wrong_relative_image_path_fails_naming_the_resolved_path() {
    let dir = repo_root().join("target/manifest-paths");
    std::fs::create_dir_all(dir.join("sub/build")).unwrap();
    std::fs::write(dir.join("sub/build/app_s.wasm"), b"\0asm").unwrap();
    let original = std::fs::read_to_string(repo_root().join("examples/wadm.yaml")).unwrap();
    // The old, repository-root-relative path: wrong from examples/'s point of view.
    let wrong = original.replace(
        "file://./echo-component/build/echo_component_s.wasm",
        "file://./examples/echo-component/build/echo_component_s.wasm",
    );
    assert_ne!(
        wrong, original,
        "examples/wadm.yaml names the echo component"
    );
    let wrong_path = repo_root().join("examples/wrong-paths.yaml");
    std::fs::write(&wrong_path, &wrong).unwrap();
    let err = deploy::load_manifest(&wrong_path).await.unwrap_err();
    std::fs::remove_file(&wrong_path).unwrap();
    let resolved =
        repo_root().join("examples/./examples/echo-component/build/echo_component_s.wasm");
    assert_eq!(
        err.to_string(),
        format!(
            "relative file path [file://./examples/echo-component/build/echo_component_s.wasm] (resolved to [{}]) does not exist",
            resolved.display()
        )
    );
    docs::assert_shows(
        "wash app deploy: relative file path does not exist",
        &err.to_string(),
    );

    // Relative to the manifest's folder: found; an absolute path is kept as it is.
    let absolute = dir.join("sub/build/app_s.wasm");
    let yaml = original
        .replace(
            "file://./echo-component/build/echo_component_s.wasm",
            "file://./build/app_s.wasm",
        )
        .replace(
            "file://../build/messaging-websocket-provider.par.gz",
            &format!("file://{}", absolute.display()),
        );
    let manifest_path = dir.join("sub/wadm.yaml");
    std::fs::write(&manifest_path, yaml).unwrap();
    let manifest = deploy::load_manifest(&manifest_path).await.unwrap();
    let images: Vec<_> = manifest
        .spec
        .components
        .iter()
        .map(|c| match &c.properties {
            Properties::Capability { properties } => properties.image.clone().unwrap(),
            Properties::Component { properties } => properties.image.clone().unwrap(),
        })
        .collect();
    assert_eq!(
        images,
        [
            format!("file://{}", dir.join("sub/./build/app_s.wasm").display()),
            format!("file://{}", absolute.display()),
        ]
    );
}

/// Every yaml block of README.md and docs/*.md that is not a whole manifest (those are validated
/// above) is an excerpt, line for line, of an example manifest, which the end-to-end tests
/// deploy; comment lines at column 0 (the doc's own remarks) are not part of the excerpt.
#[test]
fn doc_yaml_excerpts_are_taken_from_the_example_manifests() {
    let examples: Vec<String> = ["examples/wadm.yaml", "examples/chat/wadm.yaml"]
        .iter()
        .map(|p| std::fs::read_to_string(repo_root().join(p)).unwrap())
        .collect();
    let mut docs = vec![repo_root().join("README.md")];
    if let Ok(entries) = std::fs::read_dir(repo_root().join("docs")) {
        docs.extend(
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
    }
    let mut checked = 0;
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for block in text
            .split("```yaml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .filter(|block| !block.starts_with("apiVersion:"))
        {
            let excerpt: String = block
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            assert!(
                examples.iter().any(|e| e.contains(&excerpt)),
                "{}: this yaml is not an excerpt of an example manifest:\n{excerpt}",
                doc.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "the docs show the chat example's links");
}

/// Every entry of docs/troubleshooting.md is checked by some test: its title appears, as a
/// string, in the tests' sources (where `docs::assert_shows` or `docs::entry` take it).
#[test]
fn every_troubleshooting_entry_is_triggered_by_a_test() {
    let doc = std::fs::read_to_string(repo_root().join("docs/troubleshooting.md")).unwrap();
    let titles: Vec<&str> = doc.lines().filter_map(|l| l.strip_prefix("## ")).collect();
    assert!(titles.len() >= 12, "{titles:?}");
    let mut sources = String::new();
    for dir in ["tests", "e2e/tests"] {
        for entry in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    for title in titles {
        assert!(
            !docs::entry(title).is_empty(),
            "the entry \"{title}\" shows a text"
        );
        assert!(
            sources.contains(&format!("\"{title}\"")),
            "no test triggers the troubleshooting entry \"{title}\""
        );
    }
}

/// The archive carries the name, vendor and version of `wasmcloud.toml` in its claims (what
/// `wash inspect` shows), and the `wash push` command of docs/operations.md parses with wash's own
/// command-line parser and pushes the archive that `wash build` writes.
#[tokio::test]
async fn the_archive_carries_wasmcloud_toml_and_the_documented_push_parses() {
    let dir = repo_root().join("target/par-claims");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("bin");
    std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
    let par = dir.join("provider.par.gz");
    artifacts::pack(&bin, &par).await.unwrap();
    let archive = provider_archive::ProviderArchive::try_load_file(&par)
        .await
        .unwrap();
    let metadata = archive.claims().unwrap().metadata.unwrap();
    let project = load_config(Some(repo_root()), Some(false)).await.unwrap();
    let version = project.common.version.to_string();
    assert_eq!(metadata.name.as_deref(), Some("Messaging WebSocket"));
    assert_eq!(metadata.vendor, "wasmcloud-provider-messaging-websocket");
    assert_eq!(metadata.ver.as_deref(), Some(version.as_str()));
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(&format!("\nversion = \"{version}\"\n")),
        "Cargo.toml and wasmcloud.toml carry the same version"
    );

    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let publishing = doc.split("\n## Publishing\n").nth(1).unwrap();
    let command = publishing
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[..2], ["wash", "push"]);
    use clap::Parser as _;
    let push = wash::lib::cli::registry::RegistryPushCommand::try_parse_from(&words[1..])
        .unwrap_or_else(|e| panic!("wash does not parse `{command}`: {e}"));
    assert_eq!(push.artifact, "build/messaging-websocket-provider.par.gz");
    assert!(push.url.ends_with(&format!(":{version}")), "{}", push.url);
    // The reference the example manifest names in its comment.
    let example = std::fs::read_to_string(repo_root().join("examples/wadm.yaml")).unwrap();
    assert!(
        example.contains(&format!("# image: {}", push.url)),
        "{}",
        push.url
    );
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every relative link of README.md, TECHNICAL.md, BENCHMARKS.md and docs/*.md reaches a file
/// that exists, and its `#anchor` a heading of that file.
#[test]
fn doc_links_reach_files_and_headings() {
    let root = repo_root();
    let mut docs = vec![
        root.join("README.md"),
        root.join("TECHNICAL.md"),
        root.join("BENCHMARKS.md"),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for link in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            assert!(
                target.exists(),
                "{}: the link ({link}) names a missing file",
                doc.display()
            );
            if !fragment.is_empty() {
                let headings: Vec<String> = std::fs::read_to_string(&target)
                    .unwrap()
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .map(|l| anchor(l.trim_start_matches('#')))
                    .collect();
                assert!(
                    headings.iter().any(|h| h == fragment),
                    "{}: the link ({link}) names no heading of {}",
                    doc.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} links checked");
}
