//! Kernel text addresses to `symbol+0xoff` via `/proc/kallsyms`.
use std::{fs, path::Path};

use anyhow::{Context as _, Result};

pub struct Kallsyms {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn load() -> Result<Self> {
        Self::from_file(Path::new("/proc/kallsyms"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Parses kallsyms text; keeps text symbols (t/T) with a non-zero address.
    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
            })
            .collect();
        syms.sort_unstable_by_key(|(a, _)| *a);
        Self { syms }
    }

    /// True when addresses are hidden (kptr_restrict without privileges).
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// `(symbol, offset)` containing `addr`.
    pub fn resolve(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        let (start, name) = self.syms.get(i.checked_sub(1)?)?;
        Some((name, addr - start))
    }

    /// `symbol+0xoff`, or the raw address.
    pub fn describe(&self, addr: u64) -> String {
        match self.resolve(addr) {
            Some((name, 0)) => name.to_string(),
            Some((name, off)) => format!("{name}+{off:#x}"),
            None => format!("{addr:#x}"),
        }
    }

    /// Just the function name containing `addr`.
    pub fn function(&self, addr: u64) -> Option<String> {
        self.resolve(addr).map(|(n, _)| n.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81a00000 t nf_hook_slow
ffffffff81a00200 T ip_forward
ffffffff81a00400 d some_data
";

    #[test]
    fn resolves_to_the_containing_symbol() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.describe(0xffffffff81a0009c), "nf_hook_slow+0x9c");
        assert_eq!(k.describe(0xffffffff81a00200), "ip_forward");
        assert_eq!(k.function(0xffffffff81a00300).as_deref(), Some("ip_forward"));
    }

    #[test]
    fn below_first_symbol_is_raw() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.describe(0x10), "0x10");
    }

    #[test]
    fn hidden_addresses_give_an_empty_table() {
        let k = Kallsyms::parse("0000000000000000 T _stext\n");
        assert!(k.is_empty());
    }
}
