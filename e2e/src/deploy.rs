//! Applies a wadm manifest to the hosts of a lattice through the control interface, the way wadm
//! would: named config first, then the provider (one instance on each of as many hosts as its
//! scaler asks for) and the components (on the first host), then the links.
//!
//! The manifest is read with wadm's own types (`wadm-types`), and its `file://` images are
//! resolved as `wash app deploy` resolves them (wash 0.44, `load_app_manifest`): a relative path
//! is relative to the folder that holds the manifest (not the working directory), an absolute one
//! is kept as it is, and a path that does not exist refuses the manifest with wash's message,
//! naming the path it resolved to. Overrides replace config properties by key (the end-to-end
//! test points `uri` at its own server's free port).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use wadm_types::{
    CapabilityProperties, ComponentProperties, ConfigProperty, Manifest, Properties, TraitProperty,
};
use wasmcloud_test_util::control_interface::{Client, Link};

/// What was deployed.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub provider_id: String,
    pub component_id: String,
    /// (source id, link name, namespace, package) of every link, to delete them again.
    pub links: Vec<(String, String, String, String)>,
    /// The effective properties of every named config that was put.
    pub configs: HashMap<String, HashMap<String, String>>,
}

/// Reads and validates a manifest with wadm's own validation.
pub async fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let (manifest, failures) = wadm_types::validation::validate_manifest_file(path).await?;
    let errors: Vec<_> = failures
        .iter()
        .filter(|f| {
            matches!(
                f.level,
                wadm_types::validation::ValidationFailureLevel::Error
            )
        })
        .collect();
    ensure!(
        errors.is_empty(),
        "{} is not a valid wadm manifest: {errors:?}",
        path.display()
    );
    Ok(manifest)
}

/// Reads a manifest as `wash app deploy <path>` does: validated by wadm, then every `file://`
/// image resolved by [`resolve_file_images`] against the manifest's own folder.
pub async fn load_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let mut manifest = read_manifest(path).await?;
    let folder = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent folder", path.display()))?;
    resolve_file_images(&mut manifest, folder)?;
    Ok(manifest)
}

/// wash's rule for `file://` images: a relative path is joined to `folder` (the manifest's), an
/// absolute one is kept; either must exist. A relative path that does not exist fails with
/// wash's own words: `relative file path [file://./x] (resolved to [<folder>/./x]) does not
/// exist`. Resolved images become absolute `file://` paths.
pub fn resolve_file_images(manifest: &mut Manifest, folder: &Path) -> anyhow::Result<()> {
    for component in &mut manifest.spec.components {
        let image = match &mut component.properties {
            Properties::Component { properties } => &mut properties.image,
            Properties::Capability { properties } => &mut properties.image,
        };
        let Some(image) = image else { continue };
        let Some(path) = image.strip_prefix("file://") else {
            continue;
        };
        let path = Path::new(path);
        if path.is_absolute() {
            ensure!(
                path.exists(),
                "file path [{image}] (image of {}) does not exist",
                component.name
            );
            continue;
        }
        let resolved = folder.join(path);
        ensure!(
            resolved.exists(),
            "relative file path [{image}] (resolved to [{}]) does not exist",
            resolved.display()
        );
        *image = format!("file://{}", resolved.display());
    }
    Ok(())
}

fn image_ref(image: &Option<String>, name: &str) -> anyhow::Result<String> {
    let image = image
        .as_deref()
        .ok_or_else(|| anyhow!("component {name} has no image"))?;
    Ok(match image.strip_prefix("file://") {
        Some(path) => {
            let path = Path::new(path);
            ensure!(
                path.is_absolute(),
                "the image of {name} ({image}) is relative: read the manifest with load_manifest, which resolves it against the manifest's folder as wash does"
            );
            let path = path
                .canonicalize()
                .with_context(|| format!("{} (image of {name})", path.display()))?;
            url::Url::from_file_path(&path)
                .map_err(|()| anyhow!("bad path {}", path.display()))?
                .to_string()
        }
        None => image.to_string(),
    })
}

/// Puts every named config that carries properties; returns the names to attach.
async fn put_configs(
    ctl: &Client,
    configs: &[ConfigProperty],
    overrides: &HashMap<String, String>,
    put: &mut HashMap<String, HashMap<String, String>>,
) -> anyhow::Result<Vec<String>> {
    for config in configs {
        if let Some(properties) = &config.properties {
            let mut properties = properties.clone();
            for (key, value) in overrides {
                if let Some(v) = properties.get_mut(key) {
                    v.clone_from(value);
                }
            }
            let response = ctl
                .put_config(&config.name, properties.clone())
                .await
                .map_err(|e| anyhow!("failed to put config {}: {e}", config.name))?;
            ensure!(
                response.succeeded(),
                "config {} refused: {}",
                config.name,
                response.message()
            );
            put.insert(config.name.clone(), properties);
        }
    }
    Ok(configs.iter().map(|c| c.name.clone()).collect())
}

/// The hosts a provider runs on, as wadm places it: a `spreadscaler` of n instances on n hosts (a
/// host runs one instance of a provider id), a `daemonscaler` on every host, no scaler on one.
fn provider_hosts<'a>(
    component: &wadm_types::Component,
    hosts: &'a [String],
) -> anyhow::Result<&'a [String]> {
    let scaler = component.traits.iter().flatten().find(|t| t.is_scaler());
    let wanted = match scaler {
        Some(t) if t.trait_type == wadm_types::DAEMONSCALER_TRAIT => hosts.len(),
        Some(wadm_types::Trait {
            properties: TraitProperty::SpreadScaler(s),
            ..
        }) => s.instances,
        _ => 1,
    };
    ensure!(
        (1..=hosts.len()).contains(&wanted),
        "provider {} wants {wanted} instances, and the lattice has {} hosts (one instance per host)",
        component.name,
        hosts.len()
    );
    Ok(&hosts[..wanted])
}

/// Deploys `manifest` on `hosts` (the provider on as many as its scaler asks for, the components
/// on the first), waits until the provider is healthy and the component is in the first host's
/// inventory, and puts the links.
pub async fn deploy(
    ctl: &Client,
    hosts: &[String],
    manifest: &Manifest,
    overrides: &HashMap<String, String>,
) -> anyhow::Result<Deployed> {
    let host_id = hosts
        .first()
        .ok_or_else(|| anyhow!("a lattice without hosts"))?
        .as_str();
    let mut configs = HashMap::new();
    let ids: HashMap<&str, String> = manifest
        .spec
        .components
        .iter()
        .map(|c| {
            let id = match &c.properties {
                Properties::Component {
                    properties: ComponentProperties { id, .. },
                }
                | Properties::Capability {
                    properties: CapabilityProperties { id, .. },
                } => id.clone(),
            };
            (c.name.as_str(), id.unwrap_or_else(|| c.name.clone()))
        })
        .collect();
    let (mut provider_id, mut component_id) = (None, None);

    for component in &manifest.spec.components {
        let id = &ids[component.name.as_str()];
        match &component.properties {
            Properties::Capability { properties } => {
                let reference = image_ref(&properties.image, &component.name)?;
                let config = put_configs(ctl, &properties.config, overrides, &mut configs).await?;
                for host in provider_hosts(component, hosts)? {
                    let response = ctl
                        .start_provider(host, &reference, id, None, config.clone())
                        .await
                        .map_err(|e| anyhow!("failed to start provider {id} on {host}: {e}"))?;
                    ensure!(
                        response.succeeded(),
                        "provider {id} refused on host {host}: {}",
                        response.message()
                    );
                }
                wait_healthy(ctl, id).await?;
                provider_id = Some(id.clone());
            }
            Properties::Component { properties } => {
                let reference = image_ref(&properties.image, &component.name)?;
                let config = put_configs(ctl, &properties.config, overrides, &mut configs).await?;
                let instances = component
                    .traits
                    .iter()
                    .flatten()
                    .find_map(|t| match &t.properties {
                        TraitProperty::SpreadScaler(s) => Some(s.instances),
                        _ => None,
                    })
                    .unwrap_or(1);
                let response = ctl
                    .scale_component(
                        host_id,
                        &reference,
                        id,
                        instances as u32,
                        None,
                        config,
                        false,
                    )
                    .await
                    .map_err(|e| anyhow!("failed to scale component {id}: {e}"))?;
                ensure!(
                    response.succeeded(),
                    "component {id} refused: {}",
                    response.message()
                );
                wasmcloud_test_util::component::wait_for_component_in_inventory(
                    ctl,
                    host_id,
                    id,
                    Duration::from_secs(60),
                )
                .await
                .with_context(|| {
                    format!("component {id} never showed up in the host's inventory")
                })?;
                component_id = Some(id.clone());
            }
        }
    }

    let mut links = Vec::new();
    for component in &manifest.spec.components {
        let source = &ids[component.name.as_str()];
        for link in component
            .traits
            .iter()
            .flatten()
            .filter_map(|t| match &t.properties {
                TraitProperty::Link(link) => Some(link),
                _ => None,
            })
        {
            let target = ids
                .get(link.target.name.as_str())
                .ok_or_else(|| anyhow!("link to unknown component {}", link.target.name))?;
            let name = link.name.clone().unwrap_or_else(|| "default".into());
            let source_config = match &link.source {
                Some(definition) => {
                    put_configs(ctl, &definition.config, overrides, &mut configs).await?
                }
                None => Vec::new(),
            };
            let target_config =
                put_configs(ctl, &link.target.config, overrides, &mut configs).await?;
            let definition = Link::builder()
                .source_id(source)
                .target(target)
                .name(&name)
                .wit_namespace(&link.namespace)
                .wit_package(&link.package)
                .interfaces(link.interfaces.clone())
                .source_config(source_config)
                .target_config(target_config)
                .build()
                .map_err(|e| anyhow!("bad link: {e}"))?;
            let response = ctl
                .put_link(definition)
                .await
                .map_err(|e| anyhow!("failed to put link {source} -> {target}: {e}"))?;
            ensure!(
                response.succeeded(),
                "link {source} -> {target} refused: {}",
                response.message()
            );
            links.push((
                source.clone(),
                name,
                link.namespace.clone(),
                link.package.clone(),
            ));
        }
    }
    Ok(Deployed {
        provider_id: provider_id
            .ok_or_else(|| anyhow!("the manifest has no capability provider"))?,
        component_id: component_id.ok_or_else(|| anyhow!("the manifest has no component"))?,
        links,
        configs,
    })
}

/// Deletes the links that [`deploy`] put.
pub async fn delete_links(ctl: &Client, deployed: &Deployed) -> anyhow::Result<()> {
    for (source, name, namespace, package) in &deployed.links {
        let response = ctl
            .delete_link(source, name, namespace, package)
            .await
            .map_err(|e| anyhow!("failed to delete link {source}/{name}: {e}"))?;
        ensure!(
            response.succeeded(),
            "deleting link {source}/{name} refused: {}",
            response.message()
        );
    }
    Ok(())
}

/// Waits until the provider answers the host's health check as healthy, with no message (what
/// the host and wasmCloud's test utilities expect).
async fn wait_healthy(ctl: &Client, provider_id: &str) -> anyhow::Result<()> {
    let subject = format!("wasmbus.rpc.{}.{provider_id}.health", ctl.lattice());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(reply) = ctl
            .nats_client()
            .request(subject.clone(), "{}".into())
            .await
        {
            let health: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            if health["healthy"] == true && health.get("message").is_none_or(|m| m.is_null()) {
                return Ok(());
            }
            bail!("provider {provider_id} is unhealthy: {health}");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("provider {provider_id} did not answer health checks within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
