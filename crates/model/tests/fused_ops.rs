//! The fused CPU kernels (RMSNorm, causal softmax, cross-entropy) against the plain Candle
//! compositions they replace: same values, same gradients.

use candle_core::{DType, Device, Tensor, Var, D};
use dynact_model::attention::causal_mask;
use dynact_model::ops;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = ((i as u64 + 1)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed * 1442695040888963407)
                >> 33) as f32;
            (x / (1u64 << 31) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

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

/// Values and input gradients of `f` on the fused (f32 CPU) path and on the composed path
/// (run in f64, which takes the fallback), the latter cast back to f32.
fn compare(x: &Tensor, w: &Tensor, f: impl Fn(&Tensor) -> Tensor, what: &str) {
    let x32 = Var::from_tensor(x).unwrap();
    let x64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
    let y32 = f(x32.as_tensor());
    let y64 = f(x64.as_tensor());
    assert_close(
        &y32,
        &y64.to_dtype(DType::F32).unwrap(),
        1e-5,
        &format!("{what} value"),
    );
    let g32 = (y32 * w).unwrap().sum_all().unwrap().backward().unwrap();
    let g64 = (y64 * w.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (a, b) = (
        g32.get(&x32).unwrap(),
        g64.get(&x64).unwrap().to_dtype(DType::F32).unwrap(),
    );
    assert_close(a, &b, 1e-4, &format!("{what} gradient"));
}

#[test]
fn fused_rms_norm_matches_composition() {
    let x = randn(&[3, 5, 16], 1);
    let weight = randn(&[16], 2);
    let w = randn(&[3, 5, 16], 3);
    compare(
        &x,
        &w,
        |x| ops::rms_norm(x, &weight.to_dtype(x.dtype()).unwrap(), 1e-5).unwrap(),
        "rms_norm",
    );
}

#[test]
fn fused_causal_softmax_matches_masked_softmax() {
    // 6 queries after 3 cached positions: (B, H, T, S) = (2, 3, 6, 9).
    let scores = randn(&[2, 3, 6, 9], 4);
    let w = randn(&[2, 3, 6, 9], 5);
    compare(
        &scores,
        &w,
        |s| ops::causal_softmax(s, 0.35).unwrap(),
        "causal_softmax",
    );
    // And against an explicit mask + plain softmax.
    let fused = ops::causal_softmax(&scores, 0.35).unwrap();
    let mask = causal_mask(6, 3, DType::F32, &Device::Cpu)
        .unwrap()
        .unwrap();
    let plain = ops::softmax(&(&scores * 0.35).unwrap().broadcast_add(&mask).unwrap()).unwrap();
    assert_close(&fused, &plain, 1e-6, "causal_softmax vs mask");
    let row_sums = fused.sum(D::Minus1).unwrap();
    assert_close(
        &row_sums,
        &Tensor::ones((2, 3, 6), DType::F32, &Device::Cpu).unwrap(),
        1e-5,
        "row sums",
    );
}

#[test]
fn fused_cross_entropy_matches_log_softmax_gather() {
    let logits = (randn(&[7, 11], 6) * 3.0).unwrap();
    let targets = Tensor::new(&[0u32, 3, 10, 5, 5, 1, 9], &Device::Cpu).unwrap();
    let w = randn(&[7], 7);
    compare(
        &logits,
        &w,
        |x| ops::token_nll(x, &targets).unwrap(),
        "token_nll",
    );
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
fn fused_rope_matches_rotate_half() {
    // (B, H, T, D) = (2, 3, 5, 8); cos/sin as the model builds them (both halves equal).
    let x = randn(&[2, 3, 5, 8], 10);
    let w = randn(&[2, 3, 5, 8], 11);
    let angles: Vec<f32> = (0..5)
        .flat_map(|p| (0..8).map(move |j| p as f32 * 0.3 / (1 + j % 4) as f32))
        .collect();
    let angles = Tensor::from_vec(angles, (5, 8), &Device::Cpu).unwrap();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    compare(
        &x,
        &w,
        |x| {
            ops::rope(
                x,
                &cos.to_dtype(x.dtype()).unwrap(),
                &sin.to_dtype(x.dtype()).unwrap(),
            )
            .unwrap()
        },
        "rope",
    );
}

#[test]
fn fused_swiglu_is_bit_identical_to_silu_times_up() {
    let (g, u) = (
        Var::from_tensor(&randn(&[6, 10], 12)).unwrap(),
        Var::from_tensor(&randn(&[6, 10], 13)).unwrap(),
    );
    let w = randn(&[6, 10], 14);
    let fused = ops::swiglu(g.as_tensor(), u.as_tensor()).unwrap();
    let plain = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
    let gf = (&fused * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gp = (&plain * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&fused), bits(&plain), "values");
    assert_eq!(
        bits(gf.get(&g).unwrap()),
        bits(gp.get(&g).unwrap()),
        "d gate"
    );
    assert_eq!(bits(gf.get(&u).unwrap()), bits(gp.get(&u).unwrap()), "d up");
}
