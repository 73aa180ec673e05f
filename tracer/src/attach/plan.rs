//! The attach plan of one sandbox's path, used alike by `trace` and by the watcher's
//! zoom-ins: tcx on the path's devices in each namespace, the netfilter slots each namespace
//! gets (the hooks envd's packets cross there), and the addresses the kernel filter follows.
//! A device that refuses leaves a blind spot the verdicts name; none attached at all is an
//! error.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use tracer_common::hook;
use tracer_model::path::ExpectedPath;

use super::bpf::{ALL_PLAN, HOST_PLAN, NfPlan, Programs, SANDBOX_PLAN};
use crate::system::{netns::Netns, netstate};

/// One namespace of the path: its devices of the path and its netfilter plan.
pub struct Side<'a> {
    pub ns: &'a Netns,
    pub devices: Vec<&'a str>,
    pub nf: NfPlan,
    pub is_host: bool,
}

/// What to attach for one path.
pub struct PathPlan<'a> {
    pub sides: Vec<Side<'a>>,
    /// The path's own addresses (not the guest's: every sandbox's guest has the same one).
    pub addrs: Vec<Ipv4Addr>,
}

/// What attaching the devices did.
#[derive(Debug, Default)]
pub struct Devices {
    /// (namespace inode, ifindex) of each device attached.
    pub attached: Vec<(u32, u32)>,
    /// Devices that refused, and why ("tap0 in ns-1 (tcx: ...)").
    pub blind_spots: Vec<String>,
    /// Per namespace: ifindex → name, to name the devices of events.
    pub ifnames: Vec<(u32, HashMap<u32, String>)>,
}

impl<'a> PathPlan<'a> {
    /// The plan for `path`: the verified host side (None: not known, nothing attached there)
    /// and the sandbox's namespace; one namespace for both (a setup without a host side of
    /// its own) gets every hook once.
    pub fn of(path: &'a ExpectedPath, host_ns: Option<&'a Netns>, sandbox_ns: &'a Netns) -> Self {
        let sandbox_devs: Vec<&str> = [
            path.ns_veth.as_str(),
            path.tap.as_str(),
            path.bridge.as_deref().unwrap_or(""),
        ]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
        let host_devs: Vec<&str> = [path.host_veth.as_str()]
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect();
        let sides = match host_ns {
            Some(h) if h.inode == sandbox_ns.inode => vec![Side {
                ns: sandbox_ns,
                devices: [host_devs, sandbox_devs].concat(),
                nf: ALL_PLAN,
                is_host: true,
            }],
            Some(h) => vec![
                Side {
                    ns: h,
                    devices: host_devs,
                    nf: HOST_PLAN,
                    is_host: true,
                },
                Side {
                    ns: sandbox_ns,
                    devices: sandbox_devs,
                    nf: SANDBOX_PLAN,
                    is_host: false,
                },
            ],
            None => vec![Side {
                ns: sandbox_ns,
                devices: sandbox_devs,
                nf: SANDBOX_PLAN,
                is_host: false,
            }],
        };
        let addrs = [Some(path.host_ip), path.host_veth_ip, path.ns_veth_ip]
            .into_iter()
            .flatten()
            .collect();
        Self { sides, addrs }
    }

    /// Namespace inodes of the plan.
    pub fn namespaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.sides.iter().map(|s| s.ns.inode)
    }

    /// Attaches tcx to each device of the plan that exists.
    pub fn attach_devices(&self, programs: &mut Programs) -> Result<Devices> {
        self.devices(Some(programs), "")
    }

    /// The plan's devices, named, with no tcx attached: each is a blind spot, `why`.
    pub fn devices_unattached(&self, why: &str) -> Result<Devices> {
        self.devices(None, why)
    }

    fn devices(&self, mut programs: Option<&mut Programs>, why: &str) -> Result<Devices> {
        let mut out = Devices::default();
        let mut first_error = None;
        for side in &self.sides {
            let links = netstate::Rtnl::open(side.ns)
                .and_then(|mut r| r.links())
                .with_context(|| format!("read the links of {}", side.ns.label()))?;
            for dev in &side.devices {
                // A missing device (tap-missing, ...) is a finding of the trace, not an error.
                let Some(link) = links.iter().find(|l| l.name == *dev) else {
                    continue;
                };
                let Some(programs) = programs.as_deref_mut() else {
                    out.blind_spots
                        .push(format!("{dev} in {} (tcx: {why})", side.ns.label()));
                    continue;
                };
                match attach_tcx(programs, side.ns, dev, link.ifindex) {
                    Ok(()) => out.attached.push((side.ns.inode, link.ifindex)),
                    Err(e) => {
                        out.blind_spots.push(format!(
                            "{dev} in {} (tcx: {})",
                            side.ns.label(),
                            e.root_cause()
                        ));
                        first_error.get_or_insert(e);
                    }
                }
            }
            out.ifnames.push((
                side.ns.inode,
                links.iter().map(|l| (l.ifindex, l.name.clone())).collect(),
            ));
        }
        match first_error {
            Some(e) if out.attached.is_empty() => Err(e.context(format!(
                "no device of the path could be attached: {}",
                out.blind_spots.join("; ")
            ))),
            _ => Ok(out),
        }
    }

    /// Attaches the netfilter slots of each namespace of the plan, after the priorities
    /// present there (`present`: from the namespace's rulesets); `skip` names namespaces
    /// attached already (the watcher's zoom-ins share the host side's). Returns the
    /// namespaces attached now.
    pub fn attach_netfilter(
        &self,
        programs: &mut Programs,
        present: impl Fn(&Side<'_>) -> [Vec<i32>; hook::COUNT],
        skip: impl Fn(&Side<'_>) -> bool,
    ) -> Result<Vec<u32>> {
        let mut done = Vec::new();
        for side in self.sides.iter().filter(|s| !skip(s)) {
            programs.attach_netfilter(side.ns, &present(side), side.nf)?;
            done.push(side.ns.inode);
        }
        Ok(done)
    }
}

fn attach_tcx(programs: &mut Programs, ns: &Netns, dev: &str, ifindex: u32) -> Result<()> {
    // Test hook: an attach that fails on one device (TRACER_TEST_NO_TCX=tap0).
    #[cfg(feature = "test-hooks")]
    if std::env::var("TRACER_TEST_NO_TCX").is_ok_and(|d| d == dev) {
        anyhow::bail!("refused by TRACER_TEST_NO_TCX");
    }
    let _ = dev;
    programs.attach_tcx(ns, ifindex)
}

#[cfg(test)]
mod tests {
    use tracer_model::fixtures::path;

    use super::*;

    fn ns(name: &str, inode: u32) -> Netns {
        Netns::new(inode, Some(name.into()), format!("/var/run/netns/{name}").into())
    }

    #[test]
    fn each_side_gets_its_devices_and_hooks() {
        let p = path();
        let (h, s) = (ns("e2b-host", 1), ns("ns-1", 2));
        let plan = PathPlan::of(&p, Some(&h), &s);
        assert_eq!(plan.sides.len(), 2);
        assert_eq!(
            (plan.sides[0].devices.clone(), plan.sides[0].nf),
            (vec!["veth-1"], HOST_PLAN)
        );
        assert_eq!(
            (plan.sides[1].devices.clone(), plan.sides[1].nf),
            (vec!["eth0", "tap0"], SANDBOX_PLAN)
        );
        assert!(!plan.addrs.contains(&p.guest_ip), "every guest has that address");
        // No verified host side: the sandbox's namespace only.
        let plan = PathPlan::of(&p, None, &s);
        assert_eq!(plan.namespaces().collect::<Vec<_>>(), vec![2]);
        // One namespace for both: every hook, every device, once.
        let plan = PathPlan::of(&p, Some(&s), &s);
        assert_eq!((plan.sides.len(), plan.sides[0].nf), (1, ALL_PLAN));
        assert_eq!(plan.sides[0].devices, vec!["veth-1", "eth0", "tap0"]);
    }
}
