//! The tracer's pure model: what a hop is, what a healthy path looks like, how hops become
//! journeys and how a journey is judged. Everything here is plain data and logic; the crate
//! depends on nothing that reaches the kernel, /proc, netlink or the filesystem, so the
//! compiler keeps it that way, and every piece is tested from fixtures without root.
//!
//! Data flows one way through it: hops (decoded by the tracer from kernel events) →
//! [`journey::Correlator`] → [`journey::Journey`] → [`verdict::decide`] → [`verdict::Verdict`].
//! Turning a verdict into sentences is the output layer's job.
pub mod attempts;
pub mod deep;
pub mod engine;
pub mod facts;
pub mod firewall;
#[doc(hidden)]
pub mod fixtures;
pub mod hook;
pub mod hop;
pub mod journey;
pub mod net;
pub mod path;
pub mod reason;
pub mod rule;
pub mod tcp;
pub mod verdict;

#[cfg(test)]
mod walls {
    /// The model reaches nothing outside the process: no file, process, socket, or system
    /// call API is named in its sources (its dependencies are only serde and the wire types,
    /// which the compiler holds; std is always there, so this test holds the rest).
    #[test]
    fn the_model_does_no_io() {
        const FORBIDDEN: &[&str] = &[
            "std::fs",
            "std::process",
            "std::net::Tcp",
            "std::net::Udp",
            "std::os",
            "std::io",
            "std::env",
            "std::thread",
            "libc",
            "File::",
        ];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![src.clone()];
        let mut files = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                if entry.path().is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                files += 1;
                let text = std::fs::read_to_string(entry.path()).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for f in FORBIDDEN {
                    assert!(!code.contains(f), "{} uses {f}", entry.path().display());
                }
            }
        }
        assert!(files > 10, "the whole model was read");
        let manifest = std::fs::read_to_string(src.join("../Cargo.toml")).unwrap();
        let deps: Vec<&str> = manifest
            .split("[dependencies]")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        assert_eq!(deps, ["serde", "tracer-common"]);
    }
}
