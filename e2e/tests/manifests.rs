//! The packaging files parse with the real parsers: `wasmcloud.toml` with wash's own parser, the
//! wadm manifest with wadm's own types and validation.

use std::collections::HashMap;

use wadm_types::{Properties, TraitProperty};
use wash::lib::parser::{load_config, TypeConfig};
use wasmcloud_provider_messaging_websocket_e2e::{artifacts::PROVIDER_BIN, deploy, repo_root};

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
async fn example_component_wasmcloud_toml_targets_wasip2() {
    let project = load_config(
        Some(repo_root().join("examples/echo-component")),
        Some(false),
    )
    .await
    .expect("wash parses the component's wasmcloud.toml");
    let TypeConfig::Component(component) = &project.project_type else {
        panic!("not a component project: {:?}", project.project_type);
    };
    assert_eq!(component.wit_world.as_deref(), Some("echo"));
    assert_eq!(component.wasm_target.to_string(), "wasm32-wasip2");
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
        Some("file://./build/messaging-websocket-provider.par.gz"),
        "the archive `wash build` writes"
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
async fn readme_manifest_snippet_is_valid() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let snippet = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a yaml snippet");
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
    let links: Vec<_> = manifest
        .spec
        .components
        .iter()
        .flat_map(|c| c.traits.iter().flatten())
        .filter_map(|t| match &t.properties {
            TraitProperty::Link(link) => Some(link.interfaces.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        links,
        vec![vec!["consumer".to_string()], vec!["handler".to_string()]]
    );
}
