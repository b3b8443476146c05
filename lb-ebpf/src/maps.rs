//! The maps, named as in `lb_common::map_names`. Layouts are in `lb_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    Backend, BenchTemplate, ConnEntry, Counter, CounterBlock, DEFAULT_BACKENDS, DEFAULT_CONN_TABLE,
    DEFAULT_MAGLEV_SLOTS, DEFAULT_QUIC_CONFIGS, DEFAULT_SERVER_IDS, DEFAULT_VIPS, FIB_CACHE_SLOTS,
    FibCacheEntry, FlowKey, MAX_IFACES, QuicLbConfig, REPLY_TABLE_ENTRIES, ReplyNat, ServerIdKey,
    Settings, VipCounter, VipKey, VipMeta,
};

// Every size below is a default: userspace sets each map's size when it loads the object
// (`[capacity]` in the config).

#[map(name = "LB_VIPS")]
pub static LB_VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_VIPS, 0);

#[map(name = "LB_BACKENDS")]
pub static LB_BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_BACKENDS, 0);

/// The shared pool of Maglev rings: every VIP's live ring is `ring_size` slots (backend ids)
/// from its `VipMeta::ring_offset`. Userspace allocates the slots.
#[map(name = "LB_MAGLEV")]
pub static LB_MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_MAGLEV_SLOTS, 0);

#[map(name = "LB_SERVER_IDS")]
pub static LB_SERVER_IDS: HashMap<ServerIdKey, u32> =
    HashMap::with_max_entries(DEFAULT_SERVER_IDS, 0);

/// QUIC-LB configs by `lb_common::quic_config_key` (VIP index, config rotation value): a
/// hash, so memory goes to the configs in use rather than seven slots of 356 octets for
/// every VIP.
#[map(name = "LB_QUIC_CFG")]
pub static LB_QUIC_CFG: HashMap<u32, QuicLbConfig> =
    HashMap::with_max_entries(DEFAULT_QUIC_CONFIGS, 0);

/// Connection table: one LRU shared by all CPUs. Katran keeps one per CPU, which relies on
/// a flow's packets always arriving on one CPU; where they do not (veth, generic XDP, RSS
/// changes, a client whose sender thread moves), a per-CPU table misses and re-runs Maglev,
/// and once the ring has changed (a backend drained or added) that sends an established
/// flow to another backend. Draining (KEP-1669: existing flows stay) needs the shared table.
#[map(name = "LB_CONNS")]
pub static LB_CONNS: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(DEFAULT_CONN_TABLE, 0);

#[map(name = "LB_STATS")]
pub static LB_STATS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

/// Per VIP: packets, octets, routed by CID, dropped (`lb_common::VipCounter`); the
/// reasons in full are node-wide only (`LB_STATS`).
#[map(name = "LB_VIP_STATS")]
pub static LB_VIP_STATS: PerCpuArray<VipCounter> = PerCpuArray::with_max_entries(DEFAULT_VIPS, 0);

#[map(name = "LB_BE_STATS")]
pub static LB_BE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DEFAULT_BACKENDS, 0);

/// Direct-mapped by `lb_common::fib_cache_slot(backend id)`, tagged with the backend id.
#[map(name = "LB_FIB_CACHE")]
pub static LB_FIB_CACHE: PerCpuArray<FibCacheEntry> =
    PerCpuArray::with_max_entries(FIB_CACHE_SLOTS, 0);

#[map(name = "LB_SETTINGS")]
pub static LB_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_TEMPLATE")]
pub static BENCH_TEMPLATE: Array<BenchTemplate> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_TARGET")]
pub static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per-CPU room for the fast path's larger temporaries (the reply entry and its key, the
/// FIB lookup's parameters): the program would not fit the 512-octet BPF stack with them.
/// Nothing survives a packet; userspace never reads it.
#[map(name = "LB_SCRATCH")]
pub static LB_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// See [`LB_SCRATCH`].
#[repr(C)]
pub struct Scratch {
    pub reply: FlowKey,
    pub nat: ReplyNat,
    pub fib: crate::fib::Params,
}

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: one slot per CPU, and a BPF program is not preempted by itself on its CPU
    // (XDP and TC run with preemption off), so nothing else uses it while we do.
    LB_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `LB_PEER_PROG[0]`: `lb_xdp_peer`, which `lb_xdp` tail-calls for packets that may carry
/// another node's steering mark (userspace installs it when it loads the object).
#[map(name = "LB_PEER_PROG")]
pub static LB_PEER_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The TC harness's target (a separate array: a program array holds one program type).
#[map(name = "BENCH_TC_TARGET")]
pub static BENCH_TC_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Reverse NAT: the reply of every flow steered here (or delivered here with another
/// node's steering mark) -> the VIP and port it must leave from. A plain hash, not an LRU:
/// when it is full a new flow is refused and counted (`drop_flow_table_full`) rather than
/// an established flow silently losing its entry; the daemon sweeps idle entries
/// (`lb_common::reply`). Its capacity is set at load time from the config.
#[map(name = "LB_REPLIES")]
pub static LB_REPLIES: HashMap<FlowKey, ReplyNat> =
    HashMap::with_max_entries(REPLY_TABLE_ENTRIES, 0);

/// ifindex -> `lb_common::IFACE_F_*`: where the reverse NAT is attached (a backend reached
/// out of any other interface is behind another node) and which interfaces take a native
/// XDP redirect.
#[map(name = "LB_IFACES")]
pub static LB_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);

/// `lb_tc_rnat`'s counters, indexed by `lb_common::RnatReason`.
#[map(name = "LB_RNAT_STATS")]
pub static LB_RNAT_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(lb_common::RNAT_REASON_STRIDE, 0);

/// Learned-CID mode: (VIP index, server-chosen CID) -> backend id. Written by `lb_tc_rnat`
/// from backends' long-header replies, read by `lb_xdp`. A shared (not per-CPU) LRU: the
/// reply and the client's later packets are seen on different CPUs.
#[map(name = "LB_LEARNED")]
pub static LB_LEARNED: LruHashMap<lb_common::LearnedKey, u32> =
    LruHashMap::with_max_entries(lb_common::DEFAULT_LEARNED_CIDS, 0);

/// loadBalancerSourceRanges: (VIP index, client prefix) -> 1, longest-prefix matched. Read
/// only for VIPs with `VIP_F_SOURCE_RANGES`; IPv4 clients as IPv4-mapped IPv6
/// (`lb_common::source_range_key`).
#[map(name = "LB_SRC_RANGES")]
pub static LB_SRC_RANGES: LpmTrie<lb_common::SourceRangeKey, u32> =
    LpmTrie::with_max_entries(lb_common::MAX_SOURCE_RANGES, 0);

/// `lb_tc_rnat`'s knobs (`lb_common::RnatSettings`); all zero after loading.
#[map(name = "LB_RNAT_CFG")]
pub static LB_RNAT_CFG: Array<lb_common::RnatSettings> = Array::with_max_entries(1, 0);
