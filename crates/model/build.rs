//! Builds this crate's CUDA kernels (`kernels/*.cu`) twice:
//! - always, as C for the host (`kernels/host/`), a static library the tests call to run each
//!   kernel's own source one thread at a time, without a GPU;
//! - with the `cuda` feature, to PTX in OUT_DIR with a `ptx.rs` of one `&str` per file, which
//!   `src/cuda_kernels.rs` embeds, and an `entries.rs` of one function per kernel whose
//!   parameters have the sizes of the kernel's `.entry` parameters in that PTX: `launch!`
//!   calls it with its arguments, so a launch with a wrong count or size of arguments does not
//!   compile. CUDA_COMPUTE_CAP picks the GPU generation, as for Candle's kernels
//!   (scripts/cuda-toolchain.sh sets it).

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
        let mut entries = String::new();
        let mut files: Vec<_> = std::fs::read_dir(&out)
            .expect("OUT_DIR is readable")
            .map(|e| e.expect("a readable entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "ptx"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("nvcc wrote the PTX");
            for (name, sizes) in entry_parameters(&text) {
                let params: Vec<String> = sizes
                    .iter()
                    .map(|s| format!("_: &impl KernelParam<{s}>"))
                    .collect();
                entries.push_str(&format!("pub fn {name}({}) {{}}\n", params.join(", ")));
            }
        }
        std::fs::write(out.join("entries.rs"), entries).expect("OUT_DIR is writable");
    }
}

/// Each `.entry` of a PTX module with the byte size of each parameter (`.param .u64 p` is 8,
/// `.param .align 8 .b8 p[16]` is 16).
#[cfg(feature = "cuda")]
fn entry_parameters(ptx: &str) -> Vec<(String, Vec<usize>)> {
    let mut entries = Vec::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        let after = &rest[at + ".entry ".len()..];
        let open = after.find('(').expect("an .entry has a parameter list");
        let close = after.find(')').expect("an .entry's parameter list ends");
        let sizes = after[open + 1..close]
            .split(',')
            .filter(|p| p.contains(".param"))
            .map(|p| {
                let words: Vec<&str> = p.split_whitespace().collect();
                let ty = words.iter().rev().nth(1).expect("a parameter has a type");
                let bytes: usize = ty
                    .trim_start_matches(".b")
                    .trim_start_matches(".u")
                    .trim_start_matches(".s")
                    .trim_start_matches(".f")
                    .parse::<usize>()
                    .expect("a sized type")
                    / 8;
                match words.last().and_then(|n| n.split_once('[')) {
                    Some((_, count)) => {
                        bytes
                            * count
                                .trim_end_matches(']')
                                .parse::<usize>()
                                .expect("an array length")
                    }
                    None => bytes,
                }
            })
            .collect();
        entries.push((after[..open].trim().to_string(), sizes));
        rest = &after[close..];
    }
    entries
}
