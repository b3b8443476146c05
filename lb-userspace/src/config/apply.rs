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
/// table that cannot be built leaves the data plane untouched. A run of consecutive
/// `EvictVipFlows`, or of consecutive `ClearBackend`s, is performed with one walk of the
/// connection table ([`Dataplane::evict_vip_backend_flows_all`],
/// [`Dataplane::clear_backends`]): the same result as one walk per change, which cost
/// minutes when thousands of Services went at once.
pub fn apply(dp: &mut Dataplane, changes: &[Change]) -> Result<(), ApplyError> {
    let tables = maglev_tables(changes)?;
    let mut step = 0;
    while step < changes.len() {
        let run = eviction_run(&changes[step..]);
        let result = if run > 1 {
            write_run(dp, &changes[step..step + run])
        } else {
            write(dp, &changes[step], tables[step].as_deref())
        };
        result.map_err(|source| ApplyError::Dataplane {
            step: step + 1,
            total: changes.len(),
            change: if run > 1 {
                format!("{} and the {} like it after it", changes[step], run - 1)
            } else {
                changes[step].to_string()
            },
            source: Box::new(source),
        })?;
        step += run.max(1);
    }
    Ok(())
}

/// How many changes at the start of `changes` are `EvictVipFlows`, or `ClearBackend`, in a
/// row (0 when the first is neither).
fn eviction_run(changes: &[Change]) -> usize {
    let same_kind = |a: &Change, b: &Change| {
        matches!(
            (a, b),
            (Change::EvictVipFlows { .. }, Change::EvictVipFlows { .. })
                | (Change::ClearBackend { .. }, Change::ClearBackend { .. })
        )
    };
    match changes.first() {
        Some(first @ (Change::EvictVipFlows { .. } | Change::ClearBackend { .. })) => {
            changes.iter().take_while(|c| same_kind(first, c)).count()
        }
        _ => 0,
    }
}

/// A run of [`eviction_run`]'s changes, with one walk of the connection table.
fn write_run(dp: &mut Dataplane, run: &[Change]) -> Result<(), DataplaneError> {
    let mut pairs = Vec::new();
    let mut cleared = Vec::new();
    for c in run {
        match c {
            Change::EvictVipFlows { key, backend } => pairs.push((key.key(), *backend)),
            Change::ClearBackend { id } => cleared.push(*id),
            _ => unreachable!("eviction_run takes only evictions"),
        }
    }
    if !pairs.is_empty() {
        dp.evict_vip_backend_flows_all(&pairs)?;
    }
    if !cleared.is_empty() {
        dp.clear_backends(&cleared)?;
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
