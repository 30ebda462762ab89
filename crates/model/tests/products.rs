//! The widened product (bf16 or f16 operands, f32 accumulation and result) against Candle's
//! f32 product of the widened operands: the same values, and the gradients the mixed-precision
//! backward pass defines (the incoming gradient rounded to the operands' dtype, then f32
//! products), written out here with Candle's ops. The f32 product on a CPU, which takes the
//! same op, against Candle's.

mod common;

use candle_core::{DType, Tensor, Var};
use common::{max_abs_diff, randn};
use dynact_model::ops::{
    cast, product, product_reference, widened_product, widened_product_reference, Form,
};

/// Shapes of (a, b) as stored for `form`: batch dims, then (m, k) / (k, n) per the form.
fn operand_dims(form: Form, batch: &[usize], (m, n, k): (usize, usize, usize)) -> [Vec<usize>; 2] {
    let with = |r: usize, c: usize| [batch, &[r, c]].concat();
    match form {
        Form::AB => [with(m, k), with(k, n)],
        Form::ABt => [with(m, k), with(n, k)],
        Form::AtB => [with(k, m), with(k, n)],
    }
}

/// `x` with its last two dimensions swapped, contiguous.
fn t(x: &Tensor) -> Tensor {
    x.t().unwrap().contiguous().unwrap()
}

fn widen(x: &Tensor) -> Tensor {
    x.to_dtype(DType::F32).unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, rel: f32, what: &str) {
    let scale = max_abs_diff(b, &b.zeros_like().unwrap()).max(1e-6);
    let d = max_abs_diff(a, b);
    assert!(d <= rel * scale, "{what}: differs by {d} of {scale}");
}

#[test]
fn widened_products_equal_candle_s_f32_product_of_the_widened_operands() {
    for dtype in [DType::BF16, DType::F16] {
        for form in [Form::AB, Form::ABt, Form::AtB] {
            for batch in [&[][..], &[2, 3][..]] {
                let what = format!("{dtype:?} {form:?} batch {batch:?}");
                let [da, db] = operand_dims(form, batch, (5, 7, 9));
                let a = randn(&da, 1).to_dtype(dtype).unwrap();
                let b = randn(&db, 2).to_dtype(dtype).unwrap();
                let y = widened_product(&a, &b, form).unwrap();
                assert_eq!(y.dtype(), DType::F32, "{what}");
                assert_eq!(y.dims(), &[batch, &[5, 7]].concat()[..], "{what}");
                let reference = widened_product_reference(&a, &b, form).unwrap();
                // The same f32 GEMM of the same values on a CPU.
                assert_eq!(max_abs_diff(&y, &reference), 0.0, "{what}");
            }
        }
    }
}

#[test]
fn f32_products_on_a_cpu_are_candle_s_with_gradients_in_the_operands_layouts() {
    for form in [Form::AB, Form::ABt, Form::AtB] {
        for batch in [&[][..], &[2, 3][..]] {
            let what = format!("{form:?} batch {batch:?}");
            let [da, db] = operand_dims(form, batch, (6, 5, 11));
            let (a, b) = (randn(&da, 11), randn(&db, 12));
            let run = |reference: bool| {
                let (va, vb) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
                let (x, y) = (va.as_tensor(), vb.as_tensor());
                let out = match reference {
                    true => product_reference(x, y, form),
                    false => product(x, y, form, DType::F32),
                }
                .unwrap();
                let w = randn(out.dims(), 13);
                let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |v: &Var| grads.get(v).unwrap().clone();
                (out, g(&va), g(&vb))
            };
            let ((y, ga, gb), (y_ref, ga_ref, gb_ref)) = (run(false), run(true));
            // The same GEMM as Candle's, on the same values.
            assert_eq!(max_abs_diff(&y, &y_ref), 0.0, "{what}");
            assert_close(&ga, &ga_ref, 1e-6, &format!("{what}: gradient of a"));
            assert_close(&gb, &gb_ref, 1e-6, &format!("{what}: gradient of b"));
            for (g, x) in [(&ga, &a), (&gb, &b)] {
                assert_eq!(g.dims(), x.dims(), "{what}");
                assert!(
                    g.is_contiguous(),
                    "{what}: a gradient in a transposed layout"
                );
            }
        }
    }
}

#[test]
fn widened_product_gradients_are_f32_products_with_the_incoming_gradient_rounded() {
    for form in [Form::AB, Form::ABt, Form::AtB] {
        let [da_dims, db_dims] = operand_dims(form, &[3], (6, 4, 10));
        let a = randn(&da_dims, 3).to_dtype(DType::BF16).unwrap();
        let b = randn(&db_dims, 4).to_dtype(DType::BF16).unwrap();
        let (va, vb) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
        let y = widened_product(va.as_tensor(), vb.as_tensor(), form).unwrap();
        // sum(y * w): the incoming gradient is w, which is not a bf16 value.
        let w = (randn(&[3, 6, 4], 5) * 1.001).unwrap();
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (grads.get(&va).unwrap(), grads.get(&vb).unwrap());
        assert_eq!((ga.dtype(), gb.dtype()), (DType::F32, DType::F32));

        let g = widen(&w.to_dtype(DType::BF16).unwrap());
        let (a, b) = (widen(&a), widen(&b));
        let (expect_a, expect_b) = match form {
            Form::AB => (g.matmul(&t(&b)).unwrap(), t(&a).matmul(&g).unwrap()),
            Form::ABt => (g.matmul(&b).unwrap(), t(&g).matmul(&a).unwrap()),
            Form::AtB => (b.matmul(&t(&g)).unwrap(), a.matmul(&g).unwrap()),
        };
        assert_close(ga, &expect_a, 1e-6, &format!("{form:?}: gradient of a"));
        assert_close(gb, &expect_b, 1e-6, &format!("{form:?}: gradient of b"));
    }
}

#[test]
fn a_bf16_product_passes_f32_gradients_to_the_f32_tensors_it_was_cast_from() {
    // What a linear layer does under mixed precision: x W^T with both cast to bf16. The
    // gradients reach x and W as f32, within bf16 rounding of the f32 product's.
    let (x, w) = (randn(&[2, 5, 8], 6), randn(&[3, 8], 7));
    let (vx, vw) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
    let weights = randn(&[10, 3], 8);
    let grads_in = |dtype: DType| {
        let x2 = vx.as_tensor().reshape((10, 8)).unwrap();
        let y = product(&x2, vw.as_tensor(), Form::ABt, dtype).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let grads = (&y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (
            y,
            grads.get(&vx).unwrap().clone(),
            grads.get(&vw).unwrap().clone(),
        )
    };
    let (y32, gx32, gw32) = grads_in(DType::F32);
    let (y16, gx16, gw16) = grads_in(DType::BF16);
    assert_eq!((gx16.dtype(), gw16.dtype()), (DType::F32, DType::F32));
    assert_eq!(gx16.dims(), x.dims());
    // bf16 keeps 8 bits of each operand: a relative error of about 2^-8 per factor.
    assert_close(&y16, &y32, 2e-2, "values");
    assert_close(&gx16, &gx32, 2e-2, "gradient of x");
    assert_close(&gw16, &gw32, 2e-2, "gradient of W");
    assert!(
        max_abs_diff(&y16, &y32) > 0.0,
        "the bf16 product ran in f32"
    );
    // The f32 path is Candle's product.
    let expect = x.reshape((10, 8)).unwrap().matmul(&w.t().unwrap()).unwrap();
    assert_eq!(max_abs_diff(&y32, &expect), 0.0);
    // An operand cast beforehand is used as it is (one cast for several products).
    let x16 = cast(&x.reshape((10, 8)).unwrap(), DType::BF16).unwrap();
    let again = product(&x16, vw.as_tensor(), Form::ABt, DType::BF16).unwrap();
    assert_eq!(max_abs_diff(&again, &y16), 0.0);
}

#[test]
fn widened_products_refuse_operands_that_do_not_fit() {
    let a = randn(&[4, 5], 1).to_dtype(DType::BF16).unwrap();
    let b = randn(&[6, 7], 2).to_dtype(DType::BF16).unwrap();
    let err = widened_product(&a, &b, Form::AB).unwrap_err().to_string();
    assert!(err.contains("do not fit"), "{err}");
    let batched = randn(&[2, 5, 7], 3).to_dtype(DType::BF16).unwrap();
    let err = widened_product(&a, &batched, Form::AB)
        .unwrap_err()
        .to_string();
    assert!(err.contains("same leading"), "{err}");
    let f32_b = randn(&[5, 7], 4);
    let err = widened_product(&a, &f32_b, Form::AB)
        .unwrap_err()
        .to_string();
    assert!(err.contains("both be bf16 or both f16"), "{err}");
}

#[test]
fn f32_products_shared_among_threads_by_columns_are_candle_s() {
    // Large enough for the threads to split (m n k over the gemm crate's threshold), with a
    // last block of columns short of 64, and k past the gemm crate's blocks of 512; and shapes
    // whose narrow shards would take the gemm crate's small-product paths (few rows, a last
    // block of one column), which must not split.
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for form in [Form::AB, Form::ABt, Form::AtB] {
            let shapes = [
                (100, 200, 70),
                (37, 330, 600),
                (768, 128, 128),
                (37, 128, 600),
                (4, 128, 1200),
                (768, 129, 128),
            ];
            for (m, n, k) in shapes {
                let what = format!("{form:?} ({m}, {n}, {k}) on {threads} threads");
                let [da, db] = operand_dims(form, &[], (m, n, k));
                let (a, b) = (randn(&da, 21), randn(&db, 22));
                let (y, y_ref) = pool.install(|| {
                    (
                        product(&a, &b, form, DType::F32).unwrap(),
                        product_reference(&a, &b, form).unwrap(),
                    )
                });
                assert_eq!(max_abs_diff(&y, &y_ref), 0.0, "{what}");
            }
        }
    }
}
