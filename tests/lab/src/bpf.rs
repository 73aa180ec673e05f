//! The BPF programs loaded on this machine, read with the bpf syscall (what `bpftool prog
//! show` prints): the tests check that nothing of the tracer's stays, the benchmarks read
//! each program's run count and run time.

/// One loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The kernel's id: unique while loaded, and not handed out again soon after.
    pub id: u32,
    /// As the kernel keeps it: cut at 15 characters.
    pub name: String,
    /// Runs and total run time (counted while `kernel.bpf_stats_enabled=1`).
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Every program loaded now (BPF_PROG_GET_NEXT_ID, GET_FD_BY_ID, OBJ_GET_INFO).
pub fn loaded() -> Vec<Program> {
    const GET_NEXT_ID: libc::c_long = 11;
    const GET_FD_BY_ID: libc::c_long = 13;
    const OBJ_GET_INFO: libc::c_long = 15;
    let mut out = Vec::new();
    let mut id: u32 = 0;
    loop {
        let mut attr = [0u32; 4];
        attr[0] = id;
        // SAFETY: attr is a valid bpf_attr prefix of 16 bytes.
        if unsafe { libc::syscall(libc::SYS_bpf, GET_NEXT_ID, attr.as_mut_ptr(), 16) } != 0 {
            break;
        }
        id = attr[1];
        let mut by_id = [0u32; 4];
        by_id[0] = id;
        // SAFETY: as above.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, GET_FD_BY_ID, by_id.as_mut_ptr(), 16) } as i32;
        if fd < 0 {
            continue;
        }
        // struct bpf_prog_info: name at 64, run_time_ns at 192, run_cnt at 200.
        let mut info = [0u8; 256];
        let mut req = [0u64; 2];
        req[0] = fd as u64 | ((info.len() as u64) << 32);
        req[1] = info.as_mut_ptr() as u64;
        // SAFETY: info is a buffer of the declared length, alive across the call.
        unsafe { libc::syscall(libc::SYS_bpf, OBJ_GET_INFO, req.as_mut_ptr(), 16) };
        // SAFETY: the fd we just got.
        unsafe { libc::close(fd) };
        let name = &info[64..80];
        let end = name.iter().position(|b| *b == 0).unwrap_or(16);
        let u64_at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap_or([0; 8]));
        out.push(Program {
            id,
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            run_time_ns: u64_at(192),
            run_cnt: u64_at(200),
        });
    }
    out
}
