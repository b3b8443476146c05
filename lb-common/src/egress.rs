//! How a rewritten packet leaves the XDP program once the FIB has named its egress: back
//! out of the ingress (`XDP_TX`), a native redirect, or the kernel's own routing.
//!
//! A native XDP redirect only reaches a device whose driver implements `ndo_xdp_xmit`
//! (veth, most physical NICs with XDP); a tunnel device (VXLAN, Geneve, IPIP, GRE,
//! WireGuard) has none and the kernel drops the frame. The overlays of flannel, Calico and
//! Cilium route pod CIDRs of other nodes through such a device, so the program hands those
//! packets to the kernel, rewritten, and the node's routing and the overlay carry them.
//!
//! The ingress matters too. On a device without native XDP (a tunnel, where lb's program
//! runs in generic mode on an skb) a redirect or `XDP_TX` keeps the skb's checksum state:
//! a decapsulated VXLAN packet arrives `CHECKSUM_COMPLETE`, and after the program has
//! rewritten it the receiver finds the sum stale and drops it (measured in the overlay
//! lab: every UDP datagram counted in `UdpInCsumErrors`). The kernel's forwarding path
//! resets that state (`skb_forward_csum`), so such packets go to the kernel as well.
//!
//! Userspace decides which interfaces take a native redirect (`LB_IFACES`,
//! [`IFACE_F_XMIT`]); the check is on only with [`SETTINGS_F_XMIT_ONLY`] (`lb run`).

use crate::{IFACE_F_XMIT, SETTINGS_F_XMIT_ONLY};

/// Where the frame goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Back out of the interface it arrived on.
    Tx,
    /// `bpf_redirect` to the egress interface.
    Redirect,
    /// `XDP_PASS` of the rewritten packet: the kernel routes it (`pass_kernel_route`).
    Kernel,
}

/// Can the program hand a frame from the ingress to the egress itself? `ingress_flags` and
/// `egress_flags` are their `LB_IFACES` values (0 when absent); both must take native
/// redirects (for `XDP_TX` they are the same interface).
#[inline(always)]
pub fn xmit_path(ingress_flags: u32, egress_flags: u32) -> bool {
    ingress_flags & egress_flags & IFACE_F_XMIT != 0
}

/// The decision for a packet that arrived on `ingress` and whose next hop is out of
/// `egress`; `xmit_path` is [`xmit_path`] of the two, `settings_flags` is
/// `Settings::flags`.
#[inline(always)]
pub fn egress(ingress: u32, egress: u32, xmit_path: bool, settings_flags: u32) -> Egress {
    if settings_flags & SETTINGS_F_XMIT_ONLY != 0 && !xmit_path {
        Egress::Kernel
    } else if egress == ingress {
        Egress::Tx
    } else {
        Egress::Redirect
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IFACE_F_BACKEND;

    const ON: u32 = SETTINGS_F_XMIT_ONLY;
    const X: u32 = IFACE_F_XMIT;

    #[test]
    fn a_path_needs_both_ends_to_take_native_redirects() {
        assert!(xmit_path(X, X));
        assert!(xmit_path(X | IFACE_F_BACKEND, X));
        // A tunnel on either end (absent from LB_IFACES, or listed without the bit).
        assert!(!xmit_path(X, 0));
        assert!(!xmit_path(0, X));
        assert!(!xmit_path(X, IFACE_F_BACKEND));
    }

    #[test]
    fn native_paths_are_tx_or_redirect() {
        assert_eq!(egress(3, 3, true, ON), Egress::Tx);
        assert_eq!(egress(3, 4, true, ON), Egress::Redirect);
    }

    #[test]
    fn anything_else_goes_to_the_kernel_when_the_setting_is_on() {
        // To a tunnel (VXLAN egress), and from one (the peer program on vx0), both ways.
        assert_eq!(egress(3, 4, false, ON), Egress::Kernel);
        assert_eq!(egress(3, 3, false, ON), Egress::Kernel);
    }

    #[test]
    fn without_the_setting_nothing_goes_to_the_kernel() {
        assert_eq!(egress(3, 3, false, 0), Egress::Tx);
        assert_eq!(egress(3, 4, false, 0), Egress::Redirect);
    }
}
