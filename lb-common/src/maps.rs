//! Map layouts shared by the XDP program and userspace. Every key and value is `#[repr(C)]`
//! with explicit padding so the bytes userspace writes are the bytes the program reads.
//!
//! Conventions: addresses are 16 octets; an IPv4 address sits in the first four octets and
//! the rest are zero. Ports are host-order numbers (the program converts from the wire).

/// Address family tags used in keys (not the kernel's AF_* numbers, so a zeroed key is
/// never a valid family).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// The `proto` of keys: the IP protocol number.
pub use crate::wire::{PROTO_TCP, PROTO_UDP};

/// Default capacities: the maps are declared with these sizes, and userspace sets each
/// map's size when it loads the object (`[capacity]` in the config; see the capacity docs
/// for what each costs in kernel memory).
pub const DEFAULT_VIPS: u32 = 32_768;
pub const DEFAULT_BACKENDS: u32 = 65_536;
pub const DEFAULT_SERVER_IDS: u32 = 65_536;
/// Flows in the connection table (`LB_CONNS`, an LRU shared by all CPUs).
pub const DEFAULT_CONN_TABLE: u32 = 1_048_576;
/// Capacity of `LB_LEARNED` (an LRU: the oldest learned CIDs go first).
pub const DEFAULT_LEARNED_CIDS: u32 = 262_144;
/// QUIC-LB configurations over all VIPs (`LB_QUIC_CFG`): one per VIP and config rotation
/// value in use.
pub const DEFAULT_QUIC_CONFIGS: u32 = 16_384;
/// Slots in the shared pool of Maglev rings (`LB_MAGLEV`), four octets each.
pub const DEFAULT_MAGLEV_SLOTS: u32 = 16_777_216;
/// Capacity of `LB_SRC_RANGES`: allowed client prefixes over all VIPs (each data-plane VIP,
/// i.e. each address, port and protocol, holds its own copy of its entry's ranges).
pub const MAX_SOURCE_RANGES: u32 = 16384;

/// Largest Maglev ring of one VIP (prime). Rings are sized to their backends
/// ([`crate::maglev::ring_size_for`]); a VIP with more than `MAGLEV_RING_MAX / 128` backends
/// gets this many slots, fewer than 128 per backend.
pub const MAGLEV_RING_MAX: u32 = 131_071;
/// Smallest ring sized automatically (prime): a VIP with one or two backends still gets
/// enough slots that adding a third moves few flows.
pub const MAGLEV_RING_MIN: u32 = 257;
/// Slots per backend an automatically sized ring has at least (below the ceiling).
pub const MAGLEV_SLOTS_PER_BACKEND: u32 = 128;

/// QUIC-LB config rotation values are the top three bits of the first DCID octet: 0..=6 are
/// configs, 0b111 is always unroutable ([`quic_config_key`]).
// The codec's limits (`quic_lb` depends on nothing here; the layouts depend on it).
pub const QUIC_LB_UNROUTABLE_CR: u8 = crate::quic_lb::UNROUTABLE_CONFIG_ID;
/// Longest server ID: server ID + nonce <= 19 octets and nonce >= 4 octets.
pub const QUIC_LB_MAX_SID_LEN: usize = crate::quic_lb::MAX_SERVER_ID_LEN;
pub const QUIC_LB_MAX_CID_LEN: usize = crate::quic_lb::MAX_CID_LEN;

/// Map names as they appear in the BPF object (and in `bpftool map`). Kernel names are at
/// most 15 characters.
pub mod map_names {
    pub const VIPS: &str = "LB_VIPS";
    pub const BACKENDS: &str = "LB_BACKENDS";
    pub const MAGLEV: &str = "LB_MAGLEV";
    pub const SERVER_IDS: &str = "LB_SERVER_IDS";
    pub const QUIC_CFG: &str = "LB_QUIC_CFG";
    pub const CONNS: &str = "LB_CONNS";
    pub const STATS: &str = "LB_STATS";
    pub const VIP_STATS: &str = "LB_VIP_STATS";
    pub const BACKEND_STATS: &str = "LB_BE_STATS";
    pub const FIB_CACHE: &str = "LB_FIB_CACHE";
    pub const SETTINGS: &str = "LB_SETTINGS";
    pub const BENCH_TEMPLATE: &str = "BENCH_TEMPLATE";
    pub const BENCH_TARGET: &str = "BENCH_TARGET";
    /// `lb_xdp`'s tail call for packets that may carry a steering mark: `[0]` = `lb_xdp_peer`.
    pub const PEER_PROG: &str = "LB_PEER_PROG";
    /// The TC harness's tail-call target: the reverse NAT, or the empty TC program.
    pub const BENCH_TC_TARGET: &str = "BENCH_TC_TARGET";
    /// Reverse NAT: the reply of every flow lb steered (the reply's own 5-tuple) -> the VIP
    /// and port it must leave from ([`ReplyNat`](super::ReplyNat)).
    pub const REPLIES: &str = "LB_REPLIES";
    /// What the XDP program must know of the node's interfaces (ifindex -> `IFACE_F_*`):
    /// where the reverse NAT is attached ([`IFACE_F_BACKEND`](super::IFACE_F_BACKEND): a
    /// backend reached out of any other interface is behind another node, and its packets
    /// carry the steering mark) and which take a native XDP redirect
    /// ([`IFACE_F_XMIT`](super::IFACE_F_XMIT)).
    pub const IFACES: &str = "LB_IFACES";
    /// Per-CPU counters of the reverse-NAT program, one slot per [`RnatReason`](super::RnatReason).
    pub const RNAT_STATS: &str = "LB_RNAT_STATS";
    /// Learned-CID mode: (VIP index, server-chosen CID) -> backend id, filled by the reverse
    /// NAT from the backends' long-header replies.
    pub const LEARNED: &str = "LB_LEARNED";
    /// loadBalancerSourceRanges: LPM trie of (VIP index, client prefix) for VIPs with
    /// [`VIP_F_SOURCE_RANGES`](super::VIP_F_SOURCE_RANGES).
    pub const SOURCE_RANGES: &str = "LB_SRC_RANGES";
    /// `LB_RNAT_CFG[0]`: run-time knobs of the reverse-NAT program ([`RnatSettings`](super::RnatSettings)).
    pub const RNAT_CFG: &str = "LB_RNAT_CFG";
}

/// Program names in the BPF object.
pub mod program_names {
    /// The load balancer: XDP on the node's external interface(s).
    pub const XDP_LB: &str = "lb_xdp";
    /// The backend's node: packets with another node's steering mark (tail-called by
    /// `lb_xdp` through `LB_PEER_PROG`).
    pub const XDP_PEER: &str = "lb_xdp_peer";
    /// Benchmark harness: restores the template packet, then tail-calls `BENCH_TARGET[0]`.
    pub const BENCH_HARNESS: &str = "lb_bench_harness";
    /// Does nothing (XDP_PASS): the floor every benchmark ratio is taken against.
    pub const BENCH_EMPTY: &str = "lb_bench_empty";
    /// The same harness for TC: restores the template skb, then tail-calls
    /// `BENCH_TC_TARGET[0]`.
    pub const BENCH_TC_HARNESS: &str = "lb_bench_tc_harness";
    /// Does nothing (TC_ACT_OK): the floor of the TC cases.
    pub const BENCH_TC_EMPTY: &str = "lb_bench_tc_empty";
    /// Reverse NAT: TC (clsact ingress) on the interfaces that face backends.
    pub const TC_RNAT: &str = "lb_tc_rnat";
}

/// `LB_VIPS` key: (address, port, protocol). Four-octet aligned, like every key and value
/// holding an address, so the XDP program moves addresses as 32-bit words.
#[repr(C, align(4))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// The VIP routes QUIC packets by the server ID in their destination connection ID.
pub const VIP_F_QUIC_LB: u32 = 1;
/// Learned-CID mode (for servers that pick random CIDs): the reverse NAT records the
/// source connection ID of each backend's long-header replies in `LB_LEARNED`, and the XDP
/// program routes packets whose DCID is such a CID to that backend. The CID length (the
/// server's, 1..=20) is in bits 8..16 of the flags ([`VipMeta::learned_cid_len`]).
pub const VIP_F_LEARNED_CID: u32 = 2;
/// Shift of the learned CID length in `VipMeta::flags`.
pub const VIP_LEARNED_CID_LEN_SHIFT: u32 = 8;
/// Kubernetes `loadBalancerSourceRanges`: only clients whose source address falls in one of
/// the VIP's prefixes in `LB_SRC_RANGES` get through; the others are dropped
/// (`drop_source_range`). VIPs without the flag never look at the trie.
pub const VIP_F_SOURCE_RANGES: u32 = 4;
/// Kubernetes `sessionAffinity: ClientIP`: Maglev hashes only the client address
/// ([`affinity_key`]), so every new flow of one client picks the same backend while the
/// ring is unchanged. The connection table still pins each flow; QUIC packets routed by
/// connection ID are unaffected (the CID names the backend).
pub const VIP_F_AFFINITY_CLIENT_IP: u32 = 8;

/// `VipMeta::flags` for learned-CID mode with CIDs of `cid_len` octets.
pub const fn learned_cid_flags(cid_len: u8) -> u32 {
    VIP_F_LEARNED_CID | ((cid_len as u32) << VIP_LEARNED_CID_LEN_SHIFT)
}

/// `LB_VIPS` value.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index of this VIP in `LB_VIP_STATS`, and its number in the keys of `LB_QUIC_CFG`,
    /// `LB_SERVER_IDS`, `LB_LEARNED` and `LB_SRC_RANGES`.
    pub index: u32,
    pub flags: u32,
    /// Prime number of slots in this VIP's Maglev ring (<= [`MAGLEV_RING_MAX`]); 0 means the
    /// VIP has no backends and its packets are dropped (counted as `DropNoBackend`).
    pub ring_size: u32,
    /// First slot of the VIP's live ring in the shared pool `LB_MAGLEV`. Userspace writes a
    /// new ring into free slots and then replaces this value (with `ring_size`) in one map
    /// update, so a packet sees the old ring or the new one, never a half-written one; the
    /// old slots are reused only after every packet that could have read them is done.
    pub ring_offset: u32,
}

impl VipMeta {
    /// The server CID length of a VIP in learned-CID mode; 0 when the mode is off.
    #[inline(always)]
    pub fn learned_cid_len(&self) -> usize {
        if self.flags & VIP_F_LEARNED_CID == 0 {
            0
        } else {
            ((self.flags >> VIP_LEARNED_CID_LEN_SHIFT) & 0xff) as usize
        }
    }
}

/// `LB_QUIC_CFG` key: the VIP's index and the config rotation value (0..=6), as one word.
#[inline(always)]
pub const fn quic_config_key(vip_index: u32, config_id: u8) -> u32 {
    (vip_index << 3) | (config_id as u32 & 7)
}

pub const BACKEND_F_VALID: u8 = 1;

/// `LB_BACKENDS` value, indexed by backend id.
#[repr(C, align(4))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub flags: u8,
}

/// `LB_SERVER_IDS` key: a QUIC-LB server ID under one config of one VIP. Eight-octet
/// aligned so the program fills `sid` with two 64-bit stores.
#[repr(C, align(8))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServerIdKey {
    pub vip_index: u32,
    pub config_id: u8,
    pub sid_len: u8,
    pub _pad: [u8; 2],
    /// The server ID in its first `sid_len` octets, zeros after.
    pub sid: [u8; 16],
}

/// QUIC-LB modes (`QuicLbConfig::mode`): `quic_lb::Mode as u8`, and 0 for a config
/// rotation value that is not configured.
pub const QUIC_LB_MODE_NONE: u8 = 0;
pub const QUIC_LB_MODE_PLAINTEXT: u8 = crate::quic_lb::Mode::Plaintext as u8;
pub const QUIC_LB_MODE_SINGLE_PASS: u8 = crate::quic_lb::Mode::SinglePass as u8;
pub const QUIC_LB_MODE_FOUR_PASS: u8 = crate::quic_lb::Mode::FourPass as u8;

/// `LB_QUIC_CFG` value, keyed by [`quic_config_key`] (VIP index, config rotation value): one
/// QUIC-LB configuration with its AES round keys expanded by userspace (the program never
/// runs the key schedule). 356 octets; the program reads it in place, never copies it.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct QuicLbConfig {
    pub mode: u8,
    pub sid_len: u8,
    pub nonce_len: u8,
    pub _pad: u8,
    /// Zero in plaintext mode.
    pub keys: crate::quic_lb::RoundKeys,
}

impl Default for QuicLbConfig {
    fn default() -> Self {
        QuicLbConfig {
            mode: QUIC_LB_MODE_NONE,
            sid_len: 0,
            nonce_len: 0,
            _pad: 0,
            keys: crate::quic_lb::RoundKeys::ZERO,
        }
    }
}

impl QuicLbConfig {
    /// The map value for a validated configuration.
    pub const fn from_config(cfg: &crate::quic_lb::Config) -> Self {
        QuicLbConfig {
            mode: cfg.mode() as u8,
            sid_len: cfg.server_id_len(),
            nonce_len: cfg.nonce_len(),
            _pad: 0,
            keys: cfg.round_keys(),
        }
    }

    /// Octets a CID must have to be decodable under this config (first octet included).
    #[inline(always)]
    pub fn cid_len(&self) -> usize {
        1 + self.sid_len as usize + self.nonce_len as usize
    }
}

/// `LB_CONNS` key: the client 5-tuple as it arrived (before DNAT).
#[repr(C, align(8))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The Maglev hash input of a VIP with [`VIP_F_AFFINITY_CLIENT_IP`]: the client address and
/// family of `flow`, everything else (destination, ports, protocol) zero.
#[inline(always)]
pub fn affinity_key(flow: &FlowKey) -> FlowKey {
    FlowKey {
        src: flow.src,
        dst: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        family: flow.family,
        _pad: [0; 2],
    }
}

pub const CONN_F_VALID: u32 = 1;

/// `LB_CONNS` value. The table is one LRU hash shared by all CPUs; `flags & CONN_F_VALID`
/// tells an entry the program wrote from an all-zero value (which would otherwise read as
/// backend 0).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    pub backend: u32,
    pub flags: u32,
}

/// The data of an `LB_SRC_RANGES` key (an LPM trie key is a prefix length, then this):
/// the VIP index, then the client address as IPv6, IPv4 as IPv4-mapped (`::ffff:a.b.c.d`),
/// so one trie serves both families. The prefix length covers the 32 bits of the index
/// (always matched whole) plus the address bits: [`source_range_prefix_len`].
#[repr(C, align(4))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    pub vip_index: u32,
    pub addr: [u8; 16],
}

/// Bits of an `LB_SRC_RANGES` key matched for a prefix of `len` bits of an address of
/// `family` (an IPv4 prefix sits behind the 96 bits of the IPv4-mapped form).
#[inline(always)]
pub const fn source_range_prefix_len(family: u8, len: u8) -> u32 {
    32 + if family == FAMILY_V4 { 96 } else { 0 } + len as u32
}

/// Prefix length of a lookup: the whole key.
pub const SOURCE_RANGE_LOOKUP_LEN: u32 = 32 + 128;

/// `LB_SRC_RANGES` key data for `addr` (a key-form address: IPv4 in the first four octets)
/// of `family` under VIP `vip_index`.
#[inline(always)]
pub fn source_range_key(vip_index: u32, addr: &[u8; 16], family: u8) -> SourceRangeKey {
    let mut k = SourceRangeKey {
        vip_index,
        addr: *addr,
    };
    if family == FAMILY_V4 {
        k.addr = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
        ];
    }
    k
}

/// Per-CPU counter slot.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// All reason counters of one scope (the whole program, or one VIP) in one map value, so
/// the program finds them with one lookup per scope and then bumps fields.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CounterBlock {
    pub by_reason: [Counter; REASON_STRIDE as usize],
}

impl Default for CounterBlock {
    fn default() -> Self {
        CounterBlock {
            by_reason: [Counter::default(); REASON_STRIDE as usize],
        }
    }
}

/// `LB_VIP_STATS` value, per CPU, indexed by VIP index: what one VIP's packets did, in 32
/// octets. The reasons in full are counted node-wide only (`LB_STATS`): a block of every
/// reason per VIP per CPU would cost 512 octets, 640 MiB for 20,000 VIPs on 64 CPUs; this
/// costs 40 MiB there. [`Reason::vip_class`] says which reasons count here.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VipCounter {
    /// Every packet that matched the VIP, once, whatever happened to it.
    pub packets: u64,
    /// Their octets, as the frames arrived.
    pub bytes: u64,
    /// Those routed by connection ID: QUIC-LB server ID or learned CID.
    pub routed_cid: u64,
    /// Those dropped (every `drop_*` reason).
    pub dropped: u64,
}

impl VipCounter {
    /// What moved since `before` (counters only grow; a wrap shows as a wrap).
    pub fn delta(&self, before: &VipCounter) -> VipCounter {
        VipCounter {
            packets: self.packets.wrapping_sub(before.packets),
            bytes: self.bytes.wrapping_sub(before.bytes),
            routed_cid: self.routed_cid.wrapping_sub(before.routed_cid),
            dropped: self.dropped.wrapping_sub(before.dropped),
        }
    }
}

/// What a [`Reason`] adds to the VIP's [`VipCounter`] besides `packets` and `bytes`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum VipClass {
    /// Nothing more.
    Other,
    /// `routed_cid`.
    RoutedCid,
    /// `dropped`.
    Dropped,
}

/// Why a packet went where it went. `LB_STATS[0]` and `LB_VIP_STATS[vip index]` are
/// [`CounterBlock`]s with one slot per reason. Counters are events, not a partition: a VIP packet bumps
/// one steering reason (how its backend was chosen: `RoutedCid` or `RoutedLearnedCid`, or one
/// `Fallback*` and then `LruHit`/`Maglev`, or just `LruHit`/`Maglev` for TCP and plain UDP,
/// and learned-CID misses) and then one
/// forwarding reason (`Tx`, `Redirect`, `PassNoNeighbour`, `PassFibFailed`) or one `Drop*`
/// reason. A packet that is not steered bumps exactly one `Pass*` reason and is left
/// untouched.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...), or more than one VLAN tag.
    PassNotIp = 0,
    /// Truncated or inconsistent headers.
    PassMalformed = 1,
    /// No VIP for (destination address, port, protocol), or not UDP/TCP.
    PassNotVip = 2,
    /// IPv4 fragment (non-first fragments carry no ports, so all fragments pass).
    PassFragment = 3,
    /// IPv6 with an extension header before UDP/TCP.
    PassIpv6Ext = 4,
    /// QUIC packet whose DCID decoded to a known server ID.
    RoutedCid = 5,
    /// QUIC long header whose DCID is client-chosen (too short for the config): Initial/0-RTT.
    FallbackInitial = 6,
    /// QUIC DCID decoded to a server ID that no backend holds.
    FallbackUnknownServer = 7,
    /// QUIC DCID config rotation bits name a config this VIP does not have.
    FallbackNoConfig = 8,
    /// QUIC DCID unroutable: config rotation 0b111, short header too short, or not QUIC.
    FallbackUnroutable = 9,
    /// Backend taken from the connection table.
    LruHit = 10,
    /// Backend chosen by Maglev (and recorded in the connection table).
    Maglev = 11,
    /// Rewritten and sent back out of the ingress interface.
    Tx = 12,
    /// Rewritten and redirected to another interface.
    Redirect = 13,
    /// Rewritten, but the FIB has no neighbour entry: passed so the kernel resolves it.
    PassNoNeighbour = 14,
    /// Rewritten, but the FIB lookup failed otherwise (no route, forwarding off, MTU):
    /// passed to the kernel, which will route or reject it.
    PassFibFailed = 15,
    /// The VIP has no backends.
    DropNoBackend = 16,
    /// The connection table or ring named a backend id with no valid backend.
    DropBadBackend = 17,
    /// Moving the head of the frame failed (stripping the VLAN tag before a redirect,
    /// inserting or removing the steering mark, building an ICMP reply): the frame is half
    /// rewritten.
    DropAdjustFailed = 18,
    /// Forwarded with this CPU's cached FIB result for the backend (counted with `Tx` or
    /// `Redirect`); the others did a `bpf_fib_lookup`.
    FibCached = 19,
    /// Learned-CID mode: the DCID is a CID a backend chose (learned from its reply), and that
    /// backend got the packet.
    RoutedLearnedCid = 20,
    /// The VIP has `loadBalancerSourceRanges` and the client's address is in none of them.
    DropSourceRange = 21,
    /// The flow's reply entry could not be recorded: `LB_REPLIES` is full. The packet is
    /// dropped (its replies could not be rewritten); established flows keep their entries.
    DropFlowTableFull = 22,
    /// Counted with the forwarding reason: the backend is behind another node, so the
    /// packet left with the steering mark.
    MarkedForPeer = 23,
    /// Steering reason on the backend's node: the packet arrived with another node's
    /// steering mark; its flow was recorded, the mark removed, the packet delivered.
    FromPeer = 24,
    /// A steering mark naming a VIP this node does not have (configuration not yet in
    /// sync, or forged): dropped.
    DropBadMark = 25,
    /// The packet with the steering mark would exceed the egress MTU: the client was sent
    /// an ICMP "fragmentation needed" / ICMPv6 "packet too big" (XDP_TX) instead.
    IcmpTooBig = 26,
    /// Too big for the egress MTU with the steering mark, and no ICMP could be built (an
    /// IPv4 header with options): dropped.
    DropTooBig = 27,
    /// A packet with a steering mark whose backend is not behind this node: passed on with
    /// the mark, untouched.
    PassMarkTransit = 28,
    /// Rewritten, but the FIB's egress, or the ingress, takes no native XDP redirect (a
    /// tunnel: VXLAN, Geneve, IPIP, GRE, WireGuard; or any device userspace does not know
    /// takes one): passed to the kernel, whose routing and overlay carry it to the backend.
    PassKernelRoute = 29,
}

pub const REASON_COUNT: u32 = 30;
const _: () = assert!(REASON_COUNT <= REASON_STRIDE);
/// Slots in a [`CounterBlock`] (room for future reasons without a layout change).
pub const REASON_STRIDE: u32 = 32;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassMalformed,
        Reason::PassNotVip,
        Reason::PassFragment,
        Reason::PassIpv6Ext,
        Reason::RoutedCid,
        Reason::FallbackInitial,
        Reason::FallbackUnknownServer,
        Reason::FallbackNoConfig,
        Reason::FallbackUnroutable,
        Reason::LruHit,
        Reason::Maglev,
        Reason::Tx,
        Reason::Redirect,
        Reason::PassNoNeighbour,
        Reason::PassFibFailed,
        Reason::DropNoBackend,
        Reason::DropBadBackend,
        Reason::DropAdjustFailed,
        Reason::FibCached,
        Reason::RoutedLearnedCid,
        Reason::DropSourceRange,
        Reason::DropFlowTableFull,
        Reason::MarkedForPeer,
        Reason::FromPeer,
        Reason::DropBadMark,
        Reason::IcmpTooBig,
        Reason::DropTooBig,
        Reason::PassMarkTransit,
        Reason::PassKernelRoute,
    ];

    /// Stable snake_case name, used in metrics labels and the bench's counter proofs.
    /// What this reason adds to a VIP's [`VipCounter`] when counted for a VIP.
    #[inline(always)]
    pub const fn vip_class(self) -> VipClass {
        match self {
            Reason::RoutedCid | Reason::RoutedLearnedCid => VipClass::RoutedCid,
            Reason::DropNoBackend
            | Reason::DropBadBackend
            | Reason::DropAdjustFailed
            | Reason::DropSourceRange
            | Reason::DropFlowTableFull
            | Reason::DropBadMark
            | Reason::DropTooBig => VipClass::Dropped,
            _ => VipClass::Other,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassFragment => "pass_fragment",
            Reason::PassIpv6Ext => "pass_ipv6_ext",
            Reason::RoutedCid => "routed_cid",
            Reason::FallbackInitial => "fallback_initial",
            Reason::FallbackUnknownServer => "fallback_unknown_server",
            Reason::FallbackNoConfig => "fallback_no_config",
            Reason::FallbackUnroutable => "fallback_unroutable",
            Reason::LruHit => "lru_hit",
            Reason::Maglev => "maglev",
            Reason::Tx => "tx",
            Reason::Redirect => "redirect",
            Reason::PassNoNeighbour => "pass_no_neighbour",
            Reason::PassFibFailed => "pass_fib_failed",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropBadBackend => "drop_bad_backend",
            Reason::DropAdjustFailed => "drop_adjust_failed",
            Reason::FibCached => "fib_cached",
            Reason::RoutedLearnedCid => "routed_learned_cid",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DropFlowTableFull => "drop_flow_table_full",
            Reason::MarkedForPeer => "marked_for_peer",
            Reason::FromPeer => "from_peer",
            Reason::DropBadMark => "drop_bad_mark",
            Reason::IcmpTooBig => "icmp_too_big",
            Reason::DropTooBig => "drop_too_big",
            Reason::PassMarkTransit => "pass_mark_transit",
            Reason::PassKernelRoute => "pass_kernel_route",
        }
    }
}

/// `LB_FIB_CACHE` value, per CPU, in the slot [`fib_cache_slot`] of the backend id (a
/// direct-mapped cache of [`FIB_CACHE_SLOTS`] entries per CPU, tagged with the backend id,
/// so its memory does not grow with the number of backends): the last successful
/// `bpf_fib_lookup` for that backend. `bpf_fib_lookup` is the most expensive step of the
/// fast path (about as much as everything else together for IPv4, twice that for IPv6), and
/// its answer only changes when routes or neighbours do. Entries expire after
/// `Settings::fib_cache_ttl_ns`, and userspace clears a backend's entries whenever it
/// rewrites that backend. Only successes are cached: a missing neighbour or route always
/// goes back to the kernel. The key is (backend, ingress interface): policy routing that
/// picks a different next hop by client source address or TOS is not reflected until the
/// entry expires; set the TTL to 0 where that matters.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FibCacheEntry {
    /// `bpf_ktime_get_coarse_ns()` after which the entry is stale; 0 = empty.
    pub expires_ns: u64,
    /// The backend the entry is for: another backend sharing the slot misses, and replaces it.
    pub backend: u32,
    /// The lookup was for packets arriving here (the answer depends on it).
    pub ingress_ifindex: u32,
    pub egress_ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress MTU the lookup reported: a larger packet is looked up again, so the
    /// kernel's "fragmentation needed" handling is never bypassed.
    pub mtu: u16,
    /// Hits since the clock was last read: the program reads the clock (a helper call) only
    /// every [`FIB_CACHE_CLOCK_EVERY`] hits, so an expired entry may serve that many more
    /// packets on a CPU before it is looked up again.
    pub unchecked: u8,
    /// `FIB_HOP_*`: what `LB_IFACES` said about the egress when the entry was written.
    pub hop_flags: u8,
    pub _pad: u32,
}

/// [`FibCacheEntry::hop_flags`]: the egress is not a backend-facing interface: the backend
/// is behind another node, so packets to it carry the steering mark (when on).
pub const FIB_HOP_REMOTE: u8 = 1;
/// [`FibCacheEntry::hop_flags`]: the ingress and the egress take native XDP redirects
/// ([`IFACE_F_XMIT`]; `egress::xmit_path`).
pub const FIB_HOP_XMIT: u8 = 2;

/// Next-hop cache entries per CPU (a power of two). 40 octets each: 160 KiB per CPU.
pub const FIB_CACHE_SLOTS: u32 = 4096;

/// The `LB_FIB_CACHE` slot of a backend.
#[inline(always)]
pub const fn fib_cache_slot(backend_id: u32) -> u32 {
    backend_id & (FIB_CACHE_SLOTS - 1)
}

/// See [`FibCacheEntry::unchecked`].
pub const FIB_CACHE_CLOCK_EVERY: u8 = 32;

/// `LB_SETTINGS[0]`: run-time knobs of the XDP program.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// How long a cached FIB result may be used; 0 disables the cache.
    pub fib_cache_ttl_ns: u64,
    /// `SETTINGS_F_*`.
    pub flags: u32,
    pub _pad: u32,
}

/// [`Settings::flags`]: packets steered to a backend that is not behind one of this node's
/// backend-facing interfaces (`LB_IFACES` with [`IFACE_F_BACKEND`]) carry the steering mark ([`crate::mark`]),
/// so the node in front of the backend rewrites its replies. Off after loading.
pub const SETTINGS_F_MARK_REMOTE: u32 = 1;
/// [`Settings::flags`]: redirect (or `XDP_TX`) only between interfaces marked
/// [`IFACE_F_XMIT`] in `LB_IFACES`; a packet whose egress or ingress is any other interface
/// (a tunnel, a device without `ndo_xdp_xmit`) goes to the kernel rewritten
/// ([`Reason::PassKernelRoute`]), so the node's routing and overlay carry it
/// ([`crate::egress`]). Off after loading (every egress is
/// redirected, as the fixtures expect); `lb run` turns it on.
pub const SETTINGS_F_XMIT_ONLY: u32 = 2;

/// Default FIB cache lifetime: a neighbour or route change reaches the data plane within
/// this long even if nobody tells `lb`.
pub const FIB_CACHE_TTL_DEFAULT_NS: u64 = 100_000_000;

/// Longest packet the bench harness can restore.
pub const BENCH_TEMPLATE_MAX: usize = 256;

/// `BENCH_TEMPLATE[0]`: the packet every benchmark iteration starts from.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct BenchTemplate {
    pub len: u32,
    /// How far the program under test moves the frame's head (`bpf_xdp_adjust_head`'s
    /// delta: -8 inserting an IPv4 steering mark, +8 removing one, 0 for most paths). The
    /// XDP harness undoes it, and any change of the tail, before restoring the bytes, so
    /// every iteration starts from the same frame at the same place.
    pub head_delta: i32,
    pub data: [u8; BENCH_TEMPLATE_MAX],
}

/// Default capacity of `LB_REPLIES` (the `[reverse_nat] max_flows` setting overrides it at
/// load time).
pub const REPLY_TABLE_ENTRIES: u32 = 262_144;
/// Capacity of `LB_IFACES`.
pub const MAX_IFACES: u32 = 4096;

/// `LB_IFACES` value bit: the reverse NAT is attached here; a backend whose next hop is this
/// interface is behind this node (no steering mark).
pub const IFACE_F_BACKEND: u32 = 1;
/// `LB_IFACES` value bit: the interface takes a native XDP redirect (userspace's rule, by
/// device kind: veths, and physical NICs lb attached native XDP to). Consulted only with
/// [`SETTINGS_F_XMIT_ONLY`].
pub const IFACE_F_XMIT: u32 = 2;

/// [`ReplyNat::flags`]: a reply of the flow went through the reverse NAT.
pub const REPLY_F_REPLIED: u8 = 1;
/// [`ReplyNat::flags`]: a TCP FIN or RST went by, in either direction: the flow is ending.
pub const REPLY_F_CLOSING: u8 = 2;
/// [`ReplyNat::flags`]: recorded from another node's steering mark ([`crate::mark`]): the
/// flow was steered elsewhere and only delivered here.
pub const REPLY_F_PEER: u8 = 4;
/// [`ReplyNat::backend`] when the entry names no local backend id (peer entries).
pub const REPLY_NO_BACKEND: u32 = u32::MAX;

/// `LB_REPLIES` value: where the replies of one steered flow must come from. The key is the
/// reply's own [`FlowKey`] ([`reply_key`]): source = the backend's address and port,
/// destination = the client's. Written by the XDP program when it steers a packet (or
/// receives one with another node's steering mark), read by the reverse NAT for every
/// reply; a reply without an entry is not lb's and passes untouched.
#[repr(C, align(8))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyNat {
    /// The VIP the client sent to (the reply's new source), port in host order.
    pub vip: [u8; 16],
    pub vip_port: u16,
    /// `REPLY_F_*`.
    pub flags: u8,
    /// The VIP's learned-CID length (learned-CID mode), 0 otherwise: the reverse NAT learns
    /// the backend's CIDs from the replies when it is set.
    pub learned_cid_len: u8,
    /// The backend's id in `LB_BACKENDS` ([`REPLY_NO_BACKEND`] for peer entries).
    pub backend: u32,
    /// The VIP's index (learned-CID keys).
    pub vip_index: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns()` when the entry was written, refreshed by replies at most
    /// every [`REPLY_REFRESH_NS`]: what idle timeouts count from.
    pub last_ns: u64,
}

/// The reverse NAT rewrites `last_ns` at most this often per flow, so a busy flow does not
/// write a shared cache line on every reply.
pub const REPLY_REFRESH_NS: u64 = 1_000_000_000;

/// The `LB_REPLIES` key of the replies to `flow` (a client's packet as it arrived) once it
/// is steered to the backend at `backend_addr`:`backend_port`.
#[inline(always)]
pub fn reply_key(flow: &FlowKey, backend_addr: &[u8; 16], backend_port: u16) -> FlowKey {
    FlowKey {
        src: *backend_addr,
        dst: flow.src,
        sport: backend_port,
        dport: flow.sport,
        proto: flow.proto,
        family: flow.family,
        _pad: [0; 2],
    }
}

/// The connection-table (`LB_CONNS`) key of the flow a reply entry belongs to: the
/// client's packets as they arrive, to the VIP.
#[inline(always)]
pub fn flow_of_reply(reply: &FlowKey, nat: &ReplyNat) -> FlowKey {
    FlowKey {
        src: reply.dst,
        dst: nat.vip,
        sport: reply.dport,
        dport: nat.vip_port,
        proto: reply.proto,
        family: reply.family,
        _pad: [0; 2],
    }
}

/// [`RnatSettings::flags`]: forward rewritten replies from the program (`bpf_fib_lookup`,
/// then `bpf_redirect`, or `bpf_redirect_neigh` when the neighbour is not resolved yet)
/// instead of handing them to the node's stack, so they bypass its netfilter (conntrack
/// never saw the client's packets, which XDP steered; masquerade rules would rewrite the
/// source). A reply the FIB cannot route is passed to the stack as before.
pub const RNAT_F_FORWARD: u32 = 1;

/// `LB_RNAT_CFG[0]`. All zero (the state after loading): rewrite and pass to the stack.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RnatSettings {
    pub flags: u32,
}

/// `LB_LEARNED` key: a server-chosen connection ID of one VIP, zero-padded to 20 octets.
#[repr(C, align(4))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    pub vip_index: u32,
    pub cid_len: u8,
    pub _pad: [u8; 3],
    pub cid: [u8; QUIC_LB_MAX_CID_LEN],
}

impl LearnedKey {
    /// The key of the CID made of the first `len` octets of `cid` under VIP `vip_index`.
    /// The programs read a CID with one fixed 20-octet load (whatever follows it in the
    /// packet included); the octets from `len` on are zeroed here, so the reverse NAT that
    /// learns a CID and the XDP program that looks it up build the same key.
    #[inline(always)]
    pub fn new(vip_index: u32, mut cid: [u8; QUIC_LB_MAX_CID_LEN], len: usize) -> Self {
        for (i, b) in cid.iter_mut().enumerate() {
            if i >= len {
                *b = 0;
            }
        }
        LearnedKey {
            vip_index,
            cid_len: len as u8,
            _pad: [0; 3],
            cid,
        }
    }
}

/// Outcome of one packet through the reverse-NAT TC program; `LB_RNAT_STATS[reason]`
/// counts them. Every packet bumps exactly one of the first seven; with
/// [`RNAT_F_FORWARD`], a `Rewritten` reply also bumps `Forwarded` or `FibFallback`.
/// Separate from the XDP program's [`Reason`] so neither numbering moves when the other
/// grows.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RnatReason {
    /// Source rewritten to the VIP.
    Rewritten = 0,
    /// Not the reply of a flow lb steered (no `LB_REPLIES` entry for its 5-tuple: kubelet
    /// probes, pod-to-pod, ClusterIP and NodePort traffic, a backend's own connections), or
    /// not UDP/TCP: untouched.
    PassNotSteered = 1,
    /// Truncated or inconsistent headers (also: IPv6 UDP with checksum 0).
    PassMalformed = 2,
    /// Not IPv4/IPv6, or more than one VLAN tag.
    PassNotIp = 3,
    /// IPv4 fragment: only the first carries ports, so none is rewritten.
    PassFragment = 4,
    /// IPv6 extension header before UDP/TCP.
    PassIpv6Ext = 5,
    /// A backend reply whose rewrite failed half-way in a kernel helper: dropped, as it can
    /// no longer reach the client intact.
    DropRewriteFailed = 6,
    /// Forwarding on: the rewritten reply was sent out of the FIB's egress interface by the
    /// program (the node's stack and netfilter never saw it).
    Forwarded = 7,
    /// Forwarding on: the rewritten reply went to the node's stack after all (no route,
    /// forwarding off, too big for the egress MTU, or a VLAN tag in the frame).
    FibFallback = 8,
}

pub const RNAT_REASON_COUNT: u32 = 9;
/// Slots in `LB_RNAT_STATS` (room for future reasons without a layout change).
pub const RNAT_REASON_STRIDE: u32 = 16;
const _: () = assert!(RNAT_REASON_COUNT <= RNAT_REASON_STRIDE);

impl RnatReason {
    pub const ALL: [RnatReason; RNAT_REASON_COUNT as usize] = [
        RnatReason::Rewritten,
        RnatReason::PassNotSteered,
        RnatReason::PassMalformed,
        RnatReason::PassNotIp,
        RnatReason::PassFragment,
        RnatReason::PassIpv6Ext,
        RnatReason::DropRewriteFailed,
        RnatReason::Forwarded,
        RnatReason::FibFallback,
    ];

    /// Stable snake_case name, for metrics labels and test messages.
    pub const fn name(self) -> &'static str {
        match self {
            RnatReason::Rewritten => "rewritten",
            RnatReason::PassNotSteered => "pass_not_steered",
            RnatReason::PassMalformed => "pass_malformed",
            RnatReason::PassNotIp => "pass_not_ip",
            RnatReason::PassFragment => "pass_fragment",
            RnatReason::PassIpv6Ext => "pass_ipv6_ext",
            RnatReason::DropRewriteFailed => "drop_rewrite_failed",
            RnatReason::Forwarded => "forwarded",
            RnatReason::FibFallback => "fib_fallback",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] plain-old-data with explicit padding fields.
    unsafe impl aya::Pod for VipCounter {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ServerIdKey {}
    unsafe impl aya::Pod for QuicLbConfig {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for CounterBlock {}
    unsafe impl aya::Pod for BenchTemplate {}
    unsafe impl aya::Pod for FibCacheEntry {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for ReplyNat {}
    unsafe impl aya::Pod for LearnedKey {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for RnatSettings {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<VipMeta>(), 16);
        assert_eq!(size_of::<Backend>(), 20);
        assert_eq!(size_of::<ServerIdKey>(), 24);
        assert_eq!(size_of::<QuicLbConfig>(), 356);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<ConnEntry>(), 8);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<FibCacheEntry>(), 40);
        assert_eq!(size_of::<VipCounter>(), 32);
        assert_eq!(size_of::<Settings>(), 16);
        assert_eq!(size_of::<ReplyNat>(), 40);
        assert_eq!(size_of::<LearnedKey>(), 28);
        assert_eq!(size_of::<SourceRangeKey>(), 20);
    }

    #[test]
    fn every_drop_reason_counts_as_dropped_per_vip() {
        for r in Reason::ALL {
            let drop = r.name().starts_with("drop_");
            assert_eq!(r.vip_class() == VipClass::Dropped, drop, "{}", r.name());
        }
        assert_eq!(Reason::RoutedCid.vip_class(), VipClass::RoutedCid);
        assert_eq!(Reason::RoutedLearnedCid.vip_class(), VipClass::RoutedCid);
    }

    #[test]
    fn quic_config_keys_do_not_collide() {
        assert_ne!(quic_config_key(1, 0), quic_config_key(0, 7));
        assert_eq!(quic_config_key(3, 6), 3 * 8 + 6);
    }

    #[test]
    fn affinity_key_keeps_only_the_client_address() {
        let mut a = FlowKey {
            sport: 40000,
            dport: 443,
            proto: PROTO_UDP,
            family: FAMILY_V4,
            ..Default::default()
        };
        a.src[..4].copy_from_slice(&[198, 18, 0, 2]);
        a.dst[..4].copy_from_slice(&[198, 18, 0, 100]);
        let k = affinity_key(&a);
        let mut want = FlowKey {
            family: FAMILY_V4,
            ..Default::default()
        };
        want.src[..4].copy_from_slice(&[198, 18, 0, 2]);
        assert_eq!(k, want);
        // Another port, protocol or VIP of the same client: the same key, the same hash.
        let mut b = a;
        b.sport = 51234;
        b.dport = 80;
        b.proto = PROTO_TCP;
        b.dst[3] = 101;
        // (The same key: the same hash, `hash::tests`.)
        assert_eq!(affinity_key(&b), k);
        // Another client: another key.
        let mut c = a;
        c.src[3] = 3;
        assert_ne!(affinity_key(&c), k);
    }

    #[test]
    fn source_range_keys_map_ipv4_into_ipv6() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[198, 18, 0, 7]);
        let k = source_range_key(3, &v4, FAMILY_V4);
        assert_eq!(k.vip_index, 3);
        assert_eq!(
            k.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 7]
        );
        let v6 = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(source_range_key(1, &v6, FAMILY_V6).addr, v6);
        assert_eq!(source_range_prefix_len(FAMILY_V4, 24), 32 + 96 + 24);
        assert_eq!(source_range_prefix_len(FAMILY_V6, 64), 32 + 64);
        assert_eq!(
            source_range_prefix_len(FAMILY_V4, 32),
            SOURCE_RANGE_LOOKUP_LEN
        );
        assert_eq!(
            source_range_prefix_len(FAMILY_V6, 128),
            SOURCE_RANGE_LOOKUP_LEN
        );
    }

    #[test]
    fn reasons_are_dense_and_named_uniquely() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            for other in &Reason::ALL[..i] {
                assert_ne!(r.name(), other.name());
            }
        }
    }

    #[test]
    fn rnat_reasons_are_dense_and_named_uniquely() {
        for (i, r) in RnatReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            for other in &RnatReason::ALL[..i] {
                assert_ne!(r.name(), other.name());
            }
        }
    }

    #[test]
    fn learned_keys_keep_only_the_cid() {
        let read: [u8; QUIC_LB_MAX_CID_LEN] = core::array::from_fn(|i| 0xa0 + i as u8);
        let k = LearnedKey::new(7, read, 8);
        assert_eq!((k.vip_index, k.cid_len), (7, 8));
        assert_eq!(k.cid[..8], read[..8]);
        assert!(k.cid[8..].iter().all(|&b| b == 0));
        // What follows the CID in the packet does not matter.
        let mut other = read;
        other[8..].fill(0x55);
        assert_eq!(LearnedKey::new(7, other, 8), k);
        assert_eq!(LearnedKey::new(7, read, QUIC_LB_MAX_CID_LEN).cid, read);
    }
}
