//! `iptables-save -c` dumps (legacy and nft backends): the text, parsed without panicking on
//! any input, and turned into the rule model.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Result, bail};
use tracer_model::{
    hook::{Hook, iptables_priority},
    rule::RuleText,
};

use super::model::{Action, Backend, Chain, Cond, Effect, HookPoint, Rule, Source, Table, flag_bit, flags};

/// One `iptables-save -c` dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptSave {
    pub tables: Vec<IptTable>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptTable {
    pub name: String,
    pub chains: Vec<IptChain>,
    pub rules: Vec<IptRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptChain {
    pub name: String,
    /// ACCEPT/DROP for built-in chains, None (`-`) for user chains.
    pub policy: Option<String>,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptRule {
    pub chain: String,
    pub packets: u64,
    /// The rule as iptables-save prints it, without counters: `-A FORWARD -i eth0 ... -j DROP`.
    pub text: String,
    /// The `-j` target (DROP, ACCEPT, DNAT, a user chain, ...).
    pub target: Option<String>,
}

impl IptSave {
    pub fn parse(text: &str) -> Result<Self> {
        let mut tables: Vec<IptTable> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                tables.push(IptTable {
                    name: name.to_string(),
                    ..Default::default()
                });
                continue;
            }
            let Some(table) = tables.last_mut() else {
                bail!("line {}: rule outside a table: {line}", n + 1);
            };
            if let Some(rest) = line.strip_prefix(':') {
                table.chains.push(parse_chain(rest));
            } else {
                let (packets, rule) = split_counters(line);
                let mut words = rule.split_whitespace();
                if words.next() != Some("-A") {
                    continue;
                }
                let chain = words.next().unwrap_or_default().to_string();
                let target = rule
                    .split_whitespace()
                    .skip_while(|w| *w != "-j" && *w != "-g")
                    .nth(1)
                    .map(str::to_string);
                table.rules.push(IptRule {
                    chain,
                    packets,
                    text: rule.to_string(),
                    target,
                });
            }
        }
        Ok(Self { tables })
    }

    pub fn table(&self, name: &str) -> Option<&IptTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// True when the dump holds any rule or non-ACCEPT policy (i.e. this backend is in use).
    pub fn in_use(&self) -> bool {
        self.tables
            .iter()
            .any(|t| !t.rules.is_empty() || t.chains.iter().any(|c| c.policy.as_deref() == Some("DROP")))
    }
}

/// `FORWARD DROP [3:180]` → chain.
fn parse_chain(rest: &str) -> IptChain {
    let mut words = rest.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let policy = words.next().filter(|p| *p != "-").map(str::to_string);
    let packets = words.next().map(|c| split_counters(c).0).unwrap_or(0);
    IptChain {
        name,
        policy,
        packets,
    }
}

/// `[12:720] -A ...` → (12, "-A ..."); no counters → (0, line).
fn split_counters(line: &str) -> (u64, &str) {
    if let Some(rest) = line.strip_prefix('[')
        && let Some((counts, rule)) = rest.split_once(']')
    {
        let packets = counts.split(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        return (packets, rule.trim());
    }
    (0, line)
}

/// A rule or chain policy whose packet counter grew between two dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterHit {
    pub table: String,
    pub chain: String,
    /// The rule, or the chain's policy.
    pub rule: RuleText,
    pub target: String,
    pub delta: u64,
}

/// Rules (and chain policies) whose counters grew from `before` to `after`, in `table`.
pub fn ipt_hits(before: &IptSave, after: &IptSave, table: &str) -> Vec<CounterHit> {
    let Some(a) = after.table(table) else {
        return Vec::new();
    };
    // A table created after the baseline was read counted everything since.
    let empty = Default::default();
    let b = before.table(table).unwrap_or(&empty);
    let mut old: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for r in &b.rules {
        old.entry((&r.chain, &r.text)).or_default().push(r.packets);
    }
    let mut hits = Vec::new();
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in &a.rules {
        let k = seen.entry((&r.chain, &r.text)).or_default();
        let prev = old
            .get(&(r.chain.as_str(), r.text.as_str()))
            .and_then(|v| v.get(*k))
            .copied()
            .unwrap_or(0);
        *k += 1;
        if r.packets > prev {
            hits.push(CounterHit {
                table: table.into(),
                chain: r.chain.clone(),
                rule: RuleText::Iptables(r.text.clone()),
                target: r.target.clone().unwrap_or_default(),
                delta: r.packets - prev,
            });
        }
    }
    for c in &a.chains {
        let prev = b
            .chains
            .iter()
            .find(|x| x.name == c.name)
            .map(|x| x.packets)
            .unwrap_or(0);
        if let Some(policy) = &c.policy
            && c.packets > prev
        {
            hits.push(CounterHit {
                table: table.into(),
                chain: c.name.clone(),
                rule: RuleText::Policy {
                    chain: c.name.clone(),
                    policy: policy.clone(),
                },
                target: policy.clone(),
                delta: c.packets - prev,
            });
        }
    }
    hits
}

impl IptSave {
    /// The dump's tables in the rule model.
    pub fn tables(&self, backend: Backend) -> Vec<Table> {
        self.tables
            .iter()
            .map(|t| Table {
                source: Source::Iptables(backend),
                family: "ip".into(),
                name: t.name.clone(),
                chains: t
                    .chains
                    .iter()
                    .map(|c| {
                        let hook = c.policy.as_ref().and(Hook::from_chain(&c.name));
                        Chain {
                            name: c.name.clone(),
                            hook: hook.map(HookPoint::from),
                            priority: hook.and_then(|h| iptables_priority(&t.name, h)).unwrap_or(0),
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
                let opts = words.get(i + 2..).unwrap_or_default();
                action = ipt_target(arg, w.starts_with("-g") || w == "--goto", opts);
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

const KNOWN_MODULES: &[&str] = &["tcp", "udp", "multiport", "conntrack", "state", "comment", "mark"];

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
        "--mark" => {
            let (value, mask) = value_mask(arg);
            (Cond::Mark { value, mask }, 2)
        }
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
        "NOTRACK" => Action::Set(Effect::Notrack),
        "CT" if opts.iter().any(|o| o == "--notrack") => Action::Set(Effect::Notrack),
        "CT" => match opt("--zone") {
            Some(z) => Action::Set(Effect::CtZone(z.parse().ok())),
            None => Action::Set(Effect::Other("CT".into())),
        },
        "MARK" => Action::Set(Effect::Mark(
            opt("--set-mark").or(opt("--set-xmark")).map(|v| value_mask(v).0),
        )),
        "TTL" => Action::Set(Effect::Ttl(opt("--ttl-set").and_then(|v| v.parse().ok()))),
        "CONNMARK" | "TOS" | "DSCP" | "TCPMSS" | "CLASSIFY" | "ECN" | "HL" => {
            Action::Set(Effect::Other(name.to_string()))
        }
        "LOG" | "NFLOG" | "TRACE" | "AUDIT" => Action::Continue,
        // Built-in non-terminal targets are upper case; user chains may be anything, so a
        // name the dump declares as a chain is a jump (decided when the chain is looked up).
        other if goto => Action::Goto(other.to_string()),
        other => Action::Jump(other.to_string()),
    }
}

/// `0x77`, `119`, `0x1/0xff` → (value, mask).
fn value_mask(s: &str) -> (u32, u32) {
    let num = |t: &str| {
        t.strip_prefix("0x")
            .map(|h| u32::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| t.parse().ok())
            .unwrap_or(0)
    };
    match s.split_once('/') {
        Some((v, m)) => (num(v), num(m)),
        None => (num(s), u32::MAX),
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

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [10:600]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [10:600]
:LAB-GUARD - [0:0]
[0:0] -A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP
[0:0] -A FORWARD -i eth0 -j LAB-GUARD
[0:0] -A LAB-GUARD -p tcp -m tcp --dport 49983 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [1:60]
[1:60] -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21
COMMIT
";

    #[test]
    fn parses_tables_chains_rules_and_targets() {
        let s = IptSave::parse(BEFORE).unwrap();
        let f = s.table("filter").unwrap();
        assert_eq!(f.chains.len(), 4);
        assert_eq!(f.chains[3].policy, None);
        assert_eq!(
            f.rules[0].text,
            "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP"
        );
        assert_eq!(f.rules[0].target.as_deref(), Some("DROP"));
        assert_eq!(f.rules[1].target.as_deref(), Some("LAB-GUARD"));
        let nat = s.table("nat").unwrap();
        assert_eq!(nat.rules[0].packets, 1);
        assert!(s.in_use());
    }

    /// Issue 10, defect 10: a rule whose options end early (`-j` last, `--dport` without a
    /// value, a DNAT without its destination) is read without a panic.
    #[test]
    fn a_crafted_rule_ending_in_an_option_never_panics() {
        for text in [
            "-A FORWARD -j",
            "-A FORWARD -p tcp --dport",
            "-A PREROUTING -d 10.11.0.1/32 -j DNAT --to-destination",
            "-A",
            "",
        ] {
            let r = parse_ipt_rule(text);
            assert_eq!(r.text.trim(), text.trim());
        }
        let save = "*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -j\nCOMMIT\n";
        let s = IptSave::parse(save).unwrap();
        assert_eq!(s.table("filter").unwrap().rules[0].target, None);
    }

    #[test]
    fn counter_deltas_name_the_rule() {
        let before = IptSave::parse(BEFORE).unwrap();
        let after = IptSave::parse(&BEFORE.replace(
            "[0:0] -A FORWARD -i eth0 -o tap0",
            "[3:180] -A FORWARD -i eth0 -o tap0",
        ))
        .unwrap();
        let hits = ipt_hits(&before, &after, "filter");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].chain, "FORWARD");
        assert_eq!(hits[0].target, "DROP");
        assert_eq!(hits[0].delta, 3);
    }

    #[test]
    fn policy_drops_and_user_chains_are_hits_too() {
        let before = IptSave::parse(&BEFORE.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")).unwrap();
        let after = IptSave::parse(
            &BEFORE
                .replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [2:120]")
                .replace("[0:0] -A LAB-GUARD", "[1:60] -A LAB-GUARD")
                .replace(
                    "[0:0] -A FORWARD -i eth0 -j LAB-GUARD",
                    "[1:60] -A FORWARD -i eth0 -j LAB-GUARD",
                ),
        )
        .unwrap();
        let hits = ipt_hits(&before, &after, "filter");
        let rules: Vec<String> = hits.iter().map(|h| h.rule.render()).collect();
        let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
        assert!(rules.contains(&"-P FORWARD DROP"), "{rules:?}");
        assert!(
            rules.contains(&"-A LAB-GUARD -p tcp -m tcp --dport 49983 -j DROP"),
            "{rules:?}"
        );
    }
}
