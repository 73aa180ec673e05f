//! Builds the kernel programs (tracer-ebpf) with the pinned nightly and bpf-linker, so that
//! `cargo build -p tracer` yields one self-contained binary with the objects embedded.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=TRACER_NIGHTLY_TOOLCHAIN");
    // Set by .cargo/config.toml, the one place toolchains are pinned.
    let nightly = env::var("TRACER_NIGHTLY_TOOLCHAIN").context(
        "TRACER_NIGHTLY_TOOLCHAIN is not set; build from the workspace (.cargo/config.toml sets it)",
    )?;
    put_bpf_linker_on_path(&nightly)?;
    // aya-build turns every line the nested cargo prints into a warning of this build; only
    // real diagnostics should show.
    // SAFETY: build scripts are single-threaded here.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&nightly),
    )
}

/// `cargo xtask setup` installs bpf-linker under ~/.cache/tracer, keyed by the nightly whose
/// LLVM it links. Put it first on PATH for the nested eBPF build.
fn put_bpf_linker_on_path(nightly: &str) -> anyhow::Result<()> {
    let home = env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    let dir = PathBuf::from(home).join(format!(".cache/tracer/bpf-linker-{nightly}/bin"));
    let linker = dir.join("bpf-linker");
    println!("cargo::rerun-if-changed={}", linker.display());
    if !linker.exists() {
        bail!(
            "bpf-linker for {nightly} is missing ({}); run `cargo xtask setup`",
            linker.display()
        );
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir];
    dirs.extend(env::split_paths(&path));
    // SAFETY: build scripts are single-threaded here.
    unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    Ok(())
}
