//! `lab-vmm build-kernel-vm --kernel 6.12 --out DIR`: a Debian kernel made bootable under
//! QEMU for the kernel matrix (`cargo xtask test --kernel`).
//!
//! The kernel is the newest `linux-image-amd64` of that version that apt knows in any of
//! its suites (6.1 from bookworm, 6.12 from bookworm-backports, ...). DIR holds
//!
//! - `vmlinuz`, the package's kernel;
//! - `initramfs.cpio.gz`: busybox, the 9p modules and an /init that mounts the machine's own
//!   root filesystem read-only over 9p under a tmpfs overlay and runs the test command chrooted into it
//!   (guest/kernel-vm-init.sh);
//! - `modules/`, the package's module tree with its `modules.dep` (depmod), shared over 9p
//!   and mounted at /lib/modules/<release> so that the kernel loads netfilter, veth, tun ...
//!   on demand through the machine's modprobe;
//! - `release` (`uname -r` of the kernel) and `stamp` (the inputs; when it matches, nothing
//!   is rebuilt).
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::guest_build::{
    INITRAMFS, KernelTree, Package, STAMP, TempDir, VMLINUZ, busybox_binary, download, extract, fnv1a,
    initramfs, output, parse_kernel_dep, run, up_to_date, write_atomic,
};

const INIT: &str = include_str!("../guest/kernel-vm-init.sh");
/// The metapackage whose versions name the kernels of every suite apt knows.
const KERNEL_META: &str = "linux-image-amd64";
/// Loaded by /init: the virtio PCI transport, the 9p filesystem over virtio and overlayfs
/// (their dependencies, netfs included, come from each module's `depends=`).
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

pub fn build(version: &str, out: &Path) -> Result<()> {
    let kernel = kernel_package(version)?;
    let busybox = busybox_binary()?;
    let stamp = format!(
        "kernel={} {}\nbusybox={}\nscripts={:016x}\n",
        kernel.name,
        kernel.version,
        busybox.version,
        fnv1a(&[INIT, &ROOT_MODULES.join(",")])
    );
    if up_to_date(out, &stamp) {
        eprintln!("lab-vmm: kernel VM in {} is up to date", out.display());
        return Ok(());
    }
    eprintln!(
        "lab-vmm: building the kernel VM in {} from {} {}",
        out.display(),
        kernel.name,
        kernel.version
    );
    let parent = out.parent().context("--out has no parent directory")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // Built next to DIR, so that the module tree is renamed into place, not copied.
    let work = TempDir::new_in(parent, ".kernel-vm")?;
    let root = work.path().join("root");
    extract(&download(&kernel, work.path())?, &root)?;
    let tree = KernelTree::find(&root)?;
    let modules = tree.load_order(ROOT_MODULES)?;
    // The package leaves modules.dep to its postinst: write it as depmod would there.
    run(Command::new("depmod").arg("-b").arg(&root).arg(&tree.release))
        .context("depmod failed (is kmod installed? `cargo xtask setup` installs it)")?;
    let image = initramfs(&modules, &busybox.path, &[("init", INIT)])?;
    let vmlinuz =
        std::fs::read(&tree.vmlinuz).with_context(|| format!("cannot read {}", tree.vmlinuz.display()))?;

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // The stamp goes first and comes back last: an interrupted build never looks up to date.
    let _ = std::fs::remove_file(out.join(STAMP));
    let tree_dir = out.join("modules");
    if tree_dir.exists() {
        std::fs::remove_dir_all(&tree_dir)
            .with_context(|| format!("cannot remove {}", tree_dir.display()))?;
    }
    std::fs::rename(&tree.modules, &tree_dir)
        .with_context(|| format!("cannot move the module tree to {}", tree_dir.display()))?;
    write_atomic(&out.join(INITRAMFS), &image)?;
    write_atomic(&out.join(VMLINUZ), &vmlinuz)?;
    write_atomic(&out.join("release"), format!("{}\n", tree.release).as_bytes())?;
    write_atomic(&out.join(STAMP), stamp.as_bytes())?;
    eprintln!(
        "lab-vmm: kernel VM {} ready in {} (initramfs {} KiB)",
        tree.release,
        out.display(),
        image.len() / 1024
    );
    Ok(())
}

/// The versioned kernel package behind the newest `linux-image-amd64` of `version` (6.1,
/// 6.12, ...) in any suite apt knows.
fn kernel_package(version: &str) -> Result<Package> {
    let madison = output(Command::new("apt-cache").args(["madison", KERNEL_META]))
        .with_context(|| format!("cannot list the versions of {KERNEL_META} (run apt-get update)"))?;
    let available = meta_versions(&madison);
    let Some(meta) = newest_of(&available, version) else {
        bail!(
            "no {KERNEL_META} {version}.x in apt's suites (it has {}); add the suite that ships it to apt's sources",
            available.join(", ")
        );
    };
    let show = output(Command::new("apt-cache").args(["show", &format!("{KERNEL_META}={meta}")]))?;
    let depends = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .with_context(|| format!("{KERNEL_META} {meta} has no Depends field"))?;
    parse_kernel_dep(depends)
        .with_context(|| format!("unexpected Depends of {KERNEL_META} {meta}: {depends}"))
}

/// The versions in `apt-cache madison` output, newest first (as apt lists them).
fn meta_versions(madison: &str) -> Vec<String> {
    madison
        .lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first (newest) version of upstream line `version` ("6.1" takes 6.1.x, not 6.12.x).
fn newest_of<'a>(versions: &'a [String], version: &str) -> Option<&'a str> {
    versions
        .iter()
        .find(|v| v.strip_prefix(version).is_some_and(|rest| rest.starts_with('.')))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADISON: &str = "linux-image-amd64 | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-image-amd64 |  6.1.192-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-amd64 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
";

    #[test]
    fn picks_the_newest_of_a_line_and_never_a_longer_one() {
        let v = meta_versions(MADISON);
        assert_eq!(v.len(), 3);
        assert_eq!(newest_of(&v, "6.1"), Some("6.1.192-3"));
        assert_eq!(newest_of(&v, "6.12"), Some("6.12.95-1~bpo12+1"));
        assert_eq!(newest_of(&v, "6.6"), None);
    }
}
