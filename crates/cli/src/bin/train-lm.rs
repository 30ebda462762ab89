//! `train-lm`: trains a SwiGLU or dynActGLU decoder as a run config says, with command-line
//! overrides ([`dynact_cli::train_lm`]).

// glibc hands large tensor buffers back to the kernel after every step and page-faults them
// in again; mimalloc keeps them (about 30% faster training on CPU, see the train_step bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    dynact_cli::train_lm::main()
}
