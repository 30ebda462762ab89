//! Bugs planted in launches of the project's kernels, each of which the simulator must catch:
//! by refusing the launch, by stopping the kernel on a bad access, or by a result that differs
//! from the host emulation. docs/cuda-sim.md lists which test catches which.

mod common;

use common::{compile_ptx, nvcc, project_ptx, values};
use dynact_cuda_sim::{Arg, Gpu, LaunchConfig};
use dynact_model::host_emulation::*;

/// swiglu_f32 on the simulator with `args` built from (gate, up, y, n).
fn swiglu_on_sim(
    make_args: impl Fn(u64, u64, u64, u64) -> Vec<Arg>,
    cfg: LaunchConfig,
) -> Result<Vec<f32>, String> {
    let nvcc = nvcc().expect("checked by the caller");
    let n = 2_000usize;
    let mut gpu = Gpu::new();
    let m = gpu.load_ptx(&project_ptx(&nvcc, "swiglu", true)).unwrap();
    let (g, u) = (
        gpu.upload(&values(n, 1, 4.0)),
        gpu.upload(&values(n, 2, 1.0)),
    );
    let y = gpu.upload(&vec![f32::NAN; n]);
    gpu.launch(m, "swiglu_f32", cfg, &make_args(g, u, y, n as u64))
        .map_err(|e| e.to_string())?;
    Ok(gpu.download(y, n).unwrap())
}

fn swiglu_on_host() -> Vec<f32> {
    let n = 2_000usize;
    let (gate, up) = (values(n, 1, 4.0), values(n, 2, 1.0));
    let mut y = vec![f32::NAN; n];
    let mut out = vec![0f32; 2 * n];
    // SAFETY: y holds n elements, out 2n, and grad (up again) n.
    unsafe {
        dynact_swiglu_f32_on_host(
            gate.as_ptr(),
            up.as_ptr(),
            up.as_ptr(),
            y.as_mut_ptr(),
            out.as_mut_ptr(),
            n as u64,
            2,
            64,
        )
    };
    y
}

fn close(a: &[f32], b: &[f32]) -> bool {
    common::normwise(a, b) < 1e-6
}

#[test]
fn the_correct_launch_matches_the_host() {
    if nvcc().is_none() {
        return;
    }
    let y = swiglu_on_sim(
        |g, u, y, n| vec![Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(y), Arg::U64(n)],
        LaunchConfig::linear(2, 1024),
    )
    .unwrap();
    assert!(close(&y, &swiglu_on_host()));
}

#[test]
fn two_pointer_arguments_swapped_give_a_result_the_host_comparison_rejects() {
    if nvcc().is_none() {
        return;
    }
    // gate and up swapped: same sizes, so only the result shows it (silu(u) g is not silu(g) u).
    let y = swiglu_on_sim(
        |g, u, y, n| vec![Arg::Ptr(u), Arg::Ptr(g), Arg::Ptr(y), Arg::U64(n)],
        LaunchConfig::linear(2, 1024),
    )
    .unwrap();
    assert!(!close(&y, &swiglu_on_host()));
}

#[test]
fn a_length_one_too_long_reads_past_the_allocation() {
    if nvcc().is_none() {
        return;
    }
    let err = swiglu_on_sim(
        |g, u, y, n| vec![Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(y), Arg::U64(n + 1)],
        LaunchConfig::linear(2, 1024),
    )
    .unwrap_err();
    assert!(
        err.contains("thread [976, 0, 0] of block [1, 0, 0]")
            && err.contains("0 bytes past the end"),
        "{err}"
    );
}

#[test]
fn an_argument_of_the_wrong_size_is_refused_before_the_launch() {
    if nvcc().is_none() {
        return;
    }
    // n passed as u32 where the kernel takes u64 (a Rust `as u32` too many).
    let err = swiglu_on_sim(
        |g, u, y, n| vec![Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(y), Arg::U32(n as u32)],
        LaunchConfig::linear(2, 1024),
    )
    .unwrap_err();
    assert!(
        err.contains(
            "takes 4 parameters of [8, 8, 8, 8] bytes, the launch passed 4 of [8, 8, 8, 4]"
        ),
        "{err}"
    );
}

#[test]
fn a_grid_one_block_short_leaves_outputs_unwritten_in_a_kernel_without_a_grid_stride_loop() {
    if nvcc().is_none() {
        return;
    }
    // The project's kernels loop over a grid stride, so a short grid still covers every item:
    // the same result. A kernel indexed by block (features.cu's block_sum) leaves its last
    // output as it was.
    let y = swiglu_on_sim(
        |g, u, y, n| vec![Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(y), Arg::U64(n)],
        LaunchConfig::linear(1, 1024),
    )
    .unwrap();
    assert!(
        close(&y, &swiglu_on_host()),
        "grid-stride loops cover every item with fewer blocks"
    );
    let ptx = compile_ptx(&nvcc().unwrap(), "tests/kernels/features.cu", true);
    let mut gpu = Gpu::new();
    let m = gpu.load_ptx(&ptx).unwrap();
    let x = gpu.upload(&vec![1f32; 1024]);
    let out = gpu.upload(&[f32::NAN; 4]);
    gpu.launch(
        m,
        "block_sum",
        LaunchConfig::linear(3, 256),
        &[Arg::Ptr(x), Arg::Ptr(out), Arg::I32(1024)],
    )
    .unwrap();
    let sums: Vec<f32> = gpu.download(out, 4).unwrap();
    assert_eq!(&sums[..3], &[256.0; 3]);
    assert!(
        sums[3].is_nan(),
        "the missing block's output stays unwritten"
    );
}
