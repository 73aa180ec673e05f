//! The one reader of process facts in /proc: a process's command name, state, parent and
//! start time (`/proc/PID/stat`), and its effective uid (`/proc/PID/status`). Discovery, the
//! cache, the doctor and the judge all read processes through it.
use std::fs;

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    /// R, S, D, T, t, Z, X ...
    pub state: char,
    pub ppid: u32,
    /// Clock ticks after boot: with the pid, names one process for good.
    pub start_ticks: u64,
}

impl Stat {
    /// Gone in all but name: a zombie or a dead task.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The process's stat line, parsed; None when it is gone or the line is not one.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A stat line: `pid (comm) state ppid ... starttime ...`. The command name may contain
/// anything, spaces and parentheses included, so fields are counted after its last ')'.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let (head, tail) = line.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    Some(Stat {
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        // Field 22 of the line, the 20th after the state.
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The process's start time in clock ticks after boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_ticks)
}

/// The effective uid from `/proc/PID/status`.
pub fn uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line =
            "4242 (fire cracker) (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 9 0 123456 1 2 3";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.comm.as_str(), s.state, s.ppid, s.start_ticks),
            ("fire cracker) (x)", 'S', 1, 123456)
        );
        assert!(!s.is_dead());
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) Z 0").is_none(), "too short for a start time");
    }

    #[test]
    fn our_own_process_reads() {
        let me = stat(std::process::id()).unwrap();
        assert!(me.start_ticks > 0 && !me.is_dead());
        assert!(uid(std::process::id()).is_some());
    }
}
