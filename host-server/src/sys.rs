//! The one home of `unsafe` in host-server: process-wide settings libc offers no safe
//! wrapper for.
#![allow(unsafe_code)]

/// Allocations of this size or more get a mapping of their own.
pub const MMAP_THRESHOLD: usize = 64 * 1024;

/// Makes glibc's malloc give every allocation of [`MMAP_THRESHOLD`] or more its own
/// anonymous mapping, for the life of the process. Returns whether glibc took the setting.
///
/// Each connection's smoltcp endpoint allocates two zeroed socket buffers (256 KiB each by
/// default). glibc maps large allocations at first, but after the first such block is freed
/// it raises its mapping threshold above that size (the dynamic threshold), and from then on
/// serves them from the heap, where `calloc` must clear recycled memory: every buffer then
/// costs its full size in resident memory from the SYN on, whether or not a byte ever
/// flows (1,000 idle ft3 connections: 280 MiB per host). A fixed threshold keeps them
/// mapped: the kernel hands out zero pages, so a buffer costs only the pages the connection
/// actually touched (the same 1,000 connections: 20 MiB), and a closed connection's buffers
/// go back to the kernel at once. The price is an `mmap` and a `munmap` per buffer.
///
/// The kernel's `vm.max_map_count` (65,530 by default) bounds the mappings; past it, or past
/// glibc's own count (`M_MMAP_MAX`), malloc serves from the heap again, as before.
pub fn map_large_allocations() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = std::os::raw::c_int::try_from(MMAP_THRESHOLD).unwrap_or(i32::MAX);
        // SAFETY: mallopt only changes a tunable of glibc's allocator; it is called at
        // start-up, before any other thread exists, as glibc asks.
        unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, threshold) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
