//! The project's CUDA kernels (crates/model/kernels), compiled by nvcc to PTX and run on the
//! simulator with the launches the ops make (cudarc's `for_num_elems`: blocks of 1024), against
//! the same source compiled as C and run on the host (crates/model/kernels/host), which the
//! model's tests hold equal to the CPU kernels. The row kernels (RMSNorm, causal softmax,
//! cross-entropy) reduce with warp shuffles, and the embedding's backward takes a ballot, which
//! the host emulation cannot run: they are compared with the CPU kernels themselves, which add
//! in the same order.
//!
//! Two comparisons, because nvcc and a C compiler do not compute the same thing from the same
//! source: nvcc contracts a*b+c into one fma (one rounding instead of two), and its expf is
//! ex2.approx (2 ulp) scaled, not the host's libm. With contraction off (`-fmad=false`), every
//! kernel without expf (the FFN gates take the exp of kernels/exp.cuh, plain IEEE arithmetic)
//! must equal the host bit for bit: that checks the simulator's integer and IEEE arithmetic,
//! addressing and launch geometry exactly. As built (contraction on), every output must be
//! within 1e-6 of its largest value.

mod common;

use common::{max_rel, max_ulp, normwise, nvcc, project_ptx, values};
use dynact_cuda_sim::{Arg, Gpu, LaunchConfig};
use dynact_model::host_emulation::*;
use dynact_model::param_chunks::{chunks_of, OptimizerState, StepRecord, CHUNK};

/// The host emulation's grid: small, so its grid-stride loops take several passes.
const HOST_GRID: (u32, u32) = (3, 32);

/// One output of one kernel: what the simulator and the host computed.
struct Output {
    what: String,
    sim: Vec<f32>,
    host: Vec<f32>,
}

fn out(what: &str, sim: Vec<f32>, host: Vec<f32>) -> Output {
    Output {
        what: what.to_string(),
        sim,
        host,
    }
}

/// cudarc's `LaunchConfig::for_num_elems`, which the ops' `launch!` uses.
fn per_item(items: usize) -> LaunchConfig {
    LaunchConfig::linear((items.max(1) as u32).div_ceil(1024), 1024)
}

struct Sim {
    gpu: Gpu,
    module: dynact_cuda_sim::ModuleId,
}

impl Sim {
    fn new(ptx: &str) -> Sim {
        let mut gpu = Gpu::new();
        let module = gpu.load_ptx(ptx).expect("nvcc's PTX parses");
        Sim { gpu, module }
    }
    fn zeros(&mut self, n: usize) -> u64 {
        self.gpu.upload(&vec![f32::NAN; n])
    }
    fn run(&mut self, kernel: &str, items: usize, args: &[Arg]) {
        self.launch(kernel, per_item(items), args);
    }
    /// A launch of `kernel` on `config`; a fault fails the test with the simulator's line.
    fn launch(&mut self, kernel: &str, config: LaunchConfig, args: &[Arg]) {
        if let Err(e) = self.gpu.launch(self.module, kernel, config, args) {
            panic!("{e}");
        }
    }
    fn get(&self, ptr: u64, n: usize) -> Vec<f32> {
        self.gpu.download(ptr, n).unwrap()
    }
    /// A row kernel (one warp per row) launched as the op does, rows * 32 threads, and again on
    /// a grid of 4 warps whose row loop takes many passes: the `n` values at `output` that
    /// both leave, which must be the same.
    fn run_rows(
        &mut self,
        kernel: &str,
        rows: usize,
        args: &[Arg],
        output: u64,
        n: usize,
    ) -> Vec<f32> {
        self.run(kernel, rows * 32, args);
        let full = self.get(output, n);
        let nans: Vec<u8> = (0..n).flat_map(|_| f32::NAN.to_le_bytes()).collect();
        self.gpu.write(output, &nans).unwrap();
        let small = LaunchConfig::linear(2, 64);
        self.launch(kernel, small, args);
        let again = self.get(output, n);
        assert_eq!(
            max_ulp(&full, &again),
            0,
            "{kernel}: a small grid computes otherwise"
        );
        full
    }
}

/// The CPU kernel's output of `f` at `inputs` (values and shapes), and the gradients of
/// sum(f(inputs) * g) with respect to each input: what the row kernels, which reduce with
/// warp shuffles the host emulation cannot run, are compared with directly.
fn on_cpu(
    inputs: &[(&[f32], &[usize])],
    g: &[f32],
    f: impl Fn(&[candle_core::Tensor]) -> candle_core::Tensor,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    use candle_core::{Device, Tensor, Var};
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let vars: Vec<Var> = inputs
        .iter()
        .map(|(v, shape)| Var::from_slice(v, *shape, &Device::Cpu).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors);
    let g = Tensor::from_slice(g, y.shape(), &Device::Cpu).unwrap();
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = vars.iter().map(|v| flat(grads.get(v).unwrap())).collect();
    (flat(&y), grads)
}

fn philox_dropout(ptx: &str) -> Vec<Output> {
    let all = values(5_004, 1, 2.0);
    let seed = 0x0123_4567_89AB_CDEFu64;
    let mut outs = Vec::new();
    // Mask offsets a multiple of 4 and not (16-byte accesses, and scalar ones), and an input
    // that starts 4 bytes into its allocation (scalar, though the offset is a multiple of 4).
    for (first, keep, skip) in [
        (0u64, 0.9, 0usize),
        (6, 0.5, 0),
        (u32::MAX as u64 + 3, 0.7, 0),
        (8, 0.6, 1),
    ] {
        let x = &all[skip..all.len() - 1 + skip];
        let n = x.len() as u64;
        let scale = (1.0 / keep) as f32;
        let threshold = dynact_model::philox::keep_threshold(keep);
        let mut host = vec![f32::NAN; x.len()];
        // SAFETY: both buffers hold n elements.
        unsafe {
            dynact_philox_dropout_f32_on_host(
                x.as_ptr(),
                host.as_mut_ptr(),
                n,
                first,
                seed as u32,
                (seed >> 32) as u32,
                threshold,
                scale,
                HOST_GRID.0,
                HOST_GRID.1,
            )
        };
        let mut sim = Sim::new(ptx);
        let (dx, dy) = (sim.gpu.upload(&all) + 4 * skip as u64, sim.zeros(x.len()));
        let blocks = ((first + n - 1) / 4 - first / 4 + 1) as usize;
        let args = [
            Arg::Ptr(dx),
            Arg::Ptr(dy),
            Arg::U64(n),
            Arg::U64(first),
            Arg::U32(seed as u32),
            Arg::U32((seed >> 32) as u32),
            Arg::U64(threshold),
            Arg::F32(scale),
        ];
        sim.run("philox_dropout_f32", blocks, &args);
        outs.push(out(
            &format!("dropout first {first} keep {keep} input at element {skip}"),
            sim.get(dy, x.len()),
            host,
        ));
    }
    outs
}

fn causal_softmax(ptx: &str) -> Vec<Output> {
    // (B, H, T, S) = (2, 3, 37, 45): rows longer than a warp, 8 cached positions.
    let (t, s) = (37usize, 45usize);
    let rows = 2 * 3 * t;
    let x = values(rows * s, 2, 3.0);
    let g = values(rows * s, 3, 1.0);
    let scale = 0.35f32;
    let (cpu_y, cpu_dx) = on_cpu(&[(&x, &[2, 3, t, s])], &g, |v| {
        dynact_model::ops::causal_softmax(&v[0], scale as f64, None).unwrap()
    });
    let mut sim = Sim::new(ptx);
    let (dx_in, dy) = (sim.gpu.upload(&x), sim.zeros(x.len()));
    let args = [
        Arg::Ptr(dx_in),
        Arg::Ptr(dy),
        Arg::U64(rows as u64),
        Arg::U32(t as u32),
        Arg::U32(s as u32),
        Arg::F32(scale),
    ];
    let y = sim.run_rows("causal_softmax_f32", rows, &args, dy, x.len());
    // The backward pass from the CPU's y, so each kernel is compared on its own.
    let (cy, dg, ddx) = (
        sim.gpu.upload(&cpu_y),
        sim.gpu.upload(&g),
        sim.zeros(x.len()),
    );
    let args = [
        Arg::Ptr(cy),
        Arg::Ptr(dg),
        Arg::Ptr(ddx),
        Arg::U64(rows as u64),
        Arg::U32(s as u32),
        Arg::F32(scale),
    ];
    let dx = sim.run_rows("softmax_backward_f32", rows, &args, ddx, x.len());
    vec![
        out("softmax y", y, cpu_y),
        out("softmax dx", dx, cpu_dx[0].clone()),
    ]
}

/// dynActGLU's cases: gate, up and the upstream gradient (rows, C), and per case the
/// parameters [alpha; beta] (per layer or per channel) with SiLU or ReLU, and what the host
/// emulation of kernels/dynact_glu.cu computes from them: y, [d gate; d up; (unwritten)] and the
/// blocks' partial sums.
struct DynactCase {
    per: u32,
    relu: i32,
    params: Vec<f32>,
    host_y: Vec<f32>,
    host_out: Vec<f32>,
    host_partials: Vec<f32>,
}

/// 2,100 rows: 33 blocks of 64, so that a lane of the sums' warp adds two blocks.
const DYNACT_ROWS: usize = 2100;
const DYNACT_C: u32 = 24;

fn dynact_inputs() -> [Vec<f32>; 3] {
    let n = DYNACT_ROWS * DYNACT_C as usize;
    [values(n, 4, 4.0), values(n, 5, 1.0), values(n, 6, 1.0)]
}

fn dynact_cases() -> Vec<DynactCase> {
    let (rows, c) = (DYNACT_ROWS, DYNACT_C);
    let n = rows * c as usize;
    let [gate, up, grad] = dynact_inputs();
    let blocks = rows.div_ceil(64);
    [(1u32, 0i32), (c, 0), (1, 1)]
        .into_iter()
        .map(|(per, relu)| {
            let mut params = values(per as usize, 7, 0.5);
            params.iter_mut().for_each(|a| *a += 1.0);
            params.extend(values(per as usize, 8, 0.3));
            let mut host_y = vec![f32::NAN; n];
            let mut host_out = vec![f32::NAN; 2 * n + 2 * per as usize];
            let mut host_partials = vec![f32::NAN; blocks * 2 * c as usize];
            // SAFETY: the buffers have the sizes the kernels index (see kernels/dynact_glu.cu).
            unsafe {
                dynact_glu_f32_on_host(
                    gate.as_ptr(),
                    up.as_ptr(),
                    params.as_ptr(),
                    host_y.as_mut_ptr(),
                    n as u64,
                    c,
                    per,
                    relu,
                    HOST_GRID.0,
                    HOST_GRID.1,
                );
                dynact_glu_backward_f32_on_host(
                    gate.as_ptr(),
                    up.as_ptr(),
                    grad.as_ptr(),
                    params.as_ptr(),
                    host_out.as_mut_ptr(),
                    host_partials.as_mut_ptr(),
                    rows as u64,
                    c,
                    per,
                    relu,
                    HOST_GRID.0,
                    HOST_GRID.1,
                );
            }
            DynactCase {
                per,
                relu,
                params,
                host_y,
                host_out,
                host_partials,
            }
        })
        .collect()
}

/// kernels/dynact_glu.cu: the gate product and the backward's first stage, against the host.
fn dynact_glu(ptx: &str) -> Vec<Output> {
    let (rows, c) = (DYNACT_ROWS, DYNACT_C);
    let n = rows * c as usize;
    let [gate, up, grad] = dynact_inputs();
    let blocks = rows.div_ceil(64);
    let mut outs = Vec::new();
    for case in dynact_cases() {
        let (per, relu) = (case.per, case.relu);
        let mut sim = Sim::new(ptx);
        let (g, u, dg, p) = (
            sim.gpu.upload(&gate),
            sim.gpu.upload(&up),
            sim.gpu.upload(&grad),
            sim.gpu.upload(&case.params),
        );
        let (y, o, part) = (
            sim.zeros(n),
            sim.zeros(case.host_out.len()),
            sim.zeros(case.host_partials.len()),
        );
        sim.run(
            "dynact_glu_f32",
            n,
            &[
                Arg::Ptr(g),
                Arg::Ptr(u),
                Arg::Ptr(p),
                Arg::Ptr(y),
                Arg::U64(n as u64),
                Arg::U32(c),
                Arg::U32(per),
                Arg::I32(relu),
            ],
        );
        sim.run(
            "dynact_glu_backward_f32",
            blocks * c as usize,
            &[
                Arg::Ptr(g),
                Arg::Ptr(u),
                Arg::Ptr(dg),
                Arg::Ptr(p),
                Arg::Ptr(o),
                Arg::Ptr(part),
                Arg::U64(rows as u64),
                Arg::U32(c),
                Arg::U32(per),
                Arg::I32(relu),
            ],
        );
        let label = format!("dynact_glu per {per} relu {relu}");
        outs.push(out(&format!("{label} y"), sim.get(y, n), case.host_y));
        outs.push(out(
            &format!("{label} d gate, d up"),
            sim.get(o, 2 * n),
            case.host_out[..2 * n].to_vec(),
        ));
        outs.push(out(
            &format!("{label} partials"),
            sim.get(part, case.host_partials.len()),
            case.host_partials,
        ));
    }
    outs
}

/// kernels/dynact_glu_sums.cu: the parameter gradients from the host's partials (so that the
/// stages are compared apart), a warp per (parameter, channel) and then a thread per
/// parameter, against the CPU op's.
fn dynact_glu_sums(ptx: &str) -> Vec<Output> {
    let (rows, c) = (DYNACT_ROWS, DYNACT_C);
    let n = rows * c as usize;
    let [gate, up, grad] = dynact_inputs();
    let blocks = rows.div_ceil(64);
    let mut outs = Vec::new();
    for case in dynact_cases() {
        let mut sim = Sim::new(ptx);
        let partials = sim.gpu.upload(&case.host_partials);
        let o = sim.zeros(case.host_out.len());
        let sums = sim.gpu.upload(&vec![f64::NAN; 2 * c as usize]);
        sim.run(
            "dynact_glu_channel_sums_f64",
            2 * c as usize * 32,
            &[
                Arg::Ptr(partials),
                Arg::Ptr(sums),
                Arg::U64(blocks as u64),
                Arg::U32(c),
            ],
        );
        sim.run(
            "dynact_glu_param_grads_f32",
            2 * case.per as usize,
            &[
                Arg::Ptr(sums),
                Arg::Ptr(o),
                Arg::U64(n as u64),
                Arg::U32(c),
                Arg::U32(case.per),
            ],
        );
        let cpu = dynact_param_grads_on_cpu(
            &gate,
            &up,
            &grad,
            &case.params,
            (rows, c as usize),
            case.relu,
        );
        outs.push(out(
            &format!(
                "dynact_glu per {} relu {} d alpha, d beta",
                case.per, case.relu
            ),
            sim.get(o, case.host_out.len())[2 * n..].to_vec(),
            cpu,
        ));
    }
    outs
}

/// d alpha then d beta of sum(dynact_glu(gate, up) * grad) from the CPU op, with `params`
/// [alpha; beta] (each 1 or C long) and gate, up and grad (rows, C).
fn dynact_param_grads_on_cpu(
    gate: &[f32],
    up: &[f32],
    grad: &[f32],
    params: &[f32],
    (rows, c): (usize, usize),
    relu: i32,
) -> Vec<f32> {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};
    use dynact_model::{BaseAct, DynAct, DynActConfig, Granularity};
    let per = params.len() / 2;
    let cfg = DynActConfig {
        base: if relu == 1 {
            BaseAct::Relu
        } else {
            BaseAct::Silu
        },
        granularity: if per == 1 {
            Granularity::PerLayer
        } else {
            Granularity::PerChannel
        },
        alpha_init: 1.0,
        beta_init: 0.0,
    };
    let vm = VarMap::new();
    let act = DynAct::new(
        &cfg,
        c,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let (alpha, beta) = {
        let data = vm.data().lock().unwrap();
        (data["alpha"].clone(), data["beta"].clone())
    };
    for (var, values) in [(&alpha, &params[..per]), (&beta, &params[per..])] {
        var.set(&Tensor::from_slice(values, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let tensor = |v: &[f32]| Tensor::from_slice(v, (rows, c), &Device::Cpu).unwrap();
    let (gate, up) = (
        Var::from_tensor(&tensor(gate)).unwrap(),
        Var::from_tensor(&tensor(up)).unwrap(),
    );
    let y = dynact_model::ffn::dynact_glu(&act, gate.as_tensor(), up.as_tensor()).unwrap();
    let grads = (&y * &tensor(grad))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let flat = |v: &Var| {
        grads
            .get(v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mut out = flat(&alpha);
    out.extend(flat(&beta));
    out
}

fn rms_norm(ptx: &str) -> Vec<Output> {
    // 2,100 rows: 33 blocks of 64, so one lane of the weight gradient's warp adds two.
    let (rows, c) = (2100usize, 40usize);
    let n = rows * c;
    let x = values(n, 9, 2.0);
    let mut w = values(c, 10, 0.5);
    w.iter_mut().for_each(|v| *v += 1.0);
    let g = values(n, 11, 1.0);
    let eps = 1e-5f32;
    let blocks = rows.div_ceil(64);
    let (cpu_y, cpu_grads) = on_cpu(&[(&x, &[rows, c]), (&w, &[c])], &g, |v| {
        dynact_model::ops::rms_norm(&v[0], &v[1], eps as f64).unwrap()
    });
    let mut sim = Sim::new(ptx);
    let (dx, dw, dg) = (sim.gpu.upload(&x), sim.gpu.upload(&w), sim.gpu.upload(&g));
    let (y, o, inv, part) = (
        sim.zeros(n),
        sim.zeros(n + c),
        sim.zeros(rows),
        sim.zeros(blocks * c),
    );
    let (r, cc) = (Arg::U64(rows as u64), Arg::U32(c as u32));
    let args = [
        Arg::Ptr(dx),
        Arg::Ptr(dw),
        Arg::Ptr(y),
        r.clone(),
        cc.clone(),
        Arg::F32(eps),
    ];
    let sim_y = sim.run_rows("rms_norm_f32", rows, &args, y, n);
    let args = [
        Arg::Ptr(dx),
        Arg::Ptr(dw),
        Arg::Ptr(dg),
        Arg::Ptr(o),
        Arg::Ptr(inv),
        r.clone(),
        cc.clone(),
        Arg::F32(eps),
    ];
    sim.run_rows("rms_norm_backward_x_f32", rows, &args, o, n);
    sim.run(
        "rms_norm_backward_w_partials_f32",
        blocks * c,
        &[
            Arg::Ptr(dx),
            Arg::Ptr(dg),
            Arg::Ptr(inv),
            Arg::Ptr(part),
            r.clone(),
            cc.clone(),
        ],
    );
    // One warp per channel.
    sim.run(
        "rms_norm_backward_w_f32",
        c * 32,
        &[Arg::Ptr(part), Arg::Ptr(o), r, cc],
    );
    let mut cpu_out = cpu_grads[0].clone();
    cpu_out.extend(&cpu_grads[1]);
    vec![
        out("rms_norm y", sim_y, cpu_y),
        out("rms_norm dx, dw", sim.get(o, n + c), cpu_out),
    ]
}

fn rope(ptx: &str) -> Vec<Output> {
    // (B, T, heads, D) = (2, 5, 3, 8) to (B, heads, T, D), and back with `inverse`.
    let (rows, t, heads, d) = (2 * 3 * 5usize, 5u32, 3u32, 8u32);
    let x = values(rows * d as usize, 12, 1.0);
    let cos = values((t * d) as usize, 13, 1.0);
    let sin = values((t * d) as usize, 14, 1.0);
    let mut outs = Vec::new();
    for inverse in [0, 1] {
        let mut host = vec![f32::NAN; x.len()];
        // SAFETY: x and host hold rows * d elements, cos and sin t * d.
        unsafe {
            dynact_rope_f32_on_host(
                x.as_ptr(),
                cos.as_ptr(),
                sin.as_ptr(),
                host.as_mut_ptr(),
                rows as u64,
                t,
                heads,
                d,
                inverse,
                HOST_GRID.0,
                HOST_GRID.1,
            )
        };
        let mut sim = Sim::new(ptx);
        let (dx, dc, ds, dy) = (
            sim.gpu.upload(&x),
            sim.gpu.upload(&cos),
            sim.gpu.upload(&sin),
            sim.zeros(x.len()),
        );
        sim.run(
            "rope_f32",
            rows * (d as usize / 2),
            &[
                Arg::Ptr(dx),
                Arg::Ptr(dc),
                Arg::Ptr(ds),
                Arg::Ptr(dy),
                Arg::U64(rows as u64),
                Arg::U32(t),
                Arg::U32(heads),
                Arg::U32(d),
                Arg::I32(inverse),
            ],
        );
        outs.push(out(
            &format!("rope inverse {inverse}"),
            sim.get(dy, x.len()),
            host,
        ));
    }
    outs
}

fn swiglu(ptx: &str) -> Vec<Output> {
    let n = 3_001usize;
    let (gate, up, grad) = (values(n, 15, 6.0), values(n, 16, 1.0), values(n, 17, 1.0));
    let mut host_y = vec![f32::NAN; n];
    let mut host_out = vec![f32::NAN; 2 * n];
    // SAFETY: y holds n elements, out 2n.
    unsafe {
        dynact_swiglu_f32_on_host(
            gate.as_ptr(),
            up.as_ptr(),
            grad.as_ptr(),
            host_y.as_mut_ptr(),
            host_out.as_mut_ptr(),
            n as u64,
            HOST_GRID.0,
            HOST_GRID.1,
        )
    };
    let mut sim = Sim::new(ptx);
    let (g, u, dg, y, o) = (
        sim.gpu.upload(&gate),
        sim.gpu.upload(&up),
        sim.gpu.upload(&grad),
        sim.zeros(n),
        sim.zeros(2 * n),
    );
    sim.run(
        "swiglu_f32",
        n,
        &[Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(y), Arg::U64(n as u64)],
    );
    sim.run(
        "swiglu_backward_f32",
        n,
        &[
            Arg::Ptr(g),
            Arg::Ptr(u),
            Arg::Ptr(dg),
            Arg::Ptr(o),
            Arg::U64(n as u64),
        ],
    );
    vec![
        out("swiglu y", sim.get(y, n), host_y),
        out("swiglu d gate, d up", sim.get(o, 2 * n), host_out),
    ]
}

fn cross_entropy(ptx: &str) -> Vec<Output> {
    // Rows of 300 logits large enough that an unshifted exp would overflow.
    let (rows, v) = (37usize, 300usize);
    let logits = values(rows * v, 18, 40.0);
    let targets: Vec<u32> = (0..rows as u32).map(|r| r * 97 % v as u32).collect();
    let grad = values(rows, 19, 1.0);
    let (cpu_loss, cpu_grads) = on_cpu(&[(&logits, &[rows, v])], &grad, |x| {
        let t = candle_core::Tensor::new(targets.as_slice(), &candle_core::Device::Cpu).unwrap();
        dynact_model::ops::token_nll(&x[0], &t).unwrap()
    });
    let mut sim = Sim::new(ptx);
    let (l, t, g) = (
        sim.gpu.upload(&logits),
        sim.gpu.upload(&targets),
        sim.gpu.upload(&grad),
    );
    let (loss, o) = (sim.zeros(rows), sim.zeros(rows * v));
    let loss_args = |t| {
        [
            Arg::Ptr(l),
            Arg::Ptr(t),
            Arg::Ptr(loss),
            Arg::U64(rows as u64),
            Arg::U32(v as u32),
        ]
    };
    let sim_loss = sim.run_rows("cross_entropy_f32", rows, &loss_args(t), loss, rows);
    let args = [
        Arg::Ptr(l),
        Arg::Ptr(t),
        Arg::Ptr(g),
        Arg::Ptr(o),
        Arg::U64(rows as u64),
        Arg::U32(v as u32),
    ];
    let sim_out = sim.run_rows("cross_entropy_backward_f32", rows, &args, o, rows * v);
    // A target id past the vocabulary: a NaN loss for its row, as the op documents, and the
    // other rows as before.
    let mut bad = targets.clone();
    bad[5] = v as u32 + 3;
    let bad = sim.gpu.upload(&bad);
    let bad_loss = sim.run_rows("cross_entropy_f32", rows, &loss_args(bad), loss, rows);
    assert!(
        bad_loss[5].is_nan(),
        "a target past the vocabulary gives NaN"
    );
    let (mut a, mut b) = (bad_loss, sim_loss.clone());
    a.remove(5);
    b.remove(5);
    assert_eq!(max_ulp(&a, &b), 0, "the other rows' losses change");
    vec![
        out("cross_entropy loss", sim_loss, cpu_loss),
        out("cross_entropy d logits", sim_out, cpu_grads[0].clone()),
    ]
}

/// The parameters of the optimizer's tests: one of several chunks with a remainder, one
/// shorter than a chunk, one of a single element.
fn param_sizes() -> [usize; 3] {
    [CHUNK + 300, 777, 1]
}

/// One block of 256 threads per chunk of the table, as the trainer launches them.
fn per_chunk(count: usize) -> LaunchConfig {
    LaunchConfig::linear(count as u32, 256)
}

/// AdamW's update of three parameters in one launch over a chunk table, each with its own
/// learning rate and decay.
fn adamw(ptx: &str) -> Vec<Output> {
    let (scale, b1, b2, eps) = (0.7f32, 0.9f32, 0.99f32, 1e-8f32);
    let (inv_bias1, inv_bias2) = (1.0 / (1.0 - b1 * b1), 1.0 / (1.0 - b2 * b2));
    let mut sim = Sim::new(ptx);
    let (mut host_table, mut sim_table) = (Vec::new(), Vec::new());
    // Per parameter: theta, m, v, g as the host updates them, and their device copies.
    let mut host = Vec::new();
    let mut device = Vec::new();
    for (p, n) in param_sizes().into_iter().enumerate() {
        let seed = 20 + 4 * p as u64;
        let (g, theta) = (values(n, seed, 1.0), values(n, seed + 1, 1.0));
        let m = values(n, seed + 2, 0.1);
        let v: Vec<f32> = values(n, seed + 3, 0.01).iter().map(|v| v.abs()).collect();
        let (lr, decay) = (1e-3 * (1 + p) as f32, if p == 1 { 1.0 } else { 0.9999 });
        let at = [&theta, &m, &v, &g].map(|b| sim.gpu.upload(b));
        sim_table.extend(chunks_of(at, n, lr, decay));
        device.push(at);
        host.push([theta, m, v, g]);
        let [theta, m, v, g] = host.last_mut().unwrap();
        let at = [theta, m, v, g].map(|b| b.as_mut_ptr() as u64);
        host_table.extend(chunks_of(at, n, lr, decay));
    }
    let state = OptimizerState {
        scale,
        inv_bias1,
        inv_bias2,
        ..OptimizerState::default()
    };
    // SAFETY: the table's addresses are of the live buffers of `host`, of its lengths.
    unsafe {
        dynact_adamw_f32_on_host(
            host_table.as_ptr(),
            host_table.len() as u32,
            &state,
            b1,
            1.0 - b1,
            b2,
            1.0 - b2,
            eps,
            HOST_GRID.0,
            HOST_GRID.1,
        )
    };
    let table = sim.gpu.upload(&sim_table);
    let args = [
        Arg::Ptr(table),
        Arg::U32(sim_table.len() as u32),
        Arg::Ptr(sim.gpu.upload(&[state])),
        Arg::F32(b1),
        Arg::F32(1.0 - b1),
        Arg::F32(b2),
        Arg::F32(1.0 - b2),
        Arg::F32(eps),
    ];
    let config = per_chunk(sim_table.len());
    sim.launch("adamw_update_f32", config, &args);
    let mut outputs = Vec::new();
    for (p, (h, d)) in host.into_iter().zip(device).enumerate() {
        let n = h[0].len();
        for (k, what) in ["theta", "m", "v"].iter().enumerate() {
            outputs.push(out(
                &format!("adamw {what} {p}"),
                sim.get(d[k], n),
                h[k].clone(),
            ));
        }
    }
    outputs
}

fn cast(ptx: &str) -> Vec<Output> {
    let n = 3_001usize;
    let x = values(n, 18, 100.0);
    // bf16 patterns spread over every exponent, both signs, infinities and NaNs.
    let bf: Vec<u16> = (0..n).map(|i| (i * 21_841 % 65_536) as u16).collect();
    let (mut host_down, mut host_up) = (vec![0u16; n], vec![f32::NAN; n]);
    // SAFETY: every buffer holds n elements.
    unsafe {
        dynact_cast_f32_to_bf16_on_host(
            x.as_ptr(),
            host_down.as_mut_ptr(),
            n as u64,
            HOST_GRID.0,
            HOST_GRID.1,
        );
        dynact_cast_bf16_to_f32_on_host(
            bf.as_ptr(),
            host_up.as_mut_ptr(),
            n as u64,
            HOST_GRID.0,
            HOST_GRID.1,
        );
    }
    let mut sim = Sim::new(ptx);
    let (xi, bi, down, up) = (
        sim.gpu.upload(&x),
        sim.gpu.upload(&bf),
        sim.gpu.upload(&vec![0u16; n]),
        sim.zeros(n),
    );
    sim.run(
        "cast_f32_to_bf16",
        n,
        &[Arg::Ptr(xi), Arg::Ptr(down), Arg::U64(n as u64)],
    );
    sim.run(
        "cast_bf16_to_f32",
        n,
        &[Arg::Ptr(bi), Arg::Ptr(up), Arg::U64(n as u64)],
    );
    // A bf16 as the f32 of the same high bits, which compares them bit for bit.
    let widen = |b: Vec<u16>| -> Vec<f32> {
        b.iter()
            .map(|b| f32::from_bits(u32::from(*b) << 16))
            .collect()
    };
    vec![
        out(
            "cast to bf16",
            widen(sim.gpu.download::<u16>(down, n).unwrap()),
            widen(host_down),
        ),
        out("cast to f32", sim.get(up, n), host_up),
    ]
}

fn heads(ptx: &str) -> Vec<Output> {
    // (B, T, heads, D) = (2, 5, 3, 8) to (B, heads, T, D), and back with `inverse`.
    let (rows, t, heads, d) = (2 * 3 * 5usize, 5u32, 3u32, 8u32);
    let x = values(rows * d as usize, 15, 1.0);
    let mut outs = Vec::new();
    for inverse in [0, 1] {
        let mut host = vec![f32::NAN; x.len()];
        // SAFETY: x and host hold rows * d elements.
        unsafe {
            dynact_move_heads_f32_on_host(
                x.as_ptr(),
                host.as_mut_ptr(),
                rows as u64,
                t,
                heads,
                d,
                inverse,
                HOST_GRID.0,
                HOST_GRID.1,
            )
        };
        let mut sim = Sim::new(ptx);
        let (dx, dy) = (sim.gpu.upload(&x), sim.zeros(x.len()));
        let args = [
            Arg::Ptr(dx),
            Arg::Ptr(dy),
            Arg::U64(rows as u64),
            Arg::U32(t),
            Arg::U32(heads),
            Arg::U32(d),
            Arg::I32(inverse),
        ];
        sim.run("move_heads_f32", x.len(), &args);
        outs.push(out(
            &format!("heads inverse {inverse}"),
            sim.get(dy, x.len()),
            host,
        ));
    }
    outs
}

fn embedding(ptx: &str) -> Vec<Output> {
    // 300 positions (not a whole number of warps) over a table of 37 rows of 70 channels (the
    // last 32-channel chunk partial); ids repeat, and row 36 is never used (its gradient 0).
    let (positions, vocab, c) = (300usize, 37usize, 70usize);
    let ids: Vec<u32> = (0..positions)
        .map(|p| ((p * 7 + p / 5) % (vocab - 1)) as u32)
        .collect();
    let table = values(vocab * c, 40, 1.0);
    let g = values(positions * c, 41, 1.0);
    let ids_cpu = candle_core::Tensor::from_slice(&ids, positions, &candle_core::Device::Cpu)
        .expect("ids on the CPU");
    let (cpu_rows, cpu_grads) = on_cpu(&[(&table, &[vocab, c])], &g, |v| {
        dynact_model::ops::embedding_op(&v[0], &ids_cpu).unwrap()
    });
    let mut sim = Sim::new(ptx);
    let (d_table, d_ids, d_rows) = (
        sim.gpu.upload(&table),
        sim.gpu.upload(&ids),
        sim.zeros(positions * c),
    );
    let forward_args = |ids| {
        [
            Arg::Ptr(d_table),
            Arg::Ptr(ids),
            Arg::Ptr(d_rows),
            Arg::U64(positions as u64),
            Arg::U32(vocab as u32),
            Arg::U32(c as u32),
        ]
    };
    // One warp per position, as the op launches it.
    let sim_rows = sim.run_rows(
        "embedding_f32",
        positions,
        &forward_args(d_ids),
        d_rows,
        positions * c,
    );
    // An id past the table: a row of NaN, the other rows as before.
    let mut bad = ids.clone();
    bad[7] = vocab as u32;
    let bad = sim.gpu.upload(&bad);
    let bad_rows = sim.run_rows(
        "embedding_f32",
        positions,
        &forward_args(bad),
        d_rows,
        positions * c,
    );
    for (p, (row, good)) in bad_rows.chunks(c).zip(sim_rows.chunks(c)).enumerate() {
        if p == 7 {
            assert!(
                row.iter().all(|v| v.is_nan()),
                "an id past the table gives NaN"
            );
        } else {
            assert_eq!(
                max_ulp(row, good),
                0,
                "position {p} changes with another's id"
            );
        }
    }
    let (d_g, d_out) = (sim.gpu.upload(&g), sim.zeros(vocab * c));
    let args = [
        Arg::Ptr(d_ids),
        Arg::Ptr(d_g),
        Arg::Ptr(d_out),
        Arg::U64(positions as u64),
        Arg::U32(vocab as u32),
        Arg::U32(c as u32),
    ];
    // One warp per (row, 32 channels), as the op launches it.
    let warps = vocab * c.div_ceil(32);
    let sim_out = sim.run_rows("embedding_backward_f32", warps, &args, d_out, vocab * c);
    vec![
        out("embedding rows", sim_rows, cpu_rows),
        out("embedding d table", sim_out, cpu_grads[0].clone()),
    ]
}

type Runner = fn(&str) -> Vec<Output>;

/// Every kernel file, whether its arithmetic has expf (then ex2.approx bounds the match).
const KERNELS: [(&str, Runner, bool); 12] = [
    ("philox_dropout", philox_dropout, false),
    ("embedding", embedding, false),
    ("heads", heads, false),
    ("rms_norm", rms_norm, false),
    ("rope", rope, false),
    ("adamw", adamw, false),
    ("cast", cast, false),
    ("causal_softmax", causal_softmax, true),
    ("dynact_glu", dynact_glu, false),
    ("dynact_glu_sums", dynact_glu_sums, false),
    ("swiglu", swiglu, false),
    ("cross_entropy", cross_entropy, true),
];

#[test]
fn without_contraction_the_kernels_equal_their_host_twins_bit_for_bit() {
    let Some(nvcc) = nvcc() else { return };
    for (name, run, has_exp) in KERNELS {
        let ptx = project_ptx(&nvcc, name, false);
        for o in run(&ptx) {
            let ulp = max_ulp(&o.sim, &o.host);
            if has_exp {
                // ex2.approx.ftz is within 2 ulp of 2^x; expf's range reduction and the sums
                // after it keep that to a few ulp, or a small error relative to the row.
                assert!(
                    ulp <= 16 || max_rel(&o.sim, &o.host, 1e-3) < 2e-5,
                    "{}: {ulp} ulp apart",
                    o.what
                );
            } else {
                assert_eq!(ulp, 0, "{}: {ulp} ulp apart", o.what);
            }
        }
    }
}

#[test]
fn as_built_the_kernels_are_within_a_millionth_of_the_output_scale_of_their_host_twins() {
    let Some(nvcc) = nvcc() else { return };
    for (name, run, _) in KERNELS {
        let ptx = project_ptx(&nvcc, name, true);
        for o in run(&ptx) {
            // One rounding fewer per contracted a*b+c, which a difference of nearly equal
            // terms (RMSNorm's dx) magnifies element-wise: the bound is on the error relative
            // to the output's scale.
            let err = normwise(&o.sim, &o.host);
            eprintln!(
                "{:40} {:>6} ulp, {err:.1e} of the largest value",
                o.what,
                max_ulp(&o.sim, &o.host)
            );
            assert!(
                err < 1e-5,
                "{}: error {err:e} relative to the largest value",
                o.what
            );
        }
    }
}

/// The optimizer's device-side decision, run as the trainer queues a step: the gradients' sum
/// of squares in two launches (a block per chunk, then one block over the chunks' sums),
/// against the sum in f64; the step's record beside it; the clipping scale, the update count
/// and its bias corrections as the host computes them (bit for bit); a non-finite gradient
/// skips the step, counts nothing and leaves the parameters as they were. A grid of fewer
/// blocks than chunks, which loops, gives the same bits.
#[test]
fn the_device_decides_a_step_as_the_host_would() {
    let Some(nvcc) = nvcc() else { return };
    let mut sim = Sim::new(&project_ptx(&nvcc, "grad_norm", true));
    let (b1, b2, clip) = (0.9f64, 0.95f64, 1.5f64);
    // Parameters, moments and gradients of param_sizes(), the last gradient NaN in `poisoned`.
    let grads: Vec<Vec<f32>> = param_sizes()
        .into_iter()
        .enumerate()
        .map(|(p, n)| values(n, 40 + p as u64, 1.0 + p as f32))
        .collect();
    let exact: f64 = grads.iter().flatten().map(|&x| x as f64 * x as f64).sum();
    let mut poisoned = grads.clone();
    poisoned[2][0] = f32::NAN;
    let table_of = |sim: &mut Sim, grads: &[Vec<f32>]| {
        let mut table = Vec::new();
        for g in grads {
            let at = sim.gpu.upload(g);
            table.extend(chunks_of([at; 4], g.len(), 0.0, 1.0));
        }
        (sim.gpu.upload(&table), table.len())
    };
    let (good, count) = table_of(&mut sim, &grads);
    let (bad, _) = table_of(&mut sim, &poisoned);
    let sums = sim.zeros(count);
    let loss = sim.gpu.upload(&[2.5f32]);
    let history = sim.gpu.upload(&[StepRecord::default(); 4]);
    // One step over `table` from `updates` updates, on a grid of `grid` blocks: the state after
    // it and the record in `slot`.
    let mut decide = |table: u64, updates: u32, slot: u32, grid: usize| {
        let state = sim.gpu.upload(&[OptimizerState {
            updates,
            ..OptimizerState::default()
        }]);
        let args = [Arg::Ptr(table), Arg::U32(count as u32), Arg::Ptr(sums)];
        sim.launch("grad_sum_squares_f32", per_chunk(grid), &args);
        let args = [
            Arg::Ptr(sums),
            Arg::U32(count as u32),
            Arg::Ptr(loss),
            Arg::F64(clip),
            Arg::F64(b1),
            Arg::F64(b2),
            Arg::Ptr(state),
            Arg::Ptr(history),
            Arg::U32(slot),
        ];
        let one_block = LaunchConfig::linear(1, 1024);
        sim.launch("grad_clip_f32", one_block, &args);
        let state: OptimizerState = sim.gpu.download(state, 1).unwrap()[0];
        let record: StepRecord = sim.gpu.download(history, 4).unwrap()[slot as usize];
        (state, record)
    };
    for (updates, slot) in [(0u32, 0u32), (999, 1), (40_000, 2)] {
        let (state, record) = decide(good, updates, slot, count);
        let sum = record.sum_squares;
        assert!(
            ((sum as f64 - exact) / exact).abs() < 1e-6,
            "{sum} against {exact}"
        );
        assert_eq!((record.loss, record.skipped), (2.5, 0));
        // The host's arithmetic (crates/trainer/src/optim.rs and train/step.rs).
        let norm = (sum as f64).sqrt();
        assert!(norm > clip, "the test clips");
        let t = updates + 1;
        let expect = OptimizerState {
            updates: t,
            skip: 0,
            scale: (clip / norm) as f32,
            inv_bias1: (1.0 / (1.0 - b1.powi(t as i32))) as f32,
            inv_bias2: (1.0 / (1.0 - b2.powi(t as i32))) as f32,
            unused: 0,
        };
        assert_eq!(state, expect, "after {updates} updates");
        assert_eq!(record.updates, t);
        let (again, _) = decide(good, updates, slot, 1);
        assert_eq!(again, state, "a grid of one block loops over the chunks");
    }
    let (state, record) = decide(bad, 7, 3, count);
    assert_eq!(
        (state.updates, state.skip),
        (7, 1),
        "a NaN gradient skips the step"
    );
    assert_eq!((record.skipped, record.updates), (1, 7));
    assert!(record.sum_squares.is_nan());
}

/// The update does nothing where the state marks the step skipped.
#[test]
fn a_skipped_step_leaves_parameters_and_moments_as_they_were() {
    let Some(nvcc) = nvcc() else { return };
    let mut sim = Sim::new(&project_ptx(&nvcc, "adamw", true));
    let n = 1000;
    let buffers = [10, 11, 12, 13].map(|seed| values(n, seed, 1.0));
    let at = buffers.clone().map(|b| sim.gpu.upload(&b));
    let table: Vec<_> = chunks_of(at, n, 1e-2, 0.99).collect();
    let state = OptimizerState {
        skip: 1,
        scale: 1.0,
        inv_bias1: 10.0,
        inv_bias2: 20.0,
        ..OptimizerState::default()
    };
    let args = [
        Arg::Ptr(sim.gpu.upload(&table)),
        Arg::U32(table.len() as u32),
        Arg::Ptr(sim.gpu.upload(&[state])),
        Arg::F32(0.9),
        Arg::F32(0.1),
        Arg::F32(0.95),
        Arg::F32(0.05),
        Arg::F32(1e-8),
    ];
    sim.launch("adamw_update_f32", per_chunk(table.len()), &args);
    for (b, a) in buffers.iter().zip(at) {
        assert_eq!(&sim.get(a, n), b);
    }
}
