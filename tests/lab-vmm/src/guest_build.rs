//! `lab-vmm build-guest --out DIR`: assembles the QEMU guest (DIR/vmlinuz and
//! DIR/initramfs.cpio.gz) from Debian packages only: the cloud kernel fetched with
//! `apt-get download`, and the busybox of the installed busybox-static package.
//!
//! DIR/stamp records the inputs (kernel package and version, busybox version, a hash of
//! the guest scripts); when it matches, nothing is rebuilt.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::cpio;

const INIT: &str = include_str!("../guest/init.sh");
const HANDLER: &str = include_str!("../guest/handler.sh");
/// The metapackage that always points at the current cloud kernel of the release.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// What the guest needs beyond the built-in drivers: the virtio PCI transport and the NIC.
/// Their dependencies are found from each module's own `depends=` field.
const ROOT_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

pub(crate) const VMLINUZ: &str = "vmlinuz";
pub(crate) const INITRAMFS: &str = "initramfs.cpio.gz";
pub(crate) const STAMP: &str = "stamp";

pub fn build(out: &Path) -> Result<()> {
    let kernel = kernel_package()?;
    let busybox = busybox_binary()?;
    let stamp = format!(
        "kernel={} {}\nbusybox={}\nscripts={:016x}\n",
        kernel.name,
        kernel.version,
        busybox.version,
        fnv1a(&[INIT, HANDLER, &ROOT_MODULES.join(",")])
    );
    if up_to_date(out, &stamp) {
        eprintln!("lab-vmm: guest in {} is up to date", out.display());
        return Ok(());
    }
    eprintln!(
        "lab-vmm: building the guest in {} from {} {}",
        out.display(),
        kernel.name,
        kernel.version
    );
    let work = TempDir::new("lab-vmm-guest")?;
    let root = work.path().join("root");
    extract(&download(&kernel, work.path())?, &root)?;
    let tree = KernelTree::find(&root)?;
    let modules = tree.load_order(ROOT_MODULES)?;
    write_outputs(out, &tree, &modules, &busybox.path, &stamp)
}

pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) version: String,
}

/// The versioned kernel package the metapackage's candidate depends on.
fn kernel_package() -> Result<Package> {
    let text = output(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META]))
        .with_context(|| format!("cannot find {KERNEL_META} in apt's lists (run apt-get update)"))?;
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .with_context(|| format!("{KERNEL_META} has no Depends field"))?;
    parse_kernel_dep(depends).with_context(|| format!("unexpected Depends of {KERNEL_META}: {depends}"))
}

/// `linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), ...` → that name and version.
pub(crate) fn parse_kernel_dep(depends: &str) -> Option<Package> {
    let first = depends
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))?;
    let (name, rest) = first.split_once(' ')?;
    let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
    Some(Package {
        name: name.to_string(),
        version: version.to_string(),
    })
}

pub(crate) struct Busybox {
    pub(crate) version: String,
    pub(crate) path: PathBuf,
}

/// The static busybox, located through its package so a dynamic one is never picked up.
pub(crate) fn busybox_binary() -> Result<Busybox> {
    let missing = "busybox-static is not installed (apt-get install busybox-static)";
    let version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "busybox-static"]))
        .context(missing)?;
    let files = output(Command::new("dpkg-query").args(["-L", "busybox-static"])).context(missing)?;
    let path = files
        .lines()
        .map(PathBuf::from)
        .find(|p| p.ends_with("bin/busybox") && p.is_file())
        .context("busybox-static ships no bin/busybox")?;
    Ok(Busybox {
        version: version.trim().to_string(),
        path,
    })
}

pub(crate) fn up_to_date(out: &Path, stamp: &str) -> bool {
    let have = std::fs::read_to_string(out.join(STAMP)).unwrap_or_default();
    have == stamp && out.join(VMLINUZ).is_file() && out.join(INITRAMFS).is_file()
}

pub(crate) fn download(kernel: &Package, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{}={}", kernel.name, kernel.version);
    // Root downloads into a private temp dir: tell apt not to drop to _apt, which could
    // not write there (it only warns, but the warning looks like a failure).
    run(Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", &spec])
        .current_dir(dir))
    .with_context(|| format!("apt-get download {spec} failed"))?;
    let deb = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {spec} left no .deb"))?;
    Ok(deb)
}

pub(crate) fn extract(deb: &Path, root: &Path) -> Result<()> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))
        .with_context(|| format!("cannot unpack {}", deb.display()))
}

/// The unpacked kernel package: the image and the module tree.
pub(crate) struct KernelTree {
    pub(crate) vmlinuz: PathBuf,
    pub(crate) modules: PathBuf,
    /// The release (`uname -r`) of the kernel.
    pub(crate) release: String,
    builtin: HashSet<String>,
}

impl KernelTree {
    pub(crate) fn find(root: &Path) -> Result<KernelTree> {
        let vmlinuz = std::fs::read_dir(root.join("boot"))
            .context("the kernel package has no /boot")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| file_name(p).starts_with("vmlinuz-"))
            .context("the kernel package has no /boot/vmlinuz-*")?;
        let release = file_name(&vmlinuz).trim_start_matches("vmlinuz-").to_string();
        // Bookworm ships /lib/modules, later releases /usr/lib/modules.
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&release))
            .find(|p| p.is_dir())
            .with_context(|| format!("no module tree for {release}"))?;
        let builtin = std::fs::read_to_string(modules.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(|l| module_name(Path::new(l)))
            .collect();
        Ok(KernelTree {
            vmlinuz,
            modules,
            release,
            builtin,
        })
    }

    /// The modules to insmod for `roots`, dependencies first; built-in ones are skipped.
    pub(crate) fn load_order(&self, roots: &[&str]) -> Result<Vec<(String, PathBuf)>> {
        let mut index = HashMap::new();
        index_modules(&self.modules.join("kernel"), &mut index)?;
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for root in roots {
            self.visit(root, &index, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        index: &HashMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) || self.builtin.contains(name) {
            return Ok(());
        }
        let path = index
            .get(name)
            .with_context(|| format!("module {name} is neither built in nor shipped as .ko"))?;
        let image = read_module(path)?;
        for dep in modinfo_depends(&image).with_context(|| format!("bad module {}", path.display()))? {
            self.visit(&dep, index, seen, order)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
}

/// Maps module names (dashes as underscores, like the kernel) to their .ko files.
fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if file_name(&path).ends_with(".ko") || file_name(&path).ends_with(".ko.xz") {
            index.insert(module_name(&path), path);
        }
    }
    Ok(())
}

fn module_name(path: &Path) -> String {
    let name = file_name(path);
    let name = name.strip_suffix(".xz").unwrap_or(&name);
    name.strip_suffix(".ko").unwrap_or(name).replace('-', "_")
}

/// A module's ELF image; newer Debian kernels ship them xz-compressed (`.ko.xz`), which
/// neither our ELF reader nor busybox's insmod take.
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>> {
    if !file_name(path).ends_with(".xz") {
        return std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    }
    let out = Command::new("xz")
        .arg("-dc")
        .arg(path)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run xz for {}", path.display()))?;
    if !out.status.success() {
        bail!("xz -dc {} exited with {}", path.display(), out.status);
    }
    Ok(out.stdout)
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `depends=` list from a module's `.modinfo` ELF section.
fn modinfo_depends(image: &[u8]) -> Result<Vec<String>> {
    let modinfo = elf_section(image, ".modinfo").context("no .modinfo section")?;
    let depends = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(depends)
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect())
}

/// The contents of the named section of a little-endian ELF64 file.
fn elf_section<'a>(image: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    if image.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let shoff = usize::try_from(le(image, 0x28, 8)?).ok()?;
    let shentsize = usize::try_from(le(image, 0x3a, 2)?).ok()?;
    let shnum = usize::try_from(le(image, 0x3c, 2)?).ok()?;
    let shstrndx = usize::try_from(le(image, 0x3e, 2)?).ok()?;
    let section = |i: usize| -> Option<(usize, &'a [u8])> {
        let h = shoff + i * shentsize;
        let name = usize::try_from(le(image, h, 4)?).ok()?;
        let off = usize::try_from(le(image, h + 0x18, 8)?).ok()?;
        let size = usize::try_from(le(image, h + 0x20, 8)?).ok()?;
        Some((name, image.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name, data) = section(i)?;
        let tail = names.get(name..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        (&tail[..end] == wanted.as_bytes()).then_some(data)
    })
}

fn le(image: &[u8], at: usize, len: usize) -> Option<u64> {
    let bytes = image.get(at..at.checked_add(len)?)?;
    Some(bytes.iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
}

fn write_outputs(
    out: &Path,
    tree: &KernelTree,
    modules: &[(String, PathBuf)],
    busybox: &Path,
    stamp: &str,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Drop the stamp first: an interrupted build must never look up to date.
    let _ = std::fs::remove_file(out.join(STAMP));
    let initramfs = initramfs(modules, busybox, &[("init", INIT), ("handler.sh", HANDLER)])?;
    write_atomic(&out.join(INITRAMFS), &initramfs)?;
    let kernel =
        std::fs::read(&tree.vmlinuz).with_context(|| format!("cannot read {}", tree.vmlinuz.display()))?;
    write_atomic(&out.join(VMLINUZ), &kernel)?;
    write_atomic(&out.join(STAMP), stamp.as_bytes())?;
    let names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!(
        "lab-vmm: guest ready in {} (initramfs {} KiB, modules: {})",
        out.display(),
        initramfs.len() / 1024,
        names.join(" ")
    );
    Ok(())
}

/// The gzip-compressed newc archive: busybox, the scripts (`init` first among them) and the
/// modules with their load order.
pub(crate) fn initramfs(
    modules: &[(String, PathBuf)],
    busybox: &Path,
    scripts: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new(GzEncoder::new(Vec::new(), Compression::default()));
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "etc", "lib",
    ] {
        w.dir(dir, 0o755)?;
    }
    w.dir("lib/modules", 0o755)?;
    w.dir("tmp", 0o1777)?;
    // The kernel opens /dev/console for init before /init can mount devtmpfs.
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    let bb = std::fs::read(busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    w.file("bin/busybox", 0o755, &bb)?;
    w.symlink("bin/sh", "busybox")?;
    for (name, text) in scripts {
        w.file(name, 0o755, text.as_bytes())?;
    }
    let mut order = String::new();
    for (name, path) in modules {
        let image = read_module(path)?;
        w.file(&format!("lib/modules/{name}.ko"), 0o644, &image)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file("lib/modules/load-order", 0o644, order.as_bytes())?;
    let gz = w.finish().context("writing the initramfs")?;
    gz.finish().context("compressing the initramfs")
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all().ok();
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))
}

/// Runs a command with its output on our stderr (stdout is reserved for READY).
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdout(stderr_stdio()?)
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!("{:?} exited with {}", cmd.get_program(), out.status);
    }
    String::from_utf8(out.stdout).context("command output is not UTF-8")
}

fn stderr_stdio() -> Result<Stdio> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot dup stderr")?;
    Ok(Stdio::from(fd))
}

/// FNV-1a over the parts: stable across Rust releases, unlike `DefaultHasher`.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// A scratch directory removed on drop, whatever happened.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<TempDir> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// In `parent`: what is built there can be renamed into place.
    pub(crate) fn new_in(parent: &Path, prefix: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("lab-vmm: cannot remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_dependency() {
        let p = parse_kernel_dep(" linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)").unwrap();
        assert_eq!(p.name, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(p.version, "6.1.192-2");
        assert!(parse_kernel_dep("foo").is_none());
    }

    #[test]
    fn reads_depends_from_our_own_elf() {
        // Our own test binary is an ELF64 file with sections; it has no .modinfo.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_section(&exe, ".text").is_some());
        assert!(elf_section(&exe, ".modinfo").is_none());
    }
}
