//! The daemon's side of BGP: one [`BgpDriver`] keeps the speaker in step with what the
//! static config or the Kubernetes controller wants, remembers why the last change was
//! refused, polls the speaker's own view every second (`/status`, metrics), and withdraws
//! before the daemon goes.

use std::time::{Duration, Instant};

use log::{info, warn};
use serde_json::{Value, json};

use super::{
    Desired,
    speaker::{Speaker, SpeakerOptions, SpeakerStatus},
};

/// How often the daemon reads the speaker's sessions back.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The speaker as the daemon runs it: started on the first [`Desired`], stopped on `None`.
pub struct BgpDriver {
    opts: SpeakerOptions,
    /// How long shutdown waits for the withdrawals (`[bgp] withdraw_timeout_ms`, live).
    pub withdraw_timeout: Duration,
    speaker: Option<Speaker>,
    /// What the speaker was last asked to run, accepted or not.
    wanted: Option<Desired>,
    /// Why the speaker refused or could not take `wanted`; `None` once it runs it.
    pub error: Option<String>,
    pub applied: u64,
    pub rejected: u64,
    /// The sessions and BFD sessions as last read from the speaker.
    pub status: SpeakerStatus,
    /// Reading the speaker's status failed (the last error), for `/status`.
    pub status_error: Option<String>,
}

impl BgpDriver {
    pub fn new(opts: SpeakerOptions, withdraw_timeout: Duration) -> BgpDriver {
        BgpDriver {
            opts,
            withdraw_timeout,
            speaker: None,
            wanted: None,
            error: None,
            applied: 0,
            rejected: 0,
            status: SpeakerStatus::default(),
            status_error: None,
        }
    }

    /// Make the speaker run `desired` (`None`: no speaker). A refused configuration
    /// leaves the previous one running; the error is returned and kept for `/status` and
    /// readiness until a later one applies.
    pub fn set(&mut self, desired: Option<Desired>) -> anyhow::Result<()> {
        if desired == self.wanted && self.error.is_none() {
            return Ok(());
        }
        let result = match (&desired, &mut self.speaker) {
            (None, None) => Ok(false),
            (None, Some(_)) => {
                self.withdraw_and_stop();
                Ok(true)
            }
            (Some(d), Some(s)) => s.apply(d).map_err(anyhow::Error::from),
            (Some(d), None) => Speaker::start(self.opts.clone(), d).map(|s| {
                info!(
                    "BGP speaker (BIRD) started: configuration {}, control socket {}",
                    s.config_file().display(),
                    s.socket().display()
                );
                self.speaker = Some(s);
                true
            }),
        };
        self.wanted = desired;
        match result {
            Ok(changed) => {
                if changed {
                    self.applied += 1;
                    if let Some(d) = &self.wanted {
                        info!(
                            "BGP: {} peers, {} prefixes advertised",
                            d.peers.len(),
                            d.adverts.len()
                        );
                    }
                }
                self.error = None;
                Ok(())
            }
            Err(e) => {
                self.rejected += 1;
                let msg = format!("{e:#}");
                if self.error.as_ref() != Some(&msg) {
                    warn!("BGP: {msg}");
                }
                self.error = Some(msg);
                Err(e)
            }
        }
    }

    /// The prefixes the speaker is asked to advertise.
    pub fn advertised(&self) -> Vec<String> {
        self.wanted
            .iter()
            .flat_map(|d| d.adverts.iter().map(|a| a.prefix.to_string()))
            .collect()
    }

    /// Once per [`POLL_INTERVAL`]: start BIRD again if it died (with what it ran, and
    /// what was refused in between retried), and read its sessions back.
    pub fn poll(&mut self) {
        let Some(s) = &mut self.speaker else {
            self.status = SpeakerStatus::default();
            return;
        };
        match s.revive() {
            Ok(Some(_)) => {
                if self.error.is_some()
                    && let Some(d) = self.wanted.clone()
                {
                    let _ = self.set(Some(d));
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.status_error = Some(format!("{e:#}"));
                return;
            }
        }
        let Some(s) = &self.speaker else { return };
        match s.status() {
            Ok(st) => {
                self.status = st;
                self.status_error = None;
            }
            Err(e) => self.status_error = Some(e.to_string()),
        }
    }

    /// Whether lb runs (or drives) a speaker now.
    pub fn running(&self) -> bool {
        self.speaker.is_some()
    }

    pub fn restarts(&self) -> u64 {
        self.speaker.as_ref().map_or(0, |s| s.restarts)
    }

    /// Shutdown: withdraw every prefix and wait (at most the configured timeout) until
    /// the speaker has sent the withdrawals, then stop it. The data plane goes after this,
    /// so peers stop sending before the node stops forwarding.
    pub fn withdraw_and_stop(&mut self) {
        let Some(mut s) = self.speaker.take() else {
            return;
        };
        if let Some(d) = &self.wanted
            && !d.adverts.is_empty()
        {
            let t = Instant::now();
            match s.withdraw_all(d, self.withdraw_timeout) {
                Ok(took) => info!("BGP: every prefix withdrawn from every peer in {took:?}"),
                Err(e) => warn!(
                    "BGP: withdrawing before shutdown: {e:#} (gave up after {:?})",
                    t.elapsed()
                ),
            }
        }
        s.stop();
    }

    /// `/status`'s `bgp` object.
    pub fn to_json(&self) -> Value {
        let peers = self
            .wanted
            .as_ref()
            .map(|d| d.peers.as_slice())
            .unwrap_or(&[]);
        let sessions: Vec<Value> = self
            .status
            .sessions
            .iter()
            .map(|s| {
                let address = peers
                    .iter()
                    .find(|p| p.name == s.peer)
                    .map(|p| p.address.to_string());
                json!({
                    "peer": s.peer,
                    "address": address,
                    "state": s.state,
                    "bgp_state": s.bgp_state,
                    "exported": s.exported,
                    "last_error": s.last_error,
                })
            })
            .collect();
        let bfd: Vec<Value> = self
            .status
            .bfd
            .iter()
            .map(|b| json!({"address": b.address.to_string(), "interface": b.interface, "state": b.state}))
            .collect();
        json!({
            "speaker": self.speaker.as_ref().map(|s| s.socket().display().to_string()),
            "sessions": sessions,
            "bfd": bfd,
            "advertised": self.advertised(),
            "config_error": self.error,
            "status_error": self.status_error,
            "applied": self.applied,
            "rejected": self.rejected,
            "speaker_restarts": self.restarts(),
        })
    }

    /// Per peer: (name, session established, prefixes exported, BFD up if BFD is on).
    pub fn peer_figures(&self) -> Vec<(String, bool, u64, Option<bool>)> {
        let Some(d) = &self.wanted else {
            return Vec::new();
        };
        d.peers
            .iter()
            .map(|p| {
                let s = self.status.sessions.iter().find(|s| s.peer == p.name);
                let bfd = p.bfd.map(|_| {
                    self.status
                        .bfd
                        .iter()
                        .any(|b| b.address == p.address && b.state == "Up")
                });
                (
                    p.name.clone(),
                    s.is_some_and(|s| s.established()),
                    s.map_or(0, |s| s.exported),
                    bfd,
                )
            })
            .collect()
    }
}

impl Drop for BgpDriver {
    fn drop(&mut self) {
        self.withdraw_and_stop();
    }
}
