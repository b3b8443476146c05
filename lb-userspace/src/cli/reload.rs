//! `lb reload`: ask a running `lb run` to re-read its config over the control socket.

use anyhow::Result;

use crate::daemon;

/// `lb reload`: exit 1 when the daemon rejected the new config.
pub fn reload(control_socket: &std::path::Path) -> Result<()> {
    if !daemon::reload(control_socket)? {
        std::process::exit(1);
    }
    Ok(())
}
