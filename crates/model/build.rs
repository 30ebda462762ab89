//! Builds this crate's CUDA kernels (`kernels/*.cu`) twice:
//! - always, as C for the host (`kernels/host/`), a static library the tests call to run each
//!   kernel's own source one thread at a time, without a GPU;
//! - with the `cuda` feature, to PTX in OUT_DIR with a `ptx.rs` of one `&str` per file, which
//!   `src/cuda_kernels.rs` embeds. CUDA_COMPUTE_CAP picks the GPU generation, as for Candle's
//!   kernels (scripts/cuda-toolchain.sh sets it).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    cc::Build::new()
        .file("kernels/host/kernels_on_host.c")
        .opt_level(2)
        .warnings(true)
        .compile("dynact_kernels_host");
    #[cfg(feature = "cuda")]
    {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let ptx = cudaforge::KernelBuilder::new()
            .source_dir("kernels")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .and_then(|ptx| ptx.write(out.join("ptx.rs")));
        if let Err(e) = ptx {
            panic!("compiling kernels/*.cu to PTX failed: {e}");
        }
    }
}
