//! dynAct against its definition: the forward pass against a hand-written scalar formula, and
//! the gradients with respect to x, alpha and beta against central finite differences in f64.

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use dynact_model::dynact::base_activation;
use dynact_model::{BaseAct, DynAct, DynActConfig, Granularity};

const BASES: [BaseAct; 4] = [BaseAct::Silu, BaseAct::Gelu, BaseAct::Mish, BaseAct::Relu];

fn reference_base(x: f64, base: BaseAct) -> f64 {
    match base {
        BaseAct::Silu => x / (1.0 + (-x).exp()),
        BaseAct::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        BaseAct::Mish => x * (1.0 + x.exp()).ln().tanh(),
        BaseAct::Relu => x.max(0.0),
    }
}

/// Abramowitz-Stegun 7.1.26 is too coarse for 1e-9 checks; integrate erf's series instead.
fn erf(x: f64) -> f64 {
    // Maclaurin series, converges fast for |x| < 3 (our inputs stay within [-2.5, 2.5]).
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

fn inputs(n: usize) -> Vec<f64> {
    // Spread over [-2.5, 2.5], avoiding relu's kink at exactly 0.
    (0..n)
        .map(|i| -2.5 + 5.0 * (i as f64 + 0.37) / n as f64)
        .collect()
}

fn build(
    base: BaseAct,
    granularity: Granularity,
    channels: usize,
    alpha: f64,
    beta: f64,
) -> (VarMap, DynAct) {
    let cfg = DynActConfig {
        base,
        granularity,
        alpha_init: alpha,
        beta_init: beta,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let act = DynAct::new(&cfg, channels, vb).unwrap();
    (varmap, act)
}

#[test]
fn forward_matches_the_formula() {
    let (rows, channels) = (3, 8);
    let xs = inputs(rows * channels);
    for base in BASES {
        let (alpha, beta) = (1.3, 0.4);
        let (_vm, act) = build(base, Granularity::PerLayer, channels, alpha, beta);
        let x = Tensor::from_vec(xs.clone(), (rows, channels), &Device::Cpu).unwrap();
        let y: Vec<f64> = act
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (xi, yi) in xs.iter().zip(&y) {
            let expected = reference_base(*xi, base) * (alpha - beta) + beta * xi;
            assert!(
                (yi - expected).abs() < 1e-9,
                "{base:?} f({xi}) = {yi}, expected {expected}"
            );
        }
    }
}

#[test]
fn alpha_equal_beta_is_linear() {
    let xs = inputs(16);
    for base in BASES {
        let (_vm, act) = build(base, Granularity::PerLayer, 16, 0.7, 0.7);
        let x = Tensor::from_vec(xs.clone(), 16, &Device::Cpu).unwrap();
        let y: Vec<f64> = act.forward(&x).unwrap().to_vec1().unwrap();
        for (xi, yi) in xs.iter().zip(&y) {
            assert!(
                (yi - 0.7 * xi).abs() < 1e-12,
                "{base:?}: {yi} != 0.7 * {xi}"
            );
        }
    }
}

/// L = sum(f(x) * w) with fixed weights w, so every output contributes a distinct gradient.
fn loss(act: &DynAct, x: &Tensor, w: &Tensor) -> Tensor {
    (act.forward(x).unwrap() * w).unwrap().sum_all().unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let (rows, channels) = (2, 6);
    let eps = 1e-6;
    for base in BASES {
        for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
            let (varmap, act) = build(base, granularity, channels, 1.2, 0.3);
            // Make per-channel parameters differ from channel to channel.
            for var in varmap.all_vars() {
                let n = var.elem_count();
                let jitter: Vec<f64> = (0..n)
                    .map(|i| var.to_vec1::<f64>().unwrap()[i] + 0.05 * i as f64)
                    .collect();
                var.set(&Tensor::from_vec(jitter, n, &Device::Cpu).unwrap())
                    .unwrap();
            }
            let x = Var::from_vec(inputs(rows * channels), (rows, channels), &Device::Cpu).unwrap();
            let w: Vec<f64> = (0..rows * channels)
                .map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3 + 0.1)
                .collect();
            let w = Tensor::from_vec(w, (rows, channels), &Device::Cpu).unwrap();

            let grads = loss(&act, &x, &w).backward().unwrap();
            let mut params: Vec<(&str, Var)> = vec![("x", x.clone())];
            let data = varmap.data().lock().unwrap();
            params.push(("alpha", data["alpha"].clone()));
            params.push(("beta", data["beta"].clone()));
            drop(data);

            for (name, var) in params {
                let analytic: Vec<f64> = grads
                    .get(&var)
                    .unwrap_or_else(|| panic!("{base:?}: no gradient for {name}"))
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let original: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
                for i in 0..original.len() {
                    let eval = |delta: f64| {
                        let mut v = original.clone();
                        v[i] += delta;
                        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                            .unwrap();
                        loss(&act, &x, &w).to_scalar::<f64>().unwrap()
                    };
                    let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
                    var.set(
                        &Tensor::from_vec(original.clone(), var.shape(), &Device::Cpu).unwrap(),
                    )
                    .unwrap();
                    let err = (analytic[i] - numeric).abs() / numeric.abs().max(1.0);
                    assert!(
                        err < 1e-6,
                        "{base:?} {granularity:?} d/d{name}[{i}]: analytic {} numeric {numeric}",
                        analytic[i]
                    );
                }
            }
        }
    }
}

#[test]
fn gradients_match_the_closed_forms() {
    // df/dalpha = base(x), df/dbeta = x - base(x), summed over inputs with unit upstream grad.
    let xs = inputs(10);
    for base in BASES {
        let (varmap, act) = build(base, Granularity::PerLayer, 10, 1.0, 0.0);
        let x = Tensor::from_vec(xs.clone(), 10, &Device::Cpu).unwrap();
        let grads = act
            .forward(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let data = varmap.data().lock().unwrap();
        let ga = grads.get(&data["alpha"]).unwrap().to_vec1::<f64>().unwrap()[0];
        let gb = grads.get(&data["beta"]).unwrap().to_vec1::<f64>().unwrap()[0];
        let sum_base: f64 = xs.iter().map(|x| reference_base(*x, base)).sum();
        let sum_x: f64 = xs.iter().sum();
        assert!(
            (ga - sum_base).abs() < 1e-9,
            "{base:?}: dL/dalpha {ga} != {sum_base}"
        );
        assert!(
            (gb - (sum_x - sum_base)).abs() < 1e-9,
            "{base:?}: dL/dbeta {gb}"
        );
        let base_t = base_activation(&x, base)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((base_t - sum_base).abs() < 1e-9);
    }
}
