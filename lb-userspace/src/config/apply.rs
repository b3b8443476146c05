//! [`apply`]: performing a [`Plan::diff`](super::Plan::diff)'s [`Change`]s, in order, on
//! a [`Dataplane`], and [`ApplyError`], what stops it.

use lb_common::maglev::MaglevError;
use thiserror::Error;

use super::{Change, VipId};
use crate::{
    dataplane::{Dataplane, DataplaneError, backend},
    maglev::build_table,
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("building the Maglev table for {vip}: {source}")]
    Maglev { vip: VipId, source: MaglevError },
    #[error("change {step} of {total} ({change}) failed: {source}; changes before it are in force")]
    Dataplane {
        step: usize,
        total: usize,
        change: String,
        source: Box<DataplaneError>,
    },
}

/// Perform `changes` in order. Every Maglev table is built before the first map write, so a
/// table that cannot be built leaves the data plane untouched.
pub fn apply(dp: &mut Dataplane, changes: &[Change]) -> Result<(), ApplyError> {
    let tables = maglev_tables(changes)?;
    for (step, (c, table)) in changes.iter().zip(tables).enumerate() {
        write(dp, c, table.as_deref()).map_err(|source| ApplyError::Dataplane {
            step: step + 1,
            total: changes.len(),
            change: c.to_string(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// The Maglev table of each change that publishes a non-empty ring, `None` for the others.
fn maglev_tables(changes: &[Change]) -> Result<Vec<Option<Vec<u32>>>, ApplyError> {
    let mut tables: Vec<Option<Vec<u32>>> = Vec::with_capacity(changes.len());
    for c in changes {
        tables.push(match c {
            Change::PublishVip {
                key,
                ring_size,
                backends,
                ..
            } if *ring_size > 0 => Some(
                build_table(backends, *ring_size)
                    .map_err(|source| ApplyError::Maglev { vip: *key, source })?,
            ),
            _ => None,
        });
    }
    Ok(tables)
}

/// The one [`Dataplane`] call of `c`; `table` is its Maglev table (`PublishVip` only; an
/// empty ring when there is none).
fn write(dp: &mut Dataplane, c: &Change, table: Option<&[u32]>) -> Result<(), DataplaneError> {
    match c {
        Change::SetBackend { id, addr, port } => dp.set_backend(*id, &backend(*addr, *port)),
        Change::SetQuicConfig { vip_index, config } => dp.set_quic_config(*vip_index, config),
        Change::SetServerId {
            vip_index,
            config_id,
            server_id,
            backend,
        } => dp.set_server_id(*vip_index, *config_id, server_id, *backend),
        Change::PublishVip {
            key, index, flags, ..
        } => dp.publish_ring(&key.key(), *index, *flags, table.unwrap_or(&[])),
        Change::SetVipFlags { key, flags } => dp.set_vip_flags(&key.key(), *flags),
        Change::AddSourceRange { vip_index, range } => dp.add_source_range(*vip_index, *range),
        Change::RemoveVip { key } => dp.remove_vip(&key.key()),
        Change::EvictVipFlows { key, backend } => {
            dp.evict_vip_backend_flows(&key.key(), *backend).map(|_| ())
        }
        Change::RemoveSourceRange { vip_index, range } => {
            dp.remove_source_range(*vip_index, *range)
        }
        Change::EvictBackendFlows { id } => dp.evict_backend_flows(*id).map(|_| ()),
        Change::RemoveServerId {
            vip_index,
            config_id,
            server_id,
        } => dp.remove_server_id(*vip_index, *config_id, server_id),
        Change::ClearQuicConfig {
            vip_index,
            config_id,
        } => dp.clear_quic_config(*vip_index, *config_id),
        Change::ClearBackend { id } => dp.clear_backend(*id),
    }
}
