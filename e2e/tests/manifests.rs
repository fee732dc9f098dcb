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

/// The `n`th yaml block of README.md (0-based), checked by wadm's own validation.
async fn readme_manifest(n: usize) -> wadm_types::Manifest {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let snippet = readme
        .split("```yaml\n")
        .nth(n + 1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("README has a yaml snippet number {}", n + 1));
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
async fn readme_manifest_snippet_is_valid() {
    let manifest = readme_manifest(0).await;
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
async fn readme_security_snippet_is_valid() {
    let manifest = readme_manifest(1).await;
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
