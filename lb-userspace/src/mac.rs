//! Ethernet addresses: the announcer writes them into ARP and NDP answers, the lab's
//! namespaces and packet builder use the same type.

/// An Ethernet address.
pub type Mac = [u8; 6];

/// `02:00:5e:10:00:01`.
pub fn format_mac(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `02:00:5e:10:00:01`; the error names the text.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let octets: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC address {s:?}: six hex octets separated by ':'"))?;
    octets
        .try_into()
        .map_err(|_| format!("bad MAC address {s:?}: not six octets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let m = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
        assert_eq!(format_mac(m), "02:00:5e:10:00:01");
        assert_eq!(parse_mac("02:00:5e:10:00:01"), Ok(m));
        assert!(parse_mac("02:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
