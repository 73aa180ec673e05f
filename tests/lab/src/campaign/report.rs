//! The campaign's report: one line per fault as it is graded, and tables per actor family and
//! leg (right / vague / wrong / false / unknown), as text, Markdown, and one JSON summary.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{Case, Results, grade::Grade};

/// `seed:k family leg grade — what was injected → outcome (why)`.
pub fn line(c: &Case) -> String {
    format!(
        "{:>12} {:<11} {:<7} {:<12} {} → {} ({}; {} ms)",
        c.key,
        c.fault.family.name(),
        c.fault
            .leg
            .map_or("-".to_string(), |l| format!("{l:?}").to_lowercase()),
        c.grade.name(),
        c.fault.what,
        c.outcome,
        c.why,
        c.ms
    )
}

/// Counts per grade.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub faults: u32,
    pub right: u32,
    pub vague: u32,
    pub wrong: u32,
    pub false_claims: u32,
    pub unknown: u32,
    pub not_breaking: u32,
    pub mixed: u32,
}

impl Counts {
    fn add(&mut self, g: Grade) {
        match g {
            Grade::NotBreaking => self.not_breaking += 1,
            Grade::Mixed => self.mixed += 1,
            g => {
                self.faults += 1;
                match g {
                    Grade::Right => self.right += 1,
                    Grade::Vague => self.vague += 1,
                    Grade::Wrong => self.wrong += 1,
                    Grade::FalseClaim => self.false_claims += 1,
                    _ => self.unknown += 1,
                }
            }
        }
    }

    fn pct(&self, n: u32) -> String {
        if self.faults == 0 {
            "-".into()
        } else {
            format!("{:.0}%", 100.0 * f64::from(n) / f64::from(self.faults))
        }
    }
}

/// The JSON summary (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seed: u64,
    #[serde(flatten)]
    pub all: Counts,
    pub by_family: BTreeMap<String, Counts>,
    pub mean_ms: u64,
    pub false_claim_keys: Vec<String>,
    pub not_breaking_keys: Vec<String>,
    pub errors: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
}

pub fn summary(r: &Results) -> Summary {
    let mut all = Counts::default();
    let mut by_family: BTreeMap<String, Counts> = BTreeMap::new();
    for c in &r.cases {
        all.add(c.grade);
        let leg = c
            .fault
            .leg
            .map_or("-".to_string(), |l| format!("{l:?}").to_lowercase());
        by_family
            .entry(format!("{}/{leg}", c.fault.family.name()))
            .or_default()
            .add(c.grade);
    }
    let keys = |g: Grade| {
        r.cases
            .iter()
            .filter(|c| c.grade == g)
            .map(|c| c.key.clone())
            .collect()
    };
    Summary {
        seed: r.seed,
        all,
        by_family,
        mean_ms: if r.cases.is_empty() {
            0
        } else {
            r.cases.iter().map(|c| c.ms).sum::<u64>() / r.cases.len() as u64
        },
        false_claim_keys: keys(Grade::FalseClaim),
        not_breaking_keys: keys(Grade::NotBreaking),
        errors: r.errors.clone(),
        skipped: r.skipped.clone(),
    }
}

/// The table as Markdown (also readable as text).
pub fn markdown(s: &Summary) -> String {
    let mut out = format!(
        "Fault campaign, seed {}: {} graded faults, {} ms per fault on average.\n\n",
        s.seed, s.all.faults, s.mean_ms
    );
    out += "| family / leg | faults | right | vague | wrong | false | unknown |\n|---|---|---|---|---|---|---|\n";
    let row = |name: &str, c: &Counts| {
        format!(
            "| {name} | {} | {} ({}) | {} ({}) | {} ({}) | {} ({}) | {} ({}) |\n",
            c.faults,
            c.right,
            c.pct(c.right),
            c.vague,
            c.pct(c.vague),
            c.wrong,
            c.pct(c.wrong),
            c.false_claims,
            c.pct(c.false_claims),
            c.unknown,
            c.pct(c.unknown)
        )
    };
    for (name, c) in &s.by_family {
        out += &row(name, c);
    }
    out += &row("**all**", &s.all);
    out += &format!(
        "\nNot graded: {} faults meant to break that did not (generator bugs), {} with mixed client results.\n",
        s.all.not_breaking, s.all.mixed
    );
    if !s.false_claim_keys.is_empty() {
        out += &format!(
            "\nFalse claims (replay with `cargo xtask faults --replay KEY`): {}\n",
            s.false_claim_keys.join(", ")
        );
    }
    if !s.not_breaking_keys.is_empty() {
        out += &format!("\nMeant to break, did not: {}\n", s.not_breaking_keys.join(", "));
    }
    for (k, e) in &s.errors {
        out += &format!("\nCould not inject or heal {k}: {e}\n");
    }
    for (what, why) in &s.skipped {
        out += &format!("\nSkipped: {what} ({why})\n");
    }
    out
}
