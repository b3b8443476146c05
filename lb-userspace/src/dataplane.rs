//! Loading the BPF object embedded in `lb`, typed access to its maps, and running its programs
//! (attached to an interface, or through BPF_PROG_TEST_RUN).

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, ProgramArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use lb_common::{
    BACKEND_F_VALID, Backend, BenchTemplate, ConnEntry, Counter, CounterBlock, FAMILY_V4,
    FAMILY_V6, FIB_CACHE_TTL_DEFAULT_NS, FibCacheEntry, FlowKey, MAGLEV_RING_MAX,
    MAGLEV_SLOTS_PER_ELEMENT, QuicLbConfig, REASON_COUNT, Reason, ServerIdKey, Settings,
    VipCounter, VipKey, VipMeta, fib_cache_slot, map_names, program_names, quic_config_key,
    quic_lb,
};
use lb_common::{
    CONN_F_VALID, IFACE_F_BACKEND, IFACE_F_XMIT, LearnedKey, MAX_SOURCE_RANGES, PROTO_TCP,
    PROTO_UDP, REPLY_TABLE_ENTRIES, RNAT_REASON_COUNT, ReplyNat, RnatReason,
    SETTINGS_F_MARK_REMOTE, SETTINGS_F_XMIT_ONLY, SourceRangeKey, flow_of_reply,
    reply::ReplyTimeouts, source_range_key, source_range_prefix_len,
};
use thiserror::Error;

use crate::{capacity::Capacity, ring_pool::RingPool};

/// The BPF object built by build.rs (empty when bpf-linker was missing at build time).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(
        "this lb binary was built without its BPF object (bpf-linker or nightly rust-src was \
         missing at build time); run `cargo xtask setup`, then rebuild"
    )]
    NotBuilt,
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the kernel refused to create map {map} with {entries} entries ({setting}): {cause}; \
         lower {setting}, or give lb more memory (its memory cgroup's limit)"
    )]
    MapTooLarge {
        map: String,
        entries: u32,
        /// The setting that sizes the map, as written in the config.
        setting: String,
        cause: std::io::Error,
    },
    #[error(transparent)]
    RingPool(#[from] crate::ring_pool::PoolError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("BPF object has no map named {0}")]
    MissingMap(&'static str),
    #[error("BPF object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, DataplaneError>;

use lb_common::maglev::ring_pool_slots as ring_slots;

/// A map the kernel would not create at its configured size, named with the `[capacity]`
/// key to lower; any other load error as it is.
fn refused_map(e: aya::EbpfError, opts: &LoadOptions) -> DataplaneError {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) = &e {
        let knob = crate::capacity::knob_of_map(name);
        let entries = match knob {
            Some(k) => (k.get)(&opts.capacity),
            None if name == map_names::REPLIES => opts.reply_flows,
            None => 0,
        };
        let setting = match knob {
            Some(k) => format!("[capacity] {}", k.key),
            None if name == map_names::REPLIES => "[reverse_nat] max_flows".into(),
            None => "a fixed size; other maps".into(),
        };
        return DataplaneError::MapTooLarge {
            map: name.clone(),
            entries,
            setting,
            cause: std::io::Error::from_raw_os_error(io_error.raw_os_error().unwrap_or(0)),
        };
    }
    DataplaneError::Load(e)
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

/// Outcome of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub verdict: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// Mean time per iteration, as the kernel measured it.
    pub duration: Duration,
}

/// A reason enum whose values index a counter table (`Reason` for XDP, `RnatReason` for TC).
pub trait CounterReason: Copy + 'static {
    const ALL: &'static [Self];
    fn index(self) -> usize;
    fn name(self) -> &'static str;
}

impl CounterReason for Reason {
    const ALL: &'static [Self] = &Reason::ALL;
    fn index(self) -> usize {
        self as usize
    }
    fn name(self) -> &'static str {
        Reason::name(self)
    }
}

impl CounterReason for RnatReason {
    const ALL: &'static [Self] = &RnatReason::ALL;
    fn index(self) -> usize {
        self as usize
    }
    fn name(self) -> &'static str {
        RnatReason::name(self)
    }
}

/// Counters summed over CPUs, one per reason of `R` (`N` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters<R, const N: usize>(pub [Counter; N], std::marker::PhantomData<R>);

impl<R, const N: usize> Default for Counters<R, N> {
    fn default() -> Self {
        Counters([Counter::default(); N], std::marker::PhantomData)
    }
}

impl<R: CounterReason, const N: usize> Counters<R, N> {
    pub fn get(&self, r: R) -> Counter {
        self.0[r.index()]
    }
    pub fn packets(&self, r: R) -> u64 {
        self.0[r.index()].packets
    }
    /// `self - before`, per reason (packets and bytes).
    pub fn delta(&self, before: &Self) -> Self {
        let mut d = Self::default();
        for i in 0..N {
            d.0[i].packets = self.0[i].packets - before.0[i].packets;
            d.0[i].bytes = self.0[i].bytes - before.0[i].bytes;
        }
        d
    }
    /// Reasons with a non-zero packet count, for readable assertions.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        R::ALL
            .iter()
            .filter(|r| self.0[r.index()].packets != 0)
            .map(|r| (r.name(), self.0[r.index()].packets))
            .collect()
    }
}

/// The XDP program's counters (global or one VIP's), indexed by `Reason`.
pub type ReasonCounters = Counters<Reason, { REASON_COUNT as usize }>;
/// The reverse-NAT program's counters, indexed by `RnatReason`.
pub type RnatCounters = Counters<RnatReason, { RNAT_REASON_COUNT as usize }>;

impl ReasonCounters {
    /// Sum one scope's per-CPU counter blocks.
    fn sum_blocks(blocks: &aya::maps::PerCpuValues<CounterBlock>) -> ReasonCounters {
        let mut out = ReasonCounters::default();
        for b in blocks.iter() {
            for r in Reason::ALL {
                let (o, c) = (&mut out.0[r as usize], b.by_reason[r as usize]);
                o.packets += c.packets;
                o.bytes += c.bytes;
            }
        }
        out
    }
}

fn sum(values: &aya::maps::PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

/// 16-octet key form of an address, with its family tag.
pub fn addr_key(ip: IpAddr) -> ([u8; 16], u8) {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            (a, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

pub fn vip_key(ip: IpAddr, port: u16, proto: u8) -> VipKey {
    let (addr, family) = addr_key(ip);
    VipKey {
        addr,
        port,
        proto,
        family,
    }
}

pub fn backend(ip: IpAddr, port: u16) -> Backend {
    let (addr, family) = addr_key(ip);
    Backend {
        addr,
        port,
        family,
        flags: BACKEND_F_VALID,
    }
}

/// The loaded BPF object and typed handles on its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, VipMeta>,
    backends: Array<MapData, Backend>,
    /// `LB_MAGLEV`: two ring slots per element.
    maglev: Array<MapData, [u32; 2]>,
    server_ids: HashMap<MapData, ServerIdKey, u32>,
    quic_cfg: HashMap<MapData, u32, QuicLbConfig>,
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    stats: PerCpuArray<MapData, CounterBlock>,
    vip_stats: PerCpuArray<MapData, VipCounter>,
    backend_stats: PerCpuArray<MapData, Counter>,
    fib_cache: PerCpuArray<MapData, FibCacheEntry>,
    settings: Array<MapData, Settings>,
    /// Links made by `attach`, by interface index.
    links: StdHashMap<u32, XdpLinkId>,
    replies: HashMap<MapData, FlowKey, ReplyNat>,
    /// Capacity of `LB_REPLIES` as loaded.
    reply_capacity: u32,
    /// `LB_IFACES`: ifindex -> `IFACE_F_*`.
    ifaces: HashMap<MapData, u32, u32>,
    rnat_stats: PerCpuArray<MapData, Counter>,
    learned: HashMap<MapData, LearnedKey, u32>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    rnat_cfg: Array<MapData, lb_common::RnatSettings>,
    /// Links made by `attach_rnat` (TC ingress), by interface index.
    rnat_links: StdHashMap<u32, SchedClassifierLinkId>,
    /// Which slots of `LB_MAGLEV` hold rings.
    ring_pool: RingPool,
    capacity: Capacity,
}

/// Sizes fixed when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Capacity of the reply table (`LB_REPLIES`): flows whose replies can be rewritten at
    /// once.
    pub reply_flows: u32,
    /// The sizes of the other maps that grow with the cluster (`[capacity]`).
    pub capacity: Capacity,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            reply_flows: REPLY_TABLE_ENTRIES,
            capacity: Capacity::default(),
        }
    }
}

impl LoadOptions {
    /// Small maps that load in a fraction of the time (tests and tools that program a few
    /// VIPs; the kernel preallocates every entry of the defaults, a million flows included).
    pub fn compact() -> LoadOptions {
        LoadOptions {
            reply_flows: 65_536,
            capacity: Capacity {
                vips: 1024,
                backends: 4096,
                conn_table_size: 65_536,
                learned_cids: 65_536,
                server_ids: 16_384,
                quic_configs: 1024,
                maglev_slots: 1 << 20,
            },
        }
    }
}

/// What one sweep of the reply table did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Entries looked at.
    pub scanned: usize,
    /// Entries deleted as idle past their timeout.
    pub expired: usize,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`, which stamps
/// the reply table.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Dataplane {
    /// Load the embedded object and the load balancer program (through the verifier).
    pub fn load() -> Result<Self> {
        Self::load_bytes(BPF_OBJECT, LoadOptions::default())
    }

    /// [`load`](Self::load) with map sizes other than the defaults.
    pub fn load_with(opts: LoadOptions) -> Result<Self> {
        Self::load_bytes(BPF_OBJECT, opts)
    }

    pub fn load_bytes(object: &[u8], opts: LoadOptions) -> Result<Self> {
        if object.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        if opts.reply_flows == 0 {
            return Err(DataplaneError::Invalid(
                "the reply table needs room for at least one flow".into(),
            ));
        }
        opts.capacity.check().map_err(DataplaneError::Invalid)?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_names::REPLIES, opts.reply_flows);
        for (map, entries) in opts.capacity.map_sizes() {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader.load(object).map_err(|e| refused_map(e, &opts))?;
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name));
        let vips = HashMap::try_from(take(map_names::VIPS)?).map_err(map_err(map_names::VIPS))?;
        let backends =
            Array::try_from(take(map_names::BACKENDS)?).map_err(map_err(map_names::BACKENDS))?;
        let maglev =
            Array::try_from(take(map_names::MAGLEV)?).map_err(map_err(map_names::MAGLEV))?;
        let server_ids = HashMap::try_from(take(map_names::SERVER_IDS)?)
            .map_err(map_err(map_names::SERVER_IDS))?;
        let quic_cfg =
            HashMap::try_from(take(map_names::QUIC_CFG)?).map_err(map_err(map_names::QUIC_CFG))?;
        let conns =
            HashMap::try_from(take(map_names::CONNS)?).map_err(map_err(map_names::CONNS))?;
        let stats =
            PerCpuArray::try_from(take(map_names::STATS)?).map_err(map_err(map_names::STATS))?;
        let vip_stats = PerCpuArray::try_from(take(map_names::VIP_STATS)?)
            .map_err(map_err(map_names::VIP_STATS))?;
        let backend_stats = PerCpuArray::try_from(take(map_names::BACKEND_STATS)?)
            .map_err(map_err(map_names::BACKEND_STATS))?;
        let fib_cache = PerCpuArray::try_from(take(map_names::FIB_CACHE)?)
            .map_err(map_err(map_names::FIB_CACHE))?;
        let settings =
            Array::try_from(take(map_names::SETTINGS)?).map_err(map_err(map_names::SETTINGS))?;
        let replies =
            HashMap::try_from(take(map_names::REPLIES)?).map_err(map_err(map_names::REPLIES))?;
        let ifaces =
            HashMap::try_from(take(map_names::IFACES)?).map_err(map_err(map_names::IFACES))?;
        let rnat_stats = PerCpuArray::try_from(take(map_names::RNAT_STATS)?)
            .map_err(map_err(map_names::RNAT_STATS))?;
        let learned =
            HashMap::try_from(take(map_names::LEARNED)?).map_err(map_err(map_names::LEARNED))?;
        let source_ranges = LpmTrie::try_from(take(map_names::SOURCE_RANGES)?)
            .map_err(map_err(map_names::SOURCE_RANGES))?;
        let rnat_cfg =
            Array::try_from(take(map_names::RNAT_CFG)?).map_err(map_err(map_names::RNAT_CFG))?;
        let mut dp = Dataplane {
            ebpf,
            vips,
            backends,
            maglev,
            server_ids,
            quic_cfg,
            conns,
            stats,
            vip_stats,
            backend_stats,
            fib_cache,
            settings,
            links: StdHashMap::new(),
            replies,
            reply_capacity: opts.reply_flows,
            ifaces,
            rnat_stats,
            learned,
            source_ranges,
            rnat_cfg,
            rnat_links: StdHashMap::new(),
            ring_pool: RingPool::new(opts.capacity.maglev_elements() * MAGLEV_SLOTS_PER_ELEMENT),
            capacity: opts.capacity,
        };
        dp.set_settings(&Settings {
            fib_cache_ttl_ns: FIB_CACHE_TTL_DEFAULT_NS,
            ..Settings::default()
        })?;
        dp.load_program(program_names::XDP_LB)?;
        dp.install_peer_program()?;
        Ok(dp)
    }

    /// Load `lb_xdp_peer` and put it where `lb_xdp` tail-calls it (`LB_PEER_PROG[0]`):
    /// without it, packets with another node's steering mark would pass untouched.
    fn install_peer_program(&mut self) -> Result<()> {
        self.load_program(program_names::XDP_PEER)?;
        let fd = self
            .xdp(program_names::XDP_PEER)?
            .fd()
            .map_err(prog_err(program_names::XDP_PEER))?
            .try_clone()
            .map_err(|e| {
                DataplaneError::Invalid(format!(
                    "duplicating the {} program fd: {e}",
                    program_names::XDP_PEER
                ))
            })?;
        let mut progs: ProgramArray<_> = ProgramArray::try_from(
            self.ebpf
                .map_mut(map_names::PEER_PROG)
                .ok_or(DataplaneError::MissingMap(map_names::PEER_PROG))?,
        )
        .map_err(map_err(map_names::PEER_PROG))?;
        progs.set(0, &fd, 0).map_err(map_err(map_names::PEER_PROG))
    }

    fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        prog.try_into().map_err(prog_err(name))
    }

    fn xdp_ref(&self, name: &'static str) -> Result<&Xdp> {
        let prog = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        prog.try_into().map_err(prog_err(name))
    }

    /// Load (verify) one program of the object; a no-op if it is loaded already.
    pub fn load_program(&mut self, name: &'static str) -> Result<()> {
        let xdp = self.xdp(name)?;
        if xdp.fd().is_ok() {
            return Ok(());
        }
        xdp.load().map_err(prog_err(name))
    }

    /// Attach the load balancer to `ifindex`: native (driver) mode, or generic when
    /// `generic` is set.
    pub fn attach(&mut self, ifindex: u32, generic: bool) -> Result<()> {
        let mode = if generic {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        let xdp = self.xdp(program_names::XDP_LB)?;
        let id = xdp
            .attach_to_if_index(ifindex, mode)
            .map_err(prog_err(program_names::XDP_LB))?;
        self.links.insert(ifindex, id);
        Ok(())
    }

    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        let Some(id) = self.links.remove(&ifindex) else {
            return Err(DataplaneError::Invalid(format!(
                "nothing attached to ifindex {ifindex}"
            )));
        };
        self.xdp(program_names::XDP_LB)?
            .detach(id)
            .map_err(prog_err(program_names::XDP_LB))
    }

    // ---- configuration --------------------------------------------------------------

    /// Write backend `id`, then forget every CPU's cached next hop for it.
    pub fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()> {
        self.backends
            .set(id, b, 0)
            .map_err(map_err(map_names::BACKENDS))?;
        self.flush_fib_cache(id)
    }

    /// Forget every CPU's cached next hop for backend `id` (the entries of other backends
    /// that share its slot stay).
    pub fn flush_fib_cache(&mut self, id: u32) -> Result<()> {
        let slot = fib_cache_slot(id);
        let entries = self
            .fib_cache
            .get(&slot, 0)
            .map_err(map_err(map_names::FIB_CACHE))?;
        if !entries.iter().any(|e| e.backend == id && e.expires_ns != 0) {
            return Ok(());
        }
        let kept: Vec<FibCacheEntry> = entries
            .iter()
            .map(|e| {
                if e.backend == id {
                    FibCacheEntry::default()
                } else {
                    *e
                }
            })
            .collect();
        let kept = aya::maps::PerCpuValues::try_from(kept)
            .map_err(|e| DataplaneError::Invalid(format!("building per-CPU values: {e}")))?;
        self.fib_cache
            .set(slot, kept, 0)
            .map_err(map_err(map_names::FIB_CACHE))
    }

    pub fn settings(&self) -> Result<Settings> {
        self.settings
            .get(&0, 0)
            .map_err(map_err(map_names::SETTINGS))
    }

    pub fn set_settings(&mut self, s: &Settings) -> Result<()> {
        self.settings
            .set(0, s, 0)
            .map_err(map_err(map_names::SETTINGS))
    }

    /// Change the next-hop cache's lifetime only (0: off).
    pub fn set_fib_cache_ttl(&mut self, ttl_ns: u64) -> Result<()> {
        let mut s = self.settings()?;
        s.fib_cache_ttl_ns = ttl_ns;
        self.set_settings(&s)
    }

    /// Whether packets to a backend behind another node carry the steering mark
    /// (`SETTINGS_F_MARK_REMOTE`; off after loading).
    /// Redirect only to interfaces marked with [`set_iface_xmit`](Self::set_iface_xmit);
    /// any other egress goes to the kernel (`SETTINGS_F_XMIT_ONLY`). Off after loading.
    pub fn set_xmit_only(&mut self, on: bool) -> Result<()> {
        let mut s = self.settings()?;
        if on {
            s.flags |= SETTINGS_F_XMIT_ONLY;
        } else {
            s.flags &= !SETTINGS_F_XMIT_ONLY;
        }
        self.set_settings(&s)
    }

    pub fn set_mark_remote(&mut self, on: bool) -> Result<()> {
        let mut s = self.settings()?;
        if on {
            s.flags |= SETTINGS_F_MARK_REMOTE;
        } else {
            s.flags &= !SETTINGS_F_MARK_REMOTE;
        }
        self.set_settings(&s)
    }

    /// Invalidate backend `id`, then evict the connection-table entries that name it
    /// ([`evict_backend_flows`](Self::evict_backend_flows)), so a later backend under the
    /// same id does not inherit its flows. Call it once no ring or server ID names `id`.
    pub fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.set_backend(id, &Backend::default())?;
        self.evict_backend_flows(id)?;
        Ok(())
    }

    /// Delete every `LB_CONNS` entry that names backend `id`; returns how many flows were
    /// evicted. Those flows take Maglev again on their next packet. Weight-0 (draining)
    /// backends are not evicted by anyone: their flows stay.
    pub fn evict_backend_flows(&mut self, id: u32) -> Result<usize> {
        self.evict_flows(id, |_| true)
    }

    /// [`evict_backend_flows`](Self::evict_backend_flows) for the flows of one VIP only: what
    /// removing a backend from one VIP needs when other VIPs still use it.
    pub fn evict_vip_backend_flows(&mut self, vip: &VipKey, id: u32) -> Result<usize> {
        self.evict_flows(id, |f| {
            f.dst == vip.addr
                && f.dport == vip.port
                && f.proto == vip.proto
                && f.family == vip.family
        })
    }

    fn evict_flows(&mut self, id: u32, flow_matches: impl Fn(&FlowKey) -> bool) -> Result<usize> {
        self.evict_flows_where(|k, backend| backend == id && flow_matches(k))
    }

    /// Evict, in one walk of the connection table, the flows of each (VIP, backend) in
    /// `pairs`: what [`evict_vip_backend_flows`](Self::evict_vip_backend_flows) does for
    /// each, without walking the million-bucket table once per pair (removing a Service of
    /// five pods was five walks, deleting 9,000 Services 45,000).
    pub fn evict_vip_backend_flows_all(&mut self, pairs: &[(VipKey, u32)]) -> Result<usize> {
        let pairs: HashSet<(VipKey, u32)> = pairs.iter().copied().collect();
        self.evict_flows_where(|f, backend| {
            let vip = VipKey {
                addr: f.dst,
                port: f.dport,
                proto: f.proto,
                family: f.family,
            };
            pairs.contains(&(vip, backend))
        })
    }

    /// Clear backends `ids` ([`clear_backend`](Self::clear_backend) for each: every entry
    /// first, then the flows naming any of them, in one walk of the connection table).
    pub fn clear_backends(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            self.set_backend(*id, &Backend::default())?;
        }
        let ids: HashSet<u32> = ids.iter().copied().collect();
        self.evict_flows_where(|_, backend| ids.contains(&backend))?;
        Ok(())
    }

    /// Delete every valid `LB_CONNS` entry for which `doomed(flow, backend)`; returns how
    /// many were deleted.
    fn evict_flows_where(&mut self, doomed: impl Fn(&FlowKey, u32) -> bool) -> Result<usize> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        // Keys first (deleting while walking the hash table would restart the walk), read
        // in batches: walking a million-bucket table one key at a time was the largest cost
        // of an EndpointSlice change (get_next_key scans the buckets for every key).
        let fd = self.conns.map().fd().as_fd().as_raw_fd();
        let doomed: Vec<FlowKey> = crate::map_batch::lookup_all::<FlowKey, ConnEntry>(fd)
            .map_err(|e| DataplaneError::Invalid(format!("reading {}: {e}", map_names::CONNS)))?
            .into_iter()
            .filter(|(k, e)| e.flags & CONN_F_VALID != 0 && doomed(k, e.backend))
            .map(|(k, _)| k)
            .collect();
        let mut evicted = 0;
        for k in doomed {
            // Gone already (LRU eviction, or the program replaced it) is fine.
            if self.conns.remove(&k).is_ok() {
                evicted += 1;
            }
        }
        Ok(evicted)
    }

    /// Every flow in the connection table with its entry, when valid (tests, debugging).
    pub fn conn_table(&self) -> Vec<(FlowKey, Vec<ConnEntry>)> {
        self.conns
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, e)| e.flags & CONN_F_VALID != 0)
            .map(|(k, e)| (k, vec![e]))
            .collect()
    }

    /// Change only the flags of an existing VIP (its ring stays live): one map update.
    pub fn set_vip_flags(&mut self, key: &VipKey, flags: u32) -> Result<()> {
        let Some(mut meta) = self.vip(key) else {
            return Err(DataplaneError::Invalid(format!(
                "setting the flags of a VIP that is not in {}",
                map_names::VIPS
            )));
        };
        meta.flags = flags;
        self.set_vip(key, &meta)
    }

    // ---- loadBalancerSourceRanges ---------------------------------------------------

    /// Allow clients in `net` to reach VIP `vip_index` (effective while the VIP has
    /// `VIP_F_SOURCE_RANGES`). `net` must have no host bits set. Adding a range twice is
    /// fine. Fails when `LB_SRC_RANGES` is full ([`MAX_SOURCE_RANGES`] entries).
    pub fn add_source_range(&mut self, vip_index: u32, net: ipnet::IpNet) -> Result<()> {
        let key = source_range_lpm_key(vip_index, net)?;
        self.source_ranges
            .insert(&key, 1, 0)
            .map_err(|e| match &e {
                aya::maps::MapError::SyscallError(s)
                    if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) =>
                {
                    DataplaneError::Invalid(format!(
                        "adding source range {net} of VIP {vip_index}: {} is full                          ({MAX_SOURCE_RANGES} ranges over all VIPs)",
                        map_names::SOURCE_RANGES
                    ))
                }
                _ => DataplaneError::Map {
                    name: map_names::SOURCE_RANGES,
                    source: e,
                },
            })
    }

    /// Remove one range of VIP `vip_index`; a range that is not there is not an error.
    pub fn remove_source_range(&mut self, vip_index: u32, net: ipnet::IpNet) -> Result<()> {
        let key = source_range_lpm_key(vip_index, net)?;
        match self.source_ranges.remove(&key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(s))
                if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(DataplaneError::Map {
                name: map_names::SOURCE_RANGES,
                source: e,
            }),
        }
    }

    /// The ranges installed for VIP `vip_index`, sorted.
    pub fn source_ranges(&self, vip_index: u32) -> Vec<ipnet::IpNet> {
        let mut v: Vec<ipnet::IpNet> = self
            .source_ranges
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data().vip_index == vip_index)
            .filter_map(|k| net_of_source_range_key(&k))
            .collect();
        v.sort();
        v
    }

    /// Would a client at `addr` be allowed by VIP `vip_index`'s ranges (the lookup the XDP
    /// program makes)?
    pub fn source_range_allows(&self, vip_index: u32, addr: IpAddr) -> bool {
        let (a, family) = addr_key(addr);
        let key = LpmKey::new(
            lb_common::SOURCE_RANGE_LOOKUP_LEN,
            source_range_key(vip_index, &a, family),
        );
        self.source_ranges.get(&key, 0).is_ok()
    }

    pub fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key, 0).ok()
    }

    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        self.vips
            .insert(key, meta, 0)
            .map_err(map_err(map_names::VIPS))
    }

    /// Remove a VIP; in learned-CID mode also forget the CIDs learned for it, so a VIP that
    /// later reuses its index starts clean.
    /// Its ring's slots go back to the pool (after the grace period).
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let meta = self.vip(key);
        self.vips.remove(key).map_err(map_err(map_names::VIPS))?;
        if let Some(m) = meta {
            self.ring_pool
                .release(m.ring_offset, ring_slots(m.ring_size));
            if m.flags & lb_common::VIP_F_LEARNED_CID != 0 {
                self.clear_learned(m.index)?;
            }
        }
        Ok(())
    }

    /// Install a new Maglev table for the VIP without exposing a half-written one: write it
    /// into free slots of the ring pool, then point the VIP at it (`ring_offset`,
    /// `ring_size`) in one map update; the old ring's slots are reused only after a grace
    /// period ([`crate::ring_pool`]). Creates the VIP (with `index` and `flags`) if it does
    /// not exist. An empty table leaves the VIP without a ring (its new flows are dropped).
    pub fn publish_ring(
        &mut self,
        key: &VipKey,
        index: u32,
        flags: u32,
        table: &[u32],
    ) -> Result<()> {
        let size = table.len() as u32;
        if size > MAGLEV_RING_MAX {
            return Err(DataplaneError::Invalid(format!(
                "Maglev table of {size} slots is larger than the maximum {MAGLEV_RING_MAX}"
            )));
        }
        let current = self.vip(key);
        // Whole elements of LB_MAGLEV: rings never share one.
        let slots = ring_slots(size);
        let offset = if size == 0 {
            0
        } else {
            let offset = self.ring_pool.alloc(slots)?;
            if let Err(e) = self.write_ring(offset, table) {
                // Never published: no packet can be reading these slots.
                self.ring_pool.release(offset, slots);
                return Err(e);
            }
            offset
        };
        let meta = VipMeta {
            index,
            flags,
            ring_size: size,
            ring_offset: offset,
        };
        if let Err(e) = self.set_vip(key, &meta) {
            self.ring_pool.release(offset, slots);
            return Err(e);
        }
        if let Some(old) = current {
            self.ring_pool
                .release(old.ring_offset, ring_slots(old.ring_size));
        }
        Ok(())
    }

    /// Write a ring's slots from `offset` (even), two per element, a few thousand elements
    /// per system call. An odd ring's last element has a second half no packet reads.
    fn write_ring(&mut self, offset: u32, table: &[u32]) -> Result<()> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let first = offset / MAGLEV_SLOTS_PER_ELEMENT;
        let pairs: Vec<[u32; 2]> = table
            .chunks(2)
            .map(|c| [c[0], c.get(1).copied().unwrap_or(c[0])])
            .collect();
        let keys: Vec<u32> = (first..first + pairs.len() as u32).collect();
        let fd = self.maglev.map().fd().as_fd().as_raw_fd();
        crate::map_batch::update_all(fd, &keys, &pairs).map_err(|e| {
            DataplaneError::Invalid(format!("writing a ring into {}: {e}", map_names::MAGLEV))
        })
    }

    /// The backend in `slot` of the VIP's live ring.
    pub fn ring_slot(&self, meta: &VipMeta, slot: u32) -> Result<u32> {
        let at = meta.ring_offset + slot;
        let pair = self
            .maglev
            .get(&(at / MAGLEV_SLOTS_PER_ELEMENT), 0)
            .map_err(map_err(map_names::MAGLEV))?;
        Ok(pair[(at % MAGLEV_SLOTS_PER_ELEMENT) as usize])
    }

    /// The sizes the maps were loaded with.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// The Maglev ring pool's bookkeeping (slots in use, in their grace period).
    pub fn ring_pool(&self) -> &RingPool {
        &self.ring_pool
    }

    /// Install a QUIC-LB configuration (validated by `quic_lb::Config::new`) for the VIP under
    /// its config rotation value, with its AES round keys expanded here.
    pub fn set_quic_config(&mut self, vip_index: u32, cfg: &quic_lb::Config) -> Result<()> {
        self.write_quic_config(vip_index, cfg.config_id(), &QuicLbConfig::from_config(cfg))
    }

    /// Remove the VIP's configuration under `config_id`: its CIDs take the fallback.
    pub fn clear_quic_config(&mut self, vip_index: u32, config_id: u8) -> Result<()> {
        self.write_quic_config(vip_index, config_id, &QuicLbConfig::default())
    }

    fn write_quic_config(&mut self, vip_index: u32, config_id: u8, v: &QuicLbConfig) -> Result<()> {
        if config_id > quic_lb::MAX_CONFIG_ID {
            return Err(DataplaneError::Invalid(format!(
                "QUIC-LB config rotation {config_id} is not 0..=6 (0b111 is reserved as unroutable)"
            )));
        }
        let key = quic_config_key(vip_index, config_id);
        if v.mode == lb_common::QUIC_LB_MODE_NONE {
            return match self.quic_cfg.remove(&key) {
                Ok(()) => Ok(()),
                // Not there: nothing to clear.
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(map_err(map_names::QUIC_CFG)(e)),
            };
        }
        self.quic_cfg
            .insert(key, v, 0)
            .map_err(map_err(map_names::QUIC_CFG))
    }

    pub fn set_server_id(
        &mut self,
        vip_index: u32,
        config_id: u8,
        sid: &[u8],
        backend: u32,
    ) -> Result<()> {
        let key = server_id_key(vip_index, config_id, sid)?;
        self.server_ids
            .insert(key, backend, 0)
            .map_err(map_err(map_names::SERVER_IDS))
    }

    pub fn remove_server_id(&mut self, vip_index: u32, config_id: u8, sid: &[u8]) -> Result<()> {
        let key = server_id_key(vip_index, config_id, sid)?;
        self.server_ids
            .remove(&key)
            .map_err(map_err(map_names::SERVER_IDS))
    }

    // ---- observation ----------------------------------------------------------------

    pub fn stats(&self) -> Result<ReasonCounters> {
        let v = self.stats.get(&0, 0).map_err(map_err(map_names::STATS))?;
        Ok(ReasonCounters::sum_blocks(&v))
    }

    /// One VIP's counters, summed over CPUs.
    pub fn vip_stats(&self, vip_index: u32) -> Result<VipCounter> {
        let v = self
            .vip_stats
            .get(&vip_index, 0)
            .map_err(map_err(map_names::VIP_STATS))?;
        Ok(v.iter().fold(VipCounter::default(), |a, c| VipCounter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            routed_cid: a.routed_cid + c.routed_cid,
            dropped: a.dropped + c.dropped,
        }))
    }

    pub fn backend_stats(&self, backend: u32) -> Result<Counter> {
        let v = self
            .backend_stats
            .get(&backend, 0)
            .map_err(map_err(map_names::BACKEND_STATS))?;
        Ok(sum(&v))
    }

    /// The connection-table entry for a flow, if it holds a valid one (empty or one entry;
    /// a list so tests read the same as when the table was per CPU).
    pub fn conn_entries(&self, flow: &FlowKey) -> Vec<ConnEntry> {
        match self.conns.get(flow, 0) {
            Ok(e) if e.flags & lb_common::CONN_F_VALID != 0 => vec![e],
            _ => Vec::new(),
        }
    }

    // ---- running programs -----------------------------------------------------------

    /// Run the load balancer once on `packet` through BPF_PROG_TEST_RUN, as if it arrived on
    /// `ingress_ifindex` (an interface in the calling thread's network namespace; 0 means
    /// the namespace's loopback).
    pub fn test_run(&self, packet: &[u8], ingress_ifindex: u32) -> Result<RunResult> {
        run(
            self.xdp_ref(program_names::XDP_LB)?,
            packet,
            ingress_ifindex,
            1,
        )
    }

    /// Prepare the benchmark harness: `BENCH_TARGET[0]` = the load balancer, or the empty
    /// program when `floor` is set; `BENCH_TEMPLATE[0]` = `packet`, which the program under
    /// test moves the head of by `head_delta` octets (see `lb_common::BenchTemplate`).
    pub fn bench_prepare(&mut self, packet: &[u8], floor: bool, head_delta: i32) -> Result<()> {
        if packet.len() > lb_common::BENCH_TEMPLATE_MAX {
            return Err(DataplaneError::Invalid(format!(
                "bench packet of {} octets is longer than the harness template ({})",
                packet.len(),
                lb_common::BENCH_TEMPLATE_MAX
            )));
        }
        self.load_program(program_names::BENCH_HARNESS)?;
        self.load_program(program_names::BENCH_EMPTY)?;
        let target = if floor {
            program_names::BENCH_EMPTY
        } else {
            program_names::XDP_LB
        };
        let fd = self
            .xdp(target)?
            .fd()
            .map_err(prog_err(target))?
            .try_clone()
            .map_err(|e| {
                DataplaneError::Invalid(format!("duplicating the {target} program fd: {e}"))
            })?;
        let mut targets: ProgramArray<_> = ProgramArray::try_from(
            self.ebpf
                .map_mut(map_names::BENCH_TARGET)
                .ok_or(DataplaneError::MissingMap(map_names::BENCH_TARGET))?,
        )
        .map_err(map_err(map_names::BENCH_TARGET))?;
        targets
            .set(0, &fd, 0)
            .map_err(map_err(map_names::BENCH_TARGET))?;
        self.set_bench_template(packet, head_delta)
    }

    /// Run the harness `repeat` times on `packet` (which must be the prepared template).
    pub fn bench_run(&self, packet: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<RunResult> {
        run(
            self.xdp_ref(program_names::BENCH_HARNESS)?,
            packet,
            ingress_ifindex,
            repeat,
        )
    }

    /// [`bench_prepare`](Self::bench_prepare) for the TC harness: `BENCH_TC_TARGET[0]` =
    /// the reverse NAT, or the empty TC program when `floor` is set.
    pub fn bench_prepare_tc(&mut self, packet: &[u8], floor: bool) -> Result<()> {
        self.load_rnat()?;
        for name in [
            program_names::BENCH_TC_HARNESS,
            program_names::BENCH_TC_EMPTY,
        ] {
            let prog = self.classifier(name)?;
            if prog.fd().is_err() {
                prog.load().map_err(prog_err(name))?;
            }
        }
        let target = if floor {
            program_names::BENCH_TC_EMPTY
        } else {
            program_names::TC_RNAT
        };
        let fd = self
            .classifier(target)?
            .fd()
            .map_err(prog_err(target))?
            .try_clone()
            .map_err(|e| {
                DataplaneError::Invalid(format!("duplicating the {target} program fd: {e}"))
            })?;
        let mut targets: ProgramArray<_> = ProgramArray::try_from(
            self.ebpf
                .map_mut(map_names::BENCH_TC_TARGET)
                .ok_or(DataplaneError::MissingMap(map_names::BENCH_TC_TARGET))?,
        )
        .map_err(map_err(map_names::BENCH_TC_TARGET))?;
        targets
            .set(0, &fd, 0)
            .map_err(map_err(map_names::BENCH_TC_TARGET))?;
        self.set_bench_template(packet, 0)
    }

    /// Run the TC harness `repeat` times on `packet` (the prepared template), as if it
    /// entered on `ifindex` (0: the namespace's loopback).
    pub fn bench_run_tc(&mut self, packet: &[u8], ifindex: u32, repeat: u32) -> Result<RunResult> {
        let name = program_names::BENCH_TC_HARNESS;
        run_tc(self.classifier(name)?, packet, ifindex, repeat)
    }

    fn set_bench_template(&mut self, packet: &[u8], head_delta: i32) -> Result<()> {
        if packet.len() > lb_common::BENCH_TEMPLATE_MAX {
            return Err(DataplaneError::Invalid(format!(
                "bench packet of {} octets is longer than the harness template ({})",
                packet.len(),
                lb_common::BENCH_TEMPLATE_MAX
            )));
        }
        let mut t = BenchTemplate {
            len: packet.len() as u32,
            head_delta,
            data: [0; lb_common::BENCH_TEMPLATE_MAX],
        };
        t.data[..packet.len()].copy_from_slice(packet);
        let mut templates: Array<_, BenchTemplate> = Array::try_from(
            self.ebpf
                .map_mut(map_names::BENCH_TEMPLATE)
                .ok_or(DataplaneError::MissingMap(map_names::BENCH_TEMPLATE))?,
        )
        .map_err(map_err(map_names::BENCH_TEMPLATE))?;
        templates
            .set(0, t, 0)
            .map_err(map_err(map_names::BENCH_TEMPLATE))
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        prog.try_into().map_err(prog_err(name))
    }
}

// ---- reverse NAT (TC) -------------------------------------------------------------------

/// `LB_LEARNED` key; `None` when `cid` is longer than 20 octets or empty.
pub fn learned_key(vip_index: u32, cid: &[u8]) -> Option<LearnedKey> {
    if cid.is_empty() || cid.len() > lb_common::QUIC_LB_MAX_CID_LEN {
        return None;
    }
    let mut k = LearnedKey {
        vip_index,
        cid_len: cid.len() as u8,
        ..LearnedKey::default()
    };
    k.cid[..cid.len()].copy_from_slice(cid);
    Some(k)
}

/// Whether aya attaches TC programs through TCX links here (kernel 6.6 and later, the test
/// `SchedClassifier::attach` makes) rather than netlink and a `clsact` qdisc.
fn attaches_through_tcx() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// The reply-table key of replies from `backend` to `client` over `proto`.
pub fn reply_flow_key(
    backend: std::net::SocketAddr,
    client: std::net::SocketAddr,
    proto: u8,
) -> FlowKey {
    let (src, family) = addr_key(backend.ip());
    FlowKey {
        src,
        dst: addr_key(client.ip()).0,
        sport: backend.port(),
        dport: client.port(),
        proto,
        family,
        _pad: [0; 2],
    }
}

fn check_l4_proto(proto: u8) -> Result<()> {
    if proto == PROTO_UDP || proto == PROTO_TCP {
        Ok(())
    } else {
        Err(DataplaneError::Invalid(format!(
            "protocol {proto}: lb steers and rewrites only UDP ({PROTO_UDP}) and TCP ({PROTO_TCP})"
        )))
    }
}

/// The interface name for `ifindex` in the calling thread's network namespace.
fn ifname(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE octets, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(DataplaneError::Invalid(format!(
            "no interface with index {ifindex} in this network namespace: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

impl Dataplane {
    fn rnat_prog(&mut self) -> Result<&mut SchedClassifier> {
        self.classifier(program_names::TC_RNAT)
    }

    /// Load (verify) the reverse-NAT TC program; a no-op if it is loaded already. `load`
    /// leaves it out, so a node without backends never pays for it.
    pub fn load_rnat(&mut self) -> Result<()> {
        let prog = self.rnat_prog()?;
        if prog.fd().is_ok() {
            return Ok(());
        }
        prog.load().map_err(prog_err(program_names::TC_RNAT))
    }

    // ---- the reply table -----------------------------------------------------------

    /// Capacity of the reply table, as loaded.
    pub fn reply_capacity(&self) -> u32 {
        self.reply_capacity
    }

    /// Every entry of the reply table: (the reply's 5-tuple, where it must come from).
    pub fn reply_flows(&self) -> Vec<(FlowKey, ReplyNat)> {
        self.reply_entries().unwrap_or_default()
    }

    fn reply_entries(&self) -> Result<Vec<(FlowKey, ReplyNat)>> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let fd = self.replies.map().fd().as_fd().as_raw_fd();
        crate::map_batch::lookup_all(fd).map_err(|e| {
            DataplaneError::Invalid(format!("reading {} in batches: {e}", map_names::REPLIES))
        })
    }

    /// The entry for replies from `backend` to `client` over `proto`, if any.
    pub fn reply_flow(
        &self,
        backend: std::net::SocketAddr,
        client: std::net::SocketAddr,
        proto: u8,
    ) -> Option<ReplyNat> {
        self.replies
            .get(&reply_flow_key(backend, client, proto), 0)
            .ok()
    }

    /// Write a reply-table entry directly, as the XDP program would when steering a flow of
    /// `client` through `vip` to `backend` (tests, the bench). `backend_id` is what
    /// learned-CID mode records; `None` for an entry like another node's (no local id). The
    /// VIP's index and learned-CID length come from `LB_VIPS` (0 when it is not there).
    pub fn set_reply_flow(
        &mut self,
        backend: std::net::SocketAddr,
        client: std::net::SocketAddr,
        proto: u8,
        vip: std::net::SocketAddr,
        backend_id: Option<u32>,
    ) -> Result<()> {
        check_l4_proto(proto)?;
        if backend.is_ipv4() != vip.is_ipv4() || client.is_ipv4() != vip.is_ipv4() {
            return Err(DataplaneError::Invalid(format!(
                "reply entry {backend} -> {client} from VIP {vip}: the families differ \
                 (lb does not translate between IPv4 and IPv6)"
            )));
        }
        let meta = self
            .vip(&vip_key(vip.ip(), vip.port(), proto))
            .unwrap_or_default();
        let value = ReplyNat {
            vip: addr_key(vip.ip()).0,
            vip_port: vip.port(),
            vip_index: meta.index,
            learned_cid_len: meta.learned_cid_len() as u8,
            backend: backend_id.unwrap_or(lb_common::REPLY_NO_BACKEND),
            flags: if backend_id.is_none() {
                lb_common::REPLY_F_PEER
            } else {
                0
            },
            last_ns: monotonic_ns(),
            ..ReplyNat::default()
        };
        self.replies
            .insert(reply_flow_key(backend, client, proto), value, 0)
            .map_err(map_err(map_names::REPLIES))
    }

    /// Write one reply-table entry exactly as given (tests and debugging: flags and
    /// timestamps of one's choosing).
    pub fn set_reply_nat(
        &mut self,
        backend: std::net::SocketAddr,
        client: std::net::SocketAddr,
        proto: u8,
        nat: &ReplyNat,
    ) -> Result<()> {
        check_l4_proto(proto)?;
        self.replies
            .insert(reply_flow_key(backend, client, proto), nat, 0)
            .map_err(map_err(map_names::REPLIES))
    }

    /// Delete the reply-table entries idle past their timeout at `now_ns`
    /// ([`monotonic_ns`]), and then the connection-table entry of each one's flow, so the
    /// flow's next packet records it again (in that order: a packet between the two
    /// deletes finds no table entry and records the flow anew). Read and deleted in
    /// batches ([`crate::map_batch`]); an entry deleted meanwhile is fine.
    pub fn sweep_replies(&mut self, now_ns: u64, timeouts: &ReplyTimeouts) -> Result<SweepStats> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let entries = self.reply_entries()?;
        let mut stats = SweepStats {
            scanned: entries.len(),
            expired: 0,
        };
        let (doomed, flows): (Vec<FlowKey>, Vec<FlowKey>) = entries
            .iter()
            .filter(|(k, v)| timeouts.expired(v, k.proto, now_ns))
            .map(|(k, v)| (*k, flow_of_reply(k, v)))
            .unzip();
        let batch_err = |what: &'static str| {
            move |e: std::io::Error| DataplaneError::Invalid(format!("deleting from {what}: {e}"))
        };
        let fd = self.replies.map().fd().as_fd().as_raw_fd();
        stats.expired =
            crate::map_batch::delete_all(fd, &doomed).map_err(batch_err(map_names::REPLIES))?;
        // Only the flows that have a connection-table entry (QUIC routed by connection ID
        // has none): a batch delete stops at each missing key.
        let fd = self.conns.map().fd().as_fd().as_raw_fd();
        if !flows.is_empty() {
            let pinned: std::collections::HashSet<FlowKey> =
                crate::map_batch::lookup_all::<FlowKey, ConnEntry>(fd)
                    .map_err(batch_err(map_names::CONNS))?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
            let flows: Vec<FlowKey> = flows.into_iter().filter(|f| pinned.contains(f)).collect();
            crate::map_batch::delete_all(fd, &flows).map_err(batch_err(map_names::CONNS))?;
        }
        Ok(stats)
    }

    /// Learned-CID mode: the backend id learned for `cid` under VIP `vip_index`, if any.
    pub fn learned_cid(&self, vip_index: u32, cid: &[u8]) -> Option<u32> {
        self.learned.get(&learned_key(vip_index, cid)?, 0).ok()
    }

    /// Learned-CID mode: every learned (VIP index, CID, backend id).
    pub fn learned_cids(&self) -> Vec<(u32, Vec<u8>, u32)> {
        self.learned
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k.vip_index, k.cid[..k.cid_len as usize].to_vec(), v))
            .collect()
    }

    /// Forget every CID learned for VIP `vip_index` (returns how many).
    pub fn clear_learned(&mut self, vip_index: u32) -> Result<usize> {
        let keys: Vec<LearnedKey> = self
            .learned
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.vip_index == vip_index)
            .collect();
        for k in &keys {
            // Gone already (LRU eviction) is fine.
            let _ = self.learned.remove(k);
        }
        Ok(keys.len())
    }

    pub fn rnat_stats(&self) -> Result<RnatCounters> {
        let mut out = RnatCounters::default();
        for r in RnatReason::ALL {
            let v = self
                .rnat_stats
                .get(&(r as u32), 0)
                .map_err(map_err(map_names::RNAT_STATS))?;
            out.0[r as usize] = sum(&v);
        }
        Ok(out)
    }

    /// Attach the reverse NAT to TC ingress of `ifindex` (an interface that faces backends,
    /// in the calling thread's network namespace). Kernels from 6.6 on attach through TCX and
    /// need nothing else; older ones attach by netlink, which needs the `clsact` qdisc, added
    /// here if missing. Only there: adding a qdisc resets the device's queueing and loses
    /// what the node is sending to the pod at that instant (a kubelet probe's SYN, say).
    pub fn attach_rnat(&mut self, ifindex: u32) -> Result<()> {
        if self.rnat_links.contains_key(&ifindex) {
            return Err(DataplaneError::Invalid(format!(
                "reverse NAT is already attached to ifindex {ifindex}"
            )));
        }
        let name = ifname(ifindex)?;
        self.load_rnat()?;
        if !attaches_through_tcx()
            && let Err(e) = aya::programs::tc::qdisc_add_clsact(&name)
        {
            let exists = match &e {
                aya::programs::tc::TcError::NetlinkError(n) => {
                    n.raw_os_error() == Some(libc::EEXIST)
                }
                aya::programs::tc::TcError::AlreadyAttached => true,
                _ => false,
            };
            if !exists {
                return Err(DataplaneError::Invalid(format!(
                    "adding the clsact qdisc to {name} (ifindex {ifindex}): {e}"
                )));
            }
        }
        let id = self
            .rnat_prog()?
            .attach(&name, TcAttachType::Ingress)
            .map_err(prog_err(program_names::TC_RNAT))?;
        self.rnat_links.insert(ifindex, id);
        // Backends out of this interface are local: no steering mark towards them.
        self.set_iface_flag(ifindex, IFACE_F_BACKEND, true)
    }

    /// The interfaces the reverse NAT is attached to, as the XDP program sees them.
    pub fn backend_ifindexes(&self) -> Vec<u32> {
        self.ifindexes_with(IFACE_F_BACKEND)
    }

    /// The interfaces the XDP program may redirect to natively, as it sees them.
    pub fn xmit_ifindexes(&self) -> Vec<u32> {
        self.ifindexes_with(IFACE_F_XMIT)
    }

    fn ifindexes_with(&self, flag: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .ifaces
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, f)| f & flag != 0)
            .map(|(k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }

    /// Say whether `ifindex` takes a native XDP redirect (`IFACE_F_XMIT`; see
    /// `lb_common::egress` and [`set_xmit_only`](Self::set_xmit_only)).
    pub fn set_iface_xmit(&mut self, ifindex: u32, on: bool) -> Result<()> {
        self.set_iface_flag(ifindex, IFACE_F_XMIT, on)
    }

    /// Set or clear one `IFACE_F_*` bit of `ifindex`, deleting entries left with none.
    fn set_iface_flag(&mut self, ifindex: u32, flag: u32, on: bool) -> Result<()> {
        let old = self.ifaces.get(&ifindex, 0).unwrap_or(0);
        let new = if on { old | flag } else { old & !flag };
        if new == old && (new != 0 || !on) {
            return Ok(());
        }
        if new == 0 {
            // Gone already (an interface that vanished) is fine.
            let _ = self.ifaces.remove(&ifindex);
            return Ok(());
        }
        self.ifaces
            .insert(ifindex, new, 0)
            .map_err(map_err(map_names::IFACES))
    }

    /// Whether the reverse NAT forwards rewritten replies itself (`RNAT_F_FORWARD`: FIB
    /// lookup and redirect, bypassing the node's stack and netfilter) or hands them to the
    /// stack (the state after `load`).
    pub fn set_rnat_forward(&mut self, on: bool) -> Result<()> {
        let v = lb_common::RnatSettings {
            flags: if on { lb_common::RNAT_F_FORWARD } else { 0 },
        };
        self.rnat_cfg
            .set(0, v, 0)
            .map_err(map_err(map_names::RNAT_CFG))
    }

    pub fn rnat_forward(&self) -> Result<bool> {
        let v = self
            .rnat_cfg
            .get(&0, 0)
            .map_err(map_err(map_names::RNAT_CFG))?;
        Ok(v.flags & lb_common::RNAT_F_FORWARD != 0)
    }

    /// Detach what `attach_rnat` attached to `ifindex` (the clsact qdisc stays).
    pub fn detach_rnat(&mut self, ifindex: u32) -> Result<()> {
        let Some(id) = self.rnat_links.remove(&ifindex) else {
            return Err(DataplaneError::Invalid(format!(
                "reverse NAT is not attached to ifindex {ifindex}"
            )));
        };
        self.set_iface_flag(ifindex, IFACE_F_BACKEND, false)?;
        self.rnat_prog()?
            .detach(id)
            .map_err(prog_err(program_names::TC_RNAT))
    }

    /// Run the reverse NAT once on `packet` (a whole Ethernet frame) through
    /// BPF_PROG_TEST_RUN. The kernel builds the skb on the calling namespace's loopback and
    /// starts the program at the Ethernet header, as at TC ingress. Loads the program first
    /// if needed. The kernel refuses (EINVAL) an untagged IPv4/IPv6 frame too short for its
    /// IP header (Linux 6.18 checks this; it does not look under a VLAN tag).
    pub fn test_run_rnat(&mut self, packet: &[u8]) -> Result<RunResult> {
        if packet.len() < 14 {
            return Err(DataplaneError::Invalid(format!(
                "a TC test run needs a whole Ethernet header; got {} octets",
                packet.len()
            )));
        }
        self.load_rnat()?;
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::new()
        };
        let r = self
            .rnat_prog()?
            .test_run(opts)
            .map_err(prog_err("test_run"))?;
        out.truncate(r.data_size_out as usize);
        Ok(RunResult {
            verdict: r.return_value,
            data: out,
            duration: r.duration,
        })
    }
}

/// The `LB_SRC_RANGES` key of `net` under VIP `vip_index`.
fn source_range_lpm_key(vip_index: u32, net: ipnet::IpNet) -> Result<LpmKey<SourceRangeKey>> {
    if net.trunc() != net {
        return Err(DataplaneError::Invalid(format!(
            "source range {net} has host bits set; use {}",
            net.trunc()
        )));
    }
    let (a, family) = addr_key(net.addr());
    Ok(LpmKey::new(
        source_range_prefix_len(family, net.prefix_len()),
        source_range_key(vip_index, &a, family),
    ))
}

fn net_of_source_range_key(k: &LpmKey<SourceRangeKey>) -> Option<ipnet::IpNet> {
    let (d, bits) = (k.data(), k.prefix_len().checked_sub(32)?);
    let mapped = d.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if mapped && bits >= 96 {
        let v4 = std::net::Ipv4Addr::new(d.addr[12], d.addr[13], d.addr[14], d.addr[15]);
        ipnet::Ipv4Net::new(v4, (bits - 96) as u8)
            .ok()
            .map(Into::into)
    } else {
        ipnet::Ipv6Net::new(d.addr.into(), bits as u8)
            .ok()
            .map(Into::into)
    }
}

fn server_id_key(vip_index: u32, config_id: u8, sid: &[u8]) -> Result<ServerIdKey> {
    if sid.is_empty() || sid.len() > lb_common::QUIC_LB_MAX_SID_LEN {
        return Err(DataplaneError::Invalid(format!(
            "server ID of {} octets; QUIC-LB server IDs are 1..={} octets",
            sid.len(),
            lb_common::QUIC_LB_MAX_SID_LEN
        )));
    }
    let mut key = ServerIdKey {
        vip_index,
        config_id,
        sid_len: sid.len() as u8,
        _pad: [0; 2],
        sid: [0; 16],
    };
    key.sid[..sid.len()].copy_from_slice(sid);
    Ok(key)
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn run(xdp: &Xdp, packet: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<RunResult> {
    // Room for growth; the program never grows a packet today.
    let mut out = vec![0u8; packet.len() + 256];
    let md = XdpMd {
        data_end: packet.len() as u32,
        ingress_ifindex,
        ..Default::default()
    };
    // SAFETY: XdpMd is repr(C) plain data.
    let md_bytes = unsafe {
        std::slice::from_raw_parts(
            (&md as *const XdpMd).cast::<u8>(),
            std::mem::size_of::<XdpMd>(),
        )
    };
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: if ingress_ifindex != 0 {
            Some(md_bytes)
        } else {
            None
        },
        repeat,
        ..TestRunOptions::new()
    };
    let r = xdp.test_run(opts).map_err(prog_err("test_run"))?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value,
        data: out,
        duration: r.duration,
    })
}

/// Runs `lb_xdp` through BPF_PROG_TEST_RUN on its own duplicate of the program's file
/// descriptor, so another thread can send packets while the [`Dataplane`] is being changed
/// (what the ring-flip test does). `Send`; the program stays loaded while either lives.
pub struct XdpRunner {
    prog: std::os::fd::OwnedFd,
}

/// `union bpf_attr`'s `test` member.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

impl Dataplane {
    /// A [`XdpRunner`] for `lb_xdp`.
    pub fn xdp_runner(&self) -> Result<XdpRunner> {
        use std::os::fd::AsFd;
        let prog = self.xdp_ref(program_names::XDP_LB)?;
        let fd = prog.fd().map_err(prog_err(program_names::XDP_LB))?;
        let prog = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| DataplaneError::Invalid(format!("duplicating the program fd: {e}")))?;
        Ok(XdpRunner { prog })
    }
}

impl XdpRunner {
    /// One run of `packet` arriving on `ingress_ifindex`.
    pub fn run(&self, packet: &[u8], ingress_ifindex: u32) -> Result<RunResult> {
        use std::os::fd::AsRawFd;
        let mut out = vec![0u8; packet.len() + 256];
        let md = XdpMd {
            data_end: packet.len() as u32,
            ingress_ifindex,
            ..Default::default()
        };
        let mut attr = TestRunAttr {
            prog_fd: self.prog.as_raw_fd() as u32,
            data_size_in: packet.len() as u32,
            data_size_out: out.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
            ctx_in: &md as *const XdpMd as u64,
            ..TestRunAttr::default()
        };
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        // SAFETY: bpf(2) with an attribute struct of the size we pass; its pointers point at
        // buffers that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(DataplaneError::Invalid(format!(
                "BPF_PROG_TEST_RUN: {}",
                std::io::Error::last_os_error()
            )));
        }
        out.truncate(attr.data_size_out as usize);
        Ok(RunResult {
            verdict: attr.retval,
            data: out,
            duration: Duration::from_nanos(attr.duration as u64),
        })
    }
}

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it in `ctx_in` for TC programs: all zero
/// but `ifindex` (the device the skb is built on; the program's FIB lookups start there).
#[repr(C)]
struct SkBuffCtx {
    before_ifindex: [u32; 10],
    ifindex: u32,
    rest: [u32; 37],
}

fn run_tc(prog: &SchedClassifier, packet: &[u8], ifindex: u32, repeat: u32) -> Result<RunResult> {
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = SkBuffCtx {
        before_ifindex: [0; 10],
        ifindex,
        rest: [0; 37],
    };
    // SAFETY: SkBuffCtx is repr(C) plain data (192 octets, the size of `struct __sk_buff`).
    let ctx_bytes = unsafe {
        std::slice::from_raw_parts(
            (&ctx as *const SkBuffCtx).cast::<u8>(),
            std::mem::size_of::<SkBuffCtx>(),
        )
    };
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: (ifindex != 0).then_some(ctx_bytes),
        repeat,
        ..TestRunOptions::new()
    };
    let r = prog.test_run(opts).map_err(prog_err("test_run"))?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value,
        data: out,
        duration: r.duration,
    })
}

impl Dataplane {
    /// What [`map_usage::UsageReader`](crate::map_usage::UsageReader) needs to read how full
    /// the sizable maps are, off the caller's lock: duplicates of their file descriptors.
    /// `vips` and `backends` are the VIPs and backend ids in use (arrays have every slot,
    /// so their use is the daemon's to say).
    pub fn usage_reader(&self, vips: u64, backends: u64) -> Result<crate::map_usage::UsageReader> {
        use crate::map_usage::{Count, MapHandle, UsageReader};
        use aya::maps::IterableMap;
        use std::os::fd::AsFd;
        let c = &self.capacity;
        let dup = |name: &'static str, data: &MapData| {
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| DataplaneError::Invalid(format!("duplicating {name}'s fd: {e}")))
        };
        let rows: [(&'static str, &'static str, u32, Count, &MapData); 10] = [
            (
                map_names::VIPS,
                "[capacity] vips",
                c.vips,
                Count::Vips,
                self.vips.map(),
            ),
            (
                map_names::VIP_STATS,
                "[capacity] vips",
                c.vips,
                Count::Known(vips),
                self.vip_stats.map(),
            ),
            (
                map_names::BACKENDS,
                "[capacity] backends",
                c.backends,
                Count::Known(backends),
                self.backends.map(),
            ),
            (
                map_names::BACKEND_STATS,
                "[capacity] backends",
                c.backends,
                Count::Known(backends),
                self.backend_stats.map(),
            ),
            (
                map_names::MAGLEV,
                "[capacity] maglev_slots",
                c.maglev_slots,
                Count::Known(self.ring_pool.used() + self.ring_pool.in_grace()),
                self.maglev.map(),
            ),
            (
                map_names::SERVER_IDS,
                "[capacity] server_ids",
                c.server_ids,
                Count::ServerIds,
                self.server_ids.map(),
            ),
            (
                map_names::QUIC_CFG,
                "[capacity] quic_configs",
                c.quic_configs,
                Count::QuicConfigs,
                self.quic_cfg.map(),
            ),
            (
                map_names::CONNS,
                "[capacity] conn_table_size",
                c.conn_table_size,
                Count::Conns,
                self.conns.map(),
            ),
            (
                map_names::LEARNED,
                "[capacity] learned_cids",
                c.learned_cids,
                Count::Learned,
                self.learned.map(),
            ),
            (
                map_names::REPLIES,
                "[reverse_nat] max_flows",
                self.reply_capacity,
                Count::Replies,
                self.replies.map(),
            ),
        ];
        let mut maps = Vec::with_capacity(rows.len());
        for (map, setting, capacity, count, data) in rows {
            maps.push(MapHandle {
                map,
                setting,
                capacity: capacity as u64,
                count,
                fd: dup(map, data)?,
            });
        }
        Ok(UsageReader { maps })
    }
}

impl Dataplane {
    /// Write `flows` into the connection table (`LB_CONNS`) in batches
    /// ([`crate::map_batch::update_all`], 4,096 entries per system call): a million flows in
    /// about 250 calls, where one update per flow would be a million. What the benchmark
    /// uses to measure lookups in a full table; the daemon never writes flows (the program
    /// records them). An entry of an existing flow is replaced. The table is an LRU: past
    /// its capacity, older flows are evicted to make room.
    pub fn fill_conn_table(&mut self, flows: &[(FlowKey, ConnEntry)]) -> Result<()> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let (keys, values): (Vec<FlowKey>, Vec<ConnEntry>) = flows.iter().copied().unzip();
        let fd = self.conns.map().fd().as_fd().as_raw_fd();
        crate::map_batch::update_all(fd, &keys, &values).map_err(|e| {
            DataplaneError::Invalid(format!("writing flows to {}: {e}", map_names::CONNS))
        })
    }

    /// How many flows the connection table holds, valid or not, read in batches (a million
    /// entries walked one key at a time would be two million system calls).
    pub fn conn_table_len(&self) -> Result<usize> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let fd = self.conns.map().fd().as_fd().as_raw_fd();
        crate::map_batch::lookup_all::<FlowKey, ConnEntry>(fd)
            .map(|all| all.len())
            .map_err(|e| DataplaneError::Invalid(format!("reading {}: {e}", map_names::CONNS)))
    }
}
