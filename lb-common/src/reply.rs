//! How long the reverse NAT remembers a flow: the idle timeouts of `LB_REPLIES` entries.
//!
//! The XDP program writes an entry when it steers a flow's first packet (and re-creates it
//! from any later packet of the flow if it is gone); the reverse NAT refreshes it from the
//! flow's replies. Nothing in the kernel removes entries, so the table stays bounded only
//! because the daemon sweeps it, deleting the entries this policy calls expired. An entry
//! of a flow that is still alive and was swept is re-created by the client's next packet;
//! only a backend that speaks first after the flow was idle longer than its timeout finds
//! no entry (its reply leaves unrewritten, as behind any NAT whose state timed out).

use crate::{PROTO_TCP, REPLY_F_CLOSING, REPLY_F_REPLIED, ReplyNat};

/// Idle timeouts, in nanoseconds of `CLOCK_MONOTONIC` (the clock of
/// `bpf_ktime_get_coarse_ns`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplyTimeouts {
    /// A TCP flow whose backend has replied and that has seen no FIN or RST.
    pub tcp_ns: u64,
    /// A UDP flow whose backend has replied.
    pub udp_ns: u64,
    /// A flow whose backend has not replied yet (a SYN flood, one-way UDP).
    pub unreplied_ns: u64,
    /// A TCP flow that has seen a FIN or an RST, counted from its last reply.
    pub closing_ns: u64,
}

const SECOND: u64 = 1_000_000_000;

impl ReplyTimeouts {
    /// Six hours for established TCP (Cilium's default), two minutes for UDP that has been
    /// answered (Linux conntrack's `udp_timeout_stream`), thirty seconds for what nobody
    /// answered yet (conntrack's `udp_timeout`), ten seconds after a FIN or RST.
    pub const DEFAULT: ReplyTimeouts = ReplyTimeouts {
        tcp_ns: 6 * 3600 * SECOND,
        udp_ns: 120 * SECOND,
        unreplied_ns: 30 * SECOND,
        closing_ns: 10 * SECOND,
    };

    /// The idle time after which an entry of protocol `proto` in this state expires.
    pub const fn limit(&self, nat: &ReplyNat, proto: u8) -> u64 {
        if nat.flags & REPLY_F_CLOSING != 0 {
            self.closing_ns
        } else if nat.flags & REPLY_F_REPLIED == 0 {
            self.unreplied_ns
        } else if proto == PROTO_TCP {
            self.tcp_ns
        } else {
            self.udp_ns
        }
    }

    /// Whether the entry has been idle longer than its limit at `now_ns`. An entry stamped
    /// after `now_ns` (a sweep racing a refresh) is not expired.
    pub const fn expired(&self, nat: &ReplyNat, proto: u8, now_ns: u64) -> bool {
        now_ns > nat.last_ns && now_ns - nat.last_ns > self.limit(nat, proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PROTO_UDP, REPLY_F_PEER};

    fn nat(flags: u8, last_ns: u64) -> ReplyNat {
        ReplyNat {
            flags,
            last_ns,
            ..Default::default()
        }
    }

    #[test]
    fn each_state_has_its_own_limit() {
        let t = ReplyTimeouts {
            tcp_ns: 400,
            udp_ns: 300,
            unreplied_ns: 200,
            closing_ns: 100,
        };
        let now = 10_000;
        for (flags, proto, limit) in [
            (0, PROTO_TCP, 200),
            (0, PROTO_UDP, 200),
            (REPLY_F_REPLIED, PROTO_TCP, 400),
            (REPLY_F_REPLIED, PROTO_UDP, 300),
            (REPLY_F_REPLIED | REPLY_F_PEER, PROTO_UDP, 300),
            (REPLY_F_CLOSING, PROTO_TCP, 100),
            (REPLY_F_REPLIED | REPLY_F_CLOSING, PROTO_TCP, 100),
        ] {
            assert_eq!(t.limit(&nat(flags, 0), proto), limit, "flags {flags:#x}");
            assert!(!t.expired(&nat(flags, now - limit), proto, now));
            assert!(t.expired(&nat(flags, now - limit - 1), proto, now));
        }
    }

    #[test]
    fn an_entry_stamped_after_the_sweep_started_is_kept() {
        let t = ReplyTimeouts::DEFAULT;
        assert!(!t.expired(&nat(0, 5_000), PROTO_UDP, 4_000));
    }

    #[test]
    fn defaults_order_closing_below_unreplied_below_udp_below_tcp() {
        let t = ReplyTimeouts::DEFAULT;
        assert!(t.closing_ns < t.unreplied_ns);
        assert!(t.unreplied_ns < t.udp_ns);
        assert!(t.udp_ns < t.tcp_ns);
    }
}
