//! Builds what the examples deploy: the provider binary (packed into a provider archive, as
//! `wash build` would) and the example components ([`ECHO`], [`CHAT`]) for wasm32-wasip2.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use provider_archive::ProviderArchive;

use crate::{repo_root, shown};

/// The provider's binary name (the contract's).
pub const PROVIDER_BIN: &str = "messaging-websocket-provider";

/// An example component: a crate of its own, built for wasm32-wasip2 and copied to where its
/// manifest's `file://` image points (where `wash build` in its directory would write it).
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// The crate's directory, relative to the repository root.
    pub dir: &'static str,
    /// The crate's library name: cargo writes `<name>.wasm`, the manifest wants `<name>_s.wasm`.
    pub name: &'static str,
}

/// `examples/echo-component`, which `examples/wadm.yaml` deploys.
pub const ECHO: Example = Example {
    dir: "examples/echo-component",
    name: "echo_component",
};

/// `examples/chat/component`, which `examples/chat/wadm.yaml` deploys.
pub const CHAT: Example = Example {
    dir: "examples/chat/component",
    name: "chat_component",
};

impl Example {
    /// `<dir>/build/<name>_s.wasm`, the path its manifest names.
    pub fn wasm(&self) -> PathBuf {
        repo_root()
            .join(self.dir)
            .join("build")
            .join(format!("{}_s.wasm", self.name))
    }

    fn build(&self, say: &dyn Fn(&str)) -> anyhow::Result<PathBuf> {
        let dir = repo_root().join(self.dir);
        cargo(
            &dir,
            &["build", "--release", "--target", "wasm32-wasip2"],
            say,
        )?;
        let built = dir
            .join("target/wasm32-wasip2/release")
            .join(format!("{}.wasm", self.name));
        let component = self.wasm();
        std::fs::create_dir_all(component.parent().unwrap())?;
        std::fs::copy(&built, &component).with_context(|| {
            format!(
                "failed to copy {} to {}",
                built.display(),
                component.display()
            )
        })?;
        Ok(component)
    }
}

/// Built artifacts, at the paths the manifests name.
pub struct Artifacts {
    /// `build/messaging-websocket-provider.par.gz`
    pub provider_archive: PathBuf,
    /// The provider binary the archive was made from.
    pub provider_bin: PathBuf,
    /// The components built, in the order asked for (each at [`Example::wasm`]).
    pub components: Vec<PathBuf>,
}

fn cargo(dir: &Path, args: &[&str], say: &dyn Fn(&str)) -> anyhow::Result<()> {
    say(&format!("cargo {} (in {})", args.join(" "), shown(dir)));
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

/// Builds the provider (debug) and `examples` (release, wasm32-wasip2), and puts the provider
/// archive and the components where the manifests expect them. `say` reports progress.
pub async fn build(examples: &[Example], say: &dyn Fn(&str)) -> anyhow::Result<Artifacts> {
    let root = repo_root();
    cargo(&root, &["build", "--bin", PROVIDER_BIN], say)?;
    let provider_bin = root.join("target/debug").join(PROVIDER_BIN);

    let components = examples
        .iter()
        .map(|example| example.build(say))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let provider_archive = root.join("build").join(format!("{PROVIDER_BIN}.par.gz"));
    say(&format!("packing {}", shown(&provider_archive)));
    pack(&provider_bin, &provider_archive).await?;
    Ok(Artifacts {
        provider_archive,
        provider_bin,
        components,
    })
}

/// Packs `bin` into a signed, compressed provider archive for this machine's target, with the
/// name, vendor, revision and version of `wasmcloud.toml` (read by wash's own parser), as
/// `wash build` writes them.
pub async fn pack(bin: &Path, destination: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(bin).with_context(|| format!("failed to read {}", bin.display()))?;
    let project = wash::lib::parser::load_config(Some(crate::repo_root()), Some(false))
        .await
        .context("wash cannot parse wasmcloud.toml")?;
    let wash::lib::parser::TypeConfig::Provider(provider) = &project.project_type else {
        anyhow::bail!("wasmcloud.toml is not a provider project");
    };
    let mut par = ProviderArchive::new(
        &project.common.name,
        &provider.vendor,
        Some(project.common.revision),
        Some(project.common.version.to_string()),
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
