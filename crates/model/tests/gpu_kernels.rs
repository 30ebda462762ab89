//! Every op with a CUDA kernel run on an NVIDIA GPU against the same op on the CPU (values and
//! the gradient of every input), and a whole model's loss and gradients on both. Built with
//! `--features cuda` only; it needs a GPU and fails without one (scripts/gpu-check.sh runs it).
//! Without a GPU, the kernels' own source is checked on the host by tests/fused_ops.rs.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::randn;
use dynact_model::ffn::dynact_glu;
use dynact_model::philox_dropout::PhiloxDropout;
use dynact_model::{
    init_model, ops, BaseAct, DynAct, DynActConfig, FfnKind, ForwardCtx, Granularity, ModelConfig,
};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (cuda:0)")
}

/// The largest difference of two tensors on any devices, in f32.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let on_cpu = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    common::max_abs_diff(&on_cpu(a), &on_cpu(b))
}

/// `f` on `inputs` on `device`: the value and the gradient of every input under sum(f * w).
fn run(
    inputs: &[&Tensor],
    w: &Tensor,
    device: &Device,
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|x| Var::from_tensor(&x.to_device(device).unwrap()).unwrap())
        .collect();
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&xs);
    let w = w.to_device(device).unwrap();
    let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (y, dx)
}

fn compare_on_both(
    inputs: &[&Tensor],
    w: &Tensor,
    tol: f32,
    what: &str,
    f: impl Fn(&[Tensor]) -> Tensor,
) {
    let (y_cpu, dx_cpu) = run(inputs, w, &Device::Cpu, &f);
    let (y_gpu, dx_gpu) = run(inputs, w, &gpu(), &f);
    assert!(y_gpu.device().is_cuda(), "{what}: ran off the GPU");
    let d = max_diff(&y_cpu, &y_gpu);
    assert!(d <= tol, "{what}: values differ by {d}");
    for (i, (a, b)) in dx_cpu.iter().zip(&dx_gpu).enumerate() {
        let d = max_diff(a, b);
        assert!(d <= tol, "{what}: gradient {i} differs by {d}");
    }
}

#[test]
fn philox_dropout_draws_the_same_masks_on_the_gpu() {
    let x = randn(&[123, 37], 1);
    let op = PhiloxDropout {
        seed: 0xFEED_5EED_0000_0042,
        first: 5,
        keep: 0.8,
        scale: 1.25,
    };
    // x * scale or 0 is exact in f32 on both devices: the same bits.
    compare_on_both(&[&x], &randn(&[123, 37], 2), 0.0, "dropout", |t| {
        op.apply(&t[0]).unwrap()
    });
}

#[test]
fn causal_softmax_matches_the_cpu_kernel() {
    let (x, w) = (randn(&[2, 3, 7, 11], 3), randn(&[2, 3, 7, 11], 4));
    compare_on_both(&[&x], &w, 1e-5, "causal softmax", |t| {
        ops::causal_softmax(&t[0], 0.4, None).unwrap()
    });
}

#[test]
fn rope_matches_the_cpu_kernel() {
    // (B, T, H, D) in, (B, H, T, D) out.
    let (x, w) = (randn(&[2, 9, 4, 16], 11), randn(&[2, 4, 9, 16], 12));
    let angles = randn(&[9, 16], 13);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    compare_on_both(&[&x], &w, 1e-5, "rope", |t| {
        let device = t[0].device();
        let (c, s) = (
            cos.to_device(device).unwrap(),
            sin.to_device(device).unwrap(),
        );
        ops::rope(&t[0], &c, &s).unwrap()
    });
}

/// A narrowed tensor is contiguous but starts inside its storage: a kernel given the storage's
/// start instead of the layout's would read the rows before it.
#[test]
fn ops_read_their_inputs_at_the_layout_s_start_offset() {
    let (x, weight, w) = (
        randn(&[5, 70, 48], 11),
        randn(&[48], 12),
        randn(&[4, 70, 48], 13),
    );
    compare_on_both(&[&x, &weight], &w, 1e-4, "rms norm of rows 1..5", |t| {
        ops::rms_norm(&t[0].narrow(0, 1, 4).unwrap(), &t[1], 1e-5).unwrap()
    });
    let up = randn(&[5, 70, 48], 14);
    compare_on_both(&[&x, &up], &w, 1e-4, "swiglu of rows 1..5", |t| {
        let (g, u) = (t[0].narrow(0, 1, 4).unwrap(), t[1].narrow(0, 1, 4).unwrap());
        dynact_model::ffn::swiglu(&g, &u).unwrap()
    });
}

#[test]
fn rms_norm_matches_the_cpu_kernel() {
    let (x, weight, w) = (
        randn(&[4, 70, 48], 8),
        randn(&[48], 9),
        randn(&[4, 70, 48], 10),
    );
    compare_on_both(&[&x, &weight], &w, 1e-4, "rms norm", |t| {
        ops::rms_norm(&t[0], &t[1], 1e-5).unwrap()
    });
}

#[test]
fn casts_to_bf16_and_back_match_the_cpu_bit_for_bit() {
    // Down to bf16 and up again, so the values and the gradient pass through both kernels;
    // on the CPU both are Candle's own casts.
    let (x, w) = (
        (randn(&[5, 33, 70], 17) * 50.0).unwrap(),
        randn(&[5, 33, 70], 18),
    );
    compare_on_both(&[&x], &w, 0.0, "cast", |t| {
        let down = ops::cast(&t[0], DType::BF16).unwrap();
        assert_eq!(down.dtype(), DType::BF16);
        ops::cast(&down, DType::F32).unwrap()
    });
}

#[test]
fn widened_products_match_the_cpu() {
    // f32 inputs cast to bf16, one cuBLAS GEMM with an f32 result on the GPU; Candle's f32
    // product of the widened operands on the CPU. Only the order of the sums differs.
    for (form, a, b) in [
        (ops::Form::AB, [3, 6, 10], [3, 10, 4]),
        (ops::Form::ABt, [3, 6, 10], [3, 4, 10]),
        (ops::Form::AtB, [3, 10, 6], [3, 10, 4]),
    ] {
        let (a, b, w) = (randn(&a, 41), randn(&b, 42), randn(&[3, 6, 4], 43));
        compare_on_both(&[&a, &b], &w, 1e-4, &format!("product {form:?}"), |t| {
            ops::product(&t[0], &t[1], form, DType::BF16).unwrap()
        });
    }
}

#[test]
fn the_embedding_and_its_backward_match_the_cpu_bit_for_bit() {
    // Ids repeating over a table of 37 rows of 70 channels; the gradient's rows of one id are
    // added in position order on both.
    let table = randn(&[37, 70], 44);
    let ids: Vec<u32> = (0..3 * 50u32).map(|p| (p * 7 + p / 5) % 36).collect();
    let w = randn(&[3, 50, 70], 45);
    compare_on_both(&[&table], &w, 0.0, "embedding", |t| {
        let ids = Tensor::from_slice(&ids, (3, 50), t[0].device()).unwrap();
        ops::embedding_op(&t[0], &ids).unwrap()
    });
}

#[test]
fn moving_heads_matches_the_cpu_bit_for_bit() {
    let (x, w) = (randn(&[2, 9, 4, 16], 46), randn(&[2, 9, 4, 16], 47));
    compare_on_both(&[&x], &w, 0.0, "heads first and back", |t| {
        let first = ops::heads_first(&t[0]).unwrap();
        assert_eq!(first.dims(), &[2, 4, 9, 16]);
        ops::heads_last(&(first * 3.0).unwrap()).unwrap()
    });
}

#[test]
fn swiglu_matches_the_cpu_kernel() {
    let (g, u, w) = (
        randn(&[3, 40, 96], 14),
        randn(&[3, 40, 96], 15),
        randn(&[3, 40, 96], 16),
    );
    compare_on_both(&[&g, &u], &w, 1e-5, "swiglu", |t| {
        dynact_model::ffn::swiglu(&t[0], &t[1]).unwrap()
    });
}

#[test]
fn cross_entropy_matches_the_cpu_kernel() {
    // 300 rows over a vocabulary of 257 (paper.toml's), logits large enough to need the shift.
    let logits = (randn(&[300, 257], 17) * 20.0).unwrap();
    let ids: Vec<u32> = (0..300u32).map(|r| r * 31 % 257).collect();
    let targets = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap();
    compare_on_both(&[&logits], &randn(&[300], 18), 1e-4, "cross-entropy", |t| {
        let targets = targets.to_device(t[0].device()).unwrap();
        ops::token_nll(&t[0], &targets).unwrap()
    });
}

#[test]
fn dynact_glu_matches_the_cpu_kernel_for_every_parameter() {
    for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
        let cfg = DynActConfig {
            base: BaseAct::Silu,
            granularity,
            alpha_init: 1.3,
            beta_init: 0.2,
        };
        let (gate, up, w) = (
            randn(&[4, 70, 24], 5),
            randn(&[4, 70, 24], 6),
            randn(&[4, 70, 24], 7),
        );
        let grads_on = |device: &Device| {
            let vm = VarMap::new();
            let act =
                DynAct::new(&cfg, 24, VarBuilder::from_varmap(&vm, DType::F32, device)).unwrap();
            let (y, dx) = run(&[&gate, &up], &w, device, &|t| {
                dynact_glu(&act, &t[0], &t[1]).unwrap()
            });
            // The same loss again for the parameters' gradients.
            let g = gate.to_device(device).unwrap();
            let u = up.to_device(device).unwrap();
            let loss = (dynact_glu(&act, &g, &u).unwrap() * w.to_device(device).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let data = vm.data().lock().unwrap();
            let params = ["alpha", "beta"].map(|p| grads.get(&data[p]).unwrap().clone());
            (y, dx, params)
        };
        let (cpu, gpu_run) = (grads_on(&Device::Cpu), grads_on(&gpu()));
        let what = format!("dynact glu {granularity:?}");
        assert!(max_diff(&cpu.0, &gpu_run.0) <= 1e-5, "{what}: values");
        for (a, b) in cpu.1.iter().zip(&gpu_run.1) {
            assert!(max_diff(a, b) <= 1e-5, "{what}: d gate or d up");
        }
        for (a, b) in cpu.2.iter().zip(&gpu_run.2) {
            let scale = max_diff(a, &a.zeros_like().unwrap()).max(1.0);
            assert!(max_diff(a, b) <= 1e-4 * scale, "{what}: d alpha or d beta");
        }
    }
}

#[test]
fn a_model_trains_to_the_same_loss_and_gradients_on_the_gpu() {
    for ffn in [FfnKind::Dynactglu, FfnKind::Swiglu] {
        model_loss_and_gradients_match(ffn);
    }
}

/// A 2-layer model with `ffn`, dropout on: its loss and every gradient on the GPU (f32 and
/// bf16) against the CPU.
fn model_loss_and_gradients_match(ffn: FfnKind) {
    let cfg = ModelConfig {
        ffn,
        vocab_size: 97,
        hidden_size: 64,
        intermediate_size: 160,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 32,
        dropout: 0.2,
        ..ModelConfig::default()
    };
    let ids: Vec<u32> = (0..4 * 32u32).map(|i| (i * 37 + 11) % 97).collect();
    let targets: Vec<u32> = (0..4 * 32u32).map(|i| (i * 53 + 5) % 97).collect();
    let loss_and_grads = |device: &Device, dtype: DType| {
        let (varmap, model) = init_model(&cfg, 9, device).unwrap();
        let model = model.with_compute_dtype(dtype);
        let x = Tensor::from_vec(ids.clone(), (4, 32), device).unwrap();
        let y = Tensor::from_vec(targets.clone(), (4, 32), device).unwrap();
        let loss = model.loss(&x, &y, &ForwardCtx::train(3)).unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let grads: Vec<Tensor> = names
            .iter()
            .map(|n| grads.get(&data[*n]).unwrap().clone())
            .collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (cpu_loss, cpu_grads) = loss_and_grads(&Device::Cpu, DType::F32);
    // (dtype, relative tolerance of the loss, of each gradient against its largest entry)
    for (dtype, tol, grad_tol) in [(DType::F32, 1e-4f32, 1e-3f32), (DType::BF16, 2e-2, 1e-1)] {
        let (gpu_loss, gpu_grads) = loss_and_grads(&gpu(), dtype);
        assert!(
            (gpu_loss - cpu_loss).abs() <= tol * cpu_loss,
            "{ffn:?} {dtype:?}: loss {gpu_loss} on the GPU, {cpu_loss} on the CPU"
        );
        for (a, b) in cpu_grads.iter().zip(&gpu_grads) {
            let scale = max_diff(a, &a.zeros_like().unwrap()).max(1e-3);
            let d = max_diff(a, b);
            assert!(
                d <= grad_tol * scale,
                "{ffn:?} {dtype:?}: a gradient differs by {d} of {scale}"
            );
        }
    }
}

/// `f` on the CPU and on the GPU, in `dtype`: the largest difference relative to the largest
/// value on the CPU must be within `tol`.
fn candle_op(
    what: &str,
    dtype: DType,
    tol: f32,
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Tensor,
) {
    let on = |device: &Device| -> Tensor {
        let xs: Vec<Tensor> = inputs
            .iter()
            .map(|x| {
                let x = x.to_device(device).unwrap();
                if x.dtype() == DType::F32 {
                    x.to_dtype(dtype).unwrap()
                } else {
                    x
                }
            })
            .collect();
        f(&xs)
    };
    let (cpu, gpu) = (on(&Device::Cpu), on(&gpu()));
    assert!(gpu.device().is_cuda(), "{what}: ran off the GPU");
    assert_eq!(cpu.shape(), gpu.shape(), "{what}");
    let scale = cpu
        .to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_diff(&cpu, &gpu) / scale.max(1e-6);
    assert!(
        d <= tol,
        "{what} ({dtype:?}): differs by {d} of the largest value"
    );
}

/// Candle's own CUDA kernels as this model uses them, against its CPU backend, f32 and bf16:
/// binary ops with broadcasting, unary ops, affine, reductions, indexing, where_cond, casts,
/// strided copies and matmuls (cuBLAS).
#[test]
fn candle_s_cuda_ops_match_its_cpu_backend() {
    let (a, b) = (randn(&[3, 5, 8], 21), randn(&[3, 5, 8], 22));
    let row = randn(&[1, 1, 8], 23);
    let ids = Tensor::new(&[4u32, 0, 2, 2, 1], &Device::Cpu).unwrap();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
        candle_op(
            "add, mul, sub, div with broadcasting",
            dtype,
            tol,
            &[&a, &b, &row],
            |t| {
                let x = (&t[0] + &t[1]).unwrap().broadcast_mul(&t[2]).unwrap();
                let y = (&x - &t[1]).unwrap();
                y.broadcast_div(&(t[2].abs().unwrap() + 1.0).unwrap())
                    .unwrap()
            },
        );
        candle_op("exp, silu, sqrt, neg, powf", dtype, tol, &[&a], |t| {
            let x = t[0].exp().unwrap().silu().unwrap();
            let y = t[0].abs().unwrap().sqrt().unwrap().neg().unwrap();
            (x + y.powf(2.0).unwrap()).unwrap()
        });
        candle_op("affine", dtype, tol, &[&a], |t| {
            t[0].affine(0.5, -1.25).unwrap()
        });
        candle_op(
            "sum and max over the last dim, sum over the first",
            dtype,
            4.0 * tol,
            &[&a],
            |t| {
                let s = t[0].sum_keepdim(2).unwrap();
                let m = t[0].max_keepdim(2).unwrap();
                let f = t[0].sum_keepdim(0).unwrap().sum_keepdim(2).unwrap();
                Tensor::cat(
                    &[
                        (s + m).unwrap().flatten_all().unwrap(),
                        f.flatten_all().unwrap(),
                    ],
                    0,
                )
                .unwrap()
            },
        );
        candle_op("index_select and gather", dtype, tol, &[&a, &ids], |t| {
            let rows = t[0].index_select(&t[1], 1).unwrap();
            let g = t[1]
                .reshape((1, 5, 1))
                .unwrap()
                .broadcast_as((3, 5, 1))
                .unwrap()
                .contiguous()
                .unwrap();
            let picked = t[0].gather(&g, 2).unwrap();
            Tensor::cat(
                &[rows.flatten_all().unwrap(), picked.flatten_all().unwrap()],
                0,
            )
            .unwrap()
        });
        candle_op("where_cond", dtype, tol, &[&a, &b], |t| {
            let mask = t[0].ge(&t[1]).unwrap();
            mask.where_cond(&t[0], &t[1]).unwrap()
        });
        candle_op("casts to and from f32 and bf16", dtype, tol, &[&a], |t| {
            let other = if dtype == DType::F32 {
                DType::BF16
            } else {
                DType::F32
            };
            t[0].to_dtype(other).unwrap().to_dtype(dtype).unwrap()
        });
        candle_op(
            "strided copies: transpose, narrow",
            dtype,
            tol,
            &[&a],
            |t| {
                let x = t[0].transpose(1, 2).unwrap().contiguous().unwrap();
                let y = t[0].narrow(2, 3, 4).unwrap().contiguous().unwrap();
                Tensor::cat(&[x.flatten_all().unwrap(), y.flatten_all().unwrap()], 0).unwrap()
            },
        );
        candle_op(
            "batched matmul with a transposed operand",
            dtype,
            2.0 * tol,
            &[&a, &b],
            |t| {
                let bt = t[1].transpose(1, 2).unwrap();
                t[0].matmul(&bt).unwrap()
            },
        );
    }
}
