//! `bpf_fib_lookup` for both program types (as Cilium's `bpf/lib/fib.h`): one function fills
//! the kernel's parameter struct from a [`Query`] and turns its return code into a [`Fib`]
//! the callers match on; the context type (`XdpContext`, `TcContext`) is a generic
//! parameter. XDP looks up the way to a backend (`nexthop`), TC the way back to a client
//! (`rnat`).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::bpf_fib_lookup as fib_lookup,
};
use lb_common::wire::ETH_ALEN;

use crate::packet::word;

/// `bpf_fib_lookup`'s address families: the kernel's `AF_*`, not lb's `FAMILY_*` tags.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What to look up: the route of a packet of `proto` from `src`:`sport` to `dst`:`dport`.
pub struct Query<'a> {
    pub is_v6: bool,
    pub proto: u8,
    /// Ports in network order.
    pub sport: u16,
    pub dport: u16,
    /// Addresses in key form (IPv4 in the first four octets).
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    /// IPv4 TOS, or the IPv6 flow-info word in network order (`Parsed::tos_or_flowinfo`).
    pub tos_or_flowinfo: u32,
    /// IP length the kernel checks against the egress MTU; 0 on TC, where it checks the skb
    /// itself (GSO aware).
    pub tot_len: u16,
    /// The interface the packet arrived on.
    pub ifindex: u32,
}

/// A route with a resolved next hop.
pub struct Route {
    /// The egress interface.
    pub ifindex: u32,
    pub dmac: [u8; ETH_ALEN],
    pub smac: [u8; ETH_ALEN],
    /// The egress MTU (0 from kernels that do not report it).
    pub mtu: u16,
}

/// The kernel's answer.
pub enum Fib {
    Found(Route),
    /// A route, but no neighbour entry for the next hop yet; `ifindex` is the egress (the
    /// kernel fills it in before it looks for the neighbour).
    NoNeighbour {
        ifindex: u32,
    },
    /// No route, forwarding off on the ingress, larger than the egress MTU, or anything else
    /// the FIB will not forward: the kernel's stack must handle the packet.
    Failed,
}

/// The helper's in/out struct. The caller chooses where it lives (XDP: the per-CPU scratch,
/// its stack being full; TC: its stack). Eight-octet aligned (the kernel's is four) so it
/// is cleared, and IPv6 addresses stored, with 64-bit stores.
#[repr(C, align(8))]
pub struct Params(bpf_fib_lookup);

impl Params {
    /// Storage for lookups (each starts with [`clear`](Self::clear)).
    #[inline(always)]
    pub fn new() -> Self {
        // SAFETY: plain C struct; all-zero is its documented initial state.
        Params(unsafe { zeroed() })
    }

    /// Zero the struct for a new lookup (all-zero is the helper's initial state; a scratch
    /// slot still holds the previous packet's answer).
    ///
    /// A step of its own, taken before the caller builds its [`Query`]: clearing first and
    /// reading the packet's fields after keeps `lb_xdp`'s registers where they were before
    /// this helper existed; clearing inside [`lookup`], after the query's loads, made the
    /// verifier walk about 7% more instructions (measured: 469k vs 501k).
    #[inline(always)]
    pub fn clear(&mut self) -> Cleared<'_> {
        *self = Params::new();
        Cleared(self)
    }
}

/// [`Params`] zeroed for one [`lookup`].
pub struct Cleared<'a>(&'a mut Params);

/// Look `q` up.
#[inline(always)]
pub fn lookup<C: EbpfContext>(ctx: &C, params: Cleared, q: &Query) -> Fib {
    let params = &mut params.0.0;
    params.l4_protocol = q.proto;
    params.sport = q.sport;
    params.dport = q.dport;
    params.__bindgen_anon_1.tot_len = q.tot_len;
    params.ifindex = q.ifindex;
    if q.is_v6 {
        params.family = AF_INET6;
        params.__bindgen_anon_2.flowinfo = q.tos_or_flowinfo;
        params.__bindgen_anon_3.ipv6_src = words(q.src);
        params.__bindgen_anon_4.ipv6_dst = words(q.dst);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_2.tos = q.tos_or_flowinfo as u8;
        params.__bindgen_anon_3.ipv4_src = word(q.src, 0);
        params.__bindgen_anon_4.ipv4_dst = word(q.dst, 0);
    }
    // SAFETY: helper on our own context with a struct of the size we pass.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            params as *mut bpf_fib_lookup,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Fib::NoNeighbour {
            ifindex: params.ifindex,
        }
    } else if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        Fib::Failed
    } else {
        Fib::Found(Route {
            ifindex: params.ifindex,
            dmac: params.dmac,
            smac: params.smac,
            // SAFETY: on success the kernel leaves the egress MTU in this union member.
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
        })
    }
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [word(a, 0), word(a, 1), word(a, 2), word(a, 3)]
}
