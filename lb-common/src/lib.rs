//! Shared between lb's BPF programs and its userspace: the `#[repr(C)]` map keys and values,
//! and every packet decision that can be a pure function over bytes (checksum updates, flow
//! hashing, Maglev table construction, QUIC header and connection-ID parsing). No allocation,
//! no panicking paths on input, so the same code runs in the XDP program and in host tests.
//! The wire-format constants both sides need are in [`wire`].
#![no_std]

pub mod csum;
pub mod egress;
pub mod hash;
pub mod maglev;
pub mod maps;
pub mod mark;
pub mod quic;
pub mod quic_lb;
pub mod reply;
pub mod wire;

pub use maps::*;
