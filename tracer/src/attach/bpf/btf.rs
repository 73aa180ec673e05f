//! Facts about the running kernel read from its BTF (`/sys/kernel/btf/vmlinux`): struct member
//! offsets for the kernel programs, and enum names (drop reasons, RST reasons), which are not
//! ABI-stable and must never come from a table compiled into the tracer.
use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use tracer_common::{OFF_NONE, Offsets};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where the kernel's BTF is read: /sys/kernel/btf/vmlinux, or $TRACER_BTF (a kernel built
/// without /sys BTF, but with a matching vmlinux BTF file at hand).
pub fn vmlinux_path() -> std::path::PathBuf {
    std::env::var_os("TRACER_BTF")
        .map(Into::into)
        .unwrap_or_else(|| VMLINUX_BTF.into())
}

/// The running kernel's BTF.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        Self::from_file(&vmlinux_path())
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path).with_context(|| format!("parse BTF {}", path.display()))?;
        Ok(Self { btf })
    }

    /// Byte offset of a member path like `__sk_common.skc_daddr` in `struct name`. Anonymous
    /// unions and structs on the way are searched transparently.
    pub fn offset(&self, name: &str, path: &str) -> Result<u32> {
        let mut ty = self.named_struct(name)?;
        let mut total = 0u32;
        for field in path.split('.') {
            let (bits, member_ty) = self
                .find_member(&ty, field)?
                .ok_or_else(|| anyhow!("struct {name} has no member {path} in this kernel"))?;
            total += bits / 8;
            ty = member_ty;
        }
        Ok(total)
    }

    fn named_struct(&self, name: &str) -> Result<Type> {
        self.btf
            .resolve_types_by_name(name)
            .with_context(|| format!("BTF lookup of {name}"))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| anyhow!("no struct {name} in the kernel's BTF"))
    }

    /// Finds `field` in a struct/union, descending into anonymous members. Returns the bit
    /// offset from the start of `ty` and the member's (typedef-resolved) type.
    fn find_member(&self, ty: &Type, field: &str) -> Result<Option<(u32, Type)>> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => bail!("{field}: not a struct"),
        };
        for m in members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self.resolve(self.btf.resolve_chained_type(m)?)?;
            if name == field {
                return Ok(Some((m.bit_offset(), mty)));
            }
            if name.is_empty()
                && let Some((bits, t)) = self.find_member(&mty, field)?
            {
                return Ok(Some((m.bit_offset() + bits, t)));
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut ty: Type) -> Result<Type> {
        loop {
            match &ty {
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) => {
                    let bt = ty.as_btf_type().ok_or_else(|| anyhow!("bad BTF type"))?;
                    ty = self.btf.resolve_chained_type(bt)?;
                }
                _ => return Ok(ty),
            }
        }
    }

    /// How many arguments the tracepoint `name` passes to a tp_btf program (its
    /// `btf_trace_<name>` typedef, less the context); None when the kernel has no such
    /// tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let typedef = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))?;
        let mut ty = typedef;
        for _ in 0..4 {
            let next = self.btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
            if let Type::FuncProto(p) = &next {
                return Some(p.parameters.len().saturating_sub(1));
            }
            ty = next;
        }
        None
    }

    /// Whether `enum name` has a member `member`.
    pub fn enum_has(&self, name: &str, member: &str) -> bool {
        self.enum_names(name, "")
            .map(|m| m.values().any(|n| n == member))
            .unwrap_or(false)
    }

    /// Values and names of `enum name`, with `strip` removed from the front of each name.
    pub fn enum_names(&self, name: &str, strip: &str) -> Result<HashMap<u32, String>> {
        let types = self.btf.resolve_types_by_name(name)?;
        for ty in types {
            if let Type::Enum(e) = ty {
                let mut out = HashMap::new();
                for m in &e.members {
                    let n = self.btf.resolve_name(m)?;
                    out.insert(m.val(), n.strip_prefix(strip).unwrap_or(&n).to_string());
                }
                return Ok(out);
            }
        }
        bail!("no enum {name} in the kernel's BTF")
    }

    /// All the offsets the kernel programs need.
    pub fn offsets(&self) -> Result<Offsets> {
        let o = |s: &str, p: &str| self.offset(s, p);
        Ok(Offsets {
            skb_head: o("sk_buff", "head")?,
            skb_network_header: o("sk_buff", "network_header")?,
            skb_transport_header: o("sk_buff", "transport_header")?,
            skb_dev: o("sk_buff", "dev")?,
            skb_sk: o("sk_buff", "sk")?,
            dev_ifindex: o("net_device", "ifindex")?,
            dev_name: o("net_device", "name")?,
            dev_net: o("net_device", "nd_net.net")?,
            net_inum: o("net", "ns.inum")?,
            sk_daddr: o("sock", "__sk_common.skc_daddr")?,
            sk_rcv_saddr: o("sock", "__sk_common.skc_rcv_saddr")?,
            sk_dport: o("sock", "__sk_common.skc_dport")?,
            sk_num: o("sock", "__sk_common.skc_num")?,
            sk_net: o("sock", "__sk_common.skc_net.net")?,
            flowi4_iif: o("flowi4", "__fl_common.flowic_iif")?,
            flowi4_daddr: o("flowi4", "daddr")?,
            flowi4_saddr: o("flowi4", "saddr")?,
            nhc_dev: o("fib_nh_common", "nhc_dev")?,
            neigh_dev: o("neighbour", "dev")?,
            neigh_primary_key: o("neighbour", "primary_key")?,
            neigh_nud_state: o("neighbour", "nud_state")?,
            task_nsproxy: o("task_struct", "nsproxy")?,
            nsproxy_net_ns: o("nsproxy", "net_ns")?,
            nf_state_hook: o("nf_hook_state", "hook")?,
            nf_state_in: o("nf_hook_state", "in")?,
            nf_state_out: o("nf_hook_state", "out")?,
            nf_state_net: o("nf_hook_state", "net")?,
            skb_len: o("sk_buff", "len")?,
            skb_mark: o("sk_buff", "mark")?,
            skb_mac_header: o("sk_buff", "mac_header")?,
            skb_tail: o("sk_buff", "tail")?,
            // Deep mode's conntrack facts: absent pieces are not read (OFF_NONE).
            skb_nfct: self.offset("sk_buff", "_nfct").unwrap_or(OFF_NONE),
            ct_status: self.ct_offset("status"),
            ct_zone: self.ct_offset("zone.id"),
            ct_mark: self.ct_offset("mark"),
        })
    }

    /// An `nf_conn` member: in vmlinux, or in the nf_conntrack module's BTF when conntrack
    /// is a module; OFF_NONE when neither has it (zones and marks are config options).
    fn ct_offset(&self, member: &str) -> u32 {
        if let Ok(o) = self.offset("nf_conn", member) {
            return o;
        }
        let module = Path::new("/sys/kernel/btf/nf_conntrack");
        Btf::from_split_file(module, &self.btf)
            .ok()
            .map(|btf| Self { btf })
            .and_then(|m| m.offset("nf_conn", member).ok())
            .unwrap_or(OFF_NONE)
    }
}

/// Names of kernel enums the reports need.
#[derive(Debug, Default, Clone)]
pub struct ReasonNames {
    pub drop: HashMap<u32, String>,
    pub rst: HashMap<u32, String>,
}

impl ReasonNames {
    pub fn load(btf: &KernelBtf) -> Result<Self> {
        Ok(Self {
            drop: btf.enum_names("skb_drop_reason", "SKB_DROP_REASON_")?,
            // Older kernels have no RST reasons; that is not an error.
            rst: btf
                .enum_names("sk_rst_reason", "SK_RST_REASON_")
                .unwrap_or_default(),
        })
    }

    pub fn drop_name(&self, v: u32) -> String {
        self.drop
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason#{v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<KernelBtf> {
        Path::new(VMLINUX_BTF)
            .exists()
            .then(|| KernelBtf::load().unwrap())
    }

    #[test]
    fn offsets_of_this_kernel_are_plausible() {
        let Some(btf) = kernel() else { return };
        let off = btf.offsets().unwrap();
        // skc_daddr is the first member of sock_common: offset 0 in every kernel.
        assert_eq!(off.sk_daddr, 0);
        assert_eq!(off.sk_rcv_saddr, 4);
        assert!(off.skb_head > 0 && off.dev_name < off.dev_ifindex + 4096);
    }

    #[test]
    fn drop_reason_names_come_from_btf() {
        let Some(btf) = kernel() else { return };
        let names = ReasonNames::load(&btf).unwrap();
        assert!(names.drop.values().any(|n| n == "NETFILTER_DROP"));
        assert!(names.drop.values().any(|n| n == "NOT_SPECIFIED"));
    }

    #[test]
    fn unknown_member_is_a_clear_error() {
        let Some(btf) = kernel() else { return };
        let err = btf.offset("sk_buff", "no_such_field").unwrap_err();
        assert!(err.to_string().contains("no member no_such_field"), "{err}");
    }
}
