//! Each fused CPU kernel (RMSNorm, causal softmax, causal attention, cross-entropy, RoPE,
//! SwiGLU, dynAct)
//! against the plain Candle composition it replaces, its `<op>_reference` in `ops`: same values,
//! same gradients, on the same f32 CPU input and against the composition run in f64; and the
//! source of each CUDA kernel, compiled for the host, against its CPU twin.

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use common::{max_abs_diff, randn};
use dynact_model::host_emulation::*;
use dynact_model::ops;
use dynact_model::ops::causal_mask;

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < tol, "{what}: max difference {d}");
}

/// Values and the gradients of every input, in f32, of `f` run on `inputs` (cast to `dtype`),
/// with `sum(f * w)` as the loss.
fn run(
    inputs: &[&Tensor],
    w: &Tensor,
    dtype: DType,
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|x| Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap())
        .collect();
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&xs);
    let grads = (&y * w.to_dtype(y.dtype()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let dx = vars.iter().map(|v| f32(grads.get(v).unwrap())).collect();
    (f32(&y), dx)
}

/// `fused` (the public op, which takes its fused kernel on f32 CPU input) against `reference`
/// (the op's `_reference` composition) on the same f32 input, and against `reference` run in
/// f64 and cast back: values and the gradient of every input.
fn compare(
    inputs: &[&Tensor],
    w: &Tensor,
    fused: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
    what: &str,
) {
    let (y, dx) = run(inputs, w, DType::F32, &fused);
    for (dtype, name) in [(DType::F32, "f32"), (DType::F64, "f64")] {
        let (y_ref, dx_ref) = run(inputs, w, dtype, &reference);
        assert_close(
            &y,
            &y_ref,
            1e-5,
            &format!("{what} value vs {name} reference"),
        );
        for (i, (a, b)) in dx.iter().zip(&dx_ref).enumerate() {
            assert_close(
                a,
                b,
                1e-4,
                &format!("{what} gradient {i} vs {name} reference"),
            );
        }
    }
}

#[test]
fn fused_rms_norm_matches_its_reference() {
    // 135 rows: more than one block of the kernel's d weight partial sums.
    let x = randn(&[3, 45, 16], 1);
    let weight = randn(&[16], 2);
    let w = randn(&[3, 45, 16], 3);
    compare(
        &[&x, &weight],
        &w,
        |t| ops::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
        |t| ops::rms_norm_reference(&t[0], &t[1], 1e-5).unwrap(),
        "rms_norm",
    );
}

/// The bits of every element of `t`.
fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn the_fused_residual_add_and_norm_are_the_add_and_the_norm() {
    // Rows of 37 and 128 channels: the kernel's tasks of whole rows, with and without a tail
    // of the vector width.
    for (dims, seed) in [(vec![3, 45, 37], 7), (vec![2, 70, 128], 11)] {
        let (x, y) = (randn(&dims, seed), randn(&dims, seed + 1));
        let weight = randn(&dims[2..], seed + 2);
        let (h, normed) = ops::add_rms_norm(&x, &y, &weight, 1e-5).unwrap();
        // No input tracks a gradient: one kernel (its two outputs halves of one buffer), whose
        // values are the two ops' bit for bit.
        assert_eq!(normed.layout().start_offset(), x.elem_count());
        let sum = (&x + &y).unwrap();
        assert_eq!(h.dims(), &dims[..]);
        assert_eq!(bits(&h), bits(&sum));
        assert_eq!(
            bits(&normed),
            bits(&ops::rms_norm(&sum, &weight, 1e-5).unwrap())
        );
        assert_close(
            &normed,
            &ops::rms_norm_reference(&sum, &weight, 1e-5).unwrap(),
            1e-5,
            "add_rms_norm vs the reference norm",
        );
    }
    // A tracked input takes the two ops, and its gradients flow through both outputs.
    let (x, y) = (randn(&[2, 5, 8], 1), randn(&[2, 5, 8], 2));
    let weight = randn(&[8], 3);
    let w = randn(&[2, 5, 8], 4);
    compare(
        &[&x, &y, &weight],
        &w,
        |t| {
            let (h, normed) = ops::add_rms_norm(&t[0], &t[1], &t[2], 1e-5).unwrap();
            (h + normed).unwrap()
        },
        |t| {
            let h = (&t[0] + &t[1]).unwrap();
            (&h + ops::rms_norm_reference(&h, &t[2], 1e-5).unwrap()).unwrap()
        },
        "add_rms_norm",
    );
}

#[test]
fn fused_causal_softmax_matches_its_reference_and_masked_softmax() {
    // 6 queries after 3 cached positions: (B, H, T, S) = (2, 3, 6, 9).
    let scores = randn(&[2, 3, 6, 9], 4);
    let w = randn(&[2, 3, 6, 9], 5);
    compare(
        &[&scores],
        &w,
        |s| ops::causal_softmax(&s[0], 0.35, None).unwrap(),
        |s| ops::causal_softmax_reference(&s[0], 0.35, None).unwrap(),
        "causal_softmax",
    );
    // And against an explicit mask + plain softmax.
    let fused = ops::causal_softmax(&scores, 0.35, None).unwrap();
    let mask = causal_mask(6, 3, DType::F32, &Device::Cpu)
        .unwrap()
        .unwrap();
    let plain = ops::softmax(&(&scores * 0.35).unwrap().broadcast_add(&mask).unwrap()).unwrap();
    assert_close(&fused, &plain, 1e-6, "causal_softmax vs mask");
    // The reference path with a view into the full mask a model keeps on a GPU: rows 3..9 and
    // columns 0..9 of all 16 positions' mask.
    let full = causal_mask(16, 0, DType::F32, &Device::Cpu)
        .unwrap()
        .unwrap();
    let view = full.narrow(0, 3, 6).unwrap().narrow(1, 0, 9).unwrap();
    let from_view = ops::causal_softmax_reference(&scores, 0.35, Some(&view)).unwrap();
    assert_close(
        &fused,
        &from_view,
        1e-6,
        "reference with a view of the full mask",
    );
    let row_sums = fused.sum(D::Minus1).unwrap();
    assert_close(
        &row_sums,
        &Tensor::ones((2, 3, 6), DType::F32, &Device::Cpu).unwrap(),
        1e-5,
        "row sums",
    );
}

#[test]
fn fused_cross_entropy_matches_its_reference() {
    let logits = (randn(&[7, 11], 6) * 3.0).unwrap();
    let targets = Tensor::new(&[0u32, 3, 10, 5, 5, 1, 9], &Device::Cpu).unwrap();
    let w = randn(&[7], 7);
    compare(
        &[&logits],
        &w,
        |x| ops::token_nll(&x[0], &targets).unwrap(),
        |x| ops::token_nll_reference(&x[0], &targets).unwrap(),
        "token_nll",
    );
    // The mean, as the training loss takes it.
    let mean = ops::cross_entropy(&logits, &targets).unwrap();
    let mean_ref = ops::token_nll_reference(&logits, &targets)
        .unwrap()
        .mean_all()
        .unwrap();
    assert_close(&mean, &mean_ref, 1e-6, "cross_entropy");
    let bad = Tensor::new(&[11u32, 0, 0, 0, 0, 0, 0], &Device::Cpu).unwrap();
    assert!(ops::token_nll(&logits, &bad).is_err());
}

#[test]
fn fused_dynact_matches_composition_for_every_parameter() {
    use candle_nn::{VarBuilder, VarMap};
    use dynact_model::{BaseAct, DynAct, DynActConfig, Granularity};
    for base in [BaseAct::Silu, BaseAct::Relu] {
        for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
            let cfg = DynActConfig {
                base,
                granularity,
                alpha_init: 1.3,
                beta_init: 0.2,
            };
            // f32 takes the fused kernel, f64 the composition.
            let run = |dtype: DType| {
                let vm = VarMap::new();
                let act = DynAct::new(&cfg, 12, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu))
                    .unwrap();
                let x = Var::from_tensor(&randn(&[5, 7, 12], 8).to_dtype(dtype).unwrap()).unwrap();
                let w = randn(&[5, 7, 12], 9).to_dtype(dtype).unwrap();
                let y = candle_core::Module::forward(&act, x.as_tensor()).unwrap();
                let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
                let data = vm.data().lock().unwrap();
                let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                (
                    f(&y),
                    f(grads.get(&x).unwrap()),
                    f(grads.get(&data["alpha"]).unwrap()),
                    f(grads.get(&data["beta"]).unwrap()),
                )
            };
            let (a, b) = (run(DType::F32), run(DType::F64));
            let what = format!("{base:?} {granularity:?}");
            assert_close(&a.0, &b.0, 1e-5, &format!("{what} value"));
            assert_close(&a.1, &b.1, 1e-5, &format!("{what} dx"));
            assert_close(&a.2, &b.2, 1e-3, &format!("{what} dalpha"));
            assert_close(&a.3, &b.3, 1e-3, &format!("{what} dbeta"));
        }
    }
}

#[test]
fn fused_dynact_glu_matches_its_reference_for_every_input_and_parameter() {
    use candle_nn::{VarBuilder, VarMap};
    use dynact_model::ffn::{dynact_glu, dynact_glu_reference};
    use dynact_model::{BaseAct, DynAct, DynActConfig, Granularity};
    // 70 rows: more than one block of the kernel's parameter-gradient partial sums.
    let (gate, up, w) = (
        randn(&[2, 35, 12], 15),
        randn(&[2, 35, 12], 16),
        randn(&[2, 35, 12], 17),
    );
    for base in [BaseAct::Silu, BaseAct::Relu] {
        for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
            let cfg = DynActConfig {
                base,
                granularity,
                alpha_init: 1.3,
                beta_init: 0.2,
            };
            let run = |dtype: DType, fused: bool| {
                let vm = VarMap::new();
                let act = DynAct::new(&cfg, 12, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu))
                    .unwrap();
                let g = Var::from_tensor(&gate.to_dtype(dtype).unwrap()).unwrap();
                let u = Var::from_tensor(&up.to_dtype(dtype).unwrap()).unwrap();
                let y = if fused {
                    dynact_glu(&act, g.as_tensor(), u.as_tensor()).unwrap()
                } else {
                    dynact_glu_reference(&act, g.as_tensor(), u.as_tensor()).unwrap()
                };
                let loss = (&y * w.to_dtype(dtype).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                let data = vm.data().lock().unwrap();
                let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                vec![
                    f(&y),
                    f(grads.get(&g).unwrap()),
                    f(grads.get(&u).unwrap()),
                    f(grads.get(&data["alpha"]).unwrap()),
                    f(grads.get(&data["beta"]).unwrap()),
                ]
            };
            let fused = run(DType::F32, true);
            for (dtype, name) in [(DType::F32, "f32"), (DType::F64, "f64")] {
                let plain = run(dtype, false);
                for (i, part) in ["value", "d gate", "d up", "d alpha", "d beta"]
                    .iter()
                    .enumerate()
                {
                    // alpha and beta sum 840 products.
                    let tol = if i >= 3 { 1e-3 } else { 1e-5 };
                    let what = format!("{base:?} {granularity:?} {part} vs {name} reference");
                    assert_close(&fused[i], &plain[i], tol, &what);
                }
            }
        }
    }
}

#[test]
fn fused_causal_attention_matches_its_reference() {
    // Grouped heads (4 query heads on 2 key/value heads), 7 queries after 4 cached positions,
    // heads of 8 (B, H, G, T, S, D) = (2, 4, 2, 7, 11, 8); one query seeing everything;
    // queries over several of the kernel's causal row blocks of 32; and heads of 32, whose
    // products take the panel kernel, tile by tile up to the keys each tile's last row sees.
    for (t, s, d, salt) in [
        (7usize, 11usize, 8usize, 0u64),
        (1, 5, 8, 10),
        (128, 128, 8, 20),
        (150, 153, 8, 30),
        (64, 64, 32, 40),
        (45, 50, 32, 50),
    ] {
        let q = randn(&[2, 4, t, d], 70 + salt);
        let k = randn(&[2, 2, s, d], 71 + salt);
        let v = randn(&[2, 2, s, d], 72 + salt);
        let w = randn(&[2, 4, t, d], 73 + salt);
        let scale = 1.0 / (d as f64).sqrt();
        compare(
            &[&q, &k, &v],
            &w,
            |x| ops::causal_attention(&x[0], &x[1], &x[2], scale, None, DType::F32, None).unwrap(),
            |x| {
                let md = x[0].dtype();
                ops::causal_attention_reference(&x[0], &x[1], &x[2], scale, md, None, Ok).unwrap()
            },
            &format!("attention, T {t}, S {s}, D {d}"),
        );
    }
}

#[test]
fn fused_causal_attention_drops_the_probabilities_the_reference_drops() {
    // Dropout on the probabilities: the fused kernel draws the mask elements the reference's
    // dropout op does for the whole (B, H, T, S) tensor, from an offset as a row shard does.
    // Heads of 8 (the gemm crate's products) and of 32 (the panel kernel's, tile by tile).
    for (t, d, salt) in [(9usize, 8usize, 0u64), (40, 32, 10)] {
        let (q, k, v) = (
            randn(&[2, 2, t, d], 80 + salt),
            randn(&[2, 2, t, d], 81 + salt),
            randn(&[2, 2, t, d], 82 + salt),
        );
        let w = randn(&[2, 2, t, d], 83 + salt);
        let scale = 1.0 / (d as f64).sqrt();
        for first in [0u64, 3 * 2 * (t * t) as u64] {
            let dropout = dynact_model::philox_dropout::PhiloxDropout {
                seed: 0xDEAD_BEEF_0123,
                first,
                keep: 0.7,
                scale: (1.0 / 0.7f64) as f32,
            };
            let attend = |x: &[Tensor], fused: bool| {
                match fused {
                    true => ops::causal_attention(
                        &x[0],
                        &x[1],
                        &x[2],
                        scale,
                        Some(dropout),
                        DType::F32,
                        None,
                    ),
                    false => ops::causal_attention_reference(
                        &x[0],
                        &x[1],
                        &x[2],
                        scale,
                        DType::F32,
                        None,
                        |p| dropout.apply(&p),
                    ),
                }
                .unwrap()
            };
            let what = format!("T {t}, D {d}, first {first}");
            let (y, dx) = run(&[&q, &k, &v], &w, DType::F32, &|x| attend(x, true));
            let (y_ref, dx_ref) = run(&[&q, &k, &v], &w, DType::F32, &|x| attend(x, false));
            assert_close(&y, &y_ref, 1e-5, &format!("values, {what}"));
            for (i, (a, b)) in dx.iter().zip(&dx_ref).enumerate() {
                assert_close(a, b, 1e-4, &format!("gradient {i}, {what}"));
            }
            // Dropout really acted: without it the values differ.
            let (plain, _) = run(&[&q, &k, &v], &w, DType::F32, &|x| {
                ops::causal_attention(&x[0], &x[1], &x[2], scale, None, DType::F32, None).unwrap()
            });
            assert!(common::max_abs_diff(&plain, &y) > 1e-2, "{what}");
        }
    }
}

#[test]
fn philox_dropout_op_is_the_product_with_the_host_drawn_mask() {
    use dynact_model::philox::dropout_mask_from;
    use dynact_model::philox_dropout::PhiloxDropout;
    let x = randn(&[3, 7, 11], 20);
    let w = randn(&[3, 7, 11], 21);
    // An unaligned first element (a row shard's) and one that is aligned.
    for first in [0u64, 5, 4_099] {
        let op = PhiloxDropout {
            seed: 0xDEAD_BEEF_1234,
            first,
            keep: 0.8,
            scale: 1.25,
        };
        let mask = Tensor::from_vec(
            dropout_mask_from(op.seed, first, x.elem_count(), op.keep, op.scale),
            x.shape(),
            &Device::Cpu,
        )
        .unwrap();
        compare(
            &[&x],
            &w,
            |t| op.apply(&t[0]).unwrap(),
            |t| (&t[0] * mask.to_dtype(t[0].dtype()).unwrap()).unwrap(),
            &format!("philox dropout from element {first}"),
        );
        // The same bits, not just close values.
        let y = op.apply(&x).unwrap();
        let plain = (&x * &mask).unwrap();
        assert_close(&y, &plain, 0.0 + f32::MIN_POSITIVE, "bitwise");
    }
}

#[test]
fn dynact_refuses_an_input_of_the_wrong_width() {
    use candle_nn::{VarBuilder, VarMap};
    use dynact_model::{DynAct, DynActConfig, Granularity};
    let cfg = DynActConfig {
        granularity: Granularity::PerChannel,
        ..DynActConfig::default()
    };
    let vm = VarMap::new();
    let act = DynAct::new(
        &cfg,
        8,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let err = candle_core::Module::forward(&act, &randn(&[2, 16], 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("16 channels"), "{err}");
}

#[test]
fn rope_refuses_an_odd_head_width() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 1, 3), DType::F32, &dev).unwrap();
    let table = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let err = ops::rope(&x, &table, &table).unwrap_err().to_string();
    assert!(err.contains("head width 3 is odd"), "{err}");
}

#[test]
fn fused_rope_matches_its_reference() {
    // (B, T, H, D) = (2, 5, 3, 8) in, (B, H, T, D) out; cos/sin as the model builds them (both
    // halves equal).
    let x = randn(&[2, 5, 3, 8], 10);
    let w = randn(&[2, 3, 5, 8], 11);
    let angles: Vec<f32> = (0..5)
        .flat_map(|p| (0..8).map(move |j| p as f32 * 0.3 / (1 + j % 4) as f32))
        .collect();
    let angles = Tensor::from_vec(angles, (5, 8), &Device::Cpu).unwrap();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let tables = |x: &Tensor| {
        (
            cos.to_dtype(x.dtype()).unwrap(),
            sin.to_dtype(x.dtype()).unwrap(),
        )
    };
    compare(
        &[&x],
        &w,
        |x| {
            let (cos, sin) = tables(&x[0]);
            ops::rope(&x[0], &cos, &sin).unwrap()
        },
        |x| {
            let (cos, sin) = tables(&x[0]);
            ops::rope_reference(&x[0], &cos, &sin).unwrap()
        },
        "rope",
    );
}

#[test]
fn the_embedding_op_is_candle_s_index_select_and_index_add_bit_for_bit() {
    // Ids repeating, in any shape, one row never used; under sum(y * w) each row's gradient is
    // the sum of its positions' rows of w.
    let table = Var::from_tensor(&randn(&[11, 6], 50)).unwrap();
    let ids: Vec<u32> = (0..2 * 9u32).map(|p| (p * 5 + p / 3) % 10).collect();
    let ids = Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap();
    let w = randn(&[2, 9, 6], 51);
    let run = |f: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| {
        let y = f(table.as_tensor(), &ids).unwrap();
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, grads.get(&table).unwrap().clone())
    };
    let (y, d_table) = run(&ops::embedding_op);
    let (y_ref, d_ref) = run(&ops::embedding_reference);
    assert_eq!(y.dims(), &[2, 9, 6]);
    assert_eq!(max_abs_diff(&y, &y_ref), 0.0);
    assert_eq!(max_abs_diff(&d_table, &d_ref), 0.0);
    let unused = d_table.get(10).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(unused.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn moving_heads_is_candle_s_transpose_and_the_kernel_source_agrees() {
    // (B, T, H, D) = (2, 5, 3, 4) to (B, H, T, D) and back: the values and the gradient are
    // Candle's transpose's, bit for bit, and so is the CUDA kernel's source on the host.
    let x = Var::from_tensor(&randn(&[2, 5, 3, 4], 60)).unwrap();
    let w = randn(&[2, 3, 5, 4], 61);
    let run = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
        let y = f(x.as_tensor()).unwrap();
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, grads.get(&x).unwrap().clone())
    };
    let (y, dx) = run(&ops::heads_first);
    let (y_ref, dx_ref) = run(&ops::heads_first_reference);
    assert_eq!(y.dims(), &[2, 3, 5, 4]);
    assert_eq!(max_abs_diff(&y, &y_ref), 0.0);
    assert_eq!(max_abs_diff(&dx, &dx_ref), 0.0);
    let back = ops::heads_last(&y).unwrap();
    assert_eq!(max_abs_diff(&back, x.as_tensor()), 0.0);

    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (input, expect, inverse) in [(x.as_tensor(), &y, 0), (&y, &back, 1)] {
        let input = flat(input);
        let mut out = vec![f32::NAN; input.len()];
        // SAFETY: both buffers hold 2 * 5 * 3 rows of 4.
        unsafe {
            dynact_move_heads_f32_on_host(
                input.as_ptr(),
                out.as_mut_ptr(),
                30,
                5,
                3,
                4,
                inverse,
                2,
                9,
            )
        };
        assert_eq!(out, flat(expect), "inverse {inverse}");
    }
}

/// A dynAct of `f` channels whose alpha and beta (random) are fixed tensors, as in an
/// inference model.
fn fixed_dynact(
    base: dynact_model::BaseAct,
    granularity: dynact_model::Granularity,
    f: usize,
) -> dynact_model::DynAct {
    use dynact_model::{DynAct, DynActConfig, Granularity};
    let n = match granularity {
        Granularity::PerLayer => 1,
        _ => f,
    };
    let params = std::collections::HashMap::from([
        ("alpha".to_string(), randn(&[n], 32)),
        ("beta".to_string(), randn(&[n], 33)),
    ]);
    let cfg = DynActConfig {
        base,
        granularity,
        alpha_init: 1.0,
        beta_init: 0.0,
    };
    let vb = candle_nn::VarBuilder::from_tensors(params, DType::F32, &Device::Cpu);
    DynAct::new(&cfg, f, vb).unwrap()
}

#[test]
fn stacked_gate_products_are_the_gate_products_of_the_halves() {
    use dynact_model::ffn::{dynact_glu, dynact_glu_stacked, swiglu, swiglu_stacked};
    use dynact_model::{BaseAct, Granularity};
    // Rows of [gate | up] (an inference model's one product of the stacked weights): F = 37
    // (a vector tail) and 352 (cpu-repro's), rows past one task's; alpha and beta untracked,
    // so that the stacked kernels run. Each is the kernel of the two halves, bit for bit.
    for (dims, f) in [(vec![3, 150], 37), (vec![2, 70], 352)] {
        let gate_up = randn(&[dims.clone(), vec![2 * f]].concat(), 31);
        let (gate, up) = (
            gate_up.narrow(D::Minus1, 0, f).unwrap(),
            gate_up.narrow(D::Minus1, f, f).unwrap(),
        );
        let stacked = swiglu_stacked(&gate_up).unwrap();
        assert_eq!(stacked.dims(), &[dims.clone(), vec![f]].concat()[..]);
        assert_eq!(
            bits(&stacked),
            bits(&swiglu(&gate, &up).unwrap()),
            "swiglu F {f}"
        );
        for base in [BaseAct::Silu, BaseAct::Relu] {
            for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
                let act = fixed_dynact(base, granularity, f);
                assert_eq!(
                    bits(&dynact_glu_stacked(&act, &gate_up).unwrap()),
                    bits(&dynact_glu(&act, &gate, &up).unwrap()),
                    "dynact-glu {base:?} {granularity:?} F {f}"
                );
            }
        }
    }
    // A tracked input takes the halves through the ops: its gradient is theirs, side by side.
    let gate_up = Var::from_tensor(&randn(&[4, 2 * 37], 34)).unwrap();
    let w = randn(&[4, 37], 35);
    let grad_of = |y: Tensor| {
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(&gate_up).unwrap().clone()
    };
    let stacked = grad_of(swiglu_stacked(gate_up.as_tensor()).unwrap());
    let (g, u) = (
        gate_up.as_tensor().narrow(1, 0, 37).unwrap(),
        gate_up.as_tensor().narrow(1, 37, 37).unwrap(),
    );
    assert_eq!(bits(&stacked), bits(&grad_of(swiglu(&g, &u).unwrap())));
    // An odd width is no rows of [gate | up].
    let err = swiglu_stacked(&randn(&[2, 5], 36)).unwrap_err().to_string();
    assert!(err.contains("[gate | up]"), "{err}");
}

#[test]
fn packed_gate_products_are_the_stacked_kernels_of_the_product() {
    use dynact_model::ffn::{dynact_glu_packed, dynact_glu_stacked, swiglu_packed, swiglu_stacked};
    use dynact_model::ops::packed_weight::PackedWeight;
    use dynact_model::{BaseAct, Granularity};
    use std::sync::Arc;
    if !PackedWeight::available() {
        eprintln!("no AVX-512 here: the gate and up pack never runs");
        return;
    }
    // One kernel for the gate and up products and the gate (an inference model's FFN on
    // AVX-512) against the product of the stacked weights (the gemm crate's) and the stacked
    // kernels: F = 37 (a part panel) and 352 (cpu-repro's), rows past a tile, bit for bit.
    for (rows, k, f) in [(150, 40, 37), (140, 128, 352)] {
        let x = randn(&[rows, k], 41);
        let w_t = randn(&[k, 2 * f], 42);
        let flat = w_t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let pack = Arc::new(PackedWeight::of_gate_up(&flat, k, f));
        let gate_up = ops::product(&x, &w_t, ops::Form::AB, DType::F32).unwrap();
        let packed = swiglu_packed(&x, &pack).unwrap().expect("taken");
        assert_eq!(packed.dims(), &[rows, f]);
        let stacked = swiglu_stacked(&gate_up).unwrap();
        assert_eq!(bits(&packed), bits(&stacked), "swiglu F {f}");
        for base in [BaseAct::Silu, BaseAct::Relu] {
            for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
                let act = fixed_dynact(base, granularity, f);
                let packed = dynact_glu_packed(&act, &x, &pack).unwrap().expect("taken");
                assert_eq!(
                    bits(&packed),
                    bits(&dynact_glu_stacked(&act, &gate_up).unwrap()),
                    "dynact-glu {base:?} {granularity:?} F {f}"
                );
            }
        }
        // An input that needs a gradient is left to the products that have one.
        let tracked = Var::from_tensor(&x).unwrap();
        assert!(swiglu_packed(tracked.as_tensor(), &pack).unwrap().is_none());
    }
}

#[test]
fn fused_swiglu_matches_its_reference() {
    // Candle's silu takes glibc's exp, the kernel its own (within 1 ulp): the values and
    // gradients agree to a few ulp, with the f64 reference too.
    let (g, u) = (randn(&[6, 10], 12), randn(&[6, 10], 13));
    let w = randn(&[6, 10], 14);
    compare(
        &[&g, &u],
        &w,
        |x| dynact_model::ffn::swiglu(&x[0], &x[1]).unwrap(),
        |x| dynact_model::ffn::swiglu_reference(&x[0], &x[1]).unwrap(),
        "swiglu",
    );
}

#[test]
fn the_cuda_dropout_kernel_source_draws_the_masks_of_its_cpu_twin() {
    use dynact_model::philox::{apply_dropout_from, keep_threshold};
    let x: Vec<f32> = randn(&[5_003], 22).to_vec1().unwrap();
    let seed = 0x0123_4567_89AB_CDEFu64;
    for (first, keep) in [
        (0u64, 0.9),
        (1, 0.5),
        (6, 0.8),
        (4_097, 0.1),
        (u32::MAX as u64 + 3, 0.7),
    ] {
        let scale = (1.0 / keep) as f32;
        let mut twin = vec![0f32; x.len()];
        apply_dropout_from(seed, first, keep, scale, &x, &mut twin);
        // The launch the op makes: one thread per 4-element block, 1024 threads per block
        // (cudarc's LaunchConfig::for_num_elems), and also a grid too small for one pass.
        let blocks = ((first + x.len() as u64 - 1) / 4 - first / 4 + 1) as u32;
        for (grid, block) in [(blocks.div_ceil(1024), 1024), (2, 64)] {
            let mut kernel = vec![f32::NAN; x.len()];
            // SAFETY: x and kernel hold x.len() elements each.
            unsafe {
                dynact_philox_dropout_f32_on_host(
                    x.as_ptr(),
                    kernel.as_mut_ptr(),
                    x.len() as u64,
                    first,
                    seed as u32,
                    (seed >> 32) as u32,
                    keep_threshold(keep),
                    scale,
                    grid,
                    block,
                )
            };
            let same = kernel
                .iter()
                .zip(&twin)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "first {first}, keep {keep}, grid {grid}x{block}");
        }
    }
}

#[test]
fn the_cuda_dynact_glu_kernel_source_computes_what_the_cpu_kernel_does() {
    use candle_nn::{VarBuilder, VarMap};
    use dynact_model::ffn::dynact_glu;
    use dynact_model::{BaseAct, DynAct, DynActConfig, Granularity};
    // 150 rows of 37 channels: two whole blocks of 64 rows and a partial one, rows of two
    // AVX-512 vectors and a tail.
    let (rows, c) = (150usize, 37usize);
    let n = rows * c;
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for base in [BaseAct::Silu, BaseAct::Relu] {
        for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
            let cfg = DynActConfig {
                base,
                granularity,
                alpha_init: 1.3,
                beta_init: 0.2,
            };
            let vm = VarMap::new();
            let act = DynAct::new(
                &cfg,
                c,
                VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            )
            .unwrap();
            let gate = Var::from_tensor(&randn(&[3, 50, c], 25)).unwrap();
            let up = Var::from_tensor(&randn(&[3, 50, c], 26)).unwrap();
            let w = randn(&[3, 50, c], 27);
            let y = dynact_glu(&act, gate.as_tensor(), up.as_tensor()).unwrap();
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let data = vm.data().lock().unwrap();
            let (alpha, beta) = (&data["alpha"], &data["beta"]);
            let mut cpu_grads = flat(grads.get(&gate).unwrap());
            cpu_grads.extend(flat(grads.get(&up).unwrap()));
            cpu_grads.extend(flat(grads.get(alpha).unwrap()));
            cpu_grads.extend(flat(grads.get(beta).unwrap()));
            let mut params = flat(alpha);
            params.extend(flat(beta));
            let per = (params.len() / 2) as u32;
            let (g, u, dy) = (flat(gate.as_tensor()), flat(up.as_tensor()), flat(&w));
            let relu = (base == BaseAct::Relu) as i32;
            for (grid, block) in [(2u32, 1024u32), (3, 5)] {
                let mut y_k = vec![f32::NAN; n];
                let mut out = vec![f32::NAN; 2 * n + params.len()];
                let mut partials = vec![f32::NAN; 3 * 2 * c];
                // SAFETY: every buffer has the length the kernels index up to.
                unsafe {
                    dynact_glu_f32_on_host(
                        g.as_ptr(),
                        u.as_ptr(),
                        params.as_ptr(),
                        y_k.as_mut_ptr(),
                        n as u64,
                        c as u32,
                        per,
                        relu,
                        grid,
                        block,
                    );
                    dynact_glu_backward_f32_on_host(
                        g.as_ptr(),
                        u.as_ptr(),
                        dy.as_ptr(),
                        params.as_ptr(),
                        out.as_mut_ptr(),
                        partials.as_mut_ptr(),
                        rows as u64,
                        c as u32,
                        per,
                        relu,
                        grid,
                        block,
                    );
                }
                let what = format!("{base:?} {granularity:?}, grid {grid}x{block}");
                assert_eq!(y_k, flat(&y), "forward, {what}");
                // d gate and d up; the parameter gradients' sums over the blocks take warp
                // shuffles, which the host cannot run: the simulator's tests check them.
                assert_eq!(out[..2 * n], cpu_grads[..2 * n], "backward, {what}");
            }
        }
    }
}

#[test]
fn the_cuda_rope_kernel_source_computes_what_the_cpu_kernel_does() {
    // (B, T, H, D) = (2, 5, 3, 8) in, (B, H, T, D) out: 30 rows of 4 pairs.
    let (rows, t, heads, d) = (30usize, 5usize, 3usize, 8usize);
    let x = Var::from_tensor(&randn(&[2, t, heads, d], 31)).unwrap();
    let w = randn(&[2, 3, t, d], 32);
    let angles = randn(&[t, d], 33);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let y = ops::rope(x.as_tensor(), &cos, &sin).unwrap();
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (xs, g) = (flat(x.as_tensor()), flat(&w));
    let (c, s) = (flat(&cos), flat(&sin));
    for (grid, block) in [(1u32, 1024u32), (2, 9)] {
        let (mut y_k, mut dx_k) = (vec![f32::NAN; xs.len()], vec![f32::NAN; xs.len()]);
        for (input, out, inverse) in [(&xs, &mut y_k, 0), (&g, &mut dx_k, 1)] {
            // SAFETY: every buffer holds rows * d elements, cos and sin t * d.
            unsafe {
                dynact_rope_f32_on_host(
                    input.as_ptr(),
                    c.as_ptr(),
                    s.as_ptr(),
                    out.as_mut_ptr(),
                    rows as u64,
                    t as u32,
                    heads as u32,
                    d as u32,
                    inverse,
                    grid,
                    block,
                )
            };
        }
        assert_eq!(y_k, flat(&y), "forward, grid {grid}x{block}");
        assert_eq!(
            dx_k,
            flat(grads.get(&x).unwrap()),
            "backward, grid {grid}x{block}"
        );
    }
}

/// `f`'s value and the gradient of every input under `sum(f * w)` ([`run`] in f32), flattened.
fn flat_run(
    inputs: &[&Tensor],
    w: &Tensor,
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (y, dx) = run(inputs, w, DType::F32, f);
    (flat(&y), dx.iter().map(flat).collect())
}

#[test]
fn the_cuda_swiglu_kernel_source_computes_what_the_cpu_kernel_does() {
    let (g, u) = ((randn(&[9, 70], 40) * 4.0).unwrap(), randn(&[9, 70], 41));
    let w = randn(&[9, 70], 42);
    let (y, grads) = flat_run(&[&g, &u], &w, &|x| {
        dynact_model::ffn::swiglu(&x[0], &x[1]).unwrap()
    });
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (gv, uv, dy) = (flat(&g), flat(&u), flat(&w));
    let n = gv.len();
    for (grid, block) in [(1u32, 1024u32), (4, 7)] {
        let (mut y_k, mut out) = (vec![f32::NAN; n], vec![f32::NAN; 2 * n]);
        // SAFETY: every buffer has the length the kernels index up to.
        unsafe {
            dynact_swiglu_f32_on_host(
                gv.as_ptr(),
                uv.as_ptr(),
                dy.as_ptr(),
                y_k.as_mut_ptr(),
                out.as_mut_ptr(),
                n as u64,
                grid,
                block,
            );
        }
        assert_eq!(y_k, y, "forward, grid {grid}x{block}");
        assert_eq!(out[..n], grads[0][..], "d gate, grid {grid}x{block}");
        assert_eq!(out[n..], grads[1][..], "d up, grid {grid}x{block}");
    }
}

#[test]
fn the_cuda_cast_kernel_source_rounds_as_candle_does() {
    use half::bf16;
    // f32 -> bf16: random values over many magnitudes, and the bit patterns where rounding
    // decides (ties with an even and an odd kept part, just under and over a tie), infinities,
    // NaNs with payloads, subnormals, and the largest float (which rounds to infinity).
    let mut bits: Vec<u32> = randn(&[4000], 60)
        .exp()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| (x * 1e3).to_bits())
        .collect();
    for high in [
        0x3f80u32, 0x3f81, 0xbf80, 0xbf81, 0x0000, 0x0001, 0x7f7f, 0x807f,
    ] {
        for low in [0x0000u32, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff] {
            bits.push(high << 16 | low);
        }
    }
    bits.extend([
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0001,
        0x7f80_0001,
        0xffff_ffff,
        0x7f7f_ffff,
    ]);
    let x: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
    let candle: Vec<u16> = Tensor::new(x.as_slice(), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap()
        .to_vec1::<bf16>()
        .unwrap()
        .iter()
        .map(|b| b.to_bits())
        .collect();
    // bf16 -> f32: every bf16.
    let every: Vec<u16> = (0..=u16::MAX).collect();
    let up: Vec<u32> = Tensor::new(
        every
            .iter()
            .map(|b| bf16::from_bits(*b))
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(DType::F32)
    .unwrap()
    .to_vec1::<f32>()
    .unwrap()
    .iter()
    .map(|f| f.to_bits())
    .collect();
    for (grid, block) in [(1u32, 1024u32), (3, 7)] {
        let mut down = vec![0u16; x.len()];
        let mut widened = vec![0f32; every.len()];
        // SAFETY: every buffer has the length the kernels index up to.
        unsafe {
            dynact_cast_f32_to_bf16_on_host(
                x.as_ptr(),
                down.as_mut_ptr(),
                x.len() as u64,
                grid,
                block,
            );
            dynact_cast_bf16_to_f32_on_host(
                every.as_ptr(),
                widened.as_mut_ptr(),
                every.len() as u64,
                grid,
                block,
            );
        }
        assert_eq!(down, candle, "f32 -> bf16, grid {grid}x{block}");
        let widened: Vec<u32> = widened.iter().map(|f| f.to_bits()).collect();
        assert_eq!(widened, up, "bf16 -> f32, grid {grid}x{block}");
    }
}
