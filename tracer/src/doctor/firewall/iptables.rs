//! `iptables-save` dumps (both backends) → the rule model.
use std::net::Ipv4Addr;

use super::{Action, Chain, Cond, HookPoint, Rule, Source, Table, flag_bit, flags};
use crate::rules::{Backend, IptSave};

/// Priority of each iptables table at its hooks (nat: -100 before routing, 100 after).
fn ipt_priority(table: &str, hook: HookPoint) -> i32 {
    match (table, hook) {
        ("raw", _) => -300,
        ("mangle", _) => -150,
        ("nat", HookPoint::Prerouting | HookPoint::Output) => -100,
        ("nat", _) => 100,
        ("security", _) => 50,
        _ => 0,
    }
}

fn ipt_hook(chain: &str) -> Option<HookPoint> {
    Some(match chain {
        "PREROUTING" => HookPoint::Prerouting,
        "INPUT" => HookPoint::Input,
        "FORWARD" => HookPoint::Forward,
        "OUTPUT" => HookPoint::Output,
        "POSTROUTING" => HookPoint::Postrouting,
        _ => return None,
    })
}

/// The tables of one `iptables-save` dump.
pub fn from_iptables(save: &IptSave, backend: Backend) -> Vec<Table> {
    save.tables
        .iter()
        .map(|t| Table {
            source: Source::Iptables(backend),
            family: "ip".into(),
            name: t.name.clone(),
            chains: t
                .chains
                .iter()
                .map(|c| {
                    let hook = c.policy.as_ref().and(ipt_hook(&c.name));
                    Chain {
                        name: c.name.clone(),
                        hook,
                        priority: hook.map_or(0, |h| ipt_priority(&t.name, h)),
                        is_nat: t.name == "nat",
                        policy_drop: c.policy.as_deref() == Some("DROP"),
                        device: None,
                        rules: t
                            .rules
                            .iter()
                            .filter(|r| r.chain == c.name)
                            .map(|r| parse_ipt_rule(&r.text))
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Splits an iptables-save line into words, keeping "quoted strings" whole.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => cur.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One `-A CHAIN ...` line → rule. Options of unknown modules become one Unknown condition.
pub fn parse_ipt_rule(text: &str) -> Rule {
    let words = tokens(text);
    let mut conds = Vec::new();
    let mut action = Action::Continue;
    let mut negate = false;
    let mut i = 0;
    let push = |conds: &mut Vec<Cond>, c: Cond, negate: &mut bool| {
        conds.push(if std::mem::take(negate) {
            Cond::Not(Box::new(c))
        } else {
            c
        });
    };
    while i < words.len() {
        let w = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str).unwrap_or("");
        let mut used = 2;
        match w {
            "-A" | "-I" => {}
            "!" => {
                negate = true;
                used = 1;
            }
            "-i" | "--in-interface" => push(&mut conds, Cond::InDev(vec![arg.to_string()]), &mut negate),
            "-o" | "--out-interface" => push(&mut conds, Cond::OutDev(vec![arg.to_string()]), &mut negate),
            "-s" | "--source" => push(&mut conds, Cond::Src(nets(arg)), &mut negate),
            "-d" | "--destination" => push(&mut conds, Cond::Dst(nets(arg)), &mut negate),
            "-p" | "--protocol" => {
                let tcp = matches!(arg.to_ascii_lowercase().as_str(), "tcp" | "6" | "all" | "0");
                push(&mut conds, Cond::Tcp(tcp), &mut negate)
            }
            "-f" | "--fragment" => {
                push(&mut conds, Cond::Tcp(false), &mut negate);
                used = 1;
            }
            "-4" | "-6" => used = 1,
            "-m" | "--match" => {
                if !KNOWN_MODULES.contains(&arg) {
                    conds.push(Cond::Unknown(format!("-m {arg}")));
                }
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                action = ipt_target(arg, w.starts_with("-g") || w == "--goto", &words[i + 2..]);
                break;
            }
            _ => match ipt_match_option(w, arg, &words[i + 1..]) {
                Some((c, n)) => {
                    push(&mut conds, c, &mut negate);
                    used = n;
                }
                // An option of an unknown module (already an Unknown condition): skip its
                // value, if it has one.
                None => {
                    used = if arg.starts_with('-') || arg == "!" || arg.is_empty() {
                        1
                    } else {
                        2
                    };
                    negate = false;
                }
            },
        }
        i += used;
    }
    Rule {
        conds,
        action,
        text: text.to_string(),
        handle: None,
    }
}

const KNOWN_MODULES: &[&str] = &["tcp", "udp", "multiport", "conntrack", "state", "comment"];

/// Options of the modules the model knows: (condition, words used including the option).
fn ipt_match_option(opt: &str, arg: &str, rest: &[String]) -> Option<(Cond, usize)> {
    Some(match opt {
        "--dport" | "--destination-port" => (Cond::DPort(port_ranges(arg)), 2),
        "--sport" | "--source-port" => (Cond::SPort(port_ranges(arg)), 2),
        "--dports" | "--destination-ports" => (Cond::DPort(port_ranges(arg)), 2),
        "--sports" | "--source-ports" => (Cond::SPort(port_ranges(arg)), 2),
        // Source or destination: not modelled.
        "--ports" => (Cond::Unknown(format!("--ports {arg}")), 2),
        "--syn" => (
            Cond::Flags {
                mask: flags::SYN | flags::RST | flags::ACK | flags::FIN,
                cmp: flags::SYN,
            },
            1,
        ),
        "--tcp-flags" => {
            let cmp = rest.get(1).map(String::as_str).unwrap_or("");
            (
                Cond::Flags {
                    mask: flag_list(arg),
                    cmp: flag_list(cmp),
                },
                3,
            )
        }
        "--ctstate" | "--state" => (
            Cond::CtState(arg.split(',').map(|s| s.to_ascii_uppercase()).collect()),
            2,
        ),
        "--comment" => (Cond::True, 2),
        _ => return None,
    })
}

fn ipt_target(name: &str, goto: bool, opts: &[String]) -> Action {
    let opt = |flag: &str| opts.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str());
    let addr = |flag: &str| opt(flag).and_then(first_ipv4);
    match name {
        "ACCEPT" => Action::Accept,
        "DROP" => Action::Drop,
        "REJECT" => Action::Reject,
        "RETURN" => Action::Return,
        "DNAT" => Action::Dnat(addr("--to-destination")),
        "SNAT" => Action::Snat(addr("--to-source")),
        "MASQUERADE" => Action::Masquerade,
        "REDIRECT" => Action::Redirect,
        "QUEUE" | "NFQUEUE" | "TPROXY" | "SYNPROXY" => Action::Divert(name.to_string()),
        // Built-in non-terminal targets are upper case; user chains may be anything, so a
        // name the dump declares as a chain is a jump (decided when the chain is looked up).
        other if goto => Action::Goto(other.to_string()),
        other => Action::Jump(other.to_string()),
    }
}

fn first_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.split([':', '-']).next()?.parse().ok()
}

/// `10.0.0.0/8`, `1.2.3.4`, `10.0.0.0/255.0.0.0`, comma lists.
fn nets(s: &str) -> Vec<(Ipv4Addr, u8)> {
    s.split(',').filter_map(net).collect()
}

fn net(s: &str) -> Option<(Ipv4Addr, u8)> {
    match s.split_once('/') {
        None => Some((s.parse().ok()?, 32)),
        Some((a, m)) => {
            let addr = a.parse().ok()?;
            let prefix = match m.parse::<u8>() {
                Ok(p) => p.min(32),
                Err(_) => u32::from(m.parse::<Ipv4Addr>().ok()?).count_ones() as u8,
            };
            Some((addr, prefix))
        }
    }
}

/// `49983`, `1000:2000`, `22,80:90` → ranges.
fn port_ranges(s: &str) -> Vec<(u16, u16)> {
    s.split(',')
        .filter_map(|p| match p.split_once(':') {
            Some((a, b)) => Some((
                if a.is_empty() { 0 } else { a.parse().ok()? },
                if b.is_empty() { u16::MAX } else { b.parse().ok()? },
            )),
            None => {
                let v = p.parse().ok()?;
                Some((v, v))
            }
        })
        .collect()
}

/// `SYN,ACK` / `ALL` / `NONE` → bits.
fn flag_list(s: &str) -> u8 {
    s.split(',')
        .map(|f| flag_bit(&f.to_ascii_lowercase()))
        .fold(0, |a, b| a | b)
}
