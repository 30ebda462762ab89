//! A CUDA device on the host, for tests: nvcc's PTX parsed and interpreted with CUDA's
//! semantics, device memory checked on every access, and each launch counted as Nsight
//! Compute would count it.
//!
//! What it is for: running this project's kernels (and, through stand-in CUDA libraries,
//! Candle's) on machines without a GPU, stricter than a GPU about memory (an access outside a
//! live allocation stops the kernel with one line naming the thread, the address and the
//! allocation) and exact about arithmetic (IEEE rounding modes; approximate instructions within
//! PTX's documented error). It is test infrastructure: no product crate depends on it.
//!
//! How it runs a launch: blocks one after another; within a block, warps of 32 lanes step in
//! lockstep (see `exec.rs` for divergence, barriers and shuffles). Big grids can be sampled
//! ([`Gpu::sample_blocks`]), the counts scaled to the whole grid, for profiles only.

mod alu;
mod decode;
mod device;
mod exec;
mod float;
mod inst;
mod lex;
mod memory;
mod parse;
mod profile;
mod thread;

pub use device::{Arg, Gpu, LaunchConfig, ModuleId, SM90_LIMITS};
pub use inst::{Inst, Op};
pub use memory::GLOBAL_BASE;
pub use parse::{parse_module, Kernel, Module, Param};
pub use profile::{KernelCounters, LaunchRecord};

/// Why a module did not load or a launch did not complete: one line.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("PTX line {line}: {what}: {text}")]
    Parse {
        line: u32,
        text: String,
        what: String,
    },
    /// A fault inside a kernel, naming the kernel, block, thread and instruction.
    #[error("{0}")]
    Kernel(String),
    /// A launch refused before it ran (bad configuration or arguments).
    #[error("{0}")]
    Launch(String),
    /// A host-side memory operation on a bad address.
    #[error("{0}")]
    Memory(String),
}
