//! Builds this crate's CUDA kernels (`kernels/*.cu`) twice:
//! - always, as C for the host (`kernels/host/`), a static library the tests call to run each
//!   kernel's own source one thread at a time, without a GPU;
//! - with the `cuda` feature, to PTX in OUT_DIR, which the crate embeds. CUDA_COMPUTE_CAP picks
//!   the GPU generation, as for Candle's kernels (scripts/cuda-toolchain.sh sets it).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    cc::Build::new()
        .file("kernels/host/philox_dropout_host.c")
        .opt_level(2)
        .warnings(true)
        .compile("dynact_kernels_host");
    #[cfg(feature = "cuda")]
    {
        let result = cudaforge::KernelBuilder::new()
            .source_dir("kernels")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx();
        if let Err(e) = result {
            panic!("compiling kernels/*.cu to PTX failed: {e}");
        }
    }
}
