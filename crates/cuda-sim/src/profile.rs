//! What a launch did, counted as Nsight Compute counts it: warp instructions, and global
//! memory in distinct 32-byte sectors per warp-level access. Written as JSON lines when
//! `DYNACT_CUDA_SIM_PROFILE` names a file.

use serde::Serialize;

/// Counters of one launch (of its executed blocks, scaled to the whole grid when sampled).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KernelCounters {
    pub warp_instructions: u64,
    pub thread_instructions: u64,
    pub sectors_read: u64,
    pub sectors_written: u64,
    /// The bytes of those sectors the warps' lanes accessed (each byte of a warp-level access
    /// once, however many lanes read it): of `32 * sectors`, the share a coalesced kernel
    /// uses.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Warp-level global load and store instructions.
    pub global_loads: u64,
    pub global_stores: u64,
    /// Warp-level shared-memory instructions.
    pub shared_accesses: u64,
    /// Thread-level atomic operations.
    pub atomics: u64,
    /// The most instructions one warp issued (of the blocks run): a launch takes at least
    /// this many dependent issue slots, however many SMs it has.
    pub longest_warp: u64,
}

impl KernelCounters {
    /// Counts of a sample of `ran` blocks scaled to `total`.
    pub fn scaled(&self, ran: u64, total: u64) -> KernelCounters {
        let s = |v: u64| ((v as u128 * total as u128) / ran.max(1) as u128) as u64;
        KernelCounters {
            warp_instructions: s(self.warp_instructions),
            thread_instructions: s(self.thread_instructions),
            sectors_read: s(self.sectors_read),
            sectors_written: s(self.sectors_written),
            bytes_read: s(self.bytes_read),
            bytes_written: s(self.bytes_written),
            global_loads: s(self.global_loads),
            global_stores: s(self.global_stores),
            shared_accesses: s(self.shared_accesses),
            atomics: s(self.atomics),
            longest_warp: self.longest_warp,
        }
    }
}

/// One launch as the profile records it.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchRecord {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: usize,
    /// Blocks executed, of `blocks` (fewer when the launch was sampled).
    pub blocks_run: u64,
    pub blocks: u64,
    #[serde(flatten)]
    pub counters: KernelCounters,
}
