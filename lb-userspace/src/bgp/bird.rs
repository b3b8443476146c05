//! BIRD's control socket (the protocol `birdc` speaks) and the parsing of the replies lb
//! reads back: session states, prefixes exported per session, BFD sessions.
//!
//! The protocol is line-based. On connect BIRD greets with `0001 BIRD <version> ready.`;
//! each command's reply is lines of `NNNN-text` (more follows), `NNNN text` (the last line)
//! or ` text` (continuing the previous code). Codes 8000 and up are errors (8xxx runtime,
//! 9xxx parse); a configuration BIRD refuses comes back as one of them with
//! `file:line:column message`.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// One connection to BIRD's control socket.
pub struct Control {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

/// A reply: (code, text) per line, continuation lines carrying their block's code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    pub lines: Vec<(u16, String)>,
}

impl Reply {
    /// The first error line's text (codes 8000 and up), if BIRD refused.
    pub fn error(&self) -> Option<&str> {
        self.lines
            .iter()
            .find(|(c, _)| *c >= 8000)
            .map(|(_, t)| t.as_str())
    }

    /// The text of the lines with `code`, in order.
    pub fn texts(&self, code: u16) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |(c, _)| *c == code)
            .map(|(_, t)| t.as_str())
    }
}

impl Control {
    /// Connect and read the greeting; `timeout` bounds every read and write.
    pub fn connect(socket: &Path, timeout: Duration) -> io::Result<Control> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Control {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        };
        let greeting = c.read_reply()?;
        if !greeting.lines.iter().any(|(code, _)| *code == 1) {
            return Err(io::Error::other(format!(
                "{} is not BIRD's control socket (greeting {greeting:?})",
                socket.display()
            )));
        }
        Ok(c)
    }

    /// Send one command and read its whole reply.
    pub fn command(&mut self, cmd: &str) -> io::Result<Reply> {
        self.stream.write_all(cmd.as_bytes())?;
        self.stream.write_all(b"\n")?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let mut reply = Reply::default();
        let mut code = 0u16;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "BIRD closed the control socket mid-reply",
                ));
            }
            let line = line.trim_end_matches(['\n', '\r']);
            match parse_line(line) {
                Some((c, last, text)) => {
                    code = c;
                    reply.lines.push((c, text.to_owned()));
                    if last {
                        return Ok(reply);
                    }
                }
                None => reply
                    .lines
                    .push((code, line.strip_prefix(' ').unwrap_or(line).to_owned())),
            }
        }
    }
}

/// `NNNN-text` → (NNNN, false, text); `NNNN text` → (NNNN, true, text); else `None`.
fn parse_line(line: &str) -> Option<(u16, bool, &str)> {
    let b = line.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = line[..4].parse().ok()?;
    match b[4] {
        b'-' => Some((code, false, &line[5..])),
        b' ' => Some((code, true, &line[5..])),
        _ => None,
    }
}

/// One BGP session as BIRD reports it (`show protocols all`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionStatus {
    /// BIRD's protocol name (`lb_peer_<hash of the name>`).
    pub protocol: String,
    /// The peer's name, from the protocol's description.
    pub peer: String,
    /// BIRD's protocol state: `up`, `start`, `down`, `flush`...
    pub state: String,
    /// The BGP finite-state-machine state: `Established`, `Active`, `Connect`, `Idle`...
    pub bgp_state: String,
    /// Why the session last failed, as BIRD says it (`Received: Bad peer AS`...).
    pub last_error: Option<String>,
    /// Routes exported to the peer over all channels: the prefixes it is sent.
    pub exported: u64,
    pub imported: u64,
}

impl SessionStatus {
    pub fn established(&self) -> bool {
        self.bgp_state == "Established"
    }
}

/// Parse the reply to `show protocols all "lb_peer_*"`.
pub fn parse_protocols(reply: &Reply) -> Vec<SessionStatus> {
    let mut out: Vec<SessionStatus> = Vec::new();
    for (code, text) in &reply.lines {
        match code {
            // The table row: name, proto, table, state, since, info.
            1002 => {
                let cols: Vec<&str> = text.split_whitespace().collect();
                if cols.len() >= 4 && cols[0] != "Name" {
                    out.push(SessionStatus {
                        protocol: cols[0].to_owned(),
                        state: cols[3].to_owned(),
                        ..SessionStatus::default()
                    });
                }
            }
            1006 => {
                let Some(s) = out.last_mut() else { continue };
                let t = text.trim();
                if let Some(v) = t.strip_prefix("Description:") {
                    s.peer = v.trim().to_owned();
                } else if let Some(v) = t.strip_prefix("BGP state:") {
                    s.bgp_state = v.trim().to_owned();
                } else if let Some(v) = t.strip_prefix("Last error:") {
                    s.last_error = Some(v.trim().to_owned());
                } else if let Some(v) = t.strip_prefix("Routes:") {
                    // "0 imported, 1 exported, 0 preferred"
                    for part in v.split(',') {
                        let mut w = part.split_whitespace();
                        let (Some(n), Some(what)) = (w.next(), w.next()) else {
                            continue;
                        };
                        let n: u64 = n.parse().unwrap_or(0);
                        match what {
                            "imported" => s.imported += n,
                            "exported" => s.exported += n,
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// One BFD session (`show bfd sessions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdSession {
    pub address: IpAddr,
    pub interface: String,
    /// `Up`, `Down`, `Init`, `AdminDown`.
    pub state: String,
}

/// Parse the reply to `show bfd sessions`.
pub fn parse_bfd_sessions(reply: &Reply) -> Vec<BfdSession> {
    reply
        .texts(1020)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let address: IpAddr = cols.first()?.parse().ok()?;
            Some(BfdSession {
                address,
                interface: cols.get(1)?.to_string(),
                state: cols.get(2)?.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Reply {
        let mut r = Reply::default();
        let mut code = 0;
        for line in text.lines() {
            match parse_line(line) {
                Some((c, _, t)) => {
                    code = c;
                    r.lines.push((c, t.to_owned()));
                }
                None => r
                    .lines
                    .push((code, line.strip_prefix(' ').unwrap_or(line).to_owned())),
            }
        }
        r
    }

    /// Replies as BIRD 2.0.12 wrote them on this machine.
    #[test]
    fn protocols_and_bfd_sessions_parse() {
        let r = reply(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-lb_peer_0  BGP        ---        up     16:28:06.322  Established   \n\
             1006-  Description:    tor-a\n\
             \x20 BGP state:          Established\n\
             \x20   Neighbor address: 198.18.1.1\n\
             \x20 Channel ipv4\n\
             \x20   Routes:         0 imported, 3 exported, 0 preferred\n\
             \x20\n\
             1002-lb_peer_1  BGP        ---        start  16:28:02.146  Active        Received: Bad peer AS\n\
             1006-  Description:    tor-b\n\
             \x20 BGP state:          Active\n\
             \x20   Last error:       Received: Bad peer AS\n\
             0000 \n",
        );
        let s = parse_protocols(&r);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            SessionStatus {
                protocol: "lb_peer_0".into(),
                peer: "tor-a".into(),
                state: "up".into(),
                bgp_state: "Established".into(),
                last_error: None,
                exported: 3,
                imported: 0,
            }
        );
        assert!(s[0].established() && !s[1].established());
        assert_eq!(s[1].last_error.as_deref(), Some("Received: Bad peer AS"));
        let b = reply(
            "1020-bfd1:\n\
             \x20IP address                Interface  State      Since         Interval  Timeout\n\
             \x20198.18.1.1                br-n1      Up         16:28:02.901    0.100    0.300\n\
             0000 \n",
        );
        assert_eq!(
            parse_bfd_sessions(&b),
            [BfdSession {
                address: "198.18.1.1".parse().unwrap(),
                interface: "br-n1".into(),
                state: "Up".into()
            }]
        );
        let err = reply("0002-Reading configuration from /x\n8002 /x:2:50 syntax error\n");
        assert_eq!(err.error(), Some("/x:2:50 syntax error"));
    }
}
