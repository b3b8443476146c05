//! Batched map reads, writes and deletes (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`), which aya
//! 0.14 does not offer: walking a large hash map one key at a time costs two system calls
//! per entry (0.57 s for 262,144 reply-table entries here); in batches of 4,096 it is a few
//! dozen calls.

use std::{io, mem::size_of, os::fd::RawFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries asked for per call.
pub const BATCH: usize = 4096;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: the bpf(2) system call with an attribute struct of the size we pass; the
    // pointers inside it point at buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every (key, value) of the hash map `fd`. `K` and `V` must be the map's key and value
/// types (plain data of exactly the map's key and value sizes). Entries changed while the
/// walk runs may or may not be seen, as with any walk of a live map.
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: RawFd) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut chunk = BATCH;
    let mut token: u32 = 0;
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(chunk);
        let mut values: Vec<V> = Vec::with_capacity(chunk);
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        // SAFETY: the kernel filled the first `count` keys and values.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.into_iter().zip(values));
        match r {
            Ok(()) => {}
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            // One bucket holds more than `chunk` entries: ask for more at once.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        }
        token = next;
        first = false;
    }
}

/// Delete `keys` from the hash map `fd`; returns how many were there and went. A key that
/// is gone already is skipped.
pub fn delete_all<K: aya::Pod>(fd: RawFd, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let take = rest.len().min(BATCH);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: take as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        let r = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(take);
        deleted += done;
        match r {
            Ok(()) => rest = &rest[take..],
            // The key after the deleted ones is not there: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[done + 1..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Write `values[i]` under `keys[i]` in the map `fd`, [`BATCH`] entries per system call:
/// what fills a Maglev ring of tens of thousands of slots in a few calls instead of one per
/// slot. `K` and `V` must be the map's key and value types.
pub fn update_all<K: aya::Pod, V: aya::Pod>(fd: RawFd, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    while done < keys.len() {
        let take = (keys.len() - done).min(BATCH);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: take as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        let r = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        // On error `count` says how many went in; go on from there only on success.
        r?;
        done += take;
    }
    Ok(())
}
