//! Link flags for the BPF object.
//!
//! bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default, which also turns
//! every memset/memmove into a call to a byte-at-a-time loop; zeroing a 16-octet key then
//! costs ~80 instructions per packet. Without it, LLVM's BPF backend expands constant-size
//! memset/memcpy/memmove into word loads and stores.
fn main() {
    println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
