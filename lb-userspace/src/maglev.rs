//! Maglev tables for the data plane: a thin owner of the buffers that
//! `lb_common::maglev::populate` (the one implementation, unit-tested there) fills.

use std::net::IpAddr;

use lb_common::maglev::{MaglevBackend, MaglevError, MaglevScratch, backend_key, populate};

use crate::dataplane::addr_key;

/// One backend's place in a VIP's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Index in the BPF backends array.
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// Build a Maglev table of `size` slots (a prime) over `backends`.
pub fn build_table(backends: &[WeightedBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    let input: Vec<MaglevBackend> = backends
        .iter()
        .map(|b| MaglevBackend {
            id: b.id,
            weight: b.weight,
            key: backend_key(&addr_key(b.addr).0, b.port),
        })
        .collect();
    let mut table = vec![0u32; size as usize];
    let mut scratch = vec![MaglevScratch::default(); input.len()];
    populate(&input, &mut table, &mut scratch)?;
    Ok(table)
}
