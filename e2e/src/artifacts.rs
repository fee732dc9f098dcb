//! Builds what the example deploys: the provider binary (packed into a provider archive, as
//! `wash build` would) and the echo component for wasm32-wasip2.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use provider_archive::ProviderArchive;

use crate::repo_root;

/// The provider's binary name (the contract's).
pub const PROVIDER_BIN: &str = "messaging-websocket-provider";

/// Built artifacts, at the paths `examples/wadm.yaml` names.
pub struct Artifacts {
    /// `build/messaging-websocket-provider.par.gz`
    pub provider_archive: PathBuf,
    /// `examples/echo-component/build/echo_component_s.wasm`
    pub component: PathBuf,
    /// The provider binary the archive was made from.
    pub provider_bin: PathBuf,
}

fn cargo(dir: &Path, args: &[&str], say: &dyn Fn(&str)) -> anyhow::Result<()> {
    say(&format!("cargo {} (in {})", args.join(" "), dir.display()));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        // The outer cargo's settings (this project's target dir, features) must not leak in.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_MANIFEST_DIR")
        .status()
        .with_context(|| format!("failed to run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Builds the provider (debug) and the component (release, wasm32-wasip2), and puts the provider
/// archive and the component where the manifest expects them. `say` reports progress.
pub async fn build(say: &dyn Fn(&str)) -> anyhow::Result<Artifacts> {
    let root = repo_root();
    cargo(&root, &["build", "--bin", PROVIDER_BIN], say)?;
    let provider_bin = root.join("target/debug").join(PROVIDER_BIN);

    let component_dir = root.join("examples/echo-component");
    cargo(
        &component_dir,
        &["build", "--release", "--target", "wasm32-wasip2"],
        say,
    )?;
    let built = component_dir.join("target/wasm32-wasip2/release/echo_component.wasm");
    let component = component_dir.join("build/echo_component_s.wasm");
    std::fs::create_dir_all(component.parent().unwrap())?;
    std::fs::copy(&built, &component).with_context(|| {
        format!(
            "failed to copy {} to {}",
            built.display(),
            component.display()
        )
    })?;

    let provider_archive = root.join("build").join(format!("{PROVIDER_BIN}.par.gz"));
    say(&format!("packing {}", provider_archive.display()));
    pack(&provider_bin, &provider_archive).await?;
    Ok(Artifacts {
        provider_archive,
        component,
        provider_bin,
    })
}

/// Packs `bin` into a signed, compressed provider archive for this machine's target.
pub async fn pack(bin: &Path, destination: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(bin).with_context(|| format!("failed to read {}", bin.display()))?;
    let mut par = ProviderArchive::new(
        "Messaging WebSocket",
        "wasmcloud-provider-messaging-websocket",
        Some(0),
        Some("0.1.0".into()),
    );
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    par.add_library(&target, &bytes)
        .map_err(|e| anyhow::anyhow!("failed to add the binary to the archive: {e}"))?;
    std::fs::create_dir_all(destination.parent().unwrap())?;
    par.write(
        destination,
        &nkeys::KeyPair::new_account(),
        &nkeys::KeyPair::new_service(),
        true,
    )
    .await
    .map_err(|e| anyhow::anyhow!("failed to write {}: {e}", destination.display()))?;
    Ok(())
}
