//! The maps. Names matter: userspace and the netfilter loader look them up by name.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use tracer_common::{Config, Tracked};

/// Events to userspace. 4 MiB holds ~40k events: seconds of a failing orchestrator's retries.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Element 0: filter ports, flags and kernel struct offsets.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Network namespace inodes to follow (value unused).
#[map]
pub static NETNS: HashMap<u32, u8> = HashMap::with_max_entries(8192, 0);

/// IPv4 addresses (network byte order) to follow: host IPs, guest IP, veth addresses.
#[map]
pub static ADDRS: HashMap<u32, u8> = HashMap::with_max_entries(8192, 0);

/// `sk_buff`s reported once, followed by address until freed.
#[map]
pub static TRACKED: LruHashMap<u64, Tracked> = LruHashMap::with_max_entries(16384, 0);

/// What makes the per-packet programs worth running: see `tracer_common::HOT_TRACKED` and
/// `HOT_ARMED_UNTIL`. One array read is all a packet pays while nothing of ours is in flight.
#[map]
pub static HOT: Array<u64> = Array::with_max_entries(2, 0);

/// Events that did not fit in `EVENTS`.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the last skb the first netfilter slot found not followed. The later slots of the
/// same hook run right after on the same CPU and skip it with one inlined array read instead
/// of a hash lookup (most of the tracer's cost on non-matching traffic).
#[map]
pub static NF_SKIP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Deep mode: kernel stacks at drops, by id (`Deep::stack_id`). Ids of equal stacks are
/// shared, so a retry storm of one drop takes one entry.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(1024, 0);
