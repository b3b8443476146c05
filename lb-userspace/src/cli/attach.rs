//! `lb attach`: load the XDP program and attach it to one interface until a signal.

use std::io::Write;

use anyhow::{Context, Result, bail};

use crate::dataplane::Dataplane;

use super::enter_netns;

/// Load the program (through the kernel verifier), attach it to `iface` (native, or generic
/// with `generic`) until SIGINT/SIGTERM, then detach. The maps start empty: every packet
/// passes, counted.
pub fn attach(iface: &str, ns: Option<&str>, generic: bool) -> Result<()> {
    // Block SIGINT/SIGTERM from the start and take them with sigwait below: a signal that
    // arrives while loading, or between a check and a wait, is then held rather than lost
    // or fatal, and the program is always detached.
    // SAFETY: plain libc calls on a zeroed sigset_t.
    let signals = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    if let Some(name) = ns {
        enter_netns(name)?;
    }
    let c_iface = std::ffi::CString::new(iface).context("interface name contains a NUL")?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface} in this network namespace (see `ip link`)");
    }
    let mut dp = Dataplane::load().context("loading the XDP program")?;
    dp.attach(ifindex, generic).with_context(|| {
        format!(
            "attaching to {iface} in {} mode{}",
            if generic { "generic" } else { "native" },
            if generic {
                ""
            } else {
                " (try --generic if the driver has no native XDP)"
            }
        )
    })?;
    println!(
        "attached lb_xdp to {iface} (ifindex {ifindex}, {} mode)",
        if generic { "generic" } else { "native" }
    );
    std::io::stdout().flush()?;
    let mut sig = 0;
    // SAFETY: waiting on the set blocked above.
    unsafe { libc::sigwait(&signals, &mut sig) };
    dp.detach(ifindex).context("detaching")?;
    println!("detached lb_xdp from {iface}");
    Ok(())
}
